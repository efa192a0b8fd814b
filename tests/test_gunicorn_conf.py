"""`gunicorn _wsgi:app` (README) and `sam3-backend serve` run with the same gunicorn settings."""

from __future__ import annotations

from pathlib import Path

from gunicorn.app.base import Application

from sam3_backend.config import Settings
from sam3_backend.gunicorn_conf import options

ROOT = Path(__file__).resolve().parents[1]


class _FileConfigured(Application):
    """gunicorn's own config-file loading, as `gunicorn -c gunicorn.conf.py` does it."""

    def init(self, parser, opts, args):
        return None

    def load(self):  # never called here
        raise AssertionError

    def load_config(self):
        self.load_config_from_file(str(ROOT / "gunicorn.conf.py"))


def test_gunicorn_conf_file_matches_serve(monkeypatch):
    monkeypatch.setenv("THREADS", "5")
    monkeypatch.setenv("WORKERS", "2")
    monkeypatch.setenv("PORT", "9555")
    monkeypatch.setattr("sys.argv", ["gunicorn"])
    cfg = _FileConfigured().cfg
    expected = options(Settings.from_env())
    assert expected["threads"] == 5 and expected["workers"] == 2
    for key, value in expected.items():
        assert cfg.settings[key].get() == value, key
    assert cfg.worker_class_str == "gthread"
    assert cfg.preload_app is False
