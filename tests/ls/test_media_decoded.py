"""The decoded-image cache in front of the download cache: repeated clicks skip read + decode."""

from __future__ import annotations

import os
import time

import numpy as np
from PIL import Image

from sam3_backend.config import Settings
from sam3_backend.ls.media import MediaFetcher


def _save(path, value: int, size=(40, 30)):
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_same_local_file_is_decoded_once_and_reread_when_it_changes(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    image_path = root / "a.png"
    _save(image_path, 10)
    fetcher = MediaFetcher(Settings.from_env({}, model_dir=tmp_path / "m", media_local_dirs=(root,)))
    first = fetcher.fetch_image(str(image_path))
    again = fetcher.fetch_image(str(image_path))
    assert again is first
    assert first.pixels[0, 0, 0] == 10
    _save(image_path, 200)
    later = time.time() + 5
    os.utime(image_path, (later, later))
    changed = fetcher.fetch_image(str(image_path))
    assert changed is not first and changed.pixels[0, 0, 0] == 200
    assert changed.key != first.key


def test_decoded_cache_is_bounded(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    one_image = 40 * 30 * 3
    fetcher = MediaFetcher(Settings.from_env({}, model_dir=tmp_path / "m", media_local_dirs=(root,)))
    fetcher._decoded = type(fetcher._decoded)(int(one_image * 2.5), sizeof=lambda im: im.pixels.nbytes)
    for i in range(5):
        _save(root / f"{i}.png", i)
        fetcher.fetch_image(str(root / f"{i}.png"))
    stats = fetcher._decoded.stats()
    assert stats.entries == 2 and stats.bytes <= one_image * 2.5 and stats.evictions == 3


def test_remote_image_second_fetch_touches_neither_network_nor_disk(tmp_path):
    from helpers import TOKEN, FakeLabelStudio, png

    ls = FakeLabelStudio()
    try:
        ls.files["/data/upload/1/x.png"] = png(20, 30, 1)
        fetcher = MediaFetcher(Settings.from_env({}, model_dir=tmp_path / "m", label_studio_url=ls.url,
                                                 label_studio_api_key=TOKEN))
        first = fetcher.fetch_image("/data/upload/1/x.png")
        disk_hits = fetcher.stats.hits
        assert fetcher.fetch_image("/data/upload/1/x.png") is first
        assert fetcher.stats.hits == disk_hits and len(ls.requests) == 1
    finally:
        ls.close()
