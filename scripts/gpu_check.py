"""The one-shot GPU check's stages (run through ``scripts/gpu_check.sh KIT OUT``; ``--cpu``: toy sizes on CPU).

Each stage runs in its own process under its own timeout; a failed or timed-out stage is recorded with the
last lines of its output and the next one runs. After every stage ``OUT/results.json`` is rewritten:

    {"machine": {...}, "stages": {NAME: {"ok": true|false, "seconds": S, ...figures, "error": "..."}}}

so a killed run keeps what it had; ``OUT/log.txt`` holds every stage's output. The whole check stops
starting stages when ``--budget-s`` (480) is spent. Stages:

- env: GPU, driver, versions, measured bf16 matmul TFLOP/s and host-to-device GB/s (the ceilings below);
- train_lora: LoRA, bf16, ``trainer=gpu``, 80 steps on the sample data (steady steps/s and samples/s, peak
  GPU memory, first and last loss); its export is the model every scoring stage uses;
- train_ddp, train_fsdp, train_dora: ``trainer=ddp`` / ``trainer=fsdp`` with ``devices=1`` and
  ``peft=dora``, 10 steps each;
- export_parity: merged and adapter exports of train_lora score the same 300 articles in fp32 on the GPU
  (max difference, must be < 1e-3);
- forward: forward-only tokens/s on pre-tokenized full batches and its fraction of the measured peak;
- scorer: the whole scorer on 50,000 generated articles (docs/s, tokens/s, GPU busy %), and a plain
  ``transformers`` pipeline in bf16 on the same GPU on the first 20,000 of them (each side's docs/s);
- workers: 1, 2 and 4 independent scoring processes sharing the GPU on one output folder (docs/s, and
  every id scored exactly once);
- mpnet: a randomly initialised MPNet-base-size model (768 x 12): forward tokens/s and scorer docs/s;
- gpu_vs_cpu: GPU bf16 scores against CPU fp32 scores on 300 articles;
- bench_training: ``scripts/bench_training.py`` (our LoRA steps against a plain HF Trainer + peft, bf16);
- scorer_sizes: the GPU defaults of batch_tokens / max_batch_size / window against bigger ones.

Stages run in the order of TIMEOUTS (the scorer's first), so a budget cut leaves the least important out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

# (GPU size, CPU toy size) of each stage's work, and its timeout in seconds on each.
SIZES: dict[str, dict[str, Any]] = {
    "train_steps": {"gpu": 80, "cpu": 6},
    "short_steps": {"gpu": 10, "cpu": 2},
    "parity_docs": {"gpu": 300, "cpu": 40},
    "scorer_docs": {"gpu": 50_000, "cpu": 300},
    "pipeline_docs": {"gpu": 10_000, "cpu": 150},
    "worker_docs": {"gpu": 10_000, "cpu": 150},
    "forward_batches": {"gpu": 30, "cpu": 2},
    "bench_steps": {"gpu": 60, "cpu": 4},
}
TIMEOUTS = {  # in the order they run: what matters most first, so a short budget keeps it
    "env": (60, 60),
    "train_lora": (150, 240),
    "forward": (45, 120),
    "scorer": (150, 240),
    "workers": (120, 300),
    "gpu_vs_cpu": (60, 120),
    "train_fsdp": (60, 180),
    "train_ddp": (60, 180),
    "train_dora": (60, 180),
    "export_parity": (60, 120),
    "bench_training": (90, 300),
    "scorer_sizes": (90, 240),
    "mpnet": (90, 240),
}
STAGES = list(TIMEOUTS)


class Ctx:
    def __init__(self, args: argparse.Namespace):
        self.cpu: bool = args.cpu
        self.kit = Path(args.kit).resolve()
        self.out = Path(args.out).resolve()
        self.work = Path(args.work).resolve()
        self.device = "cpu" if self.cpu else "cuda"

    def size(self, name: str) -> Any:
        return SIZES[name]["cpu" if self.cpu else "gpu"]

    @property
    def minilm(self) -> Path:
        return self.work / "minilm"

    @property
    def model(self) -> Path:
        """The train_lora stage's merged export (every scoring stage's model); if training failed, a model
        with untrained heads made without a Trainer, so the scoring stages still measure speed."""
        path = self.work / "export_merged"
        if not path.exists():
            _fallback_model(self, path)
        return path


def _fallback_model(ctx: Ctx, out: Path) -> None:
    from dataclasses import asdict

    from training.config import ModelConfig, PeftConfig, SchemaConfig
    from training.export import ExportConfig, ExportOptions
    from training.export import run as export
    from training.modeling import FORMAT_VERSION, LabelSchema, build_model, load_tokenizer, save_trainable
    from training.scale import Scale

    cfg = SchemaConfig()
    scale = Scale.of(cfg).to_dict()
    schema = LabelSchema(
        list(cfg.sentiment_labels), list(cfg.topics), scale["coarse_labels"], scale["score_cuts"]
    )
    model_cfg, peft_cfg = ModelConfig(pretrained_model_name_or_path=str(ctx.minilm)), PeftConfig()
    model = build_model(model_cfg, peft_cfg, schema)
    run_dir = ctx.work / "fallback_run"
    meta = {
        "format_version": FORMAT_VERSION, "base_model": str(ctx.minilm), "schema": schema.to_dict(),
        "max_length": model_cfg.max_length, "replace_urls": model_cfg.replace_urls, "pooling": model.pooling,
        "topic_pooling": model.topic_pooling, "head_dropout": model_cfg.head_dropout, "peft": asdict(peft_cfg),
        "config_hash": "gpu-check-fallback", "impact_calibration": {}, "label_counts": None,
    }  # fmt: skip
    save_trainable(model, run_dir / "adapter", meta)
    load_tokenizer(str(ctx.minilm)).save_pretrained(run_dir / "adapter")
    export(ExportConfig(run_dir=str(run_dir), output_dir=str(out), overwrite=True, export=ExportOptions()))
    (ctx.out / "FALLBACK_MODEL").write_text("train_lora gave no model: scoring stages used untrained heads\n")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
    }


def _run(cmd: list[str], timeout: float | None = None) -> str:
    """A command of the stage (training, export, scoring CLI): its output, or an error with its tail."""
    got = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    text = got.stdout + got.stderr
    if got.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... exited {got.returncode}:\n{text[-2500:]}")
    return text


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class GpuBusy:
    """Samples the GPU's utilisation (NVML) every 0.2 s while a block runs: the mean busy %."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.stop = threading.Event()
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.nvml = pynvml
        except Exception:  # noqa: BLE001 - no NVML (CPU check): no figure
            self.handle = None

    def __enter__(self) -> GpuBusy:
        if self.handle is not None:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.wait(0.2):
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()

    @property
    def percent(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


# -- stages -------------------------------------------------------------------------------------------
def stage_env(ctx: Ctx) -> dict[str, Any]:
    import importlib.metadata as md

    import torch
    from gpu_kit import restore_fp32

    restore_fp32(ctx.kit / "minilm", ctx.minilm)  # every later stage's backbone
    versions = {}
    for name in ("torch", "transformers", "pytorch-lightning", "peft", "accelerate", "datasets", "hydra-core",
                 "onnxruntime", "pyarrow", "tokenizers"):  # fmt: skip
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    import onnxruntime

    result: dict[str, Any] = {
        "versions": versions,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "onnxruntime_providers": onnxruntime.get_available_providers(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        smi = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
        )
        result["nvidia_smi"] = smi.stdout.strip()
        result["gpu"] = torch.cuda.get_device_name(0)
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        _sync()
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        _sync()
        result["matmul_bf16_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - start) / 1e12, 1)
        host = torch.empty(2**30, dtype=torch.uint8, pin_memory=True)
        dev = torch.empty_like(host, device="cuda")
        dev.copy_(host)
        _sync()
        start = time.perf_counter()
        for _ in range(5):
            dev.copy_(host, non_blocking=True)
        _sync()
        result["h2d_gb_s"] = round(5 * 2**30 / (time.perf_counter() - start) / 1e9, 1)
    else:
        n = 512
        a = torch.randn(n, n)
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        result["matmul_fp32_tflops"] = round(10 * 2 * n**3 / (time.perf_counter() - start) / 1e12, 3)
    return result


def _train(ctx: Ctx, run_dir: Path, steps: int, *extra: str, backbone: Path | None = None) -> dict[str, Any]:
    """A real ``python -m training.train`` on the sample data; returns run.json and the metrics' losses."""
    trainer = [] if ctx.cpu else ["trainer=gpu"]
    cmd = [
        sys.executable, "-m", "training.train", f"run_dir={run_dir}",
        f"model.pretrained_model_name_or_path={backbone or ctx.minilm}",
        f"trainer.max_steps={steps}", "trainer.max_epochs=-1", "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0", "loggers=[csv]",
        "checkpoint.every_n_train_steps=null", *trainer, *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    _run(cmd)
    info = json.loads((run_dir / "run.json").read_text())
    import csv

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    return {
        "wall_s": round(time.perf_counter() - started, 1),
        "train_seconds": info["train_seconds"],
        "global_step": info["global_step"],
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "finite": all(x == x and abs(x) != float("inf") for x in losses) and bool(losses),
        "accelerator": info["config"]["trainer"]["accelerator"],
        "strategy": info["config"]["trainer"]["strategy"],
        "precision": info["config"]["trainer"]["precision"],
        **info.get("throughput", {}),
    }


def _export(run_dir: Path, out: Path, fmt: str) -> Path:
    _run([sys.executable, "-m", "training.export", f"run_dir={run_dir}", f"output_dir={out}",
          f"export.format={fmt}", "overwrite=true"])  # fmt: skip
    return out


def stage_train_lora(ctx: Ctx) -> dict[str, Any]:
    steps = ctx.size("train_steps")
    run_dir = ctx.work / "train_lora"
    result = _train(ctx, run_dir, steps, "data.batch_size=32")
    result["batch_size"] = 32
    _export(run_dir, ctx.work / "export_merged", "merged")  # (not ctx.model: that makes a fallback first)
    _export(run_dir, ctx.work / "export_adapter", "adapter")
    if not result["finite"]:
        raise RuntimeError(f"non-finite training loss: {result}")
    return result


def stage_train_ddp(ctx: Ctx) -> dict[str, Any]:
    extra = ["trainer=ddp", "trainer.devices=1"]
    if ctx.cpu:
        extra += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    return _train(ctx, ctx.work / "train_ddp", ctx.size("short_steps"), *extra)


def stage_train_fsdp(ctx: Ctx) -> dict[str, Any]:
    extra = ["trainer=fsdp", "trainer.devices=1"]
    if ctx.cpu:  # Lightning's FSDP needs CUDA: on CPU the check is that the config is refused before any work
        try:
            _train(ctx, ctx.work / "train_fsdp", 1, *extra, "trainer.accelerator=cpu")
        except RuntimeError as err:
            line = next((x for x in str(err).splitlines() if "trainer.strategy=fsdp" in x), None)
            if line is None:
                raise
            return {"refused_on_cpu": line.strip()}
        raise RuntimeError("trainer=fsdp with trainer.accelerator=cpu was not refused")
    return _train(ctx, ctx.work / "train_fsdp", ctx.size("short_steps"), *extra)


def stage_train_dora(ctx: Ctx) -> dict[str, Any]:
    return _train(ctx, ctx.work / "train_dora", ctx.size("short_steps"), "peft=dora")


def _corpus(ctx: Ctx, n: int, name: str, seed: int = 0) -> Path:
    from bench_inference import make_corpus

    path = ctx.work / f"{name}.jsonl"
    if not path.exists():
        make_corpus(path, n, seed=seed)
    return path


def _score(ctx: Ctx, model: Path, corpus: Path, out: Path, *extra: str, timeout: float | None = None) -> dict:
    _run([sys.executable, "-m", "inference.score", f"model_dir={model}", f"input={corpus}", f"output_dir={out}",
          "inference.progress=false", "inference.overwrite=true", *extra], timeout=timeout)  # fmt: skip
    return json.loads((out / "manifest.json").read_text())


def _read_scores(out: Path) -> Any:
    import pandas as pd

    frame = pd.concat([pd.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))], ignore_index=True)
    return frame.set_index("id").sort_index()


def _max_diff(a: Any, b: Any) -> dict[str, float]:
    import numpy as np

    probs = float(
        np.max(np.abs(np.stack(a["sentiment_probs"].to_numpy()) - np.stack(b["sentiment_probs"].to_numpy())))
    )
    return {
        "sentiment_probs": probs,
        "sentiment_score": float(np.max(np.abs(a["sentiment_score"] - b["sentiment_score"]))),
        "impact": float(np.max(np.abs(a["impact"] - b["impact"]))),
        "label_agreement": float((a["sentiment"] == b["sentiment"]).mean()),
    }


def stage_export_parity(ctx: Ctx) -> dict[str, Any]:
    corpus = _corpus(ctx, ctx.size("parity_docs"), "parity", seed=5)
    device = "cpu" if ctx.cpu else "cuda"
    common = ["inference.precision=fp32", f"inference.device={device}"]
    merged = _score(ctx, ctx.model, corpus, ctx.work / "parity_merged", *common)
    adapter = _score(ctx, ctx.work / "export_adapter", corpus, ctx.work / "parity_adapter", *common)
    diff = _max_diff(_read_scores(ctx.work / "parity_merged"), _read_scores(ctx.work / "parity_adapter"))
    result = {"docs": merged["scored"], "adapter_docs": adapter["scored"], "max_abs_diff": diff}
    worst = max(v for k, v in diff.items() if k != "label_agreement")
    if worst >= 1e-3:
        raise RuntimeError(f"merged and adapter exports differ by {worst:.2e} (>= 1e-3): {diff}")
    return result


def _forward_rate(ctx: Ctx, model_dir: Path, rows: int, length: int, batches: int) -> dict[str, Any]:
    """Forward-only tokens/s through the scorer's Runner on pre-tokenized full batches."""
    import torch
    from safetensors import safe_open

    from inference.runner import Runner

    device = "cpu" if ctx.cpu else "cuda:0"
    precision = "fp32" if ctx.cpu else "bf16"
    runner = Runner(str(model_dir), device, precision, compile=False, use_onnx=False)
    ids = torch.randint(1000, 20000, (rows, length))
    mask = torch.ones_like(ids)
    entity = torch.zeros((rows, 0, length), dtype=torch.bool)
    if not ctx.cpu:
        ids, mask, entity = ids.pin_memory(), mask.pin_memory(), entity.pin_memory()
    for _ in range(3):
        runner(ids, mask, entity)
    _sync()
    start = time.perf_counter()
    pending = [runner.launch(ids, mask, entity) for _ in range(batches)]
    for p in pending:
        p.result()
    seconds = time.perf_counter() - start
    tokens = rows * length * batches
    params = 0
    with safe_open(str(model_dir / "model.safetensors"), "pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safetensors handles are not dicts)
            shape = fh.get_slice(key).get_shape()
            if "embeddings" not in key and len(shape) == 2:
                params += shape[0] * shape[1]
    cfg = json.loads((model_dir / "config.json").read_text())
    # matmuls: 2 x weights per token, plus attention's QK^T and AV: 4 x layers x length x hidden per token
    flops = tokens * (2 * params + 4 * cfg["num_hidden_layers"] * length * cfg["hidden_size"])
    return {
        "rows": rows,
        "length": length,
        "tokens_s": round(tokens / seconds),
        "tflops": round(flops / seconds / 1e12, 2),
        "matmul_params": params,
    }


def _peak(ctx: Ctx) -> float | None:
    path = ctx.out / "results.json"
    env = json.loads(path.read_text())["stages"].get("env", {}) if path.exists() else {}
    return env.get("matmul_bf16_tflops")


def stage_forward(ctx: Ctx) -> dict[str, Any]:
    rows, length = (256, 128) if not ctx.cpu else (8, 64)
    result = _forward_rate(ctx, ctx.model, rows, length, ctx.size("forward_batches"))
    long = _forward_rate(ctx, ctx.model, 64 if not ctx.cpu else 2, 256, ctx.size("forward_batches"))
    result["at_256_tokens"] = long
    peak = _peak(ctx)
    if peak:
        result["fraction_of_matmul_peak"] = round(result["tflops"] / peak, 3)
        long["fraction_of_matmul_peak"] = round(long["tflops"] / peak, 3)
    return result


def _pipeline_rate(ctx: Ctx, model_dir: Path, corpus: Path, n: int) -> dict[str, Any]:
    """A plain transformers text-classification pipeline (the backbone with a fresh 5-class head), bf16 on
    the GPU, batch 256, truncating each text to 256 tokens."""
    code = f"""
import json, time, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
texts = [json.loads(l)["text"] for l in open({str(corpus)!r})][:{n}]
start = time.perf_counter()
tok = AutoTokenizer.from_pretrained({str(model_dir)!r})
dtype = torch.float32 if {ctx.cpu} else torch.bfloat16
model = AutoModelForSequenceClassification.from_pretrained({str(model_dir)!r}, num_labels=5, dtype=dtype)
clf = pipeline("text-classification", model=model, tokenizer=tok, device=-1 if {ctx.cpu} else 0, batch_size=256)
loaded = time.perf_counter()
out = clf(texts, truncation=True, max_length=256, top_k=None)
done = time.perf_counter()
assert len(out) == len(texts)
print("PIPELINE_RESULT " + json.dumps({{"docs": len(texts), "wall_s": done - start, "score_s": done - loaded}}))
"""
    text = _run([sys.executable, "-c", code])
    line = next(x for x in reversed(text.splitlines()) if x.startswith("PIPELINE_RESULT "))
    stats = json.loads(line.removeprefix("PIPELINE_RESULT "))
    stats["docs_s"] = round(stats["docs"] / stats["score_s"], 1)
    return stats


def stage_scorer(ctx: Ctx) -> dict[str, Any]:
    corpus = _corpus(ctx, ctx.size("scorer_docs"), "scorer")
    with GpuBusy() as busy:
        manifest = _score(ctx, ctx.model, corpus, ctx.work / "scored")
    run_ = manifest["this_run"]
    result: dict[str, Any] = {
        "docs": manifest["scored"],
        "errors": manifest["errors"],
        "chunks": manifest["chunks"],
        "tokens": run_["tokens"],
        "wall_s": run_["wall_seconds"],
        "docs_s": run_["articles_per_s"],
        "tokens_s": run_["tokens_per_s"],
        "gpu_busy_pct": busy.percent,
        "precision": manifest["precision"],
        "workers": run_["workers"],
        "oom_splits": run_.get("oom_splits"),
    }
    n = ctx.size("pipeline_docs")
    head = ctx.work / "pipeline_corpus.jsonl"
    head.write_text("".join(corpus.read_text().splitlines(keepends=True)[:n]))
    with GpuBusy() as busy:
        ours = _score(ctx, ctx.model, head, ctx.work / "scored_head")
    result["same_docs_scorer_docs_s"] = ours["this_run"]["articles_per_s"]
    result["same_docs_scorer_gpu_busy_pct"] = busy.percent
    with GpuBusy() as busy:
        result["pipeline"] = _pipeline_rate(ctx, ctx.model, head, n)
    result["pipeline"]["gpu_busy_pct"] = busy.percent
    result["ratio_to_pipeline"] = round(result["same_docs_scorer_docs_s"] / result["pipeline"]["docs_s"], 2)
    return result


def stage_workers(ctx: Ctx) -> dict[str, Any]:
    corpus = _corpus(ctx, ctx.size("worker_docs"), "workers", seed=2)
    ids = [json.loads(line)["id"] for line in corpus.read_text().splitlines()]
    result: dict[str, Any] = {"docs": len(ids)}
    for n in (1, 2, 4):
        out = ctx.work / f"workers_{n}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cmd = [sys.executable, "-m", "inference.score", f"model_dir={ctx.model}", f"input={corpus}",
               f"output_dir={out}", "inference.progress=false", "inference.unit_rows=1000"]  # fmt: skip
        env = {**_env(), "LOCAL_WORLD_SIZE": str(n)}  # each process's share of the cores (worker_threads)
        started = time.perf_counter()
        with GpuBusy() as busy:
            procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True) for _ in range(n)]  # fmt: skip
            outputs = [p.communicate()[0] for p in procs]
        seconds = time.perf_counter() - started
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{n} workers: a process failed:\n" + "\n".join(o[-1500:] for o in outputs))
        scored = _read_scores(out)
        once = len(scored) == len(ids) and scored.index.is_unique and set(scored.index) == set(ids)
        manifest = json.loads((out / "manifest.json").read_text())
        result[str(n)] = {
            "wall_s": round(seconds, 1),
            "docs_s": round(len(ids) / seconds, 1),
            "gpu_busy_pct": busy.percent,
            "every_id_once": bool(once),
            "workers_in_manifest": manifest["this_run"]["processes"],
        }
        if not once:
            raise RuntimeError(
                f"{n} workers: {len(scored)} rows for {len(ids)} ids (unique: {scored.index.is_unique})"
            )
    return result


def stage_mpnet(ctx: Ctx) -> dict[str, Any]:
    """A compute-heavy point: an MPNet-base-size backbone (random weights: speed only), 2 training steps
    to make a model folder, then forward tokens/s and the scorer on the workers' corpus."""
    import torch
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    backbone = ctx.work / "mpnet_random"
    if not backbone.exists():
        tokenizer = AutoTokenizer.from_pretrained(str(ctx.minilm))
        size = {} if not ctx.cpu else {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                        "intermediate_size": 128}  # fmt: skip
        torch.manual_seed(0)
        MPNetModel(
            MPNetConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=514, **size)
        ).save_pretrained(str(backbone))
        tokenizer.save_pretrained(str(backbone))
    run_dir = ctx.work / "train_mpnet"
    _train(ctx, run_dir, 2, "model.pooling=mean", backbone=backbone)
    model = _export(run_dir, ctx.work / "export_mpnet", "merged")
    result = _forward_rate(ctx, model, 256 if not ctx.cpu else 8, 128, ctx.size("forward_batches"))
    peak = _peak(ctx)
    if peak:
        result["fraction_of_matmul_peak"] = round(result["tflops"] / peak, 3)
    corpus = _corpus(ctx, ctx.size("worker_docs"), "workers", seed=2)
    with GpuBusy() as busy:
        manifest = _score(ctx, model, corpus, ctx.work / "scored_mpnet")
    result["scorer"] = {
        "docs": manifest["scored"],
        "docs_s": manifest["this_run"]["articles_per_s"],
        "tokens_s": manifest["this_run"]["tokens_per_s"],
        "gpu_busy_pct": busy.percent,
    }
    return result


def stage_scorer_sizes(ctx: Ctx) -> dict[str, Any]:
    """The GPU defaults (batch_tokens 16,384, max_batch_size 256, window 1,024) against bigger batches and
    windows on the workers' corpus: docs/s and GPU busy % of each."""
    corpus = _corpus(ctx, ctx.size("worker_docs"), "workers", seed=2)
    result: dict[str, Any] = {"docs": ctx.size("worker_docs")}
    for tokens, rows, window in (
        (16384, 256, 1024),
        (65536, 1024, 1024),
        (65536, 1024, 4096),
        (8192, 128, 1024),
    ):
        name = f"bt{tokens}_bs{rows}_w{window}"
        with GpuBusy() as busy:
            manifest = _score(ctx, ctx.model, corpus, ctx.work / f"sizes_{name}", f"inference.batch_tokens={tokens}",
                              f"inference.max_batch_size={rows}", f"inference.window={window}")  # fmt: skip
        result[name] = {"docs_s": manifest["this_run"]["articles_per_s"], "gpu_busy_pct": busy.percent,
                        "tokens_s": manifest["this_run"]["tokens_per_s"]}  # fmt: skip
    return result


def stage_gpu_vs_cpu(ctx: Ctx) -> dict[str, Any]:
    corpus = _corpus(ctx, ctx.size("parity_docs"), "parity", seed=5)
    fast = ["inference.precision=fp32", "inference.device=cpu"] if ctx.cpu else ["inference.precision=bf16"]
    _score(ctx, ctx.model, corpus, ctx.work / "gpu_scores", *fast)
    _score(
        ctx, ctx.model, corpus, ctx.work / "cpu_scores", "inference.precision=fp32", "inference.device=cpu"
    )
    diff = _max_diff(_read_scores(ctx.work / "gpu_scores"), _read_scores(ctx.work / "cpu_scores"))
    return {"docs": ctx.size("parity_docs"), "gpu": fast[0], "max_abs_diff": diff}


def stage_bench_training(ctx: Ctx) -> dict[str, Any]:
    report = ctx.work / "bench_training.json"
    precision = "32-true" if ctx.cpu else "bf16-mixed"
    _run([sys.executable, "scripts/bench_training.py", "--steps", str(ctx.size("bench_steps")),
          "--rows", "2048" if not ctx.cpu else "64", "--precision", precision, "--base-model", str(ctx.minilm),
          "--warmup-steps", "10" if not ctx.cpu else "1", "--report", str(report)])  # fmt: skip
    data = json.loads(report.read_text())
    return {
        k: data[k]
        for k in ("ours", "hf_trainer", "throughput_ratio", "steady_throughput_ratio", "device")
        if k in data
    }


# -- driver -------------------------------------------------------------------------------------------
def _write(results: dict[str, Any], out: Path) -> None:
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str))
    tmp.replace(out / "results.json")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kit", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default=None, help="scratch folder (default OUT/../gpu_check_work)")
    parser.add_argument("--cpu", action="store_true", help="every stage at toy size on the CPU")
    parser.add_argument("--budget-s", type=float, default=450)
    parser.add_argument("--only", default=None, help="comma-separated stages (default: all)")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work or str(Path(args.out).resolve().parent / "gpu_check_work")
    ctx = Ctx(args)
    if args.stage:  # a child: run one stage, print its figures as the last line
        figures = globals()[f"stage_{args.stage}"](ctx)
        print("GPU_CHECK_RESULT " + json.dumps(figures, default=str))
        return
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {
            "mode": "cpu (toy sizes)" if ctx.cpu else "gpu",
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "stages": {},
    }
    _write(results, ctx.out)
    log = (ctx.out / "log.txt").open("a")
    deadline = time.monotonic() + args.budget_s
    stages = args.only.split(",") if args.only else STAGES
    for name in stages:
        left = deadline - time.monotonic()
        timeout = min(TIMEOUTS[name][1 if ctx.cpu else 0], left)
        if timeout < 5:
            results["stages"][name] = {
                "ok": False,
                "seconds": 0,
                "error": "not started: the check's budget is spent",
            }
            _write(results, ctx.out)
            continue
        started = time.perf_counter()
        log.write(f"\n===== {name} (timeout {timeout:.0f} s) =====\n")
        log.flush()
        cmd = [sys.executable, __file__, "--kit", str(ctx.kit), "--out", str(ctx.out), "--work", str(ctx.work),
               "--stage", name, *(["--cpu"] if ctx.cpu else [])]  # fmt: skip
        try:
            got = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
            text = got.stdout + got.stderr
            marker = [line for line in got.stdout.splitlines() if line.startswith("GPU_CHECK_RESULT ")]
            if got.returncode == 0 and marker:
                entry = {"ok": True, **json.loads(marker[-1].removeprefix("GPU_CHECK_RESULT "))}
            else:
                entry = {"ok": False, "error": "\n".join(text.strip().splitlines()[-25:])}
        except subprocess.TimeoutExpired as err:
            text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            text += (err.stderr or b"").decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
            entry = {
                "ok": False,
                "error": f"timed out after {timeout:.0f} s\n" + "\n".join(text.strip().splitlines()[-15:]),
            }
        except Exception:  # noqa: BLE001 - the check goes on
            text = traceback.format_exc()
            entry = {"ok": False, "error": text[-2000:]}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        results["stages"][name] = entry
        if name == "env" and entry["ok"]:
            results["machine"].update({k: entry[k] for k in ("gpu", "nvidia_smi", "versions") if k in entry})
        _write(results, ctx.out)
        log.write(text[-20000:])
        log.flush()
        status = "ok" if entry["ok"] else "FAILED"
        print(f"gpu_check: {name:<15} {status:<7} {entry['seconds']:>6.1f} s", flush=True)
    ok = sum(1 for e in results["stages"].values() if e["ok"])
    print(f"gpu_check: {ok}/{len(results['stages'])} stages ok; {ctx.out / 'results.json'}", flush=True)


if __name__ == "__main__":
    main()
