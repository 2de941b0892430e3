"""The five-level scale, its three-class projection and the score bands (training/scale.py), and the
coarse-label loss (training/modeling.sentiment_loss)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from training.config import LossConfig
from training.losses import compute_losses, sentiment_loss
from training.scale import Scale, default_coarse, scale_problems

FIVE = ["strongly negative", "negative", "neutral", "positive", "strongly positive"]
THREE = ["negative", "neutral", "positive"]


def test_default_projection_and_cuts():
    scale = Scale(FIVE)
    assert scale.coarse == ["negative", "neutral", "positive"]
    assert scale.members == [[0, 1], [2], [3, 4]] and scale.refines
    assert scale.cuts == [-0.5, -0.1, 0.1, 0.5]
    three = Scale(THREE)
    assert three.coarse == THREE and not three.refines and three.cuts == [-0.1, 0.1]
    assert default_coarse(["bad", "good"]) == {"bad": ["bad"], "good": ["good"]}


def test_label_from_score_follows_fingpt_thresholds():
    # a score on a cut belongs to the band above it, as FinGPT's score >= 0.1 -> positive, -0.1 -> neutral
    scale = Scale(FIVE)
    got = [scale.label_from_score(s) for s in (-0.9, -0.5, -0.3, -0.1, 0.0, 0.0999, 0.1, 0.49, 0.5, 1.0)]
    assert got == [
        "strongly negative", "negative", "negative", "neutral", "neutral", "neutral",
        "positive", "positive", "strongly positive", "strongly positive",
    ]  # fmt: skip
    assert [Scale(THREE).label_from_score(s) for s in (-0.11, -0.1, 0.05, 0.1)] == [
        "negative", "neutral", "neutral", "positive"
    ]  # fmt: skip


def test_bad_scale_settings_are_named():
    assert scale_problems(FIVE, {"down": FIVE[:2], "up": FIVE[2:]}, None) == []
    assert "contiguous" in scale_problems(FIVE, {"a": [FIVE[0], FIVE[2]], "b": [FIVE[1], *FIVE[3:]]}, None)[0]
    assert "schema.score_cuts needs 4" in scale_problems(FIVE, None, [0.0, 0.5])[0]
    assert "inside (-1, 1)" in scale_problems(THREE, None, [-1.0, 0.5])[0]


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.float64, (16, 5), elements=st.floats(0.0, 1.0)),
    arrays(np.float64, 16, elements=st.floats(-1.0, 1.0)),
)
def test_card_label_projection_and_score_always_agree(raw, score):
    scale = Scale(FIVE)
    probs = raw + 1e-6
    probs /= probs.sum(1, keepdims=True)
    label, group, banded = scale.card(probs, score)
    coarse = scale.coarse_probs(probs)
    for i in range(len(probs)):
        assert scale.group_of[label[i]] == group[i]  # the projection is the label's coarse class
        assert coarse[i, group[i]] == coarse[i].max()  # the coarse class of most probability
        lo, hi = scale.bands[label[i]]
        assert lo <= banded[i] <= hi  # the score lies in the label's band
        assert scale.label_from_score(banded[i]) == scale.labels[label[i]]  # on the cuts' convention too
        if scale.coarse[group[i]] == "positive":
            assert banded[i] >= 0.1
        if scale.coarse[group[i]] == "negative":
            assert banded[i] < -0.1
        own = scale.labels.index(scale.label_from_score(score[i]))
        if scale.group_of[own] == group[i]:
            assert banded[i] == score[i] and label[i] == own  # a score inside the class places the label


def test_card_picks_the_coarse_class_first():
    # argmax alone would say neutral (0.35); positive as a class holds 0.40
    probs = np.array([[0.05, 0.20, 0.35, 0.25, 0.15]])
    label, group, banded = Scale(FIVE).card(probs, np.array([-0.3]))
    assert FIVE[label[0]] == "positive" and group[0] == 2 and banded[0] == pytest.approx(0.1)


def test_the_score_places_the_label_inside_the_class():
    """The classifier says which class; the score head says how strong (FiQA's intensities teach it)."""
    scale = Scale(FIVE)
    probs = np.array([[0.02, 0.03, 0.05, 0.60, 0.30]] * 3)  # "positive" is the likeliest fine label
    label, group, banded = scale.card(probs, np.array([0.8, 0.3, 0.5]))
    assert [FIVE[k] for k in label] == ["strongly positive", "positive", "strongly positive"]
    assert banded.tolist() == [0.8, 0.3, 0.5]
    # a label no row taught is not said: the score moves to the nearest taught label of the class
    taught = np.array([True, True, True, True, False])
    label, group, banded = scale.card(probs, np.array([0.8, 0.3, -0.4]), taught=taught)
    assert [FIVE[k] for k in label] == ["positive"] * 3
    assert banded[0] < 0.5 and banded[0] == pytest.approx(0.5) and banded[1] == 0.3 and banded[2] == 0.1
    # a negative class never carries the cut's score (-0.1 reads as neutral)
    label, _, banded = scale.card(np.array([[0.1, 0.6, 0.1, 0.1, 0.1]]), np.array([0.4]))
    assert FIVE[label[0]] == "negative" and scale.label_from_score(banded[0]) == "negative"


def test_coarse_loss_is_the_summed_probability_and_fine_rows_keep_cross_entropy():
    scale = Scale(FIVE)
    membership = torch.tensor(scale.membership, dtype=torch.float32)
    logits = torch.randn(4, 5)
    p = logits.softmax(-1)
    batch = {
        "sentiment_id": torch.tensor([4, -100, -100, -100]),
        "sentiment_group": torch.tensor([2, 2, 1, -100]),  # fine, coarse positive, coarse neutral, none
    }
    loss = sentiment_loss(logits, batch, membership=membership)
    expected = (
        F.cross_entropy(logits[:1], torch.tensor([4])) - torch.log(p[1, 3] + p[1, 4]) - torch.log(p[2, 2])
    ) / 3
    assert loss == pytest.approx(float(expected), rel=1e-5)
    # the coarse term is indifferent to how "positive" splits into positive / strongly positive
    coarse_only = {"sentiment_id": torch.tensor([-100]), "sentiment_group": torch.tensor([2])}
    a = sentiment_loss(torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0]]), coarse_only, membership=membership)
    b = sentiment_loss(torch.tensor([[0.0, 0.0, 0.0, 0.0, 2.0]]), coarse_only, membership=membership)
    assert a == pytest.approx(float(b))


def test_three_label_rows_lose_exactly_what_cross_entropy_gives():
    torch.manual_seed(0)
    out = {
        "sentiment_logits": torch.randn(6, 3, requires_grad=True),
        "sentiment_score": torch.zeros(6),
        "impact_logits": torch.zeros(6),
        "topic_logits": torch.zeros(6, 0),
        "ticker_score": torch.zeros(6, 0),
    }
    target = torch.tensor([0, 2, 1, -100, 2, 0])
    batch = {
        "sentiment_id": target,
        "sentiment_group": target,
        "sentiment_score": torch.full((6,), float("nan")),
        "impact": torch.full((6,), float("nan")),
        "topic_targets": torch.full((6, 0), float("nan")),
        "entity_scores": torch.full((6, 0), float("nan")),
    }
    weights = torch.tensor([2.0, 0.5, 1.0])
    cfg = LossConfig(sentiment_label_smoothing=0.1)
    got = compute_losses(out, batch, cfg, weights)["sentiment"]
    valid = target != -100
    want = F.cross_entropy(out["sentiment_logits"][valid], target[valid], weight=weights, label_smoothing=0.1)
    assert float(got) == pytest.approx(float(want), rel=1e-6)
