"""Tests for irae_cli.metrics: exact values and independent numpy references.

The references below are written from the published definitions (Wang et al.
2004 SSIM with the MATLAB window; Yim & Bovik 2011 PSNR-B with the BasicSR/KAIR
boundary counts), in plain float64 numpy, sharing no code with the module.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from irae_cli import metrics as M

DATA = Path(__file__).resolve().parent / "data"
RGB_FILES = ["astronaut_128.png", "coffee_128.png", "chelsea_128.png"]


# --------------------------------------------------------------------------- helpers

def load_u8(name: str) -> np.ndarray:
    """(H,W,C) uint8; gray files come back with C = 1."""
    img = Image.open(DATA / name)
    arr = np.asarray(img.convert("L" if img.mode in ("L", "I;16", "I") else "RGB"), dtype=np.uint8)
    arr = arr[:128, :128]
    return arr[:, :, None] if arr.ndim == 2 else arr


def noisy_u8(clean: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = clean.astype(np.float64) + rng.normal(0.0, sigma, clean.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def jpeg_u8(clean: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    mode = "L" if clean.shape[2] == 1 else "RGB"
    Image.fromarray(clean[:, :, 0] if mode == "L" else clean, mode).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    out = np.asarray(Image.open(buf).convert(mode), dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


def as_float_tensor(arr_u8: np.ndarray) -> torch.Tensor:
    """(H,W,C) uint8 -> (C,H,W) float32 in [0,1], like model output."""
    return torch.from_numpy(np.array(arr_u8)).permute(2, 0, 1).float() / 255.0


def as_u8_tensor(arr_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr_u8.transpose(2, 0, 1)))


def np_y(arr_u8: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 -> (H,W,1) float64 MATLAB rgb2ycbcr luma, unrounded."""
    x = arr_u8.astype(np.float64)
    y = 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0
    return y[..., None]


def np_ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """Reference SSIM of two (H,W) float64 planes on 0..255, 'valid' windows."""
    r = np.arange(11, dtype=np.float64) - 5.0
    g = np.exp(-r ** 2 / (2 * 1.5 ** 2))
    win = np.outer(g, g)
    win /= win.sum()

    def filt(z):
        patches = np.lib.stride_tricks.sliding_window_view(z, (11, 11))  # (H-10, W-10, 11, 11)
        return np.einsum("ijkl,kl->ij", patches, win)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = filt(x), filt(y)
    vx = filt(x * x) - mx ** 2
    vy = filt(y * y) - my ** 2
    cxy = filt(x * y) - mx * my
    smap = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    assert smap.shape == (x.shape[0] - 10, x.shape[1] - 10)
    return float(smap.mean())


def np_ssim(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return float(np.mean([np_ssim_channel(x[..., k], y[..., k]) for k in range(x.shape[2])]))


def np_bef(img: np.ndarray) -> float:
    """BEF of an (H,W) plane by explicit loops over neighbour pairs (0..1 scale in, as KAIR).

    Boundary counts H*(W//8 - 1), W*(H//8 - 1) as in KAIR/SwinIR calculate_psnrb
    (the paper assumes sizes that are multiples of 8, where // and / agree).
    """
    h, w = img.shape
    blk = 8
    d_b = d_bc = 0.0
    for j in range(w - 1):
        s = float(np.sum((img[:, j] - img[:, j + 1]) ** 2))
        if j % blk == blk - 1:
            d_b += s
        else:
            d_bc += s
    for i in range(h - 1):
        s = float(np.sum((img[i, :] - img[i + 1, :]) ** 2))
        if i % blk == blk - 1:
            d_b += s
        else:
            d_bc += s
    n_hb = h * (w // blk - 1)
    n_vb = w * (h // blk - 1)
    n_hbc = h * (w - 1) - n_hb
    n_vbc = w * (h - 1) - n_vb
    d_b /= n_hb + n_vb
    d_bc /= n_hbc + n_vbc
    eta = math.log2(blk) / math.log2(min(h, w)) if d_b > d_bc else 0.0
    return eta * (d_b - d_bc)


def np_psnrb(restored: np.ndarray, clean: np.ndarray) -> float:
    """Reference PSNR-B on (H,W,C) float64 0..255 planes, [0,1]-scale math, mean over channels."""
    vals = []
    for k in range(restored.shape[2]):
        r, c = restored[..., k] / 255.0, clean[..., k] / 255.0
        mse_b = float(np.mean((r - c) ** 2)) + np_bef(r)
        vals.append(10 * math.log10(1.0 / mse_b))
    return float(np.mean(vals))


# --------------------------------------------------------------------------- rounding and Y

def test_to_u8_float_clamps_and_rounds():
    x = torch.tensor([0.0, 1.0, 0.5, -0.1, 1.2, 3 / 255, 0.49 / 255], dtype=torch.float32)
    out = M.to_u8_float(x)
    assert out.dtype == torch.float64
    # 0.5 * 255 = 127.5 rounds half to even -> 128, as numpy's round does
    assert out.tolist() == [0.0, 255.0, 128.0, 0.0, 255.0, 3.0, 0.0]
    u8 = torch.tensor([0, 7, 255], dtype=torch.uint8)
    assert M.to_u8_float(u8).tolist() == [0.0, 7.0, 255.0]


@pytest.mark.parametrize("rgb, y", [
    ((255, 255, 255), 235.0),
    ((0, 0, 0), 16.0),
    ((255, 0, 0), 81.481),             # 65.481 + 16
    ((0, 255, 0), 144.553),            # 128.553 + 16
    ((100, 150, 200), 136.87941176470588),  # (6548.1 + 19282.95 + 4993.2) / 255 + 16
])
def test_rgb_to_y_hand_computed(rgb, y):
    x = torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1)
    out = M.rgb_to_y(x)
    assert out.shape == (1, 1, 1)
    assert out.item() == pytest.approx(y, abs=1e-9)


def test_rgb_to_y_gray_and_batch():
    g = torch.rand(1, 4, 5, dtype=torch.float64) * 255
    assert torch.equal(M.rgb_to_y(g), g)
    batch = torch.full((2, 3, 4, 4), 255.0)
    assert torch.allclose(M.rgb_to_y(batch), torch.full((2, 1, 4, 4), 235.0, dtype=torch.float64))
    with pytest.raises(ValueError):
        M.rgb_to_y(torch.zeros(2, 4, 4))


# --------------------------------------------------------------------------- PSNR

def test_psnr_identical_is_inf():
    x = as_float_tensor(load_u8("astronaut_128.png"))
    assert M.psnr(x, x) == math.inf
    assert M.psnr(x, x, channel="y") == math.inf
    # float noise below half a level disappears with uint8 rounding ...
    assert M.psnr(x + 0.4 / 255, x) == math.inf
    # ... but not without it
    assert M.psnr(x + 0.4 / 255, x, round_u8=False) == pytest.approx(10 * math.log10(255 ** 2 / 0.16), abs=1e-3)


def test_psnr_one_level_everywhere():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, size=(32, 40, 3), dtype=np.uint8)  # 0..254, so +1 never clips
    b = a + 1
    expected = 10 * math.log10(255 ** 2 / 1.0)
    assert expected == pytest.approx(48.1308036, abs=1e-6)
    assert M.psnr(as_float_tensor(b), as_float_tensor(a)) == pytest.approx(expected, abs=1e-12)
    assert M.psnr(as_u8_tensor(b), as_u8_tensor(a)) == pytest.approx(expected, abs=1e-12)
    # Y moves by (65.481 + 128.553 + 24.966) / 255 = 219/255 for a +1 step on all channels
    assert M.psnr(as_u8_tensor(b), as_u8_tensor(a), channel="y") == pytest.approx(
        10 * math.log10(255 ** 2 / (219 / 255) ** 2), abs=1e-9)


def test_psnr_known_mse_pattern_and_border():
    a = np.full((16, 16, 1), 100, dtype=np.uint8)
    b = a.copy()
    b[::2, :, 0] = 103  # half the pixels off by 3 -> MSE 4.5
    assert M.psnr(as_float_tensor(b), as_float_tensor(a)) == pytest.approx(10 * math.log10(255 ** 2 / 4.5), abs=1e-12)
    # border crops every edge: an error only in the outer ring vanishes
    c = a.copy()
    c[0, :, 0] = c[-1, :, 0] = c[:, 0, 0] = c[:, -1, 0] = 0
    assert M.psnr(as_u8_tensor(c), as_u8_tensor(a), border=1) == math.inf
    assert math.isfinite(M.psnr(as_u8_tensor(c), as_u8_tensor(a)))


def test_psnr_mask_counts_only_masked_pixels():
    a = np.full((16, 16, 3), 120, dtype=np.uint8)
    mask = torch.zeros(1, 16, 16, dtype=torch.bool)
    mask[:, 4:12, 4:12] = True
    outside = a.copy()
    outside[:2] = 10  # error only outside the mask
    assert M.psnr(as_u8_tensor(outside), as_u8_tensor(a), mask=mask) == math.inf
    assert math.isfinite(M.psnr(as_u8_tensor(outside), as_u8_tensor(a)))
    both = outside.copy()
    both[4:12, 4:12, 0] = 122  # inside: one channel of three off by 2 -> MSE 4/3
    got = M.psnr(as_u8_tensor(both), as_u8_tensor(a), mask=mask)
    assert got == pytest.approx(10 * math.log10(255 ** 2 / (4 / 3)), abs=1e-12)
    assert M.psnr(as_u8_tensor(both), as_u8_tensor(a), mask=mask[0]) == got  # (H,W) mask works too
    with pytest.raises(ValueError):
        M.psnr(as_u8_tensor(both), as_u8_tensor(a), mask=torch.zeros(1, 16, 16, dtype=torch.bool))
    with pytest.raises(TypeError):
        M.psnr(as_u8_tensor(both), as_u8_tensor(a), mask=mask.float())


def test_psnr_rejects_bad_shapes_and_channel():
    x = torch.rand(3, 16, 16)
    with pytest.raises(ValueError):
        M.psnr(x, torch.rand(3, 16, 17))
    with pytest.raises(ValueError):
        M.psnr(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError):
        M.psnr(x, x, channel="ycbcr")


# --------------------------------------------------------------------------- SSIM

def test_ssim_identical_is_one():
    x = as_float_tensor(load_u8("coffee_128.png"))
    assert M.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert M.ssim(x, x, channel="y") == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("name, sigma", [
    ("astronaut_128.png", 5.0), ("coffee_128.png", 15.0), ("chelsea_128.png", 25.0),
    ("camera_128_gray.png", 10.0),
])
def test_ssim_matches_numpy_reference(name, sigma):
    clean = load_u8(name)
    noisy = noisy_u8(clean, sigma, seed=1234)
    got_rgb = M.ssim(as_float_tensor(noisy), as_float_tensor(clean))
    assert got_rgb == pytest.approx(np_ssim(noisy, clean), abs=1e-6)
    assert M.ssim(as_u8_tensor(noisy), as_u8_tensor(clean)) == pytest.approx(got_rgb, abs=1e-12)
    got_y = M.ssim(as_float_tensor(noisy), as_float_tensor(clean), channel="y")
    if clean.shape[2] == 3:
        assert got_y == pytest.approx(np_ssim(np_y(noisy), np_y(clean)), abs=1e-6)
    else:
        assert got_y == pytest.approx(got_rgb, abs=1e-12)  # gray image is its own Y
    assert 0.0 < got_rgb < 1.0


def test_ssim_border_and_too_small():
    clean = load_u8("chelsea_128.png")
    noisy = noisy_u8(clean, 15.0, seed=7)
    got = M.ssim(as_u8_tensor(noisy), as_u8_tensor(clean), border=4)
    assert got == pytest.approx(np_ssim(noisy[4:-4, 4:-4], clean[4:-4, 4:-4]), abs=1e-6)
    with pytest.raises(ValueError):
        M.ssim(torch.rand(3, 10, 32), torch.rand(3, 10, 32))


# --------------------------------------------------------------------------- PSNR-B

def test_psnrb_below_psnr_on_jpeg_and_matches_reference():
    clean = load_u8("astronaut_128.png")
    comp = jpeg_u8(clean, quality=10)
    r, c = as_float_tensor(comp), as_float_tensor(clean)
    pb = M.psnr_b(r, c)
    p = M.psnr(r, c, channel="y")
    assert pb < p  # quality-10 JPEG is blocky, so BEF > 0 lowers the score
    assert pb == pytest.approx(np_psnrb(np_y(comp), np_y(clean)), abs=1e-9)
    # per-channel RGB variant (KAIR's calculate_psnrb without Y conversion)
    assert M.psnr_b(r, c, channel="rgb") == pytest.approx(
        np_psnrb(comp.astype(np.float64), clean.astype(np.float64)), abs=1e-9)


def test_psnrb_size_not_multiple_of_8_matches_reference():
    clean = load_u8("chelsea_128.png")
    comp = jpeg_u8(clean, quality=15)
    crop = (slice(3, 103), slice(5, 125))  # 100 x 120, off the JPEG grid
    got = M.psnr_b(as_u8_tensor(comp[crop]), as_u8_tensor(clean[crop]))
    assert got == pytest.approx(np_psnrb(np_y(comp[crop]), np_y(clean[crop])), abs=1e-9)
    # border crops before the 8x8 grid is laid, like the reference code
    got_b = M.psnr_b(as_u8_tensor(comp), as_u8_tensor(clean), border=4)
    assert got_b == pytest.approx(np_psnrb(np_y(comp[4:-4, 4:-4]), np_y(clean[4:-4, 4:-4])), abs=1e-9)


def test_psnrb_gray_matches_reference():
    clean = load_u8("camera_128_gray.png")
    comp = jpeg_u8(clean, quality=20)
    got = M.psnr_b(as_u8_tensor(comp), as_u8_tensor(clean))
    assert got == pytest.approx(np_psnrb(comp.astype(np.float64), clean.astype(np.float64)), abs=1e-9)


def test_psnrb_identical_images():
    flat = torch.full((3, 32, 32), 0.3)
    assert M.psnr_b(flat, flat) == math.inf  # no blockiness, no error
    # BEF belongs to the restored image itself, so a blocky image compared with
    # itself is finite (as in BasicSR/KAIR): 10 log10(255^2 / BEF)
    comp = jpeg_u8(load_u8("coffee_128.png"), quality=10)
    x = as_u8_tensor(comp)
    bef = np_bef(np_y(comp)[..., 0] / 255.0)
    assert bef > 0
    assert M.psnr_b(x, x) == pytest.approx(10 * math.log10(1.0 / bef), abs=1e-9)


# --------------------------------------------------------------------------- keys, compute_all, batches, aggregation

def test_metric_keys_per_task():
    base = ["psnr_rgb_u8", "psnr_y601_u8", "ssim_rgb_u8", "ssim_y601_u8"]
    assert list(M.metric_keys("denoise")) == base
    assert list(M.metric_keys("jpeg")) == base + ["psnrb_y601_u8"]
    assert list(M.metric_keys("inpaint")) == base + ["psnr_hole_rgb_u8"]
    with pytest.raises(ValueError):
        M.metric_keys("deblur")


def test_compute_all_values_and_keys():
    clean = load_u8("astronaut_128.png")
    noisy = noisy_u8(clean, 15.0, seed=3)
    r, c = as_float_tensor(noisy), as_float_tensor(clean)
    mask = torch.zeros(1, 128, 128, dtype=torch.bool)
    mask[:, 32:96, 32:96] = True
    for task in M.TASKS:
        out = M.compute_all(r, c, task=task, mask=mask if task == "inpaint" else None)
        assert list(out) == list(M.metric_keys(task))
        assert all(isinstance(v, float) for v in out.values())
    out = M.compute_all(r, c, task="inpaint", mask=mask)
    assert out["psnr_rgb_u8"] == M.psnr(r, c)
    assert out["ssim_y601_u8"] == M.ssim(r, c, channel="y")
    assert out["psnr_hole_rgb_u8"] == M.psnr(r, c, mask=mask)
    assert out["ssim_rgb_u8"] == pytest.approx(np_ssim(noisy, clean), abs=1e-6)
    with pytest.raises(ValueError):
        M.compute_all(r, c, task="inpaint")


def test_compute_all_gray_rgb_keys_equal_y_keys():
    clean = load_u8("camera_128_gray.png")
    comp = jpeg_u8(clean, quality=30)
    out = M.compute_all(as_float_tensor(comp), as_float_tensor(clean), task="jpeg")
    assert out["psnr_rgb_u8"] == out["psnr_y601_u8"]
    assert out["ssim_rgb_u8"] == out["ssim_y601_u8"]


def test_per_image_batch():
    a = torch.stack([as_float_tensor(load_u8(n)) for n in RGB_FILES])
    b = torch.stack([as_float_tensor(noisy_u8(load_u8(n), 10.0, seed=i)) for i, n in enumerate(RGB_FILES)])
    vals = M.per_image(M.psnr, b, a, channel="y")
    assert vals == [M.psnr(b[i], a[i], channel="y") for i in range(3)]
    b[1] = a[1]
    assert M.per_image(M.ssim, b, a)[1] == pytest.approx(1.0)
    mask = torch.ones(3, 1, 128, 128, dtype=torch.bool)
    assert M.per_image(M.psnr, b, a, mask=mask) == M.per_image(M.psnr, b, a)


def test_mean_ignoring_inf():
    res = M.mean_ignoring_inf([30.0, math.inf, 32.0])
    assert res == M.FiniteMean(31.0, 2, 1)
    allinf = M.mean_ignoring_inf([math.inf])
    assert math.isnan(allinf.mean) and allinf.n_inf == 1 and allinf.n_finite == 0
    with pytest.raises(ValueError):
        M.mean_ignoring_inf([1.0, math.nan])
