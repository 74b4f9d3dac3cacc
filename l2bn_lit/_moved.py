"""Module paths from before the folders (``l2bn_lit.analysis``, ``python -m l2bn_lit.sweep``, ...) keep
working: configs, saved run configs and checkpoints name classes by these paths.

Importing an old path gives the module that now holds its contents (the same module object, so
classes compare equal); ``python -m <old path>`` runs the new module. Installed by ``import l2bn_lit``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import CodeType, ModuleType

#: old module path -> the module that holds its contents now
MOVED = {
    "l2bn_lit.module": "l2bn_lit.lit.classification_module",
    "l2bn_lit.analysis": "l2bn_lit.lit.callbacks",
    "l2bn_lit.checkpoint": "l2bn_lit.lit.checkpoint",
    "l2bn_lit.resume": "l2bn_lit.lit.resume",
    "l2bn_lit.layer_sync": "l2bn_lit.lit.layer_sync",
    "l2bn_lit.csv_logger": "l2bn_lit.lit.csv_logger",
    "l2bn_lit.cli": "l2bn_lit.lit.cli",
    "l2bn_lit.complexity": "l2bn_lit.reports.model_cost",
    "l2bn_lit.dcase": "l2bn_lit.reports.dcase_scores",
    "l2bn_lit.sweep": "l2bn_lit.commands.sweep",
    "l2bn_lit.ablation": "l2bn_lit.commands.ablation",
    "l2bn_lit.results": "l2bn_lit.commands.results",
    "l2bn_lit.evaluate": "l2bn_lit.commands.evaluate",
    "l2bn_lit.data": "l2bn_lit.commands.data",
    "l2bn_lit.package": "l2bn_lit.commands.package",
}


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: :meth:`create_module` returned the imported module."""

    def get_code(self, fullname: str) -> CodeType:
        """What ``python -m <old path>`` runs: the new module as ``__main__``."""
        source = f"import runpy\nrunpy.run_module({self.target!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname}, moved to {self.target}>", "exec")


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the old paths of :data:`MOVED`."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(MOVED[fullname]))


def install() -> None:
    """Puts the finder first on ``sys.meta_path`` (once): an old path is never found as a stale file."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
