"""The eps effect: after the l2 step each element is about 1/sqrt(D), so BN's eps (1e-5) can
dominate the variance of large feature maps and shrink the output's std below 1.

Prints, for growing D = C*H*W, the output std of L2BN2d (rescale off and on), of the
straightforward composite (F.normalize, then BatchNorm2d) and the prediction
sqrt((1/D) / (1/D + eps)) for zero-mean input.

    python benchmarks/eps_effect.py
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from l2bn_lit import L2BN2d

SHAPES = [(64, 4, 4), (64, 8, 8), (64, 14, 14), (64, 28, 28), (64, 56, 56), (256, 56, 56)]


def main(batch: int = 8, eps: float = 1e-5) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for c, h, w in SHAPES:
        x = torch.randn(batch, c, h, w, generator=gen)
        d = c * h * w
        composite = nn.BatchNorm2d(c, eps=eps)(F.normalize(x.flatten(1), dim=1).view_as(x))
        rows.append(
            {
                "C x H x W": f"{c}x{h}x{w}",
                "D": d,
                "predicted std": round(math.sqrt((1 / d) / (1 / d + eps)), 3),
                "composite std": round(composite.std().item(), 3),
                "L2BN2d std": round(L2BN2d(c, eps=eps)(x).std().item(), 3),
                "L2BN2d(rescale=True) std": round(L2BN2d(c, eps=eps, rescale=True)(x).std().item(), 3),
            }
        )
    table = pd.DataFrame(rows)
    print(f"input randn({batch}, C, H, W), eps={eps}, training mode")
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
