"""The serialized form of a result that may stay in its block: Parsl's serializer (dill) at pickle
protocol 5, with the memory of large arrays left out of the pickle stream.

Parsl's own data serializer pickles with dill at protocol 4: a numpy array's bytes are copied into
the pickle, and the pickle into Parsl's message (1.4 ms per MB measured on a 2-core node, five
copies). Here the same dill pickler runs at protocol 5 with a buffer callback, and every contiguous
buffer of at least :data:`OUT_OF_BAND_MIN` bytes (numpy arrays, and the arrays inside pandas
frames) stays where it is: the worker writes it to the block's store as it is, one copy, straight
into the store's memory (:func:`encode` returns the parts). Reading copies those buffers once
into one writable ``bytearray`` (unless they are writable already) and rebuilds the pickle over
it (:func:`decode`): arrays come back writable, as values do.

Layout (as parts, or joined into one bytes object)::

    IDENTIFIER "\\n"  count: !I  buffer lengths: count x !Q  pickle length: !Q  pickle  buffer 0  buffer 1 ...

``IDENTIFIER`` is this module's Parsl serializer identifier (``"module class"``), so the joined
form is also a Parsl payload: ``parsl.serialize.deserialize`` imports this module and calls
:class:`OutOfBandSerializer` on it (a result that was to be kept but travels instead arrives so).
"""
from __future__ import annotations

import io
import struct
import sys
from dataclasses import dataclass
from typing import Any, List, Union

import dill
from parsl.serialize.base import SerializerBase

Buffer = Union[bytes, bytearray, memoryview]

OUT_OF_BAND_MIN = 64 << 10  # smaller buffers stay in the pickle: each part is one store allocation and message
PROTOCOL = 5
_COUNT = struct.Struct("!I")
_LENGTH = struct.Struct("!Q")


class CodecError(ValueError):
    """Bytes that claim this form but do not hold it (cut short, or lengths that do not add up)."""


class OutOfBandSerializer(SerializerBase):
    """Parsl's serializer plugin for this form (its identifier names this class)."""

    def serialize(self, data: Any) -> bytes:
        return encode(data).joined()

    def deserialize(self, payload: Buffer) -> Any:
        return _decode_body(memoryview(payload))


PREFIX = OutOfBandSerializer().identifier + b"\n"


class _Pickler(dill.Pickler):
    """dill's pickler, except that numpy arrays reduce the protocol-5 way (dill's own handler for
    ``ndarray`` copies their bytes into the stream at any protocol)."""

    def reducer_override(self, obj: Any) -> Any:
        numpy = sys.modules.get("numpy")  # not imported: no array can be here
        if numpy is not None and type(obj) is numpy.ndarray:
            return obj.__reduce_ex__(PROTOCOL)  # contiguous arrays hand over a PickleBuffer
        return NotImplemented


@dataclass
class Encoded:
    """A value in this form: ``parts[0]`` the prefix, lengths and pickle, then the buffers."""

    parts: List[Buffer]

    @property
    def nbytes(self) -> int:
        return sum(memoryview(part).nbytes for part in self.parts)

    def joined(self) -> bytes:
        return b"".join(self.parts)


def encode(value: Any) -> Encoded:
    """``value`` in this form; the buffers among the parts are views of the value's own memory
    (valid while the value lives). Raises what dill raises for a value it cannot pickle."""
    buffers: List[memoryview] = []

    def out_of_band(buffer: Any) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: in the stream
            return True
        if view.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(view)
        return False

    stream = io.BytesIO()
    _Pickler(stream, PROTOCOL, buffer_callback=out_of_band).dump(value)
    pickled = stream.getbuffer()
    lengths = b"".join(_LENGTH.pack(view.nbytes) for view in buffers)
    head = b"".join((PREFIX, _COUNT.pack(len(buffers)), lengths, _LENGTH.pack(pickled.nbytes), pickled))
    return Encoded([head, *buffers])


def decode(data: Buffer) -> Any:
    """The value of ``data``: this form, or any other Parsl payload (Parsl's ``deserialize``)."""
    view = memoryview(data)
    if view[:len(PREFIX)] != PREFIX:
        from parsl.serialize import deserialize
        return deserialize(bytes(data))
    return _decode_body(view[len(PREFIX):])


def _decode_body(view: memoryview) -> Any:
    view = view.cast("B")
    try:
        (count,) = _COUNT.unpack_from(view, 0)
        offset = _COUNT.size
        lengths = struct.unpack_from(f"!{count}Q", view, offset)
        offset += _LENGTH.size * count
        (pickled_length,) = _LENGTH.unpack_from(view, offset)
    except struct.error as exc:
        raise CodecError(f"a kept result's header is cut short ({view.nbytes} bytes)") from exc
    offset += _LENGTH.size
    expected = offset + pickled_length + sum(lengths)
    if expected != view.nbytes:
        raise CodecError(f"a kept result holds {view.nbytes} bytes where its header accounts for {expected}")
    pickled = view[offset:offset + pickled_length]
    store = view[offset + pickled_length:]
    if store.readonly:  # one copy: arrays come back writable, as a value's are
        store = memoryview(bytearray(store))
    buffers, start = [], 0
    for length in lengths:
        buffers.append(store[start:start + length])
        start += length
    return dill.loads(pickled, buffers=buffers)
