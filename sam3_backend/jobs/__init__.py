"""The job layer: long work (project prelabeling, video tracks, fine-tuning) as persisted jobs.

``store`` keeps jobs in SQLite in MODEL_DIR (state, progress, result; safe across threads and
processes); ``executor`` runs job functions in this process or on Ray; one module per job kind
(``prelabel``) composes the Label Studio side and the engine the way ``service`` does.
Importing this package does not import torch.
"""

from .store import Job, JobConflict, JobNotFound, JobState, JobStore

__all__ = ["Job", "JobConflict", "JobNotFound", "JobState", "JobStore"]
