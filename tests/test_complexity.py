"""Complexity counts against hand computations, and the report in each run folder."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from l2bn_lit.commands.complexity import main as complexity
from l2bn_lit.reports.model_cost import DCASE_LIMITS, complexity_report, limit_report

ROOT = Path(__file__).resolve().parents[1]


def test_counts_match_a_hand_computation():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(18, 3))
    report = complexity_report(model, [1, 5, 5])
    assert report["parameters"] == 2 * 9 + 18 * 3 + 3
    assert report["parameter_bytes"] == 4 * report["parameters"]
    # torchinfo's convention (the challenge's): conv 18 outputs x 9 taps; linear 18 x 3 weights and 3 bias adds
    assert report["macs"] == 2 * 3 * 3 * 9 + 18 * 3 + 3
    assert "l2bn_inference_macs" not in report and report["macs_for_limits"] == report["macs"]
    assert model.training  # mode restored


def test_command_prints_the_configs_model(capsys):
    report = complexity(
        ["--config", str(ROOT / "configs" / "cifar10_resnet20.yaml"), "--data.init_args.root", "unused"]
    )
    out = capsys.readouterr().out
    printed = json.loads(out[out.index("{") :])
    assert printed["parameters"] == report["parameters"] == 272474
    assert printed["arch"] == "resnet20" and printed["norm"] == "l2bn"
    assert 40e6 < report["macs"] < 42e6  # ResNet-20: about 41 M multiply-accumulates per 32x32 image


def test_parameter_memory_at_the_shipping_precision_and_the_limits():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(18, 3))  # 75 parameters, 219 MACs
    report = complexity_report(model, [1, 5, 5], bits=16)
    assert report["parameter_memory_bytes"] == 75 * 2 and report["parameter_bits"] == 16
    assert complexity_report(model, [1, 5, 5], bits=8)["parameter_memory_bytes"] == 75
    within, text = limit_report(report, {"parameter_memory_bytes": 150, "macs": 219})
    assert within and text.count(": within") == 2  # at the limit is within
    within, text = limit_report(report, {"parameter_memory_bytes": 149, "macs": 200})
    assert not within
    assert "parameter memory: 150 of 149 (100.7%, 75 parameters x 16 bit): OVER by 1" in text
    assert "MACs: 219 of 200 (109.5%, torchinfo, whole model): OVER by 19" in text
    assert DCASE_LIMITS == {"parameter_memory_bytes": 128_000, "macs": 30_000_000}


def test_audio_models_count_the_network_without_the_frontend(capsys):
    from models import AudioSceneClassifier

    model = AudioSceneClassifier(
        num_classes=10,
        input_shape=[16000],
        sample_rate=16000,
        arch="dcase_baseline",
        frontend={"n_fft": 512, "hop_length": 256, "n_mels": 40},
    )
    report = complexity_report(model, [16000])
    frames = 1 + 16000 // 256  # centred STFT
    assert report["macs_frontend"] == frames * (512 // 2 + 1) * 40  # the mel filterbank product (FFT not counted)
    assert report["macs_network"] == report["macs"] - report["macs_frontend"]
    assert report["macs_network"] == complexity_report(model.network.cnn, [1, 40, frames])["macs"]
    printed = complexity(["--config", str(ROOT / "configs" / "quickstart_dcase.yaml")])
    out = capsys.readouterr().out
    assert "DCASE Task 1 limits (128 kB parameters, 30 M MACs per 1-s clip)" in out
    verdict = (
        "within the limits"
        if printed["parameter_memory_bytes"] <= 128_000 and printed["macs_network"] <= 30e6
        else "OVER the limits"
    )
    assert verdict in out


def test_l2bn_inference_cost_by_hand_and_the_verdict_on_the_sum():
    """An L2BN layer reads each sample's 2 x 3 x 3 = 18 values for its norm (18 MACs) and scales them
    (18 multiplies); torchinfo counts only its 2 + 2 affine parameters, as for BatchNorm."""
    from l2bn_lit import L2BN2d

    l2bn = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), L2BN2d(2), nn.Flatten(), nn.Linear(18, 3))
    bn = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 3))
    report, plain = complexity_report(l2bn, [1, 5, 5]), complexity_report(bn, [1, 5, 5])
    assert report["macs"] == plain["macs"] == 162 + 2 + 2 + 54 + 3  # torchinfo: conv, norm weight + bias, linear
    assert (report["l2bn_layers"], report["l2bn_values"], report["l2bn_inference_macs"]) == (1, 18, 36)
    assert report["macs_for_limits"] == report["macs"] + 36 and "l2bn_values" not in plain
    within, text = limit_report(report, {"parameter_memory_bytes": 1000, "macs": report["macs"] + 35})
    assert not within and "L2BN per-sample norms 36 (18 values in 1 layers" in text and "OVER by 1" in text


def test_the_dcase_limits_are_checked_from_the_config_alone(tmp_path, capsys):
    """No data set on disk: the input shape follows from the front-end settings, the label set is TAU's ten scenes."""
    report = complexity(
        [
            "--config",
            str(ROOT / "configs" / "dcase2024_task1_cpmobile.yaml"),
            "--data.init_args.root",
            str(tmp_path / "none"),
        ]
    )
    assert report["parameters"] == 56_380 and report["macs_network"] == 28_082_708
    assert report["l2bn_values"] == 781_888 and report["macs_for_limits"] == 28_082_708 + 2 * 781_888
    out = capsys.readouterr().out
    assert "within the limits" in out and "a reviewer counting with torchinfo alone sees 28,082,708 MACs" in out
    wide = complexity(
        [
            "--config",
            str(ROOT / "configs" / "dcase2024_task1_cpmobile.yaml"),
            "--data.init_args.root",
            str(tmp_path / "none"),
            "--model.init_args.arch_options",
            '{"expansion_rate": 2.1}',
        ]
    )
    assert (
        wide["macs_network"] == 29_419_156 and wide["macs_for_limits"] == 29_419_156 + 2 * 800_320
    )  # the baseline's width: over
    assert "OVER the limits" in capsys.readouterr().out


def test_unknown_arch_option_names_the_accepted_ones():
    import pytest

    from models.audio import build_audio_model

    with pytest.raises(
        ValueError,
        match=r"arch_options \['width'\] are not options of 'cp_mobile'; it takes in_channels, base_channels",
    ):
        build_audio_model("cp_mobile", 10, "l2bn", None, {"width": 2})


def test_counting_leaves_the_random_state_alone():
    """torchinfo's ``input_size`` builds a random input (the library behaviour, shown last): counted in
    every fit (ComplexityReport, after a resumed run's random state is restored), that would change
    the resumed run's augmentation draws."""
    import torch
    from torchinfo import summary

    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.Flatten(), nn.Linear(18, 3))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    complexity_report(model, [1, 5, 5])
    assert torch.equal(state, torch.get_rng_state())
    summary(model, input_size=(1, 1, 5, 5), verbose=0)
    assert not torch.equal(state, torch.get_rng_state())
