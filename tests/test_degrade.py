"""Tests for `irae degrade` (irae_cli.testset, irae_cli.degradations, the CLI): layout, determinism, manifest."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from irae_cli import degradations as D
from irae_cli.testset import MANIFEST_NAME, make_test_set, read_manifest
from irae_cli.errors import IraeError
from util import irae as run_irae

DATA = Path(__file__).resolve().parent / "data"


# --------------------------------------------------------------------------- helpers

def irae(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_irae(*args, cwd=cwd, timeout=120)


def tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def u8(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A nested tree: RGB PNG at the top, a grayscale PNG one level down, a JPEG two levels down."""
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(DATA / "astronaut_128.png", root / "astronaut.png")
    shutil.copy(DATA / "camera_128_gray.png", root / "sub" / "camera.png")
    Image.open(DATA / "coffee_128.png").convert("RGB").save(root / "sub" / "deeper" / "coffee.jpg", quality=90)
    return root


# --------------------------------------------------------------------------- the "Done when" command

@pytest.mark.slow
def test_done_when_nested_tree_identical_bytes_any_worker_count(photos: Path, tmp_path: Path):
    before = tree(photos)
    args = ["degrade", "--task", "denoise", "--sigma", "15,25,50", "--seed", "0"]
    r1 = irae(*args, "photos/", "set/", cwd=tmp_path)
    assert r1.returncode == 0, r1.stderr
    r2 = irae(*args, "-j", "1", "photos/", "set2/", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr

    out = tmp_path / "set"
    rels = ["astronaut", "sub/camera", "sub/deeper/coffee"]
    for rel in rels:
        assert (out / "clean" / f"{rel}.png").is_file()
        for level in ("sigma15", "sigma25", "sigma50"):
            assert (out / level / f"{rel}.png").is_file()
    entries = read_manifest(out / MANIFEST_NAME, verify=True)
    assert len(entries) == 9 == len((out / MANIFEST_NAME).read_text().splitlines())
    assert [e["id"] for e in entries] == sorted(f"{lv}/{r}" for lv in ("sigma15", "sigma25", "sigma50") for r in rels)

    # Second run with another worker count: every byte identical, manifest included.
    assert tree(out) == tree(tmp_path / "set2")
    # A third run in-process with three workers agrees too.
    make_test_set(photos, tmp_path / "set3", task="denoise", sigma=[(15, 15), (25, 25), (50, 50)], seed=0, workers=3)
    assert tree(out) == tree(tmp_path / "set3")
    # Another seed changes the noise but not the clean copies.
    make_test_set(photos, tmp_path / "seed1", task="denoise", sigma=[(25, 25)], seed=1)
    assert sha(tmp_path / "seed1/sigma25/astronaut.png") != sha(out / "sigma25/astronaut.png")
    assert sha(tmp_path / "seed1/clean/astronaut.png") == sha(out / "clean/astronaut.png")
    assert tree(photos) == before


def test_outputs_do_not_depend_on_which_files_are_in_the_run(photos: Path, tmp_path: Path):
    make_test_set(photos, tmp_path / "all", task="denoise", sigma=[(25, 25)])
    make_test_set(photos, tmp_path / "one", task="denoise", sigma=[(25, 25)], include=["sub/camera.png"])
    assert sha(tmp_path / "one/sigma25/sub/camera.png") == sha(tmp_path / "all/sigma25/sub/camera.png")
    assert read_manifest(tmp_path / "one")[0]["seed"] == next(
        e["seed"] for e in read_manifest(tmp_path / "all") if e["source"] == "sub/camera.png")


# --------------------------------------------------------------------------- noise

def _flat_grey(path: Path, size: int = 256) -> None:
    Image.new("RGB", (size, size), (128, 128, 128)).save(path)


def test_noise_std_float_protocol_fixed_and_blind(tmp_path: Path):
    src = tmp_path / "grey"
    src.mkdir()
    _flat_grey(src / "a.png")
    _flat_grey(src / "b.png")
    res = make_test_set(src, tmp_path / "out", task="denoise", sigma=[(25, 25), (5, 55)], noise_protocol="float")
    assert not res.failures
    clean = u8(tmp_path / "out/clean/a.png").astype(np.float64).transpose(2, 0, 1) / 255.0
    for e in read_manifest(tmp_path / "out", verify=True):
        arr = np.load(tmp_path / "out" / e["degraded"], allow_pickle=False)
        assert arr.dtype == np.float32 and arr.shape == (3, 256, 256)
        noise = (arr.astype(np.float64) - clean) * 255.0
        sigma = e["params"]["sigma"]
        if e["level"] == "sigma25":
            assert sigma == 25.0
        else:
            assert 5 <= sigma <= 55 and e["params"]["sigma_range"] == [5.0, 55.0]
        assert abs(noise.std() - sigma) <= 0.02 * sigma, (e["id"], noise.std(), sigma)
        assert abs(noise.mean()) < 0.05 * sigma
    # Blind draws are per image: the two images got different sigmas.
    blind = [e["params"]["sigma"] for e in read_manifest(tmp_path / "out") if e["level"] == "sigma5-55"]
    assert len(set(blind)) == 2


def test_float_protocol_is_unclipped_and_clip_protocol_is_8bit(tmp_path: Path):
    src = tmp_path / "white"
    src.mkdir()
    Image.new("L", (64, 64), 255).save(src / "w.png")
    make_test_set(src, tmp_path / "f", task="denoise", sigma=[(50, 50)], noise_protocol="float")
    make_test_set(src, tmp_path / "c", task="denoise", sigma=[(50, 50)])
    arr = np.load(tmp_path / "f/sigma50/w.npy")
    assert arr.shape == (1, 64, 64) and arr.max() > 1.1  # noise above white survives
    png = Image.open(tmp_path / "c/sigma50/w.png")
    assert png.mode == "L" and u8(tmp_path / "c/sigma50/w.png").max() == 255  # grayscale stays grayscale, clipped


# --------------------------------------------------------------------------- JPEG

def _reference_tables(img: Image.Image, quality: int) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).quantization


@pytest.mark.parametrize("subsampling, code", [(None, 2), ("4:4:4", 0)])
def test_jpeg_outputs_are_real_jpeg_at_the_asked_quality(photos: Path, tmp_path: Path, subsampling, code):
    out = tmp_path / "out"
    make_test_set(photos, out, task="jpeg", quality=[10, 40], subsampling=subsampling)
    entries = read_manifest(out, verify=True)
    assert len(entries) == 6
    for e in entries:
        path = out / e["degraded"]
        assert path.suffix == ".jpg"
        img = Image.open(path)
        assert img.format == "JPEG"
        clean = Image.open(out / e["clean"])
        assert img.size == clean.size and img.mode == clean.mode
        q = e["params"]["quality"]
        assert img.quantization == _reference_tables(clean, q)
        assert img.quantization != _reference_tables(clean, 50 if q != 50 else 60)
        if img.mode == "RGB":
            assert JpegImagePlugin.get_sampling(img) == code
            assert e["params"]["subsampling"] == (subsampling or "4:2:0")
        else:
            assert e["params"]["subsampling"] is None


def test_double_jpeg_differs_from_single_and_keeps_last_quality(photos: Path, tmp_path: Path):
    make_test_set(photos, tmp_path / "single", task="jpeg", quality=[30])
    make_test_set(photos, tmp_path / "double", task="jpeg", quality=[30], double_quality=60)
    single, double = tmp_path / "single/q30/astronaut.jpg", tmp_path / "double/q30-dq60/astronaut.jpg"
    assert Image.open(double).quantization == Image.open(single).quantization
    assert not np.array_equal(u8(single), u8(double))
    assert read_manifest(tmp_path / "double")[0]["params"]["double_quality"] == 60


# --------------------------------------------------------------------------- inpainting masks

def test_masks_hole_ratio_in_range_for_each_kind(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    res = make_test_set(photos, out, task="inpaint", masks=["box", "boxes", "strokes"],
                        hole_bins=[(0.1, 0.2), (0.3, 0.4)])
    assert not res.failures
    entries = read_manifest(out, verify=True)
    assert len(entries) == 3 * 3 * 2
    assert {e["level"] for e in entries} == {f"{k}-{b}" for k in ("box", "boxes", "strokes")
                                           for b in ("10-20", "30-40")}
    for e in entries:
        mask_img = Image.open(out / e["mask"])
        assert mask_img.mode == "L" and e["mask"].startswith(f"masks/{e['level']}/")
        m = np.asarray(mask_img)
        assert set(np.unique(m)) <= {0, 255}
        ratio = (m == 255).mean()
        lo, hi = e["params"]["hole_range"]
        assert lo <= ratio <= hi, (e["id"], ratio)
        assert ratio == pytest.approx(e["params"]["hole_ratio"])
        holed, clean = u8(out / e["degraded"]), u8(out / e["clean"])
        hole = m == 255
        assert e["params"]["fill_u8"] == 128 and (holed[hole] == 128).all()
        assert np.array_equal(holed[~hole], clean[~hole])  # pairs pixel for pixel outside the holes


def test_mask_in_range_is_a_function_of_the_seed():
    a = D.mask_in_range("boxes", 64, 96, D.generator_for(3, "x"), (0.2, 0.25))
    b = D.mask_in_range("boxes", 64, 96, D.generator_for(3, "x"), (0.2, 0.25))
    assert a.shape == (1, 64, 96) and bool((a == b).all()) and 0.2 <= a.float().mean() <= 0.25
    with pytest.raises(ValueError, match="widen the range"):
        D.mask_in_range("box", 4, 4, D.generator_for(0), (0.3, 0.31), tries=5)


def test_exif_rotated_input_is_stored_upright(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.open(DATA / "chelsea_128.png").convert("RGB").crop((0, 0, 128, 96)).save(
        src / "rotated.jpg", quality=95, exif=exif.tobytes())
    make_test_set(src, tmp_path / "out", task="jpeg", quality=[50])
    assert Image.open(tmp_path / "out/clean/rotated.png").size == (96, 128)
    assert Image.open(tmp_path / "out/q50/rotated.jpg").size == (96, 128)


def test_clean_pairs_with_rotated_16bit_and_alpha_inputs(tmp_path: Path):
    src = tmp_path / "odd"
    src.mkdir()
    rgb = Image.open(DATA / "chelsea_128.png").convert("RGB").crop((0, 0, 128, 96))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    rgb.save(src / "rotated.jpg", quality=95, exif=exif.tobytes())
    gray16 = (np.asarray(Image.open(DATA / "camera_128_gray.png").convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(gray16).save(src / "deep.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(100)
    rgba.save(src / "alpha.png")
    shutil.copy(DATA / "coffee_128.png", src / "plain.png")

    out = tmp_path / "out"
    res = make_test_set(src, out, task="inpaint", masks=["box"], hole_ratio=(0.1, 0.3))
    assert not res.failures
    assert Image.open(out / "clean/deep.png").mode == "L"  # rounded to 8 bits like the degraded file
    assert Image.open(out / "clean/alpha.png").mode == "RGB"  # colour planes only
    assert sha(out / "clean/plain.png") == sha(src / "plain.png")  # an 8-bit PNG is copied byte for byte
    for e in read_manifest(out, verify=True):
        holed, clean = u8(out / e["degraded"]), u8(out / e["clean"])
        assert holed.shape == clean.shape
        keep = u8(out / e["mask"]) == 0
        assert np.array_equal(holed[keep], clean[keep]), e["id"]


# --------------------------------------------------------------------------- manifest

def test_manifest_round_trip_and_validation(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    make_test_set(photos, out, task="inpaint", masks=["strokes"], seed=7)
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    entries = read_manifest(out, verify=True)
    assert [json.loads(line) for line in lines] == entries
    for e in entries:
        assert e["task"] == "inpaint" and e["base_seed"] == 7 and e["seed"] == D.derive_seed(7, e["source"], e["level"])
        assert e["clean_sha256"] == sha(out / e["clean"])
        assert e["degraded_sha256"] == sha(out / e["degraded"])
        assert e["mask_sha256"] == sha(out / e["mask"])
        assert {"irae", "torch", "pillow", "numpy", "libjpeg", "zlib"} <= set(e["versions"])
        assert e["params"]["fill"] == 0.5 and e["params"]["mask"] == "strokes"
        assert (e["width"], e["height"]) == Image.open(out / e["clean"]).size

    # A changed file fails verification, not plain reading.
    (out / entries[0]["degraded"]).write_bytes(b"changed")
    assert len(read_manifest(out)) == len(entries)
    with pytest.raises(IraeError, match="sha256"):
        read_manifest(out, verify=True)

    bad = tmp_path / "bad.jsonl"
    for text, message in [
        (lines[0] + "\n{not json\n", ":2: not JSON"),
        (lines[0] + "\n" + lines[0] + "\n", "duplicate id"),
        (json.dumps({**entries[0], "degraded": "../x.png"}), "relative path"),
        (json.dumps({**entries[0], "mask": None}), "needs mask"),
        (json.dumps({k: v for k, v in entries[0].items() if k != "seed"}), "'seed'"),
        (json.dumps({**entries[0], "manifest_version": 99}), "newer"),
    ]:
        bad.write_text(text)
        with pytest.raises(IraeError, match=message):
            read_manifest(bad)
    with pytest.raises(IraeError, match="no manifest"):
        read_manifest(tmp_path / "nowhere")


# --------------------------------------------------------------------------- bad inputs and refusals

@pytest.mark.slow
def test_bad_inputs_reported_rest_processed_exit_1(photos: Path, tmp_path: Path):
    (photos / "empty.png").write_bytes(b"")
    (photos / "sub" / "notes.png").write_text("not an image\n")
    before = tree(photos)
    r = irae("degrade", "-t", "jpeg", "--quality", "20", "photos", "out", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("irae: error:")]
    assert len(errors) == 2
    assert any("empty.png" in line and "empty" in line for line in errors)
    assert any("notes.png" in line for line in errors)
    entries = read_manifest(tmp_path / "out", verify=True)
    assert sorted(e["source"] for e in entries) == ["astronaut.png", "sub/camera.png", "sub/deeper/coffee.jpg"]
    assert tree(photos) == before


@pytest.mark.slow
def test_refuses_non_empty_out_and_out_inside_clean(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    r = irae("degrade", "-t", "denoise", "photos", "out", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "not empty" in r.stderr
    assert tree(out) == {"mine.txt": sha(out / "mine.txt")}

    before = tree(photos)
    r = irae("degrade", "-t", "denoise", "photos", "photos/set", cwd=tmp_path)
    assert r.returncode == 2 and "inside the clean folder" in r.stderr
    assert tree(photos) == before and not (photos / "set").exists()


def test_usage_errors_write_nothing(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    for kwargs, message in [
        ({"task": "jpeg", "sigma": [(25, 25)]}, "cannot be used with --task jpeg"),
        ({"task": "denoise", "noise_protocol": "int"}, "--noise-protocol"),
        ({"task": "jpeg", "quality": [0]}, "outside 1-100"),
        ({"task": "jpeg", "subsampling": "4:1:1"}, "--subsampling"),
        ({"task": "inpaint", "masks": ["circle"]}, "--mask"),
        ({"task": "inpaint", "hole_ratio": (10, 30)}, "fractions"),
        ({"task": "inpaint", "hole_ratio": (0.1, 0.2), "hole_bins": [(0.1, 0.2)]}, "not both"),
        ({"task": "denoise", "overwrite": True, "skip_existing": True}, "not both"),
        ({"task": "blur"}, "unknown task"),
    ]:
        with pytest.raises(IraeError, match=message):
            make_test_set(photos, out, **kwargs)
    with pytest.raises(IraeError, match="no such file"):
        make_test_set(tmp_path / "missing", out, task="denoise")
    with pytest.raises(IraeError, match="inside the output folder"):
        make_test_set(photos, tmp_path, task="denoise", overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IraeError, match="no images found"):
        make_test_set(empty, out, task="denoise")
    assert not out.exists()


def test_name_collision_refused(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(DATA / "coffee_128.png", src / "a.png")
    Image.open(DATA / "coffee_128.png").save(src / "a.jpg")
    with pytest.raises(IraeError, match="a.jpg and a.png would both be written as clean/a.png"):
        make_test_set(src, tmp_path / "out", task="denoise")
    res = make_test_set(src, tmp_path / "out", task="denoise", exclude=["*.jpg"], sigma=[(10, 10)])
    assert [e["source"] for e in res.records] == ["a.png"]


def test_skip_existing_keeps_identical_and_rejects_different(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    first = make_test_set(photos, out, task="denoise", sigma=[(25, 25)])
    snapshot = tree(out)
    (out / "sigma25/astronaut.png").unlink()  # as if interrupted
    (out / MANIFEST_NAME).unlink()
    again = make_test_set(photos, out, task="denoise", sigma=[(25, 25)], skip_existing=True)
    assert again.written == 1 and again.kept == first.written - 1 and not again.failures
    assert tree(out) == snapshot

    other = make_test_set(photos, out, task="denoise", sigma=[(25, 25)], seed=5, skip_existing=True)
    assert len(other.failures) == 3 and all("different content" in f for f in other.failures)
    assert tree(out)["sigma25/astronaut.png"] == snapshot["sigma25/astronaut.png"]
    assert read_manifest(out, verify=True) == first.records  # the refused run keeps the set described

    over = make_test_set(photos, out, task="denoise", sigma=[(25, 25)], seed=5, overwrite=True)
    assert not over.failures and tree(out)["sigma25/astronaut.png"] != snapshot["sigma25/astronaut.png"]
    assert read_manifest(out, verify=True)[0]["base_seed"] == 5


def test_adding_a_level_keeps_earlier_manifest_lines(photos: Path, tmp_path: Path):
    out = tmp_path / "out"
    make_test_set(photos, out, task="denoise", sigma=[(15, 15)])
    res = make_test_set(photos, out, task="denoise", sigma=[(50, 50)], skip_existing=True)
    assert res.carried == 3
    assert sorted({e["level"] for e in read_manifest(out, verify=True)}) == ["sigma15", "sigma50"]
    (out / "sigma15/astronaut.png").write_bytes(b"edited by hand")
    res = make_test_set(photos, out, task="denoise", sigma=[(50, 50)], skip_existing=True)
    assert res.carried == 2 and "sigma15/astronaut" not in {e["id"] for e in read_manifest(out, verify=True)}
    (out / MANIFEST_NAME).write_text("garbage\n")
    with pytest.raises(IraeError, match="move the old manifest away"):
        make_test_set(photos, out, task="denoise", sigma=[(50, 50)], skip_existing=True)


def test_single_file_input_and_dry_run(tmp_path: Path):
    res = make_test_set(DATA / "coffee_128.png", tmp_path / "plan", task="jpeg", dry_run=True)
    assert [lv.name for lv in res.levels] == ["q10", "q20", "q30", "q40"] and len(res.sources) == 1
    assert not (tmp_path / "plan").exists()
    make_test_set(DATA / "coffee_128.png", tmp_path / "one", task="jpeg", quality=[20])
    assert sorted(tree(tmp_path / "one")) == ["clean/coffee_128.png", "manifest.jsonl", "q20/coffee_128.jpg"]


def test_jpeg_quality_is_read_back_from_the_files_tables():
    import io

    from PIL import Image

    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    for q in range(1, 101):
        for sub in (0, 2):
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=q, subsampling=sub)
            assert D.estimate_quality(Image.open(io.BytesIO(buf.getvalue()))) == q
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert D.estimate_quality(Image.open(io.BytesIO(buf.getvalue()))) is None


def test_reading_a_jpeg_reports_its_quality_with_its_pixels(tmp_path):
    """Restore's quality limit comes from the one read of the file, also when it is named .png."""
    from PIL import Image

    from irae_cli.imageio import read_image

    arr = (np.random.default_rng(0).random((24, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=37)
    Image.fromarray(arr).save(tmp_path / "b.png", "JPEG", quality=85)
    Image.fromarray(arr).save(tmp_path / "c.png")
    assert [read_image(tmp_path / n)[1].jpeg_quality for n in ("a.jpg", "b.png", "c.png")] == [37, 85, None]
