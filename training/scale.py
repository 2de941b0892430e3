"""The ordinal sentiment scale: its fine labels, their coarse classes and their bands on the score axis.

The default scale has five labels; most labelled sources have three classes (negative, neutral, positive).
Each coarse class is a contiguous run of fine labels (``positive`` = positive or strongly positive), so a
three-class row teaches its direction without saying "not strong": its loss is the negative log of the
probability summed over the class's labels (``training.modeling.sentiment_loss``). A source with intensity (FiQA's continuous
scores) teaches the fine labels, through ``score_cuts``.

One article's card is read off the outputs in one way (:meth:`Scale.card`), which the batch scorer and
evaluation share, so the five-level label, its three-class projection and the score always agree: the
coarse class is the one with the most probability, the score the score head's value kept inside that
class's span of ``score_cuts``, and the label the one whose band holds that score.

No Lightning or Hydra import (the scorer uses this module).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Score-axis boundaries between adjacent labels. Three and five labels follow FinGPT/BloombergGPT's
# thresholds for FiQA (-0.1 <= score < 0.1 is neutral; a score on a cut belongs to the band above); five
# labels add "strongly" below -0.5 and from 0.5 (8.6 % and 16 % of FiQA's training rows). Other sizes: evenly
# spaced.
_DEFAULT_CUTS = {3: [-0.1, 0.1], 5: [-0.5, -0.1, 0.1, 0.5]}


def default_cuts(n: int) -> list[float]:
    if n in _DEFAULT_CUTS:
        return list(_DEFAULT_CUTS[n])
    return [float(x) for x in np.linspace(-1.0, 1.0, n + 1)[1:-1]]


def default_coarse(labels: Sequence[str]) -> dict[str, list[str]]:
    """Labels below the middle, the middle one (odd scales), labels above; each run is named by its label
    nearest the middle: strongly negative + negative -> ``negative``, neutral, positive + strongly positive
    -> ``positive``. A three-label scale is its own projection."""
    n = len(labels)
    half = n // 2
    groups = {labels[half - 1]: list(labels[:half])}
    if n % 2:
        groups[labels[half]] = [labels[half]]
    groups[labels[n - half]] = list(labels[n - half :])
    return groups


def scale_problems(
    labels: Sequence[str], coarse: Mapping[str, Sequence[str]] | None, cuts: Sequence[float] | None
) -> list[str]:
    """What is wrong with a schema's scale settings (empty when fine); keys named as in the config."""
    problems = []
    if coarse is not None:
        flat = [label for group in coarse.values() for label in group]
        if flat != list(labels):
            problems.append(
                f"schema.coarse_labels must list every sentiment label once, in scale order, as contiguous "
                f"runs (got {dict(coarse)} for {list(labels)})"
            )
        overlap = [name for name in coarse if name in labels and name not in coarse[name]]
        if overlap:
            problems.append(f"schema.coarse_labels: class {overlap} is named after a label outside it")
    if cuts is not None:
        cuts = list(cuts)
        if len(cuts) != len(labels) - 1 or any(b <= a for a, b in zip(cuts, cuts[1:])):
            problems.append(
                f"schema.score_cuts needs {len(labels) - 1} increasing values in (-1, 1), one between each "
                f"pair of adjacent labels (got {cuts})"
            )
        elif cuts[0] <= -1.0 or cuts[-1] >= 1.0:
            problems.append(f"schema.score_cuts must lie inside (-1, 1) (got {cuts})")
    return problems


class Scale:
    """A schema's scale: ``labels`` (fine, ordinal), ``coarse`` (name -> its labels), ``cuts``."""

    def __init__(
        self,
        labels: Sequence[str],
        coarse: Mapping[str, Sequence[str]] | None = None,
        cuts: Sequence[float] | None = None,
    ):
        self.labels = list(labels)
        groups = dict(coarse) if coarse else default_coarse(self.labels)
        self.cuts = [float(c) for c in (cuts if cuts is not None else default_cuts(len(self.labels)))]
        problems = scale_problems(self.labels, groups, self.cuts)
        if problems:
            raise ValueError("; ".join(problems))
        self.coarse = list(groups)
        self.members = [[self.labels.index(label) for label in groups[name]] for name in self.coarse]
        self.group_of = np.empty(len(self.labels), dtype=np.int64)
        for g, members in enumerate(self.members):
            self.group_of[members] = g
        # [G, K] membership, for summing class probabilities into coarse ones
        self.membership = np.zeros((len(self.coarse), len(self.labels)))
        for g, members in enumerate(self.members):
            self.membership[g, members] = 1.0
        # the coarse class of the middle label (odd scales): what a chunk without a stance says
        middle = len(self.labels) // 2
        self.neutral: int | None = int(self.group_of[middle]) if len(self.labels) % 2 else None
        edges = [-1.0, *self.cuts, 1.0]
        self.bands = list(zip(edges[:-1], edges[1:]))

    @classmethod
    def of(cls, schema: Any) -> Scale:
        """From a SchemaConfig, a LabelSchema or a ``newsimpact.json`` schema dict (older files lack the
        coarse classes and cuts: the defaults)."""
        if isinstance(schema, Mapping):
            return cls(schema["sentiment_labels"], schema.get("coarse_labels"), schema.get("score_cuts"))
        return cls(
            schema.sentiment_labels,
            getattr(schema, "coarse_labels", None),
            getattr(schema, "score_cuts", None),
        )

    @property
    def refines(self) -> bool:
        """True when some coarse class holds several labels (a five-level scale), False for a scale that
        is its own projection."""
        return any(len(m) > 1 for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        return {
            "coarse_labels": {
                name: [self.labels[i] for i in m] for name, m in zip(self.coarse, self.members)
            },
            "score_cuts": list(self.cuts),
        }

    # -- targets ------------------------------------------------------------------------------------------
    def target(self, label: str, coarse: bool) -> tuple[int, int]:
        """(fine id or -100, coarse id) of a row's label; ``coarse``: the label names a coarse class. A coarse
        class of one label is that label, so a three-label scale's rows are fine rows as well."""
        if coarse:
            g = self.coarse.index(label)
            members = self.members[g]
            return (members[0] if len(members) == 1 else -100), g
        k = self.labels.index(label)
        return k, int(self.group_of[k])

    def label_from_score(self, score: float) -> str:
        """The label whose band holds ``score`` (a score on a cut belongs to the band above it: 0.1 is positive, -0.1 neutral)."""
        return self.labels[int(np.searchsorted(self.cuts, score, side="right"))]

    # -- outputs ------------------------------------------------------------------------------------------
    def card(
        self, probs: np.ndarray, score: np.ndarray, taught: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Label ids, coarse ids and banded scores for rows of class probabilities [N, K] and raw scores [N].

        The coarse class is the one with the most probability (the classifier's call, trained by every
        sentiment source); inside it the score head places the article (its label is the one whose band
        holds the score, kept inside the class's span), so label, projection and score always agree.
        ``taught`` [K] (bool): the labels that may be said; a score in an untaught label's band moves to
        the nearest taught label of the class (a class with none taught keeps all its labels). Bands are
        closed below and open above except at 1 (a score on a cut belongs to the label above it).
        """
        probs = np.atleast_2d(np.asarray(probs, dtype=np.float64))
        score = np.asarray(score, dtype=np.float64).reshape(-1)
        group = (probs @ self.membership.T).argmax(1)
        allowed = self.membership[group] > 0  # [N, K]: the labels of the row's class
        if taught is not None:
            keep = allowed & np.asarray(taught, dtype=bool)[None, :]
            allowed = np.where(keep.any(1, keepdims=True), keep, allowed)
        lo = np.array([band[0] for band in self.bands])
        hi = np.array([band[1] if band[1] >= 1.0 else np.nextafter(band[1], -np.inf) for band in self.bands])
        distance = np.maximum(lo[None, :] - score[:, None], score[:, None] - hi[None, :]).clip(min=0.0)
        label = np.where(allowed, distance, np.inf).argmin(1)  # the class's band nearest the score
        return label, group, np.clip(score, lo[label], hi[label])

    def coarse_probs(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs, dtype=np.float64) @ self.membership.T

    def expected_score(self, probs: np.ndarray) -> np.ndarray:
        """Probability-weighted mean of the labels' positions on [-1, 1] (evenly spaced, as
        ``training.sources.label_score``): the score of a model whose score head no row taught (a three-class
        model's is p(positive) - p(negative))."""
        positions = np.linspace(-1.0, 1.0, len(self.labels))
        return np.asarray(probs, dtype=np.float64) @ positions
