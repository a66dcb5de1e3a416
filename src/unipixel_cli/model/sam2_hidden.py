"""SAM 2 prompted by LLM hidden tokens (UniPixel's `<|seg|>` → mask path).

PyPI `sam2` knows points, boxes and masks. UniPixel appends `sam2_hidden_tokens` extra
tokens (the output of `seg_head`) to the sparse prompt of the conditioning frame. We add
exactly that on top of PyPI `sam2` — a prompt encoder that appends pending hidden tokens,
and a small propagation loop over `SAM2Base.track_step` — without copying its code.

The loop batches all objects of one video, computes frame features in bounded chunks and
keeps only the memory SAM 2 can still attend to, so `propagate all` on long videos does
not grow with video length (beyond the output masks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from sam2.modeling.sam2_base import SAM2Base

from .sam2_precision import CastInputLinear, Fp32PEPromptEncoder


class HiddenTokenPromptEncoder(Fp32PEPromptEncoder):
    """SAM prompt encoder that appends LLM-derived tokens after the point embeddings."""

    pending_hidden: torch.Tensor | None = None

    def forward(self, points, boxes, masks):  # type: ignore[override]
        sparse, dense = super().forward(points, boxes, masks)
        if self.pending_hidden is not None:
            # UniPixel order: [padding points..., hidden tokens] (matches the checkpoint)
            sparse = torch.cat([sparse, self.pending_hidden.to(sparse.dtype)], dim=1)
        return sparse, dense


class HiddenPromptSAM2(SAM2Base):
    """SAM 2.1 whose conditioning frame is prompted by `[B, sam2_hidden_tokens, C]` tokens."""

    def _build_sam_heads(self) -> None:
        super()._build_sam_heads()
        pe = self.sam_prompt_encoder
        self.sam_prompt_encoder = HiddenTokenPromptEncoder(
            embed_dim=pe.embed_dim,
            image_embedding_size=pe.image_embedding_size,
            input_image_size=pe.input_image_size,
            mask_in_chans=16,
        )
        if isinstance(self.obj_ptr_tpos_proj, torch.nn.Linear):
            proj = self.obj_ptr_tpos_proj
            self.obj_ptr_tpos_proj = CastInputLinear(proj.in_features, proj.out_features)

    def _forward_sam_heads(self, *args, **kwargs):
        # PyPI upcasts the mask logits (and so the masks, pointers and everything after them)
        # to float32; the authors keep them in the weights' dtype and only upsample to
        # image_size in float32 (their sam2_base.py:373). The upcast values are exact, so
        # casting back reproduces theirs bit for bit.
        outputs = super()._forward_sam_heads(*args, **kwargs)
        return tuple(o.to(self.dtype) if torch.is_floating_point(o) else o for o in outputs)

    @property
    def dtype(self) -> torch.dtype:
        return self.image_encoder.trunk.patch_embed.proj.weight.dtype

    @contextmanager
    def _hidden_prompt(self, hidden: torch.Tensor):
        self.sam_prompt_encoder.pending_hidden = hidden
        try:
            yield
        finally:
            self.sam_prompt_encoder.pending_hidden = None

    def frame_features(self, images: torch.Tensor) -> list[tuple]:
        """Backbone features of a chunk of SAM-transformed frames `[T, 3, S, S]`, one per frame."""
        if self.device.type == "cuda" and images.device.type == "cpu":
            images = images.pin_memory().to(self.device, non_blocking=True)
        backbone_out = self.forward_image(images.to(self.device, self.dtype))
        per_frame = []
        for i in range(images.shape[0]):
            one = {
                "backbone_fpn": [x[i : i + 1] for x in backbone_out["backbone_fpn"]],
                "vision_pos_enc": [x[i : i + 1] for x in backbone_out["vision_pos_enc"]],
            }
            _, feats, pos, sizes = self._prepare_backbone_features(one)
            per_frame.append((feats, pos, sizes))
        return per_frame

    def _memory_horizon(self) -> int:
        """How many past non-conditioning frames SAM 2 can still read (masks and pointers)."""
        return max(self.num_maskmem * self.memory_temporal_stride_for_eval, self.max_obj_ptrs_in_encoder)

    @torch.inference_mode()
    def propagate(
        self,
        hidden: torch.Tensor,
        num_frames: int,
        load_frames: Callable[[int, int], torch.Tensor] | list[Callable[[int, int], torch.Tensor]],
        chunk_size: int = 16,
        objects_per_video: list[int] | None = None,
    ) -> Iterator[tuple[int, torch.Tensor, dict]]:
        """Prompt frame 0 with `hidden` `[B, K, C]` and track forward over `num_frames`.

        Several videos of the same length can share one SAM 2 batch: pass one frame loader
        per video and how many of the `B` objects (in order) belong to each. Objects never
        interact; each reads only its own video's features and its own memory.
        `load_frames(start, end)` returns SAM-transformed frames `[end-start, 3, S, S]`.
        Yields `(frame_idx, low_res_logits [B, 1, S/4, S/4], info)` per frame, in order.
        """
        loaders = load_frames if isinstance(load_frames, list) else [load_frames]
        counts = objects_per_video or [hidden.shape[0]]
        assert len(loaders) == len(counts) and sum(counts) == hidden.shape[0]
        output_dict: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        horizon = self._memory_horizon()
        # frames per video per chunk, so one feature pass holds about `chunk_size` images
        per_video_chunk = max(1, chunk_size // len(loaders))
        for start in range(0, num_frames, per_video_chunk):
            end = min(num_frames, start + per_video_chunk)
            images = torch.cat([load(start, end) for load in loaders])
            chunk = self.frame_features(images)
            n = end - start
            for offset in range(n):
                frame_idx = start + offset
                per_video = [chunk[v * n + offset] for v in range(len(loaders))]
                feats, pos, sizes = self._batch_features(per_video, counts)
                is_cond = frame_idx == 0
                step = self._track_one(frame_idx, is_cond, feats, pos, sizes, output_dict, num_frames, hidden)
                key = "cond_frame_outputs" if is_cond else "non_cond_frame_outputs"
                output_dict[key][frame_idx] = step
                output_dict["non_cond_frame_outputs"].pop(frame_idx - horizon, None)
                yield frame_idx, step["pred_masks"], step
            del chunk

    @staticmethod
    def _batch_features(per_video: list[tuple], counts: list[int]) -> tuple[list, list, list]:
        """Each video's frame features repeated for its objects, concatenated on the batch axis."""
        levels = len(per_video[0][0])
        feats = [torch.cat([f[0][lvl].expand(-1, c, -1) for f, c in zip(per_video, counts)], dim=1)
                 for lvl in range(levels)]
        pos = [torch.cat([f[1][lvl].expand(-1, c, -1) for f, c in zip(per_video, counts)], dim=1)
               for lvl in range(levels)]
        return feats, pos, per_video[0][2]

    def _track_one(self, frame_idx, is_cond, feats, pos, sizes, output_dict, num_frames, hidden):
        prompt = self._hidden_prompt(hidden.to(self.dtype)) if is_cond else _null()
        with prompt:
            out = self.track_step(
                frame_idx=frame_idx,
                is_init_cond_frame=is_cond,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=None,
                mask_inputs=None,
                output_dict=output_dict,
                num_frames=num_frames,
                run_mem_encoder=True,
            )
        return {
            "pred_masks": out["pred_masks"],
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
            "maskmem_features": out["maskmem_features"],
            "maskmem_pos_enc": out["maskmem_pos_enc"],
        }


@contextmanager
def _null():
    yield


def masks_at_resolution(low_res_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Low-res SAM logits `[B, 1, s, s]` → boolean masks `[B, H, W]` at the original size.

    Upsampled in the logits' own dtype, as the authors' predictor does before `> 0`.
    """
    logits = F.interpolate(low_res_logits, size=(height, width), mode="bilinear", align_corners=False)
    return logits[:, 0] > 0
