"""Scoring throughput: our batch scorer against a plain Hugging Face pipeline on the same backbone.

    python scripts/bench_inference.py                       # 1,500 mixed docs, CPU, writes a JSON report
    python scripts/bench_inference.py --docs 1500 --scale 10 --precision bf16 --model-dir exports/x

Each measurement runs in its own process (whole-process wall time: start-up, model load, reading,
scoring, writing) and reports docs/s, tokens/s and peak RSS. The corpus mixes headlines (real ones from
../shared/data when present, else the embedded sample) with wire-length articles (300-1,200 words).
``--scale 10`` also scores a corpus 10x larger to show that memory stays flat. On a GPU the report adds
the achieved fraction of the bf16 matmul roofline (``--peak-tflops``, default 989 for an H100 SXM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _headlines() -> list[str]:
    shared = Path(os.environ.get("NEWSIMPACT_DATA_DIR", REPO.parent / "shared" / "data"))
    texts: list[str] = []
    for name in ("fpb/train.parquet", "tfns/train.parquet", "sentfin/train.parquet"):
        if (shared / name).exists():
            import pandas as pd

            texts += pd.read_parquet(shared / name, columns=["text"])["text"].drop_duplicates().tolist()
    if not texts:
        texts = [
            json.loads(line)["text"] for line in (REPO / "data/sample/train.jsonl").read_text().splitlines()
        ]
    return texts


def make_corpus(path: Path, n: int, seed: int = 0, article_share: float = 0.2) -> None:
    rng = random.Random(seed)
    headlines = _headlines()
    with open(path, "w") as fh:
        for i in range(n):
            if rng.random() < article_share:
                words = 0
                parts = []
                target = rng.randint(300, 1200)
                while words < target:
                    sentence = rng.choice(headlines)
                    parts.append(sentence.rstrip(".") + ".")
                    words += len(sentence.split())
                text = " ".join(parts)
            else:
                text = rng.choice(headlines)
            fh.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")


def make_model(workdir: Path, base_model: str | None) -> Path:
    """A real (1-step) training run of the default config, exported merged: the scorer's input format."""
    run_dir, out = workdir / "run", workdir / "model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base = [f"model.pretrained_model_name_or_path={base_model}"] if base_model else []
    subprocess.run(
        [sys.executable, "-m", "training.train", f"run_dir={run_dir}", "trainer.max_steps=1", "trainer.max_epochs=-1",
         "trainer.enable_progress_bar=false", "loggers=[]", *base],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "training.export", f"run_dir={run_dir}", f"output_dir={out}"],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    return out


def machine() -> dict:
    """The machine line of a report."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}


# -- phases, each in a child process -------------------------------------------------------------------
def phase_pipeline(model_dir: str, corpus: str, batch_size: int) -> dict:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    start = time.perf_counter()
    with open(corpus) as fh:
        texts = [json.loads(line)["text"] for line in fh]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=5)
    device = 0 if torch.cuda.is_available() else -1
    clf = pipeline(
        "text-classification", model=model, tokenizer=tokenizer, device=device, batch_size=batch_size
    )
    loaded = time.perf_counter()
    outputs = clf(texts, truncation=True, top_k=None)
    done = time.perf_counter()
    tokens = sum(len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"])
    assert len(outputs) == len(texts)
    return {"docs": len(texts), "tokens": tokens, "wall_s": done - start, "score_s": done - loaded}


def phase_scorer(model_dir: str, corpus: str, precision: str, out: str, extra: list[str]) -> dict:
    from omegaconf import OmegaConf

    from inference.score import ScoreConfig, run, validate_score_config
    from training.config import load_config

    start = time.perf_counter()
    cfg = OmegaConf.merge(
        OmegaConf.create({"model_dir": model_dir, "input": corpus, "output_dir": out}),
        OmegaConf.from_dotlist([f"inference.precision={precision}", "inference.progress=false", *extra]),
    )
    config = load_config(cfg, ScoreConfig)
    manifest = run(config, validate_score_config(config))
    done = time.perf_counter()
    return {
        "docs": manifest["scored"],
        "tokens": manifest["this_run"]["tokens"],
        "chunks": manifest["chunks"],
        "wall_s": done - start,
        "score_s": manifest["this_run"]["wall_seconds"],
    }


def _child(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def _finish(stats: dict) -> None:
    stats["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stats["docs_per_s"] = stats["docs"] / stats["wall_s"]
    stats["tokens_per_s"] = stats["tokens"] / stats["score_s"]
    print(json.dumps(stats))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=1500)
    parser.add_argument(
        "--scale", type=int, default=10, help="also score a corpus this many times larger (0: skip)"
    )
    parser.add_argument("--precision", default="bf16")
    parser.add_argument(
        "--model-dir", default=None, help="an exported model; default: a 1-step run of the defaults"
    )
    parser.add_argument(
        "--base-model", default=None, help="backbone folder for that 1-step run (default: MiniLM)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="pipeline batch size")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--report", default=str(REPO / "docs" / "bench_inference.json"))
    parser.add_argument("--scorer-arg", action="append", default=[], help="extra inference.* override")
    parser.add_argument("--phase", choices=["pipeline", "scorer"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "pipeline":
        _finish(phase_pipeline(args.model_dir, args.corpus, args.batch_size))
        return
    if args.phase == "scorer":
        _finish(phase_scorer(args.model_dir, args.corpus, args.precision, args.out, args.scorer_arg))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or str(make_model(work, args.base_model))
        corpus = work / "corpus.jsonl"
        make_corpus(corpus, args.docs)
        common = ["--model-dir", model_dir, "--corpus", str(corpus)]
        report: dict = {
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "docs": args.docs,
            "precision": args.precision,
        }
        import torch

        if torch.cuda.is_available():
            report["machine"]["gpu"] = torch.cuda.get_device_name(0)
        report["pipeline"] = _child([*common, "--phase", "pipeline", "--batch-size", str(args.batch_size)])
        report["scorer"] = _child(
            [*common, "--phase", "scorer", "--precision", args.precision, "--out", str(work / "out1"),
             *[f"--scorer-arg={a}" for a in args.scorer_arg]]
        )  # fmt: skip
        report["speedup_docs_per_s"] = report["scorer"]["docs_per_s"] / report["pipeline"]["docs_per_s"]
        if args.scale:
            big = work / "big.jsonl"
            make_corpus(big, args.docs * args.scale, seed=1)
            report["scorer_scaled"] = _child(
                ["--model-dir", model_dir, "--corpus", str(big), "--phase", "scorer", "--precision", args.precision,
                 "--out", str(work / "out2"), *[f"--scorer-arg={a}" for a in args.scorer_arg]]
            )  # fmt: skip
            report["memory_growth"] = report["scorer_scaled"]["peak_rss_mb"] / report["scorer"]["peak_rss_mb"]
        if torch.cuda.is_available():
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(model_dir)
            flops = 2 * _matmul_params(model_dir) * report["scorer"]["tokens"]
            report["scorer"]["roofline_fraction"] = (
                flops / report["scorer"]["score_s"] / (args.peak_tflops * 1e12)
            )
            report["scorer"]["hidden_size"] = cfg.hidden_size
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _matmul_params(model_dir: str) -> int:
    """Weights that take part in matmuls (embedding lookups excluded): forward FLOPs ~ 2 x this x tokens."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safetensors handles are not dicts)
            shape = fh.get_slice(key).get_shape()
            if "embeddings" not in key and len(shape) == 2:
                total += shape[0] * shape[1]
    return total


if __name__ == "__main__":
    main()
