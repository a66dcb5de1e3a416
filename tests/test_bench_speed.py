"""`unipixel bench speed`: every setting runs every request and gives the same outputs."""

import copy
import json

import pytest

from unipixel_cli.bench.speed import run_speed, same_output
from unipixel_cli.engine import EngineOptions

from .helpers import cli

pytestmark = pytest.mark.slow


def test_baseline_and_batched_runs_agree_and_report_sane_numbers(fixture_model):
    model, processor = fixture_model
    results = run_speed(model, processor, None, num_requests=5, batch_sizes=[1, 3], baseline=True,
                        options=EngineOptions(sample_frames=4, max_new_tokens=24))
    assert [(r.mode, r.batch_size) for r in results] == [("per-sample", 1), ("batched", 1), ("batched", 3)]
    for r in results:
        assert r.requests == 5
        assert r.same_output == 1.0, f"{r.mode} bs {r.batch_size} changed the outputs"
        assert 0.0 < r.forward_share <= 1.0
        assert r.llm_s > 0 and r.decode_s > 0 and r.peak_memory_mb > 0
        assert r.requests_per_s == pytest.approx(r.requests / r.wall_s)


def test_same_output_notices_a_changed_answer_or_mask():
    rle_a = {"size": [2, 2], "counts": "04"}  # all ones
    rle_b = {"size": [2, 2], "counts": "4"}  # all zeros
    row = {"status": "ok", "raw_answer": "It is<|seg|>.", "objects": [{"masks": [rle_a, rle_a]}]}
    assert same_output(row, copy.deepcopy(row))
    assert not same_output(row, {**row, "raw_answer": "It is."})
    assert not same_output(row, {**row, "objects": [{"masks": [rle_a, rle_b]}]})
    assert not same_output(row, {**row, "objects": []})
    assert not same_output(row, {**row, "status": "error"})


def test_bench_speed_cli_writes_json(tmp_path, conformance_dir):
    out = tmp_path / "speed.json"
    r = cli("bench", "speed", "--model", conformance_dir / "tiny-unipixel", "--num-requests", 2,
            "--batch-sizes", 2, "--no-baseline", "--sample-frames", 2, "--max-new-tokens", 8, "--json", out)
    assert r.returncode == 0, r.stderr
    [row] = json.loads(out.read_text())
    assert row["mode"] == "batched" and row["batch_size"] == 2 and row["requests"] == 2
    assert row["same_output"] == 1.0
    assert "req/s" in r.stdout
