"""A fake Label Studio API with an image project, and a jobs runtime over the tiny model."""

from __future__ import annotations

import pytest

from fake_ls_api import TOKEN, FakeLabelStudioAPI, add_image_tasks
from helpers import FULL_CONFIG


@pytest.fixture
def fake_api():
    api = FakeLabelStudioAPI()
    yield api
    api.close()


@pytest.fixture
def image_project(fake_api):
    project = fake_api.add_project(FULL_CONFIG)
    good = add_image_tasks(fake_api, project, 10)
    return project, good


@pytest.fixture
def connection(fake_api):
    from sam3_backend.ls.client import ApiAccess

    return ApiAccess(fake_api.url, TOKEN)


@pytest.fixture
def job_settings(tmp_path):
    from sam3_backend.config import Settings

    return Settings.from_env({}, model_dir=tmp_path / "model", score_threshold=0.0, max_instances=2,
                             prelabel_batch_size=2, bulk_write_batch=4, label_studio_retries=3)


@pytest.fixture
def runtime(job_settings, engine):
    from sam3_backend.jobs.runtime import JobsRuntime

    rt = JobsRuntime(job_settings, engine=lambda: engine, ls_backoff=0.01)
    yield rt
    rt.shutdown(timeout=5)
