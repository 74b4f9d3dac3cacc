"""L2BN: per-sample l2 normalization followed by batch normalization.

Wang et al., "L2BN: Enhancing Batch Normalization by Equalizing the L2 Norms of Features",
arXiv 2207.02625.

Layout, from the bottom up (docs/layout.md; the import contracts in pyproject.toml check it):

- :mod:`l2bn_lit.nn`: the layer family, torch only;
- ``models/`` (the networks) and :mod:`l2bn_lit.reports` (run tables, intervals, plots, DCASE scores,
  complexity counting), independent of each other;
- :mod:`l2bn_lit.lit` (LightningModules, callbacks, the LayerSync plugin, the LightningCLI) with
  ``datamodules/``;
- :mod:`l2bn_lit.commands`: one module per ``l2bn`` tool, run by :mod:`l2bn_lit.__main__` (``l2bn`` /
  ``python -m l2bn_lit``).

Beside them: :mod:`l2bn_lit.errors` (short errors), :mod:`l2bn_lit.serialization` (weights-only
loading) and ``_moved`` (the module paths from before the folders). Importing ``l2bn_lit`` loads the
layer family only.
"""

from typing import Any

from . import _moved
from .nn import (
    NORM_KINDS,
    L2BN1d,
    L2BN2d,
    L2BN3d,
    L2BNAct2d,
    SyncL2BN,
    convert_norm,
    create_norm,
    get_norm_layer,
    l2_batch_norm,
)

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
