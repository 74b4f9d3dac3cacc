"""Training-step time (forward, backward, SGD step) of CIFAR ResNets with L2BN vs BN.

Both models are built with the same weights; steps alternate between them (interleaved repeats)
and the table reports medians and the L2BN/BN ratio from the same run.

    python benchmarks/bench_train_step.py                  # CPU, batch 128, ResNet-20 and -56
    python benchmarks/bench_train_step.py --device cuda --channels-last --compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import pandas as pd
import torch
import torch.nn.functional as F

from l2bn_lit.nn.fused import KERNEL_CHOICES, kernel_choice
from models import build_model


def step_timer(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None = None):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

    def step() -> float:
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def bench(arch: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch_size, 3, 32, 32, device=args.device).to(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=args.device)
    models = {
        norm: build_model(arch, 10, 3, norm).to(args.device, memory_format=memory_format) for norm in ("bn", "l2bn")
    }
    models["l2bn"].load_state_dict(models["bn"].state_dict())
    if args.compile:
        models = {norm: torch.compile(m) for norm, m in models.items()}
    amp = getattr(torch, args.amp) if args.amp else None
    steps = {norm: step_timer(m, x, y, amp) for norm, m in models.items()}
    times: dict[str, list[float]] = {norm: [] for norm in steps}
    for i in range(args.warmup + args.repeats):
        for norm, step in steps.items():
            elapsed = step()
            if i >= args.warmup:
                times[norm].append(elapsed)
    bn, l2bn = statistics.median(times["bn"]), statistics.median(times["l2bn"])
    return {
        "arch": arch,
        "BN step ms": round(bn * 1e3, 1),
        "L2BN step ms": round(l2bn * 1e3, 1),
        "L2BN/BN": round(l2bn / bn, 3),
        "BN images/s": round(args.batch_size / bn),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--amp", choices=["bfloat16", "float16"], help="autocast to this dtype (Lightning's *-mixed precision)"
    )
    parser.add_argument(
        "--kernels",
        choices=KERNEL_CHOICES,
        default=None,
        help="L2BN's training path (default: L2BN_KERNELS, else auto: the Triton kernels on CUDA, numba on the CPU)",
    )
    args = parser.parse_args()
    if args.kernels is not None:
        os.environ["L2BN_KERNELS"] = args.kernels
    table = pd.DataFrame([bench(arch, args) for arch in args.archs])
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"channels_last={args.channels_last}, compile={args.compile}, amp={args.amp}, L2BN kernels={kernel_choice()}, "
        f"{args.repeats} interleaved repeats (medians)"
    )
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
