"""The authors' bf16 precision policy on PyPI sam2 modules: bf16 weights, float32 islands.

The published numbers come from the authors' code with the whole model loaded as bf16 and
no autocast; their sam2 copy keeps a few computations in float32 on purpose (listed, with
file:line, in the conformance fixture's `bf16/dtypes.json`). PyPI sam2 is written for
float32 weights (or autocast): with bf16 weights it mixes dtypes at exactly those places.
The subclasses here reproduce the authors' islands; with float32 weights every cast below
is a no-op, so the float32 path is PyPI sam2 unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from sam2.modeling.backbones.hieradet import Hiera, MultiScaleAttention
from sam2.modeling.backbones.image_encoder import FpnNeck
from sam2.modeling.position_encoding import PositionEmbeddingRandom
from sam2.modeling.sam.prompt_encoder import PromptEncoder


class Fp32RandomFourierPE(PositionEmbeddingRandom):
    """Random-Fourier code in float32 whatever the stored matrix dtype, returned in that dtype.

    Authors' position_encoding.py:153/166/179: the (bf16) Gaussian matrix is upcast for
    the projection, the grid / coordinates are float32, the result is cast to the matrix dtype.
    """

    def _pe_encoding(self, coords: torch.Tensor) -> torch.Tensor:
        matrix = self.positional_encoding_gaussian_matrix
        with torch.autocast(coords.device.type, enabled=False):
            proj = (2 * coords.float() - 1) @ matrix.float()
            proj = 2 * math.pi * proj
            pe = torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)
        return pe.to(matrix.dtype)


class WindowChunkedAttention(MultiScaleAttention):
    """Hiera window attention over at most 64 windows per call, as the authors' hieradet.py
    runs it (to save memory). Results depend on the batch size at bf16 rounding level, so the
    split is kept to reproduce their numbers; in float32 it changes nothing measurable."""

    windows_per_call = 64

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.windows_per_call:
            return super().forward(x)
        return torch.cat([super(WindowChunkedAttention, self).forward(part)
                          for part in x.split(self.windows_per_call)])


class Fp32PosEmbedHiera(Hiera):
    """Hiera as the authors run it in bf16: absolute position embedding resized in float32
    (their hieradet.py:275) and window attention in chunks of 64 windows."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for block in self.blocks:
            a = block.attn
            block.attn = WindowChunkedAttention(a.dim, a.dim_out, a.num_heads, q_pool=a.q_pool)

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        resized = F.interpolate(self.pos_embed.float(), size=hw, mode="bicubic").to(self.pos_embed.dtype)
        window = self.pos_embed_window
        reps = [full // part for full, part in zip(resized.shape, window.shape)]
        return (resized + window.tile(reps)).permute(0, 2, 3, 1)


class Fp32UpsampleFpnNeck(FpnNeck):
    """FPN neck whose top-down upsampling runs in float32 and is cast back before the sum
    (authors' image_encoder.py:130), so every level stays in the weights' dtype."""

    def forward(self, xs: list[torch.Tensor]):
        last = len(self.convs) - 1
        out: list[torch.Tensor | None] = [None] * len(self.convs)
        pos: list[torch.Tensor | None] = [None] * len(self.convs)
        coarser = None
        for level in range(last, -1, -1):  # coarse to fine
            lateral = self.convs[last - level](xs[level])
            if coarser is not None and level in self.fpn_top_down_levels:
                up = F.interpolate(coarser.float(), scale_factor=2.0, mode=self.fpn_interp_model,
                                   align_corners=None if self.fpn_interp_model == "nearest" else False,
                                   antialias=False).to(coarser.dtype)
                fused = lateral + up
                coarser = fused / 2 if self.fuse_type == "avg" else fused
            else:
                coarser = lateral
            out[level] = coarser
            pos[level] = self.position_encoding(coarser).to(coarser.dtype)
        return out, pos


class CastInputLinear(torch.nn.Linear):
    """Linear that takes float32 inputs to its weights' dtype first.

    `obj_ptr_tpos_proj` receives a float32 sine code (sam2_utils.get_1d_sine_pe); the
    authors cast it to the projection's dtype (their sam2_base.py:617).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


class Fp32PEPromptEncoder(PromptEncoder):
    """SAM prompt encoder with float32 random-Fourier codes whose sparse output has the
    weights' dtype (authors' prompt_encoder.py builds the empty sparse tensor in that dtype;
    PyPI's is float32 and would promote every prompt token)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.pe_layer = Fp32RandomFourierPE(self.embed_dim // 2)

    def forward(self, points, boxes, masks):  # type: ignore[override]
        sparse, dense = super().forward(points, boxes, masks)
        return sparse.to(self.no_mask_embed.weight.dtype), dense
