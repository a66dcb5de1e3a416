"""Chat prompts and visual inputs in the exact form the published model was trained on."""

from __future__ import annotations

import numpy as np
import torch

from .heads import RefPrompt
from .loading import Processor
from .preprocess import llm_frame_size, resize_for_llm
from .unipixel import LLMRequest

VIDEO_PAD = "<|video_pad|>"


def chat_text(processor: Processor, user_text: str, answer: str | None = None,
              answer_prefix: str = "") -> str:
    """Qwen2.5-VL chat template with one video item before the user's text."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": user_text}]}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
        return processor.tokenizer.apply_chat_template(messages, tokenize=False)
    text = processor.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text + answer_prefix


def video_inputs(processor: Processor, frames: np.ndarray, min_pixels: int,
                 max_pixels: int) -> tuple[torch.Tensor, tuple[int, int, int], tuple[int, int]]:
    """Sampled uint8 frames `[T, H, W, 3]` → (pixel_values_videos, grid_thw, resized (h, w))."""
    size = llm_frame_size(frames.shape[1], frames.shape[2], min_pixels, max_pixels)
    video = resize_for_llm(frames, size)
    out = processor.video_processor(videos=[video], do_resize=False, do_sample_frames=False, cap_pixels_per_frame=False,
                                    return_tensors="pt")
    grid = tuple(int(x) for x in out["video_grid_thw"][0])
    return out["pixel_values_videos"], grid, size


def make_request(processor: Processor, text: str, pixel_values: torch.Tensor,
                 grid_thw: tuple[int, int, int], refs: list[RefPrompt] | None = None,
                 refer_masks: torch.Tensor | None = None, generate: bool = True,
                 max_new_tokens: int = 512, second_per_grid: float = 1.0) -> LLMRequest:
    n_video = grid_thw[0] * grid_thw[1] * grid_thw[2] // 4
    text = text.replace(VIDEO_PAD, VIDEO_PAD * n_video, 1)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return LLMRequest(input_ids=ids, pixel_values=pixel_values, grid_thw=grid_thw,
                      refs=refs or [], refer_masks=refer_masks, generate=generate,
                      max_new_tokens=max_new_tokens, second_per_grid=second_per_grid)
