"""`irae restore`: folders in, mirrored folders out; bad files reported, never a silent overwrite."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from irae_cli.errors import IraeError
from irae_cli.imageio import read_image
from irae_cli.imagewrite import encode_png16
from irae_cli.model import create_model
from irae_cli.restore import RestoreOptions, plan_restore, restore
from irae_cli.weights import save_weights

DATA = Path(__file__).parent / "data"
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
sys.path.insert(0, str(Path(__file__).parent))
from test_imageio import BAD_KINDS, make_bad, rgb  # noqa: E402
from util import irae as run_irae


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    x = torch.stack([read_image(DATA / f"{n}_128.png")[0] for n in ("astronaut", "coffee")])
    out = {}
    for preset in ("cnn-tiny", "tiny"):
        m = create_model(preset)
        m.initialize(x, x)
        out[preset] = d / f"{preset}.safetensors"
        save_weights(m, out[preset], task="denoise")
    m = create_model("cnn-tiny")
    m.initialize(x, x)
    out["inpaint"] = d / "inpaint.safetensors"
    save_weights(m, out["inpaint"], task="inpaint", task_params={"fill": 0.5})
    m = create_model("cnn-tiny")
    m.initialize(x, x)
    out["jpeg"] = d / "jpeg.safetensors"
    save_weights(m, out["jpeg"], task="jpeg")
    out["jpeg-max50"] = d / "jpeg-max50.safetensors"
    save_weights(m, out["jpeg-max50"], task="jpeg", task_params={"max_quality": 50})
    return out


def irae(*args, env=None) -> subprocess.CompletedProcess:
    return run_irae("restore", *args, env=env, timeout=120)


def tree_hashes(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def small(name: str, size=64) -> Image.Image:
    return Image.open(DATA / name).resize((size, size))


def run(input, output, **kw) -> tuple:
    err = io.StringIO()
    out = io.StringIO()
    summary = restore(input, output, RestoreOptions(**kw), out=out, err=err)
    return summary, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_done_when_acceptance(weights, tmp_path):
    """The issue's acceptance test, as a user would run it."""
    src = tmp_path / "IN"
    (src / "holiday" / "day2").mkdir(parents=True)
    (src / "empty").mkdir()
    small("astronaut_128.png").save(src / "a.png")
    small("coffee_128.png").save(src / "holiday" / "c.jpg", quality=90)
    small("camera_128_gray.png").save(src / "holiday" / "day2" / "g.png")
    Image.fromarray(rgb(45, 67)).save(src / "holiday" / "day2" / "odd.webp")
    broken = [make_bad("truncated_jpeg", src / "holiday"), make_bad("empty", src)]
    good = {"a.png", "holiday/c.jpg", "holiday/day2/g.png", "holiday/day2/odd.webp"}
    before = tree_hashes(src)
    out, report = tmp_path / "OUT", tmp_path / "r.jsonl"

    r = irae("--task", "denoise", src, out, "-r", "--weights", weights["cnn-tiny"], "--report", report)
    assert r.returncode == 1, r.stderr
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == good
    for b in broken:
        assert sum(str(b) in line for line in r.stderr.splitlines()) == 1, r.stderr
    assert "restored 4, skipped 0, failed 2" in r.stderr
    records = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(records) == 6
    assert {Path(rec["input"]).relative_to(src).as_posix() for rec in records if rec["status"] == "ok"} == good
    failed = [rec for rec in records if rec["status"] == "failed"]
    assert {rec["input"] for rec in failed} == {str(b) for b in broken} and all(rec["error"] for rec in failed)
    ok = next(rec for rec in records if rec["input"].endswith("odd.webp"))
    assert ok["size"] == [67, 45] and ok["device"] == "cpu" and ok["dtype"] == "float32"
    assert len(ok["weights_sha256"]) == 64 and ok["tiles"] >= 1 and ok["seconds"] > 0
    assert tree_hashes(src) == before
    assert Image.open(out / "holiday/day2/g.png").mode == "L"
    written = tree_hashes(out)

    r = irae("--task", "denoise", src, out, "-r", "--weights", weights["cnn-tiny"], "--report", report,
             "--skip-existing")
    assert r.returncode == 1, r.stderr
    assert tree_hashes(out) == written
    failure_lines = [line for line in r.stderr.splitlines() if line.startswith("irae: failed")]
    assert len(failure_lines) == 2 and all(any(str(b) in line for b in broken) for line in failure_lines)
    # --skip-existing resumes: this run's lines are added after the first run's, which are kept.
    lines = report.read_text().splitlines()
    assert [json.loads(line) for line in lines[:6]] == records
    statuses = sorted(json.loads(line)["status"] for line in lines[6:])
    assert statuses == ["failed"] * 2 + ["skipped"] * 4

    r = irae("--task", "denoise", src, out, "-r", "--weights", weights["cnn-tiny"])
    assert r.returncode == 2
    assert "already exist" in r.stderr and "--skip-existing" in r.stderr and str(out / "a.png") in r.stderr
    assert tree_hashes(out) == written
    assert tree_hashes(src) == before


def test_bad_inputs_each_one_line_others_processed(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    bad = [make_bad(kind, src) for kind in BAD_KINDS]
    Image.fromarray(rgb(45, 67)).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(rgb()).quantize(8).save(src / "palette.png", transparency=2)
    Image.merge("LA", [small("camera_128_gray.png", 33)] * 2).save(src / "la.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 65536, (30, 20), dtype=np.uint16)).save(src / "i16.png")
    Image.fromarray(rgb(1, 1)).save(src / "one.png")
    (src / "folder.png").mkdir()  # a folder with an image name is not an input
    good = ["cmyk.png", "palette.png", "la.png", "i16.png", "one.png"]
    before = tree_hashes(src)
    out = tmp_path / "out"
    r = irae("--task", "denoise", src, out, "--weights", weights["cnn-tiny"], "--format", "png", "-q")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(bad), r.stderr  # -q: failures only, one line each
    for b in bad:
        assert sum(str(b) in line for line in lines) == 1, (b, r.stderr)
    assert sorted(p.name for p in out.iterdir()) == sorted(good)
    assert Image.open(out / "palette.png").mode == "RGBA"
    assert Image.open(out / "la.png").mode == "LA"
    assert Image.open(out / "i16.png").mode == "I;16"
    assert Image.open(out / "cmyk.png").mode == "RGB"
    assert tree_hashes(src) == before
    assert not list(out.glob(".*"))  # no temp files left behind


@pytest.mark.slow
def test_name_collision_refused_up_front(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small("astronaut_128.png").save(src / "a.png")
    small("coffee_128.png").save(src / "a.jpg")
    r = irae("--task", "denoise", src, tmp_path / "out", "--weights", weights["cnn-tiny"], "--format", "png")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "same output" in r.stderr and str(src / "a.png") in r.stderr and str(src / "a.jpg") in r.stderr
    assert not (tmp_path / "out").exists()
    # With each format kept, the two inputs have different outputs.
    summary, _, _ = run(src, tmp_path / "out2", task="denoise", weights=str(weights["cnn-tiny"]), format="same")
    assert summary.restored == 2 and summary.exit_code == 0


@pytest.mark.slow
def test_no_shipped_weights_is_a_clear_usage_error(tmp_path):
    src = tmp_path / "a.png"
    small("astronaut_128.png").save(src)
    empty = tmp_path / "registry"
    empty.mkdir()
    r = irae("--task", "jpeg", src, tmp_path / "out", env={"IRAE_WEIGHTS_DIR": str(empty)})
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "no shipped weights" in r.stderr and "irae train" in r.stderr and "--weights" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_dry_run_prints_plan_and_writes_nothing(weights, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        small("astronaut_128.png").save(src / f"x{i}.png")
    small("coffee_128.png", 32).save(src / "sub" / "y.png")
    out = tmp_path / "out"
    out.mkdir()
    small("astronaut_128.png").save(out / "x0.png")
    r = irae("--task", "denoise", src, out, "-r", "--weights", weights["cnn-tiny"], "--dry-run",
             "--skip-existing", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    assert f"{src / 'x1.png'} -> {out / 'x1.png'}" in r.stdout
    assert f"{src / 'sub' / 'y.png'} -> {out / 'sub' / 'y.png'}" in r.stdout
    assert f"skip {src / 'x0.png'}" in r.stdout
    assert "batches: 1 of up to 2 x 64x64 RGB (2 image(s))" in r.stdout
    assert "batches: 1 of up to 2 x 32x32 RGB (1 image(s))" in r.stdout
    assert sorted(p.name for p in out.rglob("*")) == ["x0.png"]
    # Without --skip-existing the dry run shows the conflict and says the real run would refuse.
    summary, text, err = run(src, out, task="denoise", weights=str(weights["cnn-tiny"]), recursive=True,
                             dry_run=True)
    assert summary.exit_code == 2 and f"exists {out / 'x0.png'}" in text and "already exist" in err


def test_writing_onto_input_is_refused(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small("astronaut_128.png").save(src / "a.png")
    w = str(weights["cnn-tiny"])
    with pytest.raises(IraeError, match="never writes into its input"):
        run(src, src, task="denoise", weights=w)
    with pytest.raises(IraeError, match="replace input files"):
        run(src / "a.png", src / "a.png", task="denoise", weights=w, overwrite=True)
    # An output folder inside the input is fine, and is not read back as input on the next run.
    summary, _, _ = run(src, src / "restored", task="denoise", weights=w, recursive=True)
    assert summary.restored == 1
    summary, _, _ = run(src, src / "restored", task="denoise", weights=w, recursive=True, skip_existing=True)
    assert (summary.restored, summary.skipped) == (0, 1)


@pytest.mark.slow
def test_report_file_is_never_clobbered(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small("astronaut_128.png").save(src / "a.png")
    w = str(weights["cnn-tiny"])
    before = tree_hashes(src)
    for report, msg in [(src / "a.png", "one of the images"), (src / "r.jsonl", "inside the INPUT folder")]:
        with pytest.raises(IraeError, match=msg):
            run(src, tmp_path / "out", task="denoise", weights=w, report=report)
    existing = tmp_path / "notes.jsonl"
    existing.write_text("mine\n")
    proc = irae("--task", "denoise", src, tmp_path / "out", "--weights", w, "--report", existing)
    assert proc.returncode == 2 and "already exists" in proc.stderr and existing.read_text() == "mine\n"
    assert not (tmp_path / "out").exists() and tree_hashes(src) == before
    summary, _, _ = run(src, tmp_path / "out", task="denoise", weights=w, report=existing, overwrite=True)
    assert summary.restored == 1 and json.loads(existing.read_text().splitlines()[0])["status"] == "ok"


def test_single_file_to_file_or_folder(weights, tmp_path):
    src = tmp_path / "photo.png"
    small("chelsea_128.png").save(src)
    w = str(weights["cnn-tiny"])
    summary, _, _ = run(src, tmp_path / "result.webp", task="denoise", weights=w)
    assert summary.restored == 1 and Image.open(tmp_path / "result.webp").format == "WEBP"
    summary, _, _ = run(src, tmp_path / "outdir", task="denoise", weights=w, suffix="_clean")
    assert summary.restored == 1 and (tmp_path / "outdir" / "photo_clean.png").is_file()


def test_alpha_bit_depth_and_metadata_survive(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    alpha = np.random.default_rng(2).integers(0, 256, (45, 67), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb(45, 67), alpha])).save(src / "rgba.png")
    rgba16 = np.random.default_rng(3).integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    (src / "rgba16.png").write_bytes(encode_png16(rgba16))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = small("coffee_128.png")
    exif = img.getexif()
    exif[0x010F] = "irae-camera"
    img.save(src / "photo.jpg", quality=80, icc_profile=icc, exif=exif.tobytes())
    summary, _, err = run(src, tmp_path / "out", task="denoise", weights=str(weights["cnn-tiny"]))
    assert summary.exit_code == 0, err
    out = tmp_path / "out"
    back = Image.open(out / "rgba.png")
    assert back.mode == "RGBA" and np.array_equal(np.asarray(back)[..., 3], alpha)
    x16, meta16 = read_image(out / "rgba16.png")
    assert meta16.bits == 16 and np.array_equal(meta16.alpha, rgba16[..., 3])
    photo = Image.open(out / "photo.jpg")  # denoise keeps the input format
    assert photo.format == "JPEG" and photo.info.get("icc_profile") == icc
    assert photo.getexif().get(0x010F) == "irae-camera"


def test_jpeg_task_writes_png_by_default(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small("coffee_128.png").save(src / "c.jpg", quality=20)
    summary, _, _ = run(src, tmp_path / "out", task="jpeg", weights=str(weights["jpeg"]))
    assert summary.restored == 1 and (tmp_path / "out" / "c.png").is_file()
    summary, _, _ = run(src, tmp_path / "out2", task="jpeg", weights=str(weights["jpeg"]), format="same")
    assert (tmp_path / "out2" / "c.jpg").is_file()
    with pytest.raises(IraeError, match="trained for task 'denoise'"):
        run(src, tmp_path / "out3", task="jpeg", weights=str(weights["cnn-tiny"]))


def test_inpaint_masks(weights, tmp_path):
    src, masks = tmp_path / "in", tmp_path / "masks"
    (src / "sub").mkdir(parents=True)
    (masks / "sub").mkdir(parents=True)
    for name in ("a", "b", "c"):
        small("astronaut_128.png").save(src / "sub" / f"{name}.png")
    hole = np.zeros((64, 64), np.uint8)
    hole[10:30, 20:40] = 255
    Image.fromarray(hole).save(masks / "sub" / "a.bmp")  # any extension
    Image.fromarray(hole[:32]).save(masks / "sub" / "b.png")  # wrong size
    w = str(weights["inpaint"])
    summary, _, err = run(src, tmp_path / "out", task="inpaint", weights=w, masks=masks, recursive=True)
    assert (summary.restored, summary.failed) == (1, 2)
    lines = err.strip().splitlines()
    assert any("b.png" in line and "mask is 64x32" in line for line in lines), err
    assert any(str(src / "sub" / "c.png") in line and "no mask" in line for line in lines), err
    before = np.asarray(Image.open(src / "sub" / "a.png"))
    after = np.asarray(Image.open(tmp_path / "out" / "sub" / "a.png"))
    known = hole < 128
    assert np.array_equal(after[known], before[known])  # known pixels kept exactly
    # Holes from the alpha channel; the result is opaque.
    rgba = np.dstack([before, np.where(known, 255, 0).astype(np.uint8)])
    Image.fromarray(rgba).save(src / "holes.png")
    summary, _, err = run(src / "holes.png", tmp_path / "out_alpha", task="inpaint", weights=w, mask_from="alpha")
    assert summary.exit_code == 0, err
    res = Image.open(tmp_path / "out_alpha" / "holes.png")
    assert res.mode == "RGB" and np.array_equal(np.asarray(res)[known], before[known])
    with pytest.raises(IraeError, match="needs masks"):
        run(src, tmp_path / "o", task="inpaint", weights=w)


def test_irae_model_tiles_and_odd_sizes(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(45, 67)).save(src / "odd.png")
    Image.fromarray(rgb(45, 67, seed=1)).save(src / "odd2.png")
    report = tmp_path / "r.jsonl"
    summary, _, err = run(src, tmp_path / "out", task="denoise", weights=str(weights["tiny"]), tile=64,
                          tile_overlap=8, batch_size=2, report=report)
    assert summary.exit_code == 0, err
    recs = [json.loads(line) for line in report.read_text().splitlines()]
    assert all(r["tiles"] == 2 and r["size"] == [67, 45] for r in recs)
    assert Image.open(tmp_path / "out" / "odd.png").size == (67, 45)


@pytest.mark.slow
def test_self_ensemble_from_the_command_line(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(rgb(45, 97)).save(src / "odd.png")  # odd sides: padded, turned, tiled, turned back, cropped
    r = irae(src, tmp_path / "out", "--task", "denoise", "--weights", weights["tiny"], "--self-ensemble",
             "--tile", "64", "--report", tmp_path / "r.jsonl")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "r.jsonl").read_text())
    assert rec["views"] == 8 and rec["size"] == [97, 45] and rec["tiles"] == 8 * 2
    assert Image.open(tmp_path / "out" / "odd.png").size == (97, 45)


@pytest.mark.skipif(ROOT, reason="root can write into read-only folders (test_reliability drops the capability)")
def test_read_only_output_folder(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    small("astronaut_128.png").save(src / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(IraeError, match="not writable"):  # checked up front, before any image is restored
            run(src, out, task="denoise", weights=str(weights["cnn-tiny"]))
    finally:
        out.chmod(0o755)


def test_output_location_below_a_file_is_refused_up_front(weights, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    small("astronaut_128.png").save(src / "a.png")
    small("coffee_128.png").save(src / "sub" / "b.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the output folder should be")
    with pytest.raises(IraeError, match="is a file, not a folder") as e:
        run(src, out, task="denoise", weights=str(weights["cnn-tiny"]), recursive=True)
    assert str(out / "sub") in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["sub"]  # nothing was restored


def test_option_errors(weights, tmp_path):
    small("astronaut_128.png").save(tmp_path / "a.png")
    w = str(weights["cnn-tiny"])
    for kw, msg in [({"skip_existing": True, "overwrite": True}, "contradict"),
                    ({"format": "gif"}, "--format"),
                    ({"masks": tmp_path}, "only apply to --task inpaint")]:
        with pytest.raises(IraeError, match=msg):
            plan_restore(tmp_path / "a.png", tmp_path / "out", RestoreOptions(task="denoise", weights=w, **kw))
    (tmp_path / "empty").mkdir()
    with pytest.raises(IraeError, match="no images found"):
        plan_restore(tmp_path / "empty", tmp_path / "o", RestoreOptions(task="denoise"))
    with pytest.raises(IraeError, match="no images found.*drop -R"):
        plan_restore(tmp_path / "empty", tmp_path / "o", RestoreOptions(task="denoise", recursive=False))
    with pytest.raises(IraeError, match="no such file or folder"):
        plan_restore(tmp_path / "missing", tmp_path / "o", RestoreOptions(task="denoise"))


def test_a_cut_jpeg_never_reaches_the_gpu_decoder(tmp_path):
    """nvJPEG decodes a truncated file without complaint; it must go to Pillow, which reports it."""
    import io

    from irae_cli.gpu_jpeg import jpeg_for_gpu, jpeg_is_complete

    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "camera"
    small("astronaut_128.png").save(buf, "JPEG", quality=85, progressive=True, exif=exif)
    whole = buf.getvalue()
    assert jpeg_is_complete(whole) and jpeg_is_complete(whole + b"\x00" * 16)  # trailing padding is fine
    (tmp_path / "whole.jpg").write_bytes(whole)
    assert jpeg_for_gpu(tmp_path / "whole.jpg") is not None
    for cut in (len(whole) - 2, len(whole) * 2 // 3):
        assert not jpeg_is_complete(whole[:cut])
        (tmp_path / "cut.jpg").write_bytes(whole[:cut])
        assert jpeg_for_gpu(tmp_path / "cut.jpg") is None


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_restore_and_batched_jpeg_decode(weights, tmp_path):
    from irae_cli.gpu_jpeg import decode_jpegs_cuda, jpeg_for_gpu

    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("astronaut_128.png", "coffee_128.png", "chelsea_128.png")):
        small(name).save(src / f"{i}.jpg", quality=85)
    small("camera_128_gray.png").save(src / "gray.jpg", quality=85)
    blobs = [jpeg_for_gpu(p) for p in sorted(src.glob("*.jpg"))]
    decoded = decode_jpegs_cuda([b[0] for b in blobs], [b[2][0] == 1 for b in blobs], torch.device("cuda"))
    for p, x in zip(sorted(src.glob("*.jpg")), decoded):
        ref, _ = read_image(p)
        assert x.dtype == torch.uint8 and x.device.type == "cpu"
        assert x.shape == ref.shape and (x.float() / 255 - ref).abs().mean() < 2 / 255
    summary, _, err = run(src, tmp_path / "out", task="denoise", weights=str(weights["cnn-tiny"]),
                          device="cuda", format="png")
    assert summary.restored == 4 and summary.exit_code == 0, err


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its codecs
def test_batched_jpeg_decode_path_off_the_main_thread_in_uint8(weights, tmp_path, monkeypatch):
    """The CUDA JPEG path, emulated on the CPU (torchvision's CPU decoder stands in for nvJPEG):
    batches decode on their own thread, cross as uint8, and odd files fall back to Pillow."""
    import threading

    import irae_cli.gpu_jpeg as gpu_jpeg
    import irae_cli.restore.batches as pl
    from irae_cli.imageio import read_image

    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("astronaut_128.png", "coffee_128.png", "chelsea_128.png")):
        small(name).save(src / f"{i}.jpg", quality=85, progressive=i == 1, subsampling=0 if i == 2 else 2)
    small("camera_128_gray.png").save(src / "gray.jpg", quality=85)
    small("coffee_128.png").convert("CMYK").save(src / "cmyk.jpg", quality=90)  # not for nvJPEG: Pillow
    data = (src / "0.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(data[:len(data) // 2])  # truncated: never sent to the batch decoder
    refused = (src / "2.jpg").read_bytes()
    seen = []
    real = gpu_jpeg.decode_jpegs_cuda

    def decode(blobs, gray, device):
        seen.append([threading.current_thread().name, len(blobs), None])
        if refused in blobs:  # a batch the decoder refuses: Pillow decodes that batch instead
            raise RuntimeError("emulated nvJPEG failure")
        out = real(blobs, gray, device)
        seen[-1][2] = {x.dtype for x in out}
        return out

    monkeypatch.setattr(gpu_jpeg, "decode_jpegs_cuda", decode)
    monkeypatch.setattr(pl, "_gpu_jpeg_decode", lambda restorer, needs_mask: True)
    summary, _, err = run(src, tmp_path / "gpu", task="denoise", weights=str(weights["cnn-tiny"]), device="cpu",
                          format="png", batch_size=2, skip_existing=False)
    assert seen and all(name.startswith("irae-nvjpeg") for name, _, _ in seen)
    assert {torch.uint8} in [dtypes for _, _, dtypes in seen] and None in [dtypes for _, _, dtypes in seen]
    assert sum(n for _, n, _ in seen) == 4  # the 4 plain JPEGs; the cut one and CMYK never go there
    monkeypatch.setattr(pl, "_gpu_jpeg_decode", lambda restorer, needs_mask: False)
    ref, _, _ = run(src, tmp_path / "cpu", task="denoise", weights=str(weights["cnn-tiny"]), device="cpu",
                    format="png", batch_size=2)
    assert (summary.restored, summary.failed) == (ref.restored, ref.failed), err
    assert summary.restored >= 5  # the truncated file: restored or failed exactly as through Pillow
    for p in sorted((tmp_path / "cpu").glob("*.png")):
        a, _ = read_image(p)
        b, _ = read_image(tmp_path / "gpu" / p.name)
        assert a.shape == b.shape and (a - b).abs().mean() < 1 / 255, p.name


@pytest.mark.slow
def test_jpeg_above_the_weights_quality_limit_is_kept_as_it_is(weights, tmp_path):
    """Weights measured to help only up to quality 50 leave a quality-90 file's pixels exactly as decoded."""
    src = tmp_path / "in"
    src.mkdir()
    small("coffee_128.png").save(src / "high.jpg", quality=90)
    small("coffee_128.png").save(src / "low.jpg", quality=20)
    report = tmp_path / "r.jsonl"
    r = irae("--task", "jpeg", src, tmp_path / "out", "--weights", weights["jpeg-max50"], "--report", report)
    assert r.returncode == 0, r.stderr
    high_in, high_out = read_image(src / "high.jpg")[0], read_image(tmp_path / "out" / "high.png")[0]
    low_in, low_out = read_image(src / "low.jpg")[0], read_image(tmp_path / "out" / "low.png")[0]
    assert torch.equal(high_in, high_out)
    assert not torch.equal(low_in, low_out)
    notes = {Path(json.loads(line)["input"]).name: json.loads(line).get("notes", []) for line in
             report.read_text().splitlines()}
    assert any("quality 90 is above 50" in n for n in notes["high.jpg"]) and not notes.get("low.jpg")
    # The same weights without the limit restore both.
    r = irae("--task", "jpeg", src, tmp_path / "all", "--weights", weights["jpeg"])
    assert r.returncode == 0 and not torch.equal(high_in, read_image(tmp_path / "all" / "high.png")[0])


def test_the_plan_sees_links_onto_inputs_and_outputs_that_must_be_folders(tmp_path):
    # One stat per output and one realpath per folder decide each output's fate; links still count.
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "x.png").mkdir(parents=True)  # x.png/b.png needs out/x.png as a folder; x.jpg writes out/x.png
    for rel in ("a.png", "x.jpg", "x.png/b.png"):
        small("astronaut_128.png").save(src / rel)
    (out / "d.png").mkdir(parents=True)
    small("astronaut_128.png").save(src / "d.jpg")
    (out / "a.png").symlink_to(src / "a.png")  # writing out/a.png would replace the input through the link
    plan = plan_restore(src, out, RestoreOptions(task="denoise", format="png", recursive=True, overwrite=True))
    assert [j.output for j in plan.onto_inputs] == [out / "a.png"]
    assert plan.folder_clashes == [f"{out / 'd.png'} (an existing folder)",
                                   f"{out / 'x.png'} (also the folder of {out / 'x.png' / 'b.png'})"]
