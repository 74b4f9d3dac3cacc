"""DCASE acoustic scene classification evaluation: the report and the submission file.

The report follows what DCASE ranks and publishes for Task 1: macro-averaged class-wise accuracy
(the ranking metric), micro accuracy, multiclass log loss, a class-wise table, a device-wise table
with the groups real (a, b, c), seen simulated (s1-s3) and unseen simulated (s4-s6), and the
confusion matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["DEVICE_GROUPS", "DcaseReport", "dcase_report", "write_submission"]

DEVICE_GROUPS = {"real": ("a", "b", "c"), "seen simulated": ("s1", "s2", "s3"), "unseen simulated": ("s4", "s5", "s6")}
_LOG_LOSS_EPS = 1e-15


@dataclass
class DcaseReport:
    summary: pd.DataFrame  # metric -> value
    classes: pd.DataFrame  # per class: accuracy, log loss, support
    devices: pd.DataFrame  # per device and device group: macro class-wise accuracy, accuracy, log loss, support
    confusion: pd.DataFrame  # true class (rows) x predicted class (columns), counts

    def write(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.summary.to_csv(folder / "dcase_summary.csv", index=False)
        self.classes.to_csv(folder / "dcase_classes.csv", index=False)
        self.devices.to_csv(folder / "dcase_devices.csv", index=False)
        self.confusion.to_csv(folder / "dcase_confusion.csv")

    def __str__(self) -> str:
        parts = [
            self.summary.to_markdown(index=False, floatfmt=".4f"),
            self.classes.to_markdown(index=False, floatfmt=".4f"),
            self.devices.to_markdown(index=False, floatfmt=".4f"),
        ]
        return "\n\n".join(parts)


def _scores(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    predicted = probs.argmax(1)
    correct = predicted == labels
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], _LOG_LOSS_EPS, 1.0))
    per_class = [correct[labels == k].mean() for k in range(num_classes) if (labels == k).any()]
    return {
        "macro class-wise accuracy": float(np.mean(per_class)),
        "accuracy": float(correct.mean()),
        "log loss": float(nll.mean()),
        "support": int(len(labels)),
    }


def dcase_report(probs: np.ndarray, labels: np.ndarray, devices: list[str], class_names: list[str]) -> DcaseReport:
    """Report for predicted probabilities ``probs`` ``(N, K)`` (rows sum to 1), true ``labels``
    ``(N,)`` and each clip's recording ``devices``."""
    probs, labels, devices_arr = np.asarray(probs, dtype=np.float64), np.asarray(labels), np.asarray(devices)
    k = len(class_names)
    summary = _scores(probs, labels, k)
    classes = []
    for index, name in enumerate(class_names):
        mask = labels == index
        if mask.any():
            scores = _scores(probs[mask], labels[mask], k)
            classes.append(
                {
                    "class": name,
                    "accuracy": scores["accuracy"],
                    "log loss": scores["log loss"],
                    "support": scores["support"],
                }
            )
    device_rows = []
    groups = [(d, (d,)) for d in sorted(set(devices_arr))] + list(DEVICE_GROUPS.items())
    for name, members in groups:
        mask = np.isin(devices_arr, members)
        if mask.any():
            device_rows.append({"device": name, **_scores(probs[mask], labels[mask], k)})
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, probs.argmax(1)), 1)
    return DcaseReport(
        summary=pd.DataFrame({"metric": list(summary), "value": list(summary.values())}),
        classes=pd.DataFrame(classes),
        devices=pd.DataFrame(device_rows),
        confusion=pd.DataFrame(confusion, index=class_names, columns=class_names),
    )


def write_submission(path: str | Path, filenames: list[str], probs: np.ndarray, class_names: list[str]) -> None:
    """DCASE submission file: tab-separated ``filename``, ``scene_label`` (the most probable
    class), then one probability column per class."""
    probs = np.asarray(probs)
    table = pd.DataFrame({"filename": filenames, "scene_label": [class_names[i] for i in probs.argmax(1)]})
    for index, name in enumerate(class_names):
        table[name] = probs[:, index]
    table.to_csv(path, sep="\t", index=False, float_format="%.6f")
