"""WSGI entry point, as in label-studio-ml backends: ``gunicorn _wsgi:app`` or ``python _wsgi.py``."""

if __name__ == "__main__":
    from sam3_backend.cli import main

    main(["serve"])
else:
    from sam3_backend.app import create_app

    app = create_app()
