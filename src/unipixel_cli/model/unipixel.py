"""UniPixel = Qwen2.5-VL (refer/answer) + SAM 2.1 (masks) + the heads that link them.

Steps, in the paper's words: `encode_video` (ViT + merger), `encode_refs` (points/boxes →
`<|ref|>`), `inject_memory` (object masks → `<|mem|>`), `prefill` + greedy decoding with
`seg_hidden_states` captured on the way, `decode_masks` (SAM 2 prompted by `seg_head`).
All batched: B requests share one ViT pass, one padded prefill and one decode loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .heads import RefPrompt, UniPixelHeads
from .sam2_hidden import HiddenPromptSAM2, masks_at_resolution


@dataclass
class TokenIds:
    ref: int
    seg: int
    mem: int
    video: int
    pad: int
    eos: tuple[int, ...]


@dataclass
class LLMRequest:
    """One prompt for the LLM: token ids with one `<|video_pad|>` run already expanded."""

    input_ids: list[int]
    pixel_values: torch.Tensor  # [patches, C·2·14·14]
    grid_thw: tuple[int, int, int]
    refs: list[RefPrompt] = field(default_factory=list)  # one per <|ref|>, in order
    refer_masks: torch.Tensor | None = None  # [n_obj, grid_t, h, w] bool for <|mem|>
    generate: bool = True  # False: teacher-forced forward only
    max_new_tokens: int = 512
    second_per_grid: float = 1.0  # seconds per temporal patch, spaces MRoPE's time axis


@dataclass
class LLMResult:
    generated_ids: list[int]
    seg_hidden: torch.Tensor  # [n_seg, D] pre-norm states at <|seg|>-predicting positions
    stopped_on_eos: bool
    trace: dict = field(default_factory=dict)


@dataclass
class DecodeState:
    """What greedy decoding carries between steps, for the requests still in the batch."""

    cache: DynamicCache
    attn: torch.Tensor  # [b, seen] attention mask
    next_pos: torch.Tensor  # [b] next MRoPE position (text tokens share it on all 3 axes)
    last_hidden: torch.Tensor  # [b, D] final-norm state at the last position
    last_pre_norm: torch.Tensor  # [b, D] the same position before the final norm
    seg_hidden: list[list[torch.Tensor]]  # per request (all of them), states kept so far

    def keep(self, rows: list[int]) -> None:
        """Drop finished requests from the batch and the KV cache."""
        idx = torch.tensor(rows, device=self.attn.device)
        self.cache.batch_select_indices(idx)
        self.attn, self.next_pos = self.attn[idx], self.next_pos[idx]
        self.last_hidden, self.last_pre_norm = self.last_hidden[idx], self.last_pre_norm[idx]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host → device copy; on CUDA through pinned memory so the copy overlaps compute."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def mrope_position_ids(input_ids: list[int], grid_thw: tuple[int, int, int], video_token: int,
                       merge: int, tokens_per_second: float,
                       second_per_grid: float = 1.0) -> torch.Tensor:
    """Multimodal RoPE ids `[3, L]` for text + one video run.

    Text after the video continues from max(video ids) + 1, as in transformers 4.5x
    with which the published checkpoints were trained (5.x continues from h/w only).
    """
    ids = torch.tensor(input_ids)
    where = (ids == video_token).nonzero().flatten()
    if len(where) == 0:
        return torch.arange(len(input_ids)).expand(3, -1).clone()
    start, n_vid = int(where[0]), len(where)
    t, h, w = grid_thw[0], grid_thw[1] // merge, grid_thw[2] // merge
    assert n_vid == t * h * w, (n_vid, grid_thw)
    pre = torch.arange(start).expand(3, -1)
    t_idx = (torch.arange(t) * second_per_grid * tokens_per_second).long()
    vid = torch.stack([
        t_idx.view(-1, 1, 1).expand(t, h, w).flatten(),
        torch.arange(h).view(1, -1, 1).expand(t, h, w).flatten(),
        torch.arange(w).view(1, 1, -1).expand(t, h, w).flatten(),
    ]) + start
    nxt = int(vid.max()) + 1
    post = torch.arange(len(input_ids) - start - n_vid).expand(3, -1) + nxt
    return torch.cat([pre, vid, post], dim=1)


def _length_groups(lengths: list[int], max_pad: int) -> list[list[int]]:
    """Request indices grouped so no group's lengths differ by more than `max_pad`."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] - lengths[groups[-1][0]] <= max_pad:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _cat_left_padded(parts: list[torch.Tensor], length: int, dim: int = 1) -> torch.Tensor:
    """Concatenate on the batch axis after left-padding each part's `dim` to `length` with zeros."""
    padded = []
    for t in parts:
        missing = length - t.shape[dim]
        if missing:
            shape = list(t.shape)
            shape[dim] = missing
            t = torch.cat([t.new_zeros(shape), t], dim=dim)
        padded.append(t)
    return torch.cat(padded) if len(padded) > 1 else padded[0]


def _merge_left_padded(caches: list[DynamicCache], length: int, config) -> DynamicCache:
    """One KV cache from several prefills; padded slots are never attended (attention mask 0)."""
    merged = DynamicCache(config=config)
    for layer in range(len(caches[0].layers)):
        keys = _cat_left_padded([c.layers[layer].keys for c in caches], length, dim=2)
        values = _cat_left_padded([c.layers[layer].values for c in caches], length, dim=2)
        merged.update(keys, values, layer)
    return merged


class UniPixel(torch.nn.Module):
    def __init__(self, llm, sam2: HiddenPromptSAM2, heads: UniPixelHeads, tokens: TokenIds,
                 sam2_image_size: int, compute_dtype: torch.dtype) -> None:
        super().__init__()
        self.llm = llm
        self.sam2 = sam2
        self.heads = heads
        self.tokens = tokens
        self.sam2_image_size = sam2_image_size
        self.compute_dtype = compute_dtype
        # one request per LLM forward and one object per SAM 2 state, as the authors run them:
        # in bf16 a batched GEMM may round differently from a single row (measured, see
        # benchmarks/batch_invariance.py), so this makes each row's output independent of its batch
        self.batch_invariant = False
        self._captured: dict[str, torch.Tensor] = {}
        # the seg path reads the last layer *before* the final norm, the memory path reads
        # the ViT features entering the patch merger's MLP: capture both with pre-hooks
        self.text_model.norm.register_forward_pre_hook(self._capture("pre_norm"))
        self.vision.merger.mlp.register_forward_pre_hook(self._capture("merger_in"))

    def _capture(self, name: str):
        def hook(_module, args):
            self._captured[name] = args[0]
        return hook

    @property
    def text_model(self):
        return self.llm.model.language_model

    @property
    def vision(self):
        return self.llm.model.visual

    @property
    def device(self) -> torch.device:
        return self.llm.lm_head.weight.device

    # -- vision ------------------------------------------------------------------------
    def encode_video(self, requests: list[LLMRequest],
                     max_patches: int | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """ViT over every request's frames → (video embeds, merger-MLP inputs) each.

        The ViT attends within each video anyway, so requests share a pass only to fill an
        accelerator (up to `max_patches`, about one 16-frame video at the default budget); on
        the CPU a shared pass only costs copies and cache misses (measured), so one per video.
        """
        if max_patches is None:
            max_patches = 16384 if self.device.type == "cuda" else 1
        embeds: list[torch.Tensor] = []
        merger_in: list[torch.Tensor] = []
        group: list[LLMRequest] = []
        for i, r in enumerate(requests):
            group.append(r)
            nxt = requests[i + 1].pixel_values.shape[0] if i + 1 < len(requests) else None
            if nxt is None or sum(g.pixel_values.shape[0] for g in group) + nxt > max_patches:
                e, m = self._vit_pass(group)
                embeds += e
                merger_in += m
                group = []
        return embeds, merger_in

    def _vit_pass(self, requests: list[LLMRequest]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        pixels = torch.cat([r.pixel_values for r in requests]) if len(requests) > 1 else requests[0].pixel_values
        pixels = to_device(pixels, self.device).to(self.vision.dtype)
        grid = torch.tensor([r.grid_thw for r in requests], device=self.device)
        out = self.vision(pixels, grid_thw=grid)
        embeds = out.pooler_output if hasattr(out, "pooler_output") else out
        sizes = (grid.prod(-1) // self.vision.spatial_merge_size**2).tolist()
        merger_in = self._captured.pop("merger_in").view(sum(sizes), -1)
        return list(embeds.split(sizes)), list(merger_in.split(sizes))

    # -- prompt assembly ----------------------------------------------------------------
    def build_embeds(self, req: LLMRequest, video_embeds: torch.Tensor,
                     merger_in: torch.Tensor) -> torch.Tensor:
        ids = torch.tensor(req.input_ids, device=self.device)
        embeds = self.text_model.embed_tokens(ids)
        dtype = embeds.dtype
        embeds[ids == self.tokens.video] = video_embeds.to(dtype)
        n_ref = int((ids == self.tokens.ref).sum())
        if n_ref != len(req.refs):
            raise ValueError(f"prompt has {n_ref} <|ref|> tokens but {len(req.refs)} visual prompts")
        if n_ref:
            embeds[ids == self.tokens.ref] = self.heads.encode_refs(req.refs, req.grid_thw[0]).to(dtype)
        n_mem = int((ids == self.tokens.mem).sum())
        if req.refer_masks is not None or n_mem:
            mem = self.heads.inject_memory(merger_in, req.refer_masks) if req.refer_masks is not None else None
            if mem is None or mem.shape[0] != n_mem:
                raise ValueError(f"prompt has {n_mem} <|mem|> tokens but memory gives "
                                 f"{0 if mem is None else mem.shape[0]}")
            embeds[ids == self.tokens.mem] = mem.to(dtype)
        return embeds

    def position_ids(self, req: LLMRequest) -> torch.Tensor:
        vc = self.llm.config.vision_config
        return mrope_position_ids(req.input_ids, req.grid_thw, self.tokens.video,
                                  vc.spatial_merge_size, vc.tokens_per_second, req.second_per_grid)

    # -- LLM ----------------------------------------------------------------------------
    @torch.inference_mode()
    def run_llm(self, requests: list[LLMRequest], trace: bool = False) -> list[LLMResult]:
        """inject → prefill → greedy decoding, batched (left padding, per-sample positions and EOS)."""
        if self.batch_invariant and len(requests) > 1:
            return [r for req in requests for r in self.run_llm([req], trace=trace)]
        traces: list[dict] = [{} for _ in requests]
        embeds, positions = self.inject(requests, traces if trace else None)
        state = self.prefill(requests, embeds, positions, traces if trace else None)
        return self.greedy_decode(requests, state, traces if trace else None)

    def inject(self, requests: list[LLMRequest], traces: list[dict] | None = None):
        """Token embeddings with video, `<|ref|>` and `<|mem|>` embeddings put in place."""
        video_embeds, merger_in = self.encode_video(requests)
        embeds = [self.build_embeds(r, v, m) for r, v, m in zip(requests, video_embeds, merger_in)]
        positions = [self.position_ids(r) for r in requests]
        if traces is not None:
            for t, e, p, m in zip(traces, embeds, positions, merger_in):
                t.update(inputs_embeds=e.float().cpu(), position_ids=p, merger_in=m.float().cpu())
        return embeds, positions

    def prefill(self, requests: list[LLMRequest], embeds: list[torch.Tensor], positions: list[torch.Tensor],
                traces: list[dict] | None = None, max_pad: int | None = None) -> DecodeState:
        """Forward over all prompts; keeps the KV cache (left-padded, one row per request) and
        the states at teacher-forced `<|seg|>` tokens (the position before each).

        Prompts whose lengths differ by at most `max_pad` share a padded forward. On the CPU
        a padding mask makes attention ~3x slower than a plain causal pass (measured), so
        only equal-length prompts share one there; an accelerator takes all in one batch.
        """
        if max_pad is None:
            max_pad = 1 << 30 if self.device.type == "cuda" else 0
        lengths = [len(r.input_ids) for r in requests]
        L = max(lengths)
        groups = _length_groups(lengths, max_pad)
        parts = [self._prefill_group([requests[i] for i in g], [embeds[i] for i in g], [positions[i] for i in g])
                 for g in groups]
        cache = parts[0][0] if len(parts) == 1 else _merge_left_padded([p[0] for p in parts], L, self.text_model.config)
        pre_norm = _cat_left_padded([p[1] for p in parts], L)
        last_hidden = _cat_left_padded([p[2] for p in parts], L)
        order = torch.tensor([i for g in groups for i in g])
        if not torch.equal(order, torch.arange(len(requests))):  # groups follow length: back to request order
            back = order.argsort().to(self.device)
            cache.batch_select_indices(back)
            pre_norm, last_hidden = pre_norm[back], last_hidden[back]
        attn = (torch.arange(L) >= L - torch.tensor(lengths)[:, None]).long()  # left padding
        if traces is not None:
            for b, n in enumerate(lengths):
                traces[b]["prefill_hidden"] = last_hidden[b, L - n:].float().cpu()
        seg_hidden = []
        for b, req in enumerate(requests):
            ids, pad = req.input_ids, L - lengths[b]
            seg_hidden.append([pre_norm[b, pad + i] for i in range(len(ids) - 1) if ids[i + 1] == self.tokens.seg])
        return DecodeState(cache, attn.to(self.device), torch.stack([p.max() + 1 for p in positions]).to(self.device),
                           last_hidden[:, -1], pre_norm[:, -1], seg_hidden)

    def _prefill_group(self, requests: list[LLMRequest], embeds: list[torch.Tensor],
                       positions: list[torch.Tensor]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """One left-padded forward → (KV cache, pre-norm states, final states), each `[b, L_group, …]`."""
        B, lengths = len(requests), [len(r.input_ids) for r in requests]
        L, D = max(lengths), embeds[0].shape[-1]
        batch = embeds[0].new_zeros(B, L, D)
        pos = torch.zeros(3, B, L, dtype=torch.long)
        attn = torch.zeros(B, L, dtype=torch.long)
        for b, (e, p, n) in enumerate(zip(embeds, positions, lengths)):
            batch[b, L - n:], pos[:, b, L - n:], attn[b, L - n:] = e, p, 1
        padded = min(lengths) < L
        cache = DynamicCache(config=self.text_model.config)
        out = self.text_model(inputs_embeds=batch, attention_mask=attn.to(self.device) if padded else None,
                              position_ids=pos.to(self.device), past_key_values=cache, use_cache=True)
        return cache, self._captured.pop("pre_norm"), out.last_hidden_state

    def greedy_decode(self, requests: list[LLMRequest], state: DecodeState,
                      traces: list[dict] | None = None) -> list[LLMResult]:
        """Greedy steps until each request hits EOS or its budget; finished requests leave the
        batch. Every step whose argmax is `<|seg|>` keeps its pre-norm state (`seg_hidden_states`)."""
        B = len(requests)
        generated: list[list[int]] = [[] for _ in requests]
        eos_hit = [False] * B
        step_logits: list[list[torch.Tensor]] = [[] for _ in requests]
        rows = list(range(B))  # requests still decoding, in batch (= KV cache) order
        while rows:
            logits = self.llm.lm_head(state.last_hidden).float()
            nxt = logits.argmax(-1).tolist()
            still = []
            for i, b in enumerate(rows):
                if nxt[i] == self.tokens.seg:
                    state.seg_hidden[b].append(state.last_pre_norm[i])
                if not requests[b].generate:
                    continue  # teacher-forced: only the <|seg|> check on the last position
                if traces is not None:
                    step_logits[b].append(logits[i].cpu())
                generated[b].append(nxt[i])
                if nxt[i] in self.tokens.eos:
                    eos_hit[b] = True
                elif len(generated[b]) < requests[b].max_new_tokens:
                    still.append(i)
            if not still:
                break
            if len(still) < len(rows):
                state.keep(still)
                rows = [rows[i] for i in still]
            self._step(state, [generated[b][-1] for b in rows])
        results = []
        for b in range(B):
            hidden = state.seg_hidden[b]
            hs = torch.stack(hidden) if hidden else state.last_hidden.new_zeros(0, state.last_hidden.shape[-1])
            trace = traces[b] if traces is not None else {}
            if step_logits[b]:
                trace["step_logits"] = torch.stack(step_logits[b])
            results.append(LLMResult(generated[b], hs, eos_hit[b], trace))
        return results

    def _step(self, state: DecodeState, tokens: list[int]) -> None:
        feed = torch.tensor(tokens, device=self.device)
        state.attn = torch.cat([state.attn, state.attn.new_ones(len(tokens), 1)], dim=1)
        out = self.text_model(inputs_embeds=self.text_model.embed_tokens(feed)[:, None], attention_mask=state.attn,
                              position_ids=state.next_pos.view(1, -1, 1).expand(3, -1, 1),
                              past_key_values=state.cache, use_cache=True)
        state.next_pos = state.next_pos + 1
        state.last_hidden = out.last_hidden_state[:, -1]
        state.last_pre_norm = self._captured.pop("pre_norm")[:, -1]

    # -- SAM 2 ----------------------------------------------------------------------------
    @torch.inference_mode()
    def seg_tokens(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        return self.heads.seg_tokens(seg_hidden.to(self.device))

    @torch.inference_mode()
    def decode_masks(self, seg_tokens: torch.Tensor, num_frames: int,
                     load_frames: Callable[[int, int], torch.Tensor], height: int, width: int,
                     chunk_size: int = 16, trace: dict | None = None,
                     scores: list[float] | None = None) -> torch.Tensor:
        """SAM 2 prompted on frame 0 by each object's tokens, propagated forward.

        Returns bool masks `[n_obj, num_frames, height, width]` on the CPU.
        """
        job = MaskJob(seg_tokens, num_frames, load_frames, height, width)
        self.decode_masks_batched([job], chunk_size=chunk_size, trace=trace)
        if scores is not None:
            scores.extend(job.scores)
        return job.masks

    @torch.inference_mode()
    def decode_masks_batched(self, jobs: list[MaskJob], chunk_size: int = 16, trace: dict | None = None) -> None:
        """Decode several videos' objects in shared SAM 2 batches (one per video length).

        Fills each job's `scores` (mean object-presence probability over the frames) and
        either hands each frame's bool masks `[n_obj, H, W]` (CPU) to its `on_frame` as soon as
        SAM 2 has them, or, without one, fills its `masks` `[n_obj, T, H, W]`.
        """
        for job in jobs:
            job.masks = None if job.on_frame else torch.zeros(job.seg_tokens.shape[0], job.num_frames, job.height,
                                                                  job.width, dtype=torch.bool)
            job.scores = []
        by_length: dict[int, list[MaskJob]] = {}
        for job in jobs:
            if job.seg_tokens.shape[0]:
                by_length.setdefault(job.num_frames, []).append(job)
        for num_frames, group in by_length.items():
            counts = [j.seg_tokens.shape[0] for j in group]
            hidden = torch.cat([j.seg_tokens for j in group])
            bounds = [0, *torch.tensor(counts).cumsum(0).tolist()]
            lowres, presence = [], []
            for t, low, step in self._propagate(hidden, num_frames, [j.load_frames for j in group], chunk_size,
                                                counts):
                for j, a, b in zip(group, bounds[:-1], bounds[1:]):
                    masks = masks_at_resolution(low[a:b], j.height, j.width).cpu()
                    if j.on_frame is not None:
                        j.on_frame(t, masks)
                    else:
                        j.masks[:, t] = masks
                presence.append(step["object_score_logits"].float().sigmoid().view(-1).cpu())
                if trace is not None:
                    lowres.append(low[:, 0].float().cpu())
            # score = mean object-presence probability over the frames
            mean_presence = torch.stack(presence).mean(0).tolist()
            for j, a, b in zip(group, bounds[:-1], bounds[1:]):
                j.scores = mean_presence[a:b]
            if trace is not None:
                trace["lowres_logits"] = torch.stack(lowres, dim=1)


    def _propagate(self, hidden: torch.Tensor, num_frames: int, loaders: list, chunk_size: int, counts: list[int]):
        """All objects in one SAM 2 batch, or (batch-invariant) one state per object advanced in
        lockstep, each reading its own video's frames; yields what `propagate` yields."""
        if not self.batch_invariant or hidden.shape[0] == 1:
            yield from self.sam2.propagate(hidden, num_frames, loaders, chunk_size, objects_per_video=counts)
            return
        owner = [v for v, c in enumerate(counts) for _ in range(c)]
        streams = [self.sam2.propagate(hidden[k:k + 1], num_frames, loaders[owner[k]], chunk_size)
                   for k in range(hidden.shape[0])]
        for per_object in zip(*streams):
            t = per_object[0][0]
            low = torch.cat([o[1] for o in per_object])
            scores = torch.cat([o[2]["object_score_logits"] for o in per_object])
            yield t, low, {"object_score_logits": scores}


@dataclass
class MaskJob:
    """One video's `<|seg|>` tokens and how to read its SAM-transformed frames."""

    seg_tokens: torch.Tensor  # [n_obj, K, C]
    num_frames: int
    load_frames: Callable[[int, int], torch.Tensor]
    height: int
    width: int
    # per frame `(t, bool masks [n_obj, H, W])`; unset: the whole `masks` tensor is kept
    on_frame: Callable[[int, torch.Tensor], None] | None = None
    masks: torch.Tensor | None = None
    scores: list[float] = field(default_factory=list)

    def masks_empty(self) -> torch.Tensor:
        return torch.zeros(0, self.num_frames, self.height, self.width, dtype=torch.bool)
