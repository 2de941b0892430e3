import gzip
import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from inference.engine import Scorer
from inference.prep import Article
from inference.score import InferenceOptions, ScoreConfig, run, validate_score_config
from tests.conftest import write_jsonl
from training.config import ConfigError


def _score(model_dir, inputs, out, **options):
    config = ScoreConfig(
        model_dir=str(model_dir),
        input=inputs,
        output_dir=str(out),
        inference=InferenceOptions(progress=False, **options),
    )
    return run(config, validate_score_config(config))


def _read(out):
    return pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)


def _errors(out):
    return [
        json.loads(line) for p in sorted(out.glob("errors-*.jsonl")) for line in p.read_text().splitlines()
    ]


def test_bad_rows_go_to_errors_and_the_job_goes_on(exported, tmp_path):
    long_text = "Acme (NYSE: ACME) results beat estimates. " * 50_000  # ~2 MB
    lines = [
        json.dumps({"id": "ok-1", "text": "$ACME beats estimates"}).encode(),
        b'{"id": "bad-json", "text": "unterminated',
        json.dumps({"id": "no-text"}).encode(),
        json.dumps({"id": "null-text", "text": None}).encode(),
        json.dumps({"id": "blank", "text": "   "}).encode(),
        json.dumps({"id": "number", "text": 42}).encode(),
        b'{"id": "latin1", "text": "caf\xe9"}',
        b'["not", "an", "object"]',
        json.dumps({"id": "long", "text": long_text}).encode(),
        json.dumps(
            {"id": "unicode", "text": "Übernahme: Siemens steigt um 5 % — 株価上昇"}, ensure_ascii=False
        ).encode(),
        b"",
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines))
    manifest = _score(exported["merged"], str(path), tmp_path / "out", max_chunks=8)
    errors = _errors(tmp_path / "out")
    assert len(errors) == 7
    reasons = " | ".join(e["reason"] for e in errors)
    for needle in (
        "malformed JSON",
        "missing 'text'",
        "null",
        "blank",
        "int, not a string",
        "UTF-8",
        "not an object",
    ):
        assert needle in reasons
    assert all(e["file"].endswith("mixed.jsonl") and isinstance(e["offset"], int) for e in errors)
    data = path.read_bytes()  # the offset is where the bad record starts in the file
    assert all(
        data[e["offset"] :].startswith(e["raw"][:10].encode("utf-8", "replace")) or "UTF-8" in e["reason"]
        for e in errors
    )
    scored = _read(tmp_path / "out")
    assert sorted(scored["id"]) == ["long", "ok-1", "unicode"]
    assert scored.set_index("id").loc["long", "n_chunks"] == 8
    assert manifest["rows"] == manifest["scored"] + manifest["errors"] == 10
    assert (tmp_path / "out" / "_SUCCESS").exists()


def test_output_schema_tickers_and_kept_columns(exported, tmp_path):
    rows = [
        {"id": 1, "text": "Acme Corp (NASDAQ: ACME) beats; $GLBX falls", "source": "wire"},
        {"id": 2, "text": "Initech wins a contract", "tickers": ["INIT", "ZZZZ"], "source": "blog"},
        {"id": 3, "text": "Markets were quiet", "source": "wire"},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    _score(
        exported["merged"],
        str(tmp_path / "a.jsonl"),
        tmp_path / "out",
        keep_columns=["source"],
        ticker_map={"Initech": "INIT"},
    )
    df = _read(tmp_path / "out").set_index("id")
    assert list(df.columns[:9]) == [
        "sentiment",
        "sentiment_coarse",
        "sentiment_probs",
        "sentiment_score",
        "impact",
        "topics",
        "topic_scores",
        "tickers",
        "n_chunks",
    ]
    assert df.loc["1", "source"] == "wire"
    assert [t["ticker"] for t in df.loc["1", "tickers"]] == ["ACME", "GLBX"]
    assert all(-1 <= t["sentiment_score"] <= 1 for t in df.loc["1", "tickers"])
    # Tickers from the input column: INIT is found through the name map, ZZZZ is not in the text.
    by_ticker = {t["ticker"]: t["sentiment_score"] for t in df.loc["2", "tickers"]}
    assert by_ticker["INIT"] is not None and by_ticker["ZZZZ"] is None
    assert len(df.loc["3", "tickers"]) == 0
    probs = df["sentiment_probs"].map(sum)
    assert (probs.sub(1).abs() < 1e-4).all()
    assert df["impact"].between(0, 1).all() and df["sentiment_score"].between(-1, 1).all()


def test_a_worker_ending_after_the_job_completes_is_in_the_manifest(exported, tmp_path):
    """Two workers end together: the first finds every unit done (the other's last one too) and writes a
    complete manifest before the other has written its record. The other's manifest, written last, lists
    both; a rerun of the finished job then starts a fresh list (the old records under _workers/previous)."""
    from inference import jobs
    from inference.score import finish, new_worker_record

    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": f"Acme item {i}"} for i in range(20)])
    out = tmp_path / "out"
    config = ScoreConfig(
        model_dir=str(exported["merged"]),
        input=str(src),
        output_dir=str(out),
        inference=InferenceOptions(progress=False, unit_rows=10),
    )
    files = validate_score_config(config)
    first = run(config, files)
    assert first["complete"] and first["this_run"]["processes"] == 1
    late = new_worker_record("otherhost-4242-abcdef", None, "local", "cpu", "fp32")
    late.units, late.rows, late.scored, late.finished_at = 1, 10, 10, late.started_at + 1.0
    jobs.write_worker(out, late)
    last = finish(config, out, jobs.read_job(out), files)
    assert [w["worker"] for w in last["this_run"]["workers"]][-1] == late.worker
    assert last["this_run"]["processes"] == 2 and last["units"]["this_run"] == 3
    rerun = run(config, files)
    assert rerun["this_run"]["processes"] == 1 and rerun["units"]["this_run"] == 0
    assert len(list((out / jobs.WORKERS / "previous").glob("*.json"))) == 2


def test_rerun_skips_finished_units_and_refuses_another_model(exported, tmp_path):
    rows = [{"id": f"r{i}", "text": f"Acme news item number {i}"} for i in range(25)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    first = _score(exported["merged"], str(src), out, unit_rows=10)
    assert {k: first["units"][k] for k in ("total", "done", "this_run")} == {
        "total": 3,
        "done": 3,
        "this_run": 3,
    }
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    (out / "part-00000-00001.parquet").unlink()
    (out / "_SUCCESS").unlink()
    second = _score(exported["merged"], str(src), out, unit_rows=10)
    assert second["units"]["this_run"] == 1 and second["scored"] == 25 and (out / "_SUCCESS").exists()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-00000-0000[02].parquet")} == {
        k: v for k, v in before.items() if k != "part-00000-00001.parquet"
    }
    assert sorted(_read(out)["id"]) == sorted(r["id"] for r in rows)
    with pytest.raises(ConfigError, match="another job"):
        _score(exported["adapter"], str(src), out, unit_rows=10)
    third = _score(exported["adapter"], str(src), out, unit_rows=10, overwrite=True)
    assert third["scored"] == 25


def test_reads_gz_csv_and_parquet_alike(exported, tmp_path):
    rows = [{"id": f"x{i}", "text": f"$ACME item {i} beats"} for i in range(12)]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows[:4]))
    pd.DataFrame(rows[4:8]).to_csv(tmp_path / "b.csv", index=False)
    pd.DataFrame(rows[8:]).to_parquet(tmp_path / "c.parquet")
    manifest = _score(exported["merged"], str(tmp_path / "*"), tmp_path / "out", unit_rows=3)
    assert manifest["scored"] == 12 and manifest["errors"] == 0
    assert sorted(_read(tmp_path / "out")["id"]) == sorted(r["id"] for r in rows)
    assert pq.read_schema(next((tmp_path / "out").glob("part-*.parquet"))).field("id").type == "string"


def test_max_error_rate_fails_the_job(exported, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": "ok"}, {"id": "b"}, {"id": "c"}])
    with pytest.raises(RuntimeError, match="max_error_rate"):
        _score(exported["merged"], str(src), tmp_path / "out", max_error_rate=0.5)
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_config_errors_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as err:
        validate_score_config(
            ScoreConfig(
                model_dir=str(tmp_path / "nope"),
                input=str(tmp_path / "*.jsonl"),
                output_dir=str(tmp_path / "o"),
            )
        )
    assert "model_dir" in str(err.value) and "matches no file" in str(err.value)
    assert not (tmp_path / "o").exists()


def test_bf16_on_cpu_is_close_to_fp32(exported, tmp_path):
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": str(i), "text": f"$ACME beats estimates {i}"} for i in range(8)]
    )
    _score(exported["merged"], str(src), tmp_path / "fp32", precision="fp32")
    _score(exported["merged"], str(src), tmp_path / "bf16", precision="bf16")
    a, b = _read(tmp_path / "fp32").set_index("id"), _read(tmp_path / "bf16").set_index("id")
    b = b.loc[a.index]
    for column in ("sentiment_score", "impact"):
        assert (a[column] - b[column]).abs().max() < 0.05, column
    for column, key in (("sentiment_probs", None), ("topic_scores", "score"), ("tickers", "sentiment_score")):
        for x, y in zip(a[column], b[column]):
            x = [v[key] for v in x] if key else list(x)
            y = [v[key] for v in y] if key else list(y)
            assert len(x) == len(y) and max((abs(p - q) for p, q in zip(x, y)), default=0) < 0.05, column
    assert sum(len(t) for t in a["tickers"]) == 8  # every row names $ACME: the ticker head is compared


def test_parts_stream_window_by_window(exported, tmp_path):
    rows = [
        {"id": f"w{i}", "text": f"$ACME update {i}", "n": i, "meta": "x" if i < 5 else {"k": i}}
        for i in range(25)
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    pd.DataFrame(rows).astype({"meta": str}).to_parquet(tmp_path / "in.parquet", row_group_size=10)
    _score(exported["merged"], str(tmp_path / "in.parquet"), tmp_path / "pq", unit_rows=10, window=4)
    part = pq.ParquetFile(tmp_path / "pq" / "part-00000-00000.parquet")
    # windows of 1 (the first is window // 8, so the model starts early), 4, 4 and 1
    assert part.metadata.num_rows == 10 and part.metadata.num_row_groups == 4
    _score(exported["merged"], str(src), tmp_path / "out", unit_rows=10, window=4, keep_columns=["n", "meta"])
    df = _read(tmp_path / "out").set_index("id")
    assert (
        df.loc["w7", "n"] == 7
        and df.loc["w1", "meta"] == "x"
        and json.loads(df.loc["w7", "meta"]) == {"k": 7}
    )


def test_model_url_normalisation_is_applied_when_scoring(exported, tmp_path):
    """A model trained with model.replace_urls sees every URL as that token at scoring time too."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(exported["merged"], model)
    meta = json.loads((model / "newsimpact.json").read_text())
    meta["replace_urls"] = "http"
    (model / "newsimpact.json").write_text(json.dumps(meta))
    rows = [
        {"id": "a", "text": "$ACME beats estimates https://t.co/bd0xbFGjkT"},
        {"id": "b", "text": "$ACME beats estimates http"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    _score(model, str(src), tmp_path / "norm")
    _score(exported["merged"], str(src), tmp_path / "raw")
    norm, raw = _read(tmp_path / "norm").set_index("id"), _read(tmp_path / "raw").set_index("id")
    # the class probabilities (the score is kept inside its label's band, which can hide a difference)
    assert list(norm.loc["a", "sentiment_probs"]) == pytest.approx(
        list(norm.loc["b", "sentiment_probs"]), abs=1e-6
    )
    assert norm.loc["a", "tickers"][0]["ticker"] == "ACME"
    assert max(abs(raw.loc["a", "sentiment_probs"] - raw.loc["b", "sentiment_probs"])) > 1e-6


def _varied_articles(n):
    import random

    from inference.prep import Article

    rng = random.Random(0)
    words = [
        "Acme",
        "($ACME)",
        "shares",
        "rose",
        "after",
        "results",
        "beat",
        "estimates",
        "while",
        "guidance",
        "was",
        "cut",
    ]
    return [Article(f"a{i}", " ".join(rng.choices(words, k=rng.randint(3, 400)))) for i in range(n)]


def test_batches_come_in_few_shapes_and_padding_does_not_change_scores(exported):
    """Bucketed batch shapes (CPU memory stays flat with them) give the same scores as exact padding."""
    from inference.engine import Scorer

    articles = _varied_articles(120)
    bucketed = Scorer(str(exported["merged"]), batch_tokens=512, pad_to_multiple_of=16)
    shapes = set()
    launch = bucketed.runner.launch

    def recording(ids, mask, entity_mask, embedding=False):
        shapes.add(tuple(ids.shape))
        return launch(ids, mask, entity_mask, embedding)

    bucketed.runner.launch = recording  # type: ignore[method-assign]
    got = bucketed.score(articles)
    lengths = {length for _, length in shapes}
    assert all(length % 16 == 0 or length == bucketed.max_length for length in lengths)
    for rows, length in shapes:
        full = bucketed.full_batch(length)
        assert rows * length <= 512 or rows == 1
        assert rows == full or rows & (rows - 1) == 0  # a full batch, or a short one topped up to 2^k
    exact = Scorer(str(exported["merged"]), batch_tokens=512, pad_to_multiple_of=1).score(articles)
    for a, b in zip(got, exact):
        assert a["id"] == b["id"] and a["n_chunks"] == b["n_chunks"]
        assert a["sentiment_score"] == pytest.approx(b["sentiment_score"], abs=1e-5)
        assert a["impact"] == pytest.approx(b["impact"], abs=1e-5)
        assert a["sentiment_probs"] == pytest.approx(b["sentiment_probs"], abs=1e-5)
        for ta, tb in zip(a["tickers"], b["tickers"]):
            assert ta["ticker"] == tb["ticker"]
            if tb["sentiment_score"] is not None:
                assert ta["sentiment_score"] == pytest.approx(tb["sentiment_score"], abs=1e-5)


def test_batch_tokens_default_depends_on_the_device(exported):
    from inference.engine import Scorer

    assert Scorer(str(exported["merged"])).batch_tokens == 4096
    assert Scorer(str(exported["merged"]), batch_tokens=1000).batch_tokens == 1000


def test_a_gz_archive_is_decompressed_once_and_resumes_after_its_last_part(exported, tmp_path, monkeypatch):
    from inference import readers

    rows = [{"id": f"g{i}", "text": f"$ACME item {i % 50}"} for i in range(12_000)]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in rows))
    opened = []
    original = readers._open_binary
    monkeypatch.setattr(readers, "_open_binary", lambda p: opened.append(p) or original(p))
    out = tmp_path / "out"
    manifest = _score(exported["merged"], str(tmp_path / "a.jsonl.gz"), out, unit_rows=1000, max_chunks=1)
    assert len(opened) == 1 and manifest["scored"] == 12_000
    assert len(list(out.glob("part-*.parquet"))) == 12  # a part per 1,000 rows of the one stream
    # A stream killed after 7 parts: the rerun skips their rows and writes the other 5.
    for name in [f"part-00000-{i:05d}.parquet" for i in range(7, 12)]:
        (out / name).unlink()
    (out / "_done" / "00000-00000.json").unlink()
    (out / "_SUCCESS").unlink()
    again = _score(exported["merged"], str(tmp_path / "a.jsonl.gz"), out, unit_rows=1000, max_chunks=1)
    assert len(opened) == 2 and again["this_run"]["rows"] == 5000 and again["scored"] == 12_000
    ids = _read(out)["id"]
    assert len(ids) == 12_000 and ids.is_unique


def test_speed_options_may_change_on_a_rerun_value_options_may_not(exported, tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": str(i), "text": f"$ACME item {i}"} for i in range(12)])
    out = tmp_path / "out"
    _score(exported["merged"], str(src), out, unit_rows=5, window=4)
    again = _score(
        exported["merged"], str(src), out, unit_rows=5, window=64, batch_tokens=512, max_batch_size=8
    )
    assert again["units"]["this_run"] == 0 and again["complete"]
    with pytest.raises(ConfigError, match=r"topic_threshold: 0\.5 -> 0\.9"):
        _score(exported["merged"], str(src), out, unit_rows=5, topic_threshold=0.9)


def test_every_inference_option_says_whether_it_changes_the_values():
    from dataclasses import fields

    from inference.score import OutputOptions, RunOptions

    output, speed = {f.name for f in fields(OutputOptions)}, {f.name for f in fields(RunOptions)}
    assert not output & speed
    assert {f.name for f in fields(InferenceOptions)} == output | speed


def test_precision_auto_resolves_to_what_this_machine_runs_natively(exported, tmp_path):
    import torch

    from inference.runner import resolve_precision

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert resolve_precision("fp16", "cpu") == "fp16"
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": "$ACME beats"}])
    manifest = _score(exported["merged"], str(src), tmp_path / "out")
    assert manifest["precision"] == resolve_precision("auto", "cpu")
    assert manifest["this_run"]["workers"][0]["precision"] == manifest["precision"]


def test_building_a_scorer_changes_no_process_state(exported, monkeypatch):
    import pyarrow as pa

    from inference import attention, runner

    calls = []
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setattr(runner, "keep_heap_memory", lambda: calls.append("heap"))
    monkeypatch.setattr(attention, "register", lambda: calls.append("attention"))
    monkeypatch.setattr(pa, "set_memory_pool", lambda pool: calls.append("arrow"))
    Scorer(str(exported["merged"]), precision="bf16")
    assert calls == [] and "TOKENIZERS_PARALLELISM" not in os.environ
    runner.configure_process("cpu")
    assert calls == ["heap", "attention", "arrow"] and os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_untrained_classes_and_topics_are_never_emitted(exported, tmp_path):
    import shutil
    from collections import Counter

    from tests.conftest import REPO

    model = tmp_path / "model"
    shutil.copytree(exported["merged"], model)
    meta = json.loads((model / "newsimpact.json").read_text())
    counts, labels = meta["label_counts"], meta["schema"]["sentiment_labels"]
    rows = [json.loads(line) for line in (REPO / "data/sample/train.jsonl").read_text().splitlines()]
    assert counts["sentiment"] == {k: Counter(r["sentiment"] for r in rows)[k] for k in labels}
    taught = [t for t in meta["schema"]["topics"] if counts["topics"][t]["positive"] > 0]
    assert "earnings" in taught
    counts["sentiment"][labels[-1]] = 0  # as if no row were strongly positive
    counts["topics"]["earnings"]["positive"] = 0
    (model / "newsimpact.json").write_text(json.dumps(meta))
    articles = [Article(str(i), f"Acme beats earnings estimates, shares soar {i}") for i in range(6)]
    for record in Scorer(str(model), topic_threshold=0.0).score(articles):
        assert record["sentiment_probs"][-1] == 0 and abs(sum(record["sentiment_probs"]) - 1) < 1e-6
        assert record["sentiment"] != labels[-1]
        assert [t["topic"] for t in record["topic_scores"]] == [t for t in taught if t != "earnings"]
        assert "earnings" not in record["topics"]


def test_packaged_company_names_give_tickers_without_cashtags(exported, tmp_path):
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "1", "text": "Apple and Boeing lead the Dow higher"},
            {"id": "2", "text": "Pineapple prices rise"},
        ],
    )
    _score(exported["merged"], str(src), tmp_path / "out", ticker_names=["us_stocknet"])
    df = _read(tmp_path / "out").set_index("id")
    assert [t["ticker"] for t in df.loc["1", "tickers"]] == ["AAPL", "BA"] and len(
        df.loc["2", "tickers"]
    ) == 0
    assert all(t["sentiment_score"] is not None for t in df.loc["1", "tickers"])  # mentions were found
    with pytest.raises(ConfigError, match="ticker_names: 'nasdaq' is not a packaged map"):
        _score(exported["merged"], str(src), tmp_path / "o2", ticker_names=["nasdaq"])


def test_embeddings_are_the_pooled_state_the_heads_read(exported, tmp_path):
    import numpy as np
    import torch

    from training.modeling import load_trained

    rows = [
        {"id": "short", "text": "Acme Corp raises its full-year guidance"},
        {"id": "long", "text": " ".join(f"Acme sales rose {i} percent in region {i}." for i in range(40))},
    ]
    write_jsonl(tmp_path / "a.jsonl", rows)
    _score(exported["adapter"], str(tmp_path / "a.jsonl"), tmp_path / "plain", precision="fp32")
    _score(
        exported["adapter"], str(tmp_path / "a.jsonl"), tmp_path / "emb", precision="fp32", embeddings=True
    )
    plain, emb = _read(tmp_path / "plain").set_index("id"), _read(tmp_path / "emb").set_index("id")
    assert "embedding" not in plain.columns
    assert list(emb.columns[9:10]) == ["embedding"]
    assert pq.read_schema(next((tmp_path / "emb").glob("part-*.parquet"))).field(
        "embedding"
    ).type.value_type == ("float")
    # The other outputs do not change when embeddings are asked for.
    assert np.allclose(np.stack(plain["sentiment_probs"]), np.stack(emb.loc[plain.index, "sentiment_probs"]))
    model = load_trained(exported["adapter"]).eval()
    assert emb.loc["long", "n_chunks"] > 1
    for vector in emb["embedding"]:
        assert len(vector) == model.heads["sentiment"].in_features and np.isfinite(vector).all()
    # A one-chunk article's embedding is the model's pooled state of its text.
    scorer = Scorer(str(exported["adapter"]), precision="fp32")
    enc = scorer.tokenizer([rows[0]["text"]], return_tensors="pt")
    with torch.inference_mode():
        pooled = model(enc["input_ids"], enc["attention_mask"])["pooled"][0].numpy()
    assert np.allclose(emb.loc["short", "embedding"], pooled, atol=1e-4)
    # Apply the sentiment head to it: the scorer's probabilities come back.
    with torch.inference_mode():
        probs = torch.softmax(model.heads["sentiment"](torch.tensor(emb.loc["short", "embedding"])), -1)
    assert np.allclose(probs.numpy(), emb.loc["short", "sentiment_probs"], atol=1e-4)


def test_embeddings_from_an_onnx_export_are_refused_before_any_work(exported, tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "Acme beats"}])
    config = ScoreConfig(
        model_dir=str(exported["onnx"]),
        input=str(tmp_path / "a.jsonl"),
        output_dir=str(tmp_path / "o"),
        inference=InferenceOptions(embeddings=True),
    )
    with pytest.raises(ConfigError, match="inference.embeddings=true.*ONNX.*export.format=merged"):
        validate_score_config(config)
    assert not (tmp_path / "o").exists()


def test_a_part_changed_after_its_unit_finished_is_scored_again(exported, tmp_path, caplog):
    """600 rows in 5 units, one part truncated to 100 bytes: the rerun says so and rescores that unit
    (not the others); a same-size change is caught with inference.verify=full."""
    rows = [{"id": f"r{i}", "text": f"Acme news item number {i}"} for i in range(600)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    first = _score(exported["merged"], str(src), out, unit_rows=120)
    assert first["units"]["total"] == 5 and first["complete"]
    parts = sorted(out.glob("part-*.parquet"))
    record = json.loads((out / "_done" / f"{parts[2].name[5:-8]}.json").read_text())
    assert record["files"][parts[2].name]["bytes"] == parts[2].stat().st_size
    assert len(record["files"][parts[2].name]["sha256"]) == 64
    untouched = {p.name: p.stat().st_mtime_ns for p in parts if p != parts[2]}
    parts[2].write_bytes(parts[2].read_bytes()[:100])
    with caplog.at_level("WARNING", logger="newsimpact.score"):
        second = _score(exported["merged"], str(src), out, unit_rows=120)
    assert any(parts[2].name in m and "100 bytes" in m and "scoring it again" in m for m in caplog.messages)
    assert second["units"]["this_run"] == 1 and second["scored"] == 600 and second["complete"]
    assert sorted(_read(out)["id"]) == sorted(r["id"] for r in rows)
    assert {p: out.joinpath(p).stat().st_mtime_ns for p in untouched} == untouched

    # the same size, other bytes: only the hashes see it
    data = bytearray(parts[0].read_bytes())
    data[len(data) // 2] ^= 0xFF
    parts[0].write_bytes(bytes(data))
    assert _score(exported["merged"], str(src), out, unit_rows=120)["units"]["this_run"] == 0
    caplog.clear()
    with caplog.at_level("WARNING", logger="newsimpact.score"):
        full = _score(exported["merged"], str(src), out, unit_rows=120, verify="full")
    assert full["units"]["this_run"] == 1 and any("SHA-256" in m for m in caplog.messages)
    assert sorted(_read(out)["id"]) == sorted(r["id"] for r in rows)
