"""MVBench, VideoRefer-Bench-Q and PixelQA: loaders in the real layouts, the authors' prompts and
frame sampling, their answer-letter parsing, accuracy table and PixelQA J/F. Expected values are
derived by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from unipixel_cli.bench.base import BenchDataError, prediction_source, score_items, write_reports
from unipixel_cli.bench.mvbench import TASKS, MVBench, fps_frame_count, fps_indices
from unipixel_cli.bench.qa import UnscorableAnswer, check_answer, first_letter
from unipixel_cli.bench.videorefer import PixelQA, VideoReferQ, keep_sampling, pixel_jf, sam2_prompt
from unipixel_cli.manifest import PixelQARow
from unipixel_cli.output import ResultsWriter, rle_encode


def write_video(path: Path, frames: int, fps: int, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for k in range(frames):
            img = np.full((size, size, 3), (k * 5) % 255, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_answers(path: Path, answers: dict[str, str], objects: dict[str, list] | None = None,
                  frame_indices: list[int] | None = None) -> Path:
    w = ResultsWriter(path, flush_rows=100)
    for row_id, text in answers.items():
        w.write({"id": row_id, "task": "pixelqa", "status": "ok", "answer": "prefix " + text, "raw_answer": text,
                 "frame_indices": frame_indices or [0], "height": H, "width": W,
                 "objects": (objects or {}).get(row_id, [])})
    w.close()
    return path


# -- answer letters ------------------------------------------------------------------------
@pytest.mark.parametrize("response, letter", [
    ("A) The man walks.", "a"), ("(B) foo", "b"), ("c.", "c"), ("D", "d"),
    ("Answer: C", "a"),  # first word "answer:" is not one letter → its first character, 'a'
    ("B)\nbecause", "b"),  # split on spaces only: "b\nbecause" → first character
])
def test_first_letter_like_their_check_ans(response, letter):
    assert first_letter(response) == letter


def test_check_answer_failed_and_crash_cases():
    assert check_answer(4, "A", "A) yes") is True
    assert check_answer(4, "A", "B) no") is False
    assert check_answer(3, "A", "D) out of range") is None  # their "Failed"
    # "(", ")" and "." are stripped from the first word: only those characters leaves "" and their b[0] raises
    for crash in ("", " A) leading space", "(", "()", ".", "..", "(. B"):
        with pytest.raises(UnscorableAnswer):
            check_answer(4, "A", crash)


# -- MVBench -------------------------------------------------------------------------------
def test_fps_sampling_by_hand():
    # 50 frames at 25 fps = 2 s → 4 frames at 2 fps; linspace(0, 49, 4) = 0, 16.33, 32.67, 49
    assert fps_indices(50, 25.0) == ([0, 16, 33, 49], 2.0)
    # 10 s at 30 fps → 20 at 2 fps, clamped to 16; step 299/15 = 19.93
    idx, fps = fps_indices(300, 30.0)
    assert idx == [0, 20, 40, 60, 80, 100, 120, 140, 159, 179, 199, 219, 239, 259, 279, 299]
    assert fps == pytest.approx(16 / 300 * 30)
    assert fps_frame_count(3, 30.0) == 2  # clamped up to 4, down to the 3 frames, floored to even
    with pytest.raises(ValueError):
        fps_frame_count(1, 25.0)  # 0 frames after flooring: theirs raises too


@pytest.fixture
def mvbench_root(tmp_path: Path) -> Path:
    root = tmp_path / "mvbench"
    (root / "json").mkdir(parents=True)
    for _, json_name, _, _ in TASKS:
        (root / "json" / json_name).write_text("[]")
    (root / "json" / "action_sequence.json").write_text(json.dumps([
        {"video": "a.mp4", "question": "What  does\nthe person do  first? ", "candidates": ["walk", "Sit down"],
         "answer": "walk"},
        {"video": "a.mp4", "question": "Then?", "candidates": ["stand", "run", "jump"], "answer": "jump"},
    ]))
    (root / "json" / "episodic_reasoning.json").write_text(json.dumps([
        {"video": "long", "question": "Who?", "candidates": ["x", "y"], "answer": "y"},
        {"video": "short", "question": "Where?", "candidates": ["x", "y"], "answer": "x"},
    ]))
    write_video(root / "video/star/Charades_v1_480/a.mp4", 50, 25)
    for name, n in (("long", 62), ("short", 20)):
        folder = root / "video/tvqa/frames_fps3_hq" / name
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            Image.new("RGB", (8, 8)).save(folder / f"{i:05d}.jpg")
    return root


def test_mvbench_loader_requests(mvbench_root: Path):
    items = MVBench(mvbench_root).load_items()
    assert [i.id for i in items] == ["episodic_reasoning::0", "episodic_reasoning::1", "action_sequence::0",
                                     "action_sequence::1"]
    req = items[2].request
    assert req["prompt"] == ("What does the person do first?\nOptions:\n(A) Walk\n(B) Sit down"
                             "\nPlease only give the best option.")
    assert req["answer_prefix"] == "Best Option: (" and req["propagate"] == "sampled"
    assert req["frame_indices"] == [0, 16, 33, 49] and req["sample_fps"] == pytest.approx(2.0, rel=1e-3)
    assert (req["min_pixels"], req["max_pixels"], req["max_new_tokens"]) == (128 * 784, 256 * 784, 256)
    # 62 frames: step 62 // 31 = 2 → 00001, 00003, …, 00061 (31 files)
    assert items[0].request["frame_files"] == [f"{i:05d}.jpg" for i in range(1, 62, 2)]
    assert items[0].request["frame_indices"] == list(range(31))
    assert items[1].request is None and "step is 0" in items[1].info["note"]  # 20 frames: theirs crashes
    assert items[3].gt["ans"] == "C"


def test_mvbench_accuracy_table(mvbench_root: Path, tmp_path: Path):
    bench = MVBench(mvbench_root)
    items = bench.load_items()
    preds = write_answers(tmp_path / "preds", {
        "episodic_reasoning::0": "B) y",       # correct
        "action_sequence::0": "B) Sit down",  # wrong
        "action_sequence::1": "D) nothing",   # D is not among 3 options: Failed (and wrong)
    })                                        # episodic_reasoning::1 has no request: missing → 0, Failed
    results = score_items(bench, items, prediction_source(bench, preds))
    report = write_reports(bench, results, tmp_path / "out")
    s = report.summary
    assert s["tasks"]["Action Sequence"] == {"#Samples": 2, "Failed": 1, "Acc": 0.0}
    assert s["tasks"]["Episodic Reasoning"] == {"#Samples": 2, "Failed": 1, "Acc": 50.0}
    assert s["all"] == {"#Samples": 4, "Failed": 2, "Acc": 25.0}
    assert list(s["tasks"]) == ["Action Sequence", "Episodic Reasoning"]  # sorted, as theirs
    doc = json.loads(report.summary_path.read_text())
    assert [f["id"] for f in doc["items"]["failures"]] == ["episodic_reasoning::1"]


def test_mvbench_missing_task_file_is_named(mvbench_root: Path):
    (mvbench_root / "json" / "state_change.json").unlink()
    with pytest.raises(BenchDataError, match="state_change.json"):
        MVBench(mvbench_root).load_items()


# -- VideoRefer-Bench-Q / PixelQA ------------------------------------------------------------
def test_keep_sampling_replaces_the_nearest_sample():
    frames = list(range(0, 40, 2))  # 20 annotated frames
    # arange(0, 20, 19/15)[:16].round() = 0 1 3 4 5 6 8 9 10 11 13 14 15 16 18 19; the prompt
    # frame 14 is position 7, equally near 6 and 8: the first (6) is replaced
    assert keep_sampling(frames, 14) == [0, 1, 3, 4, 5, 7, 8, 9, 10, 11, 13, 14, 15, 16, 18, 19]
    assert keep_sampling([3, 7, 9], 7) == [0, 1, 2]


H, W = 12, 16


def rle_of(y0, y1, x0, x1) -> dict:
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return rle_encode(m)


@pytest.fixture
def videorefer_root(tmp_path: Path) -> Path:
    root = tmp_path / "VideoRefer-Bench"
    write_video(root / "videos" / "v.mp4", 10, 10, size=16)
    questions = [
        {"video": "v.mp4", "Question": "What is <object0><region> doing near <object1><region>? ",
         "options": ["(A) Sitting by <object1>", "(B) Running"], "Answer": "(B) Running", "type": "Basic",
         "frame_idx": "3",
         "annotation": [{"3": {"segmentation": rle_of(0, 4, 0, 4)}, "7": {"segmentation": rle_of(0, 4, 0, 4)}},
                        {"3": {"segmentation": rle_of(6, 8, 6, 10)}}]},
        {"video": "v.mp4", "Question": "Is <object2><region> red?", "options": ["(A) Yes", "(B) No", "(C) Maybe"],
         "Answer": "(A) Yes", "type": "Future", "frame_idx": "5",
         "annotation": [{"5": {"segmentation": rle_of(2, 6, 2, 6)}, "8": {"segmentation": rle_of(2, 6, 3, 7)}}]},
    ]
    (root / "VideoRefer-Bench-Q.json").write_text(json.dumps(questions))
    return root


def test_videorefer_q_single_frame_requests(videorefer_root: Path):
    items = VideoReferQ(videorefer_root, "single-frame").load_items()
    req = items[0].request
    assert req["video"].endswith("videos/v.mp4") and req["frame_indices"] == [3, 7]
    assert req["question"] == "What is [0] doing near [1]?"
    assert req["options"] == ["(A) Sitting by [1]", "(B) Running"]
    assert [(o["id"], o["frame"]) for o in req["objects"]] == [(0, 3), (1, 3)]
    assert mask_utils.decode({**req["objects"][1]["mask"], "counts": req["objects"][1]["mask"]["counts"].encode()}
                             ).sum() == 2 * 4
    # 2 frames: 100·28·28 … 144·28·28·⌊16/2⌋
    assert (req["min_pixels"], req["max_pixels"]) == (100 * 784, 144 * 784 * 8)
    assert items[0].gt["ans"] == "B" and items[1].info["task"] == "Future"
    # multi-frame: every annotated mask on the sampled frames, one entry per (object, frame)
    multi = VideoReferQ(videorefer_root, "multi-frame").load_items()
    assert [(o["id"], o["frame"]) for o in multi[0].request["objects"]] == [(0, 3), (0, 7), (1, 3)]
    PixelQARow.model_validate({"video": "v.mp4", **multi[0].request})  # a valid pixelqa manifest row


def test_videorefer_q_accuracy(videorefer_root: Path, tmp_path: Path):
    bench = VideoReferQ(videorefer_root, "single-frame")
    items = bench.load_items()
    preds = write_answers(tmp_path / "preds", {"0": "B) Running", "1": ""})  # "" crashes theirs: scored 0
    s = bench.summarize(score_items(bench, items, prediction_source(bench, preds)))
    assert s["tasks"] == {"Basic": {"#Samples": 1, "Failed": 0, "Acc": 100.0},
                          "Future": {"#Samples": 1, "Failed": 1, "Acc": 0.0}}
    assert s["all"]["Acc"] == 50.0


def test_pixel_jf_float32_by_hand():
    pred = torch.zeros(2, 3, 3, dtype=torch.bool)
    gt = torch.zeros(2, 3, 3, dtype=torch.bool)
    pred[0, 0, :] = True
    pred[1, 0, 0] = True  # 4 px
    gt[0, 0, :] = True
    gt[1, 1, :] = True  # 6 px; overlap 3
    j, f = pixel_jf(pred, gt)
    p, r = 3 / (4 + 1e-6), 3 / (6 + 1e-6)
    assert j == pytest.approx(3 / 7, abs=1e-6)
    assert f == pytest.approx(2 * p * r / (p + r + 1e-6), abs=1e-6)
    assert pixel_jf(torch.zeros(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)) == (0.0, 0.0)


def test_pixelqa_box_prompt_from_mask_at_sam2_size():
    mask = np.zeros((768, 768), bool)
    mask[100:200, 300:500] = True
    assert sam2_prompt(mask, "box") == [300, 100, 499, 199]
    # the distance to the nearest background pixel, min(y-99, 200-y, x-299, 500-x), peaks at 50
    # for y in {149, 150}, x in 349..450; SAM 2 takes the first maximum in row-major order
    assert sam2_prompt(mask, "point") == [349.0, 149.0]


def test_pixelqa_requests_and_scores(videorefer_root: Path, tmp_path: Path):
    bench = PixelQA(videorefer_root, "box")
    items = bench.load_items()
    req = items[0].request
    assert [o["id"] for o in req["objects"]] == [0, 1] and "box" in req["objects"][0]
    assert (req["min_pixels"], req["max_pixels"]) == (128 * 784, 256 * 784 * 8)
    # item 0: frames 3, 7; object 0 perfect on both (J = F = 1 up to the epsilons),
    # object 1 predicted empty (J = F = 0). Item 1: missing → its one object scores 0.
    full = {"object_id": 0, "source": "box", "score": 1.0, "masks": [rle_of(0, 4, 0, 4), rle_of(0, 4, 0, 4)]}
    empty = {"object_id": 1, "source": "box", "score": 1.0, "masks": [rle_of(0, 0, 0, 0), rle_of(0, 0, 0, 0)]}
    preds = write_answers(tmp_path / "preds", {"0": "B) Running"}, {"0": [full, empty]}, frame_indices=[3, 7])
    s = bench.summarize(score_items(bench, items, prediction_source(bench, preds)))
    j_one = 32 / (32 + 1e-6)
    p = 32 / (32 + 1e-6)
    f_one = 2 * p * p / (2 * p + 1e-6)
    assert s["J"] == pytest.approx(100 * j_one / 3, abs=1e-5)  # averaged over the 3 objects
    assert s["F"] == pytest.approx(100 * f_one / 3, abs=1e-5)
    assert s["J&F"] == pytest.approx(100 * (j_one + f_one) / 6, abs=1e-5)
    assert s["all"]["Acc"] == 50.0


def test_pixelqa_unscorable_answer_keeps_its_masks_scored(videorefer_root: Path, tmp_path: Path):
    bench = PixelQA(videorefer_root, "point")
    items = bench.load_items()[:1]
    perfect = [{"object_id": k, "source": "point", "score": 1.0, "masks": masks} for k, masks in
               ((0, [rle_of(0, 4, 0, 4), rle_of(0, 4, 0, 4)]), (1, [rle_of(6, 8, 6, 10), rle_of(0, 0, 0, 0)]))]
    preds = write_answers(tmp_path / "preds", {"0": " B) leading space"}, {"0": perfect}, frame_indices=[3, 7])
    (result,) = score_items(bench, items, prediction_source(bench, preds))
    s = bench.summarize([result])
    # both objects exact: object 0 has 4x4 px on frames 3 and 7 (32 px), object 1 2x4 px on frame 3 only
    assert s["J"] == pytest.approx(100 * (32 / (32 + 1e-6) + 8 / (8 + 1e-6)) / 2, abs=1e-5)
    assert s["all"] == {"#Samples": 1, "Failed": 1, "Acc": 0.0}
    assert [u["id"] for u in s["unscorable_answers"]] == ["0"]


def test_response_without_raw_answer_drops_the_forced_prefix():
    from unipixel_cli.bench.base import Prediction
    from unipixel_cli.bench.qa import response_of

    assert response_of(Prediction(answer="Best Option: (C) three")) == "C) three"
    assert response_of(Prediction(answer="The best option is (A) yes")) == "A) yes"
    assert response_of(Prediction(row={"raw_answer": "B) no"}, answer="The best option is (B) no")) == "B) no"
