"""Sources for fetch_photos.py: Debian packages (apt-get download, dpkg -x) and
the candidate images found in each of them.

Only the standard library and Pillow are used.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

from PIL import Image

class FetchError(Exception):
    """A problem reported to the user as one line (exit status 2)."""


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# apt / dpkg
# --------------------------------------------------------------------------

def _need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FetchError(
            f"'{name}' not found: this script needs a Debian/Ubuntu system with apt and dpkg"
        )
    return path


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # prefer an apt error line ("E: ...") over trailing warnings
    errors = [ln for ln in lines if ln.startswith("E:")]
    return (errors or lines or ["no output"])[-1]


def _apt_knows(pkg: str) -> bool:
    res = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", pkg],
        capture_output=True, text=True,
    )
    return res.returncode == 0 and "Package:" in res.stdout


def _apt_update() -> None:
    log("running apt-get update ...")
    res = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    if res.returncode != 0:
        raise FetchError(f"apt-get update failed (exit {res.returncode}): {_last_line(res.stderr or res.stdout)}")


def cached_deb(cache: Path, pkg: str) -> Path | None:
    """The cached .deb of *pkg* (the most recently downloaded if several versions)."""
    found = [f for f in cache.glob(f"{pkg}_*.deb") if f.is_file()]
    return max(found, key=lambda f: (f.stat().st_mtime, f.name)) if found else None


def fetch_debs(cache: Path, packages, *, update: bool) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    debs: dict[str, Path] = {}
    missing = []
    for pkg in packages:
        deb = cached_deb(cache, pkg)
        if deb is not None and not update:
            debs[pkg] = deb
        else:
            missing.append(pkg)
    if not missing:
        return debs
    _need_tool("apt-get")
    if update or not all(_apt_knows(p) for p in missing):
        _apt_update()
    for pkg in missing:
        log(f"apt-get download {pkg} ...")
        cmd = ["apt-get", "download", pkg]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            # as root apt drops to user _apt, which cannot write into our cache
            cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
        res = subprocess.run(cmd, cwd=cache, capture_output=True, text=True)
        deb = cached_deb(cache, pkg)
        if res.returncode != 0 or deb is None:
            raise FetchError(
                f"could not download package {pkg} (apt-get download exit {res.returncode}): "
                f"{_last_line(res.stderr or res.stdout)}"
            )
        debs[pkg] = deb
    return debs


def extract_deb(deb: Path, dest: Path) -> None:
    _need_tool("dpkg")
    dest.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["dpkg", "-x", str(deb), str(dest)], capture_output=True, text=True)
    if res.returncode != 0:
        raise FetchError(f"dpkg -x {deb.name} failed: {_last_line(res.stderr or res.stdout)}")


# --------------------------------------------------------------------------
# JPEG streams inside Eet (.edj) archives
# --------------------------------------------------------------------------

_STANDALONE = {0x01} | set(range(0xD0, 0xD8))  # TEM, RST0-7: no length field


def jpeg_stream_end(buf: bytes, start: int) -> int | None:
    """End (exclusive) of the JPEG stream starting at *start*, or None.

    Walks the marker segments (so an ``FF D9`` inside an EXIF thumbnail or in
    a segment payload does not end the stream early) and, after each SOS,
    the entropy-coded data up to the next real marker.
    """
    n = len(buf)
    if buf[start:start + 2] != b"\xff\xd8":
        return None
    i = start + 2
    while i < n:
        if buf[i] != 0xFF:
            return None
        while i < n and buf[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = buf[i]
        i += 1
        if marker == 0xD9:
            return i
        if marker in _STANDALONE:
            continue
        if marker == 0xD8 or i + 2 > n:
            return None
        length = (buf[i] << 8) | buf[i + 1]
        if length < 2:
            return None
        i += length
        if marker == 0xDA:  # scan data follows until the next non-RST marker
            while True:
                j = buf.find(b"\xff", i)
                if j < 0 or j + 1 >= n:
                    return None
                nxt = buf[j + 1]
                if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                    i = j + 2
                elif nxt == 0xFF:
                    i = j + 1
                else:
                    i = j
                    break
    return None


def largest_jpeg_in(path: Path) -> tuple[bytes, tuple[int, int]] | None:
    """The largest embedded JPEG stream in *path* that Pillow decodes."""
    buf = path.read_bytes()
    spans = []
    pos = buf.find(b"\xff\xd8\xff")
    while pos >= 0:
        end = jpeg_stream_end(buf, pos)
        if end is not None:
            spans.append((end - pos, pos, end))
        pos = buf.find(b"\xff\xd8\xff", pos + 1)
    for _, a, b in sorted(spans, reverse=True):
        data = buf[a:b]
        try:
            with Image.open(io.BytesIO(data)) as im:
                if im.format != "JPEG":
                    continue
                im.load()
                return data, im.size
        except Exception:  # noqa: BLE001 - any decode failure: try the next one
            continue
    return None


# --------------------------------------------------------------------------
# candidates
# --------------------------------------------------------------------------

def _pixels(path: Path) -> int:
    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1]
    except Exception:  # noqa: BLE001
        return -1


# packages whose candidates are the image files in one folder (recursively);
# the source name is the path relative to that folder
IMAGE_FOLDERS = {
    "lomiri-wallpapers-16.04": "usr/share/backgrounds",
    "lomiri-wallpapers-20.04": "usr/share/backgrounds",
    "mate-backgrounds": "usr/share/backgrounds/mate",
    "lxqt-themes": "usr/share/lxqt/wallpapers",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def images_under(folder: Path) -> dict[str, Path]:
    """Image files under *folder* by relative path ("nature/LadyBird.jpg")."""
    return {f.relative_to(folder).as_posix(): f for f in sorted(folder.rglob("*"))
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()}


def find_candidates(pkg: str, root: Path) -> dict[str, object]:
    """Map source name -> Path (an image file) or bytes (an extracted JPEG)."""
    out: dict[str, object] = {}
    if pkg in IMAGE_FOLDERS:
        out.update(images_under(root / IMAGE_FOLDERS[pkg]))
    elif pkg == "enlightenment-data":
        for edj in sorted((root / "usr/share/enlightenment/data/backgrounds").glob("*.edj")):
            found = largest_jpeg_in(edj)
            if found is not None:
                out[edj.name] = found[0]
    elif pkg == "plasma-workspace-wallpapers":
        for wp in sorted((root / "usr/share/wallpapers").iterdir()):
            imgs = [f for f in (wp / "contents/images").glob("*")
                    if f.suffix.lower() in IMAGE_SUFFIXES]
            if imgs:
                out[wp.name] = max(imgs, key=lambda f: (_pixels(f), f.name))
    else:
        raise FetchError(f"no candidate rule for package {pkg}")
    return out
