"""L2BN: per-sample l2 normalization followed by batch normalization.

Wang et al., "L2BN: Enhancing Batch Normalization by Equalizing the L2 Norms of Features",
arXiv 2207.02625.
"""

from typing import Any

from .functional import l2_batch_norm
from .layers import L2BN1d, L2BN2d, L2BN3d
from .norms import NORM_KINDS, convert_norm, create_norm, get_norm_layer
from .sync import SyncL2BN

__all__ = [
    "L2BN1d",
    "L2BN2d",
    "L2BN3d",
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
        from .layer_sync import L2BNLayerSync

        return L2BNLayerSync
    raise AttributeError(f"module 'l2bn_lit' has no attribute {name!r}")
