"""PixelQA: questions about objects the user points at, answered through the Object Memory Bank.

Stage A (refer + pre-fill): the question with `[i] <|ref|>` for each point/box object and the
teacher-forced answer `[0] <|seg|> [1] <|seg|> …` give one mask track per object (SAM 2 on
the sampled frames); mask prompts go straight into the bank. Stage B (inject + answer): the
`<|mem|>` prefix of the bank, refer masks pooled onto the visual grid, greedy answer. Both
stages run batched over requests.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from .engine import Engine, Inferred, Prepared, pixel_budget
from .manifest import ManifestRow, PixelQARow
from .media import open_media
from .model.heads import RefPrompt
from .model.memory import ObjectMemoryBank
from .model.prompting import chat_text, make_request, video_inputs
from .output import rle_decode
from .validation import check_row, llm_frames

LOCALIZE = ". Please localize the relevant objects with IDs."
BEST_OPTION = "\nPlease only give the best option."
ANSWER_PREFIX = "The best option is ("


def question_text(row: PixelQARow) -> str:
    if not row.options:
        return row.question
    return row.question + "\nOptions:\n" + "\n".join(row.options)


def stage_a_text(row: PixelQARow) -> tuple[str, list[int]]:
    """`[i]` → `[i] <|ref|>` at the first mention of each point/box object; ids in token order."""
    text = question_text(row)
    referred = {o.id for o in row.objects if o.source != "mask"}
    order: list[int] = []

    def mark(m: re.Match) -> str:
        i = int(m.group(1))
        if i in referred and i not in order:
            order.append(i)
            return f"[{i}] <|ref|>"
        return m.group(0)

    return re.sub(r"\[(\d+)\]", mark, text) + LOCALIZE, order


@dataclass
class PixelQAPrepared(Prepared):
    llm_size: tuple[int, int] = (0, 0)
    ref_order: list[int] | None = None
    bank: ObjectMemoryBank | None = None
    sources: dict[int, str] | None = None
    stage_b_text: str = ""
    pixel_values: torch.Tensor | None = None
    grid: tuple[int, int, int] = (0, 0, 0)
    scores: dict[int, float] | None = None  # SAM 2 presence per referred object


class PixelQAEngine(Engine):
    task = "pixelqa"

    def prepare(self, mrow: ManifestRow) -> PixelQAPrepared:
        t0 = time.perf_counter()
        row: PixelQARow = mrow.row
        media = open_media(mrow.media_path, getattr(mrow.row, "frame_files", None))
        check_row(row, media)  # the checks `unipixel validate` runs
        sample = row.sample_frames or self.options.sample_frames
        idx = llm_frames(row, media, sample)
        frames, sam_frames = media.read_views(idx)
        pv, grid, size = video_inputs(self.processor, frames, *pixel_budget(row, sample, len(idx)))
        mentioned = [int(i) for i in re.findall(r"\[(\d+)\]", question_text(row))]
        bank = ObjectMemoryBank(len(idx), media.height, media.width, mention_order=list(dict.fromkeys(mentioned)))
        for o in row.objects:
            if o.mask is not None:
                bank.add_frame_mask(o.id, idx.index(o.frame), torch.from_numpy(rle_decode(o.rle)))
        text_a, order = stage_a_text(row)
        s = self.processor.sam2_image_size
        sx, sy = s / media.width, s / media.height
        by_id = {o.id: o for o in row.objects}
        refs = []
        for i in order:
            o = by_id[i]
            t = idx.index(o.frame)
            if o.point is not None:
                refs.append(RefPrompt(t, point=(o.point[0] * sx, o.point[1] * sy)))
            else:
                x0, y0, x1, y1 = o.box
                refs.append(RefPrompt(t, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy)))
        request = None
        if order:
            answer = " ".join(f"[{i}] <|seg|>" for i in order)
            request = make_request(self.processor, chat_text(self.processor, text_a, answer=answer), pv, grid,
                                   refs=refs, generate=False)
        stage_b = question_text(row) + (BEST_OPTION if row.options else "")
        p = PixelQAPrepared(mrow, media, idx, idx, frames, sam_frames, request, {"decode": time.perf_counter() - t0},
                            llm_size=size, ref_order=order, bank=bank,
                            sources={o.id: o.source for o in row.objects}, stage_b_text=stage_b,
                            pixel_values=pv, grid=grid)
        return p

    def _infer(self, batch: list[PixelQAPrepared]) -> list[Inferred]:
        t0 = time.perf_counter()
        staged = [p for p in batch if p.request is not None]
        sam_s = 0.0
        if staged:
            results = self.model.run_llm([p.request for p in staged])
            t1 = time.perf_counter()
            jobs = [self.mask_job(p, self.model.seg_tokens(res.seg_hidden[:len(p.ref_order)]))
                    for p, res in zip(staged, results)]
            self.model.decode_masks_batched(jobs, chunk_size=self.options.sam2_chunk)
            for p, job in zip(staged, jobs):
                for k, obj_id in enumerate(p.ref_order):
                    p.bank.prefill(obj_id, job.masks[k])
                p.scores = dict(zip(p.ref_order, job.scores))
            sam_s = time.perf_counter() - t1
        requests = []
        for p in batch:
            grids = p.bank.refer_masks(p.llm_size)
            prefix = p.bank.prefix(p.llm_size, p.media.is_image, grids)
            text = chat_text(self.processor, prefix + p.stage_b_text,
                             answer_prefix=ANSWER_PREFIX if p.mrow.row.options else "")
            requests.append(make_request(self.processor, text, p.pixel_values, p.grid, refer_masks=grids,
                                         max_new_tokens=p.mrow.row.max_new_tokens or self.options.max_new_tokens))
        results = self.model.run_llm(requests)
        llm_s = (time.perf_counter() - t0 - sam_s) / len(batch)
        out = []
        for p, res in zip(batch, results):
            p.timings.update(llm=llm_s, sam2=sam_s / len(batch))
            ids = sorted(p.bank.objects)
            masks = torch.stack([p.bank.lookup(i) for i in ids])
            scores = [(p.scores or {}).get(i, 1.0) for i in ids]  # mask prompts: given, so 1.0
            out.append(Inferred(p, res.generated_ids, masks, scores))
        return out

    def object_label(self, item: Inferred, k: int) -> tuple[int, str]:
        obj_id = sorted(item.prepared.bank.objects)[k]
        return obj_id, item.prepared.sources[obj_id]

    def prompt_of(self, mrow: ManifestRow) -> str:
        return mrow.row.question

    def answer_prefix(self, item: Inferred) -> str:
        return ANSWER_PREFIX if item.prepared.mrow.row.options else ""

    def extra_fields(self, item: Inferred) -> dict:
        if not item.prepared.mrow.row.options:
            return {}
        text = self.processor.tokenizer.decode(item.generated_ids, skip_special_tokens=True)
        letter = re.match(r"\s*([A-Z])", text)
        return {"choice": letter.group(1) if letter else None}
