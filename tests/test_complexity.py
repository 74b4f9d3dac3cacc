"""Complexity counts against hand computations, and the report in each run folder."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from l2bn_lit.__main__ import complexity
from l2bn_lit.complexity import DCASE_LIMITS, complexity_report, limit_report

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


def test_parameter_memory_at_the_shipping_precision_and_the_limits():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(18, 3))  # 75 parameters, 216 MACs
    report = complexity_report(model, [1, 5, 5], bits=16)
    assert report["parameter_memory_bytes"] == 75 * 2 and report["parameter_bits"] == 16
    assert complexity_report(model, [1, 5, 5], bits=8)["parameter_memory_bytes"] == 75
    within, text = limit_report(report, {"parameter_memory_bytes": 150, "macs": 216})
    assert within and text.count(": within") == 2  # at the limit is within
    within, text = limit_report(report, {"parameter_memory_bytes": 149, "macs": 200})
    assert not within
    assert "parameter memory: 150 of 149 (100.7%, 75 parameters x 16 bit): OVER by 1" in text
    assert "MACs: 216 of 200 (108.0%, whole model): OVER by 16" in text
    assert DCASE_LIMITS == {"parameter_memory_bytes": 128_000, "macs": 30_000_000}


def test_audio_models_count_the_network_without_the_frontend(capsys):
    from models import AudioSceneClassifier

    model = AudioSceneClassifier(num_classes=10, input_shape=[16000], sample_rate=16000, arch="dcase_baseline",
                                 n_fft=512, hop_length=256, n_mels=40)
    report = complexity_report(model, [16000])
    frames = 1 + 16000 // 256  # centred STFT
    assert report["macs_frontend"] == frames * (512 // 2 + 1) * 40  # the mel filterbank product (FFT not counted)
    assert report["macs_network"] == report["macs"] - report["macs_frontend"]
    assert report["macs_network"] == complexity_report(model.network.cnn, [1, 40, frames])["macs"]
    printed = complexity(["--config", str(ROOT / "configs" / "quickstart_dcase.yaml")])
    out = capsys.readouterr().out
    assert "DCASE Task 1 limits (128 kB parameters, 30 M MACs per 1-s clip)" in out
    verdict = "within the limits" if printed["parameter_memory_bytes"] <= 128_000 and printed["macs_network"] <= 30e6 else "OVER the limits"
    assert verdict in out
