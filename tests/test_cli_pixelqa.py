"""`unipixel pixelqa` on the conformance fixture's PixelQA cases, and the memory prompt form."""

import json
import re

import pytest
import torch

from unipixel_cli.model.memory import ObjectMemoryBank
from unipixel_cli.output import read_results

from .helpers import cli, mask_iou

pytestmark = pytest.mark.slow


def _to_ids(text: str) -> str:
    return re.sub(r"<object(\d+)>(<region>)?", r"[\1]", text)


def test_pixelqa_cli_reproduces_golden(tmp_path, conformance_dir):
    cases = [json.loads(x) for x in (conformance_dir / "cases.jsonl").read_text().splitlines() if x.strip()]
    golden = {c["case_id"]: c for c in json.loads((conformance_dir / "golden.json").read_text())["cases"]}
    rows, expected = [], {}
    for c in cases:
        if "visual_prompts" not in c:
            continue
        objects = []
        for vp in c["visual_prompts"]:
            o = {"id": vp["object_id"], "frame": c["visual_prompts_source_frame"]}
            key = "point" if vp["prompt_type"] == "point" else "box"
            o[key] = vp.get("point_xy_original") or vp["box_xyxy_original"]
            objects.append(o)
        rows.append({"id": c["id"], "video": str(conformance_dir / c["media"]),
                     "question": _to_ids(c["raw_question"]), "options": [_to_ids(o) for o in c["options"]],
                     "objects": objects,
                     "sample_frames": c["sample_frames"], "max_new_tokens": c["max_new_tokens"]})
        expected[c["id"]] = (golden[c["id"]], c)
    assert rows, "fixture has no PixelQA case"
    manifest = tmp_path / "q.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    r = cli("pixelqa", "--prompts", manifest, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel")
    assert r.returncode == 0, r.stderr
    df = read_results(tmp_path / "out").set_index("id")
    for case_id, (g, c) in expected.items():
        got = df.loc[case_id]
        stage_a, stage_b = g["calls"][0], g["calls"][1]
        reply = stage_b["response"]
        assert got["raw_answer"] == reply
        assert got["answer"] == "The best option is (" + reply
        assert got["choice"] == c["answer"]
        assert list(got["frame_indices"]) == c["sampled_inds"]
        assert [o["source"] for o in got["objects"]] == [vp["prompt_type"] for vp in c["visual_prompts"]]
        for obj, gm in zip(got["objects"], stage_a["masks"]):
            assert all(mask_iou(m, fr["rle"]) >= 0.98 for m, fr in zip(obj["masks"], gm["frames"]))


def test_memory_prefix_follows_training_form():
    bank = ObjectMemoryBank(num_frames=16, height=56, width=56)
    mask = torch.zeros(56, 56, dtype=torch.bool)
    mask[10:30, 10:30] = True
    bank.add_frame_mask(0, 2, mask)   # sampled frame 2 → pair 1 → "<3>-<4>"
    bank.add_frame_mask(1, 15, mask)  # sampled frame 15 → pair 7 → "<15>-<16>"
    assert bank.prefix((56, 56), is_image=False) == (
        "Here is a video with 16 frames denoted as <1> to <16>. The highlighted regions are as follows:\n"
        "[0]: <3>-<4> <|mem|>\n[1]: <15>-<16> <|mem|>\n")
    image_bank = ObjectMemoryBank(num_frames=1, height=56, width=56)
    image_bank.add_frame_mask(0, 0, mask)
    assert image_bank.prefix((56, 56), is_image=True) == (
        "Here is an image with the following highlighted regions:\n[0]: <|mem|>\n")


def test_pixelqa_mask_prompt_and_bad_objects(tmp_path, conformance_dir):
    case = next(json.loads(x) for x in (conformance_dir / "cases.jsonl").read_text().splitlines()
                if x.strip() and "user_mask" in json.loads(x) and json.loads(x)["media_type"] == "video")
    video = str(conformance_dir / case["media"])
    rle = case["user_mask"]["rle"]
    rows = [
        {"id": "mask", "video": video, "question": "What is [0]?", "max_new_tokens": 8,
         "objects": [{"id": 0, "frame": case["user_mask"]["source_frame"], "mask": rle}]},
        {"id": "outside", "video": video, "question": "What is [0]?",
         "objects": [{"id": 0, "frame": 1, "point": [999, 5]}]},
        {"id": "late", "video": video, "question": "What is [0]?",
         "objects": [{"id": 0, "frame": 500, "point": [5, 5]}]},
        {"id": "size", "video": video, "question": "What is [0]?",
         "objects": [{"id": 0, "frame": 1, "mask": {"size": [10, 10], "counts": "0"}}]},
        {"id": "undefined", "video": video, "question": "What is [0] next to [3]?",
         "objects": [{"id": 0, "frame": 1, "point": [5, 5]}]},
    ]
    manifest = tmp_path / "q.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    r = cli("pixelqa", "--prompts", manifest, "-o", tmp_path / "out", "--model", conformance_dir / "tiny-unipixel")
    assert r.returncode == 3, r.stderr
    df = read_results(tmp_path / "out").set_index("id")
    assert df.loc["mask", "status"] == "ok"
    [obj] = df.loc["mask", "objects"]
    assert obj["source"] == "mask" and obj["object_id"] == 0
    err = df["error"].to_dict()
    assert "line 2:" in err["outside"] and "point [999.0, 5.0] outside the 160x120 frame" in err["outside"]
    assert "line 3:" in err["late"] and "frame 500 out of range" in err["late"]
    assert "line 4:" in err["size"] and "mask size [10, 10] differs" in err["size"]
    assert "line 5:" in err["undefined"] and "mentions [3]" in err["undefined"]
