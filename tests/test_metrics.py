"""Metrics that cannot be silently wrong: no torchmetrics compute groups across different metrics."""

from __future__ import annotations

import pytest
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from l2bn_lit.lit.classification_module import check_top_k
from models import ImageClassifier


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """An all-correct first batch (64 samples, classes 0-9 in turn); then 16 wrong ones, classes 1-8
    twice (the true class ranked 2nd, then 7th: outside the top 5), and 40 correct ones of class 0."""
    generator = torch.Generator().manual_seed(0)
    y1 = torch.arange(64) % 10
    first = torch.nn.functional.one_hot(y1, 10).float() * 5 + torch.rand(64, 10, generator=generator)
    second, y2 = [], []
    for index, rank in enumerate((2,) * 8 + (7,) * 8 + (1,) * 40):
        label = 1 + index % 8 if rank > 1 else 0
        order = [c for c in range(10) if c != label]
        scores = torch.zeros(10)
        for position, cls in enumerate(order[: rank - 1] + [label] + order[rank - 1 :]):
            scores[cls] = 10.0 - position
        second.append(scores)
        y2.append(label)
    return [(first, y1), (torch.stack(second), torch.tensor(y2))]


#: by hand: 120 samples; top-1 right on 64 + 40; top-5 also on the 8 ranked 2nd
ACC, TOP5 = 104 / 120, 112 / 120
#: recall per class: class 0 47/47, classes 1-3 7/9, classes 4-8 6/8, class 9 6/6
MACRO = (1 + 3 * 7 / 9 + 5 * 6 / 8 + 1) / 10


def test_module_metrics_match_a_hand_computation_after_an_all_correct_first_batch():
    model = ImageClassifier(num_classes=10, input_shape=[1, 8, 8], arch="small_cnn")
    for logits, y in _batches():
        model.val_metrics.update(logits, y)
    values = {k: float(v) for k, v in model.val_metrics.compute().items()}
    assert values["val/acc"] == pytest.approx(ACC)
    assert values["val/acc_top5"] == pytest.approx(TOP5)
    assert values["val/acc_macro"] == pytest.approx(MACRO)
    check_top_k(model.val_metrics)  # top-5 >= top-1: passes


def test_torchmetrics_default_compute_groups_make_top5_report_top1():
    """The library behaviour the module avoids (compute_groups=False): with the default, the all-correct
    first batch groups top-5 with macro accuracy, and top-5 then reports top-1's value, not its own."""
    merged = MetricCollection(
        {
            "acc": MulticlassAccuracy(10, average="micro"),
            "acc_macro": MulticlassAccuracy(10, average="macro"),
            "acc_top5": MulticlassAccuracy(10, top_k=5, average="micro"),
        },
        prefix="val/",
    )
    for logits, y in _batches():
        merged.update(logits, y)
    assert any(len(group) > 1 for group in merged.compute_groups.values())
    assert float(merged.compute()["val/acc_top5"]) == pytest.approx(ACC)  # not TOP5


def test_a_top_k_below_top_1_is_an_error():
    """No correct computation gives top-5 < top-1: check_top_k stops such a report (here a collection
    whose "acc_top5" is really macro accuracy, below micro accuracy on these batches)."""
    wrong = MetricCollection(
        {"acc": MulticlassAccuracy(10, average="micro"), "acc_top5": MulticlassAccuracy(10, average="macro")},
        prefix="test/",
        compute_groups=False,
    )
    for logits, y in _batches():
        wrong.update(logits, y)
    with pytest.raises(RuntimeError, match="test/acc_top5=0.808333 is below test/acc=0.866667"):
        check_top_k(wrong)
