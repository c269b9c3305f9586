"""``subq repro quadratic`` at a tiny size: the pairing of the networks and the files it writes.

Run: ``python -m pytest tests/repro/test_quadratic_repro.py -q``.
"""

from __future__ import annotations

import json

import torch
from rich.console import Console

from subq.layers.quadratic import QuadraticConv2d
from subq.repro import get_reproduction
from subq.repro import quadratic as repro

torch.set_num_threads(1)


def test_quadratic_net_at_relinear_init_is_the_conventional_net():
    torch.manual_seed(3)
    conventional = repro._ResNet8().eval()
    torch.manual_seed(3)
    quadratic = repro._ResNet8().eval()
    repro._make_quadratic(quadratic, "relinear")
    assert sum(isinstance(m, QuadraticConv2d) for m in quadratic.modules()) == 6
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(quadratic(x), conventional(x))
    torch.manual_seed(3)
    random_init = repro._ResNet8().eval()
    repro._make_quadratic(random_init, "random")
    assert not torch.allclose(random_init(x), conventional(x), atol=1e-3)


def test_zero_quadratic_lr_trains_exactly_the_conventional_net():
    data = repro._load_digits()
    assert [len(t) for t in data] == [1347, 1347, 450, 450]
    conventional = repro._train({"lr": 0.1, "init": None, "quadratic_lr_scale": None}, 0, data, epochs=1)
    frozen = repro._train({"lr": 0.1, "init": "relinear", "quadratic_lr_scale": 0.0}, 0, data, epochs=1)
    assert frozen["curve"] == conventional["curve"]
    assert conventional["test_acc"] > 0.3, "one epoch of SGD at lr 0.1 is well above chance (0.1)"


def test_run_writes_json_and_png(tmp_path):
    console = Console(file=open(tmp_path / "console.txt", "w"), width=160)
    record = repro.run(quick=True, out_dir=tmp_path, console=console, epochs=1, n_seeds=2)
    console.file.close()

    assert get_reproduction("quadratic") is repro and repro.CLAIM and "\n" not in repro.CLAIM
    written = json.loads((tmp_path / "quadratic.json").read_text())
    assert written["settings"]["seeds"] == [0, 1] and written["settings"]["epochs"] == 1
    names = [(row["lr"], row["name"]) for row in written["rows"]]
    assert len(names) == len(set(names)) == 8
    for row in written["rows"]:
        assert len(row["runs"]) == 2
        assert 0.0 <= row["min"] <= row["mean"] <= 1.0 and row["diverged"] in (0, 1, 2)
    assert len(written["verdicts"]) == 2
    assert written["rows"] == json.loads(json.dumps(record["rows"]))
    assert (tmp_path / "quadratic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = (tmp_path / "console.txt").read_text()
    assert "ReLinear (init + lr split)" in printed and "diverged" in printed
