"""The one home of 8-bit <-> float (``irae_cli.pixels``) gives bit for bit what each place wrote out before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from irae_cli.pixels import from_levels_u8, levels_u8, mask_u8, planes_from_u8, quantize_u8


def _random_u8(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


EVERY_LEVEL = np.arange(256, dtype=np.uint8).reshape(16, 16)


@pytest.mark.parametrize("arr", [EVERY_LEVEL, _random_u8(3, 37, 53), _random_u8(2, 1, 64, 64, seed=1)])
def test_from_levels_u8_equals_the_formulas_it_replaced(arr):
    t = torch.from_numpy(arr)
    new = from_levels_u8(t)
    assert new.dtype == torch.float32
    assert torch.equal(new, t.float() / 255.0)  # pixels.from_pil, train/validation.py
    assert torch.equal(new, t.float().div_(255.0))  # restore/items.py, train/degrader.py (twice)
    assert torch.equal(from_levels_u8(t, torch.float64), t.to(torch.float64) / 255.0)
    assert t.dtype == torch.uint8 and np.array_equal(t.numpy(), arr)  # the input is untouched


@pytest.mark.parametrize("arr", [EVERY_LEVEL, _random_u8(37, 53, 3), _random_u8(41, 29, 3, seed=2),
                                 _random_u8(19, 23, seed=3)])
def test_planes_from_u8_equals_the_formulas_it_replaced(arr):
    new = planes_from_u8(arr)
    hwc = arr[:, :, None] if arr.ndim == 2 else arr
    assert new.dtype == np.float32 and new.flags.c_contiguous
    # benchmark/speed.py's naive loop: a float32 array over a Python float, then (C, H, W)
    assert np.array_equal(new, (np.asarray(hwc, dtype=np.float32) / 255.0).transpose(2, 0, 1))
    # classical.py's OpenCV inpainting: float64 division, then float32 (double rounding is harmless here)
    assert np.array_equal(new, (hwc.astype(np.float64) / 255.0).transpose(2, 0, 1).astype(np.float32))
    # and the tensor path agrees with the array path
    assert torch.equal(torch.from_numpy(new), from_levels_u8(torch.from_numpy(np.ascontiguousarray(
        hwc.transpose(2, 0, 1)))))


def test_quantize_u8_equals_its_old_formula():
    x = torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    for dtype in (torch.float32, torch.float64):
        y = x.to(dtype)
        assert torch.equal(quantize_u8(y), levels_u8(y).to(dtype) / 255.0)
        assert quantize_u8(y).dtype == dtype


def test_levels_round_trip_exactly():
    t = torch.from_numpy(EVERY_LEVEL.copy())
    assert torch.equal(levels_u8(from_levels_u8(t)), t)


def test_mask_u8_equals_its_old_formula():
    mask = torch.rand(1, 9, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    assert np.array_equal(mask_u8(mask), mask[0].numpy().astype(np.uint8) * 255)
    assert np.array_equal(mask_u8(mask[0]), mask_u8(mask))


def test_conversions_refuse_what_is_not_uint8():
    with pytest.raises(TypeError):
        from_levels_u8(torch.zeros(1, 2, 2))
    with pytest.raises(TypeError):
        planes_from_u8(np.zeros((2, 2), np.uint16))
