"""Fine-tuned model versions in ``MODEL_DIR/versions``: saving, promotion, rollback, serving.

Layout, one folder per *scope* (the glue uses one scope per Label Studio project)::

    versions/<scope>/<scope>-v<N>/weights.safetensors   the delta: tensors training changed
                                  report.json           metrics, data counts, settings, loss curve
                                  report.png            loss curve and before/after AP
    versions/<scope>/SERVED.json                        {"version": "<scope>-v<N>" | null, ...}
    versions/<scope>/history.jsonl                      every promotion / rollback, appended

Crash safety: a version is written into a temporary folder, every file fsynced, then renamed into
place (a folder either exists complete or not at all). ``SERVED.json`` is replaced the same way
(temp file + fsync + ``os.replace`` + fsync of the folder), so a crash leaves the old or the new
pointer, never half of one, and the pointer only ever names a complete version.

Loading reads safetensors only (no pickle, no ``torch.load``) and refuses a delta made for another
base checkpoint. ``ServedModels`` gives each request the engine of its scope's served version; it
checks the pointer with one ``stat`` per request, so every worker process picks up a switch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

WEIGHTS, REPORT, PLOT, POINTER, HISTORY = "weights.safetensors", "report.json", "report.png", "SERVED.json", "history.jsonl"
_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^(?P<scope>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})-v(?P<n>[0-9]{1,9})$")


class VersionError(ValueError):
    """A version that does not exist, is incomplete, or belongs to another base model."""


@dataclass(frozen=True)
class VersionInfo:
    id: str
    scope: str
    path: Path
    report: dict

    @property
    def created_at(self) -> float:
        return float(self.report.get("created_at") or 0.0)

    @property
    def base_version(self) -> str:
        return str(self.report.get("base_version") or "")

    def summary(self) -> dict:
        """What listings show: id, when, metrics, promotion and data counts."""
        r = self.report
        return {"id": self.id, "scope": self.scope, "created_at": self.created_at, "base_version": self.base_version,
                "metrics": r.get("metrics", {}), "promotion": r.get("promotion", {}), "data": r.get("data", {}),
                "job": r.get("job")}


def model_version(base_version: str, version_id: str | None) -> str:
    """The ``model_version`` predictions carry: the base's, or ``<base>+<version id>``."""
    return base_version if version_id is None else f"{base_version}+{version_id}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class VersionStore:
    """Versions on disk (see the module docstring). Safe across threads and processes."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # ------------------------------------------------------------------ paths
    def scope_dir(self, scope: str) -> Path:
        if not isinstance(scope, str) or not _SCOPE.match(scope):
            raise VersionError(f"invalid version scope {scope!r}")
        return self.root / scope

    def pointer_path(self, scope: str) -> Path:
        return self.scope_dir(scope) / POINTER

    @staticmethod
    def scope_of(version_id: str) -> str:
        m = _VERSION.match(version_id or "")
        if not m:
            raise VersionError(f"{version_id!r} is not a version id (like project-3-v2); list them with `sam3-backend versions`")
        return m.group("scope")

    # ------------------------------------------------------------------ writing
    def save(self, scope: str, tensors: dict, report: dict, plot_png: bytes | None = None) -> VersionInfo:
        """Write a new version ``<scope>-v<N>`` (N = one more than the highest so far), atomically."""
        from safetensors.torch import save_file

        folder = self.scope_dir(scope)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".tmp-*"):  # left by a crash mid-save: never a version, remove
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            meta = {"format": "pt", "base_version": str(report.get("base_version", "")), "scope": scope}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS), metadata=meta)
            with open(tmp / WEIGHTS, "rb+") as f:
                os.fsync(f.fileno())
            if plot_png is not None:
                _write_durably(tmp / PLOT, plot_png)
            _fsync_dir(tmp)
            for _ in range(1000):
                n = self._next_number(scope)
                version_id = f"{scope}-v{n}"
                body = dict(report, id=version_id, scope=scope)
                _write_durably(tmp / REPORT, json.dumps(body, indent=1, default=str).encode())
                _fsync_dir(tmp)
                try:
                    os.rename(tmp, folder / version_id)  # fails if another process took N meanwhile
                except OSError:
                    continue
                _fsync_dir(folder)
                return VersionInfo(version_id, scope, folder / version_id, body)
            raise VersionError(f"could not allocate a version number under {folder}")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _next_number(self, scope: str) -> int:
        numbers = [int(m.group("n")) for p in self.scope_dir(scope).iterdir() if (m := _VERSION.match(p.name))]
        return max(numbers, default=0) + 1

    def set_served(self, scope: str, version_id: str | None, *, reason: str, base_version: str | None = None) -> dict:
        """Point ``scope`` at ``version_id`` (None: the base model), atomically; returns the pointer."""
        if version_id is not None:
            info = self.get(version_id)
            if info.scope != scope:
                raise VersionError(f"version {version_id} belongs to {info.scope}, not {scope}")
            if base_version is not None and info.base_version != base_version:
                raise VersionError(
                    f"version {version_id} was trained on {info.base_version}, but the served base model is "
                    f"{base_version}; it cannot be served on top of it"
                )
        folder = self.scope_dir(scope)
        folder.mkdir(parents=True, exist_ok=True)
        pointer = {"version": version_id, "changed_at": time.time(), "reason": reason}
        tmp = folder / f".{POINTER}.{uuid.uuid4().hex}"
        _write_durably(tmp, json.dumps(pointer).encode())
        os.replace(tmp, folder / POINTER)
        _fsync_dir(folder)
        with open(folder / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps(pointer) + "\n")
        log.info("%s now serves %s (%s)", scope, version_id or "the base model", reason)
        return pointer

    # ------------------------------------------------------------------ reading
    def served(self, scope: str) -> str | None:
        """The version ``scope`` serves, or None for the base model."""
        try:
            pointer = json.loads(self.pointer_path(scope).read_text())
        except FileNotFoundError:
            return None
        version = pointer.get("version")
        return version if isinstance(version, str) else None

    def get(self, version_id: str) -> VersionInfo:
        scope = self.scope_of(version_id)
        path = self.scope_dir(scope) / version_id
        try:
            report = json.loads((path / REPORT).read_text())
        except FileNotFoundError:
            raise VersionError(f"there is no version {version_id} in {self.root}") from None
        if not (path / WEIGHTS).is_file():
            raise VersionError(f"version {version_id} has no {WEIGHTS}")
        return VersionInfo(version_id, scope, path, report)

    def scopes(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _SCOPE.match(p.name))

    def list(self, scope: str | None = None) -> list[VersionInfo]:
        """Versions of ``scope`` (all scopes when None), oldest first within a scope."""
        out = []
        for s in [scope] if scope else self.scopes():
            folder = self.scope_dir(s)
            if not folder.is_dir():
                continue
            found = [(int(m.group("n")), p.name) for p in folder.iterdir() if (m := _VERSION.match(p.name))]
            for _, name in sorted(found):
                try:
                    out.append(self.get(name))
                except (VersionError, ValueError) as exc:
                    log.warning("skipping version %s: %s", name, exc)
        return out

    def load_delta(self, version_id: str, base_version: str | None = None) -> dict:
        """The version's tensors (CPU), read with safetensors only; checks the base it was made for."""
        from safetensors import safe_open

        info = self.get(version_id)
        with safe_open(str(info.path / WEIGHTS), framework="pt", device="cpu") as f:
            _check_base(version_id, (f.metadata() or {}).get("base_version", ""), base_version)
            return {k: f.get_tensor(k) for k in f.keys()}

    def delta_bytes(self, version_id: str, base_version: str | None = None) -> bytes:
        """The version's safetensors file, whole, for a worker that has no access to this
        ``MODEL_DIR`` (a Ray actor on another machine); checks the base it was made for."""
        from safetensors import safe_open

        path = self.get(version_id).path / WEIGHTS
        with safe_open(str(path), framework="pt", device="cpu") as f:
            _check_base(version_id, (f.metadata() or {}).get("base_version", ""), base_version)
        return path.read_bytes()


def _check_base(version_id: str, made_for: str, base_version: str | None) -> None:
    if base_version is not None and made_for != base_version:
        raise VersionError(f"version {version_id} was trained on {made_for!r}, not on the served {base_version!r}")


def tensors_from_bytes(data: bytes) -> dict:
    """A delta shipped by ``VersionStore.delta_bytes``, parsed by safetensors (never pickle)."""
    from safetensors.torch import load

    return load(data)


def serve_delta(base, version_id: str, tensors: dict):
    """``base`` (an image engine) serving fine-tuned ``version_id`` from its delta ``tensors``:
    a new engine sharing the base's tracker, scheduler and caches; ``base`` is not modified."""
    from .training.weights import patched_detector

    detector = patched_detector(base.model.detector, tensors)
    return base.with_detector(detector, model_version(base.model.backbone_version, version_id))


@dataclass
class _Served:
    signature: tuple | None
    base: object
    engine: object
    version: str | None
    error: str | None = None


class ServedModels:
    """Per process: the engine each scope serves, following ``SERVED.json`` switches.

    ``engine_for(scope, base)`` costs one ``stat`` when nothing changed. On a change it loads the
    new version's delta and builds ``base.with_detector(...)`` (the base engine is never
    modified). A version that fails to load is logged and the base model served instead, once per
    pointer change. At most ``max_variants`` fine-tuned detectors are kept in memory (LRU).
    """

    def __init__(self, store: VersionStore, max_variants: int = 8):
        self.store = store
        self.max_variants = max(1, max_variants)
        self._served: OrderedDict[str, _Served] = OrderedDict()
        self._lock = threading.Lock()

    def _signature(self, scope: str) -> tuple | None:
        try:
            st = os.stat(self.store.pointer_path(scope))
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def engine_for(self, scope: str, base):
        if not hasattr(base, "with_detector"):  # still loading, or a stand-in engine
            return base
        signature = self._signature(scope)
        current = self._served.get(scope)
        if current is not None and current.signature == signature and current.base is base:
            return current.engine
        if signature is None and current is None:
            return base
        with self._lock:
            current = self._served.get(scope)
            if current is None or current.signature != signature or current.base is not base:
                current = self._load(scope, base, signature)
                self._served[scope] = current
            self._served.move_to_end(scope)
            while len(self._served) > self.max_variants:
                self._served.popitem(last=False)
            return current.engine

    def status(self, scope: str) -> dict:
        current = self._served.get(scope)
        return {"version": current.version if current else self.store.served(scope),
                "error": current.error if current else None}

    def _load(self, scope: str, base, signature) -> _Served:
        version = self.store.served(scope) if signature is not None else None
        if version is None:
            return _Served(signature, base, base, None)
        try:
            engine = serve_delta(base, version, self.store.load_delta(version, base.model.backbone_version))
            log.info("%s: serving %s", scope, engine.model_version)
            return _Served(signature, base, engine, version)
        except Exception as exc:  # a broken version must not take serving down: base model, loudly
            error = f"{type(exc).__name__}: {exc}"
            log.error("%s: cannot serve version %s (%s); serving the base model instead", scope, version, error)
            return _Served(signature, base, base, None, error)
