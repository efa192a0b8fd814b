"""Shared fixtures: a tiny random-init SAM 3 in the facebook/sam3 layout, in an offline hub cache.

The environment is set before anything imports huggingface_hub (it reads these at import), so
``from_pretrained("facebook/sam3")`` resolves to the tiny checkpoint with no network — the very
path production uses for the real weights.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HUB = Path(tempfile.mkdtemp(prefix="sam3-test-hub-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_CACHE"] = str(_HUB)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"



@pytest.fixture(scope="session")
def payloads() -> dict:
    return json.loads((FIXTURES / "payloads-1.23.2.json").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from sam3_backend.engine.tiny import install_in_hub_cache, write_tiny_checkpoint

    folder = write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-sam3"))
    install_in_hub_cache(folder, _HUB)
    return folder


@pytest.fixture(scope="session")
def loaded_model(tiny_checkpoint):
    """Loaded through the production path: the hub id, resolved from the offline cache."""
    from sam3_backend.engine.loading import ModelSource, load_sam3

    return load_sam3(ModelSource("facebook/sam3"), device="cpu")


@pytest.fixture
def engine(loaded_model):
    """A fresh engine (empty caches, zero counters) over the shared loaded model."""
    from sam3_backend.engine.image import Sam3ImageEngine

    return Sam3ImageEngine(loaded_model, feature_cache_bytes=64 * 1024 * 1024)

