"""The bounded on-disk LRU cache that downloaded task media land in (``MODEL_DIR/media-cache``),
and ``pinned``: a cached file held for the length of a job while the cache evicts."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO
from collections.abc import Callable
from contextlib import contextmanager

_STALE_PART_SECONDS = 3600  # .part files older than this were left by a crashed process


class DiskCache:
    """Files named by a hash of their key; LRU by mtime; bounded by total bytes.

    Why it is built this way:

    - atomic writes: writers fill a ``tmp-*.part`` file and rename it into place, so a failed or
      interrupted download never leaves a partial file under a cached name;
    - byte bound: after each store the least recently used files are evicted until the directory
      fits ``max_bytes`` (the file just stored is always kept);
    - cross-process safe: state lives only in the directory, and eviction rescans it, so several
      processes can share one cache and keep the bound (approximately, between their scans).
    """

    def __init__(self, root: Path, max_bytes: int):
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # one eviction scan at a time in this process

    def path_for(self, key: str, suffix: str) -> Path:
        return self.root / (hashlib.sha256(key.encode()).hexdigest() + suffix)

    def touch(self, path: Path) -> bool:
        """Mark ``path`` recently used; False when it is not cached."""
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False

    def store(self, final: Path, write: Callable[[BinaryIO], object]) -> tuple[int, int]:
        """Run ``write(fh)`` into a temporary file, rename it to ``final``, evict; (size, evicted files)."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f"tmp-{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "wb") as fh:
                write(fh)
            size = tmp.stat().st_size
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        with self._lock:
            return size, self._evict(keep=final)

    def _evict(self, keep: Path) -> int:
        entries, total, now = [], 0, time.time()
        with os.scandir(self.root) as it:
            for entry in it:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                if entry.name.endswith(".part"):
                    if now - st.st_mtime > _STALE_PART_SECONDS:
                        Path(entry.path).unlink(missing_ok=True)
                    continue
                if entry.is_file():
                    entries.append((st.st_mtime_ns, st.st_size, entry.path))
                    total += st.st_size
        evicted = 0
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            if path == str(keep):
                continue
            Path(path).unlink(missing_ok=True)
            total -= size
            evicted += 1
        return evicted


@contextmanager
def pinned(path: Path):
    """A private hard link (or copy) of a media-cache file for the length of a job, so the cache
    can evict the original meanwhile without pulling the video from under the decoder."""
    folder = Path(tempfile.mkdtemp(prefix="sam3-video-"))
    target = folder / ("video" + path.suffix)
    try:
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


__all__ = ["DiskCache", "pinned"]
