"""Writing predictions into Label Studio tasks through its API (label-studio-sdk).

Background video tracks finish after Label Studio's request has been answered, so their result
goes in through ``/api/predictions``: ``upsert`` updates the task's prediction that carries one of
``replace_versions`` (a partial prelabel answer, an earlier background track), merging regions
by id when asked, or creates one. The Label Studio URL and key are those the media fetcher uses
(``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``, else what ``/setup`` sent); the SDK handles
both legacy tokens and personal access tokens. Credentials go to Label Studio only.

(The jobs layer's ``ls/client.py`` is the intended home of label-studio-sdk calls; this module
is the part video needs, written against the same SDK so the two can merge.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from ..errors import MediaUnavailable

log = logging.getLogger(__name__)


class PredictionWriter:
    """Creates or updates one prediction per call; thread-safe (a client per call)."""

    def __init__(self, base_url: Callable[[], str | None], api_key: Callable[[], str | None], timeout: float = 60.0):
        self._base_url = base_url
        self._api_key = api_key
        self._timeout = timeout

    def _client(self):
        from label_studio_sdk.client import LabelStudio

        base, key = self._base_url(), self._api_key()
        if not base or not key:
            raise MediaUnavailable(
                "cannot write predictions to Label Studio: its URL or API key is unknown; set LABEL_STUDIO_URL and "
                "LABEL_STUDIO_API_KEY, or connect the backend from Label Studio so /setup supplies them"
            )
        return LabelStudio(base_url=base.rstrip("/"), api_key=key, timeout=self._timeout)

    def upsert(
        self,
        task_id: int,
        result: list[dict],
        *,
        score: float,
        model_version: str,
        replace_versions: Sequence[str] = (),
        merge: bool = False,
    ) -> int:
        """Write ``result`` as the task's prediction; returns the prediction id.

        replace_versions: update (instead of adding to) the task's prediction with one of these
        model versions, if there is one. merge: keep that prediction's regions whose ids are not
        in ``result`` (several background tracks of one task end up in one prediction).
        """
        client = self._client()
        if replace_versions:
            for existing in client.predictions.list(task=int(task_id)):
                if existing.model_version in replace_versions:
                    regions = list(result)
                    if merge:
                        ids = {r.get("id") for r in result}
                        regions = [r for r in (existing.result or []) if r.get("id") not in ids] + regions
                    client.predictions.update(int(existing.id), result=regions, score=score, model_version=model_version)
                    log.info("task %s: prediction %s updated (%d regions, %s)", task_id, existing.id, len(regions), model_version)
                    return int(existing.id)
        created = client.predictions.create(task=int(task_id), result=result, score=score, model_version=model_version)
        log.info("task %s: prediction %s created (%d regions, %s)", task_id, created.id, len(result), model_version)
        return int(created.id)


__all__ = ["PredictionWriter"]
