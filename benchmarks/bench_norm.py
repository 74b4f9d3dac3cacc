"""Forward+backward time and bytes saved for backward: L2BN2d vs the composite vs nn.BatchNorm2d.

Eager, ``L2BN2d`` is the fused path (``L2BN_KERNELS=auto``: the Triton kernels on CUDA, the numba
kernels on the CPU) and ``L2BN2d aten`` the ATen path beside it; compiled, both are the ATen path as
Inductor compiles it.

Each repeat runs every variant once, in turn (interleaved), so drift in machine load hits all of
them alike; the table reports medians and the ratio of each to BatchNorm2d in the same run.

    python benchmarks/bench_norm.py                     # CPU, the issue's shapes
    python benchmarks/bench_norm.py --device cuda --dtype bfloat16 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from l2bn_lit import L2BN2d
from l2bn_lit.nn.fused import use_kernels

SHAPES = [(128, 16, 32, 32), (128, 64, 8, 8), (64, 64, 56, 56), (32, 256, 14, 14)]
#: maps of at most 16 values per channel (late stages of ImageNet-size networks), where the CPU's
#: training path is the composite (``l2bn_lit.nn.functional._PER_OP_BOUND_MAP``)
SMALL_MAPS = [(32, 256, 3, 3), (128, 64, 2, 2)]
#: tensor work negligible: what remains is per-call overhead
OVERHEAD_PROBE = (128, 64, 1, 2)


class ATenL2BN2d(L2BN2d):
    """L2BN2d forced onto the ATen path (``use_kernels("aten")``), to compare with the fused kernels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with use_kernels("aten"):
            return super().forward(x)


class CompositeL2BN2d(nn.BatchNorm2d):
    """The straightforward composite: F.normalize over each sample, then BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.normalize(x.flatten(1), dim=1).view_as(x))


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward (each storage counted once, the input too)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x).sum()
    return sum(storages.values())


def time_fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        module(x).backward(grad)
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def bench_shape(shape, device, channels_last, compile_, repeats, warmup, dtype=torch.float32) -> list[dict]:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device=device, dtype=dtype).to(memory_format=memory_format).requires_grad_()
    grad = torch.randn(shape, device=device, dtype=dtype).to(memory_format=memory_format)
    variants = {
        "BatchNorm2d": nn.BatchNorm2d(shape[1]),
        "L2BN2d": L2BN2d(shape[1]),
        "composite": CompositeL2BN2d(shape[1]),
    }
    if not compile_:
        variants["L2BN2d aten"] = ATenL2BN2d(shape[1])
    variants = {k: v.to(device) for k, v in variants.items()}
    bytes_saved = {k: saved_bytes(v, x) for k, v in variants.items()}
    if compile_:  # dynamic shapes: one compilation per variant and layout serves every shape
        variants = {k: torch.compile(v, dynamic=True) for k, v in variants.items()}
    runners = {k: time_fwd_bwd(v, x, grad) for k, v in variants.items()}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(warmup + repeats):
        for name, run in runners.items():
            elapsed = run()
            x.grad = None
            if i >= warmup:
                times[name].append(elapsed)
    base_time = statistics.median(times["BatchNorm2d"])
    rows = []
    for name in runners:
        median = statistics.median(times[name])
        rows.append(
            {
                "shape": "x".join(map(str, shape)) + (" CL" if channels_last else ""),
                "norm": name,
                "median_ms": round(median * 1e3, 3),
                "time_vs_bn": round(median / base_time, 2),
                "saved_MiB": round(bytes_saved[name] / 2**20, 2),
                "saved_vs_bn": round(bytes_saved[name] / bytes_saved["BatchNorm2d"], 2),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile every variant")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="input dtype (the norms' parameters stay float32, as under autocast)",
    )
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    # Untimed pass first: the process's allocator settles (glibc adapts its mmap threshold to the
    # large buffers) and the steady state of a training run is what gets measured.
    bench_shape(SHAPES[0], args.device, False, args.compile, args.repeats, args.warmup, dtype)
    rows = []
    layouts = [False] if args.no_channels_last else [False, True]
    for channels_last in layouts:
        for shape in SHAPES:
            rows += bench_shape(shape, args.device, channels_last, args.compile, args.repeats, args.warmup, dtype)
    for shape in [*SMALL_MAPS, OVERHEAD_PROBE]:
        rows += bench_shape(shape, args.device, False, args.compile, args.repeats, args.warmup, dtype)
    table = pd.DataFrame(rows)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"dtype={args.dtype}, compile={args.compile}, {args.repeats} interleaved repeats (medians)"
    )
    print(table.to_markdown(index=False))
    print("\nSummary (ratios against BatchNorm2d in the same run):")
    print(summary(table).to_markdown(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per shape: both times and the time and saved-memory ratios."""
    rows = []
    for shape, group in table.groupby("shape", sort=False):
        by_norm = group.set_index("norm")
        row = {
            "shape": shape.replace(" CL", " channels_last"),
            "BatchNorm2d ms": by_norm.at["BatchNorm2d", "median_ms"],
            "L2BN2d ms": by_norm.at["L2BN2d", "median_ms"],
            "L2BN2d/BN time": by_norm.at["L2BN2d", "time_vs_bn"],
        }
        if "L2BN2d aten" in by_norm.index:  # eager: the fused kernels above, the ATen path here
            row["L2BN2d aten/BN time"] = by_norm.at["L2BN2d aten", "time_vs_bn"]
        rows.append(
            row
            | {
                "composite/BN time": by_norm.at["composite", "time_vs_bn"],
                "L2BN2d/BN saved": by_norm.at["L2BN2d", "saved_vs_bn"],
                "composite/BN saved": by_norm.at["composite", "saved_vs_bn"],
            }
        )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    main()
