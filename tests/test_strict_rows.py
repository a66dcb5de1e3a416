"""Strict, total row validation: any value of any type in any field is one error row naming its
line; the other rows run; whatever a row holds, the writer stores it or turns it into an error row
without losing the rows buffered with it."""

import json
import math

import pyarrow.parquet as pq
import pytest

from unipixel_cli.engine import error_row
from unipixel_cli.manifest import load_manifest
from unipixel_cli.output import ResultsWriter, read_results, storable_row

from .helpers import cli

BAD_LINE = 8
NROWS = 20
HUGE = 10**30
# one of each JSON type and the edge cases users and attackers send
BAD_VALUES = {
    "int": 123, "float": 1.5, "bool": True, "list": [1, 2], "dict": {"k": 1}, "null": None,
    "nan": math.nan, "inf": math.inf, "huge": HUGE, "surrogate": "\ud800", "empty": "",
}


def segment_row(i, image="frame.png"):
    return {"id": f"r{i:02d}", "image": image, "prompt": "Please segment the blue box.", "max_new_tokens": 4}


def pixelqa_row(i, image="frame.png"):
    return {"id": f"q{i:02d}", "image": image, "question": "What is [0]?", "max_new_tokens": 4,
            "objects": [{"id": 0, "frame": 0, "point": [10, 10]}]}


def set_field(row, field, value):
    """`field` is a top-level key, `objects.0.<key>` or `objects.0.mask.<key>`."""
    row = json.loads(json.dumps(row))
    if field in ("video", "frames"):  # the media key itself holds the bad value
        row.pop("image")
    if field.startswith("objects.0.mask."):
        obj = row["objects"][0]
        obj.pop("point")
        obj["mask"] = {"size": [120, 160], "counts": "PPYo1"}
        obj["mask"][field.rsplit(".", 1)[1]] = value
    elif field.startswith("objects.0."):
        key = field.rsplit(".", 1)[1]
        obj = row["objects"][0]
        if key in ("box", "mask"):
            obj.pop("point")
        obj[key] = value
    else:
        row[field] = value
    return row


# values a field accepts at manifest level (from SPEC §4: ids are strings or integers and default
# to the line number; counts are integers within their bounds; other optional fields may be null)
VALID = {
    "id": {"int", "huge", "null"},
    "sample_frames": {"int", "null"},
    "max_new_tokens": {"int", "null"},
    "start": {"int", "null"},
    "end": {"int", "null"},
    "propagate": {"null"},
    "options": {"null"},
    "objects.0.frame": {"int"},
    "frame_indices": {"list", "null"},  # [1, 2] are frame indices
    "min_pixels": {"null"},  # 123 is below the 28·28 minimum
    "max_pixels": {"null"},
    "sample_fps": {"int", "float", "huge", "null"},  # any finite positive rate
    "answer_prefix": {"empty", "null"},  # a reply may start with nothing
    "objects.0.point": {"list"},  # [1, 2] is a point
    "objects.0.mask.size": {"list"},  # [1, 2] is a size (checked against the media later)
}
SEGMENT_FIELDS = ["id", "video", "image", "frames", "prompt", "sample_frames", "max_new_tokens", "start", "end",
                  "propagate", "frame_indices", "min_pixels", "max_pixels", "sample_fps", "answer_prefix"]
PIXELQA_FIELDS = ["question", "options", "objects", "objects.0.id", "objects.0.frame", "objects.0.point",
                  "objects.0.box", "objects.0.mask", "objects.0.mask.size", "objects.0.mask.counts"]
CASES = [(task, f, name) for task, fields in (("segment", SEGMENT_FIELDS), ("pixelqa", PIXELQA_FIELDS))
         for f in fields for name in BAD_VALUES if name not in VALID.get(f, set())]


def write_manifest(path, rows):
    # json.dumps writes NaN/Infinity literals and "\ud800" escapes, as the attacks did
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("task, field, kind", CASES)
def test_any_bad_value_in_any_field_is_one_error_row_naming_the_line(tmp_path, task, field, kind):
    make = segment_row if task == "segment" else pixelqa_row
    rows = [make(i) for i in range(1, NROWS + 1)]
    rows[BAD_LINE - 1] = set_field(rows[BAD_LINE - 1], field, BAD_VALUES[kind])
    good, bad = load_manifest(write_manifest(tmp_path / "m.jsonl", rows), task)
    assert len(good) == NROWS - 1 and len(bad) == 1
    err = bad[0]
    assert err.line == BAD_LINE and err.message.startswith(f"line {BAD_LINE}: ")
    top = field.split(".")[0].removesuffix("s")  # "objects.0.id" may be reported as "object 123: …"
    media_key_missing = top in ("video", "image", "frame") and "exactly one of" in err.message
    assert top in err.message or media_key_missing, err.message
    # the error row fits the schema as it is: stored with its own message, not a fallback
    stored = storable_row(error_row(task, err=err)).to_pylist()[0]
    assert stored["status"] == "error" and stored["error"] == err.message and stored["line"] == BAD_LINE
    assert stored["id"] == (f"line{BAD_LINE}" if field == "id" else rows[BAD_LINE - 1]["id"])


@pytest.mark.parametrize("field, value", [("sample_frames", True), ("start", True), ("max_new_tokens", 4.0),
                                          ("id", {"k": 1}), ("id", 1.0), ("prompt", 5)])
def test_no_coercion_between_types(tmp_path, field, value):
    row = {**segment_row(1), field: value}
    good, bad = load_manifest(write_manifest(tmp_path / "m.jsonl", [row]), "segment")
    assert good == [] and bad[0].id == ("line1" if field == "id" else "r01")


def test_nan_and_infinity_in_boxes_and_points_are_rejected(tmp_path):
    rows = [set_field(pixelqa_row(1), "objects.0.box", [0, 0, math.nan, 5]),
            set_field(pixelqa_row(2), "objects.0.point", [math.inf, 3])]
    good, bad = load_manifest(write_manifest(tmp_path / "m.jsonl", rows), "pixelqa")
    assert good == [] and [e.line for e in bad] == [1, 2]
    assert all("finite number" in e.message for e in bad)


def test_offending_value_is_quoted_escaped_in_the_error(tmp_path):
    good, bad = load_manifest(write_manifest(tmp_path / "m.jsonl", [{**segment_row(1), "prompt": "a\ud800"}]),
                              "segment")
    assert "UTF-8" in bad[0].message and bad[0].prompt is None
    bad[0].message.encode("utf-8")  # the message itself is storable text


def test_unknown_keys_pass_through_as_extra_json(tmp_path, caplog):
    rows = [{**segment_row(1), "source_url": "https://x/é", "split": "val"},
            {**segment_row(2), "source_url": "https://y", "score": math.nan},
            {**segment_row(3), "note": "\ud800"}, segment_row(4)]
    with caplog.at_level("WARNING"):
        good, bad = load_manifest(write_manifest(tmp_path / "m.jsonl", rows), "segment")
    assert bad == [] and len(good) == 4
    assert json.loads(good[0].extra) == {"source_url": "https://x/é", "split": "val"}
    assert json.loads(good[1].extra) == {"source_url": "https://y", "score": "nan"}  # standard JSON only
    assert json.loads(good[2].extra) == {"note": "\ud800"} and good[2].extra.isascii()
    assert good[3].extra is None
    warnings = [r for r in caplog.records if "extra" in r.getMessage()]
    assert len(warnings) == 1 and "source_url" in warnings[0].getMessage()


def test_writer_keeps_other_rows_when_one_row_does_not_fit(tmp_path):
    writer = ResultsWriter(tmp_path / "out", flush_rows=100)
    good = {"id": "a", "task": "segment", "line": 1, "prompt": "fine", "status": "ok"}
    statuses = [writer.write(good),
                writer.write({"id": "b", "task": "segment", "line": 2, "prompt": 123, "status": "ok"}),
                writer.write({"id": "c", "task": "segment", "line": 3, "prompt": "x\ud800", "status": "ok"}),
                writer.write({**good, "id": "d", "line": 4})]
    writer.close()
    assert statuses == ["ok", "error", "error", "ok"]
    df = read_results(tmp_path / "out").set_index("id")
    assert sorted(df.index) == ["a", "b", "c", "d"]
    assert df.loc["b", "status"] == "error" and df.loc["b", "error"].startswith("line 2: result could not be stored")
    assert df.loc["c", "line"] == 3 and df.loc["d", "prompt"] == "fine"
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) == 1
    assert pq.read_table(next((tmp_path / "out").glob("part-*.parquet"))).num_rows == 4


# end to end: a 20-row manifest with one bad row runs 19 ok + 1 error row (exit 3) on the tiny checkpoint
E2E = [("segment", "id", "\ud800"), ("pixelqa", "objects.0.box", [0, 0, math.nan, 5])]


@pytest.mark.slow
@pytest.mark.parametrize("task, field, value", E2E, ids=[f"{t}-{f}" for t, f, _ in E2E])
def test_cli_runs_the_other_19_rows(tmp_path, conformance_dir, task, field, value):
    image = str(conformance_dir / "media" / "image.png")
    make = segment_row if task == "segment" else pixelqa_row
    rows = [make(i, image) for i in range(1, NROWS + 1)]
    rows[BAD_LINE - 1] = set_field(rows[BAD_LINE - 1], field, value)
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    args = ["segment", manifest] if task == "segment" else ["pixelqa", "--prompts", manifest]
    r = cli(*args, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel", "--device", "cpu",
            "--max-new-tokens", 4)
    assert r.returncode == 3, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    df = read_results(tmp_path / "out")
    assert len(df) == NROWS and df["id"].is_unique
    assert (df.status == "ok").sum() == NROWS - 1
    err = df[df.status == "error"].iloc[0]
    assert err["line"] == BAD_LINE and err["error"].startswith(f"line {BAD_LINE}: ")
    r = cli("validate", manifest)  # validate runs the same checks and reports the same line
    assert r.returncode == 2 and f"line {BAD_LINE}: " in r.stdout and "Traceback" not in r.stderr


def test_a_line_that_is_not_utf8_is_one_error_row(tmp_path):
    lines = [json.dumps(segment_row(1)).encode(), b'{"id": "x", "prompt": "caf\xe9", "image": "a.png"}',
             json.dumps({**segment_row(3), "prompt": "one\u2028line"}, ensure_ascii=False).encode("utf-8")]
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")  # BOM and CRLF, as Windows editors write
    good, bad = load_manifest(path, "segment")
    assert [r.id for r in good] == ["r01", "r03"] and good[1].row.prompt == "one\u2028line"
    assert [(e.line, e.id) for e in bad] == [(2, "line2")] and "not valid UTF-8" in bad[0].message
