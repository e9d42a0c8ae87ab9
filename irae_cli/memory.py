"""How much memory a run may count on, and whether one large image's restore fits in it.

A restore holds a large image whole only a few times (tiles go through the model a batch at
a time): the decoded image, the result, and one working copy (its padding to the model's
size multiple, or the encoder's 8-bit conversion), all float32, plus one plane of blend
weights.  An image whose restore needs more than the machine has free is refused before it is
decoded, instead of driving the machine into swap or the OOM killer.
"""

from __future__ import annotations

import os
import re

# Bytes per pixel of a restore at its peak: 3 whole float32 RGB copies and the blend weights.
RESTORE_BYTES_PER_PIXEL = 3 * 3 * 4 + 4
# Set to cap what irae counts on (e.g. "4G") below what the system reports free, on a shared machine.
LIMIT_ENV = "IRAE_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def restore_bytes(pixels: int) -> int:
    """About the most memory restoring one image of ``pixels`` pixels holds at once."""
    return pixels * RESTORE_BYTES_PER_PIXEL


def available_bytes() -> int | None:
    """Memory free for this run: MemAvailable (or the cgroup's room, if less), capped by $IRAE_MEMORY_LIMIT."""
    found = [n for n in (_meminfo_available(), _cgroup_room(), _env_limit()) if n is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """A container's memory limit less what it uses (cgroup v2); None where there is no limit."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - current)


def _env_limit() -> int | None:
    text = os.environ.get(LIMIT_ENV, "").strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?", text, re.IGNORECASE)
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()]) if m else None


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
