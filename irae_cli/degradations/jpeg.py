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
import math
import warnings
from collections.abc import Callable

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


# The AC frequencies the pixel estimate reads (row-major indices): the first 15 after DC in zigzag order,
# where even a low quality leaves values that are not all zero.  DC is left out: in a flat block the
# 8-bit rounding of all 64 pixels moves it by up to 4 at once, as much as a fine step.
_ZIGZAG_AC = (1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5)
_MIN_MULTIPLES = 4  # a frequency counts when its kept values lie on this many different multiples
_MIN_VALUES = 500  # values needed in all: a flat image gives too few to tell qualities apart
_MIN_SCORE = 0.5  # the mean cosine of an image never JPEG-compressed stays near 0
_WINDOW = 512  # the side of the middle window the estimate reads (_central_window)


def estimate_quality_from_pixels(x: torch.Tensor) -> int | None:
    """The IJG quality an image was last JPEG-compressed at, read from its 8-bit pixels alone (a PNG of a
    decoded JPEG, say, cropped or not); None when they do not show it.  ``x``: (C, H, W) in [0, 1]."""
    return find_jpeg_grid(x)[0]


def find_jpeg_grid(x: torch.Tensor) -> tuple[int | None, tuple[int, int]]:
    """(quality, (top, left)): the IJG quality an image was last JPEG-compressed at, and where its 8x8
    blocks start (0-7 each), read from its 8-bit pixels; ``(None, (0, 0))`` when they do not show it.

    A crop of a decoded JPEG keeps the encoder's grid, shifted: the grid is found first, on each axis on
    its own (``_block_grid``), and the quality read on it alone.  Reading it on a second grid as well (the
    origin, say) only adds chances of a wrong quality: a grid one pixel off can still look like a finer
    table.  An image that shows no quality reports the origin.
    """
    y = _luma(_central_window(x))
    top, left = _block_grid(y)
    quality, _ = _quality_on_grid(y[top:, left:])
    return (quality, (top, left)) if quality is not None else (None, (0, 0))


def pad_to_blocks(x: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """(padded, (rows, columns) put before it): ``x`` (..., H, W), whose 8x8 blocks start at ``grid`` (top,
    left), padded at the top and left by repeating its edge so that they start at its corner."""
    pad = ((8 - grid[0]) % 8, (8 - grid[1]) % 8)
    if pad == (0, 0):
        return x, pad
    lead = x.shape[:-2]
    flat = x.reshape(1, -1, *x.shape[-2:])  # replicate padding wants a batch of planes
    padded = torch.nn.functional.pad(flat, (pad[1], 0, pad[0], 0), mode="replicate")
    return padded.reshape(*lead, *padded.shape[-2:]), pad


Grid = tuple[int, int]  # (top, left): where an image's 8x8 JPEG blocks start, 0-7 each


def align_to_blocks(x: torch.Tensor, header_grid: Grid | None,
                    from_pixels: Callable[[], Grid]) -> tuple[torch.Tensor, Grid, Grid]:
    """(padded, pad, grid): ``x`` padded (``pad_to_blocks``) so that its 8x8 JPEG blocks start at its corner,
    as in every JPEG a model learnt on.  The grid is a JPEG file's (``header_grid``: its decoder's, moved by
    an EXIF turn), else the one its pixels show (``from_pixels``, called only then: it costs a search)."""
    grid = header_grid if header_grid is not None else from_pixels()
    padded, pad = pad_to_blocks(x, grid)
    return padded, pad, grid


def _central_window(x: torch.Tensor, side: int = _WINDOW) -> torch.Tensor:
    """At most ``side`` x ``side`` pixels from the middle of the image, cut at multiples of 8 from its
    corner, so that the blocks lie where they lie in the whole image: 4,096 blocks, as many as the 640x400
    crops the estimate was measured on, and its time stops growing with the image."""
    h, w = x.shape[-2:]
    top, left = max(0, (h - side) // 2) // 8 * 8, max(0, (w - side) // 2) // 8 * 8
    return x[..., top:top + side, left:left + side]


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(H, W) float64: the luma of ``x`` (C, H, W) in [0, 1] on the 0-255 scale of its 8-bit pixels."""
    u8 = (x.detach().double().clamp(0, 1) * 255).round()
    return u8[0] if u8.shape[0] == 1 else 0.299 * u8[0] + 0.587 * u8[1] + 0.114 * u8[2]


def _block_grid(y: torch.Tensor) -> tuple[int, int]:
    """The row and column offsets (0-7) where the 8x8 blocks of a decoded JPEG start: the offset at which
    8-pixel segments down the columns (then along the rows) have the most high frequencies near zero.

    Quantisation zeroes most of a block's high-frequency coefficients, and a column's 1-D DCT over the 8
    rows of a block is a sum of the block's 2-D coefficients of the same vertical frequency, wherever the
    columns are cut, so each axis is found on its own; segments that straddle two blocks carry the step
    between them into every frequency.  Unlike the steps between neighbouring pixels, this still tells
    the grid of quality 90, whose block edges are faint (all 100 of 20 photos cut at 5 offsets, where the
    largest step found 55).  ``y``: the luma (``_luma``)."""
    high_frequencies = _dct_basis()[4:].float().T  # the upper half, where quantisation zeroes most
    offsets = []
    for dim in (0, 1):
        if y.shape[dim] < 16:
            offsets.append(0)
            continue
        # the high frequencies of every 8-pixel segment along this axis, wherever it starts
        high = (y.float().unfold(dim, 8, 1) @ high_frequencies).movedim(dim, 0)
        near_zero = [float((high[p::8].abs() < 1.0).float().mean()) for p in range(8)]
        offsets.append(max(range(8), key=near_zero.__getitem__))
    return offsets[0], offsets[1]


def _dct_basis() -> torch.Tensor:
    """(8, 8) float64: the orthonormal DCT-II, JPEG's (frequency, sample)."""
    n = torch.arange(8, dtype=torch.float64)
    basis = torch.cos(torch.pi * (2 * n[None, :] + 1) * n[:, None] / 16) * math.sqrt(2 / 8)
    basis[0] /= math.sqrt(2)
    return basis


def _quality_on_grid(y: torch.Tensor) -> tuple[int | None, float]:
    """(quality, its score) read from the luma ``y`` (``_luma``) with the 8x8 blocks taken from its origin.

    Quantisation leaves each DCT coefficient of the luma's 8x8 blocks on a multiple of its table's step,
    give or take the rounding of the decoded pixels to 8 bits.  For each quality the mean of
    cos(2 pi c / step), over the coefficients that quantisation did not zero (|c| > step / 2), is near 1
    for the quality's own table and near 0 for others; the best one is taken when its mean is above
    ``_MIN_SCORE`` on at least ``_MIN_VALUES`` values, or a coarser one that scores higher still on a
    quarter of that.  A constant value lies on a multiple of many steps, so a frequency counts only when
    its kept values lie on several different multiples.  Very flat or very fine (quality above ~90)
    images are often None.
    """
    coeffs = _luma_block_ac(y)
    if coeffs is None:
        return None, 0.0
    seen: dict[tuple[int, int], tuple[float, int]] = {}  # (frequency, step) -> (sum of cosines, values)
    scores: dict[int, tuple[float, int]] = {}  # quality -> (mean cosine, values)
    for q in range(1, 101):
        total, count = 0.0, 0
        for i, k in enumerate(_ZIGZAG_AC):
            step = int(_IJG_TABLES[q - 1, k])
            if step < 2:  # every value is near a multiple of 1: no evidence either way
                continue
            if (i, step) not in seen:
                seen[(i, step)] = _on_multiples(coeffs[:, i], step)
            s, n = seen[(i, step)]
            total, count = total + s, count + n
        scores[q] = (total / count if count else 0.0, count)
    best_q, best_score = None, _MIN_SCORE
    for q, (score, count) in scores.items():
        if count >= _MIN_VALUES and score > best_score:
            best_q, best_score = q, score
    # Where a finer table's steps divide a coarse table's, the coarse JPEG's values lie on its multiples
    # too, and its smaller steps keep more of them: on few blocks only the finer quality has enough.
    # A coarser quality that fits better on fewer values is the one the encoder used.
    coarser = [(score, q) for q, (score, count) in scores.items()
               if best_q is not None and q < best_q and count >= _MIN_VALUES // 4 and score > best_score]
    if coarser:
        best_score, best_q = max(coarser)
    return best_q, best_score


def quality_to_tell(given: int | None, header: int | None,
                    from_pixels: Callable[[], int | None]) -> tuple[int | None, str]:
    """The JPEG quality a model conditioned on it is told about one file, and where it came from: the
    user's (``given``), else the file's quantisation tables (``header``), else its pixels (``from_pixels``,
    called only then: the estimate costs DCTs of up to 4,096 blocks).  ``(None, "estimated")`` when none shows."""
    if given is not None:
        return given, "given"
    if header is not None:
        return header, "header"
    return from_pixels(), "estimated"


def _luma_block_ac(y: torch.Tensor) -> torch.Tensor | None:
    """(blocks, 15) float64: the ``_ZIGZAG_AC`` coefficients of the JPEG DCT of each whole 8x8 block of
    the luma ``y`` (0-255, level-shifted as JPEG does); None when it has no whole block."""
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if h == 0 or w == 0:
        return None
    blocks = (y[:h, :w] - 128.0).reshape(h // 8, 8, w // 8, 8).permute(0, 2, 1, 3).reshape(-1, 8, 8)
    basis = _dct_basis()
    return (basis @ blocks @ basis.T).reshape(-1, 64)[:, list(_ZIGZAG_AC)]


def _on_multiples(values: torch.Tensor, step: int) -> tuple[float, int]:
    """(sum of cos(2 pi v / step), how many) over the values quantisation at ``step`` did not zero;
    (0, 0) when they lie on fewer than ``_MIN_MULTIPLES`` different multiples."""
    kept = values[values.abs() > step / 2]
    if torch.unique(torch.round(kept / step)).numel() < _MIN_MULTIPLES:
        return 0.0, 0
    return float(torch.cos(2 * torch.pi * kept / step).sum()), int(kept.numel())
