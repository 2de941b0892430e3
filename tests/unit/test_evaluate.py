import pytest
import torch

from training.evaluate import _graded_accuracy
from training.scale import Scale

THREE = Scale(["negative", "neutral", "positive"])
FIVE = Scale(["strongly negative", "negative", "neutral", "positive", "strongly positive"])


def test_graded_accuracy_uses_the_nearest_label():
    # 3 labels at -1, 0, 1: predictions round to the nearest.
    pred = torch.tensor([-0.9, 0.2, 0.6, -0.2, float("nan")])
    true = torch.tensor([-1.0, 0.0, 1.0, 1.0, float("nan")])
    out = _graded_accuracy(pred, true, THREE)  # the unlabelled row is left out
    assert out["accuracy"] == pytest.approx(0.75)
    # per class F1: negative 1, neutral 2/3, positive 2/3
    assert out["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_graded_accuracy_on_a_five_level_scale_compares_coarse_classes():
    # 3-label targets on a 5-level scale sit at -0.5, 0, 0.5. 0.9 is nearest "strongly positive", whose coarse
    # class is positive: right for a positive target; 0.3 is nearest "positive": wrong for a neutral one.
    pred, true = torch.tensor([-0.45, 0.1, 0.9, 0.3]), torch.tensor([-0.5, 0.0, 0.5, 0.0])
    out = _graded_accuracy(pred, true, FIVE)
    assert out["accuracy"] == pytest.approx(3 / 4)


def test_continuous_targets_give_no_classification_metrics():
    assert _graded_accuracy(torch.tensor([0.1, 0.2]), torch.tensor([0.33, -0.41]), THREE) == {}
