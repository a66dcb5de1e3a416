import json

import pytest

from unipixel_cli.manifest import ManifestError, load_manifest


def write(tmp_path, lines, name="m.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


def test_relative_paths_resolve_against_manifest_folder_and_ids_default_to_line(tmp_path):
    (tmp_path / "sub").mkdir()
    p = write(tmp_path / "sub", [{"video": "clips/a.mp4", "prompt": "x"}])
    rows, errors = load_manifest(p, "segment")
    assert errors == []
    assert rows[0].id == "1" and rows[0].line == 1
    assert rows[0].media_path == (tmp_path / "sub" / "clips" / "a.mp4").resolve()


@pytest.mark.parametrize("line, expected", [
    ('{"id": "a", "video": "a.mp4"', "invalid JSON"),
    ({"id": "a", "video": "a.mp4"}, "prompt: Field required"),
    ({"id": "a", "prompt": "x"}, "exactly one of 'video', 'frames' or 'image'"),
    ({"id": "a", "video": "a.mp4", "image": "b.png", "prompt": "x"}, "got video, image"),
    ({"id": "a", "video": "a.mp4", "prompt": "x", "start": 5, "end": 3}, "'end' (3) must be greater"),
    ({"id": "a", "video": "a.mp4", "prompt": "x", "propagate": "some"}, "propagate"),
    ([1, 2], "expected a JSON object"),
])
def test_bad_segment_rows_become_row_errors_with_line_numbers(tmp_path, line, expected):
    p = write(tmp_path, [{"id": "ok", "image": "i.png", "prompt": "x"}, line])
    rows, errors = load_manifest(p, "segment")
    assert [r.id for r in rows] == ["ok"]
    assert len(errors) == 1 and errors[0].line == 2
    assert expected in errors[0].message and errors[0].message.startswith("line 2:")


def test_duplicate_ids_are_a_manifest_error(tmp_path):
    p = write(tmp_path, [{"id": "a", "image": "i.png", "prompt": "x"}, {"id": "a", "image": "j.png", "prompt": "y"}])
    with pytest.raises(ManifestError, match="'a' on line 2 already used on line 1"):
        load_manifest(p, "segment")


def test_missing_manifest_is_a_manifest_error(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.jsonl", "segment")


@pytest.mark.parametrize("objects, question, expected", [
    ([{"id": 0, "point": [1, 2]}], "What is [0] doing to [1]?", "mentions [1] but no object has id 1"),
    ([{"id": 0, "point": [1, 2]}, {"id": 1, "box": [1, 2, 3, 4]}], "What is [0]?", "never mentions [1]"),
    ([{"id": 0, "box": [5, 5, 5, 9]}], "What is [0]?", "degenerate box"),
    ([{"id": 0, "point": [1, 2], "box": [1, 2, 3, 4]}], "What is [0]?", "exactly one of 'point', 'box' or 'mask'"),
    ([{"id": 0, "mask": {"counts": "x"}}], "What is [0]?", "COCO RLE"),
    ([], "What is it?", "objects"),
])
def test_pixelqa_object_errors(tmp_path, objects, question, expected):
    p = write(tmp_path, [{"id": "q", "video": "a.mp4", "question": question, "objects": objects}])
    rows, errors = load_manifest(p, "pixelqa")
    assert rows == [] and expected in errors[0].message
