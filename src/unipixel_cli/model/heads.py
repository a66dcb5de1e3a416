"""UniPixel's heads between the LLM and SAM 2 (refer, memory, segment)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLRMSNorm

from .sam2_precision import Fp32PEPromptEncoder


class TemporalPositionEncoding(nn.Module):
    """Random-Fourier code of a (normalised) frame position; `tem_pe` in the checkpoint."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(1, num_pos_feats))

    def forward_with_coords(self, frame_idx: torch.Tensor, seq_length: int) -> torch.Tensor:
        """`frame_idx` `[N]` → `[N, 2·num_pos_feats]`, computed in float32 and returned in the
        matrix's dtype (authors' position_encoding.py:237 and qwen2_5_vl.py:223)."""
        matrix = self.positional_encoding_gaussian_matrix
        with torch.autocast(frame_idx.device.type, enabled=False):
            coords = frame_idx.float()[:, None] / (seq_length - 1)
            coords = 2 * coords - 1
            coords = coords @ matrix.float()
            coords = 2 * math.pi * coords
            pe = torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)
        return pe.to(matrix.dtype)


@dataclass
class RefPrompt:
    """A point `[x, y]` or box `[x0, y0, x1, y1]` in SAM-space pixels on sampled frame `frame`."""

    frame: int
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None


class UniPixelHeads(nn.Module):
    """seg_head, ref_encoder/ref_proj_*, tem_*, msk_proj — named as in the published weights."""

    def __init__(self, llm_dim: int, sam_dim: int, merger_dim: int, sam_image_size: int,
                 sam_embedding_size: int, hidden_tokens: int) -> None:
        super().__init__()
        self.hidden_tokens = hidden_tokens
        self.sam_image_size = sam_image_size
        self.seg_head = nn.Sequential(
            Qwen2_5_VLRMSNorm(llm_dim), nn.Linear(llm_dim, llm_dim), nn.GELU(),
            nn.Linear(llm_dim, sam_dim * hidden_tokens))
        self.ref_encoder = Fp32PEPromptEncoder(
            embed_dim=sam_dim,
            image_embedding_size=(sam_embedding_size, sam_embedding_size),
            input_image_size=(sam_image_size, sam_image_size),
            mask_in_chans=16)
        self.ref_proj_single = nn.Linear(sam_dim * 2, sam_dim * 3)
        self.ref_proj_double = nn.Linear(sam_dim * 3, sam_dim * 3)
        self.ref_proj = nn.Sequential(nn.GELU(), nn.Linear(sam_dim * 6, llm_dim))
        self.tem_pe = TemporalPositionEncoding(sam_dim // 2)
        self.tem_emb = nn.Embedding(1, sam_dim)
        self.tem_proj = nn.Linear(sam_dim, sam_dim * 3)
        self.msk_proj = nn.Sequential(
            nn.Linear(merger_dim, merger_dim), nn.GELU(), nn.Linear(merger_dim, llm_dim))

    # -- segment -------------------------------------------------------------------------
    def seg_tokens(self, pre_norm_hidden: torch.Tensor) -> torch.Tensor:
        """Pre-norm LLM states `[N, D]` at `<|seg|>`-predicting positions → `[N, K, C]`."""
        out = self.seg_head(pre_norm_hidden.to(self.seg_head[1].weight.dtype))
        return out.reshape(out.shape[0], self.hidden_tokens, out.shape[-1] // self.hidden_tokens)

    # -- refer ---------------------------------------------------------------------------
    def encode_refs(self, prompts: list[RefPrompt], grid_t: int) -> torch.Tensor:
        """Points/boxes on sampled frames → one `<|ref|>` embedding each, `[N, D]`."""
        device = self.tem_emb.weight.device
        ref = []
        for p in prompts:
            if p.box is not None:
                coords = torch.tensor([[p.box[:2], p.box[2:]]], dtype=torch.float32, device=device)
                labels = torch.tensor([[2, 3]], dtype=torch.int32, device=device)
            else:
                coords = torch.tensor([[p.point]], dtype=torch.float32, device=device)
                labels = torch.tensor([[1]], dtype=torch.int32, device=device)
            # boxes go in as two labelled corner points, so the encoder adds one padding point
            tokens, _ = self.ref_encoder((coords, labels), None, None)
            proj = self.ref_proj_double if p.box is not None else self.ref_proj_single
            ref.append(proj(tokens.flatten(1).to(proj.weight.dtype)))
        ref = torch.cat(ref)
        frames = torch.tensor([p.frame for p in prompts], device=device)
        # temporal code over the sampled-frame count rounded up to even (temporal merge 2)
        tem = self.tem_pe.forward_with_coords(frames, grid_t * 2).to(self.tem_proj.weight.dtype)
        tem = self.tem_proj(tem + self.tem_emb.weight[0])
        return self.ref_proj(torch.cat([ref, tem], dim=1))

    # -- memory --------------------------------------------------------------------------
    def inject_memory(self, merger_in: torch.Tensor, refer_masks: torch.Tensor) -> torch.Tensor:
        """Masked means of one video's merger-MLP inputs → `<|mem|>` embeddings.

        `merger_in` `[grid_t·h·w/4, merger_dim]` is in Qwen2.5-VL window order while
        `refer_masks` `[n_obj, grid_t, h/2, w/2]` is raster order: the published model was
        trained with exactly this pairing, so it is kept. One token per (object, temporal
        group where the object is present), objects in order.
        """
        n_obj, grid_t = refer_masks.shape[:2]
        step = merger_in.shape[0] // grid_t
        feats = []
        for obj in range(n_obj):
            for t in range(grid_t):
                sel = refer_masks[obj, t].flatten().to(merger_in.device)
                if sel.any():
                    feats.append(merger_in[t * step:(t + 1) * step][sel].mean(dim=0))
        if not feats:
            return merger_in.new_zeros(0, self.msk_proj[2].out_features)
        return self.msk_proj(torch.stack(feats).to(self.msk_proj[0].weight.dtype))
