"""The scorer's data path: how fast articles become model-ready batches, with the model taken out.

    python scripts/bench_datapath.py --report docs/bench_datapath.json
    python scripts/bench_datapath.py --docs 4096 --scorer-docs 2048 --model-dir exports/x

On the bench corpus (scripts/bench_inference.py: 80 % headlines, 20 % wire-length articles):

Every rate is the best of a few repeats (3 for the tokenizer, 2 for each prep setting): the 2-core box's
rates drift by a third between runs.

(a) ``tokenizer_tokens_s``: the tokenizer's batch call alone on one thread (plain ``tokenizer(texts)``), and
    ``tokenizer_chunking_tokens_s`` with the options preparation needs (truncation with stride, overflowing
    chunks, offsets);
(b, c) ``prep_tokens_s``: windows of 1,024 articles through ``inference.prep.PrepPool`` with 1 and 2 prep
    worker processes (started and warm before the clock starts; every window to the processes), tokens/s;
    ``"0"``: the background-thread path of the scoring process (``inference.prep_workers=0``);
(d) ``scorer_docs_s``: the whole scorer (``inference.score.run``) with the real MiniLM export on
    ``--scorer-docs`` of those articles, with the default prep workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))


def _articles(corpus: Path) -> list:
    from inference.prep import Article

    return [Article(r["id"], r["text"]) for r in map(json.loads, corpus.read_text().splitlines())]


def tokenizer_rates(
    tokenizer, texts: list[str], max_length: int, stride: int, repeats: int = 3
) -> dict[str, float]:
    """The best of ``repeats`` calls of each (this box's rates drift by a third between runs)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    best: dict[str, float] = {}
    for _ in range(repeats):
        for key, rate in _tokenizer_once(tokenizer, texts, max_length, stride).items():
            best[key] = max(best.get(key, 0.0), rate)
    return best


def _tokenizer_once(tokenizer, texts: list[str], max_length: int, stride: int) -> dict[str, float]:
    start = time.perf_counter()
    plain = tokenizer(texts)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    chunked = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    chunked_s = time.perf_counter() - start
    return {
        "tokenizer_tokens_s": sum(map(len, plain["input_ids"])) / plain_s,
        "tokenizer_chunking_tokens_s": sum(map(len, chunked["input_ids"])) / chunked_s,
    }


def prep_rate(preparer, articles: list, workers: int, window: int = 1024, repeats: int = 2) -> dict[str, Any]:
    from inference.prep import PrepPool

    windows = [articles[i : i + window] for i in range(0, len(articles), window)]
    # every window to the processes: the pool's first-window-in-a-thread shortcut (for small jobs) would
    # hand one window of N to the consuming process and blur the comparison of 1 and 2 workers
    with PrepPool(preparer, workers, first_in_thread=False) as pool:
        if workers:  # start and warm every process (imports, tokenizer) before the clock starts
            futures = [pool._processes().submit(_nap, 0.5) for _ in range(workers)]
            for future in futures:
                future.result()
            list(pool.prepared([articles[:8], articles[8:16]]))
        runs = []
        for _ in range(repeats):  # the best of them, as for the tokenizer
            start = time.perf_counter()
            tokens = 0
            for _, prepared in pool.prepared(windows):
                tokens += prepared.tokens
            runs.append(time.perf_counter() - start)
    seconds = min(runs)
    return {"tokens_s": tokens / seconds, "tokens": tokens, "seconds": seconds, "runs_s": runs}


def _nap(seconds: float) -> None:
    time.sleep(seconds)


def scorer_rate(model_dir: str, corpus: Path, out: Path) -> dict[str, float]:
    from omegaconf import OmegaConf

    from inference.score import ScoreConfig, run, validate_score_config
    from training.config import load_config

    cfg = OmegaConf.merge(
        OmegaConf.create({"model_dir": model_dir, "input": str(corpus), "output_dir": str(out)}),
        OmegaConf.from_dotlist(["inference.progress=false"]),
    )
    config = load_config(cfg, ScoreConfig)
    manifest = run(config, validate_score_config(config))
    this = manifest["this_run"]
    return {
        "docs": manifest["scored"],
        "docs_s": this["articles_per_s"],
        "tokens_s": this["tokens_per_s"],
        "wall_s": this["wall_seconds"],
        "precision": manifest["precision"],
        "prep_workers": this["workers"][0].get("prep_workers"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=4096, help="articles for (a)-(c)")
    parser.add_argument("--scorer-docs", type=int, default=2048, help="articles for (d)")
    parser.add_argument(
        "--model-dir", default=None, help="an exported model; default: a 1-step MiniLM export"
    )
    parser.add_argument("--report", default=str(REPO / "docs" / "bench_datapath.json"))
    args = parser.parse_args()

    from bench_inference import machine, make_corpus, make_model

    from inference.engine import Scorer
    from inference.runner import configure_process

    configure_process("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or str(make_model(work, None))
        corpus = work / "corpus.jsonl"
        make_corpus(corpus, args.docs)
        articles = _articles(corpus)
        scorer = Scorer(model_dir)  # the model is never called below: only its preparer and tokenizer
        preparer = scorer.preparer
        report: dict = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "docs": len(articles),
        }
        report.update(
            tokenizer_rates(
                scorer.tokenizer, [a.text for a in articles], preparer.max_length, preparer.stride
            )
        )
        report["prep_tokens_s"] = {}
        report["prep"] = {}
        for workers in (0, 1, 2):
            figures = prep_rate(preparer, articles, workers)
            report["prep"][str(workers)] = figures
            report["prep_tokens_s"][str(workers)] = round(figures["tokens_s"])
            print(f"prep workers={workers}: {figures['tokens_s']:,.0f} tokens/s", file=sys.stderr)
        report["prep_1_vs_tokenizer"] = report["prep_tokens_s"]["1"] / report["tokenizer_tokens_s"]
        report["prep_2_vs_1"] = report["prep_tokens_s"]["2"] / report["prep_tokens_s"]["1"]
        small = work / "scorer.jsonl"
        small.write_text("".join(corpus.read_text().splitlines(keepends=True)[: args.scorer_docs]))
        report["scorer"] = scorer_rate(model_dir, small, work / "out")
        report["scorer_docs_s"] = report["scorer"]["docs_s"]
    for key in ("tokenizer_tokens_s", "tokenizer_chunking_tokens_s"):
        report[key] = round(report[key])
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
