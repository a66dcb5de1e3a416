"""Run orchestration (`runner.run`) with a stand-in engine: resume, retry, fingerprints,
settings checks, current rows, the output folder's ownership and failed starts.

The model is not what these tests are about, so `load_engine` and `run_pipeline` are replaced
by a fake that answers each row with its prompt (and fails rows listed in `FAILING`); model
identity still comes from real checkpoint folders (the conformance checkpoint and a copy).
"""

import json
import shutil
from pathlib import Path

import duckdb
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

from unipixel_cli import engine as engine_mod
from unipixel_cli import runner
from unipixel_cli.output import read_results
from unipixel_cli.runner import EXIT_FATAL, EXIT_OK, EXIT_ROWS_FAILED, EXIT_USAGE, RunOptions, compact, run

FAILING: set[str] = set()
RAN: list[str] = []


def fake_pipeline(engine, rows, sink, should_stop=lambda: False):
    for r in rows:
        RAN.append(r.id)
        if r.id in FAILING:
            sink({"id": r.id, "task": "segment", "line": r.line, "status": "error", "error": f"line {r.line}: boom"})
        else:
            sink({"id": r.id, "task": "segment", "line": r.line, "media": r.row.media, "prompt": r.row.prompt,
                  "answer": r.row.prompt, "status": "ok"})


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch):
    FAILING.clear()
    RAN.clear()
    monkeypatch.setattr(runner, "load_engine", lambda *a, **k: object())
    monkeypatch.setattr(engine_mod, "run_pipeline", fake_pipeline)


@pytest.fixture
def model(conformance_dir) -> str:
    return str(conformance_dir / "tiny-unipixel")


def write_manifest(path: Path, prompts: dict[str, str]) -> Path:
    img = Path(__file__).resolve().parents[1] / "examples" / "still.png"
    path.write_text("".join(json.dumps({"id": i, "image": str(img), "prompt": p}) + "\n" for i, p in prompts.items()))
    return path


def test_error_rows_are_retried_by_default_and_kept_with_no_retry_errors(tmp_path, model):
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "p a", "b": "p b", "c": "p c"})
    out = tmp_path / "out"
    FAILING.add("b")
    first = run("segment", manifest, out, RunOptions(model=model))
    assert (first.exit_code, first.rows_ok, first.rows_failed) == (EXIT_ROWS_FAILED, 2, 1)

    kept = run("segment", manifest, out, RunOptions(model=model, retry_errors=False))
    assert kept.exit_code == EXIT_ROWS_FAILED and kept.rows_total == 0  # still failing, not rerun
    assert kept.plan.failed_kept == 1 and kept.plan.done == 2

    FAILING.clear()
    RAN.clear()
    retried = run("segment", manifest, out, RunOptions(model=model))
    assert retried.exit_code == EXIT_OK and retried.plan.retry == 1 and RAN == ["b"]
    df = read_results(out)
    assert sorted(df["id"]) == ["a", "b", "c"] and set(df["status"]) == {"ok"}


def test_changed_rows_rerun_and_supersede_and_removed_rows_are_reported(tmp_path, model):
    out = tmp_path / "out"
    run("segment", write_manifest(tmp_path / "m.jsonl", {"a": "old a", "b": "b", "gone": "g"}), out,
        RunOptions(model=model))
    RAN.clear()
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "new a", "b": "b", "new": "n"})
    report = run("segment", manifest, out, RunOptions(model=model))
    assert report.exit_code == EXIT_OK
    p = report.plan
    assert (p.new, p.changed, p.retry, p.done, p.stale) == (1, 1, 0, 1, 1)
    assert sorted(RAN) == ["a", "new"]
    df = read_results(out).set_index("id")
    assert sorted(df.index) == ["a", "b", "gone", "new"]  # one current row per id; removed rows stay
    assert df.loc["a", "answer"] == "new a"
    assert pq.read_table(out).num_rows == 5  # the old row of `a` is still in its part, superseded


def test_a_per_row_option_change_is_a_changed_row(tmp_path, model):
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "p", "b": "p"})
    run("segment", manifest, out, RunOptions(model=model))
    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    rows[0]["sample_frames"] = 4
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    RAN.clear()
    assert run("segment", manifest, out, RunOptions(model=model)).plan.changed == 1 and RAN == ["a"]


def test_other_model_or_options_are_refused_unless_superseded(tmp_path, model):
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "p", "b": "q"})
    assert run("segment", manifest, out, RunOptions(model=model)).exit_code == EXIT_OK
    parts = sorted(p.name for p in out.iterdir())

    other = tmp_path / "other-model"
    shutil.copytree(model, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "note": "another checkpoint"}))
    for opts in (RunOptions(model=str(other)), RunOptions(model=model, sample_frames=4),
                 RunOptions(model=model, dtype="bf16")):
        report = run("segment", manifest, out, opts)
        assert report.exit_code == EXIT_USAGE and "other settings" in report.error and "--supersede" in report.error
    assert "sample-frames 16 → 4" in run("segment", manifest, out, RunOptions(model=model, sample_frames=4)).error
    assert sorted(p.name for p in out.iterdir()) == parts  # nothing written

    RAN.clear()
    report = run("segment", manifest, out, RunOptions(model=model, sample_frames=4, supersede=True))
    assert report.exit_code == EXIT_OK and report.plan.changed == 2 and sorted(RAN) == ["a", "b"]
    # now the dataset's settings are the new ones: a plain rerun is fine and runs nothing
    again = run("segment", manifest, out, RunOptions(model=model, sample_frames=4))
    assert again.exit_code == EXIT_OK and again.rows_total == 0


def test_every_reader_sees_current_rows_after_compact(tmp_path, model):
    out = tmp_path / "out"
    run("segment", write_manifest(tmp_path / "m.jsonl", {"a": "1", "b": "1"}), out, RunOptions(model=model))
    FAILING.add("c")
    run("segment", write_manifest(tmp_path / "m.jsonl", {"a": "2", "b": "1", "c": "1"}), out, RunOptions(model=model))
    FAILING.clear()
    run("segment", tmp_path / "m.jsonl", out, RunOptions(model=model))  # retries c
    assert pq.read_table(out).num_rows == 5  # a twice, c twice, b once
    expected = {"a": ("ok", "2"), "b": ("ok", "1"), "c": ("ok", "1")}

    def as_dict(df: pd.DataFrame) -> dict:
        return {r["id"]: (r["status"], r["answer"]) for r in df.to_dict("records")}

    assert as_dict(read_results(out)) == expected
    # the README's duckdb recipe: newest part (largest file name) per id
    recipe = duckdb.sql(f"""SELECT * EXCLUDE (filename) FROM read_parquet('{out}/*.parquet', filename = true)
                            QUALIFY row_number() OVER (PARTITION BY id ORDER BY filename DESC) = 1""").df()
    assert as_dict(recipe) == expected
    polars_recipe = (pl.read_parquet(out / "*.parquet", include_file_paths="file").sort("file")
                     .unique("id", keep="last"))
    assert as_dict(polars_recipe.to_pandas()) == expected

    assert compact(out) == (5, 3)
    for read in (lambda: pd.read_parquet(out), lambda: pq.read_table(out).to_pandas(),
                 lambda: pl.read_parquet(out).to_pandas(), lambda: pl.scan_parquet(out).collect().to_pandas(),
                 lambda: duckdb.sql(f"SELECT * FROM read_parquet('{out}')").df()):
        df = read()
        assert len(df) == 3 and as_dict(df) == expected
    # the compacted dataset resumes like any other: nothing to run
    assert run("segment", tmp_path / "m.jsonl", out, RunOptions(model=model)).rows_total == 0


def test_corrupt_parts_are_quarantined_and_their_rows_rerun(tmp_path, model):
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "1", "b": "1"})
    run("segment", manifest, out, RunOptions(model=model))
    write_manifest(tmp_path / "m.jsonl", {"a": "1", "b": "1", "c": "1"})
    run("segment", manifest, out, RunOptions(model=model))
    first, second = sorted(out.glob("part-*.parquet"))
    first.write_bytes(first.read_bytes()[:100])  # truncated: holds a and b
    second.write_bytes(b"")  # zero bytes: holds c
    assert sorted(read_results(out)["id"]) == []  # readers skip them instead of crashing
    RAN.clear()
    report = run("segment", manifest, out, RunOptions(model=model))
    assert report.exit_code == EXIT_OK and sorted(RAN) == ["a", "b", "c"]
    quarantined = sorted(p.name for p in (tmp_path / "out.quarantine").iterdir())
    assert quarantined == sorted([first.name, second.name])
    assert sorted(read_results(out)["id"]) == ["a", "b", "c"]


@pytest.mark.parametrize("resume", [True, False])
def test_a_foreign_file_is_refused_before_anything_is_deleted(tmp_path, model, resume):
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "m.jsonl", {"r001": "1", "r002": "1"})
    run("segment", manifest, out, RunOptions(model=model))
    ours = sorted(out.glob("part-*.parquet"))
    foreign = out / "part-0.parquet"
    pq.write_table(pd.DataFrame({"id": ["r001", "r002"]}).pipe(__import__("pyarrow").Table.from_pandas), foreign)
    RAN.clear()
    report = run("segment", manifest, out, RunOptions(model=model, resume=resume))
    assert report.exit_code == EXIT_USAGE and str(foreign) in report.error and RAN == []
    assert sorted(out.glob("part-*.parquet")) == sorted([*ours, foreign])  # nothing deleted
    foreign.unlink()
    (out / "notes.txt").write_text("mine")
    assert run("segment", manifest, out, RunOptions(model=model)).exit_code == EXIT_USAGE


def test_bad_options_exit_2_before_the_output_exists(tmp_path, model):
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "1"})
    out = tmp_path / "out"
    for opts, needle in [(RunOptions(model=model, device="gpu"), "--device"),
                         (RunOptions(model=model, dtype="fp16"), "fp16"),
                         (RunOptions(model=model, dtype="half"), "--dtype"),
                         (RunOptions(model=model, propagate="every"), "--propagate"),
                         (RunOptions(model=model, shard="3/2"), "--shard")]:
        report = run("segment", manifest, out, opts)
        assert report.exit_code == EXIT_USAGE and needle in report.error
        assert not out.exists()


def test_cuda_without_cuda_is_a_usage_error_even_with_nothing_to_run(tmp_path, model):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "1"})
    out = tmp_path / "out"
    assert run("segment", manifest, out, RunOptions(model=model)).exit_code == EXIT_OK  # all done now
    before = sorted(p.name for p in out.iterdir())
    report = run("segment", manifest, out, RunOptions(model=model, device="cuda"))
    assert report.exit_code == EXIT_USAGE and "CUDA is not available" in report.error
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_failed_start_leaves_no_output_folder(tmp_path, monkeypatch, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "1"})
    out = tmp_path / "out"
    report = run("segment", manifest, out, RunOptions(model="nobody/no-such-model"))
    assert report.exit_code == EXIT_FATAL and "no-such-model" in report.error and not out.exists()

    # a model that is found but cannot be loaded fails after the lock was taken: still nothing left
    from unipixel_cli.model.loading import ModelLoadError

    def broken(*a, **k):
        raise ModelLoadError("model.safetensors: truncated")

    monkeypatch.setattr(runner, "load_engine", broken)
    report = run("segment", manifest, out, RunOptions(model=model))
    assert report.exit_code == EXIT_FATAL and "truncated" in report.error and not out.exists()


def test_output_path_problems_are_one_line_exit_1(tmp_path, monkeypatch, model):
    import errno
    import os

    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "1"})
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    report = run("segment", manifest, a_file, RunOptions(model=model))
    assert report.exit_code == EXIT_FATAL and str(a_file) in report.error and "not a directory" in report.error

    from unipixel_cli import dataset

    def full_disk(path, schema):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(dataset, "create_lock_file", full_disk)
    out = tmp_path / "out"
    report = run("segment", manifest, out, RunOptions(model=model))
    assert report.exit_code == EXIT_FATAL and "No space left" in report.error and str(out) in report.error
    assert "\n" not in report.error and not out.exists()
    monkeypatch.undo()

    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            report = run("segment", manifest, ro / "out", RunOptions(model=model))
            assert report.exit_code == EXIT_FATAL and str(ro / "out") in report.error
        finally:
            ro.chmod(0o755)


@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "existing-folder"])
def test_read_only_filesystem_is_one_line_exit_1(tmp_path, model, existing):
    """A real read-only mount (root can write through chmod, not through a read-only mount)."""
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        if existing:
            (mnt / "out").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        manifest = write_manifest(tmp_path / "m.jsonl", {"a": "1"})
        report = run("segment", manifest, mnt / "out", RunOptions(model=model))
        assert report.exit_code == EXIT_FATAL and str(mnt / "out") in report.error and "\n" not in report.error
        assert "Read-only" in report.error
    finally:
        subprocess.run(["umount", str(mnt)])


def test_a_fixed_invalid_line_runs_even_with_no_retry_errors(tmp_path, model):
    out = tmp_path / "out"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "x", "prompt": "no media given"}) + "\n")
    first = run("segment", manifest, out, RunOptions(model=model))
    assert first.exit_code == EXIT_ROWS_FAILED and read_results(out)["status"].tolist() == ["error"]
    again = run("segment", manifest, out, RunOptions(model=model, retry_errors=False))
    assert again.rows_total == 0 and again.plan.failed_kept == 1  # the same invalid line: kept
    write_manifest(manifest, {"x": "now valid"})
    fixed = run("segment", manifest, out, RunOptions(model=model, retry_errors=False))
    assert fixed.exit_code == EXIT_OK and fixed.plan.changed == 1 and RAN == ["x"]
    assert read_results(out)["status"].tolist() == ["ok"]


def test_overwrite_starts_over_but_never_mixes_settings_across_shards(tmp_path, model):
    manifest = write_manifest(tmp_path / "m.jsonl", {f"r{i}": "p" for i in range(8)})
    out = tmp_path / "out"
    for shard in ("0/2", "1/2"):
        assert run("segment", manifest, out, RunOptions(model=model, shard=shard)).exit_code == EXIT_OK
    parts = sorted(out.glob("part-*"))
    # shard 1 keeps rows of sample_frames 16: overwriting shard 0 with 4 would mix them
    report = run("segment", manifest, out, RunOptions(model=model, shard="0/2", resume=False, sample_frames=4))
    assert report.exit_code == EXIT_USAGE and sorted(out.glob("part-*")) == parts  # nothing deleted
    # one shard over the whole dataset: --overwrite deletes it all, so new settings are fine
    single = tmp_path / "single"
    run("segment", manifest, single, RunOptions(model=model))
    RAN.clear()
    report = run("segment", manifest, single, RunOptions(model=model, resume=False, sample_frames=4))
    assert report.exit_code == EXIT_OK and len(RAN) == 8 and len(list(single.glob("part-*"))) == 1


def test_readers_skip_files_the_tool_did_not_write(tmp_path, model):
    out = tmp_path / "out"
    run("segment", write_manifest(tmp_path / "m.jsonl", {"a": "1"}), out, RunOptions(model=model))
    (out / "index.html").write_text("<html></html>")
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["zzz"]}), out / "part-0.parquet")
    assert read_results(out)["id"].tolist() == ["a"]
    with pytest.raises(Exception, match="index.html"):
        compact(out)


def test_batch_invariant_reaches_the_engine_and_the_metadata(tmp_path, model, monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "load_engine", lambda task, m, device, dtype, options: seen.append(options) or object())
    manifest = write_manifest(tmp_path / "m.jsonl", {"a": "p a"})
    report = run("segment", manifest, tmp_path / "out", RunOptions(model=model, device="cpu", batch_invariant=True))
    assert report.exit_code == EXIT_OK
    assert [o.batch_invariant for o in seen] == [True]
    meta = json.loads(pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).metadata[b"unipixel"])
    assert meta["options"]["batch_invariant"] is True
