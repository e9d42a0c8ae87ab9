"""The one description of the machine and libraries behind a figure or a file.

Benchmark reports, training logs, weights metadata and test-set manifests all
describe where they were made with these functions, so two reports can be
compared field by field.
"""

from __future__ import annotations

import os
import platform

import numpy as np
import torch

from . import __version__


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model with its cores and the torch threads in use (speed depends on both)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {_cpu_model()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def versions(device: torch.device | None = None) -> dict:
    """Everything whose version can move a figure: library versions and the device actually used."""
    import PIL

    return {
        "irae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "platform": platform.platform(),
        "device": device_name(device) if device is not None else None,
    }


def codec_versions() -> dict:
    """Versions that decide the bytes of written image files (libjpeg and zlib encode them)."""
    import PIL
    from PIL import features

    def feature(name: str) -> str | None:
        try:
            return features.version(name)
        except Exception:  # noqa: BLE001 - an unknown feature name on an old Pillow is just unknown
            return None

    return {"irae": __version__, "torch": torch.__version__, "pillow": PIL.__version__, "numpy": np.__version__,
            "libjpeg": feature("jpg"), "libjpeg_turbo": feature("libjpeg_turbo"), "zlib": feature("zlib")}
