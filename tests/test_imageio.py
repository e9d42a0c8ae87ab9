"""Image I/O: bad files give one-line errors, and what the file was (mode, depth, alpha, ICC, EXIF) survives."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from irae_cli.errors import ImageError
from irae_cli.imageio import image_size, read_image
from irae_cli.imagewrite import encode_image, encode_png16, output_suffix, write_image
from irae_cli.maskio import find_mask, mask_from_alpha, read_mask
from irae_cli.files import atomic_write_bytes, discover

DATA = Path(__file__).parent / "data"
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def rgb(h=45, w=67, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, w=100_000, h=100_000) -> None:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
                     + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def make_bad(kind: str, d: Path) -> Path:
    good = Image.fromarray(rgb())
    if kind == "empty":
        p = d / "empty.png"
        p.write_bytes(b"")
    elif kind == "truncated_jpeg":
        buf = io.BytesIO()
        good.save(buf, "JPEG", quality=90)
        p = d / "cut_jpeg.jpg"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "truncated_png":
        buf = io.BytesIO()
        good.save(buf, "PNG")
        p = d / "cut_png.png"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "text_as_jpeg":
        p = d / "notes.jpg"
        p.write_text("this is not an image\n")
    elif kind == "bomb":
        p = d / "bomb.png"
        bomb_png(p)
    elif kind == "dangling_link":
        p = d / "gone.png"
        p.symlink_to(d / "does-not-exist.png")
    else:
        raise AssertionError(kind)
    return p


BAD_KINDS = ["empty", "truncated_jpeg", "truncated_png", "text_as_jpeg", "bomb", "dangling_link"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_file_is_one_line_error_naming_it(kind, tmp_path):
    p = make_bad(kind, tmp_path)
    with pytest.raises(ImageError) as e:
        read_image(p)
    msg = str(e.value)
    assert str(p) in msg and "\n" not in msg


def test_bomb_message_says_so(tmp_path):
    p = make_bad("bomb", tmp_path)
    with pytest.raises(ImageError, match="decompression bomb"):
        read_image(p)


@pytest.mark.skipif(ROOT, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.png"
    Image.fromarray(rgb()).save(p)
    p.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            read_image(p)
    finally:
        p.chmod(0o644)


def test_odd_and_tiny_sizes_round_trip(tmp_path):
    for h, w in [(45, 67), (1, 1)]:
        arr = rgb(h, w)
        p = tmp_path / f"{w}x{h}.png"
        Image.fromarray(arr).save(p)
        x, meta = read_image(p)
        assert x.shape == (3, h, w) and meta.bits == 8
        out = tmp_path / f"out_{w}x{h}.png"
        write_image(out, x, meta)
        assert np.array_equal(np.asarray(Image.open(out)), arr)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb()).convert("CMYK").save(p, quality=95)
    x, meta = read_image(p)
    assert x.shape[0] == 3 and meta.mode == "RGB"
    data = encode_image(x, meta, ".png")
    assert Image.open(io.BytesIO(data)).mode == "RGB"


def test_palette_with_transparency_keeps_alpha(tmp_path):
    img = Image.fromarray(rgb()).quantize(16)
    p = tmp_path / "pal.png"
    img.save(p, transparency=3)
    x, meta = read_image(p)
    assert x.shape[0] == 3 and meta.alpha is not None
    expected_alpha = np.where(np.asarray(img) == 3, 0, 255)
    assert np.array_equal(meta.alpha, expected_alpha)
    out = tmp_path / "out.png"
    write_image(out, x, meta)
    back = Image.open(out)
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[..., 3], expected_alpha)


def test_la_stays_gray_with_alpha(tmp_path):
    gray = rgb()[..., 0]
    alpha = rgb(seed=1)[..., 1]
    p = tmp_path / "la.png"
    Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)]).save(p)
    x, meta = read_image(p)
    assert x.shape[0] == 1 and meta.gray
    out = tmp_path / "out.png"
    write_image(out, x, meta)
    back = Image.open(out)
    assert back.mode == "LA"
    assert np.array_equal(np.asarray(back)[..., 1], alpha)
    assert np.array_equal(np.asarray(back)[..., 0], gray)


def test_16bit_gray_stays_16bit(tmp_path):
    arr = np.random.default_rng(0).integers(0, 65536, (45, 67), dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(arr).save(p)
    x, meta = read_image(p)
    assert meta.bits == 16 and x.shape == (1, 45, 67)
    out = tmp_path / "out.png"
    write_image(out, x, meta)
    back = Image.open(out)
    assert back.mode == "I;16" and np.array_equal(np.asarray(back), arr)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_16bit_rgba_png_stays_16bit(tmp_path):
    import torchvision.io as tio

    arr = np.random.default_rng(0).integers(0, 65536, (45, 67, 4), dtype=np.uint16)
    p = tmp_path / "rgba16.png"
    p.write_bytes(encode_png16(arr))
    x, meta = read_image(p)
    assert meta.bits == 16 and x.shape == (3, 45, 67) and meta.alpha.dtype == np.uint16
    assert np.array_equal(np.round(x.numpy() * 65535).astype(np.uint16).transpose(1, 2, 0), arr[..., :3])
    out = tmp_path / "out.png"
    write_image(out, x, meta)
    back = tio.decode_png(tio.read_file(str(out)), mode=tio.ImageReadMode.UNCHANGED)
    assert back.dtype == torch.uint16
    assert np.array_equal(back.permute(1, 2, 0).numpy(), arr)
    # A JPEG of the same image is 8-bit RGB without alpha, not an error.
    assert Image.open(io.BytesIO(encode_image(x, meta, ".jpg"))).mode == "RGB"


def test_icc_and_exif_are_copied_and_orientation_applied(tmp_path):
    arr = rgb(40, 60)
    img = Image.fromarray(arr)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = img.getexif()
    exif[0x010F] = "irae-test-camera"  # Make
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    p = tmp_path / "photo.jpg"
    img.save(p, quality=95, icc_profile=icc, exif=exif.tobytes())
    x, meta = read_image(p)
    assert x.shape == (3, 60, 40)  # upright
    assert image_size(p) == (3, 60, 40)
    for suffix in (".png", ".jpg", ".webp", ".tif"):
        out = tmp_path / f"out{suffix}"
        write_image(out, x, meta)
        back = Image.open(out)
        assert back.size == (40, 60)
        assert back.info.get("icc_profile") == icc, suffix
        back_exif = back.getexif()
        assert back_exif.get(0x010F) == "irae-test-camera", suffix
        assert back_exif.get(0x0112, 1) == 1, suffix  # pixels are upright, so no rotation tag


def test_mismatched_icc_is_dropped(tmp_path):
    x = torch.rand(1, 8, 8)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _, meta = read_image(DATA / "camera_128_gray.png")
    meta.icc_profile = icc  # an RGB profile cannot describe gray pixels
    assert "icc_profile" not in Image.open(io.BytesIO(encode_image(x, meta, ".png"))).info


def test_masks(tmp_path):
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    m = np.zeros((45, 67), np.uint8)
    m[10:20, 5:30] = 255
    m[0, 0] = 127  # below half: known
    Image.fromarray(m).save(tmp_path / "masks" / "sub" / "a.bmp")
    found = find_mask(tmp_path / "masks", Path("sub/a.jpg"))
    assert found == tmp_path / "masks" / "sub" / "a.bmp"
    assert find_mask(tmp_path / "masks", Path("sub/missing.png")) is None
    mask = read_mask(found, (45, 67))
    assert mask.shape == (1, 45, 67) and mask.dtype == torch.bool
    assert int(mask.sum()) == 250 and not mask[0, 0, 0]
    with pytest.raises(ImageError, match="mask is 67x45 but .*a.jpg is 60x40"):
        read_mask(found, (40, 60), image="sub/a.jpg")


def test_mask_from_alpha(tmp_path):
    a = np.full((45, 67), 255, np.uint8)
    a[:5] = 0
    p = tmp_path / "holes.png"
    Image.fromarray(np.dstack([rgb(), a])).save(p)
    _, meta = read_image(p)
    assert int(mask_from_alpha(meta, p).sum()) == 5 * 67
    _, opaque = read_image(DATA / "coffee_128.png")
    with pytest.raises(ImageError, match="no alpha channel"):
        mask_from_alpha(opaque, "coffee")


def test_atomic_write_never_overwrites_and_reports_unwritable(tmp_path):
    p = tmp_path / "a.png"
    atomic_write_bytes(p, b"one")
    with pytest.raises(ImageError, match="already exists"):
        atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"one"
    atomic_write_bytes(p, b"two", overwrite=True)
    assert p.read_bytes() == b"two"
    (tmp_path / "blocker").write_text("a file where a folder should be")
    with pytest.raises(ImageError, match="blocker") as e:
        atomic_write_bytes(tmp_path / "blocker" / "x.png", b"x", overwrite=True)
    assert "in the way" in str(e.value) and "--overwrite" not in str(e.value)  # not "refusing to overwrite"
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.png", "blocker"]  # no temp files left


def test_discover_skips_output_folder_and_survives_symlink_loops(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "out").mkdir()
    for rel in ["a.png", "sub/b.jpg", "out/old.png", "sub/notes.txt"]:
        (root / rel).write_bytes(b"x")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    found = [s.rel.as_posix() for s in discover(root, recursive=True, skip=[root / "out"])]
    assert found == ["a.png", "sub/b.jpg"]
    assert [s.rel.as_posix() for s in discover(root, recursive=True, include=["*.jpg"],
                                               skip=[root / "out"])] == ["sub/b.jpg"]
    assert [s.rel.as_posix() for s in discover(root, recursive=True, exclude=["sub/*"],
                                               skip=[root / "out"])] == ["a.png"]


def test_output_suffix():
    assert output_suffix(".JPG", "same") == ".JPG"
    assert output_suffix(".gif", "same") == ".png"
    assert output_suffix(".png", "jpg") == ".jpg"
    assert output_suffix(".png", "tiff") == ".tif"
