import pytest
import torch

from training.evaluate import _graded_accuracy


def test_graded_accuracy_uses_the_nearest_label():
    # 3 labels at -1, 0, 1: predictions round to the nearest.
    pred = torch.tensor([-0.9, 0.2, 0.6, -0.2, float("nan")])
    true = torch.tensor([-1.0, 0.0, 1.0, 1.0, float("nan")])
    out = _graded_accuracy(pred, true, 3)  # the unlabelled row is left out
    assert out["accuracy"] == pytest.approx(0.75)
    # per class F1: negative 1, neutral 2/3, positive 2/3
    assert out["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_graded_accuracy_on_a_wider_scale_averages_the_labels_in_use():
    # 3-label targets on a 5-level scale sit at -0.5, 0, 0.5; a prediction of -0.9 is "strongly negative".
    out = _graded_accuracy(torch.tensor([-0.45, 0.1, 0.9]), torch.tensor([-0.5, 0.0, 0.5]), 5)
    assert out["accuracy"] == pytest.approx(2 / 3)


def test_continuous_targets_give_no_classification_metrics():
    assert _graded_accuracy(torch.tensor([0.1, 0.2]), torch.tensor([0.33, -0.41]), 3) == {}
