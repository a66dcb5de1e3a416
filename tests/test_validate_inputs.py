"""`unipixel validate`: the same checks as `segment`/`pixelqa`, user text shown as text, the task
detected from the rows."""

import json

from PIL import Image

from unipixel_cli.manifest import load_manifest
from unipixel_cli.validation import row_problems

from .helpers import cli


def frame_folder(path, sizes, extra_files=()):
    path.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i, i, i)).save(path / f"{i:03d}.png")
    for name in extra_files:
        (path / name).write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 40)
    return path


def test_validate_shows_user_text_and_runs_the_run_time_checks(tmp_path, conformance_dir):
    folder = tmp_path / "[red]"  # a folder name that is also rich markup
    folder.mkdir()
    video = str(conformance_dir / "media" / "video.mp4")
    frame_folder(folder / "mixed", [(8, 6)] * 7 + [(8, 5)] + [(8, 6)] * 4)  # frame 7 never sampled below
    frame_folder(folder / "clean", [(8, 6)] * 4, extra_files=["._000.png"])
    rows = [
        {"id": "[/oops]", "video": "missing.mp4", "prompt": "x"},
        {"id": "late", "video": video, "prompt": "x", "end": 500},
        {"id": "mixed", "frames": "mixed", "prompt": "x", "sample_frames": 2},
        {"id": "clean", "frames": "clean", "prompt": "x"},
        {"id": "ok", "video": video, "prompt": "x", "end": 16},
    ]
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    r = cli("validate", manifest)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    out = " ".join(r.stdout.split())
    assert "[/oops]" in out and "[red]" in out
    assert "line 1: " in out and "file not found" in out
    assert "line 2: end 500 is past the end of the media (16 frames" in out
    assert "line 3: " in out and "007.png: size 8x5 differs from the first frame's 8x6" in out
    assert "line 4" not in out and "line 5" not in out
    # the engine runs exactly these checks (Engine.prepare calls validation.check_row)
    loaded, _ = load_manifest(manifest, "segment")
    assert [bool(row_problems(m)) for m in loaded] == [True, True, True, False, False]


def test_validate_detects_pixelqa_rows_without_task(tmp_path, conformance_dir):
    video = str(conformance_dir / "media" / "video.mp4")
    manifest = tmp_path / "q.jsonl"
    manifest.write_text(json.dumps({"id": "q", "video": video, "question": "What is [0]?",
                                    "objects": [{"id": 0, "frame": 3, "point": [10, 20]}]}))
    r = cli("validate", manifest)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rows valid (pixelqa)" in r.stdout


def test_validate_refuses_to_guess_a_mixed_manifest(tmp_path):
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text(json.dumps({"image": "a.png", "prompt": "x"}) + "\n"
                        + json.dumps({"image": "a.png", "question": "[0]?", "objects": []}) + "\n")
    r = cli("validate", manifest)
    assert r.returncode == 2 and "pass --task" in r.stderr and "Traceback" not in r.stderr
