"""The scorer's hot path: vectorised batches, one packed copy per batch, batches launched ahead, the
out-of-memory split, and the device each worker takes. Every check runs on the CPU."""

import random

import numpy as np
import pytest
import torch

from inference.engine import Scorer
from inference.prep import Article, Chunk
from inference.runner import onnx_providers


def _mixed_articles(n: int, seed: int = 0) -> list[Article]:
    """Headlines and long articles, some naming tickers, some given tickers: every head has work."""
    rng = random.Random(seed)
    words = [
        "shares",
        "rose",
        "fell",
        "profit",
        "guidance",
        "cut",
        "raised",
        "merger",
        "loss",
        "record",
        "quarter",
        "outlook",
    ]
    articles = []
    for i in range(n):
        body = " ".join(rng.choices(words, k=rng.choice([6, 12, 40, 300, 700])))
        if i % 3 == 0:
            body = f"$ACME and $BETA: {body} ACME up, BETA down."
        tickers = ["ACME", "ZED"] if i % 5 == 0 else None
        articles.append(Article(f"a{i}", body, tickers))
    return articles


def _reference_tensors(scorer: Scorer, chunks: list[Chunk]):
    """The batch built row by row, the plain way (what the vectorised builder must equal)."""
    length = scorer.padded_length(max(len(c.input_ids) for c in chunks))
    rows = min(1 << (len(chunks) - 1).bit_length(), max(scorer.full_batch(length), len(chunks)))
    chunks = list(chunks) + [chunks[0]] * (rows - len(chunks))
    slots = [[t for t, toks in enumerate(c.entity_tokens) if toks] for c in chunks]
    n_slots = max((len(s) for s in slots), default=0)
    n_slots = 1 << (n_slots - 1).bit_length() if n_slots else 0
    ids = torch.full((rows, length), scorer.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, length), dtype=torch.long)
    entity = torch.zeros((rows, n_slots, length), dtype=torch.bool)
    for b, chunk in enumerate(chunks):
        n = len(chunk.input_ids)
        ids[b, :n] = torch.from_numpy(chunk.input_ids.astype(np.int64))
        mask[b, :n] = 1
        for e, t in enumerate(slots[b]):
            entity[b, e, chunk.entity_tokens[t]] = True
    return ids, mask, entity, slots


def test_vectorised_batches_equal_the_row_by_row_build(exported):
    scorer = Scorer(str(exported["merged"]), batch_tokens=2048)
    chunks, _, _ = scorer.prepare(_mixed_articles(60))
    assert any(any(c.entity_tokens) for c in chunks)  # the mention mask is exercised
    for batch in scorer.batches(chunks):
        items = [chunks[i] for i in batch]
        got = scorer._tensors(items)
        want = _reference_tensors(scorer, items)
        for g, w in zip(got[:3], want[:3]):
            assert torch.equal(g, w)
        assert got[3] == want[3]


def test_every_head_equals_a_forward_pass_per_chunk(exported):
    """Packed outputs, one copy per batch, and batch n+1 launched before batch n is read: every chunk's
    heads equal what the model gives for that chunk alone (fp32, mixed corpus, tickers, embeddings)."""
    scorer = Scorer(str(exported["merged"]), batch_tokens=1024, embeddings=True)
    chunks, _, _ = scorer.prepare(_mixed_articles(40))
    probs, score, impact, topic, tickers, states = scorer.chunk_outputs(chunks)
    n_topics = len(scorer.topics)
    for i, chunk in enumerate(chunks):
        ids, mask, entity, slots = _reference_tensors(scorer, [chunk])
        alone = scorer.runner(ids, mask, entity, embedding=True)
        np.testing.assert_allclose(probs[i], alone["sentiment_probs"][0], atol=2e-5)
        assert score[i] == pytest.approx(float(alone["sentiment_score"][0]), abs=2e-5)
        assert impact[i] == pytest.approx(float(alone["impact"][0]), abs=2e-5)
        np.testing.assert_allclose(topic[i], alone["topic_scores"][0][:n_topics], atol=2e-5)
        np.testing.assert_allclose(states[i], alone["embedding"][0], atol=2e-4)
        assert set(tickers[i]) == set(slots[0])
        for e, t in enumerate(slots[0]):
            assert tickers[i][t][0] == pytest.approx(float(alone["ticker_score"][0, e]), abs=2e-5)


def test_a_batch_out_of_device_memory_is_split_and_retried(exported, caplog):
    """CUDA's out-of-memory error, injected on CPU for batches over 3 rows: the scorer splits them in
    half until they fit, counts the splits, and the scores equal an unsplit run's."""
    articles = _mixed_articles(30, seed=3)
    plain = Scorer(str(exported["merged"]), batch_tokens=4096).score(articles)
    scorer = Scorer(str(exported["merged"]), batch_tokens=4096)
    launch = scorer.runner.launch
    sizes = []

    def small_memory(ids, mask, entity_mask, embedding=False):
        sizes.append(ids.shape[0])
        if ids.shape[0] > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return launch(ids, mask, entity_mask, embedding)

    scorer.runner.launch = small_memory  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="newsimpact.score"):
        split = scorer.score(articles)
    assert scorer.oom_splits > 0
    assert "out of device memory" in caplog.text
    assert max(s for s in sizes) > 3 and min(sizes) <= 3
    for a, b in zip(split, plain):
        assert a["id"] == b["id"]
        assert a["sentiment_probs"] == pytest.approx(b["sentiment_probs"], abs=1e-5)
        assert a["impact"] == pytest.approx(b["impact"], abs=1e-5)


def test_a_single_chunk_that_does_not_fit_fails_for_real(exported):
    scorer = Scorer(str(exported["merged"]))

    def no_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")

    scorer.runner.launch = no_memory  # type: ignore[method-assign]
    with pytest.raises(torch.cuda.OutOfMemoryError):
        scorer.score([Article("x", "one short headline")])


def test_workers_map_onto_the_gpus_there_are(monkeypatch):
    """More workers than GPUs (several workers feeding one GPU): local rank modulo the device count."""
    from inference.score import InferenceOptions, _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert [_device(InferenceOptions(), r) for r in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]
    assert _device(InferenceOptions(device="cuda"), 3) == "cuda:1"
    assert _device(InferenceOptions(device="cpu"), 3) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device(InferenceOptions(), 3) == "cpu"


def test_worker_precision_is_resolved_where_the_worker_runs(monkeypatch):
    """``auto`` is resolved by each worker for its own device (a Ray actor on a GPU node, not the
    driver); a worker whose own resolution differs from the job's recorded precision stops with a
    message naming both."""
    from inference.score import worker_precision
    from training.config import ConfigError

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert worker_precision("auto", "cuda:0", None) == "bf16"
    assert worker_precision("fp16", "cuda:0", None) == "fp16"
    assert worker_precision("auto", "cuda:0", "bf16") == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        worker_precision("auto", "cuda:0", "fp32")


def test_onnx_runs_on_the_gpu_provider_when_onnxruntime_has_it(caplog):
    gpu = torch.device("cuda:1")
    assert onnx_providers(gpu, ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == (
        "CUDAExecutionProvider",
        {"device_id": 1},
    )
    with caplog.at_level("WARNING", logger="newsimpact.score"):
        assert onnx_providers(gpu, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "onnxruntime-gpu" in caplog.text
    assert onnx_providers(torch.device("cpu"), ["CUDAExecutionProvider"]) == ["CPUExecutionProvider"]


def test_warmup_runs_before_the_job_and_changes_no_score(exported):
    scorer = Scorer(str(exported["merged"]))
    articles = _mixed_articles(8)
    before = scorer.score(articles)
    assert scorer.warmup() > 0
    after = scorer.score(articles)
    assert [a["sentiment_probs"] for a in after] == [b["sentiment_probs"] for b in before]


def test_prep_worker_processes_give_the_scores_of_the_background_thread(exported, tmp_path):
    """Windows prepared in two spawned prep processes (all but the first window) score exactly as
    windows prepared in the scoring process's thread: every head, every row, in input order."""
    import json

    import pandas as pd

    from inference.score import InferenceOptions, ScoreConfig, run, validate_score_config

    rows = [
        {"id": a.id, "text": a.text, **({"tickers": a.tickers} if a.tickers else {})}
        for a in _mixed_articles(90)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    frames = {}
    for workers in (0, 2):
        config = ScoreConfig(
            model_dir=str(exported["merged"]),
            input=str(path),
            output_dir=str(tmp_path / f"out{workers}"),
            inference=InferenceOptions(progress=False, prep_workers=workers, window=16, precision="fp32"),
        )
        manifest = run(config, validate_score_config(config))
        assert manifest["this_run"]["workers"][0]["prep_workers"] == workers
        frames[workers] = pd.concat(
            [pd.read_parquet(p) for p in sorted((tmp_path / f"out{workers}").glob("part-*.parquet"))]
        ).reset_index(drop=True)
    threaded, pooled = frames[0], frames[2]
    assert list(pooled["id"]) == [r["id"] for r in rows]
    pd.testing.assert_frame_equal(pooled, threaded)


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
def test_the_tokenizer_core_chunks_as_the_transformers_call_does(backbone, request):
    """The preparer calls the fast tokenizer's Rust core directly: the same chunks (ids, article,
    mention tokens) as transformers' batch call with truncation, stride and overflowing tokens."""
    from inference.prep import Preparer
    from training.modeling import load_tokenizer

    tokenizer = load_tokenizer(request.getfixturevalue(backbone))
    articles = [(a.text, a.tickers) for a in _mixed_articles(40, seed=7)]
    fast = Preparer(tokenizer, max_length=32, stride=8, max_chunks=5, ticker_map={"Acme Corp": "ACME"})
    plain = Preparer(tokenizer, max_length=32, stride=8, max_chunks=5, ticker_map={"Acme Corp": "ACME"})
    assert fast.backend is not None
    plain.backend = None  # transformers' tokenizer call
    got, want = fast(articles), plain(articles)
    assert got.tokens == want.tokens and got.tickers == want.tickers
    assert len(got.chunks) == len(want.chunks) > len(articles)  # long articles are cut into several chunks
    assert any(any(c.entity_tokens) for c in got.chunks)
    for a, b in zip(got.chunks, want.chunks):
        assert a.article == b.article
        assert np.array_equal(a.input_ids, b.input_ids)
        assert a.entity_tokens == b.entity_tokens


def _per_article_reference(
    scorer, articles, chunks, tickers, probs, score, impact, topic, ticker_scores, states
):
    """The aggregation written article by article (the scorer's rules before they became segment
    operations over the window): what the vectorised records must equal."""
    by_article: dict[int, list[int]] = {}
    for i, chunk in enumerate(chunks):
        by_article.setdefault(chunk.article, []).append(i)
    records = []
    for a, article in enumerate(articles):
        idx = by_article[a]
        weights = scorer._chunk_weights([len(chunks[i].input_ids) for i in idx], probs[idx])
        p = scorer._taught((probs[idx] * weights[:, None]).sum(0))
        raw = (
            scorer.scale.expected_score(p)
            if "sentiment_score" in scorer.untrained_heads
            else (score[idx] * weights).sum()
        )
        label, coarse, banded = scorer.scale.card(p[None], np.array([raw]), scorer.class_mask)
        t = topic[idx].max(0)
        tick = []
        for k, ticker in enumerate(tickers[a]):
            found = [ticker_scores[i][k] for i in idx if k in ticker_scores[i]]
            value = None
            if found and "tickers" not in scorer.untrained_heads:
                value = sum(s * m for s, m in found) / sum(m for _, m in found)
            tick.append({"ticker": ticker, "sentiment_score": value})
        records.append(
            {
                "id": article.id,
                "sentiment": scorer.labels[int(label[0])],
                "sentiment_coarse": scorer.scale.coarse[int(coarse[0])],
                "sentiment_probs": list(p),
                "sentiment_score": float(banded[0]),
                "impact": None
                if "impact" in scorer.untrained_heads
                else float(
                    impact[idx].max() if scorer.impact_aggregation == "max" else (impact[idx] * weights).sum()
                ),
                "topics": [scorer.topics[i] for i in scorer.taught_topics if t[i] >= scorer.topic_threshold],
                "topic_scores": [
                    {"topic": scorer.topics[i], "score": float(t[i])} for i in scorer.taught_topics
                ],
                "tickers": tick,
                "n_chunks": len(idx),
                "embedding": list((states[idx] * weights[:, None]).sum(0)),
            }
        )
    return records


@pytest.mark.parametrize(
    ("sentiment_rule", "impact_rule", "untaught"),
    [("stance", "max", False), ("mean", "mean", True), ("first", "max", True), ("stance", "mean", True)],
)
def test_window_aggregation_equals_the_per_article_rules(exported, sentiment_rule, impact_rule, untaught):
    """Records built with segment operations over the window equal the per-article rules: every
    aggregation rule, untaught classes and topics, untrained heads, tickers, embeddings."""
    scorer = Scorer(
        str(exported["merged"]),
        batch_tokens=1024,
        embeddings=True,
        sentiment_aggregation=sentiment_rule,
        impact_aggregation=impact_rule,
        topic_threshold=0.3,
    )
    if untaught:  # as a model whose label_counts miss a class, a topic and two heads
        scorer.class_mask = np.array([i != 1 for i in range(len(scorer.labels))])
        scorer.taught_topics = scorer.taught_topics[1:]
        scorer.untrained_heads = {"sentiment_score", "impact"}
    articles = _mixed_articles(50, seed=11)
    chunks, tickers, _ = scorer.prepare(articles)
    outputs = scorer.chunk_outputs(chunks)
    assert any(c > 1 for c in np.bincount([c.article for c in chunks]))  # long articles: several chunks
    got = scorer._aggregate(articles, chunks, tickers, *outputs)
    want = _per_article_reference(scorer, articles, chunks, tickers, *outputs)
    assert len(got) == len(want) == len(articles)
    for g, w in zip(got, want):
        for key in ("id", "sentiment", "sentiment_coarse", "topics", "n_chunks"):
            assert g[key] == w[key], key
        for key in ("sentiment_probs", "embedding"):
            np.testing.assert_allclose(g[key], w[key], rtol=1e-9, atol=1e-12)
        assert g["sentiment_score"] == pytest.approx(w["sentiment_score"], abs=1e-12)
        assert (g["impact"] is None) == (w["impact"] is None)
        if w["impact"] is not None:
            assert g["impact"] == pytest.approx(w["impact"], abs=1e-12)
        assert [x["topic"] for x in g["topic_scores"]] == [x["topic"] for x in w["topic_scores"]]
        np.testing.assert_allclose(
            [x["score"] for x in g["topic_scores"]], [x["score"] for x in w["topic_scores"]]
        )
        assert g["tickers"] == w["tickers"]


def test_the_prep_pool_passes_on_a_reader_error_and_stops_cleanly(exported):
    """The feeder thread reads the input: an error there reaches the scoring thread as itself, and a
    consumer that stops early (a lost claim) leaves no thread or process behind."""
    import threading

    from inference.prep import PrepPool

    scorer = Scorer(str(exported["merged"]))
    articles = _mixed_articles(12)

    def broken():
        yield articles[:4]
        yield articles[4:8]
        raise OSError("truncated gzip stream (injected)")

    with PrepPool(scorer.preparer, 0) as pool:
        got = []
        with pytest.raises(OSError, match="truncated gzip"):
            for window, prepared in pool.prepared(broken()):
                got.append((len(window), len(prepared.tickers)))
        assert got == [(4, 4), (4, 4)]
        stream = pool.prepared(articles[i : i + 2] for i in range(0, 12, 2))
        first, _ = next(stream)
        assert [a.id for a in first] == ["a0", "a1"]
        stream.close()  # the consumer leaves early
    assert not any(t.name == "prepare-feeder" for t in threading.enumerate())


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
def test_the_core_tokenizer_prepares_what_transformers_tokenizer_does(backbone, request):
    """The card's CoreTokenizer (tokenizer.json through `tokenizers` alone, no transformers import) gives
    the preparer the same chunks, pad token and padding side as the folder's transformers tokenizer."""
    from inference.prep import CoreTokenizer, Preparer
    from training.modeling import load_tokenizer

    folder = request.getfixturevalue(backbone)
    full, core = load_tokenizer(folder), CoreTokenizer(folder)
    assert core.pad_token_id == full.pad_token_id and core.padding_side == full.padding_side
    articles = [(a.text, a.tickers) for a in _mixed_articles(40, seed=11)]
    got = Preparer(core, max_length=32, stride=8, max_chunks=5, ticker_map={"Acme Corp": "ACME"})(articles)
    want = Preparer(full, max_length=32, stride=8, max_chunks=5, ticker_map={"Acme Corp": "ACME"})(articles)
    assert got.tokens == want.tokens and got.tickers == want.tickers and len(got.chunks) == len(want.chunks)
    for a, b in zip(got.chunks, want.chunks):
        assert a.article == b.article and np.array_equal(a.input_ids, b.input_ids)
        assert a.entity_tokens == b.entity_tokens
