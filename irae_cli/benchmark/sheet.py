"""The comparison sheet: one PNG a person can look at instead of reading a table.

Layout (deterministic, so a reader can crop it by arithmetic)::

    columns: degraded | model 1 | ... | model M | clean
    rows:    one per (image, level), in the order given

Every tile is a ``crop`` x ``crop`` pixel-exact cut-out (no resampling) with a
``LABEL_H`` px label strip above it, two lines in Pillow's default font:
the column's name (the degraded tile adds the level), then the PSNR of the
*whole* image (the figure the table reports, not the crop's) -- the clean
tile's label carries the image name instead.  Tiles are ``PAD`` px apart and from the border, so::

    width  = cols * crop + (cols + 1) * PAD
    height = rows * (crop + LABEL_H) + (rows + 1) * PAD

Images smaller than ``crop`` are centred on the background.  Gray images are
shown as gray RGB.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..pixels import to_u8

__all__ = ["LABEL_H", "PAD", "SheetRow", "crop_box", "render_sheet", "sheet_size"]

LABEL_H = 26
PAD = 4
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


@dataclass
class SheetRow:
    """One row: the degraded input, each model's output and the clean image, all (C,H,W) in [0, 1]."""

    title: str  # image name, shown on the clean tile
    degraded: torch.Tensor
    clean: torch.Tensor
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)  # column name -> restored image
    labels: dict[str, str] = field(default_factory=dict)  # column name (or "degraded") -> second label line
    box: tuple[int, int] | None = None  # (top, left) of the crop; None = centre
    level: str = ""  # degradation level, shown on the degraded tile


def sheet_size(rows: int, columns: int, crop: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet with ``columns`` tiles per row (degraded + models + clean)."""
    return columns * crop + (columns + 1) * PAD, rows * (crop + LABEL_H) + (rows + 1) * PAD


def crop_box(error: torch.Tensor, crop: int, mode: str = "worst") -> tuple[int, int]:
    """(top, left) of a ``crop``-sized window: the centre, or where ``error`` ((H,W), >= 0) is largest.

    "worst" slides the window in steps of crop/4 and takes the one with the
    largest mean error (first one on ties), so a reader sees where a model
    struggles -- for inpainting, that is the hole.
    """
    h, w = error.shape[-2:]
    ch, cw = min(crop, h), min(crop, w)
    if mode == "centre" or mode == "center" or (ch == h and cw == w):
        return (h - ch) // 2, (w - cw) // 2
    if mode != "worst":
        raise ValueError(f"crop mode must be 'worst' or 'centre', not {mode!r}")
    stride = max(1, crop // 4)
    e = error.reshape(1, 1, h, w).to(torch.float64)
    pooled = F.avg_pool2d(e, (ch, cw), stride=stride)[0, 0]
    tops = list(range(0, h - ch + 1, stride))
    lefts = list(range(0, w - cw + 1, stride))
    flat = int(torch.argmax(pooled).item())
    return tops[flat // len(lefts)], lefts[flat % len(lefts)]


def _tile(x: torch.Tensor, box: tuple[int, int], crop: int) -> Image.Image:
    top, left = box
    part = x[..., top:top + crop, left:left + crop].detach().float().clamp(0, 1).cpu()
    if part.shape[0] == 1:
        part = part.expand(3, -1, -1)
    arr = to_u8(part)
    tile = Image.new("RGB", (crop, crop), BACKGROUND)
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    tile.paste(img, ((crop - img.width) // 2, (crop - img.height) // 2))
    return tile


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def render_sheet(rows: list[SheetRow], columns: list[str], *, crop: int = 128) -> Image.Image:
    """Draw the sheet for ``rows``; ``columns`` names the model columns (in order) between degraded and clean."""
    if not rows:
        raise ValueError("a comparison sheet needs at least one image")
    if crop < 16:
        raise ValueError(f"sheet crop must be at least 16 px, not {crop}")
    names = ["degraded", *columns, "clean"]
    width, height = sheet_size(len(rows), len(names), crop)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    line_h = LABEL_H // 2
    for r, row in enumerate(rows):
        box = row.box if row.box is not None else crop_box(row.clean[0], crop, "centre")
        y = PAD + r * (crop + LABEL_H + PAD)
        for c, name in enumerate(names):
            x = PAD + c * (crop + PAD)
            if name == "degraded":
                first = f"degraded {row.level}".strip()
                image, second = row.degraded, row.labels.get("degraded", "")
            elif name == "clean":
                image, first, second = row.clean, row.title, "clean"
            else:
                image, first, second = row.outputs[name], name, row.labels.get(name, "")
            draw.text((x + 1, y), _fit(draw, first, font, crop - 2), fill=TEXT, font=font)
            draw.text((x + 1, y + line_h), _fit(draw, second, font, crop - 2), fill=TEXT, font=font)
            sheet.paste(_tile(image, box, crop), (x, y + LABEL_H))
    return sheet
