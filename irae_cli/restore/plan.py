"""Map every input to its output, and find what must stop a run before any work.

Two inputs onto one output, an output that would replace an input, outputs that
already exist (without --skip-existing or --overwrite), an output folder that
cannot be written and a --report file that is the user's: each is a usage error
(exit 2), said before a single pixel is read.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import IraeError
from ..files import Source, discover, folder_problem, folders_reaching, is_within, no_images_message
from ..imagewrite import PIL_FORMAT, UNWRITABLE_IMAGE_SUFFIXES, output_suffix
from ..report_parts import leftover_parts
from ..routing import AUTO, JPEG_SUFFIXES, check_weights, header_quality, jpeg_route
from .options import RestoreOptions, check_options

LIST_LIMIT = 10  # how many paths an error message lists before "and N more"


@dataclass
class Job:
    source: Source
    output: Path
    exists: bool = False  # a file (or a link to one) is there: the output would replace it
    is_folder: bool = False  # a folder is there: _folder_clashes
    redo_empty: bool = False  # --skip-existing found a 0-byte file here (a killed write elsewhere): made again
    jpeg_quality: int | None = None  # --task auto: a JPEG's quality from its header, which may route it


@dataclass
class Plan:
    input: Path
    output: Path
    jobs: list[Job]  # to restore
    skipped: list[Job]  # output exists and --skip-existing
    existing: list[Job]  # output exists, neither --skip-existing nor --overwrite
    collisions: dict[Path, list[Source]]
    onto_inputs: list[Job]  # output path is an input file
    folder_clashes: list[str] = field(default_factory=list)  # output paths that are (or must be) folders
    report_problem: str | None = None
    folder_problems: list[str] = field(default_factory=list)  # output folders that cannot be written
    entries: list[Job] = field(default_factory=list)  # every input in discovery order, whatever its fate
    options: RestoreOptions | None = None  # as checked and normalised by plan_restore
    max_quality: int | None = None  # --task auto: the JPEG weights' max_quality (routes JPEGs at or below it)

    def part(self, indices: list[int]) -> Plan:
        """The same plan for ``entries[i]`` only; the mapping's problems (collisions, onto inputs) stay whole."""
        keep = {id(self.entries[i]) for i in indices}
        return dataclasses.replace(self, entries=[self.entries[i] for i in sorted(indices)],
                                   jobs=[j for j in self.jobs if id(j) in keep],
                                   skipped=[j for j in self.skipped if id(j) in keep],
                                   existing=[j for j in self.existing if id(j) in keep])

    def problems(self) -> list[str]:
        """Why this plan must not run (usage errors, exit 2); empty when it may."""
        out = [self.report_problem] if self.report_problem else []
        out += self.folder_problems
        if self.onto_inputs:
            out.append("these outputs would replace input files; choose another OUTPUT or a --suffix: "
                       + _listing([str(j.output) for j in self.onto_inputs]))
        if self.collisions:
            out.append("several inputs would be written to the same output; rename them, use --format same "
                       "or --exclude: " + _listing([f"{o} <- {', '.join(str(s.path) for s in srcs)}"
                                                  for o, srcs in self.collisions.items()]))
        if self.folder_clashes:
            out.append("these outputs would have to be files where a folder is or must be; rename the inputs, "
                       "change --format or --suffix, or --exclude one: " + _listing(self.folder_clashes))
        if self.existing:
            out.append(f"{len(self.existing)} output file(s) already exist; pass --skip-existing to resume "
                       f"or --overwrite to replace them: " + _listing([str(j.output) for j in self.existing]))
        return out


def _listing(items: list[str]) -> str:
    shown = "; ".join(items[:LIST_LIMIT])
    return shown + (f"; and {len(items) - LIST_LIMIT} more" if len(items) > LIST_LIMIT else "")


def plan_restore(input: str | Path, output: str | Path, opts: RestoreOptions) -> Plan:
    """Map inputs to outputs and find collisions and existing outputs; reads no pixels.

    The plan carries the checked, normalised options (``plan.options``); ``opts`` is not changed.
    """
    opts = check_options(opts)
    check_sigma_weights(opts)
    input, output = Path(input), Path(output)
    if not input.exists():
        raise IraeError(f"{input}: no such file or folder")
    max_quality = check_weights() if opts.task == AUTO else None
    if input.is_file():
        sources = [Source(input, Path(input.name))]
        qualities = _qualities(sources, opts)
        targets = [_file_target(input, output, opts, _to_png(qualities[0], max_quality, opts))]
    else:
        sources = _folder_sources(input, output, opts)
        qualities = _qualities(sources, opts)
        targets = [output / s.rel.parent / f"{s.rel.stem}{opts.suffix}"
                            f"{_output_ext(s.path, opts, _to_png(q, max_quality, opts))}"
                   for s, q in zip(sources, qualities)]
    plan = _sort_jobs(input, output, sources, targets, opts)
    plan.max_quality = max_quality
    for job, q in zip(plan.entries, qualities):
        job.jpeg_quality = q
    plan.report_problem = _report_problem(input, opts, [j.output for j in plan.entries],
                                          {os.path.realpath(s.path) for s in sources})
    plan.folder_problems = _folder_problems(plan.jobs) + _guarded_folder_problems(input, output, opts, plan.entries)
    return plan


def check_sigma_weights(opts: RestoreOptions) -> None:
    """Before any work: --sigma needs weights conditioned on the noise level, --input-quality weights
    conditioned on the JPEG quality (read from their metadata)."""
    from ..weights import read_model_config, require_default_weights

    for flag, value, condition, what in (("--sigma", opts.sigma, "sigma", "the noise level"),
                                         ("--input-quality", opts.input_quality, "quality", "the JPEG quality")):
        if value is None:
            continue
        name = opts.weights or require_default_weights(opts.task)
        if read_model_config(name).get("condition", "none") != condition:
            raise IraeError(f"{flag}: the weights {name} are not conditioned on {what}; leave {flag} out, or "
                            f"pass weights trained with 'irae train --condition {condition}'")


def _qualities(sources: list[Source], opts: RestoreOptions) -> list[int | None]:
    """--task auto: each JPEG's quality from its header (the route, and so the output name, may follow from it)."""
    if opts.task != AUTO:
        return [None] * len(sources)
    return [header_quality(s.path) for s in sources]


def _to_png(quality: int | None, max_quality: int | None, opts: RestoreOptions) -> bool:
    """Whether a JPEG input's output is a PNG under --format auto: it goes to the JPEG model."""
    return opts.task == "jpeg" or (opts.task == AUTO and jpeg_route(quality, max_quality) is not None)


def _file_target(input: Path, output: Path, opts: RestoreOptions, to_png: bool) -> Path:
    suffix = output.suffix.lower()
    if suffix in PIL_FORMAT and not output.is_dir():
        if opts.format not in ("auto", "same") and PIL_FORMAT[output_suffix(suffix, opts.format)] != PIL_FORMAT[suffix]:
            raise IraeError(f"--format {opts.format} and OUTPUT {output} disagree; drop --format or name the "
                            f"file {output.with_suffix(output_suffix(suffix, opts.format))}")
        return output
    if suffix in UNWRITABLE_IMAGE_SUFFIXES and not output.is_dir():
        raise IraeError(f"OUTPUT {output}: irae does not write {suffix.lstrip('.').upper()} files; name a "
                        f"{', '.join(sorted(PIL_FORMAT))} file, or a folder")
    if (output.exists() or output.is_symlink()) and not output.is_dir():
        raise IraeError(f"OUTPUT {output} exists and is neither a folder nor an image file; give a folder, "
                        f"or an image file name such as {output.with_suffix('.png')}")
    return output / f"{input.stem}{opts.suffix}{_output_ext(input, opts, to_png)}"


def _folder_sources(input: Path, output: Path, opts: RestoreOptions) -> list[Source]:
    if output.exists() and not output.is_dir():
        raise IraeError(f"{output}: exists and is not a folder; OUTPUT must be a folder for a folder INPUT")
    if os.path.realpath(output) == os.path.realpath(input):
        raise IraeError(f"OUTPUT {output} is the INPUT folder; irae never writes into its input — "
                        f"choose another folder (a subfolder such as {input / 'restored'} is fine)")
    skip = [output] + ([opts.masks] if opts.masks is not None else [])
    sources = discover(input, recursive=opts.recursive, include=opts.include or None,
                       exclude=opts.exclude or None, skip=skip)
    if not sources:
        hint = "" if opts.recursive else " (subfolders were not searched: drop -R)"
        raise IraeError(no_images_message(input, hint))
    return sources


def _output_ext(src: Path, opts: RestoreOptions, to_png: bool) -> str:
    if opts.format == "auto":
        # Re-encoding a de-blocked image as JPEG would put the artefacts back.
        if to_png and src.suffix.lower() in JPEG_SUFFIXES:
            return ".png"
        return output_suffix(src.suffix, "same")
    return output_suffix(src.suffix, opts.format)


def _sort_jobs(input: Path, output: Path, sources: list[Source], targets: list[Path],
               opts: RestoreOptions) -> Plan:
    """Give every input its fate: restore, skip, refuse (its output exists, or is an input), collide."""
    real_folders: dict[Path, str] = {}
    inputs_real = {_real_path(s.path, os.path.islink(s.path), real_folders) for s in sources}
    by_output: dict[Path, list[Source]] = defaultdict(list)
    plan = Plan(input, output, [], [], [], {}, [], options=opts)
    for s, t in zip(sources, targets):
        by_output[t].append(s)
        there, link = _what_is_at(t)
        job = Job(s, t, exists=there == "file", is_folder=there == "folder")
        plan.entries.append(job)
        if _real_path(t, link, real_folders) in inputs_real:
            plan.onto_inputs.append(job)
        elif job.exists and opts.skip_existing and empty_file(t):
            job.redo_empty = True  # an empty file is no finished output: make it again
            plan.jobs.append(job)
        elif job.exists and opts.skip_existing:
            plan.skipped.append(job)
        elif job.exists and not opts.overwrite:
            plan.existing.append(job)
        else:
            plan.jobs.append(job)
    plan.collisions = {t: srcs for t, srcs in by_output.items() if len(srcs) > 1}
    plan.folder_clashes = _folder_clashes(plan.entries, output)
    return plan


def _folder_problems(jobs: list[Job]) -> list[str]:
    folders = sorted({j.output.parent for j in jobs})
    probed: dict = {}
    problems = sorted({p for p in (folder_problem(f, probed=probed) for f in folders) if p})
    if len(problems) > 1:
        problems = [f"{len(problems)} output folders cannot be written: " + _listing(problems)]
    return problems


def _guarded_folder_problems(input: Path, output: Path, opts: RestoreOptions, entries: list[Job]) -> list[str]:
    """Outputs that would land in the masks folder or in the INPUT folder, a link on the way included.
    An OUTPUT made inside either on purpose is allowed (reading skips it)."""
    parents = [j.output.parent for j in entries]
    out = []
    if opts.masks is not None:
        inside = output if is_within(output, opts.masks) and not is_within(opts.masks, output) else None
        into_masks = folders_reaching(parents, opts.masks, allowed=inside)
        if into_masks:
            out.append(f"outputs would be written into the --masks folder {opts.masks}; choose another OUTPUT: "
                       + _listing([str(f) for f in into_masks]))
    if input.is_dir():
        into_input = folders_reaching(parents, input, allowed=output)
        if into_input:
            out.append(f"outputs would be written into the INPUT folder {input} (a link in OUTPUT leads there); "
                       f"remove the link or choose another OUTPUT: " + _listing([str(f) for f in into_input]))
    return out


def _what_is_at(path: Path) -> tuple[str | None, bool]:
    """("file" / "folder" / None, is a link) from one lstat where nothing is there (the common case)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None, False
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            return "file", True  # a broken link: writing would go through it
        return ("folder" if stat.S_ISDIR(st.st_mode) else "file"), True
    return ("folder" if stat.S_ISDIR(st.st_mode) else "file"), False


def _real_path(path: Path, link: bool, real_folders: dict[Path, str]) -> str:
    """``os.path.realpath(path)``, resolving each output folder once (thousands of outputs share a few)."""
    if link:
        return os.path.realpath(path)
    folder = real_folders.get(path.parent)
    if folder is None:
        folder = real_folders[path.parent] = os.path.realpath(path.parent)
    return os.path.join(folder, path.name)


def _folder_clashes(entries: list[Job], output: Path) -> list[str]:
    """Outputs whose path is a folder: an existing one, or one another output needs for itself."""
    folders = {j.output for j in entries if j.is_folder}
    clashes = {f"{f} (an existing folder)" for f in folders}
    targets = {j.output for j in entries}
    needed: dict[Path, Path] = {}  # folder below OUTPUT an output needs -> the first such output
    for j in entries:
        folder = j.output.parent
        while folder not in needed and folder != output and folder != folder.parent:
            needed[folder] = j.output
            folder = folder.parent
    clashes.update(f"{up} (also the folder of {needed[up]})" for up in (targets & needed.keys()) - folders)
    return sorted(clashes)


def empty_file(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size == 0
    except OSError:
        return False


def _report_problem(input: Path, opts: RestoreOptions, outputs: list[Path], inputs_real: set) -> str | None:
    """The --report file is the user's too: never inside INPUT, never an image, never silently replaced."""
    if opts.report is None:
        return None
    report = Path(opts.report)
    if report.is_dir():
        return f"--report {report} is a folder; give a file name such as {report / 'report.jsonl'}"
    real = os.path.realpath(report)
    if real in inputs_real or real in {os.path.realpath(o) for o in outputs}:
        return f"--report {report} is one of the images; choose another file name"
    if input.is_dir() and is_within(report, input):
        return f"--report {report} lies inside the INPUT folder; irae never writes into its input"
    if opts.masks is not None and is_within(report, opts.masks):
        return f"--report {report} lies inside the --masks folder; choose a file elsewhere"
    return _report_file_problem(report, opts)


def _report_file_problem(report: Path, opts: RestoreOptions) -> str | None:
    """An existing report (or parts an interrupted torchrun run left) is replaced or added to only when asked;
    an empty one (a run stopped before its first image) holds nothing to lose."""
    if report.exists() and not (opts.overwrite or opts.skip_existing) and not empty_file(report):
        return (f"--report {report} already exists; pass --overwrite to replace it, --skip-existing to add this "
                f"run's lines to it, or choose another file")
    parts = leftover_parts(report)
    if parts and not (opts.overwrite or opts.skip_existing):
        return (f"--report {report}: {parts[0]}{f' and {len(parts) - 1} more' if len(parts) > 1 else ''} were left "
                f"by an interrupted torchrun run; pass --skip-existing to add their lines to the report or "
                f"--overwrite to discard them")
    if (report.exists() or report.is_symlink()) and not report.is_file():
        return f"--report {report} is not a regular file; give a file name"
    if report.exists() and not os.access(report, os.W_OK):
        return f"--report {report} is not writable (permission denied); choose another file"
    return folder_problem(report.parent, "--report folder")
