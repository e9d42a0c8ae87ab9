"""Reports name weights as the user gave them: no absolute path of the machine that made them."""

import json

from util import ROOT, irae


def test_benchmark_json_names_shipped_weights_not_their_location(tmp_path):
    out = tmp_path / "inv.json"
    r = irae("benchmark", "invertibility", "tests/data", "--weights", "irae-denoise-small", "--device", "cpu",
             "--json", out, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert str(ROOT) not in text
    assert json.loads(text)["settings"]["weights"] == "irae-denoise-small"
