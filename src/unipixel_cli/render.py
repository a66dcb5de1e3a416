"""Results people can look at: mask overlays (mp4/gif/png), contact sheets and an HTML index.

Reads the results dataset, decodes each request's frames from its media, draws every object's
masks in a distinct colour with its id, and captions prompt and answer. `index.html` works
from the file system, with no server and no network.
"""

from __future__ import annotations

import html
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .media import MediaError, open_media
from .output import read_results, rle_decode

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


@dataclass
class Card:
    id: str
    status: str
    prompt: str
    answer: str
    error: str
    thumb: str | None = None
    media: str | None = None


@dataclass
class Renderer:
    out_dir: Path
    fmt: str = "mp4"  # mp4 | gif | png
    cards: list[Card] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        (self.out_dir / "media").mkdir(parents=True, exist_ok=True)

    def render_row(self, row: dict) -> Card:
        text = {k: v if isinstance(v := row.get(k), str) else "" for k in ("status", "prompt", "answer", "error",
                                                                           "media_path")}
        card = Card(str(row["id"]), text["status"] or "?", text["prompt"], text["answer"], text["error"])
        self.cards.append(card)
        if card.status != "ok" or not text["media_path"]:
            return card
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in card.id)
        try:
            media = open_media(text["media_path"])
            indices = list(row["frame_indices"])
            frames = media.read(indices)
        except MediaError as e:
            card.error = f"cannot render: {e}"
            return card
        objs = row.get("objects")
        objects = [] if objs is None else list(objs)
        masks_per_frame = [[(int(o["object_id"]), rle_decode(o["masks"][t])) for o in objects
                            if t < len(o["masks"])] for t in range(len(indices))]
        text = [f"{card.id}: {card.prompt}", f"A: {card.answer}"]
        rendered = [caption(overlay(f, m), text) for f, m in zip(frames, masks_per_frame)]
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
        cards = "\n".join(_card_html(c) for c in self.cards)
        counts = {s: sum(c.status == s for c in self.cards) for s in ("ok", "error")}
        page = INDEX.replace("{{cards}}", cards).replace("{{counts}}", html.escape(json.dumps(counts)))
        path = self.out_dir / "index.html"
        path.write_text(page, encoding="utf-8")
        return path


def _card_html(c: Card) -> str:
    e = html.escape
    thumb = f'<a href="{e(c.media or c.thumb)}"><img src="{e(c.thumb)}" alt="{e(c.id)}"></a>' if c.thumb else ""
    err = f'<p class="error">{e(c.error)}</p>' if c.error else ""
    link = f'<a class="open" href="{e(c.media)}">open overlay</a>' if c.media else ""
    return (f'<article class="card {e(c.status)}" data-status="{e(c.status)}"><h2>{e(c.id)} '
            f'<span class="badge">{e(c.status)}</span></h2>{thumb}<p class="prompt">{e(c.prompt)}</p>'
            f'<p class="answer">{e(c.answer)}</p>{err}{link}</article>')


INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unipixel results</title>
<style>
body{font-family:system-ui,sans-serif;margin:1rem;background:#fafafa}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:8px;padding:.6rem}
.card img{max-width:100%}
.card.error{border-color:#d33}
.badge{font-size:.7rem;padding:.1rem .4rem;border-radius:4px;background:#2a2;color:#fff}
.card.error .badge{background:#d33}
.error{color:#b00}
.prompt{font-weight:600}
button{margin-right:.4rem}
button.active{font-weight:700}
</style></head>
<body>
<h1>unipixel results</h1>
<nav id="filters" data-counts="{{counts}}">
<button data-filter="all" class="active">all</button><button data-filter="ok">ok</button>
<button data-filter="error">error</button></nav>
<section class="cards">
{{cards}}
</section>
<script>
document.querySelectorAll('#filters button').forEach(function (b) {
  b.addEventListener('click', function () {
    var f = b.dataset.filter;
    document.querySelectorAll('#filters button').forEach(function (x) { x.classList.toggle('active', x === b); });
    document.querySelectorAll('.card').forEach(function (c) {
      c.style.display = (f === 'all' || c.dataset.status === f) ? '' : 'none';
    });
  });
});
</script>
</body></html>
"""


def render_results(results_dir: Path, out_dir: Path, ids: list[str] | None = None, fmt: str = "mp4",
                   limit: int | None = None) -> Path:
    df = read_results(results_dir)
    rows = df.to_dict("records")
    if ids:
        wanted = set(ids)
        rows = [r for r in rows if str(r["id"]) in wanted]
    rows = rows[:limit] if limit else rows
    renderer = Renderer(out_dir, fmt)
    for row in rows:
        renderer.render_row(row)
    return renderer.write_index()
