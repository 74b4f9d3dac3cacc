"""The analysis callbacks: the measures against hand computations, the callbacks against an independent
forward/backward pass, and the files they write from a CLI run."""

from __future__ import annotations

import copy
import math
import statistics

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from distributed import run_distributed, set_launcher_env
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from l2bn_lit.lit import ImageClassifier
from l2bn_lit.lit.callbacks import FeatureNormMonitor, GradientNormMonitor, PenultimateGeometry
from l2bn_lit.lit.cli import main
from l2bn_lit.nn import NORM_TYPES
from l2bn_lit.reports.geometry import coefficient_of_variation, feature_geometry
from l2bn_lit.reports.runs import analysis_summary


def test_coefficient_of_variation_by_hand():
    x = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, 5.0]])  # norms 5, 10, 5
    assert coefficient_of_variation(x) == pytest.approx(statistics.stdev([5, 10, 5]) / statistics.mean([5, 10, 5]))
    assert coefficient_of_variation(torch.ones(4, 2, 3, 3)) == 0.0


def test_feature_geometry_by_hand():
    features = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # centroids (1, 0) and (0, 1.5): every sample points at its centroid, the centroids are 90 deg apart;
    # within = (0 + 0 + 0.25 + 0.25) / 4; mean (0.5, 0.75), between = 4 * (0.25 + 0.5625) / 4
    geometry = feature_geometry(features, labels)
    assert geometry["intra_cos"] == pytest.approx(1.0)
    assert geometry["inter_angle"] == pytest.approx(90.0)
    assert geometry["scatter_ratio"] == pytest.approx(0.125 / 0.8125)
    with pytest.raises(ValueError, match="at least two classes"):
        feature_geometry(features, torch.zeros(4))


def test_feature_geometry_against_numpy_loops():
    rng = np.random.default_rng(0)
    features, labels = rng.standard_normal((60, 5)) + 1, rng.integers(0, 4, 60)
    centroids = {c: features[labels == c].mean(0) for c in range(4)}
    cos = [
        features[i] @ centroids[c] / np.linalg.norm(features[i]) / np.linalg.norm(centroids[c])
        for i, c in enumerate(labels)
    ]
    angles = [
        math.degrees(
            math.acos(centroids[a] @ centroids[b] / np.linalg.norm(centroids[a]) / np.linalg.norm(centroids[b]))
        )
        for a in range(4)
        for b in range(a + 1, 4)
    ]
    within = sum(np.sum((features[i] - centroids[c]) ** 2) for i, c in enumerate(labels))
    between = sum((labels == c).sum() * np.sum((centroids[c] - features.mean(0)) ** 2) for c in range(4))
    geometry = feature_geometry(torch.from_numpy(features), torch.from_numpy(labels))
    assert geometry["intra_cos"] == pytest.approx(np.mean(cos), rel=1e-12)
    assert geometry["inter_angle"] == pytest.approx(np.mean(angles), rel=1e-12)
    assert geometry["scatter_ratio"] == pytest.approx(within / between, rel=1e-12)


@pytest.mark.parametrize("norm", ["bn", "l2bn"])
def test_callbacks_record_what_an_independent_pass_computes(norm, tmp_path):
    gen = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(24, 1, 8, 8, generator=gen) * torch.linspace(0.2, 3, 24)[:, None, None, None],
        torch.arange(24) % 3,
    )
    model = ImageClassifier(3, [1, 8, 8], arch="small_cnn", norm=norm, lr=0.1)
    reference = copy.deepcopy(model)
    callbacks = [FeatureNormMonitor(every_n_steps=1), GradientNormMonitor(every_n_steps=1), PenultimateGeometry()]
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=tmp_path,
    )
    loader = DataLoader(TensorDataset(x, y), batch_size=24)
    trainer.fit(model, loader, loader)

    # the first step, recomputed in float64 from the initial weights
    reference = reference.double().train()
    cvs: dict[str, tuple[float, float]] = {}

    def record(name):  # before the in-place ReLU that follows each norm layer
        def hook(module, inputs, output):
            cvs[name] = (coefficient_of_variation(inputs[0]), coefficient_of_variation(output))

        return hook

    for name, module in reference.named_modules():
        if isinstance(module, NORM_TYPES):
            module.register_forward_hook(record(name))
    F.cross_entropy(reference(x.double()), y).backward()
    norms = pd.DataFrame(callbacks[0].history)
    assert set(norms["layer"]) == set(cvs) and len(cvs) == 3
    for row in norms.itertuples():
        assert (row.cv_in, row.cv_out) == pytest.approx(cvs[row.layer], rel=1e-4)
    if norm == "l2bn":  # L2BN's output norms: the same for every sample up to the affine map
        assert norms["cv_out"].max() < norms["cv_in"].min()
    grads = pd.DataFrame(callbacks[1].history)
    expected = {n: float(p.grad.norm()) for n, p in reference.named_parameters() if p.dim() >= 2}
    assert set(grads["layer"]) == set(expected)
    for row in grads.itertuples():
        assert row.grad_norm == pytest.approx(expected[row.layer], rel=1e-4)

    # validation after the step: the trained model's penultimate features
    (geometry,) = callbacks[2].history
    trained = model.double().eval()
    with torch.no_grad():
        features = trained.network.features(x.double())
    for key, value in feature_geometry(features, y).items():
        assert geometry[key] == pytest.approx(value, rel=1e-4)
    for name in ("feature_norms", "grad_norms", "geometry"):
        assert (tmp_path / f"{name}.csv").is_file() and (tmp_path / f"{name}.png").stat().st_size > 1000


def test_callbacks_from_the_cli_log_to_the_run_and_write_plots(tmp_path):
    args = [
        "fit",
        "--config",
        "configs/quickstart.yaml",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "4",
        "--trainer.logger",
        f'{{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {{"save_dir": "{tmp_path}"}}}}',
        "--trainer.enable_progress_bar",
        "false",
    ]
    for callback in ("FeatureNormMonitor", "GradientNormMonitor"):
        args += [f"--trainer.callbacks+=l2bn_lit.lit.callbacks.{callback}", "--trainer.callbacks.every_n_steps", "2"]
    args += ["--trainer.callbacks+=l2bn_lit.lit.callbacks.PenultimateGeometry"]
    main(args)
    (run,) = tmp_path.glob("lightning_logs/version_*")
    metrics = pd.read_csv(run / "metrics.csv")
    for column in (
        "feature_norm_cv/mean",
        "feature_norm_cv_out/mean",
        "grad_norm/total",
        "geometry/intra_cos",
        "geometry/inter_angle",
        "geometry/scatter_ratio",
        "feature_norm_cv/network.body.1",
    ):
        assert metrics[column].notna().any(), column
    assert metrics["geometry/intra_cos"].notna().sum() == 2  # one per epoch
    assert sorted(pd.read_csv(run / "feature_norms.csv")["step"].unique()) == [0, 2, 4, 6]
    for name in ("feature_norms", "grad_norms", "geometry"):
        assert (run / f"{name}.png").is_file()


def test_geometry_needs_a_known_classifier_layer():
    class Headless(nn.Module):
        def forward(self, x):
            return x

    from models.heads import classifier_of

    with pytest.raises(ValueError, match="'layer' option"):
        classifier_of(Headless())
    model = ImageClassifier(3, [1, 8, 8], arch="small_cnn")
    with pytest.raises(ValueError, match="'network.nope' is not a module"):
        PenultimateGeometry(layer="network.nope")._classifier(model)
    assert PenultimateGeometry(layer="network.fc")._classifier(model) is model.network.fc


def _geometry_run(x: torch.Tensor, y: torch.Tensor, **trainer_options) -> list[dict]:
    torch.manual_seed(0)
    model = ImageClassifier(3, [1, 8, 8], arch="small_cnn")
    geometry = PenultimateGeometry()
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[geometry],
        **trainer_options,
    )
    trainer.validate(model, DataLoader(TensorDataset(x, y), batch_size=4))
    return geometry.history


def _geometry_worker(rank: int, world_size: int, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    set_launcher_env(rank, world_size)
    return _geometry_run(x, y, strategy="ddp", devices=world_size)


def test_geometry_under_ddp_gathers_every_process_share():
    """2 processes x 12 validation samples give the geometry of all 24 in one process."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(24, 1, 8, 8, generator=gen), torch.arange(24) % 3
    single = _geometry_run(x, y, devices=1)
    for history in run_distributed(_geometry_worker, 2, x, y, timeout=240):
        assert history[0] == pytest.approx(single[0], rel=1e-5)


def test_analysis_summary_by_hand(tmp_path):
    def run(name, cv_in, inter_angle, late_grads):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame({"step": [0, 0, 50, 50], "layer": ["a", "b"] * 2, "cv_in": cv_in, "cv_out": [0.05] * 4}).to_csv(
            folder / "feature_norms.csv", index=False
        )
        pd.DataFrame(
            {
                "epoch": [1, 0],
                "step": [20, 10],
                "intra_cos": [0.9, 0.5],
                "inter_angle": [inter_angle, 1.0],
                "scatter_ratio": [1.0, 9.0],
            }
        ).to_csv(folder / "geometry.csv", index=False)
        steps, layers = [0, 0, 50, 50, 100, 100, 150, 150], ["a", "b"] * 4
        pd.DataFrame({"step": steps, "layer": layers, "grad_norm": [99.0, 99.0, 99.0, 99.0, *late_grads]}).to_csv(
            folder / "grad_norms.csv", index=False
        )
        return folder

    first = run(
        "s0", [0.1, 0.3, 0.1, 0.3], 30.0, [1.0, 2.0, 10.0, 2.0]
    )  # late log10: a 0, 1 (std 0.7071); b 0 -> 0.3536
    second = run("s1", [0.4, 0.4, 0.4, 0.4], 50.0, [1.0, 1.0, 1.0, 1.0])  # steady: 0
    (row,) = analysis_summary({"l2bn": [first, second]}).to_dict("records")
    assert row["runs"] == 2
    assert row["cv_in mean"] == pytest.approx(0.3) and row["cv_in std"] == pytest.approx(statistics.stdev([0.2, 0.4]))
    assert row["cv_out mean"] == pytest.approx(0.05)
    assert row["inter_angle mean"] == pytest.approx(40.0) and row["intra_cos mean"] == pytest.approx(
        0.9
    )  # last epoch only
    assert row["grad_log_std mean"] == pytest.approx(statistics.stdev([0, 1]) / 4)


def test_geometry_of_a_one_class_validation_set_warns_instead_of_stopping_the_run():
    x, y = torch.randn(8, 1, 8, 8), torch.zeros(8, dtype=torch.long)
    with pytest.warns(UserWarning, match="one class only"):
        assert _geometry_run(x, y, devices=1) == []
