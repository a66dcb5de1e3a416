"""`unipixel --help`, `validate`, `doctor`, `weights list`."""

import json

from .helpers import cli


def test_help_lists_the_commands():
    r = cli("--help")
    assert r.returncode == 0
    for command in ("segment", "pixelqa", "validate", "render", "doctor", "weights", "bench"):
        assert command in r.stdout


def test_validate_reports_problems_with_line_numbers(tmp_path, conformance_dir):
    video = str(conformance_dir / "media" / "video.mp4")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "ok", "video": video, "prompt": "Please segment the ball."}),
        json.dumps({"id": "gone", "video": "gone.mp4", "prompt": "x"}),
        json.dumps({"id": "late", "video": video, "prompt": "x", "start": 40}),
        "{not json",
    ]))
    r = cli("validate", manifest)
    assert r.returncode == 2
    out = " ".join(r.stdout.split())
    assert "line 2: " in out and "file not found" in out
    assert "line 3: start 40 is past the last frame (15)" in out
    assert "line 4: invalid JSON" in out
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"id": "ok", "video": video, "prompt": "x"}))
    r = cli("validate", good)
    assert r.returncode == 0 and "1 rows valid" in r.stdout


def test_validate_pixelqa_objects(tmp_path, conformance_dir):
    video = str(conformance_dir / "media" / "video.mp4")
    manifest = tmp_path / "q.jsonl"
    manifest.write_text(json.dumps({"id": "q", "video": video, "question": "What is [0]?",
                                    "objects": [{"id": 0, "frame": 3, "box": [10, 20, 400, 90]}]}))
    r = cli("validate", manifest, "--task", "pixelqa")
    assert r.returncode == 2 and "outside the 160x120 frame" in " ".join(r.stdout.split())


def test_doctor_and_weights_list(monkeypatch, tmp_path):
    r = cli("doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    for item in ("torch", "transformers", "sam2", "decord", "pycocotools", "pyarrow", "unipixel-3b"):
        assert item in r.stdout
    r = cli("weights", "list")
    assert r.returncode == 0 and "PolyU-ChenLab/UniPixel-7B" in r.stdout
