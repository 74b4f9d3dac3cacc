"""The eps effect inside a real network: for each L2BN layer of a config's model at initialization,
on one training batch, the per-channel variance of its input after the l2 step (what BN's ``eps``
is added to) and the standard deviation of its output (1 without the effect).

    python benchmarks/norm_layer_stats.py --config configs/quickstart_dcase.yaml
    python benchmarks/norm_layer_stats.py --config configs/quickstart_dcase.yaml \
        --model.init_args.norm_options '{"rescale": true}'
"""

from __future__ import annotations

import sys

import pandas as pd
import torch
from torch import Tensor, nn

from l2bn_lit import L2BN2d
from l2bn_lit.lit.cli import main


def layer_stats(model: nn.Module, batch: Tensor) -> pd.DataFrame:
    rows = []

    def record(name: str):
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0].detach().double()
            unit = x / x.flatten(1).norm(dim=1).clamp_min(module.l2_eps).view(-1, *[1] * (x.dim() - 1))
            rows.append(
                {
                    "layer": name,
                    "input C x H x W": "x".join(map(str, x.shape[1:])),
                    "eps": module.eps,
                    "variance after l2 step": float(unit.var(dim=(0, 2, 3), unbiased=False).mean()),
                    "output std": float(output.detach().std()),
                }
            )

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if isinstance(m, L2BN2d)]
    with torch.no_grad():
        model.train()(batch)
    for handle in handles:
        handle.remove()
    return pd.DataFrame(rows)


if __name__ == "__main__":
    cli = main(sys.argv[1:], run=False)  # the config's model and data, nothing trained
    torch.manual_seed(0)
    cli.datamodule.setup("fit")
    x, _ = next(iter(cli.datamodule.train_dataloader()))
    print(layer_stats(cli.model, x).to_markdown(index=False, floatfmt=".3g"))
