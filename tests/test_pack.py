"""Training packs (irae_cli.pack): build, reload, determinism, size limit, bad files."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from irae_cli import __version__
from irae_cli.pack import PackError, build_pack, load_pack

DATA = Path(__file__).parent / "data"
IMAGES = sorted(DATA.glob("*.png"))  # three RGB photos + one grayscale
CROP = 64
PER_CROP = 3 * CROP * CROP


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    out = tmp_path_factory.mktemp("pack") / "tiny.safetensors"
    info = build_pack(IMAGES, out, crop=CROP, crops_per_mp=200, seed=3)
    return out, info


def test_images_present():
    assert len(IMAGES) == 4
    assert any(Image.open(p).mode == "L" for p in IMAGES)


def test_build_and_reload(pack):
    out, info = pack
    crops, meta = load_pack(out)
    assert crops.dtype == torch.uint8 and crops.shape == (info["count"], 3, CROP, CROP)
    assert info["count"] == meta["count"] == 12  # round(200 crops/MP * 0.0164 MP) = 3 per image
    assert info["bytes"] == out.stat().st_size
    assert meta["format"] == "irae-pack" and meta["format_version"] == 1
    assert meta["crop"] == CROP and meta["seed"] == 3
    assert meta["sources"] == [p.name for p in sorted(IMAGES, key=lambda p: p.name)]
    assert meta["created_by"] == f"irae {__version__}"
    assert sum(info["per_source"].values()) == info["count"]
    assert set(info["per_source"]) == set(meta["sources"])


def test_crops_are_exact_pixels_of_their_sources(pack):
    out, _ = pack
    crops, meta = load_pack(out)
    origin = meta["origin"]
    assert origin.shape == (crops.shape[0], 3)
    for crop, (i, y, x) in zip(crops, origin.tolist()):
        src = _rgb(DATA / meta["sources"][i])
        expect = torch.from_numpy(src[y:y + CROP, x:x + CROP].copy()).permute(2, 0, 1)
        assert torch.equal(crop, expect)


def test_grayscale_source_becomes_rgb(pack):
    out, _ = pack
    crops, meta = load_pack(out)
    gray = meta["sources"].index("camera_128_gray.png")
    sel = crops[meta["origin"][:, 0] == gray]
    assert len(sel) > 0
    assert torch.equal(sel[:, 0], sel[:, 1]) and torch.equal(sel[:, 1], sel[:, 2])


def test_flat_crops_rejected(pack):
    crops, _ = load_pack(pack[0])
    std = crops.float().flatten(2).std(dim=2).amax(dim=1)  # largest per-channel std per crop
    assert (std >= 2.0).all()


def test_flat_source_skipped(tmp_path):
    flat = tmp_path / "flat.png"
    Image.new("RGB", (128, 128), (90, 91, 90)).save(flat)
    with pytest.raises(PackError, match="flat"):
        build_pack([flat], tmp_path / "p.safetensors", crop=CROP)
    info = build_pack([flat, IMAGES[0]], tmp_path / "p.safetensors", crop=CROP, crops_per_mp=200)
    assert info["per_source"]["flat.png"] == 0 and info["short"] > 0 and info["rejected_flat"] > 0
    assert info["count"] == info["per_source"][IMAGES[0].name] > 0


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a, b, c = (tmp_path / f"{n}.safetensors" for n in "abc")
    build_pack(IMAGES, a, crop=CROP, seed=7)
    build_pack(list(reversed(IMAGES)), b, crop=CROP, seed=7)  # input order does not matter
    build_pack(IMAGES, c, crop=CROP, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_max_bytes_respected_and_tight(tmp_path):
    out = tmp_path / "p.safetensors"
    full = build_pack(IMAGES, out, crop=CROP, crops_per_mp=500)
    assert not full["limited_by_max_bytes"]
    for limit in (full["bytes"] - 1, 5 * PER_CROP + 700, 2 * PER_CROP + 600):
        info = build_pack(IMAGES, out, crop=CROP, crops_per_mp=500, max_bytes=limit)
        size = out.stat().st_size
        assert size == info["bytes"] <= limit
        assert limit - size < PER_CROP + 12  # one more crop would not have fitted
        assert info["limited_by_max_bytes"]
        crops, meta = load_pack(out)
        assert len(crops) == meta["count"] == info["count"]
    # the size limit keeps the shares balanced (equal-size sources: equal counts)
    info = build_pack(IMAGES, out, crop=CROP, crops_per_mp=500, max_bytes=8 * (PER_CROP + 12) + 1000)
    assert info["count"] == 8 and set(info["per_source"].values()) == {2}


def test_truncated_pack_is_a_prefix(tmp_path):
    """Cutting a pack by max_bytes keeps the first crops of the full pack."""
    full, small = tmp_path / "full.safetensors", tmp_path / "small.safetensors"
    build_pack(IMAGES, full, crop=CROP, crops_per_mp=500)
    build_pack(IMAGES, small, crop=CROP, crops_per_mp=500, max_bytes=6 * PER_CROP + 1000)
    a, _ = load_pack(full)
    b, _ = load_pack(small)
    assert torch.equal(a[:len(b)], b)


def test_max_bytes_too_small(tmp_path):
    with pytest.raises(PackError, match="too small"):
        build_pack(IMAGES, tmp_path / "p.safetensors", crop=CROP, max_bytes=PER_CROP)
    assert not (tmp_path / "p.safetensors").exists()


def test_small_images_skipped(tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(tiny)
    info = build_pack([*IMAGES, tiny], tmp_path / "p.safetensors", crop=CROP, crops_per_mp=100)
    assert info["skipped_small"] == ["tiny.png"] and "tiny.png" not in info["sources"]
    with pytest.raises(PackError, match="at least 200x200"):
        build_pack(IMAGES, tmp_path / "p.safetensors", crop=200)


def _one_line(e: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert isinstance(e.value, ValueError)
    return msg


def test_missing_file(tmp_path):
    p = tmp_path / "nope.safetensors"
    with pytest.raises(ValueError) as e:
        load_pack(p)
    assert "no such" in _one_line(e, p)


def test_folder(tmp_path):
    with pytest.raises(ValueError) as e:
        load_pack(tmp_path)
    assert "folder" in _one_line(e, tmp_path)


@pytest.mark.parametrize("content", [b"", b"abc", b"hello, this is not a pack at all" * 4,
                                     struct.pack("<Q", 5) + b"{oops"])
def test_not_a_pack(tmp_path, content):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_pack(p)
    assert "not a training pack" in _one_line(e, p)


def test_other_safetensors_is_not_a_pack(tmp_path):
    p = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(p), metadata={"format": "irae-weights"})
    with pytest.raises(ValueError) as e:
        load_pack(p)
    assert "not a training pack" in _one_line(e, p)
    save_file({"crops": torch.zeros(1, 3, 4, 4, dtype=torch.uint8)}, str(p),
              metadata={"irae_pack": json.dumps({"format": "something-else"})})
    with pytest.raises(ValueError) as e:
        load_pack(p)
    assert "not a training pack" in _one_line(e, p)


def test_inconsistent_pack(tmp_path):
    p = tmp_path / "odd.safetensors"
    meta = {"format": "irae-pack", "format_version": 1, "crop": 8, "count": 2}
    save_file({"crops": torch.zeros(3, 3, 8, 8, dtype=torch.uint8)}, str(p),
              metadata={"irae_pack": json.dumps(meta)})
    with pytest.raises(ValueError) as e:
        load_pack(p)
    assert "does not match" in _one_line(e, p)


@pytest.mark.parametrize("keep", [0.5, 0.99, 12])
def test_truncated(pack, tmp_path, keep):
    data = pack[0].read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[:n])
    with pytest.raises(ValueError) as e:
        load_pack(p)
    assert "truncated" in _one_line(e, p)


def test_same_file_name_in_two_folders_gets_its_own_crops(tmp_path):
    """Crop positions are seeded per source, not per file name: a.png in two folders is two sources."""
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        Image.open(IMAGES[0]).save(tmp_path / folder / "a.png")
    info = build_pack([tmp_path / "one" / "a.png", tmp_path / "two" / "a.png"], tmp_path / "p.safetensors",
                      crop=CROP, crops_per_mp=400, seed=0, min_std=0)
    assert info["count"] >= 8
    from safetensors.torch import load_file

    origin = load_file(tmp_path / "p.safetensors")["origin"]
    first = {tuple(r[1:].tolist()) for r in origin if r[0] == 0}
    second = {tuple(r[1:].tolist()) for r in origin if r[0] == 1}
    assert first and second and first != second
