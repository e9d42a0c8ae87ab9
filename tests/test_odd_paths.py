"""Odd files and paths from a fault sweep: each case runs the real `irae` command on real files.

Links that carry outputs into what the user gave irae to read, outputs that would have to be
folders, file systems that refuse a folder, pipes among the photos, names that are long or not
UTF-8, and TIFF files whose layout tags must not travel as EXIF.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

from irae_cli.degradations import derive_seed
from test_reliability import folder_of, irae, one_error_line, photo, tree, weights  # noqa: F401 (fixture)

LINUX = sys.platform.startswith("linux")


def test_degrade_refuses_a_link_in_out_that_leads_into_clean(tmp_path):
    clean = tmp_path / "photos"
    clean.mkdir()
    photo().convert("RGBA").save(clean / "a.png")  # re-encoded as RGB if written: the loss is visible
    out = tmp_path / "set"
    out.mkdir()
    (out / "clean").symlink_to(clean, target_is_directory=True)
    before = tree(clean)
    r = irae("degrade", "--task", "denoise", "--sigma", "25", clean, out, "--overwrite")
    assert r.returncode == 2, r.stderr
    one_error_line(r, str(out / "clean"), "leads into the clean input")
    assert tree(clean) == before and sorted(p.name for p in clean.iterdir()) == ["a.png"]


def _inpaint_setup(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = tmp_path / "img", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    photo().save(images / "a.png")
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (20, 20, 40, 40))
    m.save(masks / "a.png")
    m.save(masks / "keep.png")
    return images, masks


@pytest.mark.parametrize("case", ["output-is-masks", "skip-existing-into-masks", "report-in-masks"])
def test_the_masks_folder_is_input_too(weights, tmp_path, case):
    images, masks = _inpaint_setup(tmp_path)
    before = tree(masks)
    out, extra = {"output-is-masks": (masks, ["--overwrite"]),
                  "skip-existing-into-masks": (masks, ["--skip-existing"]),
                  "report-in-masks": (tmp_path / "out", ["--report", masks / "keep.png", "--overwrite"])}[case]
    r = irae("restore", "--task", "inpaint", "--weights", weights["inpaint"], images, out, "--masks", masks, *extra)
    assert r.returncode == 2, r.stderr
    one_error_line(r, "--masks folder")
    assert tree(masks) == before and not (tmp_path / "out").exists()


def test_a_link_in_output_never_carries_outputs_into_input(weights, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo().save(src / "sub" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(src / "sub", target_is_directory=True)
    before = tree(src)
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, out, "--suffix", "_r")
    assert r.returncode == 2, r.stderr
    one_error_line(r, "INPUT folder", str(out / "sub"))
    assert tree(src) == before and sorted(p.name for p in (src / "sub").iterdir()) == ["a.png"]


def test_an_output_inside_input_stays_allowed(weights, tmp_path):
    src = folder_of(tmp_path, 1)
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, src / "restored")
    assert r.returncode == 0, r.stderr
    assert (src / "restored" / "img00.png").is_file()


@pytest.mark.parametrize("case", ["folder-named-like-an-output", "existing-folder-at-output"])
def test_outputs_that_would_have_to_be_folders_exit_2_before_work(weights, tmp_path, case):
    src = tmp_path / "in"
    src.mkdir()
    out = tmp_path / "out"
    photo().save(src / "x.jpg")
    if case == "folder-named-like-an-output":
        (src / "x.png").mkdir()  # its image becomes out/x.png/b.png; x.jpg becomes out/x.png
        photo().save(src / "x.png" / "b.png")
    else:
        (out / "x.png").mkdir(parents=True)
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, out, "--format", "png",
             "--overwrite")
    assert r.returncode == 2, r.stderr
    one_error_line(r, str(out / "x.png"), "folder")
    assert not any(p.is_file() for p in out.rglob("*")) if out.exists() else True


@pytest.mark.slow
@pytest.mark.skipif(not (LINUX and Path("/proc/self").is_dir()), reason="needs Linux /proc")
def test_an_output_folder_the_file_system_refuses_exits_2_before_work(weights, tmp_path):
    src = folder_of(tmp_path, 2)
    for args in (["restore", "--task", "denoise", "--weights", weights["denoise"], src, "/proc/irae-out"],
                 ["degrade", "--task", "denoise", "--sigma", "25", src, "/proc/irae-out/set"]):
        r = irae(*args)
        assert r.returncode == 2, r.stderr
        one_error_line(r, "/proc/irae-out")  # root: "cannot be made"; others: "not writable"
        assert "restored" not in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_pipe_among_the_photos_is_left_out_and_never_opened(weights, tmp_path):
    src = folder_of(tmp_path, 1)
    os.mkfifo(src / "pipe.png")  # opening it would wait for a writer forever
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out", timeout=120)
    assert r.returncode == 0, r.stderr
    one_error_line(r, str(src / "pipe.png"), "not a regular file")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img00.png"]
    r = irae("degrade", "--task", "denoise", "--sigma", "25", src / "pipe.png", tmp_path / "set", timeout=120)
    assert r.returncode == 2 and not (tmp_path / "set").exists(), r.stderr
    one_error_line(r, "pipe.png", "not a regular file")


def test_a_long_file_name_is_restored(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    name = "é" * 120 + ".png"  # 244 bytes: legal, but not with 40 more for a temp-file tag
    photo().save(src / name)
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == [name]


def test_a_killed_training_run_leaves_no_temp_copy_of_a_long_output_name(tmp_path):
    from irae_cli.files import temp_name
    from irae_cli.train import TrainConfig, check_output_space

    dead = _dead_pid()
    out = tmp_path / ("w" * 240 + ".safetensors")  # its temp copy carries the name shortened
    ckpt, log = tmp_path / "run.ckpt", tmp_path / "run.log.json"
    mine = [tmp_path / temp_name(out.name, f"{dead}-9a"), tmp_path / f".run.ckpt.tmp-{dead}"]
    theirs = [tmp_path / temp_name("other.safetensors", f"{dead}-9a"), tmp_path / f".other.tmp-{dead}"]
    for f in mine + theirs:
        f.write_bytes(b"partial")
    assert len(mine[0].name.encode()) <= 255 and out.name not in mine[0].name
    check_output_space(out, ckpt, log, TrainConfig(arch="tiny"), None)
    assert not any(f.exists() for f in mine) and all(f.exists() for f in theirs)


def _dead_pid() -> int:
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="names that are not UTF-8 need a byte-named file system")
def test_names_that_are_not_utf8_are_degraded_and_benchmarked(weights, tmp_path):
    src = folder_of(tmp_path, 1)
    odd = os.fsdecode(os.path.join(os.fsencode(src), b"bad\xff.png"))
    photo("coffee_128.png").save(odd)
    r = irae("degrade", "--task", "denoise", "--sigma", "25", src, tmp_path / "set")
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "set" / "manifest.jsonl").read_text().splitlines()) == 2
    r = irae("benchmark", "quality", "--task", "denoise", "--sigma", "25", src, "--weights", weights["denoise"],
             "--classical", "none")
    assert r.returncode == 0, r.stderr


def test_a_utf8_name_keeps_its_seed():
    # Test sets made before non-UTF-8 names were handled must come out the same.
    expected = int.from_bytes(hashlib.sha256("0\x1fé.png\x1fsigma25".encode()).digest()[:8], "little") >> 1
    assert derive_seed(0, "é.png", "sigma25") == expected


def test_tiff_outputs_open_whatever_the_input_tiff_stored(weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    base = photo()
    base.convert("CMYK").save(src / "cmyk.tif")
    base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(src / "palette.tif")
    rgba = base.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(src / "rgba.tif")
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make: real EXIF, which must survive
    base.save(src / "exif.tif", exif=exif)
    out = tmp_path / "out"
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, out)
    assert r.returncode == 0, r.stderr
    modes = {}
    for f in sorted(out.iterdir()):
        with Image.open(f) as im:
            im.load()
            modes[f.name] = im.mode
            assert im.size == (64, 64)
    assert modes == {"cmyk.tif": "RGB", "exif.tif": "RGB", "palette.tif": "RGB", "rgba.tif": "RGBA"}
    with Image.open(out / "exif.tif") as im:
        assert im.getexif().get(0x010F) == "Canon"


@pytest.mark.parametrize("output, flag, needle", [("o.jpg", ["--format", "png"], "disagree"),
                                                  ("o.gif", [], "GIF")])
def test_a_named_output_file_irae_would_not_write_as_named_exits_2(weights, tmp_path, output, flag, needle):
    src = folder_of(tmp_path, 1) / "img00.png"
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / output, *flag)
    assert r.returncode == 2, r.stderr
    one_error_line(r, output, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_an_empty_report_left_by_an_early_stop_does_not_block_a_plain_rerun(weights, tmp_path):
    src = folder_of(tmp_path, 1)
    report = tmp_path / "run.jsonl"
    report.write_bytes(b"")
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out", "--report", report)
    assert r.returncode == 0, r.stderr
    assert len(report.read_text().splitlines()) == 1


@pytest.mark.slow
def test_two_masks_for_one_image_say_which_is_used(weights, tmp_path):
    images, masks = _inpaint_setup(tmp_path)
    (masks / "a.png").rename(masks / "a.bmp")
    Image.new("L", (64, 64), 0).save(masks / "a.tif")  # no holes: were it used, nothing would change
    r = irae("restore", "--task", "inpaint", "--weights", weights["inpaint"], images, tmp_path / "out",
             "--masks", masks)
    assert r.returncode == 0, r.stderr
    line = one_error_line(r, str(masks / "a.bmp"), "2 masks")
    assert "a.tif" in line


@pytest.mark.slow
def test_degrade_finds_a_link_into_clean_behind_another_link_and_allows_links_elsewhere(tmp_path):
    clean = tmp_path / "photos"
    (clean / "sub").mkdir(parents=True)
    photo().convert("RGBA").save(clean / "sub" / "a.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sub").symlink_to(clean / "sub", target_is_directory=True)
    out = tmp_path / "set"
    out.mkdir()
    (out / "sigma25").symlink_to(elsewhere, target_is_directory=True)
    (out / "notes").symlink_to(tmp_path, target_is_directory=True)  # above CLEAN, never written to
    before = tree(clean)
    r = irae("degrade", "--task", "denoise", "--sigma", "25", clean, out, "--overwrite")
    assert r.returncode == 2, r.stderr
    one_error_line(r, "sigma25", "leads into the clean input")
    assert tree(clean) == before
    (out / "sigma25").unlink()
    r = irae("degrade", "--task", "denoise", "--sigma", "25", clean, out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert tree(clean) == before


def test_a_broken_link_among_the_photos_fails_as_one_naming_it(weights, tmp_path):
    src = folder_of(tmp_path, 1)
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out")
    assert r.returncode == 1, r.stderr
    line = one_error_line(r, str(src / "gone.png"))
    assert "regular file" not in line


@pytest.mark.slow
def test_an_output_folder_made_inside_the_masks_folder_is_allowed(weights, tmp_path):
    images, masks = _inpaint_setup(tmp_path)
    r = irae("restore", "--task", "inpaint", "--weights", weights["inpaint"], images, masks / "restored",
             "--masks", masks)
    assert r.returncode == 0, r.stderr
    assert (masks / "restored" / "a.png").is_file()


def test_photos_of_types_irae_does_not_take_from_folders_are_counted_in_one_warning(weights, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo().save(src / "a.png")
    photo().save(src / "b.gif")
    photo().save(src / "sub" / "c.jfif", format="JPEG")
    (src / "sub" / "d.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (src / "sub" / "e.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (src / "notes.txt").write_text("not a photo, not counted")
    r = irae("restore", "--task", "denoise", "--weights", weights["denoise"], src, tmp_path / "out")
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "left out" in line]
    assert warnings == [f"irae: warning: {src}: 4 file(s) left out (2 .heic, 1 .gif, 1 .jfif): irae takes "
                        "bmp/jpeg/jpg/png/tif/tiff/webp files from folders; convert the others (to PNG, say) "
                        "to include them"], r.stderr
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == ["a.png"]
