"""Training pixels: a folder of photos or a pack of crops as one flat uint8 buffer, and the patch sampler."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import IraeError
from ..pixels import levels_u8

DEVICE_DATA_FRACTION = 0.5  # keep the photos on the GPU when they take at most this much free memory


@dataclass
class TrainData:
    """All training pixels as one flat uint8 buffer, plus where each image lies in it."""

    buffer: torch.Tensor  # uint8, 1-D
    offsets: torch.Tensor  # int64 (N,)
    heights: torch.Tensor  # int64 (N,)
    widths: torch.Tensor  # int64 (N,)
    description: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.buffer.device

    def to(self, device: torch.device) -> "TrainData":
        return TrainData(self.buffer.to(device), self.offsets.to(device), self.heights.to(device),
                         self.widths.to(device), self.description)


def to_rgb_u8(x: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float [0, 1] from read_image -> (3, H, W) uint8 (gray replicated, 16-bit rounded)."""
    u8 = levels_u8(x)
    return u8.expand(3, -1, -1).contiguous() if u8.shape[0] == 1 else u8


def load_images(root: Path, patch: int, echo) -> tuple[list[torch.Tensor], dict]:
    """Every image under ``root`` (recursive) as RGB uint8; images smaller than a patch are left out."""
    from ..errors import ImageError
    from ..files import discover
    from ..imageio import read_image

    try:
        sources = discover(root, recursive=True)
    except FileNotFoundError:
        raise IraeError(f"{root}: no such folder or file; give a folder of training photos or a .safetensors pack")
    images, skipped, pixels = [], [], 0
    for src in sources:
        try:
            x, _ = read_image(src.path)
        except ImageError as e:
            echo(f"irae: warning: {e}; left out of training")
            skipped.append(str(src.rel))
            continue
        if min(x.shape[-2:]) < patch:
            echo(f"irae: warning: {src.path}: {x.shape[-1]}x{x.shape[-2]} is smaller than a {patch}px patch; "
                 f"left out of training")
            skipped.append(str(src.rel))
            continue
        u8 = to_rgb_u8(x)
        pixels += u8.shape[-1] * u8.shape[-2]
        images.append(u8)
    if not images:
        raise IraeError(f"{root}: no usable training images (found {len(sources)} image files, none at least "
                        f"{patch}x{patch}); add photos or lower --patch")
    desc = {"source": str(root), "kind": "folder", "images": len(images), "megapixels": round(pixels / 1e6, 3),
            "skipped": skipped}
    return images, desc


def _pack_data(source: Path, patch: int) -> TrainData:
    try:
        from ..pack import load_pack
    except ImportError:
        raise IraeError(f"{source}: reading training packs needs irae_cli.pack, which is not installed") from None
    crops, meta = load_pack(source)
    if crops.ndim != 4 or crops.shape[1] != 3 or crops.dtype != torch.uint8:
        raise IraeError(f"{source}: pack holds {tuple(crops.shape)} {crops.dtype}, not (N, 3, H, W) uint8 crops")
    if min(crops.shape[-2:]) < patch:
        raise IraeError(f"{source}: pack crops are {crops.shape[-1]}px, smaller than --patch {patch}")
    n, _, h, w = crops.shape
    pack = json.loads(json.dumps({k: v for k, v in (meta or {}).items() if k not in ("origin", "sources")},
                                 default=str))
    desc = {"source": str(source), "kind": "pack", "images": int(n), "megapixels": round(n * h * w / 1e6, 3),
            "crop": [int(h), int(w)], "pack": pack}
    return TrainData(crops.contiguous().reshape(-1), torch.arange(n, dtype=torch.int64) * (3 * h * w),
                     torch.full((n,), h, dtype=torch.int64), torch.full((n,), w, dtype=torch.int64), desc)


def _folder_data(source: Path, patch: int, echo) -> TrainData:
    images, desc = load_images(source, patch, echo)
    sizes = torch.tensor([im.numel() for im in images], dtype=torch.int64)
    heights = torch.tensor([im.shape[1] for im in images], dtype=torch.int64)
    widths = torch.tensor([im.shape[2] for im in images], dtype=torch.int64)
    return TrainData(torch.cat([im.reshape(-1) for im in images]), torch.cumsum(sizes, 0) - sizes, heights,
                     widths, desc)


def load_training_data(source: Path, patch: int, device: torch.device, echo) -> TrainData:
    """DATA (a folder of images or a .safetensors pack of crops) -> TrainData, on ``device`` when it fits."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".safetensors":
        data = _pack_data(source, patch)
    else:
        data = _folder_data(source, patch, echo)
    data.description["on_device"] = False
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if data.buffer.numel() <= DEVICE_DATA_FRACTION * free:
            data = data.to(device)
            data.description["on_device"] = True
        else:
            echo(f"irae: note: the training photos ({data.buffer.numel() / 2**30:.1f} GiB) do not fit comfortably "
                 f"in GPU memory; patches are cut on the CPU and copied each step (slower)")
            data.buffer = data.buffer.pin_memory()
    return data


def replay_warning(before: dict, now: dict) -> str | None:
    """A warning when DATA no longer looks like the data a resumed checkpoint was trained on."""
    if (before.get("images"), before.get("megapixels")) == (now["images"], now["megapixels"]):
        return None
    return (f"irae: warning: DATA has {now['images']} images / {now['megapixels']} MP, the checkpoint was trained "
            f"on {before.get('images')} / {before.get('megapixels')} MP; the run continues but is no longer a replay")


class PatchSampler:
    """Uniformly random patches (every patch position of every image equally likely), flipped/rotated.

    Fully batched: one randint picks the patch positions, one gather reads the
    pixels, with the 8 flips/rotations folded into the gather's index grid.
    """

    def __init__(self, data: TrainData, patch: int, generator: torch.Generator) -> None:
        if generator.device != data.device:
            raise ValueError("the sampler's generator must live on the data's device")
        self.data, self.patch, self.g = data, patch, generator
        dev = data.device
        self.valid_h = (data.heights - patch + 1).clamp_min(0)
        self.valid_w = (data.widths - patch + 1).clamp_min(0)
        counts = self.valid_h * self.valid_w
        self.counts = counts
        self.cum = torch.cumsum(counts, 0)
        self.total = int(self.cum[-1])
        if self.total <= 0:
            raise IraeError(f"no image is at least {patch}x{patch}; lower --patch")
        self.plane = data.heights * data.widths
        self.ar = torch.arange(patch, device=dev)
        self.channels = torch.arange(3, device=dev).view(1, 3, 1, 1)

    def sample(self, n: int) -> torch.Tensor:
        """(n, 3, patch, patch) uint8 on the data's device."""
        p, g, dev = self.patch, self.g, self.data.device
        r = torch.randint(0, self.total, (n,), generator=g, device=dev)
        k = torch.searchsorted(self.cum, r, right=True)
        local = r - (self.cum[k] - self.counts[k])
        vw = self.valid_w[k]
        y, x = local // vw, local % vw
        flags = torch.randint(0, 8, (n,), generator=g, device=dev).view(n, 1, 1)
        u = self.ar.view(1, p, 1).expand(n, p, p)
        v = self.ar.view(1, 1, p).expand(n, p, p)
        transpose, flip_y, flip_x = (flags & 1).bool(), (flags & 2).bool(), (flags & 4).bool()
        u, v = torch.where(transpose, v, u), torch.where(transpose, u, v)
        u = torch.where(flip_y, p - 1 - u, u)
        v = torch.where(flip_x, p - 1 - v, v)
        w = self.data.widths[k].view(n, 1, 1)
        pix = (y.view(n, 1, 1) + u) * w + (x.view(n, 1, 1) + v)
        idx = self.data.offsets[k].view(n, 1, 1, 1) + self.channels * self.plane[k].view(n, 1, 1, 1) \
            + pix.unsqueeze(1)
        return self.data.buffer[idx]
