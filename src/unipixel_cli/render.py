"""Results people can look at: mask overlays (mp4/gif/png), contact sheets and an HTML index.

Reads the results dataset, decodes each request's frames from its media, draws every object's
masks in a distinct colour with its id, PixelQA's points and boxes (from the run's manifest)
on their frames, and captions prompt and answer. `index.html` lists the requests in manifest
order with filters and works from the file system, with no server and no network.
"""

from __future__ import annotations

import html
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .export import ExportError, load_results, refuse_results_dataset
from .media import MediaError, open_media
from .output import rle_decode, run_metadata

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
ALPHA = 0.5


def colour(object_id: int) -> tuple[int, int, int]:
    return PALETTE[object_id % len(PALETTE)]


def overlay(frame: np.ndarray, masks: list[tuple[int, np.ndarray]]) -> Image.Image:
    """Blend each `(object_id, bool mask)` onto an RGB frame and label it at its centroid."""
    out = frame.astype(np.float32)
    for object_id, m in masks:
        if m.shape != frame.shape[:2] or not m.any():
            continue
        out[m] = (1 - ALPHA) * out[m] + ALPHA * np.array(colour(object_id), np.float32)
    img = Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for object_id, m in masks:
        if m.shape == frame.shape[:2] and m.any():
            ys, xs = np.nonzero(m)
            x, y = int(xs.mean()), int(ys.mean())
            draw.text((x, y), f"[{object_id}]", fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0),
                      anchor="mm", font=ImageFont.load_default())
    return img


def caption(img: Image.Image, lines: list[str]) -> Image.Image:
    font = ImageFont.load_default()
    wrapped = [w for line in lines for w in (textwrap.wrap(line, max(20, img.width // 7)) or [""])][:6]
    band = 14 * len(wrapped) + 6
    out = Image.new("RGB", (img.width, img.height + band), (20, 20, 20))
    out.paste(img, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(wrapped):
        draw.text((4, img.height + 3 + 14 * i), line, fill=(235, 235, 235), font=font)
    return out


def contact_sheet(frames: list[Image.Image], count: int = 6) -> Image.Image:
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
    cols = min(3, len(picks))
    rows = (len(picks) + cols - 1) // cols
    w, h = picks[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), (0, 0, 0))
    for i, img in enumerate(picks):
        sheet.paste(img, ((i % cols) * w, (i // cols) * h))
    return sheet


def save_video(frames: list[Image.Image], path: Path, fmt: str, fps: int = 4) -> Path:
    if fmt == "gif" or len(frames) == 1 and fmt != "mp4":
        path = path.with_suffix(".gif" if len(frames) > 1 else ".png")
        if len(frames) > 1:
            frames[0].save(path, save_all=True, append_images=frames[1:], duration=1000 // fps, loop=0)
        else:
            frames[0].save(path)
        return path
    import av

    path = path.with_suffix(".mp4")
    even = [f.crop((0, 0, f.width - f.width % 2, f.height - f.height % 2)) for f in frames]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = even[0].width, even[0].height, "yuv420p"
        for f in even:
            for packet in stream.encode(av.VideoFrame.from_image(f)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@dataclass(frozen=True)
class VisualPrompt:
    """A PixelQA point or box as the manifest gave it (original pixels, source frame)."""

    object_id: int
    frame: int
    point: tuple[float, float] | None = None
    box: tuple[float, float, float, float] | None = None


def visual_prompts(manifest: Path | None) -> dict[int, tuple[str, list[VisualPrompt]]]:
    """Manifest line → (request id, its points and boxes); {} when the manifest is unreadable.

    Results hold each object's `source` but not its coordinates, so the report reads them from
    the manifest the run recorded; a line whose id no longer matches the result is ignored."""
    if manifest is None or not Path(manifest).is_file():
        return {}
    out: dict[int, tuple[str, list[VisualPrompt]]] = {}
    for n, text in enumerate(Path(manifest).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            data = json.loads(text)
            row_id = str(data["id"]) if data.get("id") is not None else str(n)
            marks = [VisualPrompt(int(o["id"]), int(o.get("frame", 0)),
                                  tuple(o["point"]) if o.get("point") is not None else None,
                                  tuple(o["box"]) if o.get("box") is not None else None)
                     for o in data.get("objects") or [] if o.get("point") is not None or o.get("box") is not None]
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a bad line is an error row already; nothing to draw
        if marks:
            out[n] = (row_id, marks)
    return out


def draw_prompts(img: Image.Image, marks: list[VisualPrompt]) -> Image.Image:
    """Points as ringed dots, boxes as outlines, each in its object's colour with its id."""
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    r = max(4, min(img.size) // 30)
    for m in marks:
        c = colour(m.object_id)
        if m.point is not None:
            x, y = m.point
            draw.ellipse([x - r, y - r, x + r, y + r], fill=c, outline=(255, 255, 255), width=max(1, r // 3))
            anchor = (x + r + 2, y - r)
        else:
            x0, y0, x1, y1 = m.box  # type: ignore[misc]
            draw.rectangle([x0, y0, x1, y1], outline=c, width=max(2, r // 2))
            anchor = (x0 + 2, y0 + 2)
        draw.text(anchor, f"[{m.object_id}]", fill=c, stroke_width=1, stroke_fill=(0, 0, 0), font=font)
    return img


@dataclass
class Card:
    id: str
    status: str
    prompt: str
    answer: str
    error: str
    line: int | None = None
    task: str = ""
    choice: str = ""
    scores: list[tuple[int, float]] = field(default_factory=list)  # (object id, score) per object
    frames: list[int] = field(default_factory=list)
    thumb: str | None = None
    media: str | None = None

    @property
    def category(self) -> str:
        """Filter group: ok (with masks), empty (ok, no objects), error."""
        if self.status != "ok":
            return "error"
        return "ok" if self.scores else "empty"


FILTERS = [("all", "all"), ("ok", "with objects"), ("empty", "no objects"), ("error", "errors")]


def _text(row: dict, key: str) -> str:
    v = row.get(key)
    return v if isinstance(v, str) else ""


def card_of(row: dict) -> Card:
    objs = row.get("objects")
    objects = [] if objs is None else list(objs)
    frames = row.get("frame_indices")
    line = row.get("line")
    return Card(str(row["id"]), _text(row, "status") or "?", _text(row, "prompt"), _text(row, "answer"),
                _text(row, "error"), line=int(line) if line is not None and line == line else None,
                task=_text(row, "task"), choice=_text(row, "choice"),
                scores=[(int(o["object_id"]), float(o["score"])) for o in objects],
                frames=[] if frames is None else [int(f) for f in frames])


@dataclass
class Renderer:
    out_dir: Path
    fmt: str = "mp4"  # mp4 | gif | png
    manifest: Path | None = None  # for PixelQA points and boxes
    cards: list[Card] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        refuse_results_dataset(self.out_dir, "report")
        (self.out_dir / "media").mkdir(parents=True, exist_ok=True)
        self._prompts = visual_prompts(self.manifest)

    def prompts_for(self, row: dict) -> list[VisualPrompt]:
        line = row.get("line")
        found = self._prompts.get(int(line)) if line is not None and line == line else None
        return found[1] if found and found[0] == str(row["id"]) else []

    def render_row(self, row: dict) -> Card:
        card = card_of(row)
        self.cards.append(card)
        media_path = _text(row, "media_path")
        if card.status != "ok" or not media_path:
            return card
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in card.id)
        try:
            media = open_media(media_path)
            frames = media.read(card.frames)
        except MediaError as e:
            card.error = f"cannot render: {e}"
            return card
        objs = row.get("objects")
        objects = [] if objs is None else list(objs)
        masks_per_frame = [[(int(o["object_id"]), rle_decode(o["masks"][t])) for o in objects
                            if t < len(o["masks"])] for t in range(len(card.frames))]
        prompts = self.prompts_for(row)
        text = [f"{card.id}: {card.prompt}", f"A: {card.answer}"]
        rendered = []
        for t, (f, m) in enumerate(zip(frames, masks_per_frame)):
            img = overlay(f, m)
            marks = [p for p in prompts if p.frame == card.frames[t] or media.is_image]
            rendered.append(caption(draw_prompts(img, marks) if marks else img, text))
        sheet = contact_sheet(rendered)
        sheet.save(self.out_dir / "media" / f"{safe}_sheet.png")
        card.thumb = f"media/{safe}_sheet.png"
        if media.is_image or self.fmt == "png":
            path = self.out_dir / "media" / f"{safe}.png"
            rendered[0].save(path)
        else:
            path = save_video(rendered, self.out_dir / "media" / safe, self.fmt)
        card.media = f"media/{path.name}"
        return card

    def write_index(self) -> Path:
        # manifest order, whatever order rows finished in (rows without a line go last)
        cards = sorted(self.cards, key=lambda c: (c.line is None, c.line or 0))
        counts = {key: len(cards) if key == "all" else sum(c.category == key for c in cards) for key, _ in FILTERS}
        buttons = "".join(
            f'<button data-filter="{key}"{" class=active" if key == "all" else ""}>{label} '
            f'<span class="count">({counts[key]})</span></button>' for key, label in FILTERS)
        page = INDEX.replace("{{buttons}}", buttons).replace("{{cards}}", "\n".join(_card_html(c) for c in cards))
        path = self.out_dir / "index.html"
        path.write_text(page, encoding="utf-8")
        return path


def frames_text(frames: list[int], show: int = 8) -> str:
    """`frames 0, 2, 4` or, for long tracks, `frames 0, 2, 4, … 30, 31 (16)`."""
    if not frames:
        return "no frames"
    if len(frames) <= show:
        return "frame " + str(frames[0]) if len(frames) == 1 else "frames " + ", ".join(map(str, frames))
    head, tail = frames[: show - 2], frames[-2:]
    return f"frames {', '.join(map(str, head))}, … {', '.join(map(str, tail))} ({len(frames)})"


def _card_html(c: Card) -> str:
    e = html.escape
    thumb = f'<a href="{e(c.media or c.thumb)}"><img src="{e(c.thumb)}" alt="{e(c.id)}"></a>' if c.thumb else ""
    err = f'<p class="error">{e(c.error)}</p>' if c.error else ""
    link = f'<a class="open" href="{e(c.media)}">open overlay</a>' if c.media else ""
    n = len(c.scores)
    facts = [f"{n} object{'s' if n != 1 else ''}"] if c.status == "ok" else []
    if c.scores:
        facts.append("score " + ", ".join(f"[{i}] {s:.2f}" for i, s in c.scores))
    if c.status == "ok":
        facts.append(frames_text(c.frames))
    if c.choice:
        facts.append(f"choice {c.choice}")
    meta = f'<p class="meta">{e(" · ".join(facts))}</p>' if facts else ""
    line = f'<span class="line">line {c.line}</span>' if c.line is not None else ""
    answer = (f'<details class="answer"><summary>{e(c.answer[:160].rstrip())}…</summary>'
              f'<div class="full">{e(c.answer)}</div></details>' if len(c.answer) > 160 or c.answer.count("\n") > 3
              else f'<p class="answer">{e(c.answer)}</p>')
    return (f'<article class="card {e(c.status)}" data-status="{e(c.status)}" data-category="{c.category}">'
            f'<h2>{e(c.id)} <span class="badge">{e(c.status)}</span>{line}</h2>{thumb}'
            f'<p class="prompt">{e(c.prompt)}</p>{meta}{answer}{err}{link}</article>')


INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unipixel results</title>
<style>
body{font-family:system-ui,sans-serif;margin:1rem;background:#fafafa}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem;align-items:start}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.6rem;min-width:0;overflow-wrap:anywhere}
.card h2{font-size:1.05rem;margin:.2rem 0 .4rem}
.card img{max-width:100%}
.card.error{border-color:#d33}
.badge{font-size:.7rem;padding:.1rem .4rem;border-radius:4px;background:#2a2;color:#fff;vertical-align:middle}
.card.error .badge{background:#d33}
.line{font-size:.75rem;color:#777;font-weight:400;margin-left:.5rem}
.meta{font-size:.85rem;color:#333;background:#f3f3f3;border-radius:4px;padding:.2rem .4rem}
p.error{color:#b00}
.prompt{font-weight:600}
.answer{white-space:pre-wrap;max-height:12em;overflow:auto}
details.answer summary{cursor:pointer;white-space:normal}
details.answer .full{margin-top:.3rem}
button{margin-right:.4rem}
button.active{font-weight:700}
</style></head>
<body>
<h1>unipixel results</h1>
<nav id="filters">{{buttons}}</nav>
<section class="cards">
{{cards}}
</section>
<script>
document.querySelectorAll('#filters button').forEach(function (b) {
  b.addEventListener('click', function () {
    var f = b.dataset.filter;
    document.querySelectorAll('#filters button').forEach(function (x) { x.classList.toggle('active', x === b); });
    document.querySelectorAll('.card').forEach(function (c) {
      c.style.display = (f === 'all' || c.dataset.category === f) ? '' : 'none';
    });
  });
});
</script>
</body></html>
"""


def render_results(results_dir: Path, out_dir: Path, ids: list[str] | None = None, fmt: str = "mp4",
                   limit: int | None = None) -> Path:
    """Render the current rows of a results dataset (manifest order) into `out_dir`.

    Raises `ExportError` for a missing or empty dataset, an `out_dir` that is a results dataset,
    or ids that are not in the results."""
    refuse_results_dataset(Path(out_dir), "report")
    rows = load_results(results_dir).to_dict("records")
    if ids:
        known = {str(r["id"]) for r in rows}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ExportError(f"--ids: not in {results_dir}: {', '.join(unknown)}")
        wanted = set(ids)
        rows = [r for r in rows if str(r["id"]) in wanted]
    rows = rows[:limit] if limit else rows
    manifest = run_metadata(results_dir).get("manifest")
    renderer = Renderer(out_dir, fmt, manifest=Path(manifest) if manifest else None)
    for row in rows:
        renderer.render_row(row)
    return renderer.write_index()
