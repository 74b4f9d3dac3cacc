"""The L2BN layer family: torch only (no Lightning, no pipelines), usable in any PyTorch model.

    from l2bn_lit.nn import L2BN2d, SyncL2BN, l2_batch_norm, convert_norm, get_norm_layer

``l2bn_lit`` re-exports every name here (``from l2bn_lit import L2BN2d``).
"""

from .functional import l2_batch_norm
from .layers import L2BN1d, L2BN2d, L2BN3d, L2BNAct2d
from .norms import NORM_KINDS, NORM_TYPES, convert_norm, create_norm, get_norm_layer
from .sync import SyncL2BN

__all__ = [
    "L2BN1d",
    "L2BN2d",
    "L2BN3d",
    "L2BNAct2d",
    "SyncL2BN",
    "l2_batch_norm",
    "convert_norm",
    "create_norm",
    "get_norm_layer",
    "NORM_KINDS",
    "NORM_TYPES",
]
