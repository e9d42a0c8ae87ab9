"""Ctrl-C held over the lines that must not be cut in two: a signal in the middle is raised after them."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from irae_cli.files import Source
from irae_cli.interrupts import catch_sigterm, held_interrupts, release_sigterm
from irae_cli.restore.items import Item
from irae_cli.restore.plan import Job
from irae_cli.restore.report import Reporter
from irae_cli.testset import make_test_set, read_manifest


@pytest.fixture
def default_sigint():
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_a_signal_inside_is_raised_after_the_block_and_not_in_it(default_sigint):
    after = []
    with pytest.raises(KeyboardInterrupt):
        with held_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            after.append("still running")
    assert after == ["still running"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_sigterm_is_held_too(default_sigint):
    before = catch_sigterm()  # as every irae command does: SIGTERM stops it as Ctrl-C does
    try:
        with pytest.raises(KeyboardInterrupt):
            with held_interrupts():
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        release_sigterm(before)


def test_a_signal_the_process_ignores_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with held_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_off_the_main_thread_nothing_is_held():
    seen = []

    def work():
        with held_interrupts():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert seen == [signal.getsignal(signal.SIGINT)]


def test_ctrl_c_while_a_line_is_written_keeps_the_line(tmp_path: Path, default_sigint, monkeypatch):
    report = tmp_path / "r.jsonl"
    reporter = Reporter(1, report, False, False, True, io.StringIO(), {"device": "cpu"})
    write = reporter._write

    def interrupted_write(record):  # Ctrl-C arrives after the item is marked reported, before its line
        os.kill(os.getpid(), signal.SIGINT)
        write(record)

    monkeypatch.setattr(reporter, "_write", interrupted_write)
    item = Item(Job(Source(tmp_path / "a.png", Path("a.png")), tmp_path / "out" / "a.png"))
    with pytest.raises(KeyboardInterrupt):
        reporter.done(item)
    reporter.close()
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(r["output"], r["status"]) for r in lines] == [(str(tmp_path / "out" / "a.png"), "ok")]
    assert item.reported


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_while_an_image_is_described_lists_it_once(tmp_path: Path, default_sigint, workers):
    clean = tmp_path / "clean"
    clean.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(clean / f"{i}.png")
    seen = []

    def on_file(src, failures):  # Ctrl-C lands after the image's lines are added, inside the callback
        seen.append(src)
        if len(seen) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    out = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):
        make_test_set(clean, out, task="denoise", sigma=[(25.0, 25.0)], workers=workers, on_file=on_file)
    ids = [r["id"] for r in read_manifest(out)]
    assert len(ids) == len(set(ids)) >= 2
    written = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    listed = {r[k] for r in read_manifest(out) for k in ("clean", "degraded") if k in r}
    assert written == listed
