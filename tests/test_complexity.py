"""Complexity counts against hand computations, and the report in each run folder."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from l2bn_lit.__main__ import complexity
from l2bn_lit.complexity import complexity_report

ROOT = Path(__file__).resolve().parents[1]


def test_counts_match_a_hand_computation():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(18, 3))
    report = complexity_report(model, [1, 5, 5])
    assert report["parameters"] == 2 * 9 + 18 * 3 + 3
    assert report["parameter_bytes"] == 4 * report["parameters"]
    assert report["macs"] == 2 * 3 * 3 * 9 + 18 * 3  # conv: 18 outputs x 9 taps; linear: 18 x 3
    assert model.training  # mode restored


def test_command_prints_the_configs_model(capsys):
    report = complexity(["--config", str(ROOT / "configs" / "cifar10_resnet20.yaml"), "--data.init_args.root", "unused"])
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{") :])
    assert printed["parameters"] == report["parameters"] == 272474
    assert printed["arch"] == "resnet20" and printed["norm"] == "l2bn"
    assert 40e6 < report["macs"] < 42e6  # ResNet-20: about 41 M multiply-accumulates per 32x32 image
