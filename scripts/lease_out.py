"""Fit a device run's results into what the device tool brings back, and take them apart again.

The device tool returns at most 8 files from $OUT, each at most 16 MiB, 64 MiB together, no more
than two folders down, with names of letters, digits, '.', '_' and '-'. A training lease writes
more files than that (weights, checkpoints of 20+ MiB, logs, JSON, cards, a sheet), so a run
works in a folder of its own and packs it into $OUT after every step:

    python scripts/lease_out.py pack WORK OUT --name lease-denoise --log lease-denoise.log
    python scripts/lease_out.py unpack FILES_AT DEST           # on this side, after the run
    python scripts/lease_out.py check OUT                     # would the tool bring it all back?

``pack`` writes ``NAME.tar.gz.partNN`` (a gzip'd tar of WORK cut into parts of at most 15 MiB) and
``NAME.json`` (what is in it, with sizes and sha256, and what did not fit), replacing the previous
pack of that NAME. It counts what other runs left in OUT, so two scripts can share one $OUT. When
everything does not fit it leaves out the largest files first (checkpoints before weights before
logs) and says so in NAME.json and on stdout. ``unpack`` checks each part's sha256, joins them
and extracts WORK's files under DEST.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path

MAX_FILES = 8
MAX_FILE = 16 * 2**20
MAX_TOTAL = 64 * 2**20
PART = 15 * 2**20  # a little under the per-file limit
MARGIN = 2 * 2**20  # room for the live log to grow after a pack
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def returned_files(out: Path) -> list[Path]:
    """Files under ``out`` the tool would consider (two folder levels)."""
    return sorted(p for p in out.rglob("*") if p.is_file() and len(p.relative_to(out).parts) <= 3)


def problems(out: Path) -> list[str]:
    files = returned_files(out)
    found = []
    if len(files) > MAX_FILES:
        found.append(f"{len(files)} files (at most {MAX_FILES} come back)")
    total = sum(p.stat().st_size for p in files)
    if total > MAX_TOTAL:
        found.append(f"{total / 2**20:.1f} MiB in all (at most {MAX_TOTAL // 2**20} MiB come back)")
    for p in files:
        if p.stat().st_size > MAX_FILE:
            found.append(f"{p.relative_to(out)}: {p.stat().st_size / 2**20:.1f} MiB (at most 16 MiB per file)")
        if not all(NAME_OK.match(part) for part in p.relative_to(out).parts):
            found.append(f"{p.relative_to(out)}: a name the tool does not bring back")
    deep = [p for p in out.rglob("*") if p.is_file() and len(p.relative_to(out).parts) > 3]
    found += [f"{p.relative_to(out)}: more than two folders down (not brought back)" for p in deep]
    return found


def _priority(path: Path) -> tuple:
    """Smaller number = kept first when space runs out."""
    name = path.name
    if ".ckpt." in name:
        rank = 3
    elif name.endswith(".safetensors"):
        rank = 2
    elif name.endswith((".png", ".jpg")):
        rank = 1
    else:
        rank = 0
    return rank, path.stat().st_size, str(path)


def pack(work: Path, out: Path, name: str, log: str | None = None, quiet: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    mine = re.compile(rf"^{re.escape(name)}\.(tar\.gz\.part\d\d|json)$")
    others = [p for p in returned_files(out) if not mine.match(p.name)]
    other_bytes = sum(p.stat().st_size for p in others)
    files_left = MAX_FILES - len(others) - 1  # NAME.json
    bytes_left = MAX_TOTAL - other_bytes - MARGIN - 64 * 1024
    if log is not None and not any(p.name == log for p in others):
        files_left -= 1  # the live log, written (tee'd) beside the pack later
    parts_max = max(0, min(files_left, bytes_left // PART))
    budget = parts_max * PART

    files = sorted((p for p in work.rglob("*") if p.is_file()), key=_priority) if work.is_dir() else []
    kept, dropped, raw = [], [], 0
    for p in files:
        size = p.stat().st_size
        if raw + size <= budget:  # gzip rarely grows data, so raw size bounds the packed size
            kept.append(p)
            raw += size
        else:
            dropped.append(p)

    buf = io.BytesIO()
    entries = []
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for p in kept:
            data = p.read_bytes()
            rel = p.relative_to(work).as_posix()
            info = tarfile.TarInfo(rel)
            info.size, info.mtime = len(data), int(p.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
            entries.append({"path": rel, "bytes": len(data), "sha256": sha256(data)})
    blob = buf.getvalue()
    chunks = [blob[i:i + PART] for i in range(0, len(blob), PART)] if kept else []
    if len(chunks) > parts_max:  # cannot happen unless gzip grew the data; refuse rather than overflow
        raise SystemExit(f"lease_out: {name}: {len(chunks)} parts needed, room for {parts_max}")

    manifest = {
        "name": name, "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": entries, "left_out": [{"path": p.relative_to(work).as_posix(), "bytes": p.stat().st_size}
                                        for p in dropped],
        "parts": [{"file": f"{name}.tar.gz.part{i:02d}", "bytes": len(c), "sha256": sha256(c)}
                  for i, c in enumerate(chunks)],
        "join": f"python scripts/lease_out.py unpack DIR DEST  (or: cat {name}.tar.gz.part* | tar -xz -C DEST)",
    }
    # Stage, then swap: a run cut short mid-pack still has the previous complete pack.
    with tempfile.TemporaryDirectory(prefix=f"lease-out-{name}-") as stage:
        stage = Path(stage)
        for part, c in zip(manifest["parts"], chunks):
            (stage / part["file"]).write_bytes(c)
        (stage / f"{name}.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for p in out.iterdir():
            if mine.match(p.name):
                p.unlink()
        for p in stage.iterdir():
            os.replace(p, out / p.name)
    if not quiet:
        sizes = ", ".join(f"{p['file']} {p['bytes'] / 2**20:.1f} MiB" for p in manifest["parts"]) or "no parts"
        print(f"lease_out: {name}: {len(entries)} file(s), {raw / 2**20:.1f} MiB -> {sizes}")
        for d in manifest["left_out"]:
            print(f"lease_out: {name}: LEFT OUT (no room in what the tool returns): {d['path']} "
                  f"({d['bytes'] / 2**20:.1f} MiB)")
    return manifest


def unpack(src: Path, dest: Path) -> list[str]:
    done = []
    for man_path in sorted(src.glob("*.json")):
        try:
            manifest = json.loads(man_path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict) or "parts" not in manifest or "files" not in manifest:
            continue
        blob = b""
        for part in manifest["parts"]:
            data = (src / part["file"]).read_bytes()
            if sha256(data) != part["sha256"]:
                raise SystemExit(f"lease_out: {part['file']}: sha256 mismatch (incomplete transfer?)")
            blob += data
        target = dest / manifest["name"]
        target.mkdir(parents=True, exist_ok=True)
        if blob:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
                tar.extractall(target, filter="data")
        for e in manifest["files"]:
            if sha256((target / e["path"]).read_bytes()) != e["sha256"]:
                raise SystemExit(f"lease_out: {target / e['path']}: sha256 mismatch")
        done.append(f"{manifest['name']}: {len(manifest['files'])} file(s) -> {target}"
                    + (f"; {len(manifest['left_out'])} left out on the device" if manifest["left_out"] else ""))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack WORK into OUT within the tool's limits")
    p.add_argument("work", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--name", required=True, help="prefix of the parts and the manifest")
    p.add_argument("--log", help="name of a live log kept beside the pack in OUT (counted as one file)")
    u = sub.add_parser("unpack", help="join and extract every pack found in a folder")
    u.add_argument("src", type=Path)
    u.add_argument("dest", type=Path)
    c = sub.add_parser("check", help="say whether everything in OUT would come back")
    c.add_argument("out", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        if not NAME_OK.match(a.name):
            ap.error("--name: letters, digits, '.', '_' and '-' only")
        pack(a.work, a.out, a.name, a.log)
        return 0
    if a.cmd == "unpack":
        for line in unpack(a.src, a.dest):
            print(line)
        return 0
    files = returned_files(a.out)
    for f in files:
        print(f"{f.stat().st_size / 2**20:8.2f} MiB  {f.relative_to(a.out)}")
    found = problems(a.out)
    total = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} file(s), {total:.2f} MiB: " + ("; ".join(found) if found else "all within the limits"))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
