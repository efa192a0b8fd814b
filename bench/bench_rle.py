"""Brush RLE: label_studio_sdk vs sam3_backend.ls.rle, side by side in one run.

    .venv/bin/python bench/bench_rle.py [--quick]

Asserts byte-identical output on every case, prints a markdown table and writes it to
bench/RESULTS.md (section "rle").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _results import machine_info, markdown_table, write_section  # noqa: E402
from label_studio_sdk.converter.brush import decode_rle as sdk_decode_rle  # noqa: E402
from label_studio_sdk.converter.brush import mask2rle as sdk_mask2rle  # noqa: E402

from sam3_backend.ls.rle import decode_rle, encode_rle  # noqa: E402


def sdk_encode(mask: np.ndarray) -> list[int]:
    return sdk_mask2rle(np.where(mask > 0, 255, 0).astype(np.uint8))


def sdk_decode(rle: list[int], h: int, w: int) -> np.ndarray:
    return sdk_decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 0


# --------------------------------------------------------------------------- masks


def ellipses(h: int, w: int, n: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    yy, xx = np.ogrid[:h, :w]
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.2) * h * scale, rng.uniform(0.05, 0.2) * w * scale
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return mask


def instance_blobs(h: int, w: int, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n instance masks (one object each) of varied size, like a prelabel result."""
    out = []
    yy, xx = np.ogrid[:h, :w]
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(10, 150), rng.uniform(10, 150)
        theta = rng.uniform(0, np.pi)
        c, s = np.cos(theta), np.sin(theta)
        dy, dx = yy - cy, xx - cx
        blob = ((c * dx + s * dy) / rx) ** 2 + ((-s * dx + c * dy) / ry) ** 2 <= 1
        blob &= rng.random((h, w), dtype=np.float32) > 0.002 if rng.random() < 0.3 else True  # a few holes
        out.append(blob)
    return out


# --------------------------------------------------------------------------- timing


def time_pair(sdk_fn, our_fn, args_list, ours_per_sdk: int, min_reps: int, min_seconds: float):
    """Per-call times in ms of both implementations, interleaved call by call (one SDK
    call, then ``ours_per_sdk`` calls of ours, on the same input) so that both see the
    same machine load."""
    sdk_fn(*args_list[0]), our_fn(*args_list[0])  # warm up
    sdk_t, our_t = [], []
    t_start = time.perf_counter()
    reps = 0
    while reps < min_reps or time.perf_counter() - t_start < min_seconds:
        for args in args_list:
            t0 = time.perf_counter()
            sdk_fn(*args)
            sdk_t.append(time.perf_counter() - t0)
            for _ in range(ours_per_sdk):
                t0 = time.perf_counter()
                our_fn(*args)
                our_t.append(time.perf_counter() - t0)
        reps += 1
    return np.asarray(sdk_t) * 1e3, np.asarray(our_t) * 1e3


def stats(t: np.ndarray) -> tuple[float, float]:
    return float(np.median(t)), float(np.percentile(t, 95))


def fmt(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = ap.parse_args()
    seconds = 0.5 if args.quick else 3.0

    rng = np.random.default_rng(1234)
    cases = [
        ("1080p, 4 ellipses", [ellipses(1080, 1920, 4, rng)]),
        ("1080p, 100 instances (per mask)", instance_blobs(1080, 1920, 100, rng)),
        ("640x480 noise (p=0.5)", [rng.random((480, 640)) < 0.5]),
        ("4K, 5 ellipses", [ellipses(2160, 3840, 5, rng)]),
    ]

    enc_rows, dec_rows = [], []
    for name, masks in cases:
        h, w = masks[0].shape
        rles = [sdk_encode(m) for m in masks]
        for m, rle in zip(masks, rles):
            assert encode_rle(m) == rle, f"{name}: encoder output differs from the SDK"
            assert np.array_equal(decode_rle(rle, h, w), m), f"{name}: decode mismatch"
        n_runs = int(np.mean([np.count_nonzero(m.ravel()[1:] != m.ravel()[:-1]) + 1 for m in masks]))
        n_bytes = int(np.mean([len(r) for r in rles]))

        args_enc = [(m,) for m in masks]
        sdk_t, our_t = time_pair(
            sdk_encode, encode_rle, args_enc, ours_per_sdk=5, min_reps=1 if len(masks) > 1 else 10, min_seconds=seconds
        )
        (sm, sp), (om, op) = stats(sdk_t), stats(our_t)
        enc_rows.append([name, f"{n_runs}", f"{n_bytes}", fmt(sm), fmt(sp), fmt(om), fmt(op), f"**{sm / om:.0f}x**"])

        # The SDK decoder walks the stream bit by bit in Python: a few masks suffice.
        args_dec = [(r, h, w) for r in rles[:10]]
        assert all(np.array_equal(sdk_decode(*a), decode_rle(*a)) for a in args_dec[:3])
        sdk_t, our_t = time_pair(
            sdk_decode,
            decode_rle,
            args_dec,
            ours_per_sdk=5,
            min_reps=1 if n_bytes > 100_000 else 3,
            min_seconds=seconds,
        )
        (sm, sp), (om, op) = stats(sdk_t), stats(our_t)
        dec_rows.append([name, f"{n_bytes}", fmt(sm), fmt(sp), fmt(om), fmt(op), f"{sm / om:.0f}x"])
        print(f"done: {name}", file=sys.stderr)

    enc_table = markdown_table(
        [
            "case (encode)",
            "runs",
            "RLE bytes",
            "SDK median ms",
            "SDK p95 ms",
            "ours median ms",
            "ours p95 ms",
            "speedup",
        ],
        enc_rows,
    )
    dec_table = markdown_table(
        ["case (decode)", "RLE bytes", "SDK median ms", "SDK p95 ms", "ours median ms", "ours p95 ms", "speedup"],
        dec_rows,
    )
    import label_studio_sdk

    sdk_version = getattr(label_studio_sdk, "__version__", "?")
    md = "\n".join(
        [
            "## Brush RLE (`sam3_backend.ls.rle` vs `label_studio_sdk.converter.brush`)",
            "",
            f"{machine_info()}; numpy {np.__version__}; label-studio-sdk {sdk_version}.",
            "Output asserted byte-identical to the SDK's `mask2rle` on every mask. Times are per mask"
            " (the 100-instance case encodes/decodes each instance mask separately, as a prelabel"
            " response with 100 objects does). SDK and ours are timed interleaved, call by call, on the"
            " same inputs, so both see the same machine load. Speedup = SDK median / ours median."
            " Command: `.venv/bin/python bench/bench_rle.py`.",
            "",
            enc_table,
            "",
            dec_table,
        ]
    )
    print(md)
    if not args.no_write:
        print(f"\nwrote {write_section('rle', md)}", file=sys.stderr)


if __name__ == "__main__":
    main()
