"""Does a JPEG hold the pixels its header claims?  Checked before decoding, from the markers alone.

libjpeg fills whatever a scan lacks with grey and reports it only as a warning, which Pillow
drops: a 2 KB file whose header claims 13300x13300 decodes "successfully" into 177 MP of
filler, and restoring that costs minutes and gigabytes.  Every 8x8 block a Huffman-coded
scan covers costs at least one bit per code it must hold (a sequential scan: the DC difference
and the end of block; a progressive DC scan: the DC difference or its refinement bit), so a
scan shorter than that lower bound cannot hold the claimed image.  Arithmetic-coded and
lossless JPEGs have no such bound and are left to the decoder.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

SEQUENTIAL = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded
PROGRESSIVE = 0xC2
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# The end of an entropy-coded segment: a marker other than a stuffed 00 or a restart marker.
_SEGMENT_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


@dataclass(frozen=True)
class Frame:
    kind: int
    width: int
    height: int
    sampling: dict[int, tuple[int, int]]  # component id -> (H, V)


@dataclass(frozen=True)
class Shortfall:
    width: int
    height: int
    have_bytes: int
    need_bytes: int


def scan_shortfall(source: str | Path | bytes) -> Shortfall | None:
    """A ``Shortfall`` when some scan of the first image in ``source`` (a path, or the file's bytes when
    they are already read) is too short for the size its header claims; None when the scans can hold it,
    or when the file is not a Huffman-coded JPEG (the decoder then says what is wrong, if anything).
    Raises OSError when the file cannot be read."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if data[:2] != b"\xff\xd8":
        return None
    frame, pos = None, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None  # not where a marker must be: leave the verdict to the decoder
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segment = data[pos + 4:pos + 2 + length]
        pos += 2 + length
        if marker in SEQUENTIAL or marker == PROGRESSIVE:
            frame = _frame(marker, segment)
        elif marker in _OTHER_FRAMES:
            return None
        elif marker == 0xDA:
            if frame is None or frame.height == 0:  # no frame yet, or its height comes later (DNL)
                return None
            end = _SEGMENT_END.search(data, pos)
            stop = end.start() if end else len(data)
            need_bits = _least_bits(frame, segment)
            if need_bits is not None and 8 * (stop - pos) < need_bits:
                return Shortfall(frame.width, frame.height, stop - pos, -(-need_bits // 8))
            pos = stop
    return None


def _frame(kind: int, segment: bytes) -> Frame | None:
    if len(segment) < 6:
        return None
    height, width, count = struct.unpack(">HHB", segment[1:6])
    sampling = {}
    for i in range(count):
        entry = segment[6 + 3 * i:9 + 3 * i]
        if len(entry) < 3:
            return None
        sampling[entry[0]] = (entry[1] >> 4, entry[1] & 0x0F)
    return Frame(kind, width, height, sampling)


def _least_bits(frame: Frame, sos: bytes) -> int | None:
    """The fewest bits the scan with header ``sos`` can take (None: no bound is known for it)."""
    if not sos:
        return None
    ids = list(sos[1:1 + 2 * sos[0]:2])
    spectral_start = sos[1 + 2 * sos[0]] if len(sos) > 1 + 2 * sos[0] else None
    if not ids or spectral_start is None or any(c not in frame.sampling for c in ids):
        return None
    per_block = 2 if frame.kind in SEQUENTIAL else (1 if spectral_start == 0 else 0)
    return per_block * _blocks(frame, ids)


def _blocks(frame: Frame, ids: list[int]) -> int:
    """8x8 blocks the scan over components ``ids`` codes (an interleaved scan codes whole MCUs)."""
    hmax = max(h for h, _ in frame.sampling.values()) or 1
    vmax = max(v for _, v in frame.sampling.values()) or 1
    if len(ids) == 1:
        h, v = frame.sampling[ids[0]]
        cols = -(-(-(-frame.width * h // hmax)) // 8)
        rows = -(-(-(-frame.height * v // vmax)) // 8)
        return cols * rows
    mcus = -(-frame.width // (8 * hmax)) * -(-frame.height // (8 * vmax))
    return mcus * sum(h * v for h, v in (frame.sampling[c] for c in ids))
