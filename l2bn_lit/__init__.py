"""L2BN: per-sample l2 normalization followed by batch normalization.

Wang et al., "L2BN: Enhancing Batch Normalization by Equalizing the L2 Norms of Features",
arXiv 2207.02625.
"""

from .functional import l2_batch_norm
from .layer_sync import L2BNLayerSync
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
