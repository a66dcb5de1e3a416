"""Object Memory Bank: object id → per-frame masks, and the `<|mem|>` prompt it yields."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .preprocess import refer_mask_grid


@dataclass
class ObjectMemoryBank:
    """Masks of each object over the sampled frames `[T, H, W]` (original resolution)."""

    num_frames: int
    height: int
    width: int
    objects: dict[int, torch.Tensor] = field(default_factory=dict)
    # the memory prompt lists objects in the order the question first mentions them, as the
    # authors' PixelQA script builds it; ids not in `mention_order` follow, by id
    mention_order: list[int] = field(default_factory=list)

    def prompt_order(self) -> list[int]:
        rank = {obj_id: i for i, obj_id in enumerate(self.mention_order)}
        return sorted(self.objects, key=lambda i: (rank.get(i, len(rank)), i))

    def prefill(self, object_id: int, masks: torch.Tensor) -> None:
        """Store a whole track `[T, H, W]` (from refer → segment)."""
        assert masks.shape == (self.num_frames, self.height, self.width), masks.shape
        self.objects[object_id] = masks.bool().cpu()

    def add_frame_mask(self, object_id: int, frame: int, mask: torch.Tensor) -> None:
        """Store a user mask on one sampled frame (mask prompts go straight into memory)."""
        track = self.objects.setdefault(
            object_id, torch.zeros(self.num_frames, self.height, self.width, dtype=torch.bool))
        track[frame] = mask.bool()

    def lookup(self, object_id: int) -> torch.Tensor:
        return self.objects[object_id]

    def refer_masks(self, llm_size: tuple[int, int]) -> torch.Tensor:
        """`[n_obj, grid_t, h/28, w/28]` masks on the LLM's merged visual grid, in `prompt_order`."""
        return torch.stack([refer_mask_grid(self.objects[i], llm_size) for i in self.prompt_order()])

    def prefix(self, llm_size: tuple[int, int], is_image: bool, grids: torch.Tensor | None = None) -> str:
        """The training-data form of the memory prompt (SPEC §2), one `<|mem|>` per present pair.

        `grids` are this bank's `refer_masks(llm_size)` when the caller already has them.
        """
        grids = self.refer_masks(llm_size) if grids is None else grids
        if is_image:
            lines = [f"[{i}]: <|mem|>" for i in self.prompt_order()]
            return "Here is an image with the following highlighted regions:\n" + "\n".join(lines) + "\n"
        lines = []
        for obj_id, grid in zip(self.prompt_order(), grids):
            pairs = [t for t in range(grid.shape[0]) if grid[t].any()]
            lines.append(f"[{obj_id}]: " + " ".join(f"<{2 * t + 1}>-<{2 * t + 2}> <|mem|>" for t in pairs))
        return (f"Here is a video with {self.num_frames} frames denoted as <1> to <{self.num_frames}>. "
                "The highlighted regions are as follows:\n" + "\n".join(lines) + "\n")
