"""The one progress display (irae_cli.progress): plain lines off a terminal, quiet, said lines."""

import io

from irae_cli.progress import Progress


def test_plain_status_lines_carry_fresh_fields_and_quiet_still_says():
    out = io.StringIO()
    bar = Progress("step", 10, fields={"loss": "-"}, columns=("loss {loss}",), stream=out, plain_every=3600)
    assert not bar.live  # not a terminal
    for step in range(1, 4):
        bar.update(completed=step, announce=False)  # the per-step count prints nothing
    bar.update(completed=4, loss="0.0123", force=True)
    bar.say("irae: note: one\nline")
    bar.close()
    assert out.getvalue().splitlines() == ["step 4/10  loss 0.0123", "irae: note: one\\nline"]  # one line, escaped

    quiet = io.StringIO()
    bar = Progress("restoring", 2, stream=quiet, quiet=True, plain_every=0)
    bar.update(advance=1, force=True)
    bar.say("irae: error: a.png: broken")
    assert quiet.getvalue() == "irae: error: a.png: broken\n"  # errors show even with -q


def test_a_bar_on_request_counts_and_closes(tmp_path):
    out = io.StringIO()
    with Progress("degrading", 3, stream=out, live=True, unit="images") as bar:
        assert bar.live
        bar.update(advance=3)
        bar.say("irae: error: x")
    assert not bar.live and "irae: error: x" in out.getvalue()
