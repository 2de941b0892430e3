"""The distillation teacher pass: an exported teacher's outputs become soft targets for the student.

``distill.teacher=MODEL_DIR`` (any exported folder: merged, adapter or onnx), or ``[DIR_A,DIR_B]``: an
ensemble, whose members' outputs are averaged. The teacher's outputs for the training rows of every source
-- labelled ones and text-only sources (columns ``{text: ...}`` and nothing else, e.g. the TFN-topic tweets
next to TFNS) -- are produced by the batch scorer itself (``inference.score``), and its part files are the
cache: one folder per (model, texts), scored once and reused by every later run and ensemble. Validation
and checkpoint selection stay on real labels.

The losses are training/distill.py's. The student's loss adds, for the teacher's heads (``distill.heads``, default: those the teacher was
validated on): ``T^2 * KL(teacher_T || student_T)`` on the sentiment distribution at temperature ``T``,
squared error on the sentiment score, and binary cross-entropy against the teacher's impact and topic
probabilities, all times ``distill.weight``, next to the hard-label loss where a row has labels. With
``distill.hidden_weight > 0`` the teacher pass also writes its pooled states (``inference.embeddings``) and
the student's pooled state, mapped to the teacher's width by a learned linear layer that lives only in
training, is pulled towards it by the cosine distance times that weight.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from training.choices import Precision
from training.config import DISTILL_HEADS, DistillConfig
from training.distill import TEACHER_COLUMNS, teacher_heads
from training.packaged_models import cache_dir

log = logging.getLogger("newsimpact.distill")

# The teacher's output column behind each head it can teach.
HEAD_OF_TARGET = {
    "teacher_probs": "sentiment",
    "teacher_score": "sentiment_score",
    "teacher_impact": "impact",
    "teacher_topics": "topics",
}


def _floats(values: Sequence[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


class Teacher:
    """Scores texts with the teacher -- one exported model, or an ensemble of them whose outputs are
    averaged -- through the batch scorer, caching each model's part files."""

    def __init__(
        self,
        config: DistillConfig,
        topics: Sequence[str],
        labels: Sequence[str] | None = None,
        coarse: Sequence[str] = (),
    ):
        from safetensors import safe_open

        from inference.runner import model_fingerprint
        from training.config import ConfigError, teacher_members
        from training.modeling import HEADS_FILE, read_meta

        self.config = config
        # auto: bf16 where the teacher pass runs on a GPU (this rank's, inference.score.run), fp32 on a CPU
        self.precision: str = str(config.precision)
        if self.precision == "auto":
            self.precision = (
                "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
            )
        members = teacher_members(config.teacher)
        assert members, "distill.teacher is not set"
        self.model_dirs = [str(Path(m.model_dir).resolve()) for m in members]
        metas = [read_meta(d) for d in self.model_dirs]
        self.meta = metas[0]
        # Each member teaches the heads it names, else those it was trained on (teachers per task: a TFNS
        # model the sentiment, a topic model the topics); a head several members teach gets their mean.
        self.member_heads = [
            teacher_heads(meta, m.heads if m.heads is not None else config.heads)
            for meta, m in zip(metas, members, strict=True)
        ]
        self.heads = [h for h in DISTILL_HEADS if any(h in each for each in self.member_heads)]
        if not self.heads:
            raise ConfigError(
                [
                    f"distill.teacher='{config.teacher}' reports no validation metrics, so which of its heads "
                    "were trained is unknown; name them: distill.heads=[sentiment,...]"
                ]
            )
        self._check_scales(metas, labels, coarse)
        self.fingerprints = [model_fingerprint(d) for d in self.model_dirs]
        self.root = Path(config.cache_dir) if config.cache_dir else cache_dir() / "distill"
        self.topics = list(topics)  # the student's; a teacher topic of another name is no target
        self.hidden = config.hidden_weight > 0  # the teacher's pooled states are targets too
        # Each member's pooled width (the input width of its sentiment head); an ensemble's pooled state is
        # the members' unit-length states side by side.
        self.widths: list[int] = []
        for folder in self.model_dirs:
            with safe_open(str(Path(folder) / HEADS_FILE), framework="pt") as heads:
                self.widths.append(int(heads.get_slice("sentiment.weight").get_shape()[1]))
        self.width = sum(self.widths)

    def _check_scales(
        self, metas: list[dict[str, Any]], labels: Sequence[str] | None, coarse: Sequence[str]
    ) -> None:
        """A teacher that teaches sentiment must speak the student's scale (or its coarse classes), and
        the members of an ensemble one scale."""
        from training.config import ConfigError

        teaching = [
            (folder, list(meta["schema"]["sentiment_labels"]))
            for folder, meta, heads in zip(self.model_dirs, metas, self.member_heads, strict=True)
            if "sentiment" in heads
        ]
        for folder, teacher_labels in teaching:
            if labels is not None and teacher_labels not in (list(labels), list(coarse)):
                raise ConfigError(
                    [
                        f"distill.teacher='{folder}' has the sentiment labels {teacher_labels}, the student "
                        f"{list(labels)}; give the student the same schema.sentiment_labels (or its coarse "
                        "classes for a three-class teacher), or leave sentiment out: distill.heads=[...]"
                    ]
                )
        # the width of the teacher_probs column (1: no sentiment target)
        self.sentiment_width = len(teaching[0][1]) if teaching else 1
        if len({len(labels_) for _, labels_ in teaching}) > 1:
            raise ConfigError(
                [
                    f"distill.teacher={[f for f, _ in teaching]}: the sentiment teachers' scales differ, so "
                    "their distributions cannot be averaged; use sentiment teachers of one scale"
                ]
            )

    def _no_targets(self, n: int) -> dict[str, np.ndarray]:
        """NaN targets shaped as :meth:`score`'s, for rows the teacher does not score."""
        widths = {"teacher_probs": self.sentiment_width, "teacher_topics": len(self.topics)}
        targets = {
            key: np.full((n, widths[key]) if key in widths else (n,), np.nan, dtype=np.float32)
            for key in HEAD_OF_TARGET
        }
        if self.hidden:
            targets["teacher_embedding"] = np.full((n, self.width), np.nan, dtype=np.float32)
        return targets

    def folder(self, texts: Sequence[str], member: int = 0) -> Path:
        digest = hashlib.sha256()
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass"))
            digest.update(b"\0")
        # Outputs with embeddings are a folder of their own (the same texts scored without them stay valid).
        suffix = "-emb" if self.hidden else ""
        fingerprint = self.fingerprints[member]
        return self.root / f"{fingerprint}-{self.precision}" / (digest.hexdigest()[:16] + suffix)

    def score(self, texts: Sequence[str], name: str) -> dict[str, np.ndarray]:
        """Teacher outputs for ``texts`` (in order): an ensemble's members' outputs averaged (probabilities,
        scores, impact, topics) and its pooled states, each scaled to unit length, concatenated."""
        members = [self._score_member(texts, name, i) for i in range(len(self.model_dirs))]
        if len(members) == 1:
            return members[0]
        targets = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: a head no member scored
            for key, head in HEAD_OF_TARGET.items():
                taught = [
                    m[key] for m, heads in zip(members, self.member_heads, strict=True) if head in heads
                ]
                if not taught:  # no member teaches it: no target (attach() fills the column with NaN)
                    targets[key] = np.full_like(members[0][key], np.nan)
                    continue
                targets[key] = np.nanmean(np.stack(taught), axis=0).astype(np.float32)
        if self.hidden:
            states = [m["teacher_embedding"] for m in members]
            norms = [np.linalg.norm(s, axis=-1, keepdims=True).clip(min=1e-12) for s in states]
            targets["teacher_embedding"] = np.concatenate(
                [s / n for s, n in zip(states, norms, strict=True)], axis=-1
            ).astype(np.float32)
        return targets

    def _score_member(self, texts: Sequence[str], name: str, member: int) -> dict[str, np.ndarray]:
        """One model's outputs for ``texts`` (in order), from the cache or a fresh scorer run."""
        out = self.folder(texts, member)
        if not (out / "_SUCCESS").exists():
            self._run_scorer(texts, out, name, self.model_dirs[member])
        else:
            log.info("distill: teacher outputs for %s from the cache %s", name, out)
        columns = ["id", "sentiment_probs", "sentiment_score", "impact", "topic_scores"]
        table = pq.read_table(
            sorted(str(p) for p in out.glob("part-*.parquet")),
            columns=columns + (["embedding"] if self.hidden else []),
        )
        order = np.argsort(np.asarray(table.column("id").to_pylist(), dtype=np.int64))
        if len(order) != len(texts):
            raise RuntimeError(
                f"distill: the teacher scored {len(order)} of {len(texts)} rows of {name} "
                f"(see {out}/errors-*.jsonl); delete {out} to score them again"
            )
        topic_scores = table.column("topic_scores").to_pylist()
        # By name: the scorer leaves out topics the teacher was never taught (NaN here: no target).
        by_name = [{t["topic"]: t["score"] for t in row} for row in topic_scores]
        topics = np.array(
            [[scores.get(t, np.nan) for t in self.topics] for scores in by_name], dtype=np.float32
        ).reshape(len(order), len(self.topics))
        targets = {
            "teacher_probs": np.asarray(table.column("sentiment_probs").to_pylist(), dtype=np.float32)[order],
            "teacher_score": _floats(table.column("sentiment_score").to_pylist())[order],
            # null where the teacher's impact head was never taught
            "teacher_impact": _floats(table.column("impact").to_pylist())[order],
            "teacher_topics": topics[order],
        }
        if self.hidden:
            column = table.column("embedding").combine_chunks()
            states = column.values.to_numpy(zero_copy_only=False).reshape(len(column), -1)
            targets["teacher_embedding"] = states.astype(np.float32)[order]
        return targets

    def _run_scorer(self, texts: Sequence[str], out: Path, name: str, model_dir: str) -> None:
        from inference.score import InferenceOptions, ScoreConfig
        from inference.score import run as score_run

        out.mkdir(parents=True, exist_ok=True)
        inputs = out / "inputs.jsonl"
        tmp = out / "inputs.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for i, text in enumerate(texts):
                fh.write(json.dumps({"id": str(i), "text": text if text.strip() else "."}) + "\n")
        os.replace(tmp, inputs)
        log.info("distill: scoring %d rows of %s with the teacher %s", len(texts), name, model_dir)
        config = ScoreConfig(
            model_dir=model_dir,
            input=str(inputs),
            output_dir=str(out / "scored"),
            inference=InferenceOptions(
                precision=Precision(self.precision),
                max_chunks=1,
                unit_rows=20000,
                topic_threshold=0.5,
                embeddings=self.hidden,
            ),
        )
        score_run(config, [str(inputs)], single_process=True)
        for part in (out / "scored").glob("part-*.parquet"):
            os.replace(part, out / part.name)
        (out / "_SUCCESS").write_text(json.dumps({"teacher": model_dir, "rows": len(texts)}))

    def attach(self, ds: Any, name: str, score: bool = True) -> Any:
        """A canonical ``datasets.Dataset`` with the teacher's outputs as columns (NaN for heads not used).
        ``score=False`` (a source with ``distill: false``): the same columns, all NaN, no teacher pass."""
        n = len(ds)
        targets = self.score(list(ds["text"]), name) if score else self._no_targets(n)
        # Heads the student does not learn from the teacher: NaN targets (masked out by the loss).
        for column, head in HEAD_OF_TARGET.items():
            if head not in self.heads:
                shape = (n, 1) if targets[column].ndim == 2 else (n,)
                targets[column] = np.full(shape, np.nan, dtype=np.float32)
        for column in TEACHER_COLUMNS:
            if column in targets:
                ds = ds.add_column(column, targets[column].tolist())
        return ds
