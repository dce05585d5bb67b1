"""A kept result as the user sees it: a reference that behaves like the value.

A task whose result is kept in its block (``keep_result``; ``wire/dataplane.py``) resolves its
future to a ProxyStore ``Proxy`` whose factory is a :class:`KeptResult`: the key of the bytes in
the block's shelf (a Dragon DDict), the manager that holds them, and the server and task they
came from. The proxy is what users pass around:

* passed to another app, it travels as its factory (a few hundred bytes, never the value) and
  becomes the real object inside that task: the worker reads the bytes from the shelf (node-local
  shared memory when the task runs on the producer's node) before calling the function
  (:func:`execute_task`), for arguments, keyword arguments and the items of ``inputs``;
* used in the driver (any attribute, operator, ``len``...), it is fetched once over the server's
  link and cached in the proxy;
* ``isinstance`` and ``type()`` checks before that answer from the value's class when the driver
  has its module imported already (so Parsl's own checks never fetch a value), else from
  :class:`KeptValue`.

Where a read happens is decided by a registry of readers by server id: a worker registers its
shelf (:func:`register_reader`), the executor registers a fetch over each server link. A reference
whose server is gone, or whose value was evicted, raises :class:`~parsl_dragon.errors.ResultLost`
naming the task that produced it. :func:`is_kept` tells a reference from a value without
reading it.
"""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

from proxystore.proxy import Proxy, is_resolved

Reader = Callable[["KeptResult"], Union[bytes, bytearray]]

_readers: Dict[str, Reader] = {}
_gone: Dict[str, str] = {}  # server id -> why its kept results cannot be read any more
_lock = threading.Lock()


class KeptValue:
    """The class a reference reports before its value is read, when the driver does not have
    the value's module imported (``isinstance(ref, KeptValue)`` is then True)."""


@dataclass(frozen=True)
class KeptResult:
    """A proxy factory: reads and deserializes a kept result wherever the proxy is used."""

    server_id: str
    key: str
    manager: int
    nbytes: int
    task_id: int  # the executor's id of the task that produced it (for error messages)
    type: str = ""  # "module:qualname" of the value

    def __call__(self) -> Any:
        from parsl_dragon.task import codec
        return codec.decode(self.read())

    def read(self) -> Union[bytes, bytearray]:
        """The serialized value, from whichever reader this process has for its server."""
        with _lock:
            reader, gone = _readers.get(self.server_id), _gone.get(self.server_id)
        if reader is None:
            where = gone or ("the block that holds it is not reachable from this process (a task of "
                             "another block, or a driver that never knew it)")
            raise _lost(self, where)
        try:
            data = reader(self)
        except KeyError as exc:
            raise _lost(self, str(exc.args[0]) if exc.args else "it was evicted") from None
        if len(data) != self.nbytes:  # the store gave back something else: say so, never unpickle it
            raise _lost(self, f"the store returned {len(data)} bytes where {self.nbytes} were kept")
        return data

    def describe(self) -> str:
        return f"result of task {self.task_id} ({self.nbytes} bytes kept in block server {self.server_id})"


def _lost(kept: KeptResult, why: str) -> BaseException:
    from parsl_dragon.errors import ResultLost
    return ResultLost(f"the kept {kept.describe()} cannot be read: {why}")


def register_reader(server_id: str, reader: Reader) -> None:
    with _lock:
        _readers[server_id] = reader
        _gone.pop(server_id, None)


def forget_reader(server_id: str, why: str) -> None:
    """Kept results of this server cannot be read from here any more; reads say ``why``."""
    with _lock:
        _readers.pop(server_id, None)
        _gone[server_id] = why


def value_class(name: str) -> type:
    """The class named ``module:qualname`` if its module is imported here already, else KeptValue.
    Nothing is imported on the word of a peer."""
    module_name, _, qualname = name.partition(":")
    target: Any = sys.modules.get(module_name)
    for part in qualname.split(".") if target is not None and qualname else ():
        target = getattr(target, part, None)
    return target if isinstance(target, type) else KeptValue


def class_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}:{kind.__qualname__}"


def reference(kept: KeptResult) -> Proxy:
    """The proxy a future resolves to."""
    proxy = Proxy(kept)
    object.__setattr__(proxy, "__proxy_default_class__", value_class(kept.type))
    return proxy


def kept_of(value: Any) -> Optional[KeptResult]:
    """The factory of a kept-result reference, None for anything else (nothing is read)."""
    if type(value) is not Proxy:
        return None
    factory = object.__getattribute__(value, "__proxy_factory__")
    return factory if isinstance(factory, KeptResult) else None


def is_kept(value: Any) -> bool:
    """Whether ``value`` is a reference to a kept result (without reading it)."""
    return kept_of(value) is not None


def _real(value: Any) -> Any:
    if kept_of(value) is None:
        return value
    return _read(value)


def _read(proxy: Proxy) -> Any:
    """The value of a reference, read once and cached in the proxy; a read that fails raises
    its own error (``ResultLost``), not ProxyStore's wrapper around it."""
    if not is_resolved(proxy):
        object.__setattr__(proxy, "__proxy_target__", object.__getattribute__(proxy, "__proxy_factory__")())
    return object.__getattribute__(proxy, "__proxy_target__")


def real_arguments(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """References among the arguments, keyword arguments and ``inputs`` items, read."""
    args = tuple(_real(a) for a in args)
    kwargs = {k: _real(v) for k, v in kwargs.items()}
    if isinstance(kwargs.get("inputs"), list):
        kwargs["inputs"] = [_real(v) for v in kwargs["inputs"]]
    return args, kwargs


def execute_task(payload: bytes) -> Any:
    """Parsl's ``execute_task``, with references read before the call (the function gets values)."""
    from parsl.serialize import unpack_apply_message
    f, args, kwargs = unpack_apply_message(payload)
    args, kwargs = real_arguments(args, kwargs)
    return f(*args, **kwargs)
