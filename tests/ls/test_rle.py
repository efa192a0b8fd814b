"""The vectorised brush RLE must match label_studio_sdk.converter.brush byte for byte."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle
from label_studio_sdk.converter.brush import encode_rle as sdk_encode_rle
from label_studio_sdk.converter.brush import mask2rle as sdk_mask2rle

from sam3_backend.ls.rle import (
    decode_rle,
    decode_rle_flat,
    encode_rle,
    encode_rle_flat,
    encode_rle_values,
)

# RLE_TEST_EXAMPLES=2000 for a longer soak
SETTINGS = settings(
    max_examples=int(os.environ.get("RLE_TEST_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def sdk_encode_mask(mask: np.ndarray) -> list[int]:
    return sdk_mask2rle(np.where(mask > 0, 255, 0).astype(np.uint8))


def check_mask(mask: np.ndarray) -> None:
    """Encode equals the SDK; both decoders round-trip."""
    ours = encode_rle(mask)
    assert ours == sdk_encode_mask(mask)
    h, w = mask.shape
    expected = mask > 0
    np.testing.assert_array_equal(decode_rle(ours, h, w), expected)
    sdk_alpha = sdk_decode_rle(ours).reshape(h, w, 4)[:, :, 3] > 0
    np.testing.assert_array_equal(sdk_alpha, expected)
    np.testing.assert_array_equal(decode_rle_flat(ours), sdk_decode_rle(ours))


# --------------------------------------------------------------------------- strategies

dims = st.integers(1, 97)


@st.composite
def noise_masks(draw):
    h, w = draw(dims), draw(dims)
    p = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((h, w)) < p
    if draw(st.booleans()):
        return mask
    # uint8 masks with arbitrary foreground values
    return (mask * rng.integers(1, 256, size=(h, w))).astype(np.uint8)


@st.composite
def shape_masks(draw):
    h, w = draw(st.integers(1, 301)), draw(st.integers(1, 301))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = np.zeros((h, w), dtype=bool)
    yy, xx = np.ogrid[:h, :w]
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["rect", "circle", "noise", "row", "col"]))
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        y1, x1 = rng.integers(y0, h + 1), rng.integers(x0, w + 1)
        value = bool(rng.random() < 0.8)
        if kind == "rect":
            mask[y0:y1, x0:x1] = value
        elif kind == "circle":
            r = rng.uniform(0.5, max(h, w) / 2)
            mask[(yy - y0) ** 2 + (xx - x0) ** 2 <= r * r] = value
        elif kind == "noise":
            mask[y0:y1, x0:x1] ^= rng.random((y1 - y0, x1 - x0)) < 0.3
        elif kind == "row":
            mask[y0, :] = value
        else:
            mask[:, x0] = value
    return mask


# --------------------------------------------------------------------------- encoder


@SETTINGS
@given(noise_masks())
def test_random_masks_match_sdk(mask):
    check_mask(mask)


@SETTINGS
@given(shape_masks())
def test_structured_masks_match_sdk(mask):
    check_mask(mask)


@pytest.mark.parametrize(
    "shape",
    [(1, 1), (1, 2), (2, 1), (1, 7), (7, 1), (3, 5), (1, 513), (513, 1), (33, 31), (16, 16), (480, 640)],
)
@pytest.mark.parametrize("fill", ["zeros", "ones", "single", "last", "checker"])
def test_edge_masks(shape, fill):
    mask = np.zeros(shape, dtype=bool)
    if fill == "ones":
        mask[:] = True
    elif fill == "single":
        mask[shape[0] // 2, shape[1] // 2] = True
    elif fill == "last":
        mask[-1, -1] = True
    elif fill == "checker":
        mask = (np.indices(shape).sum(axis=0) % 2).astype(bool)
    check_mask(mask)


@pytest.mark.parametrize(
    "pixels",
    # RGBA run lengths around the field-size and 65536-split boundaries
    [2, 3, 4, 5, 64, 65, 16383, 16384, 16385, 32768, 32769, 49152, 65536, 70001],
)
def test_long_runs(pixels):
    for mask in (
        np.ones((1, pixels), dtype=bool),
        np.pad(np.ones((1, pixels), dtype=bool), ((0, 0), (3, 2))),
        np.pad(np.ones((pixels, 1), dtype=bool), ((1, 0), (0, 0))),
    ):
        check_mask(mask)


def test_full_hd_and_dtypes():
    mask = np.zeros((1080, 1920), dtype=bool)
    mask[100:900, 200:1700] = True
    mask[500:520, :] = False
    expected = sdk_encode_mask(mask)
    assert encode_rle(mask) == expected
    assert encode_rle(mask.astype(np.uint8)) == expected
    assert encode_rle(mask.astype(np.uint8) * 7) == expected
    assert encode_rle(mask.astype(np.int64)) == expected
    assert encode_rle(mask.astype(np.float32)) == expected
    assert encode_rle(np.asfortranarray(mask)) == expected
    assert encode_rle(mask[:, ::-1][:, ::-1]) == expected
    np.testing.assert_array_equal(decode_rle(expected, 1080, 1920), mask)


@SETTINGS
@given(h=dims, w=dims, levels=st.integers(1, 256), seed=st.integers(0, 2**32 - 1))
def test_values_match_sdk_mask2rle(h, w, levels, seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, levels, size=(h, w)).astype(np.uint8)
    values[: h // 2, : w // 2] = values[0, 0]  # some long runs as well
    ours = encode_rle_values(values)
    assert ours == sdk_mask2rle(values)
    np.testing.assert_array_equal(decode_rle_flat(ours), np.repeat(values.ravel(), 4))


@SETTINGS
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 255), st.sampled_from([1, 2, 7, 8, 9, 16, 17, 255, 256, 257, 65536, 65537, 140000])),
        min_size=1,
        max_size=12,
    )
)
def test_flat_runs_match_sdk_encode_rle(runs):
    array = np.concatenate([np.full(n, v, dtype=np.uint8) for v, n in runs])
    ours = encode_rle_flat(array)
    assert ours == sdk_encode_rle(array)
    np.testing.assert_array_equal(decode_rle_flat(ours), array)


def test_empty_and_invalid():
    assert decode_rle(encode_rle(np.zeros((0, 5), bool)), 0, 5).shape == (0, 5)
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError):
        decode_rle(encode_rle(np.zeros((4, 4), bool)), 4, 5)
    with pytest.raises(ValueError):
        decode_rle([0, 0, 0], 1, 1)
    with pytest.raises(ValueError):
        decode_rle(encode_rle(np.ones((40, 40), bool))[:-2], 40, 40)


# --------------------------------------------------------------------------- decoder on
# general streams (literal records, other field sizes), as the Label Studio frontend writes


class BitWriter:
    def __init__(self):
        self.bits: list[str] = []

    def write(self, value: int, size: int) -> None:
        self.bits.append(format(value, f"0{size}b"))

    def to_bytes(self) -> list[int]:
        s = "".join(self.bits)
        s += "0" * (-len(s) % 8)
        return [int(s[i : i + 8], 2) for i in range(0, len(s), 8)]


@st.composite
def general_streams(draw):
    """A valid stream with any word size <= 8 and any field sizes, mixing run and
    literal records; returns (bytes, expected flat values)."""
    word_size = draw(st.integers(1, 8))
    rle_sizes = [draw(st.integers(1, 16)) for _ in range(4)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    records = []
    for _ in range(draw(st.integers(1, 40))):
        k = int(rng.integers(0, 4))
        n = int(rng.integers(0, min(1 << rle_sizes[k], 300)))
        is_run = bool(rng.random() < 0.5)
        values = rng.integers(0, 1 << word_size, size=1 if is_run else n + 1)
        records.append((is_run, k, n, values))
    out = BitWriter()
    expected = [np.full(n + 1, v[0]) if r else v for r, _, n, v in records]
    expected = np.concatenate(expected).astype(np.uint8)
    out.write(expected.size, 32)
    out.write(word_size - 1, 5)
    for size in rle_sizes:
        out.write(size - 1, 4)
    for is_run, k, n, values in records:
        out.write(int(is_run), 1)
        out.write(k, 2)
        out.write(n, rle_sizes[k])
        for v in values:
            out.write(int(v), word_size)
    if draw(st.booleans()):
        out.write(0, draw(st.integers(0, 40)))  # trailing garbage zeros
    return out.to_bytes(), expected


@SETTINGS
@given(general_streams())
def test_decode_general_streams_match_sdk(stream):
    data, expected = stream
    np.testing.assert_array_equal(sdk_decode_rle(data), expected)
    np.testing.assert_array_equal(decode_rle_flat(data), expected)
    if expected.size % 4 == 0 and expected.size:
        np.testing.assert_array_equal(decode_rle(data, 1, expected.size // 4), expected.reshape(1, -1, 4)[:, :, 3] > 0)
