"""Where video tracking gets its engine, the clip's facts and the frames to visit.

The video engine (``engine.video.tracker.Sam3VideoEngine``) is built lazily over the image
engine's loaded model (``engine.video.models``: shared weights) and shares its scheduler, so a
click on an image waits for at most one video frame; it is rebuilt when the model version changes.
Clips are probed once per file (``engine.video.decode.probe_video``, cached by file identity), and
frames are planned by ``SAM3_VIDEO_STRIDE`` / ``SAM3_VIDEO_MAX_FRAMES``. Nothing is imported from
the engine until it is needed: importing this module does not import torch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import EngineNotReady
from ..types import VideoInfo


class VideoEngineSource:
    """The video engine and per-clip facts for ``VideoService``; thread-safe.

    engine_provider: returns the current image engine (``Sam3ImageEngine``: ``.model`` and
    ``.scheduler`` are used) or a not-ready placeholder (its ``reason`` becomes the 503's message).
    """

    def __init__(self, settings: Settings, engine_provider: Callable[[], Any]):
        self.settings = settings
        self._engine_provider = engine_provider
        self._engine = None
        self._engine_lock = threading.Lock()
        self._infos: OrderedDict[tuple, VideoInfo] = OrderedDict()
        self._infos_lock = threading.Lock()

    def engine(self):
        """The video engine over the current image engine's model (built on first use)."""
        image_engine = self._engine_provider()
        loaded = getattr(image_engine, "model", None)
        if loaded is None:
            raise EngineNotReady(getattr(image_engine, "reason", "the SAM 3 model is still loading; retry in a moment"))
        with self._engine_lock:
            if self._engine is None or self._engine.model_version != loaded.version:
                from ..engine.video.models import build_video_models
                from ..engine.video.tracker import Sam3VideoEngine

                s = self.settings
                self._engine = Sam3VideoEngine(
                    build_video_models(loaded), image_engine.scheduler,
                    new_object_threshold=s.video_score_threshold,
                    detection_threshold=min(0.5, s.video_score_threshold), max_objects=s.video_max_objects,
                    hotstart_frames=s.video_hotstart_frames,
                    wait_timeout=getattr(image_engine, "wait_timeout", None),
                )
            return self._engine

    def probe(self, path: Path) -> VideoInfo:
        """The clip's facts (frames, times, size), probed once per file (device, inode, size, mtime)."""
        from ..engine.video.decode import probe_video

        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._infos_lock:
            info = self._infos.get(key)
        if info is None:
            info = probe_video(path, max_pixels=self.settings.video_max_pixels)
            with self._infos_lock:
                self._infos[key] = info
                while len(self._infos) > 64:
                    self._infos.popitem(last=False)
        return info

    def plan(self, info: VideoInfo, extra=()):
        """Source frame indices to track, per the settings, plus ``extra`` (keyframes)."""
        from ..engine.video.tracker import plan_frames

        return plan_frames(info, stride=self.settings.video_stride, max_frames=self.settings.video_max_frames, extra=extra)


__all__ = ["VideoEngineSource"]
