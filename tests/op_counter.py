"""Counts the operators a block of code dispatches (what a GPU would launch, or the CPU would call)."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpCounter(TorchDispatchMode):
    """Counts the operator calls that do work: not views, not device queries (``prim``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and func.namespace != "prim":
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
