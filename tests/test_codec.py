"""Every corruption of a stored page is detected; a good page round-trips bit-exactly."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from storage import KVLayout, PageFormatError, decode_page, encode_page

LAYOUT = KVLayout(2, 1, 4, 2, torch.bfloat16)
NS, KEY = b"n" * 16, b"k" * 16
PAYLOAD = (
    torch.randn(LAYOUT.page_shape).to(LAYOUT.dtype).reshape(-1).view(torch.uint8).numpy().tobytes()
)
BLOB = encode_page(PAYLOAD, namespace=NS, key=KEY, shape=LAYOUT.page_shape, dtype=LAYOUT.dtype)


def decode(blob, namespace=NS, key=KEY, shape=LAYOUT.page_shape, dtype=LAYOUT.dtype):
    return decode_page(blob, namespace=namespace, key=key, shape=shape, dtype=dtype)


def test_round_trip_is_bit_exact():
    assert bytes(decode(BLOB)) == PAYLOAD


@settings(max_examples=400)
@given(st.integers(0, len(BLOB) - 1), st.integers(0, 7))
def test_every_single_bit_flip_is_detected(pos, bit):
    blob = bytearray(BLOB)
    blob[pos] ^= 1 << bit
    with pytest.raises(PageFormatError):
        decode(bytes(blob))


@given(st.integers(0, len(BLOB) - 1))
def test_every_truncation_is_detected(n):
    with pytest.raises(PageFormatError):
        decode(BLOB[:n])


def test_trailing_bytes_are_detected():
    with pytest.raises(PageFormatError, match="length"):
        decode(BLOB + b"\0")


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"namespace": b"x" * 16}, "namespace mismatch"),
        ({"key": b"x" * 16}, "key mismatch"),
        ({"shape": (2, 2, 2, 4, 1)}, "shape mismatch"),
        ({"dtype": torch.float16}, "dtype mismatch"),
    ],
)
def test_a_valid_page_of_someone_else_is_rejected(kwargs, reason):
    with pytest.raises(PageFormatError, match=reason):
        decode(BLOB, **kwargs)


def test_encode_rejects_bad_digests():
    with pytest.raises(ValueError):
        encode_page(
            PAYLOAD, namespace=b"short", key=KEY, shape=LAYOUT.page_shape, dtype=LAYOUT.dtype
        )
