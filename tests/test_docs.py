"""The examples in the layer family's docstrings run (doctest), as users copy them."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module", ["l2bn_lit.nn.layers", "l2bn_lit.nn.functional", "l2bn_lit.nn.sync", "l2bn_lit.nn.norms"]
)
def test_docstring_examples_run(module, monkeypatch):
    monkeypatch.setenv("L2BN_KERNELS", "aten")  # the examples are CPU code, whatever the session sets
    results = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0, results


def test_every_public_layer_documents_args_shape_and_examples():
    import l2bn_lit

    for name in ("L2BN1d", "L2BN2d", "L2BN3d", "L2BNAct2d", "SyncL2BN", "l2_batch_norm", "convert_norm"):
        doc = getattr(l2bn_lit, name).__doc__
        missing = [section for section in ("Args:", "Examples::", ">>>") if section not in doc]
        if name not in ("l2_batch_norm", "convert_norm"):
            missing += [] if "Shape:" in doc else ["Shape:"]
        assert not missing, f"{name}'s docstring lacks {missing}"
