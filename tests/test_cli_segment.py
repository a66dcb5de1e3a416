"""`unipixel segment` end to end on the conformance checkpoint (CPU)."""

import json
import signal
import subprocess
import sys
import time

import pytest

from unipixel_cli.output import read_results, written_ids

from .helpers import assert_same_results, cli, mask_iou

pytestmark = pytest.mark.slow


def seg_cases(conformance_dir):
    cases = [json.loads(x) for x in (conformance_dir / "cases.jsonl").read_text().splitlines() if x.strip()]
    golden = {c["case_id"]: c for c in json.loads((conformance_dir / "golden.json").read_text())["cases"]}
    out = []
    for c in cases:
        if "visual_prompts" in c or "user_mask" in c:
            continue
        key = {"video": "video", "image": "image", "frame_folder": "frames"}[c["media_type"]]
        propagate = "all" if c["sam2_frame_indices"] != c["llm_frame_indices"] else "sampled"
        row = {"id": c["id"], key: str(conformance_dir / c["media"]), "prompt": c.get("prompt") or c["question"],
               "sample_frames": c["sample_frames"], "propagate": propagate, "max_new_tokens": c["max_new_tokens"]}
        out.append((row, golden[c["id"]]["calls"][0], c))
    return out


def test_segment_reproduces_golden_segmentation_cases(tmp_path, conformance_dir):
    cases = seg_cases(conformance_dir)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r, _, _ in cases))
    r = cli("segment", manifest, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel",
            "--batch-size", 3)
    assert r.returncode == 0, r.stderr
    df = read_results(tmp_path / "out").set_index("id")
    for row, call, case in cases:
        got = df.loc[row["id"]]
        assert got["status"] == "ok"
        assert got["raw_answer"] == call["response"]
        assert list(got["frame_indices"]) == case["sam2_frame_indices"]
        assert len(got["objects"]) == len(call["masks"])
        for obj, gm in zip(got["objects"], call["masks"]):
            assert all(mask_iou(m, g["rle"]) >= 0.98 for m, g in zip(obj["masks"], gm["frames"]))


def test_bad_rows_give_exit_3_and_good_rows_survive(tmp_path, conformance_dir):
    img = conformance_dir / "media" / "image.png"
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 500)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "good", "image": str(img), "prompt": "Please segment the blue box.", "max_new_tokens": 8}),
        json.dumps({"id": "missing", "video": "nope.mp4", "prompt": "x"}),
        json.dumps({"id": "broken", "video": "broken.mp4", "prompt": "x"}),
        '{"id": "json", ',
        json.dumps({"id": "extra", "image": str(img), "prompt": "x", "bogus": 1}),
    ]))
    r = cli("segment", manifest, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel")
    assert r.returncode == 3, r.stderr
    df = read_results(tmp_path / "out").set_index("id")
    assert sorted(df.index) == ["broken", "extra", "good", "line4", "missing"]
    assert df.loc["good", "status"] == "ok" and df.loc["extra", "status"] == "ok"
    errors = df[df.status == "error"]["error"].to_dict()
    assert "line 2:" in errors["missing"] and "file not found" in errors["missing"]
    assert "line 3:" in errors["broken"] and "broken.mp4" in errors["broken"]
    assert "line 4:" in errors["line4"] and "invalid JSON" in errors["line4"]
    assert "extra" not in errors  # an unknown key is the user's column, passed through
    assert json.loads(df.loc["extra", "extra"]) == {"bogus": 1}


def test_usage_errors_exit_2(tmp_path, conformance_dir):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "image": "x.png", "prompt": "p"}\n{"id": "a", "image": "y.png", "prompt": "p"}\n')
    assert cli("segment", manifest, "-o", tmp_path / "o").returncode == 2
    assert cli("segment", tmp_path / "none.jsonl", "-o", tmp_path / "o").returncode == 2


def _many_rows(tmp_path, conformance_dir, n):
    img = conformance_dir / "media" / "image.png"
    manifest = tmp_path / "many.jsonl"
    manifest.write_text("\n".join(json.dumps({"id": f"r{i:03d}", "image": str(img), "prompt": "Please segment the box.",
                                              "max_new_tokens": 8}) for i in range(n)))
    return manifest


def test_shards_cover_the_manifest_exactly_once(tmp_path, conformance_dir):
    manifest = _many_rows(tmp_path, conformance_dir, 12)
    out = tmp_path / "out"
    model = conformance_dir / "tiny-unipixel"
    for s in ("0/2", "1/2"):
        assert cli("segment", manifest, "-o", out, "--model", model, "--shard", s).returncode == 0
    df = read_results(out)
    assert sorted(df["id"]) == [f"r{i:03d}" for i in range(12)]
    assert len(df) == 12


def test_second_run_on_locked_output_exits_4(tmp_path, conformance_dir):
    from unipixel_cli.output import OutputLock, Shard

    manifest = _many_rows(tmp_path, conformance_dir, 2)
    with OutputLock(tmp_path / "out", Shard()):
        r = cli("segment", manifest, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel")
    assert r.returncode == 4 and "lock" in r.stderr


def test_sigkill_mid_run_then_resume_keeps_every_row_exactly_once(tmp_path, conformance_dir):
    n = 48
    manifest = _many_rows(tmp_path, conformance_dir, n)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "unipixel_cli", "segment", str(manifest), "-o", str(out), "--model",
            str(conformance_dir / "tiny-unipixel"), "--batch-size", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("part-*.parquet")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = written_ids(out)  # every complete part is readable
    assert 0 < len(partial) < n, "kill landed outside the run; nothing to resume"
    r = cli("segment", manifest, "-o", out, "--model", conformance_dir / "tiny-unipixel", "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    df = read_results(out)
    assert sorted(df["id"]) == [f"r{i:03d}" for i in range(n)]
    assert not list(out.glob(".tmp-*"))


def test_batch_sizes_give_identical_outputs(tmp_path, conformance_dir):
    cases = seg_cases(conformance_dir)
    rows = [{**r, "id": f"{r['id']}-{k}"} for k in range(3) for r, _, _ in cases]  # 9 rows
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    results = {}
    for bs in (1, 3, 8):
        out = tmp_path / f"out{bs}"
        assert cli("segment", manifest, "-o", out, "--model", conformance_dir / "tiny-unipixel",
                   "--batch-size", bs).returncode == 0
        results[bs] = read_results(out)
    for bs in (3, 8):
        assert_same_results(results[1], results[bs])


def test_a_request_that_breaks_the_model_is_isolated_as_an_error_row(tmp_path, conformance_dir, monkeypatch):
    """The engine splits a failing batch until the failure sits on one request; the others finish."""
    from unipixel_cli.engine import Engine, EngineOptions
    from unipixel_cli.manifest import load_manifest
    from unipixel_cli.model.loading import load_unipixel

    model, processor = load_unipixel(conformance_dir / "tiny-unipixel", device="cpu", dtype="fp32")
    engine = Engine(model, processor, EngineOptions(max_new_tokens=8, batch_size=4))
    rows, _ = load_manifest(_many_rows(tmp_path, conformance_dir, 4), "segment")
    prepared = [engine.prepare(r) for r in rows]
    poisoned = prepared[2].request
    real = model.run_llm

    def flaky(requests, trace=False):
        if any(r is poisoned for r in requests):
            raise RuntimeError("synthetic kernel failure")
        return real(requests, trace)

    monkeypatch.setattr(model, "run_llm", flaky)
    out = [engine.finish(x) for x in engine.infer(prepared)]
    assert {r["id"]: r["status"] for r in out} == {"r000": "ok", "r001": "ok", "r002": "error", "r003": "ok"}
    err = next(r["error"] for r in out if r["id"] == "r002")
    assert err.startswith("line 3:") and "synthetic kernel failure" in err
