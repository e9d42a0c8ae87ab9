"""Whether the optional ``irae[onnx]`` extra is installed, and how to install it.

Torch-free and import-free of the rest of irae: the usage errors of ``--backend`` and ``irae export``
come from here before torch loads, and both the ONNX exporter and the backend choice read it.
"""

from __future__ import annotations

EXTRA_HINT = "pip install 'irae[onnx]'"


def onnx_installed() -> bool:
    """Whether the ``onnx`` extra is importable (both packages: exporting needs onnx, running onnxruntime)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True
