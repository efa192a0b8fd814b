"""The job layer: long work (training, project prelabels, video tracks) outside HTTP requests.

``store`` keeps job state in SQLite (shared by every worker process and the CLI), ``executor``
runs job functions; one module per job kind (``train``, ...) composes ``ls/`` and ``engine/``.
"""
