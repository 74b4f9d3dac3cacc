"""Copies the project's network code into another package, so that it runs without this repository.

The DCASE inference package (:mod:`l2bn_lit.commands.package`) carries the layer family (``l2bn_lit/nn``)
and the ``models/`` files that a network needs, found by following their imports. The copies' own
absolute imports of the project are rewritten to the carrying package (``from l2bn_lit.nn import x``
-> ``from <package>.nn import x``; relative imports stay as they are), as pip's vendoring does. Any
other import that runs when the file is imported must be of the standard library or of
:data:`ALLOWED_THIRD_PARTY`: a network file that imports Lightning, a datamodule or a command is
refused, naming the file and the import. Imports inside functions are optional extras and are not
followed (timm for ``convert_norm``, the Triton kernels of the fused training path: inference does not
reach them); the package's build check runs the code it ships.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

__all__ = ["ALLOWED_THIRD_PARTY", "VendorError", "vendor_network_code"]

ROOT = Path(__file__).resolve().parents[2]
#: what a vendored file may import besides the standard library and itself (the package's requirements)
ALLOWED_THIRD_PARTY = ("torch", "torchaudio", "numpy", "soundfile")
#: the project packages that can be carried: the layer family (whole) and the network files
_CARRIED = {"l2bn_lit.nn": "nn", "models": "models"}


class VendorError(ValueError):
    """A network file imports something the carrying package cannot have."""


def _module_file(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _carried_prefix(module: str) -> str | None:
    return next((prefix for prefix in _CARRIED if module == prefix or module.startswith(prefix + ".")), None)


def _imports(path: Path, module: str) -> list[tuple[ast.stmt, str, bool]]:
    """Each import statement of the file with the absolute module it names (relative ones resolved)
    and whether it runs on import (``False``: inside a function, imported lazily when called)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    lazy = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                # ``from . import x`` may name submodules: each is a module the file needs
                found.extend(
                    (node, f"{target}.{alias.name}")
                    for alias in node.names
                    if _module_file(f"{target}.{alias.name}").is_file()
                )
                found.append((node, target))
            else:
                found.append((node, node.module or ""))
    return [(node, target, id(node) not in lazy) for node, target in found]


def _closure(roots: list[str]) -> set[str]:
    """The carried modules that ``roots`` need, following imports; checks every import on the way."""
    needed, todo = set(), list(roots)
    while todo:
        module = todo.pop()
        if module in needed:
            continue
        needed.add(module)
        path = _module_file(module)
        where = f"{path.relative_to(ROOT)}"
        for node, target, eager in _imports(path, module):
            top, prefix = target.split(".")[0], _carried_prefix(target)
            relative = isinstance(node, ast.ImportFrom) and node.level > 0
            foreign = top in ("l2bn_lit", "datamodules") or (
                top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY
            )
            if prefix is None and foreign and eager:
                raise VendorError(
                    f"{where}:{node.lineno}: imports {target}, which the inference package cannot carry "
                    "(it carries l2bn_lit.nn, models/ files, the standard library and "
                    f"{', '.join(ALLOWED_THIRD_PARTY)})"
                )
            if prefix is None or not eager:  # a lazy import of project code: an optional path (e.g. the Triton kernels)
                continue
            if isinstance(node, ast.Import):
                raise VendorError(f"{where}:{node.lineno}: 'import {target}': write 'from {target} import ...'")
            if target == "models" and not relative:  # its __init__ re-exports the LightningModules
                raise VendorError(
                    f"{where}:{node.lineno}: imports from the models package itself; import from the file "
                    "that defines the name (models.<file>)"
                )
            if target != "models":
                todo.append(target)
    return needed


def _rewrite(source: str, path: Path, module: str, package: str) -> str:
    """``source`` with its absolute imports of carried project code pointing into ``package``."""
    lines = source.splitlines(keepends=True)
    for node, target, _ in _imports(path, module):
        if isinstance(node, ast.ImportFrom) and not node.level and _carried_prefix(target):
            prefix = _carried_prefix(target)
            new = f"{package}.{_CARRIED[prefix]}{target[len(prefix) :]}"
            line = lines[node.lineno - 1]
            lines[node.lineno - 1] = line.replace(f"from {target} import", f"from {new} import", 1)
    return "".join(lines)


def vendor_network_code(roots: list[str], dest: Path, package: str) -> list[str]:
    """Writes the layer family and the ``models`` files that the modules ``roots`` (e.g.
    ``["models.audio"]``) need into ``dest`` (``dest/nn``, ``dest/models``), their project imports
    pointing at ``package`` (the dotted name ``dest`` will be imported as). Returns the files written,
    relative to ``dest``."""
    written = []
    for module in sorted(_closure(roots)):
        path = _module_file(module)
        prefix = _carried_prefix(module)
        relative = (
            Path(_CARRIED[prefix], *module[len(prefix) + 1 :].split("."))
            if module != prefix
            else Path(_CARRIED[prefix])
        )
        target = dest / (relative / "__init__.py" if path.name == "__init__.py" else relative.with_suffix(".py"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_rewrite(path.read_text(), path, module, package))
        written.append(str(target.relative_to(dest)))
    for folder in ("", "models"):
        init = dest / folder / "__init__.py"
        if not init.exists():
            init.write_text(
                '"""Network code carried from l2bn-lit (written by l2bn package; edit the project, not this copy)."""\n'
            )
            written.append(str(init.relative_to(dest)))
    return sorted(written)
