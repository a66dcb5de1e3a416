"""`--engine ray`: a local Ray cluster gives the same rows as the local engine, and a worker that
dies mid-run is replaced without losing or duplicating rows."""

import os
import sys
from pathlib import Path

import pytest

from unipixel_cli.engine import EngineOptions
from unipixel_cli.manifest import load_manifest
from unipixel_cli.output import ResultsWriter, read_results

from .helpers import assert_same_results, cli

# before Ray is imported: workers use this environment, not a `uv run` of their own
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ray = pytest.importorskip("ray", reason="the ray extra is not installed (uv sync --extra ray)")

from unipixel_cli.distributed import UniPixelActor, run_ray  # noqa: E402


class CrashOnceActor(UniPixelActor):
    """Kills its own process on the first batch it sees, once per test (marker file)."""

    marker: str = ""

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text("crashed")
            os._exit(1)
        return super().__call__(batch)


def test_ray_engine_matches_local_engine(tmp_path, conformance_dir):
    manifest = ROOT / "examples" / "videos.jsonl"
    model = conformance_dir / "tiny-unipixel"
    common = ["--model", model, "--max-new-tokens", "16", "--batch-size", "2"]
    assert cli("segment", manifest, "-o", tmp_path / "local", *common).returncode == 0
    r = cli("segment", manifest, "-o", tmp_path / "ray", *common, "--engine", "ray", "--workers", "2",
            "--cpus-per-worker", "0.5", timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_results(read_results(tmp_path / "local"), read_results(tmp_path / "ray"))


def test_killed_worker_is_replaced_without_losing_or_duplicating_rows(tmp_path, conformance_dir):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    CrashOnceActor.marker = str(tmp_path / "crashed.marker")
    rows, _ = load_manifest(ROOT / "examples" / "videos.jsonl", "segment")
    writer = ResultsWriter(tmp_path / "out", flush_rows=1)
    written = []

    def sink(row):
        written.append(row["id"])
        writer.write(row)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_ray("segment", rows, sink, str(conformance_dir / "tiny-unipixel"), "cpu", "fp32",
                EngineOptions(max_new_tokens=16, batch_size=2), workers=1, actor_cls=CrashOnceActor)
    finally:
        ray.shutdown()
        writer.close()
    assert Path(CrashOnceActor.marker).exists(), "the worker never crashed: nothing was tested"
    assert sorted(written) == sorted(r.id for r in rows)
    assert sorted(read_results(tmp_path / "out")["id"]) == sorted(r.id for r in rows)
