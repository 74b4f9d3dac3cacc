"""Lightning plugin that synchronizes L2BN (and BN) across processes without losing the l2 step.

``Trainer(sync_batchnorm=True)`` calls ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which
turns every ``_BatchNorm`` subclass, L2BN included, into a plain ``SyncBatchNorm`` (the l2 step
silently disappears), and its revert leaves Lightning's private ``_BatchNormXd`` behind. Use::

    Trainer(strategy="ddp", plugins=[L2BNLayerSync()])

(the project's CLI does this for ``--trainer.sync_batchnorm true``).
"""

from __future__ import annotations

import warnings

from pytorch_lightning.plugins.layer_sync import TorchSyncBatchNorm
from torch import nn

from l2bn_lit.nn.layers import _L2BNBase
from l2bn_lit.nn.sync import SyncL2BN, replace_modules, transfer_norm_state

__all__ = ["L2BNLayerSync"]

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class L2BNLayerSync(TorchSyncBatchNorm):
    """L2BN -> SyncL2BN on any device; BatchNorm1d/2d/3d -> SyncBatchNorm on GPU. ``revert``
    restores the exact original classes.

    Plain BatchNorm on CPU stays unsynchronized (torch's SyncBatchNorm cannot run there), with a
    warning. Subclasses Lightning's ``TorchSyncBatchNorm`` so that Lightning also accepts it next to
    ``sync_batchnorm=True``.
    """

    def apply(self, model: nn.Module) -> nn.Module:
        unsynced: list[str] = []

        def swap(module: nn.Module) -> nn.Module | None:
            if isinstance(module, _L2BNBase) and not isinstance(module, SyncL2BN):
                synced = transfer_norm_state(module, SyncL2BN, l2_eps=module.l2_eps, rescale=module.rescale)
            elif type(module) in _PLAIN_BN:
                if module.weight is not None and not module.weight.is_cuda:
                    unsynced.append(type(module).__name__)
                    return None
                synced = transfer_norm_state(module, nn.SyncBatchNorm)
            else:
                return None
            synced._original_type = type(module)
            return synced

        model = replace_modules(model, swap)
        if unsynced:
            warnings.warn(
                f"L2BNLayerSync: {len(unsynced)} plain BatchNorm layer(s) on CPU stay unsynchronized "
                "(torch.nn.SyncBatchNorm only runs on GPU); L2BN layers are synchronized.",
                stacklevel=2,
            )
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        def swap(module: nn.Module) -> nn.Module | None:
            original = getattr(module, "_original_type", None)
            if original is None or not isinstance(module, (SyncL2BN, nn.SyncBatchNorm)):
                return None
            options = {"l2_eps": module.l2_eps, "rescale": module.rescale} if isinstance(module, SyncL2BN) else {}
            return transfer_norm_state(module, original, **options)

        return replace_modules(model, swap)
