"""Label Studio's API (label-studio-sdk): a project's annotated tasks and label config.

Used when training starts, to reconcile the annotation store with Label Studio, so annotations
made before the backend was connected (or whose webhooks were lost) count. The credentials go
only to ``base_url``, Label Studio's own address.

(A small module of its own until ``ls/client.py``, the project's label-studio-sdk client, lands.)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MediaUnavailable


class LabelStudioUnavailable(MediaUnavailable):
    """Label Studio's API could not be reached or refused the request."""


@dataclass(frozen=True)
class ProjectExport:
    label_config: str | None
    tasks: list[dict]  # each with "id", "data" and "annotations" (Label Studio's JSON)


def export_annotated_tasks(base_url: str, api_key: str, project: int, *, max_tasks: int = 100_000,
                           page_size: int = 100, timeout: float = 60.0) -> ProjectExport:
    """Every task of ``project`` that has annotations, with them, via label-studio-sdk 2.x."""
    from label_studio_sdk import LabelStudio

    try:
        client = LabelStudio(base_url=base_url, api_key=api_key, timeout=timeout)
        config = client.projects.get(id=project).label_config
        tasks = []
        for task in client.tasks.list(project=project, fields="all", only_annotated=True, page_size=page_size):
            tasks.append(task if isinstance(task, dict) else task.model_dump(mode="json"))
            if len(tasks) >= max_tasks:
                break
    except Exception as exc:  # httpx errors, API errors, auth: one message, the job decides
        raise LabelStudioUnavailable(
            f"could not read project {project}'s annotations from Label Studio at {base_url}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    return ProjectExport(config if isinstance(config, str) else None, tasks)
