"""Options several commands share (not a command)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["parse_device_model"]


def parse_device_model(item: str) -> tuple[str, Path]:
    device, sep, path = item.partition("=")
    if not sep or not device or not Path(path).is_file():
        raise ValueError(
            f"--device-model {item!r}: give DEVICE=CHECKPOINT with an existing checkpoint, e.g. a=runs/a/best.ckpt"
        )
    return device, Path(path)
