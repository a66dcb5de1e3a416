"""Inputs as UniPixel was trained on them: frame sampling, Qwen smart_resize, SAM 2 transform."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

IMAGE_FACTOR = 28
MIN_PIXELS = 128 * 28 * 28
PIXELS_PER_FRAME_BUDGET = 256 * 28 * 28
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)


def uniform_indices(num_frames: int, sample_frames: int) -> list[int]:
    """Uniformly sample `sample_frames` of `num_frames` (numpy round-half-even, as the authors)."""
    if num_frames <= sample_frames or sample_frames <= 1:
        return list(range(num_frames)) if num_frames <= sample_frames else [0]
    step = (num_frames - 1) / (sample_frames - 1)
    return [int(i) for i in np.arange(0, num_frames, step)[:sample_frames].round()]


def force_prompt_frames(indices: list[int], prompt_frames: list[int]) -> list[int]:
    """Each prompt frame replaces the nearest sampled index (PixelQA sampling, as the authors
    do for their single prompt frame). A sampled index that is itself a prompt frame is never
    replaced, so several prompt frames near one sample all stay; with more prompt frames than
    samples the extra ones are added."""
    out = list(indices)
    kept = {f for f in prompt_frames if f in out}
    for frame in prompt_frames:
        if frame in kept:
            continue
        free = [k for k, i in enumerate(out) if i not in kept]
        if free:
            out[min(free, key=lambda k: abs(out[k] - frame))] = frame
        else:
            out.append(frame)
        kept.add(frame)
    return sorted(set(out))


def max_pixels_for(sample_frames: int, num_frames: int) -> int:
    return PIXELS_PER_FRAME_BUDGET * max(1, int(sample_frames / max(1, num_frames)))


def llm_frame_size(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    return smart_resize(height, width, IMAGE_FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)


def resize_for_llm(frames: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 `[T, H, W, 3]` → uint8 `[T, 3, h, w]`, resized with PIL bicubic like qwen-vl-utils."""
    h, w = size
    out = [np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC)) for f in frames]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def sam2_transform(frames: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 `[T, H, W, 3]` → float `[T, 3, S, S]`: /255, bilinear antialiased resize, ImageNet norm."""
    x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
    x = TF.resize(x, [image_size, image_size], antialias=True)
    return TF.normalize(x, SAM2_MEAN, SAM2_STD)


def refer_mask_grid(masks: torch.Tensor, llm_size: tuple[int, int]) -> torch.Tensor:
    """Per-frame object masks `[T, H, W]` (original resolution) → `[ceil(T/2), h/28, w/28]` bool.

    Pad T to even by repeating the last frame, max over frame pairs, resize to the LLM
    frame size (bilinear, antialias) and max-pool onto the merged-token grid; an object
    absent from every frame becomes all-ones (as the authors do).
    """
    m = masks.float()
    if m.shape[0] % 2:
        m = torch.cat([m, m[-1:]], dim=0)
    m = m.view(-1, 2, *m.shape[1:]).amax(dim=1)
    m = TF.resize(m[:, None], list(llm_size), antialias=True)
    m = torch.nn.functional.max_pool2d(m, IMAGE_FACTOR)[:, 0] > 0
    if not m.any():
        m = torch.ones_like(m)
    return m
