"""The kept form of a value (task/codec.py): dill at protocol 5, large buffers apart."""
import pytest
from parsl.serialize import deserialize, serialize

from parsl_dragon.task import codec

numpy = pytest.importorskip("numpy")


def test_a_large_array_is_a_part_of_its_own_and_comes_back_equal_and_writable():
    array = numpy.arange(100_000.0)
    encoded = codec.encode(array)
    assert len(encoded.parts) == 2 and memoryview(encoded.parts[1]).nbytes == array.nbytes
    assert memoryview(encoded.parts[1]).obj is array, "the array's own memory: no copy while encoding"
    back = codec.decode(encoded.joined())
    assert back.dtype == array.dtype and (back == array).all()
    back += 1  # writable, as a value's arrays are
    assert back[0] == 1.0 and array[0] == 0.0


def test_small_buffers_stay_in_the_pickle():
    small = numpy.ones(codec.OUT_OF_BAND_MIN // 8 - 1)
    assert len(codec.encode(small).parts) == 1
    assert (codec.decode(codec.encode(small).joined()) == small).all()


def test_nested_values_and_arrays_of_every_layout():
    value = {"c": numpy.ones((300, 300)), "f": numpy.asfortranarray(numpy.ones((300, 300))),
             "strided": numpy.arange(100_000.0)[::2], "objects": numpy.array([1, "a"], dtype=object),
             "list": [numpy.zeros(3), "text", 7]}
    back = codec.decode(codec.encode(value).joined())
    assert back["f"].flags.f_contiguous and (back["f"] == 1).all() and (back["c"] == 1).all()
    assert (back["strided"] == numpy.arange(100_000.0)[::2]).all()
    assert list(back["objects"]) == [1, "a"] and back["list"][1:] == ["text", 7]
    assert len(codec.encode(value).parts) == 3, "the two contiguous 720 KB arrays; the strided one is copied in"


def test_what_dill_pickles_this_form_pickles():
    def closure(x, offset=3):
        return x + offset
    assert codec.decode(codec.encode(closure).joined())(1) == 4


def test_parsl_reads_this_form_and_this_module_reads_parsls():
    array = numpy.arange(100_000.0)
    assert (deserialize(codec.encode(array).joined()) == array).all()
    assert codec.decode(serialize([1, 2])) == [1, 2]
    assert (codec.decode(codec.OutOfBandSerializer().serialize(array)) == array).all()


def test_parts_joined_into_a_writable_buffer_are_used_as_they_are():
    array = numpy.arange(100_000.0)
    whole = bytearray(codec.encode(array).joined())
    back = codec.decode(whole)
    back[0] = -1.5
    assert whole.find(numpy.float64(-1.5).tobytes()) >= 0, "no copy of a buffer that is writable already"
    read_only = bytes(whole)
    codec.decode(read_only)[0] = 7.5
    assert read_only.find(numpy.float64(7.5).tobytes()) < 0


@pytest.mark.parametrize("cut", [1, 5, 200])
def test_bytes_cut_short_say_so(cut):
    data = codec.encode(numpy.arange(100_000.0)).joined()
    with pytest.raises(codec.CodecError, match="bytes where its header accounts for|cut short"):
        codec.decode(data[:-cut] if cut != 200 else data[:len(codec.PREFIX) + 2])
