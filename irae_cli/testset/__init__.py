"""Degraded test sets made from image files, with a manifest: ``irae degrade`` without the CLI.

Layout of OUT (all paths in the manifest are relative to OUT, '/'-separated)::

    clean/<rel>.png             the clean image the degradations were applied to
    <level>/<rel>.png           denoise (clip protocol) and inpaint (holes filled with grey)
    <level>/<rel>.npy           denoise, float protocol: float32 (C, H, W), unclipped, 1.0 = white
    <level>/<rel>.jpg           jpeg
    masks/<level>/<rel>.png     inpaint masks, 8-bit grayscale, 255 = missing, 0 = known
    manifest.jsonl              one JSON object per degraded file, sorted by id

``<rel>`` is the input's path relative to CLEAN without its extension.  Level
names: ``sigma25`` (or ``sigma0-55`` for a blind range), ``q10`` (``-444`` /
``-422`` for other chroma subsampling, ``-dq90`` for double JPEG whose first
pass was at 90), ``box`` / ``boxes`` / ``strokes`` (``box-10-20`` with hole-ratio
bins, in percent).

Each image is read once, rounded to 8 bits (so 16-bit inputs are quantised
before anything else) and degraded per level with a ``torch.Generator`` seeded
by ``derive_seed(seed, rel, level)``: outputs are a function of the seed, the
relative path and the level only, never of file order or worker count.  Every
PNG is written by Pillow with ``compress_level=6`` and no metadata, so the
bytes are reproducible for a given Pillow/zlib build.

    make.py       make_test_set: checks, the worker threads, merging an earlier manifest, writing the new one
    images.py     one image: the clean copy, each level's file(s) and manifest line; the PNG/npy encoders
    manifest.py   read_manifest and the validation of each line
"""

from .images import CLEAN_DIR, MASK_DIR, PNG_COMPRESS_LEVEL, npy_bytes, png_bytes
from .make import TestSetResult, make_test_set
from .manifest import MANIFEST_NAME, MANIFEST_VERSION, read_manifest

__all__ = ["CLEAN_DIR", "MANIFEST_NAME", "MANIFEST_VERSION", "MASK_DIR", "PNG_COMPRESS_LEVEL", "TestSetResult",
           "make_test_set", "npy_bytes", "png_bytes", "read_manifest"]
