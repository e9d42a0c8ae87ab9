"""Degradations: noise, JPEG, holes, and the levels built from them (pure torch + Pillow's codecs).

Images are float tensors in [0, 1], shape (C, H, W) or (N, C, H, W); masks are
bool tensors (1, H, W) or (N, 1, H, W) with True = missing.  All randomness comes
from a generator passed in, so a result is a function of (seed, inputs) only.
``irae degrade`` (files), ``irae train`` (batches, possibly on the GPU) and
``irae benchmark`` all use these definitions.
"""

from ..pixels import quantize_u8
from .jpeg import (SUBSAMPLING, align_to_blocks, decode_file, estimate_quality, estimate_quality_from_pixels,
                   find_jpeg_grid, jpeg_batch_cuda, jpeg_batch_u8, jpeg_bytes, nvjpeg_problem, pad_to_blocks,
                   quality_to_tell)
from .levels import INPAINT_FILL, Level, build_levels, noise_protocol
from .masks import MASK_KINDS, apply_holes, box_mask, boxes_mask, mask_in_range, random_mask, strokes_mask
from .noise import add_gaussian_noise
from .seeds import derive_seed, generator_for, uniform

__all__ = ["INPAINT_FILL", "MASK_KINDS", "SUBSAMPLING", "Level",
           "add_gaussian_noise", "align_to_blocks", "apply_holes", "box_mask", "boxes_mask", "build_levels", "decode_file",
           "derive_seed", "estimate_quality", "estimate_quality_from_pixels", "find_jpeg_grid", "generator_for",
           "jpeg_batch_cuda", "jpeg_batch_u8", "jpeg_bytes", "mask_in_range", "noise_protocol", "nvjpeg_problem",
           "pad_to_blocks", "quality_to_tell", "quantize_u8", "random_mask", "strokes_mask", "uniform"]
