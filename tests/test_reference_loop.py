"""The ablation's Lightning-free control loop (benchmarks/reference_cifar_loop.py): its augmentation
against a hand computation, its optimizer groups, and one run end to end on JPEGs in the CIFAR layout."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("reference_cifar_loop", ROOT / "benchmarks" / "reference_cifar_loop.py")
loop = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(loop)


def _crop_flip_by_hand(image: torch.Tensor, top: int, left: int, flipped: bool) -> torch.Tensor:
    padded = torch.zeros(image.shape[0], 40, 40, dtype=image.dtype)
    padded[:, 4:36, 4:36] = image
    out = padded[:, top : top + 32, left : left + 32]
    return out.flip(2) if flipped else out


def test_each_sample_is_a_crop_of_its_zero_padded_image_and_maybe_flipped():
    images = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)  # no zeros: padding is recognizable
    for per_batch in (True, False):
        torch.manual_seed(3)
        out = loop.augment(images, per_batch)
        offsets = []
        for i in range(16):
            matches = [
                (t, x, f)
                for t in range(9)
                for x in range(9)
                for f in (False, True)
                if torch.equal(out[i], _crop_flip_by_hand(images[i], t, x, f))
            ]
            assert len(matches) == 1, f"sample {i}: {len(matches)} crops match"
            offsets.append(matches[0][:2])
        assert (len(set(offsets)) == 1) == per_batch  # one offset for the batch, or one per sample


def test_padding_modes_and_the_mean_fill_pad_as_torchvision_does():
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    for mode, fill in (("reflect", "black"), ("edge", "black"), ("symmetric", "black"), ("constant", "mean")):
        args = argparse.Namespace(crop="sample", padding_mode=mode, pad_fill=fill, std=(0.2, 0.2, 0.2))
        torch.manual_seed(0)
        out = loop.train_inputs(images, args)
        source = loop.normalize(images, args.std) if fill == "mean" else images
        padded = loop.v2.functional.pad(source, [4], fill=0, padding_mode=mode)  # torchvision's own padding
        for i in range(6):
            crops = [padded[i, :, t : t + 32, x : x + 32] for t in range(9) for x in range(9)]
            crops += [c.flip(2) for c in crops]
            crops = [c if fill == "mean" else loop.normalize(c[None], args.std)[0] for c in crops]
            assert any(torch.allclose(out[i], c, atol=1e-6) for c in crops), (mode, fill, i)
        if fill == "mean":  # the border is the mean colour: 0 after normalizing
            assert (out == 0).any()


def test_weight_decay_groups_cover_every_parameter_once():
    model = loop.resnet20(10, loop.get_norm_layer("bn"), shortcut="B")
    for no_decay_1d in (False, True):
        args = argparse.Namespace(no_decay_1d=no_decay_1d, weight_decay=5e-4, lr=0.2)
        groups = loop.optimizer_for(model, args).param_groups
        decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
        expected = {id(p) for p in model.parameters() if p.ndim > 1 or not no_decay_1d}
        assert decayed == expected


def test_one_epoch_on_jpeg_folders_appends_a_result_row(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 32), ("test", 4)):
        for name in ("cat", "dog"):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    out = tmp_path / "loop.csv"
    for norm in ("bn", "l2bn"):
        result = subprocess.run(
            [
                sys.executable,
                "benchmarks/reference_cifar_loop.py",
                "--root",
                str(tmp_path / "data"),
                "--norm",
                norm,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    rows = pd.read_csv(out)
    assert list(rows["norm"]) == ["bn", "l2bn"]
    assert rows["test_acc"].between(0, 1).all() and (rows["test_acc"] * 8).round(6).mod(1).eq(0).all()  # k of 8 images


def test_summary_pairs_by_seed_within_each_setting():
    runs = pd.DataFrame(
        {
            "norm": ["bn", "l2bn", "bn", "l2bn", "bn", "l2bn"],
            "seed": [0, 0, 1, 1, 0, 0],
            "shortcut": ["A", "A", "A", "A", "B", "B"],
            "test_acc": [0.78, 0.74, 0.77, 0.75, 0.77, 0.76],
            "seconds": [1] * 6,
        }
    )
    table = loop.summarize(runs).set_index("settings")
    assert list(table.index) == ["shortcut=A", "shortcut=B"]
    assert table.loc["shortcut=A", "bn"] == 0.775 and table.loc["shortcut=A", "l2bn"] == 0.745
    assert table.loc["shortcut=A", "l2bn - bn, points"] == -3.0  # pairs -4 and -2
    # 95% t interval of (-4, -2): -3 +- t(0.975, 1) * sqrt(2) / sqrt(2) = -3 +- 12.706
    assert table.loc["shortcut=A", "95% CI"] == "(-15.71, +9.71)" and table.loc["shortcut=A", "pairs"] == 2
    assert table.loc["shortcut=B", "l2bn - bn, points"] == -1.0 and table.loc["shortcut=B", "95% CI"] == "—"
