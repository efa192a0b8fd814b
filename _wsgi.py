"""WSGI entry point, as in label-studio-ml backends: ``gunicorn _wsgi:app`` (which reads
``gunicorn.conf.py`` from this folder) or ``python _wsgi.py``."""

import sys

if __name__ == "__main__":
    from sam3_backend.cli import main

    sys.exit(main(["serve"]))
else:
    from sam3_backend.app import create_app
    from sam3_backend.config import Settings

    try:
        _settings = Settings.from_env()
    except ValueError as exc:  # bad settings: one line that says what to fix, no traceback
        print(f"sam3-backend: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(_settings)
