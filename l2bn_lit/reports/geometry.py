"""The paper's feature measures, in float64 where they are reported: the spread of per-sample l2
norms (claim 1: L2BN equalizes them) and the geometry of penultimate features (claim 2: tighter
classes, larger angles between them). Torch only; the callbacks of :mod:`l2bn_lit.lit.callbacks`
record them during training."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["coefficient_of_variation", "feature_geometry", "sample_norm_cv"]


def coefficient_of_variation(x: Tensor) -> float:
    """std / mean (sample std) of the per-sample l2 norms of ``x`` ``(N, ...)``, in float64."""
    return float(sample_norm_cv(x, torch.float64))


def feature_geometry(features: Tensor, labels: Tensor) -> dict[str, float]:
    """Geometry of ``features`` ``(N, D)`` with integer ``labels`` ``(N,)``, in float64.

    Returns:
        ``intra_cos``: mean cosine between each sample and its class centroid (higher: more compact);
        ``inter_angle``: mean angle in degrees between the centroids of two different classes
        (higher: more distinct); ``scatter_ratio``: trace of the within-class scatter over trace of
        the between-class scatter (lower: better separated). Only classes present count.
    """
    features, labels = features.double(), labels.long()
    classes = labels.unique()
    if len(classes) < 2:
        raise ValueError("feature geometry needs samples of at least two classes")
    centroids = torch.stack([features[labels == c].mean(0) for c in classes])
    own = centroids[torch.searchsorted(classes, labels)]
    intra = nn.functional.cosine_similarity(features, own, dim=1).mean()
    unit = nn.functional.normalize(centroids, dim=1)
    cosines = (unit @ unit.T).clamp(-1, 1)
    pairs = torch.triu_indices(len(classes), len(classes), offset=1)
    inter = torch.rad2deg(torch.acos(cosines[pairs[0], pairs[1]])).mean()
    within = (features - own).pow(2).sum(1).mean()
    counts = torch.stack([(labels == c).sum() for c in classes]).double()
    between = (counts * (centroids - features.mean(0)).pow(2).sum(1)).sum() / len(features)
    return {"intra_cos": float(intra), "inter_angle": float(inter), "scatter_ratio": float(within / between)}


def sample_norm_cv(x: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """:func:`coefficient_of_variation` as a tensor on ``x``'s device (no synchronization)."""
    norms = x.detach().flatten(1).to(dtype).norm(dim=1)
    return norms.std() / norms.mean()
