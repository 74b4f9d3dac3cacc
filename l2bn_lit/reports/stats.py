"""Confidence intervals for the sweeps and ablations: Student-t intervals of a mean, and of
differences paired by seed."""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

__all__ = ["paired_differences", "t_interval"]


def t_interval(values: pd.Series, level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t ``level`` confidence interval of the mean (NaN bounds for one value)."""
    n, mean, std = len(values), values.mean(), values.std()
    half = stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return mean, mean - half, mean + half


def paired_differences(runs: pd.DataFrame, metrics: list[str], norms: list[str], level: float = 0.95) -> pd.DataFrame:
    """``norm - norms[0]`` per metric, paired by seed: mean, std, the ``level`` confidence interval."""
    rows = []
    base = runs[runs["norm"] == norms[0]].set_index("seed")
    for norm in norms[1:]:
        other = runs[runs["norm"] == norm].set_index("seed")
        seeds = sorted(set(base.index) & set(other.index))
        for metric in metrics:
            diff = other.loc[seeds, metric] - base.loc[seeds, metric]
            mean, low, high = t_interval(diff, level)
            rows.append(
                {
                    "comparison": f"{norm} - {norms[0]}",
                    "metric": metric,
                    "pairs": len(diff),
                    "mean": mean,
                    "std": diff.std(),
                    "ci low": low,
                    "ci high": high,
                }
            )
    return pd.DataFrame(rows)
