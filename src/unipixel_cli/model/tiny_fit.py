"""Fit the tiny-random checkpoint on the synthetic examples, so a smoke run shows the tool working.

A random tiny model answers with 512 newlines and empty masks. At creation we fit it briefly
(seeded, deterministic, CPU) on exactly the requests the engines build for `examples/`:

1. the language model learns short answers: "Sure, it is<|seg|>." for segment prompts, a
   short sentence for PixelQA questions and "B)." style replies after "The best option is (";
2. `seg_head` and SAM 2's prompt/memory/decoder modules learn to turn the `<|seg|>` states into
   the mask of the example's target shape over the frames (the image encoder stays random and
   frozen, so its features are computed once).

Targets come from the generator's geometry (`synthetic.example_tracks`): the shape the prompt
names (else the one nearest the frame centre) for segment rows, the shape nearest each point/box for
PixelQA objects. On any other input the fitted model's answers mean nothing.

The engines are imported lazily: the fit trains on the very requests they build at inference.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..synthetic import ShapeTrack, example_tracks, make_examples
from .loading import load_unipixel
from .prompting import chat_text, make_request
from .tiny import save_weights
from .unipixel import LLMRequest, UniPixel

log = logging.getLogger(__name__)

FIT_VERSION = 1  # bump when the fitting code changes what it produces (rebuilds cached checkpoints)


@dataclass
class TextExample:
    request: LLMRequest  # prompt only, as the engine builds it
    answer_ids: list[int]  # the reply to learn, ending with the end-of-turn token


@dataclass
class MaskExample:
    """One video's `<|seg|>` states and the target masks of each object over its SAM frames."""

    name: str
    seg_hidden: torch.Tensor  # [n_obj, D] pre-norm states, as inference captures them
    frames: list[tuple]  # SAM 2 backbone features per frame (frozen encoder)
    targets: torch.Tensor  # [n_obj, T, s, s] float, SAM low-res grid


def fit_on_examples(ckpt: Path, fit: dict, seed: int) -> dict:
    """Fit the checkpoint at `ckpt` in place; returns the final losses (for logs and tests)."""
    threads = torch.get_num_threads()
    # one thread: the ops are tiny, and idle OpenMP workers spinning between them cost ~10x the
    # CPU time of the work itself (measured: 15.5 s vs 1.1 s CPU per mask step)
    torch.set_num_threads(1)
    try:
        return _fit(ckpt, fit, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(ckpt: Path, fit: dict, seed: int) -> dict:
    from ..engine import Engine, EngineOptions
    from ..manifest import load_manifest
    from ..pixelqa import ANSWER_PREFIX, PixelQAEngine

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model, processor = load_unipixel(ckpt, device="cpu", dtype="fp32")
    tok = processor.tokenizer
    eos = processor.tokens.eos[0]

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"] + [eos]

    with tempfile.TemporaryDirectory(prefix="unipixel-tiny-") as tmp:
        manifests = make_examples(Path(tmp))
        seg_engine = Engine(model, processor, EngineOptions())
        qa_engine = PixelQAEngine(model, processor, EngineOptions())
        seg_items = [seg_engine.prepare(r) for r in load_manifest(manifests["videos"], "segment")[0]]
        qa_items = [qa_engine.prepare(r) for r in load_manifest(manifests["prompts"], "pixelqa")[0]]

        log.info("tiny-random: examples prepared in %.1fs", time.perf_counter() - t0)
        seg_tracks = [segment_target(p.mrow.row.media, p.mrow.row.prompt) for p in seg_items]
        qa_tracks = [[refer_target(p, obj_id) for obj_id in p.ref_order] for p in qa_items]

        texts = [TextExample(p.request, encode(fit["answers"]["segment"])) for p in seg_items]
        for p, tracks in zip(qa_items, qa_tracks):
            for obj_id, track in zip(p.ref_order, tracks):
                p.bank.prefill(obj_id, torch.from_numpy(pick_frames(track, p.sam_indices, p.media)))
            grids = p.bank.refer_masks(p.llm_size)
            prefix = p.bank.prefix(p.llm_size, p.media.is_image, grids)
            options = p.mrow.row.options
            text = chat_text(processor, prefix + p.stage_b_text, answer_prefix=ANSWER_PREFIX if options else "")
            request = make_request(processor, text, p.pixel_values, p.grid, refer_masks=grids)
            reply = (fit["answers"]["pixelqa_options"].format(letter=option_letter(options, tracks))
                     if options else fit["answers"]["pixelqa"])
            texts.append(TextExample(request, encode(reply)))
        lm_loss = fit_language_model(model, texts, fit["lm_steps"], fit["lm_lr"])
        log.info("tiny-random: language model fitted (loss %.4f) in %.1fs", lm_loss, time.perf_counter() - t0)

        # the <|seg|> states of the fitted replies, teacher-forced (greedy decoding gives the same
        # states once the replies are learnt; the smoke test checks that it does)
        masks = []
        forced = [_with_reply(e.request, e.answer_ids) for e in texts[:len(seg_items)]]
        for p, res, track in zip(seg_items, model.run_llm(forced), seg_tracks):
            masks.append(mask_example(model, seg_engine, p, res.seg_hidden[:1], [track], fit["sam_frames"]))
        staged = [p for p in qa_items if p.request is not None]
        for p, res in zip(staged, model.run_llm([p.request for p in staged])):
            tracks = qa_tracks[qa_items.index(p)]
            masks.append(mask_example(model, seg_engine, p, res.seg_hidden[:len(p.ref_order)], tracks,
                                      fit["sam_frames"]))
        log.info("tiny-random: mask examples ready at %.1fs", time.perf_counter() - t0)
        fit_masks(model, masks, fit["sam_first_frame_steps"], fit["sam_lr"], max_frames=1)
        log.info("tiny-random: first frames fitted at %.1fs", time.perf_counter() - t0)
        sam_loss = fit_masks(model, masks, fit["sam_steps"], fit["sam_lr"], max_frames=fit["sam_frames"])
        log.info("tiny-random: masks fitted (loss %.4f), %.1fs in all", sam_loss, time.perf_counter() - t0)

    save_weights(ckpt, model.llm.state_dict(), model.sam2.state_dict(), model.heads.state_dict())
    return {"lm_loss": lm_loss, "sam_loss": sam_loss}


# -- targets ---------------------------------------------------------------------------------
def segment_target(media: str, prompt: str, height: int = 120, width: int = 160) -> ShapeTrack:
    """The shape a segment prompt names (ball/box/triangle); in a clip without one, the shape
    nearest the centre of the first frame. (The examples' PixelQA points sit at the centre: the
    tiny model cannot tell a segment prompt from a PixelQA one on the same clip, so both ask for
    the same shape.)"""
    tracks = example_tracks(media)
    named = [t for t in tracks if re.search(rf"\b{t.kind}\b", prompt)]
    centre = np.array([width / 2, height / 2])
    return named[0] if named else min(tracks, key=lambda t: float(np.linalg.norm(t.centers()[0] - centre)))


def refer_target(p, obj_id: int) -> ShapeTrack:
    """The shape nearest a PixelQA point (or box centre) on its frame."""
    obj = next(o for o in p.mrow.row.objects if o.id == obj_id)
    where = np.asarray(obj.point if obj.point is not None else
                       [(obj.box[0] + obj.box[2]) / 2, (obj.box[1] + obj.box[3]) / 2], dtype=float)
    tracks = example_tracks(p.mrow.row.media)
    return min(tracks, key=lambda t: float(np.linalg.norm(t.centers()[obj.frame] - where)))


def option_letter(options: list[str], tracks: list[ShapeTrack]) -> str:
    """The option naming the first referred shape's kind, else the first option."""
    for option in options:
        if tracks and re.search(rf"\b{tracks[0].kind}\b", option):
            return re.match(r"\s*\(?([A-Z])", option).group(1)
    return re.match(r"\s*\(?([A-Z])", options[0]).group(1)


def pick_frames(track: ShapeTrack, indices: list[int], media) -> np.ndarray:
    return track.masks(media.height, media.width)[indices]


# -- language model ----------------------------------------------------------------------------
def _with_reply(request: LLMRequest, reply: list[int]) -> LLMRequest:
    return LLMRequest(request.input_ids + reply, request.pixel_values, request.grid_thw, request.refs,
                      request.refer_masks, generate=False)


def fit_language_model(model: UniPixel, examples: list[TextExample], steps: int, lr: float) -> float:
    """Teach the replies by fitting only the last decoder layer's MLP (and its norm) plus the final
    norm: nothing downstream of them feeds attention, so every other state is fixed, computed
    once, and a step costs a few small matrix products instead of a forward over ~1100-token
    prompts. The tied embedding table stays as is (it also feeds the inputs)."""
    layer = model.text_model.layers[-1]
    captured: list[torch.Tensor] = []
    # the input of post_attention_layernorm is the residual stream after the last attention
    hook = layer.post_attention_layernorm.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    residuals, targets = [], []
    try:
        with torch.no_grad():
            for e in examples:
                forced = _with_reply(e.request, e.answer_ids[:-1])
                embeds, positions = model.inject([forced])
                captured.clear()
                model.text_model(inputs_embeds=embeds[0][None], position_ids=positions[0][:, None], use_cache=False)
                n_prompt = len(e.request.input_ids)
                residuals.append(captured[-1][0, n_prompt - 1:].clone())
                targets.append(torch.tensor(e.answer_ids))
    finally:
        hook.remove()
        model._captured.clear()
    residual, target = torch.cat(residuals), torch.cat(targets)
    params = [*layer.mlp.parameters(), *layer.post_attention_layernorm.parameters(),
              *model.text_model.norm.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    loss = torch.tensor(0.0)
    for i in range(steps):
        opt.zero_grad()
        hidden = residual + layer.mlp(layer.post_attention_layernorm(residual))
        loss = F.cross_entropy(model.llm.lm_head(model.text_model.norm(hidden)), target)
        loss.backward()
        opt.step()
        if i % 50 == 0:
            log.debug("lm step %d loss %.4f", i, loss.item())
    return loss.item()


# -- masks -------------------------------------------------------------------------------------
def mask_example(model: UniPixel, engine, p, seg_hidden: torch.Tensor, tracks: list[ShapeTrack],
                 max_frames: int) -> MaskExample:
    """A request's `<|seg|>` states with its first `max_frames` SAM frames and target masks."""
    job = engine.mask_job(p, seg_hidden)
    n = min(job.num_frames, max_frames)
    with torch.no_grad():
        frames = model.sam2.frame_features(job.load_frames(0, n))
    s = model.sam2_image_size // 4
    targets = []
    for track in tracks:
        m = torch.from_numpy(pick_frames(track, p.sam_indices[:n], p.media)).float()
        targets.append(F.interpolate(m[:, None], size=(s, s), mode="area")[:, 0])
    return MaskExample(p.mrow.id, seg_hidden.clone(), frames, torch.stack(targets))


def fit_masks(model: UniPixel, examples: list[MaskExample], steps: int, lr: float,
              max_frames: int | None = None) -> float:
    """seg_head + SAM 2 (all but the frozen image encoder) on the examples' first `max_frames`
    frames, with memory. Clips of one length share a SAM 2 batch, as in inference.

    A first pass on frame 0 alone (`max_frames=1`) is cheap and teaches `seg_head` and the mask
    decoder the first masks; the pass over several frames teaches the memory. That pass must go
    past `num_maskmem` (7) frames: from there on SAM 2's memory is as full as it ever gets, so
    later frames see nothing new (measured: trained on 6 frames, tracks drift off after frame 9).
    """
    sam2 = model.sam2
    params = [p for n, p in sam2.named_parameters() if not n.startswith("image_encoder.")]
    opt = torch.optim.Adam([{"params": params}, {"params": model.heads.seg_head.parameters(), "lr": 3 * lr}],
                           lr=lr)
    groups: dict[int, list[MaskExample]] = {}
    for e in examples:
        n = min(len(e.frames), max_frames or len(e.frames))
        groups.setdefault(n, []).append(MaskExample(e.name, e.seg_hidden, e.frames[:n], e.targets[:, :n]))
    log.debug("mask groups: %s", {n: [e.name for e in g] for n, g in groups.items()})
    decoded: list[tuple] = []
    hook = sam2.sam_mask_decoder.register_forward_hook(lambda _m, _a, out: decoded.append(out))
    loss = torch.tensor(0.0)
    try:
        for i in range(steps):
            opt.zero_grad()
            loss = sum(_track_loss(model, g, decoded) for g in groups.values()) / len(groups)
            loss.backward()
            opt.step()
            if i % 10 == 0:
                log.debug("mask step %d (%s frames) loss %.4f", i, max_frames, loss.item())
    finally:
        hook.remove()
    return loss.item()


def _track_loss(model: UniPixel, group: list[MaskExample], decoded: list) -> torch.Tensor:
    """Propagate like `HiddenPromptSAM2.propagate` (frame 0 prompted by the seg tokens) with
    gradients; every candidate mask and the object score are pulled towards the target."""
    sam2 = model.sam2
    hidden = model.heads.seg_tokens(torch.cat([e.seg_hidden for e in group]))
    counts = [e.targets.shape[0] for e in group]
    targets = torch.cat([e.targets for e in group])
    num_frames = targets.shape[1]
    output: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    total = hidden.new_zeros(())
    for t in range(num_frames):
        feats, pos, sizes = sam2._batch_features([e.frames[t] for e in group], counts)
        decoded.clear()
        step = sam2._track_one(t, t == 0, feats, pos, sizes, output, num_frames, hidden)
        output["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = step
        candidates, _ious, _tokens, presence = decoded[-1]
        target = targets[:, t][:, None].expand_as(candidates)
        total = total + _mask_loss(candidates, target) + F.binary_cross_entropy_with_logits(
            presence, torch.ones_like(presence))
    return total / num_frames


def _mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft dice: the shapes cover ~3% of the frame, dice keeps them from vanishing."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = logits.sigmoid()
    inter = (prob * target).flatten(2).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(2).sum(-1) + target.flatten(2).sum(-1) + 1)
    return bce + dice.mean()
