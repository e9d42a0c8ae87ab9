"""Files and folders: finding images, writing atomically, checking output folders before any work.

Images, test sets, reports, weights, checkpoints, logs and packs are written
through ``replace_atomically`` (a temp file in the same folder, fsync, then a
rename), so a killed run never leaves a half-written file under a real name,
and nothing the user owns is replaced without ``overwrite``.  What a killed
``restore``, ``degrade`` or ``train`` leaves (``.NAME.irae-tmp-PID-*``) is removed
by the next such run into that folder once its writer is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ImageError, IraeError, warn

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}
# Photos a folder may hold that irae does not take from folders (phones' HEIC, camera raw, GIF, JPEG under
# its other names): left out with one warning, not silently, so "37 of 40 restored" has a reason.
OTHER_IMAGE_EXTENSIONS = {".gif", ".jfif", ".jpe", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".ico",
                          ".psd", ".tga", ".ppm", ".pgm", ".pnm", ".qoi", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                          ".orf", ".rw2", ".raf"}


# --- finding images ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    path: Path
    rel: Path  # relative to the input root (file name alone for a single-file input)


def _matches(rel: Path, patterns: list[str]) -> bool:
    text = rel.as_posix()
    return any(fnmatch.fnmatch(text, p) or fnmatch.fnmatch(rel.name, p) for p in patterns)


def discover(root: str | Path, *, recursive: bool = False, include: list[str] | None = None,
             exclude: list[str] | None = None, skip: list[str | Path] | None = None) -> list[Source]:
    """Image files under ``root`` (or ``root`` itself), sorted by relative path.

    Symlinked folders are followed once (a loop is never entered twice);
    folders in ``skip`` (e.g. an output folder inside the input) are left out.
    Hidden temp files of an interrupted write (``.name.irae-tmp-*``) never match.
    """
    root = Path(root)
    if root.is_file():
        return [Source(root, Path(root.name))]
    if root.exists() and not root.is_dir():
        raise IraeError(f"{root}: {_NOT_REGULAR}, nor a folder; give an image file or a folder")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    skip_real = {os.path.realpath(p) for p in (skip or [])}
    seen_dirs: set[str] = set()
    found: list[Source] = []
    left_out: dict[str, int] = {}

    def walk(folder: Path) -> None:
        real = os.path.realpath(folder)
        if real in seen_dirs or real in skip_real:
            return
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                if recursive:
                    walk(path)
            elif (kind := path.suffix.lower()) in IMAGE_EXTENSIONS or kind in OTHER_IMAGE_EXTENSIONS:
                rel = path.relative_to(root)
                if include and not _matches(rel, include):
                    continue
                if exclude and _matches(rel, exclude):
                    continue
                if kind in OTHER_IMAGE_EXTENSIONS:
                    left_out[kind] = left_out.get(kind, 0) + 1
                elif not _regular(entry):  # opening a FIFO would wait for a writer forever
                    warn(f"{path}: {_NOT_REGULAR}; left out")
                else:
                    found.append(Source(path, rel))

    walk(root)
    if left_out:
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(left_out.items(), key=lambda kv: (-kv[1], kv[0])))
        warn(f"{root}: {sum(left_out.values())} file(s) left out ({kinds}): irae takes "
             f"{'/'.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))} files from folders; convert the others "
             f"(to PNG, say) to include them")
    return found


_NOT_REGULAR = "not a regular file (a pipe, socket or device)"


def _regular(entry: os.DirEntry) -> bool:
    """False only for a pipe, socket or device (a link is followed: a link to a photo counts)."""
    try:
        mode = entry.stat().st_mode
    except OSError:
        return True  # a broken link or an unreadable entry: the read names the file and the reason
    return not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode))


def no_images_message(root: str | Path, hint: str = "") -> str:
    """The one wording of 'this folder holds no image irae reads' (``hint``: e.g. why subfolders were left out)."""
    kinds = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    return f"{root}: no images found (readable types: {kinds}){hint}"


def is_within(path: str | Path, folder: str | Path) -> bool:
    """True when ``path`` is ``folder`` or lies inside it, after resolving links."""
    child, parent = os.path.realpath(path), os.path.realpath(folder)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def folders_reaching(folders, protected: str | Path, allowed: str | Path | None = None) -> list[Path]:
    """The output ``folders`` whose real location lies in ``protected`` (a link anywhere on the way
    counts), except those that also lie in ``allowed`` (an OUTPUT the user put inside it on purpose)."""
    return sorted(f for f in set(folders)
                  if is_within(f, protected) and not (allowed is not None and is_within(f, allowed)))


# --- writing -------------------------------------------------------------------------------------

def replace_atomically(path: str | Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename it into place.

    Without ``overwrite`` the temp file is hard-linked to ``path``, which fails
    if ``path`` exists (FileExistsError), so a file that appeared meanwhile is
    never clobbered.  Raises OSError as a plain write would; callers word it.
    """
    path = Path(path)
    tmp = path.with_name(temp_name(path.name, f"{os.getpid()}-{id(data):x}"))
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where a folder must be: not the "refusing to overwrite" case
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of its folder", str(path.parent)) from None
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise
        except OSError:
            if path.exists() or path.is_symlink():
                raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
            os.replace(tmp, path)  # filesystems without hard links
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


@contextlib.contextmanager
def locked(f):
    """Hold an exclusive lock on the open file ``f`` (where the system has them): the lines that runs
    sharing one report append go in whole, one after another."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): appends are not interleaved mid-line there either
        yield
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
    except OSError:  # a file system without locks: append unlocked, as before
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)


NAME_MAX = 255  # bytes in one file name on the file systems irae writes to


def temp_name(name: str, tag: str) -> str:
    """``.NAME.irae-tmp-TAG.HOST``, NAME shortened where the whole would pass NAME_MAX (a long name
    the user's file system holds must not fail for its temp file)."""
    tail = f".irae-tmp-{tag}.{HOST_TAG}"
    room = NAME_MAX - 1 - len(tail)
    while len(name.encode("utf-8", "surrogateescape")) > room:
        name = name[:-1]  # whole characters, so the temp name starts with the real one
    return f".{name}{tail}"


class OutputExists(ImageError):
    """The output appeared while the work was done (another run wrote it); it was kept, not replaced."""


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = False) -> None:
    """``replace_atomically`` with one-line ImageErrors that name the file and what to do."""
    try:
        replace_atomically(path, data, overwrite=overwrite)
    except FileExistsError:
        raise OutputExists(f"{path}: already exists; refusing to overwrite (use --overwrite)") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied; choose a writable output folder") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot write ({e.strerror or e}); check the output folder") from None


def atomic_save_safetensors(tensors: dict, path: str | Path, metadata: dict[str, str]) -> int:
    """A safetensors file written through ``replace_atomically`` (replacing an older one: callers check
    first); raises OSError as a plain write would.  -> its size in bytes."""
    from safetensors.torch import save

    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    replace_atomically(path, data, overwrite=True)
    return len(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """A text file (UTF-8) through ``replace_atomically``, replacing an older one; raises OSError."""
    replace_atomically(path, text.encode("utf-8"), overwrite=True)


# --- output folders: checked before any work, cleaned of what an interrupted run left -------------

# atomic_write_bytes' temp files; the host tag came later, so names without one are read as this machine's.
TEMP_NAME = re.compile(r"\.(?P<name>.+)\.irae-tmp-(?P<tag>(?P<pid>\d+)-[0-9a-f]+)(?:\.(?P<host>[0-9a-f]{8}))?", re.S)
# ``irae train`` wrote ``.NAME.tmp-PID`` before it had the one atomic writer: only cleaned for named files.
OLD_TRAIN_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>\d+)", re.S)
# Machines that share an output folder (torchrun across nodes, job arrays) cannot see each other's
# processes: a temp file made elsewhere is only taken for stale once nothing has touched it for this long.
FOREIGN_TEMP_SECONDS = 3600


def existing_ancestor(path: str | Path) -> Path:
    """``path`` itself or the nearest folder above it that exists (where a new folder would be made)."""
    p = Path(os.path.abspath(path))
    while not (p.exists() or p.is_symlink()) and p != p.parent:
        p = p.parent
    return p


def folder_problem(folder: str | Path, what: str = "output folder", probed: dict | None = None) -> str | None:
    """Why files cannot be written into ``folder`` (made if missing), or None: checked before any work.

    Catches a regular file where a folder must be (or above it) and a folder
    without write permission; root passes the permission check, as it would
    pass the write itself.
    """
    folder = Path(folder)
    base = existing_ancestor(folder)
    if not base.is_dir():
        if base == Path(os.path.abspath(folder)):
            return f"{what} {folder} exists and is a file, not a folder; choose another"
        return f"{what} {folder} cannot be made: {base} is a file, not a folder"
    if not os.access(base, os.W_OK | os.X_OK):
        where = "" if base == Path(os.path.abspath(folder)) else f" ({base}, where it would be made)"
        return f"{what} {folder}{where} is not writable (permission denied); choose another or fix its permissions"
    if base != Path(os.path.abspath(folder)) and _IS_ROOT:
        return _mkdir_problem(folder, base, what, probed)
    return None


_IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _mkdir_problem(folder: Path, base: Path, what: str, probed: dict | None) -> str | None:
    """Make and remove the first missing folder: root passes os.access on /proc or /sys, where mkdir
    fails.  ``probed`` (first missing folder -> error or None) spares a new OUTPUT's many subfolders
    a probe each."""
    first = Path(os.path.abspath(folder))
    while first.parent != base:
        first = first.parent
    if probed is not None and first in probed:
        error = probed[first]
    else:
        error = None
        try:
            first.mkdir()
        except FileExistsError:
            pass  # made meanwhile (another rank of the same run)
        except OSError as e:
            error = e.strerror or str(e)
        else:
            try:
                first.rmdir()
            except OSError:
                pass
        if probed is not None:
            probed[first] = error
    return None if error is None else f"{what} {folder} cannot be made ({error}); choose another"


def free_bytes(folder: str | Path) -> int | None:
    """Bytes this process may still write on the file system that holds ``folder`` (or would); None if unknown."""
    try:
        st = os.statvfs(existing_ancestor(folder))
    except (OSError, AttributeError):
        return None
    return (st.f_bfree if _IS_ROOT else st.f_bavail) * st.f_frsize  # root may use the blocks reserved for it


def _host_tag() -> str:
    import hashlib
    import socket

    return hashlib.sha256(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


HOST_TAG = _host_tag()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # someone else's process (or cannot tell): leave its files alone
    return True


def remove_stale_temp_files(folders, *, recursive: bool = False, of: Iterable[str] | None = None) -> list[Path]:
    """Delete ``.NAME.irae-tmp-PID-*`` files whose writer is gone (killed mid-write) in ``folders``.

    Only irae's own temp-file pattern is touched, and only when the process that
    made it no longer runs, so a concurrent irae writing into the same folder
    keeps its files; one made on another machine only once it is an hour old.
    ``of``: only the temp copies of these file names (a long name's temp copy
    carries it shortened).  Returns what was removed.
    """
    targets = None if of is None else set(of)
    removed: list[Path] = []
    for folder in {os.path.abspath(f) for f in folders}:
        walker = os.walk(folder) if recursive else [(folder, [], None)]
        for top, _dirs, names in walker:
            if names is None:
                try:
                    names = [e.name for e in os.scandir(top) if e.is_file(follow_symlinks=False)]
                except OSError:
                    continue
            for name in names:
                m = _temp_copy(name, targets)
                if m is None:
                    continue
                path = Path(top) / name
                host = m.groupdict().get("host")
                if host and host != HOST_TAG:
                    if not _untouched_for(path, FOREIGN_TEMP_SECONDS):
                        continue
                elif _pid_alive(int(m["pid"])):
                    continue
                try:
                    if path.is_file() and not path.is_symlink():
                        path.unlink()
                        removed.append(path)
                except OSError:
                    pass
    return sorted(removed)


def _temp_copy(name: str, targets: set[str] | None) -> re.Match | None:
    """The match when ``name`` is irae's temp copy (of one of ``targets``, when given), else None."""
    m = TEMP_NAME.fullmatch(name)
    if targets is None:
        return m
    if m is not None:
        if m["host"]:
            return m if any(temp_name(t, m["tag"]) == name for t in targets) else None
        return m if m["name"] in targets else None
    old = OLD_TRAIN_TEMP_NAME.fullmatch(name)
    return old if old and old["name"] in targets else None


def _untouched_for(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > seconds
    except OSError:
        return False
