"""gunicorn reads this file from the working directory: ``gunicorn _wsgi:app`` then runs with the
same worker class, threads, timeouts and bind address as ``sam3-backend serve``."""

from sam3_backend.config import Settings
from sam3_backend.gunicorn_conf import options

globals().update(options(Settings.from_env()))
