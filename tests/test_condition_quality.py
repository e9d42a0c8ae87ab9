"""A JPEG model conditioned on the quality (``--condition quality``): a bijection at each quality, trained
on the true quality of each patch, and told each file's quality as its quantisation tables hold it."""

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import irae_cli.train as tr
from irae_cli.errors import IraeError
from irae_cli.model import create_model
from irae_cli.model.condition import LEVEL_SCALES
from irae_cli.train.trainer import Trainer
from irae_cli.weights import load_weights, save_weights

from util import irae, randomised, whole_step_graph_breaks

DATA = Path(__file__).parent / "data"
QUALITIES = torch.tensor([10.0, 40.0, 90.0])


def _trained_like(photos: torch.Tensor) -> torch.nn.Module:
    model = create_model("tiny", condition="quality").eval()
    model.initialize(photos, photos, level=QUALITIES)
    return randomised(model, scale=0.02)


def test_the_quality_model_is_a_bijection_at_each_quality_and_uses_it(photos):
    model = _trained_like(photos).double()
    y = photos.double()
    with torch.no_grad():
        restored = model(y, QUALITIES.double())
        back = model.inverse(restored, QUALITIES.double())
        assert float((back - y).norm() / y.norm()) < 1e-10
        other = model(y, torch.full((3,), 70.0, dtype=torch.float64))
        assert float((other - restored).norm() / restored.norm()) > 1e-4
    assert LEVEL_SCALES["quality"] == 100.0  # qualities 1-100 reach the coupling nets as 0.01-1
    with pytest.raises(ValueError, match="the JPEG quality"):
        model(y)


# ------------------------------------------------------------------ training

FAST = {"task": "jpeg", "arch": "tiny", "patch": 16, "batch_size": 4, "condition": "quality"}


def _trainer(tmp_path, photo_folder, given) -> Trainer:
    s = tr.Session(data=photo_folder, out=tmp_path / "w.safetensors", quiet=True, compile="off", dtype="fp32")
    t = Trainer(s, {**FAST, "steps": 50, **given})
    assert t._step()
    return t


def test_training_tells_the_model_each_patch_s_true_quality(tmp_path, photo_folder, monkeypatch):
    t = _trainer(tmp_path, photo_folder, {"inverse_gain": 50.0, "inverse_gain_every": 1, "quality": (20, 30)})
    seen = []
    real = type(t.model).forward

    def spy(model, y, level=None):
        seen.append(level)
        return real(model, y, level)

    monkeypatch.setattr(type(t.model), "forward", spy)
    assert t._step()
    assert len(seen) == 1 and torch.equal(seen[0], t.degrader.last_quality)
    assert t.degrader.last_level is t.degrader.last_quality and t.degrader.last_sigma is None
    assert ((seen[0] >= 20) & (seen[0] <= 30)).all() and seen[0].dtype == torch.float32


def test_the_quality_conditioned_whole_step_is_one_graph(tmp_path, photo_folder):
    assert whole_step_graph_breaks(_trainer(tmp_path, photo_folder, {"inverse_gain": 50.0})) == 0


def test_the_quality_condition_is_for_jpeg_only(tmp_path, photo_folder):
    for given, match in (({"task": "denoise"}, "for --task jpeg"), ({"arch": "cnn-tiny"}, "IRAE preset")):
        with pytest.raises(IraeError, match=match):
            Trainer(tr.Session(data=photo_folder, out=tmp_path / "x.safetensors", quiet=True),
                    {**FAST, "steps": 2, **given})


@pytest.mark.slow
def test_train_and_validate_a_quality_model_at_the_true_quality(tmp_path):
    out = tmp_path / "q.safetensors"
    r = irae("train", "--task", "jpeg", DATA, "--arch", "tiny", "--batch-size", "2", "--patch", "32",
             "--compile", "off", "-q", "--steps", "3", "--condition", "quality", "--val", DATA, "--val-crop", "64",
             "--out", out)
    assert r.returncode == 0, r.stderr
    final = json.loads((tmp_path / "q.log.json").read_text())["val"][-1]["levels"]
    assert set(final) == {"q10", "q20", "q30", "q40"}
    assert all(set(v) == {"psnr_rgb_u8", "input_psnr_rgb_u8"} for v in final.values())
    assert load_weights(out).model.config.condition == "quality"


# ------------------------------------------------------------------ restore, benchmark, export


@pytest.fixture(scope="module")
def quality_weights(tmp_path_factory) -> Path:
    from conftest import load_rgb

    photos = torch.stack([load_rgb(n) for n in ("astronaut_128.png", "coffee_128.png", "chelsea_128.png")])
    path = tmp_path_factory.mktemp("weights") / "quality.safetensors"
    save_weights(_trained_like(photos), path, task="jpeg")
    return path


def _decoded(name: str, quality: int) -> Image.Image:
    return _decoded_image(Image.open(DATA / name), quality)


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory) -> Path:
    """Two JPEGs saved at qualities 20 and 60, a PNG of a JPEG decoded from quality 30 (no header quality,
    the pixels show it) and a PNG never compressed (neither shows one)."""
    root = tmp_path_factory.mktemp("jpegs")
    Image.open(DATA / "astronaut_128.png").convert("RGB").save(root / "a.jpg", quality=20)
    Image.open(DATA / "coffee_128.png").convert("RGB").save(root / "c.jpg", quality=60)
    _decoded("coffee_128.png", 30).save(root / "d.png")
    Image.open(DATA / "chelsea_128.png").convert("RGB").save(root / "p.png")
    return root


# ------------------------------------------------------------------ the quality from the pixels


@pytest.mark.parametrize("name", ["astronaut_128.png", "chelsea_128.png", "camera_128_gray.png"])
def test_the_pixels_of_a_decoded_jpeg_show_its_quality(name):
    from irae_cli.degradations import estimate_quality_from_pixels
    from irae_cli.pixels import from_pil

    for quality in (10, 30, 60, 80):
        estimate = estimate_quality_from_pixels(from_pil(_decoded(name, quality)))
        assert estimate is not None and abs(estimate - quality) <= 1, (quality, estimate)
    assert estimate_quality_from_pixels(from_pil(Image.open(DATA / name))) is None  # never compressed


def test_pixels_that_do_not_show_a_quality_give_none():
    from irae_cli.degradations import estimate_quality_from_pixels
    from irae_cli.pixels import from_pil

    flat = Image.new("RGB", (128, 128), (90, 140, 200))
    assert estimate_quality_from_pixels(from_pil(_decoded_image(flat, 30))) is None  # nothing to tell by
    assert estimate_quality_from_pixels(torch.rand(3, 7, 7)) is None  # no whole block


@pytest.mark.parametrize("top, left", [(3, 5), (0, 1), (7, 0), (0, 0)])
def test_a_crop_of_a_decoded_jpeg_shows_its_quality_and_where_its_blocks_start(top, left):
    from irae_cli.degradations import find_jpeg_grid
    from irae_cli.pixels import from_pil

    # the hard cases are in: at quality 10 a crop's few surviving values fit finer tables too (whose steps
    # divide 10's), and at 80-90 the steps between blocks are too faint to show where they start
    for name, quality in itertools.product(("astronaut_128.png", "chelsea_128.png", "camera_128_gray.png"),
                                           (10, 30, 60, 80, 90)):
        found, grid = find_jpeg_grid(from_pil(_decoded(name, quality))[:, top:, left:])
        assert found is not None and abs(found - quality) <= 1, (name, quality, found)
        assert grid == ((8 - top) % 8, (8 - left) % 8), (name, quality, grid)
    assert find_jpeg_grid(from_pil(Image.open(DATA / "astronaut_128.png"))[:, top:, left:]) == (None, (0, 0))


def _decoded_image(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _report(path: Path) -> dict:
    return {Path(d["input"]).name: d for d in map(json.loads, path.read_text().splitlines())}


def test_restore_tells_the_model_each_file_s_quality_and_fails_a_file_without_one(tmp_path, quality_weights,
                                                                                 jpeg_folder):
    r = irae("restore", "--task", "jpeg", jpeg_folder, tmp_path / "out", "--weights", quality_weights,
             "--backend", "torch", "--report", tmp_path / "r.jsonl")
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if "p.png" in line]
    assert len(lines) == 1 and "neither its header nor its pixels" in lines[0] and "--input-quality" in lines[0]
    blind = irae("restore", "--task", "jpeg", jpeg_folder / "p.png", tmp_path / "blind", "--backend", "torch",
                 "--weights", "irae-jpeg-medium-blind")  # the way out the error names
    assert blind.returncode == 0 and (tmp_path / "blind" / "p.png").is_file(), blind.stderr
    report = _report(tmp_path / "r.jsonl")
    told = {name: (report[name]["model_quality"], report[name]["model_quality_source"])
            for name in ("a.jpg", "c.jpg", "d.png")}
    assert told == {"a.jpg": (20, "header"), "c.jpg": (60, "header"), "d.png": (30, "estimated")}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png", "d.png"]

    r = irae("restore", "--task", "jpeg", jpeg_folder, tmp_path / "given", "--weights", quality_weights,
             "--backend", "torch", "--input-quality", "60", "--report", tmp_path / "g.jsonl")
    assert r.returncode == 0, r.stderr
    given = _report(tmp_path / "g.jsonl")
    assert {d["model_quality"] for d in given.values()} == {60}
    assert {d["model_quality_source"] for d in given.values()} == {"given"}
    a_header = Image.open(tmp_path / "out" / "a.png").tobytes()
    assert a_header != Image.open(tmp_path / "given" / "a.png").tobytes()  # told 60, not 20: another output
    assert Image.open(tmp_path / "out" / "c.png").tobytes() == Image.open(tmp_path / "given" / "c.png").tobytes()


def test_restore_aligns_a_crop_of_a_decoded_jpeg_to_its_blocks(tmp_path, quality_weights):
    # The crop restores as its part of the whole decoded JPEG does: the same quality, found in its pixels,
    # and the blocks at the same place on the model's grid.
    whole, crop = tmp_path / "whole", tmp_path / "crop"
    whole.mkdir(), crop.mkdir()
    decoded = _decoded("coffee_128.png", 20).convert("RGB")
    decoded.save(whole / "w.png")
    decoded.crop((3, 5, 128, 128)).save(crop / "c.png")
    outs = {}
    for folder in (whole, crop):
        r = irae("restore", "--task", "jpeg", folder, tmp_path / f"{folder.name}-out", "--weights", quality_weights,
                 "--backend", "torch", "--dtype", "fp32", "--report", tmp_path / f"{folder.name}.jsonl")
        assert r.returncode == 0, r.stderr
        outs[folder.name] = np.asarray(Image.open(next((tmp_path / f"{folder.name}-out").iterdir())), dtype=int)
    report = _report(tmp_path / "crop.jsonl")["c.png"]
    assert (report["model_quality"], report["jpeg_grid"]) == (20, [3, 5])
    assert "jpeg_grid" not in _report(tmp_path / "whole.jsonl")["w.png"]
    assert outs["crop"].shape == (123, 125, 3)
    inner = np.abs(outs["crop"] - outs["whole"][5:, 3:])[24:-24, 24:-24]
    assert inner.max() <= 1 and (outs["whole"][5:, 3:] != np.asarray(decoded)[5:, 3:]).mean() > 0.1


def test_input_quality_usage_errors_exit_2_before_any_work(tmp_path, quality_weights, jpeg_folder):
    blind = tmp_path / "blind.safetensors"
    from conftest import load_rgb

    photos = torch.stack([load_rgb("astronaut_128.png")])
    model = create_model("tiny").eval()
    model.initialize(photos, photos)
    save_weights(model, blind, task="jpeg")
    for weights, args, match in ((blind, ("--input-quality", "30"), "not conditioned on the JPEG quality"),
                                 (quality_weights, ("--input-quality", "0"), "out of range"),
                                 (quality_weights, ("--input-quality", "101"), "out of range"),
                                 (quality_weights, ("--sigma", "10"), "--task denoise"),
                                 (quality_weights, ("--task", "denoise", "--input-quality", "30"), "--task jpeg")):
        args = args if "--task" in args else ("--task", "jpeg", *args)
        r = irae("restore", jpeg_folder, tmp_path / "out", "--weights", weights, *args)
        assert r.returncode == 2 and match in r.stderr, r.stderr
        assert not (tmp_path / "out").exists()


def test_benchmark_tells_the_model_each_level_s_file_quality(quality_weights, monkeypatch):
    from irae_cli.benchmark.quality import quality
    from irae_cli.inference import Restorer

    seen = []
    real = Restorer.__call__

    def spy(restorer, images, masks=None, levels=None):
        seen.append(levels)
        return real(restorer, images, masks, levels)

    monkeypatch.setattr(Restorer, "__call__", spy)
    result = quality(DATA, task="jpeg", weights=str(quality_weights), qualities=[10, 40], classical="none",
                     device="cpu", backend="torch", dtype="fp32")
    assert result["settings"]["model_quality"] == "read from each file's quantisation tables"
    assert result["models"]["quality"]["condition"] == "quality"
    assert seen and all(torch.equal(s.cpu(), torch.tensor([10.0, 40.0])) for s in seen)
    assert all(torch.isfinite(torch.tensor(row["metrics"]["psnr_rgb_u8"])) for row in result["results"])


def test_the_round_trip_of_a_quality_model_passes(quality_weights):
    from irae_cli.benchmark.invertibility import invertibility

    result = invertibility(weights=str(quality_weights), images=DATA, dtype="fp64", device="cpu")
    assert result["summary"]["passed"]


def test_a_quality_export_describes_its_level_and_restores_like_torch(tmp_path, quality_weights, monkeypatch):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from irae_cli.backends import OnnxRunner
    from irae_cli.model.folded import fold
    from irae_cli.onnx_export import LEVEL, read_metadata

    monkeypatch.setenv("IRAE_CACHE_DIR", str(tmp_path / "cache"))
    r = irae("export", quality_weights, "-o", tmp_path / "q.onnx")
    assert r.returncode == 0, r.stderr
    meta = read_metadata(tmp_path / "q.onnx")
    assert meta["condition"] == "quality" and "JPEG quality" in meta[LEVEL]
    model = load_weights(quality_weights).model.eval()
    x = torch.rand(3, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (OnnxRunner(tmp_path / "q.onnx")(x, QUALITIES) - fold(model)(x, QUALITIES)).abs().max() < 1e-4


def test_the_quality_told_is_the_given_else_the_header_else_the_pixels():
    from irae_cli.degradations import quality_to_tell

    def pixels_must_not_be_read():
        raise AssertionError("the pixel estimate is read only when neither --input-quality nor a header gives one")

    assert quality_to_tell(30, 75, pixels_must_not_be_read) == (30, "given")
    assert quality_to_tell(None, 75, pixels_must_not_be_read) == (75, "header")
    assert quality_to_tell(None, None, lambda: 42) == (42, "estimated")
    assert quality_to_tell(None, None, lambda: None) == (None, "estimated")


def test_blocks_are_aligned_on_the_header_s_grid_else_the_pixels():
    from irae_cli.degradations import align_to_blocks

    x = torch.arange(2 * 10 * 12, dtype=torch.float32).reshape(2, 10, 12)

    def pixels_must_not_be_read():
        raise AssertionError("the header's grid decides")

    padded, pad, grid = align_to_blocks(x, (5, 3), pixels_must_not_be_read)
    assert (pad, grid, tuple(padded.shape)) == ((3, 5), (5, 3), (2, 13, 17))
    assert torch.equal(padded[:, 3:, 5:], x) and torch.equal(padded[:, 0, 5:], x[:, 0])  # edge repeated
    same, pad, grid = align_to_blocks(x, None, lambda: (0, 0))
    assert same is x and pad == (0, 0) and grid == (0, 0)
    _, pad, grid = align_to_blocks(x, None, lambda: (7, 1))
    assert (pad, grid) == ((1, 7), (7, 1))


def test_a_large_image_is_read_in_its_middle_on_its_own_grid():
    from irae_cli.degradations import find_jpeg_grid
    from irae_cli.pixels import from_pil

    tile = Image.open(DATA / "astronaut_128.png").convert("RGB")
    big = Image.new("RGB", (1280, 1152))
    for y in range(0, 1152, 128):
        for x in range(0, 1280, 128):
            big.paste(tile.rotate(90 * ((x + y) // 128 % 4)), (x, y))
    decoded = from_pil(_decoded_image(big, 30))
    # the middle window is cut at multiples of 8 from the corner: the crop's blocks are where they are
    assert find_jpeg_grid(decoded[:, 3:, 13:]) == (30, (5, 3))
    assert find_jpeg_grid(decoded) == (30, (0, 0))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_jpeg_turned_upright_knows_where_its_blocks_start(tmp_path, orientation):
    # Its EXIF orientation flips or turns the decoded pixels: the blocks then start at a side's length
    # modulo 8 (250 x 187 stored: 2 and 3), which the pixels confirm.
    from irae_cli.degradations import find_jpeg_grid
    from irae_cli.imageio import read_image

    img = Image.open(DATA / "astronaut_128.png").convert("RGB").resize((250, 187), Image.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.jpg", quality=30, exif=exif.tobytes())
    x, meta = read_image(tmp_path / "o.jpg")
    transposed = orientation >= 5  # rows and columns swapped: the pixel estimate reads the stored way round
    quality, grid = find_jpeg_grid(x.transpose(1, 2) if transposed else x)
    grid = grid[::-1] if transposed else grid
    assert meta.jpeg_quality == 30 and quality == 30 and meta.jpeg_grid == grid
    assert (grid == (0, 0)) == (orientation in (1, 5))


def test_the_mixed_set_benchmark_aligns_a_crop_of_a_decoded_jpeg_as_restore_does():
    # `irae benchmark quality --task auto` scores what a run gives: a header-less crop of a decoded JPEG
    # is padded onto its blocks, so its row matches its part of the whole image's.
    from irae_cli.benchmark.auto import _jpeg_row, _restorers
    from irae_cli.pixels import from_pil

    jpeg = _restorers("cpu", "fp32", "auto", 4)[0]["jpeg"]
    whole = from_pil(_decoded("coffee_128.png", 20).convert("RGB"))
    crop = whole[:, 5:, 3:]
    out_whole, told_whole = _jpeg_row(jpeg, whole, None, None)
    out_crop, told_crop = _jpeg_row(jpeg, crop, None, None)
    assert told_whole == {"jpeg_model_quality": 20}
    assert told_crop == {"jpeg_model_quality": 20, "jpeg_grid": [3, 5]} and out_crop.shape == crop.shape
    u8 = lambda t: (t.clamp(0, 1) * 255).round()  # noqa: E731
    inner = (u8(out_crop) - u8(out_whole[:, 5:, 3:])).abs()[:, 24:-24, 24:-24]
    unaligned = (u8(jpeg(crop[None], levels=torch.tensor([20.0]))[0]) - u8(out_whole[:, 5:, 3:])).abs()
    assert inner.max() <= 1 and unaligned[:, 24:-24, 24:-24].max() > 1
    # a JPEG file's grid (from its header and EXIF orientation) is used as it is, not the pixels'
    _, told = _jpeg_row(jpeg, whole, 20, (3, 5))
    assert told == {"jpeg_model_quality": 20, "jpeg_grid": [3, 5]}
    assert _jpeg_row(jpeg, crop, 20, (0, 0))[1] == {"jpeg_model_quality": 20}
