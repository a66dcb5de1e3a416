"""`unipixel bench mvbench`: MVBench's 20 multiple-choice tasks (zero-shot), requested and scored
like the authors' `infer_general.py` (style `mcq`) + `eval_general.py`.

Requests: "<question>\\nOptions:\\n(A) …\\nPlease only give the best option." with the reply
started as "Best Option: (", greedy, 256 new tokens. Frames: a video file is sampled at 2 fps,
clamped to 4…16 frames (even count), indices = round(linspace(0, n-1, k)), and MRoPE spaces the
frames by their real rate; Episodic Reasoning (TVQA frame folders) takes every ⌊n/31⌋-th of
`00001.jpg…` up to 32 frames. Pixels per frame: 128·28·28 … 256·28·28 for every task.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .base import BenchDataError, Item, register
from .qa import BEST_OPTION, QABenchmark, letter_options

ANSWER_PREFIX = "Best Option: ("
MIN_PIXELS, MAX_PIXELS = 128 * 28 * 28, 256 * 28 * 28
MAX_NEW_TOKENS = 256
FPS, MIN_FRAMES, MAX_FRAMES, FRAME_FACTOR = 2.0, 4, 16, 2
FOLDER_FRAMES = 32  # their load_annos(sample_frames=32) for frame-folder tasks

# (task, json file, video folder under video/, kind) in the authors' order
TASKS = [
    ("Episodic Reasoning", "episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame"),
    ("Action Sequence", "action_sequence.json", "star/Charades_v1_480", "video"),
    ("Action Prediction", "action_prediction.json", "star/Charades_v1_480", "video"),
    ("Action Antonym", "action_antonym.json", "ssv2_video", "video"),
    ("Fine-grained Action", "fine_grained_action.json", "Moments_in_Time_Raw/videos", "video"),
    ("Unexpected Action", "unexpected_action.json", "FunQA_test/test", "video"),
    ("Object Existence", "object_existence.json", "clevrer/video_validation", "video"),
    ("Object Interaction", "object_interaction.json", "star/Charades_v1_480", "video"),
    ("Object Shuffle", "object_shuffle.json", "perception/videos", "video"),
    ("Moving Direction", "moving_direction.json", "clevrer/video_validation", "video"),
    ("Action Localization", "action_localization.json", "sta/sta_video", "video"),
    ("Scene Transition", "scene_transition.json", "scene_qa/video", "video"),
    ("Action Count", "action_count.json", "perception/videos", "video"),
    ("Moving Count", "moving_count.json", "clevrer/video_validation", "video"),
    ("Moving Attribute", "moving_attribute.json", "clevrer/video_validation", "video"),
    ("State Change", "state_change.json", "perception/videos", "video"),
    ("Fine-grained Pose", "fine_grained_pose.json", "nturgbd", "video"),
    ("Character Order", "character_order.json", "perception/videos", "video"),
    ("Egocentric Navigation", "egocentric_navigation.json", "vlnqa", "video"),
    ("Counterfactual Inference", "counterfactual_inference.json", "clevrer/video_validation", "video"),
]


def parse_question(question: str) -> str:
    """Whitespace runs → one space, stripped (their parse_question)."""
    return re.sub(r"\s+", " ", question).strip()


def fps_frame_count(total_frames: int, video_fps: float) -> int:
    """Qwen's smart_nframes for fps=2, min 4, max 16 frames: clamped, floored to even.
    Raises ValueError where theirs does (fewer than 2 frames result)."""
    min_frames = math.ceil(MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    max_frames = math.floor(MAX_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    n = total_frames / video_fps * FPS
    n = min(min(max(n, min_frames), max_frames), total_frames)
    n = math.floor(n / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= n <= total_frames:
        raise ValueError(f"{total_frames} frames give {n} samples at {FPS} fps (needs 2…{total_frames})")
    return n


def fps_indices(total_frames: int, video_fps: float) -> tuple[list[int], float]:
    """(source indices, fps of the samples) as qwen-vl-utils' decord reader picks them."""
    n = fps_frame_count(total_frames, video_fps)
    idx = torch.linspace(0, total_frames - 1, n).round().long().tolist()  # torch's float32 linspace, as theirs
    return idx, n / max(total_frames, 1e-6) * video_fps


def video_length_and_fps(path: Path) -> tuple[int, float]:
    try:
        import decord

        reader = decord.VideoReader(str(path), num_threads=1)
        return len(reader), float(reader.get_avg_fps())
    except ImportError:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            n = sum(1 for _ in container.decode(video=0))
            return n, float(stream.average_rate)


def folder_frame_files(folder: Path) -> list[str]:
    """Episodic Reasoning: `00001.jpg` onwards, every ⌊n/31⌋-th, at most 32 (their file names)."""
    n = len([p for p in folder.iterdir() if p.name.endswith(".jpg")])
    step = n // (FOLDER_FRAMES - 1)
    if step == 0:
        raise ValueError(f"{folder}: {n} frames, fewer than {FOLDER_FRAMES - 1} (their sampling step is 0)")
    return [f"{i:0>5}.jpg" for i in range(1, n + 1, step)][:FOLDER_FRAMES]


def mcq_prompt(question: str, options: list[str]) -> str:
    return question + letter_options(options) + BEST_OPTION


@register
class MVBench(QABenchmark):
    name = "mvbench"
    title = "MVBench"
    splits = ("test",)
    layout = "<data>/json/<task>.json (20 tasks) + <data>/video/<source>/<video>"
    published = {"all": {"Acc": (62.5, 64.3)}}

    def load_items(self) -> list[Item]:
        items = []
        for task, json_name, folder, kind in TASKS:
            raw = self.load_json("json", json_name)
            for k, entry in enumerate(raw):
                try:
                    question = parse_question(entry["question"])
                    options, answer = list(entry["candidates"]), entry["answer"]
                    video = entry["video"]
                except (KeyError, TypeError) as e:
                    raise BenchDataError(f"{self.data / 'json' / json_name}: item {k} lacks {e}") from e
                gt = {"options": options, "ans": chr(ord("A") + options.index(answer)) if answer in options else None}
                if gt["ans"] is None:
                    gt["error"] = f"answer {answer!r} is not among the candidates (their loader crashes)"
                path = self.data / "video" / folder / video
                request = self.request(path, kind, question, options, gt)
                items.append(Item(f"{Path(json_name).stem}::{k}", request, gt=gt,
                                  info={"task": task, "media": f"{folder}/{video}", "note": gt.get("error", "")}))
        return items

    def request(self, path: Path, kind: str, question: str, options: list[str], gt: dict) -> dict | None:
        """The manifest row, or None (scored 0) where their pipeline cannot run the item."""
        try:
            # QA only: no SAM 2 pass over every frame should the answer hold a <|seg|>
            row = {"prompt": mcq_prompt(question, options), "answer_prefix": ANSWER_PREFIX, "propagate": "sampled",
                   "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "max_new_tokens": MAX_NEW_TOKENS}
            if not path.exists():
                raise ValueError(f"{path}: not found")
            if kind == "frame":
                files = folder_frame_files(path)
                return {**row, "frames": str(path), "frame_files": files, "frame_indices": list(range(len(files)))}
            total, fps = video_length_and_fps(path)
            indices, sample_fps = fps_indices(total, fps)
            return {**row, "video": str(path), "frame_indices": indices, "sample_fps": sample_fps}
        except Exception as e:  # unreadable video, too few frames: the item scores 0 and is listed
            gt["error"] = f"no request: {e}"
            return None
