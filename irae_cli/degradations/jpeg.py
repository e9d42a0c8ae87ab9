"""Real JPEG round trips: one encoder (Pillow's libjpeg, optimize off, no metadata) for every caller.

Test sets store its bytes, the benchmark and training validation decode them,
and training encodes uint8 batches through the same call spread over threads
(Pillow releases the GIL while coding).  On CUDA, 4:4:4 training can use nvJPEG
instead (``jpeg_batch_cuda``); that is the one other encoder, and training names
it in its log.
"""

from __future__ import annotations

import concurrent.futures
import io
import warnings

import numpy as np
import torch
from PIL import Image

from ..pixels import from_pil, to_u8

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def encode_u8(arr: np.ndarray, quality: int, subsampling: str = "4:2:0") -> bytes:
    """JPEG bytes of a uint8 (H, W) or (H, W, 3) array; chroma subsampling applies to colour only."""
    if subsampling not in SUBSAMPLING:
        raise ValueError(f"unknown chroma subsampling {subsampling!r}; use one of {', '.join(SUBSAMPLING)}")
    img = Image.fromarray(np.ascontiguousarray(arr), "L" if arr.ndim == 2 else "RGB")
    kwargs = {"subsampling": SUBSAMPLING[subsampling]} if img.mode == "RGB" else {}
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality), **kwargs)
    return buf.getvalue()


def jpeg_bytes(x: torch.Tensor, quality: int, subsampling: str = "4:2:0",
               double_quality: int | None = None) -> bytes:
    """The file of one (C, H, W) image; ``double_quality`` compresses at that quality first (double JPEG)."""
    if double_quality is not None:
        x = from_pil(Image.open(io.BytesIO(encode_u8(to_u8(x), double_quality, subsampling))))
    return encode_u8(to_u8(x), quality, subsampling)


def decode_file(data: bytes) -> tuple[torch.Tensor, int | None]:
    """A JPEG file's pixels as float (C, H, W) in [0, 1], and the quality restore reads from its tables."""
    with Image.open(io.BytesIO(data)) as img:
        return from_pil(img), estimate_quality(img)


# libjpeg's (IJG) luminance table at quality 50, row-major as Pillow reports ``Image.quantization``
IJG_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
            14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
            49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)


def _ijg_luma(quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((np.array(IJG_LUMA) * scale + 50) // 100, 1, 255)


_IJG_TABLES = np.stack([_ijg_luma(q) for q in range(1, 101)])  # row q - 1: quality q


def estimate_quality(img: Image.Image) -> int | None:
    """The IJG quality (1-100) whose luminance table is nearest to this JPEG's; None when it is no JPEG.

    Exact for files written by libjpeg-based encoders (Pillow, most cameras' software
    paths); for other tables it is the libjpeg quality that quantises most alike.
    """
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    distance = np.abs(_IJG_TABLES - np.asarray(tables[0], dtype=np.int64)).sum(axis=1)
    # the nearest table; among equals the highest quality (several low qualities clip to the same table)
    return int(100 - np.argmin(distance[::-1]))


def _round_trip_u8(arr: np.ndarray, quality: int, subsampling: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encode_u8(arr, quality, subsampling))).convert("RGB"))


def jpeg_batch_u8(x: torch.Tensor, qualities: list[int], subsampling: str = "4:2:0",
                  pool: concurrent.futures.Executor | None = None) -> torch.Tensor:
    """Round trip of a uint8 RGB batch (N, 3, H, W), one quality per image, without float conversions."""
    arrs = list(x.permute(0, 2, 3, 1).contiguous().cpu().numpy())
    subs = [subsampling] * len(qualities)
    out = list(pool.map(_round_trip_u8, arrs, qualities, subs)) if pool is not None \
        else [_round_trip_u8(a, q, s) for a, q, s in zip(arrs, qualities, subs)]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def _bytes_to_host(encoded: list[torch.Tensor]) -> list[torch.Tensor]:
    """The CUDA encoder returns its JPEG bytes on the device, the batched decoder takes host tensors only
    ("Input list must contain tensors on CPU"): one copy of all the (small) files, then views."""
    sizes = [int(e.numel()) for e in encoded]
    return list(torch.cat(list(encoded)).cpu().split(sizes))


def jpeg_batch_cuda(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """nvJPEG through torchvision (4:4:4 only): one batched encode and decode per distinct quality."""
    from torchvision.io import decode_jpeg, encode_jpeg

    out = torch.empty_like(x)
    q = torch.tensor(qualities)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for quality in sorted(set(qualities)):
            idx = torch.nonzero(q == quality).flatten().tolist()
            encoded = encode_jpeg([x[i] for i in idx], quality=int(quality))
            decoded = decode_jpeg(_bytes_to_host(encoded), device=x.device)
            for i, d in zip(idx, decoded):
                out[i] = d
    return out


def nvjpeg_problem(device: torch.device) -> str | None:
    """None when the nvJPEG round trip works on ``device``; else why not (one line)."""
    if device.type != "cuda":
        return "not a CUDA device"
    try:
        jpeg_batch_cuda(torch.zeros(2, 3, 16, 16, dtype=torch.uint8, device=device), [50, 60])
        return None
    except Exception as e:  # any build without nvJPEG, or a driver problem: Pillow it is
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
