"""Shared helpers for benchmarks: keep one marked section per benchmark in bench/RESULTS.md."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "# Benchmark results\n"


def write_section(name: str, markdown: str, path: Path | str = RESULTS) -> Path:
    """Replace the block between ``<!-- {name}:start -->`` and ``<!-- {name}:end -->``
    in ``path`` with ``markdown`` (markers kept), appending the block if it is absent and
    creating the file with a ``# Benchmark results`` heading if it is missing.
    Other sections are left untouched. Returns the path written."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"section name must be word characters, '.' or '-': {name!r}")
    path = Path(path)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"

    path.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(path.parent):  # benchmarks may finish at the same time
        _replace_block(path, start, end, block)
    return path


@contextlib.contextmanager
def _dir_lock(directory: Path):
    """Exclusive flock on the directory itself (no lock file left behind); no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _replace_block(path: Path, start: str, end: str, block: str) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else HEADING
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    if not text.endswith("\n"):
        text += "\n"

    # Write atomically so a concurrent reader never sees a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def machine_info() -> str:
    """One line describing when and where a benchmark ran."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        nproc = str(os.cpu_count())
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{now}; {cpu} ({platform.machine()}, nproc={nproc}); {platform.system()} {platform.release()}; Python {platform.python_version()}"


def markdown_table(header: list, rows: list[list]) -> str:
    """A GitHub markdown table; cells are str()-ed and '|' in them escaped."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|"] + [line(r) for r in rows])
