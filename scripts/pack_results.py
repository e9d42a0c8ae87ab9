"""Pack a GPU job's results into a few files of bounded size, and take them apart again.

A job runner may bring back only a few files from the job's $OUT: by default at most 8
(RESULTS_MAX_FILES), each at most 16 MiB (RESULTS_MAX_FILE_MIB), 64 MiB together (RESULTS_MAX_MIB),
no more than two folders down (RESULTS_MAX_DEPTH), with names of letters, digits, '.', '_' and '-'.
Set those environment variables to the limits of the runner at hand.  A training job writes more
files than that (weights, checkpoints of 20+ MiB, logs, JSON, cards, a sheet), so a job works in a
folder of its own and packs it into $OUT after every step:

    python scripts/pack_results.py pack WORK OUT --name job-denoise --log job-denoise.log
    python scripts/pack_results.py unpack RESULTS DEST        # on this side, after the job
    python scripts/pack_results.py check OUT                  # would it all come back?

``pack`` writes ``NAME.tar.gz.partNN``: a gzip'd tar of WORK, cut into parts a little under the
per-file limit (15 MiB by default), whose first member ``NAME.manifest.json`` lists every file with
its size and sha256 and what did not fit. It replaces the previous pack of that NAME, stages the
new parts first (a job cut short mid-pack keeps a complete pack), and counts what other jobs left
in OUT, so two scripts can share one $OUT. When everything does not fit it leaves out the largest files first (checkpoints before
weights before images before logs) and says so in the manifest and on stdout. ``unpack`` joins
the parts of every pack it finds, extracts them under DEST/NAME and checks every file's sha256.
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

MAX_FILES = int(os.environ.get("RESULTS_MAX_FILES", "8"))
MAX_FILE = int(float(os.environ.get("RESULTS_MAX_FILE_MIB", "16")) * 2**20)
MAX_TOTAL = int(float(os.environ.get("RESULTS_MAX_MIB", "64")) * 2**20)
MAX_DEPTH = int(os.environ.get("RESULTS_MAX_DEPTH", "2"))  # folders below $OUT
PART = MAX_FILE - min(2**20, MAX_FILE // 16)  # a little under the per-file limit
MARGIN = min(2 * 2**20, MAX_TOTAL // 32)  # room for the live log to grow after a pack
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def returned_files(out: Path) -> list[Path]:
    """Files under ``out`` that come back (at most MAX_DEPTH folders down)."""
    return sorted(p for p in out.rglob("*") if p.is_file() and len(p.relative_to(out).parts) <= MAX_DEPTH + 1)


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
            found.append(f"{p.relative_to(out)}: {p.stat().st_size / 2**20:.1f} MiB "
                         f"(at most {MAX_FILE / 2**20:g} MiB per file)")
        if not all(NAME_OK.match(part) for part in p.relative_to(out).parts):
            found.append(f"{p.relative_to(out)}: a name that does not come back")
    deep = [p for p in out.rglob("*") if p.is_file() and len(p.relative_to(out).parts) > MAX_DEPTH + 1]
    found += [f"{p.relative_to(out)}: more than {MAX_DEPTH} folders down (does not come back)" for p in deep]
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
    mine = re.compile(rf"^{re.escape(name)}\.tar\.gz\.part\d\d$")
    others = [p for p in returned_files(out) if not mine.match(p.name)]
    other_bytes = sum(p.stat().st_size for p in others)
    files_left = MAX_FILES - len(others)
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

    blobs = {p.relative_to(work).as_posix(): p.read_bytes() for p in kept}
    manifest = {
        "name": name, "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [{"path": rel, "bytes": len(data), "sha256": sha256(data)} for rel, data in blobs.items()],
        "left_out": [{"path": p.relative_to(work).as_posix(), "bytes": p.stat().st_size} for p in dropped],
        "join": f"python scripts/pack_results.py unpack DIR DEST  (or: cat {name}.tar.gz.part* | tar -xz -C DEST)",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for rel, data in [(f"{name}.manifest.json", (json.dumps(manifest, indent=1) + "\n").encode()),
                          *blobs.items()]:
            info = tarfile.TarInfo(rel)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    chunks = [blob[i:i + PART] for i in range(0, len(blob), PART)]
    if len(chunks) > parts_max:  # no room even for the manifest, or gzip grew the data
        raise SystemExit(f"pack_results: {name}: {len(chunks)} part(s) needed, room for {parts_max} in {out}")
    manifest["parts"] = [{"file": f"{name}.tar.gz.part{i:02d}", "bytes": len(c)} for i, c in enumerate(chunks)]

    # Stage, then swap: a run cut short mid-pack still has the previous complete pack.
    with tempfile.TemporaryDirectory(prefix=f"pack-results-{name}-") as stage:
        stage = Path(stage)
        for part, c in zip(manifest["parts"], chunks):
            (stage / part["file"]).write_bytes(c)
        for p in out.iterdir():
            if mine.match(p.name):
                p.unlink()
        for p in stage.iterdir():
            os.replace(p, out / p.name)
    if not quiet:
        sizes = ", ".join(f"{p['file']} {p['bytes'] / 2**20:.1f} MiB" for p in manifest["parts"])
        print(f"pack_results: {name}: {len(blobs)} file(s), {raw / 2**20:.1f} MiB -> {sizes}")
        for d in manifest["left_out"]:
            print(f"pack_results: {name}: LEFT OUT (no room in what comes back): {d['path']} "
                  f"({d['bytes'] / 2**20:.1f} MiB)")
    return manifest


def unpack(src: Path, dest: Path) -> list[str]:
    done = []
    for first in sorted(src.rglob("*.tar.gz.part00")):
        name = first.name[: -len(".tar.gz.part00")]
        parts = sorted(first.parent.glob(f"{name}.tar.gz.part[0-9][0-9]"))
        if [p.name for p in parts] != [f"{name}.tar.gz.part{i:02d}" for i in range(len(parts))]:
            raise SystemExit(f"pack_results: {name}: parts missing ({', '.join(p.name for p in parts)})")
        target = dest / name
        target.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise SystemExit(f"pack_results: {name}: cannot unpack {len(parts)} part(s) ({e}); a part missing "
                             f"or cut short?") from None
        manifest = json.loads((target / f"{name}.manifest.json").read_text())
        for e in manifest["files"]:
            if sha256((target / e["path"]).read_bytes()) != e["sha256"]:
                raise SystemExit(f"pack_results: {target / e['path']}: sha256 mismatch")
        done.append(f"{manifest['name']}: {len(manifest['files'])} file(s) -> {target}"
                    + (f"; {len(manifest['left_out'])} left out on the job's machine" if manifest["left_out"] else ""))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack WORK into OUT within the RESULTS_MAX_* limits")
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
