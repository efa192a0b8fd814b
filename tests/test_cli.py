"""The command line, run as a user runs it (subprocesses, the tiny model from a folder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLI = [sys.executable, "-m", "sam3_backend.cli"]


def _env(model: Path) -> dict:
    return dict(os.environ, SAM3_MODEL=str(model), SAM3_SCORE_THRESHOLD="0")


def test_tiny_model_command_writes_a_loadable_checkpoint(tmp_path):
    out = subprocess.run(CLI + ["tiny-model", str(tmp_path / "m"), "--hub-cache", str(tmp_path / "hub")],
                         capture_output=True, text=True, check=True)
    assert "RANDOMLY INITIALISED" in out.stdout
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert (tmp_path / "hub" / "models--facebook--sam3" / "refs" / "main").exists()


def test_predict_writes_masks_json_and_overlay(tmp_path, tiny_checkpoint):
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    for args, expected in (
        (["--point", "30,20", "--point", "70,50,0"], 1),
        (["--box", "5,5,40,40", "--box", "40,10,79,59"], 2),
        (["--text", "cat"], None),
    ):
        out_dir = tmp_path / ("out" + str(len(args)) + args[0])
        subprocess.run(CLI + ["predict", str(image), *args, "--out", str(out_dir)], env=_env(tiny_checkpoint),
                       capture_output=True, text=True, check=True)
        summary = json.loads((out_dir / "instances.json").read_text())
        assert summary["test_model"] is True and (summary["width"], summary["height"]) == (80, 60)
        if expected is not None:
            assert len(summary["instances"]) == expected
        for inst in summary["instances"]:
            mask = np.array(Image.open(out_dir / inst["mask"]))
            assert mask.shape == (60, 80) and int((mask > 0).sum()) == inst["area"]
        assert Image.open(out_dir / "overlay.png").size == (80, 60)


def test_predict_rejects_bad_arguments(tmp_path, tiny_checkpoint):
    image = tmp_path / "p.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(image)
    for args, needle in ((["--point", "a,b"], "numbers"), (["--box", "5,5,1,1"], "X0 < X1"), ([], "at least one")):
        r = subprocess.run(CLI + ["predict", str(image), *args, "--out", str(tmp_path / "o")],
                           env=_env(tiny_checkpoint), capture_output=True, text=True)
        assert r.returncode != 0 and needle in r.stderr


def test_wsgi_entry_point_serves_the_app(tiny_checkpoint, tmp_path):
    code = (
        "import _wsgi, time\n"
        "c = _wsgi.app.test_client()\n"
        "for _ in range(300):\n"
        "    r = c.get('/health')\n"
        "    if r.status_code == 200: break\n"
        "    time.sleep(0.1)\n"
        "print(r.status_code, r.json['status'])\n"
    )
    env = dict(_env(tiny_checkpoint), MODEL_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("200 UP")


def test_bad_settings_and_missing_files_exit_with_a_message(tmp_path, tiny_checkpoint):
    env = dict(_env(tiny_checkpoint), SAM3_SCORE_THRESHOLD="7")
    r = subprocess.run(CLI + ["serve"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "SAM3_SCORE_THRESHOLD" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(CLI + ["predict", str(tmp_path / "nope.png"), "--text", "x", "--out", str(tmp_path)],
                       env=_env(tiny_checkpoint), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope.png" in r.stderr and "Traceback" not in r.stderr


def test_a_key_without_its_url_refuses_to_start_with_one_line(tmp_path, tiny_checkpoint):
    env = dict(_env(tiny_checkpoint), LABEL_STUDIO_API_KEY="secret-key")
    env.pop("LABEL_STUDIO_URL", None)
    for argv in (CLI + ["serve"], [sys.executable, "-c", "import _wsgi"]):
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                           cwd=Path(__file__).resolve().parents[1])
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "LABEL_STUDIO_API_KEY is set without LABEL_STUDIO_URL" in lines[0]
        assert "secret-key" not in r.stderr
def test_predict_video_writes_label_studio_tracks_and_a_preview(tmp_path, tiny_checkpoint):
    import av

    from video_clips import make_clip

    clip = tmp_path / "clip.webm"
    make_clip(clip, frames=20, width=96, height=64)
    env = dict(_env(tiny_checkpoint), SAM3_VIDEO_SCORE_THRESHOLD="0", SAM3_VIDEO_HOTSTART_FRAMES="0",
               SAM3_VIDEO_MAX_OBJECTS="2")
    for args, preview in ((["--text", "car", "--fps", "25"], "preview.mp4"),
                          (["--box", "1,4,16,20,28", "--box", "8,60,10,72,30", "--preview", "sheet"], "preview.png")):
        out = tmp_path / preview
        r = subprocess.run(CLI + ["predict", str(clip), *args, "--out", str(out)], env=env, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        assert summary["frames"] == 20 and summary["test_model"] is True
        assert "frame/s" in r.stderr or "frame]" in r.stderr  # the progress bar
        [task] = json.loads((out / "tracks.json").read_text())
        regions = task["predictions"][0]["result"]
        assert task["data"]["video"] == str(clip) and all(reg["type"] == "videorectangle" for reg in regions)
        if "--box" in args:
            assert [reg["id"] for reg in regions] == ["box1", "box2"]  # every box is its own object
            assert summary["frames_tracked"] == 20 + 7  # forwards from frame 1, backwards before frame 8
        else:
            assert regions and all(reg["value"]["labels"] == ["car"] for reg in regions)
            assert all(k["time"] == k["frame"] / 25 for reg in regions for k in reg["value"]["sequence"])
        if preview.endswith(".mp4"):
            with av.open(str(out / preview)) as container:
                stream = container.streams.video[0]
                assert stream.codec_context.name == "h264" and sum(1 for _ in container.decode(stream)) == 20
        else:
            assert Image.open(out / preview).size[0] > 96


def test_predict_video_rejects_bad_boxes(tmp_path, tiny_checkpoint):
    from video_clips import make_clip

    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=6)
    for args, needle in ((["--box", "1,2,3,4"], "FRAME,X0,Y0,X1,Y1"), (["--box", "0,1,1,5,5"], "from 1"),
                         (["--box", "9,1,1,5,5"], "6 frames"), (["--box", "1,1,1,500,5"], "outside"),
                         ([], "either --text"), (["--point", "3,3"], "--point is for images")):
        r = subprocess.run(CLI + ["predict", str(clip), *args, "--out", str(tmp_path / "o")],
                           env=_env(tiny_checkpoint), capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and needle in r.stderr, (args, r.stderr[-2000:])
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"not a video")
    r = subprocess.run(CLI + ["predict", str(bad), "--text", "car", "--out", str(tmp_path / "o")],
                       env=_env(tiny_checkpoint), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "not a video" in r.stderr and "Traceback" not in r.stderr
