"""L2BN: per-sample l2 normalization followed by batch normalization.

Wang et al., "L2BN: Enhancing Batch Normalization by Equalizing the L2 Norms of Features",
arXiv 2207.02625.

Layout, from the bottom up: :mod:`l2bn_lit.nn` (the layer family, torch only) -> ``models/`` ->
:mod:`l2bn_lit.module` (the LightningModule) -> :mod:`l2bn_lit.cli` and the tools (sweep, results,
analysis, dcase, complexity; ``python -m l2bn_lit`` / ``l2bn``). Importing ``l2bn_lit`` loads the
layer family only.
"""

from typing import Any

from . import _moved
from .nn import NORM_KINDS, L2BN1d, L2BN2d, L2BN3d, L2BNAct2d, SyncL2BN, convert_norm, create_norm, get_norm_layer, l2_batch_norm

__all__ = [
    "L2BN1d",
    "L2BN2d",
    "L2BN3d",
    "L2BNAct2d",
    "SyncL2BN",
    "L2BNLayerSync",
    "l2_batch_norm",
    "convert_norm",
    "create_norm",
    "get_norm_layer",
    "NORM_KINDS",
]


def __getattr__(name: str) -> Any:
    # L2BNLayerSync needs pytorch_lightning: imported on first use, so that using the layers alone
    # does not pay Lightning's import time
    if name == "L2BNLayerSync":
        from .lit.layer_sync import L2BNLayerSync

        return L2BNLayerSync
    raise AttributeError(f"module 'l2bn_lit' has no attribute {name!r}")


_moved.install()
