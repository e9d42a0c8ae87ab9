"""Real JPEG round trips of whole uint8 batches: Pillow over a thread pool, or nvJPEG on the GPU (4:4:4)."""

from __future__ import annotations

import concurrent.futures
import io

import numpy as np
import torch
from PIL import Image

from ..degrade import SUBSAMPLING


def _jpeg_one(arr: np.ndarray, quality: int, subsampling: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality), subsampling=subsampling)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def jpeg_batch_u8(x: torch.Tensor, qualities: list[int], subsampling: str = "4:2:0",
                  pool: concurrent.futures.Executor | None = None) -> torch.Tensor:
    """Real JPEG round trip of a uint8 batch (N, 3, H, W) with Pillow, one quality per image.

    The same encoder settings as ``degrade.jpeg_compress`` (identical bytes),
    without its float round trips, and spread over threads (Pillow releases the
    GIL while coding).
    """
    arrs = x.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    ss = SUBSAMPLING[subsampling]
    if pool is None:
        out = [_jpeg_one(a, q, ss) for a, q in zip(arrs, qualities)]
    else:
        out = list(pool.map(_jpeg_one, arrs, qualities, [ss] * len(qualities)))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


def nvjpeg_problem(device: torch.device) -> str | None:
    """None when the nvJPEG round trip works on ``device``; else why not (one line)."""
    if device.type != "cuda":
        return "not a CUDA device"
    try:
        jpeg_batch_cuda(torch.zeros(2, 3, 16, 16, dtype=torch.uint8, device=device), [50, 60])
        return None
    except Exception as e:  # any build without nvJPEG, or a driver problem: Pillow it is
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _bytes_to_host(encoded: list[torch.Tensor]) -> list[torch.Tensor]:
    """The CUDA encoder returns its JPEG bytes on the device, the batched decoder takes host tensors only
    ("Input list must contain tensors on CPU"): one copy of all the (small) files, then views."""
    sizes = [int(e.numel()) for e in encoded]
    return list(torch.cat(list(encoded)).cpu().split(sizes))


def jpeg_batch_cuda(x: torch.Tensor, qualities: list[int]) -> torch.Tensor:
    """nvJPEG through torchvision (4:4:4 only): one batched encode and decode per distinct quality."""
    import warnings

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
