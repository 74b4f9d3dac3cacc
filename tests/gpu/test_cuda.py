"""CUDA tests (marker ``gpu``): skipped with a reason where CUDA is absent, so CI stays green.

python -m pytest -m gpu tests/gpu        # on a machine with a GPU (benchmarks/gpu_check.py runs it)
"""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from reference import reference_l2bn
from torch import nn

from l2bn_lit import L2BN2d, SyncL2BN, l2_batch_norm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs CUDA (a GPU machine): GPU paths are not testable here"
    ),
]

ROOT = Path(__file__).resolve().parents[2]
CUDA = torch.device("cuda")


def _case(shape=(16, 8, 6, 6), seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    c = shape[1]
    w = torch.rand(c, generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    return x, grad, w, b


def _run(x, grad, w, b, training=True, fn=l2_batch_norm, **kwargs):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    c = x.shape[1]
    rm = torch.zeros(c, dtype=w.dtype, device=x.device)
    rv = torch.ones(c, dtype=w.dtype, device=x.device)
    y = fn(x, rm, rv, w, b, training, **kwargs)
    y.backward(grad.to(y.dtype))
    return {
        "output": y,
        "grad_input": x.grad,
        "grad_weight": w.grad,
        "grad_bias": b.grad,
        "running_mean": rm,
        "running_var": rv,
    }


def _assert_close_to_reference(ours: dict, exact: dict, tol: float) -> None:
    for name, e in exact.items():
        a = ours[name].detach().double().cpu()
        assert torch.isfinite(a).all(), name
        err = (a - e.detach()).abs().max().item() / (e.abs().max().item() or 1.0)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_float32_on_cuda_matches_the_float64_cpu_reference(layout, training):
    x, grad, w, b = _case()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    exact = _run(x, grad, w, b, training, fn=reference_l2bn)
    ours = _run(
        x.float().to(CUDA, memory_format=fmt),
        grad.float().to(CUDA, memory_format=fmt),
        w.float().to(CUDA),
        b.float().to(CUDA),
        training,
    )
    _assert_close_to_reference(ours, exact, 2e-5)
    if training:
        assert ours["output"].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_low_precision_inputs_on_cuda(dtype, layout):
    """float16/bfloat16 inputs with float32 parameters (autocast's setting): float32 statistics,
    outputs at the input type's precision, also where the squared norms exceed float16's range."""
    x, grad, w, b = _case()
    x = x * 100  # sum of squares ~ 1e7 > 65504
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x_low = x.to(dtype)
    exact = _run(x_low.double(), grad, w, b, fn=reference_l2bn)
    ours = _run(
        x_low.to(CUDA, memory_format=fmt),
        grad.to(dtype).to(CUDA, memory_format=fmt),
        w.float().to(CUDA),
        b.float().to(CUDA),
    )
    assert ours["output"].dtype == dtype
    _assert_close_to_reference(ours, exact, 2e-2 if dtype == torch.bfloat16 else 4e-3)
    _assert_close_to_reference(
        {k: ours[k] for k in ("running_mean", "running_var")},
        {k: exact[k] for k in ("running_mean", "running_var")},
        1e-4,
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_conv_l2bn_on_cuda_matches_float32(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), L2BN2d(16), nn.ReLU()).to(CUDA)
    x = torch.randn(8, 3, 12, 12, device=CUDA)
    with torch.autocast("cuda", dtype=dtype):
        low = model(x)
    full = model.float()(x)
    assert low.dtype == dtype
    torch.testing.assert_close(low.float(), full, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_running_statistics_and_eval_on_cuda(layout):
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gpu, cpu = L2BN2d(8, momentum=None).to(CUDA), L2BN2d(8, momentum=None).double()
    for step in range(3):
        x, *_ = _case(seed=step)
        gpu(x.float().to(CUDA, memory_format=fmt))
        cpu(x)
    torch.testing.assert_close(gpu.running_mean.double().cpu(), cpu.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gpu.running_var.double().cpu(), cpu.running_var, rtol=1e-5, atol=1e-6)
    assert int(gpu.num_batches_tracked) == 3
    x, *_ = _case(seed=9)
    torch.testing.assert_close(
        gpu.eval()(x.float().to(CUDA, memory_format=fmt)).double().cpu(), cpu.eval()(x), rtol=1e-4, atol=1e-5
    )


def test_compiled_on_cuda_matches_eager():
    torch.manual_seed(0)
    eager = nn.Sequential(
        nn.Conv2d(3, 8, 3), L2BN2d(8, rescale=True), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)
    ).to(CUDA)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    x = torch.randn(6, 3, 10, 10, device=CUDA)
    for training in (True, False):
        eager.train(training)
        compiled_model.train(training)
        y1, y2 = eager(x), compiled(x)
        torch.testing.assert_close(y2, y1, rtol=1e-4, atol=1e-5)
        if training:
            y1.square().sum().backward()
            y2.square().sum().backward()
            for p1, p2 in zip(eager.parameters(), compiled_model.parameters()):
                torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-3, atol=1e-5)


def test_export_of_the_eval_model_on_cuda():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), L2BN2d(8)).to(CUDA).eval()
    x = torch.randn(2, 3, 10, 10, device=CUDA)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sync_l2bn_on_nccl_equals_l2bn():
    """One NCCL process (one GPU here; more GPUs run tests/test_sync.py's gloo logic over NCCL the
    same way): the all-reduced statistics equal the local ones, gradients included."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        x, grad, w, b = _case()
        sync, local = SyncL2BN(8).to(CUDA), L2BN2d(8).to(CUDA)
        outs = []
        for module in (sync, local):
            xi = x.float().to(CUDA).requires_grad_()
            y = module(xi)
            y.backward(grad.float().to(CUDA))
            outs.append((y, xi.grad, module.weight.grad, module.running_var))
        for a, b_ in zip(*outs):
            torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


def _quickstart_on_cuda(precision: str) -> list[str]:
    """``l2bn fit`` arguments: the quickstart config on CUDA at ``precision``, no progress bar."""
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / "quickstart.yaml"),
        "--trainer.accelerator",
        "cuda",
        "--trainer.precision",
        precision,
        "--trainer.deterministic",
        "false",
        "--trainer.enable_progress_bar",
        "false",
    ]


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_quickstart_fits_on_cuda(precision, tmp_path):
    from l2bn_lit.lit.cli import main

    cli = main(
        _quickstart_on_cuda(precision) + ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    )
    assert cli.trainer.state.finished
    assert cli.trainer.callback_metrics["test/acc"] > 0.9  # 15 epochs: 0.97-0.99 on the CPU


def test_training_clock_on_cuda_counts_synchronized_epochs(tmp_path):
    """The recipe's TrainingClock on a GPU (it synchronizes at the epoch's edges): seconds grow, images/s is set."""
    import json

    import pandas as pd

    from l2bn_lit.lit.cli import main

    logger = {"class_path": "l2bn_lit.lit.csv_logger.RunCSVLogger", "init_args": {"save_dir": str(tmp_path)}}
    cli = main(
        _quickstart_on_cuda("bf16-mixed")
        + ["--trainer.max_epochs", "2", "--trainer.callbacks+=l2bn_lit.lit.callbacks.TrainingClock"]
        + ["--trainer.logger", json.dumps(logger)]
    )
    table = pd.read_csv(Path(cli.trainer.log_dir) / "metrics.csv").groupby("epoch").max()
    assert 0 < table.loc[0, "time/train_s"] < table.loc[1, "time/train_s"]
    assert (table["time/images_per_s"] > 0).all()


def test_audio_front_end_on_cuda_matches_cpu():
    from models.frontend import LogMel

    frontend = LogMel(16000, n_fft=512, hop_length=256, n_mels=40)
    wave = torch.randn(3, 16000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(frontend.to(CUDA)(wave.to(CUDA)).cpu(), frontend.cpu()(wave), rtol=1e-3, atol=1e-3)


def test_device_images_on_cuda_equal_cpu():
    from datamodules import DeviceImages

    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cpu = DeviceImages(images, torch.arange(10), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    gpu = DeviceImages(images, torch.arange(10), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    idx = torch.tensor([3, 1, 4, 1, 5, 9])
    x1, y1 = cpu.batch(idx, augment=True, epoch=2, seed=5)
    x2, y2 = gpu.batch(idx.to(CUDA), augment=True, epoch=2, seed=5)
    assert x2.is_cuda and gpu.images.is_cuda
    torch.testing.assert_close(x2.cpu(), x1)
    assert torch.equal(y2.cpu(), y1)


def test_default_loader_workers_on_a_gpu():
    from datamodules.base import default_num_workers

    trainer = pl.Trainer(accelerator="cuda", devices=1, logger=False)
    assert 1 <= default_num_workers(trainer) <= 8
