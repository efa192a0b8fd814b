"""``sam3-backend prelabel`` and ``sam3-backend jobs`` as a user runs them (subprocesses),
against the fake Label Studio API, with the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fake_ls_api import TOKEN

CLI = [sys.executable, "-m", "sam3_backend.cli"]


def _env(fake_api, tiny_checkpoint, model_dir, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO", "SAM3_", "RAY_", "MODEL_DIR"))}
    env.update({"LABEL_STUDIO_URL": fake_api.url, "LABEL_STUDIO_API_KEY": TOKEN, "SAM3_MODEL": str(tiny_checkpoint),
                "MODEL_DIR": str(model_dir), "SAM3_DEVICE": "cpu", "SAM3_SCORE_THRESHOLD": "0",
                "SAM3_MAX_INSTANCES": "2", "SAM3_BULK_WRITE_BATCH": "4", "LABEL_STUDIO_RETRIES": "1"})
    env.update(extra)
    return env


def _run(args, env, timeout=240):
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parents[2])


def test_prelabel_command_writes_once_and_jobs_lists_it(fake_api, image_project, tiny_checkpoint, tmp_path):
    project, tasks = image_project
    env = _env(fake_api, tiny_checkpoint, tmp_path / "model")
    proc = _run(["prelabel", "--project", str(project), "--batch-size", "2", "--labels", "cat,dog"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["state"] == "done" and summary["written"] == 10 and summary["failed"] == 0
    assert "prelabel" in proc.stderr and "img" in proc.stderr  # the progress bar
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks)

    again = _run(["prelabel", "--project", str(project), "--no-progress"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["skipped_existing"] == 10 and json.loads(again.stdout)["written"] == 0
    assert "loading SAM 3" not in again.stderr  # nothing to predict: the model is never loaded
    assert all(len(fake_api.predictions_of(t)) == 1 for t in tasks)

    listed = _run(["jobs", "list", "--json"], env)
    jobs = json.loads(listed.stdout)
    assert [j["state"] for j in jobs] == ["done", "done"] and jobs[1]["id"] == summary["job"]
    shown = json.loads(_run(["jobs", "show", summary["job"]], env).stdout)
    assert shown["result"]["written"] == 10
    table = _run(["jobs"], env).stdout
    assert summary["job"] in table and "10/10" in table
    cancel_done = _run(["jobs", "cancel", summary["job"]], env)
    assert cancel_done.returncode == 0 and "done" in cancel_done.stdout


def test_prelabel_command_errors_are_one_line(fake_api, image_project, tiny_checkpoint, tmp_path):
    project, _ = image_project
    env = _env(fake_api, tiny_checkpoint, tmp_path / "model")
    no_ls = _run(["prelabel", "--project", str(project)], {**env, "LABEL_STUDIO_URL": ""})
    assert no_ls.returncode == 2 and "LABEL_STUDIO_URL" in no_ls.stderr and "Traceback" not in no_ls.stderr
    missing = _run(["prelabel", "--project", "42", "--no-progress"], env)
    assert missing.returncode == 1 and "project 42 does not exist" in missing.stderr
    assert json.loads(missing.stdout)["state"] == "failed"
    fake_api.revoked = True
    revoked = _run(["prelabel", "--project", str(project), "--no-progress"], env)
    assert revoked.returncode == 1 and "refused the API key" in revoked.stderr
    unknown = _run(["jobs", "show", "nope"], env)
    assert unknown.returncode == 2 and "no job nope" in unknown.stderr
