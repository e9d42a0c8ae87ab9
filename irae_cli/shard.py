"""Split one restore run into parts: ``--shard K/N`` for job arrays, and the processes of a torchrun job.

Every process computes the same split from the same plan, so no two ever write one file and
none has to talk to another.  Parts are balanced by pixels read from the image headers, not
by file count: one 50 MP panorama costs as much as a few hundred thumbnails.  The split
covers every planned image, those whose outputs already exist too, so it does not move
when a run is resumed: ``--shard K/N --skip-existing`` redoes exactly what part K lost.
"""

from __future__ import annotations

import heapq
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import IraeError

# Opening, decoding setup and writing cost something per file whatever its size: counted as
# this many pixels, so a part of many thumbnails is not mistaken for a light one.
FILE_PIXELS = 256 * 256


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'1/4' -> Shard(1, 4): part K of N, K counted from 0 (as SLURM_ARRAY_TASK_ID usually is)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m:
        raise IraeError(f"--shard {text!r}: give K/N, part K of N counted from 0, e.g. --shard 0/4 ... --shard 3/4")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise IraeError(f"--shard {text}: N (the number of parts) must be at least 1")
    if k >= n:
        raise IraeError(f"--shard {text}: K counts from 0 and must be below N (0 to {n - 1} for {n} parts)")
    return Shard(k, n)


def split_by_pixels(pixels: Sequence[int], parts: int) -> list[list[int]]:
    """Indices into ``pixels`` in ``parts`` groups of nearly equal cost, each group in ascending order.

    Largest first, each onto the group with the least so far (ties: the lower group, then the
    lower index): the same list gives the same split in every process.
    """
    groups: list[list[int]] = [[] for _ in range(parts)]
    heap = [(0, p) for p in range(parts)]
    for i in sorted(range(len(pixels)), key=lambda i: (-pixels[i], i)):
        load, p = heapq.heappop(heap)
        groups[p].append(i)
        heapq.heappush(heap, (load + pixels[i] + FILE_PIXELS, p))
    return [sorted(g) for g in groups]


def header_pixels(paths: Sequence[Path], workers: int = 8) -> list[int]:
    """Width x height of each image from its header (0 when unreadable: it will fail fast)."""
    from .imageio import image_pixels

    if not paths:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(paths))), thread_name_prefix="irae-header") as pool:
        return [n or 0 for n in pool.map(image_pixels, paths)]
