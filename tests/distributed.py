"""Runs a function in N spawned processes joined in a gloo process group, with a hard timeout.

Results travel back as plain data: every tensor is turned into a numpy array in the worker and back
into a tensor in the parent. (torch.multiprocessing would share tensors through file descriptors
that die with the worker, so a worker that exits before the parent has received them makes the
transfer fail: ConnectionResetError / FileNotFoundError under CPU load.)"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import tempfile
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map


def _worker(fn: Callable, rank: int, world_size: int, init_file: str, results: Any, args: tuple) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
        try:
            value = tree_map(
                lambda t: t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t, fn(rank, world_size, *args)
            )
            results.put((rank, "ok", value))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report every failure to the parent instead of hanging it
        results.put((rank, "error", traceback.format_exc()))


def set_launcher_env(rank: int, world_size: int) -> None:
    """The environment torchrun or srun give a rank, for a Lightning ``ddp`` fit inside a worker of
    :func:`run_distributed`: Lightning finds it and the process group already set up."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="0",
        WORLD_SIZE=str(world_size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        NODE_RANK="0",
    )


def run_distributed(fn: Callable, world_size: int, *args: Any, timeout: float = 120.0) -> list[Any]:
    """Returns ``[fn(rank, world_size, *args) for each rank]``; raises if any rank fails or the
    group does not finish within ``timeout`` seconds (stragglers are killed)."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "rendezvous")
        procs = [
            ctx.Process(target=_worker, args=(fn, rank, world_size, init_file, results, args))
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        collected: dict[int, Any] = {}
        try:
            for _ in range(world_size):
                rank, status, value = results.get(timeout=timeout)
                if status == "error":
                    raise RuntimeError(f"rank {rank} failed:\n{value}")
                collected[rank] = tree_map(lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray) else a, value)
        except queue.Empty:
            raise TimeoutError(f"distributed run did not finish in {timeout} s") from None
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
                    p.join()
    return [collected[r] for r in range(world_size)]
