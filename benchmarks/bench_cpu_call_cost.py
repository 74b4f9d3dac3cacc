"""Where a CPU training step of L2BN2d spends its time outside the numba kernels, vs nn.BatchNorm2d.

One forward + backward at each shape, four ways, interleaved (each repeat runs all four in turn):

* ``kernels``: the two calls into compiled code with their array set-up
  (``cpu_kernels.train_forward`` + ``cpu_kernels.train_backward``), no autograd;
* ``autograd``: the same through the autograd function (``fused.l2_batch_norm_train_cpu``);
* ``L2BN2d``: the module, as a network calls it (argument checks, the path choice, autograd);
* ``BatchNorm2d``: torch's module.

The differences between the columns are the costs of each layer of the call, which decide the
small-map shapes of ``bench_norm.py``.

    python benchmarks/bench_cpu_call_cost.py
    python benchmarks/bench_cpu_call_cost.py --shapes 128x64x1x2 128x64x8x8cl
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn

from l2bn_lit import L2BN2d
from l2bn_lit.nn import cpu_kernels, fused

DEFAULT_SHAPES = ["128x64x1x2", "128x64x2x2", "32x256x3x3", "128x64x8x8cl"]


def parse_shape(text: str) -> tuple[tuple[int, ...], bool]:
    """``128x64x8x8cl`` -> ``((128, 64, 8, 8), True)``: the shape and whether the input is channels_last."""
    channels_last = text.endswith("cl")
    return tuple(int(v) for v in text.removesuffix("cl").split("x")), channels_last


def steps(shape: tuple[int, ...], channels_last: bool) -> dict[str, Callable[[], None]]:
    """The four ways to run one training forward + backward, on one input and output gradient."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
    grad = torch.randn(shape).contiguous(memory_format=memory_format)
    l2bn, bn = L2BN2d(shape[1]), nn.BatchNorm2d(shape[1])
    arguments = (l2bn.running_mean, l2bn.running_var, l2bn.weight, l2bn.bias, 0.1, l2bn.eps, l2bn.l2_eps, False)

    def kernels() -> None:
        _, saved = cpu_kernels.train_forward(x.detach(), *arguments)
        cpu_kernels.train_backward(grad, x.detach(), saved, l2bn.l2_eps)

    def autograd() -> None:
        fused.l2_batch_norm_train_cpu(x, *arguments).backward(grad)
        x.grad = None

    def module(layer: nn.Module) -> Callable[[], None]:
        def run() -> None:
            layer(x).backward(grad)
            x.grad = None

        return run

    return {"kernels": kernels, "autograd": autograd, "L2BN2d": module(l2bn), "BatchNorm2d": module(bn)}


def measure(shape_text: str, repeats: int, warmup: int) -> dict[str, object]:
    runs = steps(*parse_shape(shape_text))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    medians = {f"{name} ms": round(statistics.median(t) * 1e3, 3) for name, t in times.items()}
    base = medians["BatchNorm2d ms"]
    return {"shape": shape_text, **medians, "L2BN2d/BN": round(medians["L2BN2d ms"] / base, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="NxCxHxW, 'cl' suffix: channels_last")
    parser.add_argument("--repeats", type=int, default=130)
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()
    if not fused.use_cpu_kernels(torch.empty(2, 1, 1, 2)):
        raise SystemExit("the numba kernels are not in use here (numba missing, or L2BN_KERNELS says otherwise)")
    torch.manual_seed(0)
    table = pd.DataFrame([measure(shape, args.repeats, args.warmup) for shape in args.shapes])
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.repeats} interleaved repeats (medians)")
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
