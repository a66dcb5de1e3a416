"""Run one conformance case through our model API and measure it against the authors' outputs.

Used by tests/test_conformance.py (asserts) and benchmarks/fidelity.py (prints the table of
differences). A fixture folder holds `cases.jsonl`, `golden.json`, `intermediates/` (float32)
and optionally `bf16/golden.json` + `bf16/intermediates/`; `more/` has the same layout.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from unipixel_cli.media import open_media
from unipixel_cli.model.heads import RefPrompt
from unipixel_cli.model.memory import ObjectMemoryBank
from unipixel_cli.model.preprocess import refer_mask_grid, sam2_transform
from unipixel_cli.model.prompting import chat_text, make_request, video_inputs
from unipixel_cli.output import rle_decode

# intermediates compared when both sides have them: name → (our trace key)
FLOAT_KEYS = ("inputs_embeds", "prefill_hidden", "step_logits", "ref_proj_in", "ref_emb", "mem_feat", "mem_emb",
              "merger_mlp_in_window_order")


def fixture_dirs(root: Path) -> list[Path]:
    """The root fixture and every sub-fixture with the same layout (e.g. `more/`)."""
    subs = sorted(p for p in root.iterdir() if p.is_dir() and (p / "cases.jsonl").exists())
    return [root, *subs] if (root / "cases.jsonl").exists() else subs


def load_cases(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "cases.jsonl").read_text().splitlines() if line.strip()]


def golden_dir(folder: Path, dtype: str) -> Path | None:
    d = folder if dtype == "fp32" else folder / "bf16"
    return d if (d / "golden.json").exists() else None


def load_golden(gdir: Path, case_id: str) -> tuple[dict, dict]:
    golden = next(c for c in json.loads((gdir / "golden.json").read_text())["cases"] if c["case_id"] == case_id)
    npz = gdir / "intermediates" / f"{case_id}.npz"
    inter = dict(np.load(npz)) if npz.exists() else {}
    return golden, inter


@dataclass
class CallRun:
    input_ids: list[int]
    grid_thw: tuple[int, int, int]
    generated_ids: list[int] | None
    stopped_on_eos: bool | None
    response: str | None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # named like the npz keys (no prefix)
    masks: np.ndarray | None = None  # [n_obj, T, H, W] bool
    n_seg: int = 0
    refer_grid: list | None = None
    prompt_text: str | None = None


class _Recorder:
    """Forward hooks that keep the input and output of `ref_proj` and `msk_proj`."""

    def __init__(self, model) -> None:
        self.store: dict[str, torch.Tensor] = {}
        self.handles = [
            model.heads.ref_proj.register_forward_hook(self._keep("ref_proj_in", "ref_emb")),
            model.heads.msk_proj.register_forward_hook(self._keep("mem_feat", "mem_emb")),
        ]

    def _keep(self, name_in: str, name_out: str):
        def hook(_m, args, out):
            self.store[name_in] = args[0].float().cpu()
            self.store[name_out] = out.float().cpu()
        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _frames(media_path: Path, indices: list[int], view: str) -> np.ndarray:
    media = open_media(media_path)
    reader = getattr(media, "read_for_llm", None) if view == "llm" else None
    return (reader or media.read)(list(indices))


def _llm_call(model, proc, req, decode: bool) -> CallRun:
    rec = _Recorder(model)
    try:
        res = model.run_llm([req], trace=True)[0]
    finally:
        rec.close()
    arrays = {k: v.numpy() for k, v in rec.store.items()}
    for k in ("inputs_embeds", "prefill_hidden", "step_logits", "merger_in"):
        if k in res.trace:
            arrays["merger_mlp_in_window_order" if k == "merger_in" else k] = res.trace[k].float().numpy()
    arrays["position_ids"] = res.trace["position_ids"].numpy()
    ids = res.generated_ids if req.generate else None
    text = None
    if decode and ids is not None:
        text = proc.tokenizer.decode(ids[:-1] if res.stopped_on_eos else ids, clean_up_tokenization_spaces=False)
    run = CallRun(req.input_ids, req.grid_thw, ids, res.stopped_on_eos if req.generate else None, text, arrays)
    run.n_seg = res.seg_hidden.shape[0]
    run._seg_hidden = res.seg_hidden  # type: ignore[attr-defined]
    return run


def _masks(model, run: CallRun, sam_frames_uint8: np.ndarray) -> None:
    """One SAM 2 state per `<|seg|>`, as the authors' predictor runs them (the engine batches
    objects; in bf16 that moves logits by a few ulps, measured by benchmarks/fidelity.py)."""
    seg = model.seg_tokens(run._seg_hidden)  # type: ignore[attr-defined]
    if seg.shape[0] == 0:
        return
    frames = sam2_transform(sam_frames_uint8, model.sam2_image_size)
    height, width = sam_frames_uint8.shape[1:3]
    masks = []
    for o in range(seg.shape[0]):
        trace: dict = {}
        masks.append(model.decode_masks(seg[o:o + 1], frames.shape[0], lambda a, b: frames[a:b], height, width,
                                        trace=trace)[0])
        run.arrays[f"obj{o}_seg_token"] = seg[o].float().cpu().numpy()
        run.arrays[f"obj{o}_seg_hidden"] = run._seg_hidden[o].float().cpu().numpy()  # type: ignore[attr-defined]
        run.arrays[f"obj{o}_lowres_logits"] = trace["lowres_logits"][0].numpy()
    run.masks = torch.stack(masks).numpy()


def run_case(model, proc, folder: Path, case: dict, golden: dict, stage_b_from_golden: bool = False) -> list[CallRun]:
    """`stage_b_from_golden`: PixelQA stage B reads the authors' stage-A masks instead of ours
    (used when a listed near-tie lets our stage-A masks legitimately differ)."""
    media = (folder / case["media"]).resolve()
    if "visual_prompts" in case:
        return _run_pixelqa(model, proc, media, case, golden if stage_b_from_golden else None)
    if "user_mask" in case:
        # the authors' demo writes its own prefix form: take it from their preprocessing record
        return _run_region(model, proc, media, case, golden["preprocess"]["prefix"])
    return _run_seg(model, proc, media, case)


def _run_seg(model, proc, media: Path, case: dict) -> list[CallRun]:
    llm = _frames(media, case["llm_frame_indices"], "llm")
    pv, grid, _ = video_inputs(proc, llm, case["min_pixels"], case["max_pixels"])
    text = chat_text(proc, case.get("prompt") or case["question"])
    req = make_request(proc, text, pv, grid, max_new_tokens=case["max_new_tokens"])
    run = _llm_call(model, proc, req, decode=True)
    _masks(model, run, _frames(media, case["sam2_frame_indices"], "sam2"))
    return [run]


def _run_pixelqa(model, proc, media: Path, case: dict, golden: dict | None) -> list[CallRun]:
    sampled = case["sampled_inds"]
    llm = _frames(media, sampled, "llm")
    pv, grid, size = video_inputs(proc, llm, case["min_pixels"], case["max_pixels"])
    frame = case["visual_prompts_frame_index_in_sampled"]
    # the authors scatter the prompts in annotation order over the <|ref|> tokens in text order
    refs = [RefPrompt(frame=frame, point=tuple(vp["point_xy_sam2"])) if vp["prompt_type"] == "point"
            else RefPrompt(frame=frame, box=tuple(vp["box_xyxy_sam2"])) for vp in case["visual_prompts"]]
    text_a = chat_text(proc, case["stage_a_question"], answer=case["stage_a_response"])
    run_a = _llm_call(model, proc, make_request(proc, text_a, pv, grid, refs=refs, generate=False), decode=False)
    _masks(model, run_a, _frames(media, sampled, "sam2"))

    # stage B: the memory of each <|seg|> in answer order, labelled as the answer labels it
    labels = [int(x) for x in re.findall(r"\[(\d+)\]", case["stage_a_response"])]
    height, width = run_a.masks.shape[2:]
    mentions = [int(i) for i in re.findall(r"<object(\d+)>", case["stage_b_question"])]
    bank = ObjectMemoryBank(len(sampled), height, width, mention_order=list(dict.fromkeys(mentions)))
    tracks = run_a.masks
    if golden is not None:
        tracks = np.stack([np.stack([mask_utils.decode(f["rle"]).astype(bool) for f in m["frames"]])
                           for m in golden["calls"][0]["masks"]])
    for label, track in zip(labels, tracks):
        bank.prefill(label, torch.from_numpy(track))
    refer = bank.refer_masks(size)
    prefix = bank.prefix(size, is_image=False, grids=refer)
    body = re.sub(r"<object(\d+)>(<region>)?", r"[\1]", case["stage_b_question"])
    text = chat_text(proc, prefix + body, answer_prefix=case.get("stage_b_assistant_prefix", "The best option is ("))
    run_b = _llm_call(model, proc, make_request(proc, text, pv, grid, refer_masks=refer,
                                                max_new_tokens=case["max_new_tokens"]), decode=True)
    run_b.refer_grid = refer.transpose(0, 1).int().tolist()
    run_b.prompt_text = prefix + body
    return [run_a, run_b]


def _run_region(model, proc, media: Path, case: dict, prefix: str) -> list[CallRun]:
    llm_idx = case["llm_frame_indices"]
    llm = _frames(media, llm_idx, "llm")
    pv, grid, size = video_inputs(proc, llm, case["min_pixels"], case["max_pixels"])
    user = case["user_mask"]
    masks = torch.zeros(len(llm_idx), *llm.shape[1:3], dtype=torch.bool)
    masks[user["sampled_frame_index"]] = torch.from_numpy(rle_decode(user["rle"]))
    refer = refer_mask_grid(masks, size)[None]
    text = chat_text(proc, prefix + case["prompt"])
    run = _llm_call(model, proc, make_request(proc, text, pv, grid, refer_masks=refer,
                                              max_new_tokens=case["max_new_tokens"]), decode=True)
    run.refer_grid = refer.transpose(0, 1).int().tolist()
    return [run]


# -- comparison ---------------------------------------------------------------------------
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)


@dataclass
class Comparison:
    exact: dict[str, bool] = field(default_factory=dict)  # "call0.input_ids" → equal
    diffs: dict[str, tuple[float, float]] = field(default_factory=dict)  # "call0.obj0_seg_token" → (max, mean)
    frame_ious: dict[str, float] = field(default_factory=dict)  # "call0.obj1.t2" → IoU

    def failures_exact(self) -> list[str]:
        return [k for k, ok in self.exact.items() if not ok]


def compare(runs: list[CallRun], golden: dict, inter: dict, exempt: set[str] = frozenset()) -> Comparison:
    """`exempt` frames ("call0.obj1.t2", e.g. after a SAM 2 near-tie) are left out of the
    per-frame IoUs and of the low-res logit differences."""
    cmp = Comparison()
    for j, (run, call) in enumerate(zip(runs, golden["calls"])):
        p = f"call{j}"
        cmp.exact[f"{p}.input_ids"] = run.input_ids == call["input_ids"]
        cmp.exact[f"{p}.grid_thw"] = list(run.grid_thw) == call["video_grid_thw"][0]
        if f"{p}_position_ids" in inter:
            cmp.exact[f"{p}.position_ids"] = np.array_equal(run.arrays["position_ids"], inter[f"{p}_position_ids"])
        if "generated_ids" in call:
            cmp.exact[f"{p}.generated_ids"] = run.generated_ids == call["generated_ids"]
            cmp.exact[f"{p}.stopped_on_eos"] = run.stopped_on_eos == call["stopped_on_eos"]
            cmp.exact[f"{p}.response"] = run.response == call["response"]
        golden_masks = call.get("masks", [])
        cmp.exact[f"{p}.n_masks"] = run.n_seg == len(golden_masks)
        for key, ref in inter.items():
            if not key.startswith(p + "_") or key.endswith("position_ids"):
                continue
            name = key[len(p) + 1:]
            ours = run.arrays.get(name)
            if ours is None or ours.shape != ref.shape:
                cmp.exact[f"{p}.{name}.shape"] = False
                continue
            d = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
            if name.endswith("_lowres_logits"):
                obj = name.split("_", 1)[0]
                keep = [t for t in range(d.shape[0]) if f"{p}.{obj}.t{t}" not in exempt]
                if not keep:
                    continue
                d = d[keep]
            cmp.diffs[f"{p}.{name}"] = (float(d.max()), float(d.mean()))
        if run.masks is not None:
            for o, gm in enumerate(golden_masks[: run.masks.shape[0]]):
                for t, fr in enumerate(gm["frames"]):
                    if f"{p}.obj{o}.t{t}" in exempt:
                        continue
                    cmp.frame_ious[f"{p}.obj{o}.t{t}"] = _iou(mask_utils.decode(fr["rle"]).astype(bool),
                                                              run.masks[o, t])
    return cmp


def near_tie_frames(golden: dict, gap: float = 0.02) -> set[str]:
    """Frames where SAM 2's multimask choice is within `gap` of the runner-up (fixture README:
    a bf16 gap of one ulp may legitimately go the other way), and every later frame of that
    object, which depends on the choice through SAM 2's memory."""
    out = set()
    for j, call in enumerate(golden["calls"]):
        for o, gm in enumerate(call.get("masks", [])):
            tied = False
            for t, fr in enumerate(gm["frames"]):
                ious = sorted(fr.get("ious", []), reverse=True)
                tied = tied or (len(ious) > 1 and ious[0] - ious[1] < gap)
                if tied:
                    out.add(f"call{j}.obj{o}.t{t}")
    return out
