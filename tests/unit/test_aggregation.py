"""How a long article's chunks combine into its sentiment (inference.sentiment_aggregation)."""

import numpy as np
import pytest

from inference.engine import Scorer
from inference.score import ScoreConfig
from training.choices import SentimentAggregation
from training.config import ConfigError, load_config
from training.scale import Scale

SCALE = ["strongly negative", "negative", "neutral", "positive", "strongly positive"]


def _combiner(rule: str) -> Scorer:
    """A Scorer with only what the chunk weighting reads (no model: the rule is pure arithmetic)."""
    scorer = object.__new__(Scorer)
    scorer.scale = Scale(SCALE)
    scorer.sentiment_aggregation = rule
    return scorer


def _combined(rule: str, lengths, probs) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    weights = _combiner(rule)._chunk_weights(lengths, probs)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    return (probs * weights[:, None]).sum(0)


# a strongly positive lede, then two long neutral chunks (boilerplate, a balanced risk paragraph)
LEDE = [0.0, 0.02, 0.08, 0.3, 0.6]
NEUTRAL = [0.02, 0.05, 0.86, 0.05, 0.02]


def test_stance_keeps_a_clear_stance_that_the_mean_dilutes():
    scale = Scale(SCALE)
    lengths = [64, 64, 64]
    mean = _combined("mean", lengths, [LEDE, NEUTRAL, NEUTRAL])
    stance = _combined("stance", lengths, [LEDE, NEUTRAL, NEUTRAL])
    assert scale.coarse[scale.coarse_probs(mean).argmax()] == "neutral"
    assert scale.coarse[scale.coarse_probs(stance).argmax()] == "positive"
    # the lede wherever it stands: the rule weighs chunks, not places
    later = _combined("stance", lengths, [NEUTRAL, NEUTRAL, LEDE])
    assert later == pytest.approx(stance)


def test_neutral_chunks_stay_neutral_and_the_mean_is_length_weighted():
    scale = Scale(SCALE)
    probs = [NEUTRAL, [0.01, 0.04, 0.9, 0.04, 0.01]]
    stance = _combined("stance", [64, 20], probs)
    assert scale.coarse[scale.coarse_probs(stance).argmax()] == "neutral"
    mean = _combined("mean", [64, 20], probs)
    assert mean == pytest.approx((64 * np.array(probs[0]) + 20 * np.array(probs[1])) / 84)
    # chunks with no stance at all weigh by length alone
    flat = [[0, 0, 1.0, 0, 0], [0, 0, 1.0, 0, 0]]
    assert _combiner("stance")._chunk_weights([64, 20], np.array(flat)) == pytest.approx([64 / 84, 20 / 84])


def test_first_takes_the_lede_only_and_one_chunk_is_the_same_under_every_rule():
    assert _combined("first", [64, 64], [NEUTRAL, LEDE]) == pytest.approx(NEUTRAL)
    for rule in SentimentAggregation.values():
        assert _combined(rule, [30], [LEDE]) == pytest.approx(LEDE)


def test_an_unknown_rule_is_a_config_error_naming_the_key():
    override = {
        "model_dir": "m",
        "input": "x.jsonl",
        "output_dir": "o",
        "inference": {"sentiment_aggregation": "median"},
    }
    with pytest.raises(
        ConfigError,
        match=r"'inference.sentiment_aggregation': Invalid value 'median', expected one of \[stance, mean, first\]",
    ):
        load_config(override, ScoreConfig)
