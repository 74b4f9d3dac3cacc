"""SyncL2BN on 2 CPU processes (gloo) against L2BN on the whole batch; the Lightning plugin."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.distributed as dist
from distributed import run_distributed, set_launcher_env
from torch import nn

from l2bn_lit import L2BN1d, L2BN2d, SyncL2BN  # no Lightning: the spawned workers import this module

BATCH = (8, 3, 4, 5)


def _data(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(BATCH, generator=gen, dtype=dtype) * (i + 1) + i for i in range(3)]
    grads = [torch.randn(BATCH, generator=gen, dtype=dtype) for _ in range(3)]
    return xs, grads


def _train_steps(layer: nn.Module, xs, grads):
    """Three training steps; returns outputs, input grads, summed weight/bias grads, buffers."""
    outputs, input_grads = [], []
    for x, g in zip(xs, grads):
        x = x.clone().requires_grad_()
        y = layer(x)
        y.backward(g)
        outputs.append(y.detach())
        input_grads.append(x.grad)
    return outputs, input_grads, layer.weight.grad.clone(), layer.bias.grad.clone(), dict(layer.named_buffers())


def _sync_worker(rank: int, world_size: int, options: dict):
    xs, grads = _data()
    half = BATCH[0] // world_size
    part = slice(rank * half, (rank + 1) * half)
    layer = SyncL2BN(3, dtype=torch.float64, **options)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 3))
    out, in_grads, gw, gb, buffers = _train_steps(layer, [x[part] for x in xs], [g[part] for g in grads])
    dist.all_reduce(gw)
    dist.all_reduce(gb)
    return out, in_grads, gw, gb, buffers


@pytest.mark.parametrize("options", [{}, {"rescale": True, "momentum": None}])
def test_sync_l2bn_on_two_half_batches_equals_l2bn_on_whole_batch(options):
    results = run_distributed(_sync_worker, 2, options)
    xs, grads = _data()
    whole = L2BN2d(3, dtype=torch.float64, **options)
    with torch.no_grad():
        whole.weight.copy_(torch.linspace(0.5, 1.5, 3))
    out, in_grads, gw, gb, buffers = _train_steps(whole, xs, grads)
    for step in range(3):
        torch.testing.assert_close(torch.cat([r[0][step] for r in results]), out[step], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(torch.cat([r[1][step] for r in results]), in_grads[step], rtol=1e-9, atol=1e-10)
    for rank_result in results:
        torch.testing.assert_close(rank_result[2], gw, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(rank_result[3], gb, rtol=1e-9, atol=1e-10)
        for name, value in buffers.items():
            torch.testing.assert_close(rank_result[4][name], value, rtol=1e-12, atol=1e-12)


def _fused_sync_worker(rank: int, world_size: int):
    """The fused kernels (under Triton's interpreter on the CPU) on float32 half batches."""
    os.environ["L2BN_KERNELS"] = "triton"
    from l2bn_lit.nn import fused

    xs, grads = _data(torch.float32)
    half = BATCH[0] // world_size
    part = slice(rank * half, (rank + 1) * half)
    layer = SyncL2BN(3)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, 3))
    used = fused.use_fused_kernels(xs[0])
    out, in_grads, gw, gb, buffers = _train_steps(layer, [x[part] for x in xs], [g[part] for g in grads])
    dist.all_reduce(gw)
    dist.all_reduce(gb)
    return out, in_grads, gw, gb, buffers, used


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
def test_fused_sync_l2bn_on_two_half_batches_equals_the_float64_whole_batch():
    results = run_distributed(_fused_sync_worker, 2, timeout=240)
    assert all(r[5] for r in results)  # the fused path ran
    xs, grads = _data(torch.float32)
    whole = L2BN2d(3, dtype=torch.float64)
    with torch.no_grad():
        whole.weight.copy_(torch.linspace(0.5, 1.5, 3))
    out, in_grads, gw, gb, buffers = _train_steps(whole, [x.double() for x in xs], [g.double() for g in grads])

    def close(got, want):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() <= 2e-4

    for step in range(3):
        close(torch.cat([r[0][step] for r in results]), out[step])
        close(torch.cat([r[1][step] for r in results]), in_grads[step])
    for rank_result in results:
        close(rank_result[2], gw)
        close(rank_result[3], gb)
        for name in ("running_mean", "running_var"):
            close(rank_result[4][name], buffers[name])


def test_sync_l2bn_without_process_group_is_l2bn():
    xs, grads = _data()
    sync = SyncL2BN(3, dtype=torch.float64)
    plain = L2BN2d(3, dtype=torch.float64)
    for a, b in zip(_train_steps(sync, xs, grads)[:2], _train_steps(plain, xs, grads)[:2]):
        torch.testing.assert_close(a, b)
    sync.eval(), plain.eval()
    torch.testing.assert_close(sync(xs[0]), plain(xs[0]))
    assert sync(torch.randn(4, 3)).shape == (4, 3)  # any rank >= 2
    with pytest.raises(ValueError, match="at least 2D"):
        sync(torch.randn(3))


def test_convert_sync_batchnorm_keeps_state_and_options():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), L2BN2d(4, rescale=True), nn.Flatten(), nn.Linear(4, 2), L2BN1d(2))
    weight = model[1].weight
    synced = SyncL2BN.convert_sync_batchnorm(model)
    assert type(synced[1]) is SyncL2BN and type(synced[4]) is SyncL2BN
    assert synced[1].rescale and synced[1].weight is weight


def test_lightning_sync_batchnorm_hazard_and_layer_sync_revert():
    """Lightning's own plugin silently swaps L2BN for SyncBatchNorm; ours keeps and restores it."""
    from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm

    from l2bn_lit import L2BNLayerSync

    def build():
        return nn.Sequential(nn.Conv2d(3, 4, 3), L2BN2d(4, rescale=True), nn.BatchNorm2d(4), L2BN1d(4))

    hazard = TorchSyncBatchNorm().apply(build())
    assert type(hazard[1]) is nn.SyncBatchNorm  # the l2 step is gone
    assert type(TorchSyncBatchNorm().revert(hazard)[1]).__name__ == "_BatchNormXd"

    model = build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plugin = L2BNLayerSync()
    with pytest.warns(UserWarning, match="1 plain BatchNorm layer"):
        synced = plugin.apply(model)
    assert [type(m) for m in synced][1:] == [SyncL2BN, nn.BatchNorm2d, SyncL2BN]
    assert synced[1].rescale
    reverted = plugin.revert(synced)
    assert [type(m) for m in reverted] == [nn.Conv2d, L2BN2d, nn.BatchNorm2d, L2BN1d]
    assert reverted[1].rescale
    for key, value in reverted.state_dict().items():
        assert torch.equal(value, state[key])


def _fit(devices: int, batch_size: int, **trainer_options) -> nn.Module:
    import pytorch_lightning as pl
    from lit_models import TinyL2BNNet

    model = TinyL2BNNet(batch_size=batch_size)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        max_steps=4,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_options,
    )
    trainer.fit(model)
    return model


def _lightning_ddp_worker(rank: int, world_size: int) -> dict:
    """One rank of a Lightning DDP fit in processes launched outside Lightning (as torchrun or
    srun launch them): Lightning finds the environment and the process group already set up."""
    from lit_models import AssertSynced

    from l2bn_lit import L2BNLayerSync

    set_launcher_env(rank, world_size)
    model = _fit(world_size, 4, strategy="ddp", plugins=[L2BNLayerSync()], callbacks=[AssertSynced()])
    assert type(model.features[1]) is L2BN2d  # reverted after fit
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lightning_ddp_with_l2bn_layer_sync_equals_single_process_training():
    """2 processes x 4 samples with SyncL2BN train exactly as 1 process x 8 samples."""
    ranks = run_distributed(_lightning_ddp_worker, 2, timeout=240)
    single = _fit(1, 8).state_dict()
    for state in ranks:
        for name, value in single.items():
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)
