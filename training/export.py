"""Export a training run as a self-describing model folder.

``python -m training.export run_dir=RUN output_dir=DIR [export.format=merged|adapter|onnx]``

- ``merged``: LoRA merged into the backbone (peft ``merge_and_unload``), saved as safetensors with the
  tokenizer and ``heads.safetensors``; the backbone loads with plain ``transformers.AutoModel``.
- ``adapter``: the peft adapter + heads; the base model is referenced by ``newsimpact.json``.
- ``onnx``: the merged folder plus ``model.onnx`` (inputs ``input_ids``, ``attention_mask``,
  ``entity_mask``; dynamic batch/sequence/entity axes; every head's output), run with onnxruntime;
  ``export.quantize=int8`` adds ``model.int8.onnx`` (dynamic quantization for CPU serving).

Every export writes ``newsimpact.json`` (format, base model, label schema, max length, chunking defaults,
metrics, config hash) and a ``README.md`` model card.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from training import model_meta
from training.artifacts import atomic_dir
from training.choices import ExportDtype, ExportFormat, Quantize
from training.config import ConfigError, entry_point, exit_on_config_error, load_validated, register_schema
from training.model_meta import default_stride
from training.modeling import (
    _DTYPES,
    FORMAT_VERSION,
    HEADS_FILE,
    META_FILE,
    NewsImpactModel,
    load_tokenizer,
    load_trained,
    pooler_attached,
    read_meta,
)
from training.onnx_graph import export_onnx
from training.records import HEAD_OUTPUTS, untrained

log = logging.getLogger("newsimpact.export")
EXPORT_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass
class ExportOptions:
    format: ExportFormat = ExportFormat.merged
    dtype: ExportDtype = ExportDtype.fp32  # weights as saved; onnx is always exported in fp32
    checkpoint: str = "final"  # final (run_dir/adapter) | best | last | path to a .ckpt of this run
    quantize: Quantize | None = None  # int8: also write a dynamically quantized ONNX model (format=onnx)
    opset: int = 17


@dataclass
class ExportConfig:
    run_dir: str = "???"
    output_dir: str = "???"
    overwrite: bool = False
    export: ExportOptions = field(default_factory=ExportOptions)


register_schema("export_schema", ExportConfig)


def validate_export_config(config: ExportConfig) -> None:
    problems = []
    run_dir = Path(config.run_dir)
    if not (run_dir / "adapter" / META_FILE).exists():
        problems.append(
            f"run_dir='{config.run_dir}' has no adapter/{META_FILE}; give the run_dir of a finished training run"
        )
    opts = config.export
    if opts.quantize and opts.format != "onnx":
        problems.append("export.quantize=int8 needs export.format=onnx")
    if opts.checkpoint not in ("final", "best", "last") and not Path(opts.checkpoint).is_file():
        problems.append(f"export.checkpoint='{opts.checkpoint}' must be final, best, last or a .ckpt file")
    out = Path(config.output_dir)
    if out.exists() and any(out.iterdir()) and not config.overwrite:
        problems.append(
            f"output_dir='{config.output_dir}' is not empty; choose a new folder or pass overwrite=true"
        )
    if problems:
        raise ConfigError(problems)


def _checkpoint_path(run_dir: Path, which: str) -> Path | None:
    if which == "final":
        return None
    if which == "last":
        return run_dir / "checkpoints" / "last.ckpt"
    if which == "best":
        best = json.loads((run_dir / "run.json").read_text()).get("best_checkpoint")
        if not best:
            raise ConfigError(
                ["export.checkpoint=best: the run recorded no best checkpoint (no checkpoint.monitor)"]
            )
        return Path(best)
    return Path(which)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning checkpoint: a file, or the folder ``trainer=deepspeed`` writes (ZeRO shards), which
    Lightning's DeepSpeed utility (DeepSpeed's zero_to_fp32) consolidates into one fp32 state dict."""
    if not path.is_dir():
        return torch.load(path, map_location="cpu", weights_only=False)
    import importlib.util
    import tempfile

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            [
                f"{path} is a DeepSpeed checkpoint folder; reading it needs DeepSpeed: "
                "pip install 'newsimpact[deepspeed]'"
            ]
        )
    from pytorch_lightning.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    with tempfile.TemporaryDirectory() as tmp:
        return convert_zero_checkpoint_to_fp32_state_dict(path, Path(tmp) / "consolidated.pt")


def load_run_model(run_dir: Path, checkpoint: str = "final") -> NewsImpactModel:
    """The run's model in float32, with the weights of the chosen checkpoint."""
    model = load_trained(run_dir / "adapter")
    ckpt = _checkpoint_path(run_dir, checkpoint)
    if ckpt is not None:
        state = read_checkpoint(ckpt)["state_dict"]
        # Lightning stores the module's keys as "model.<name>"; peft's are named like the live model's. Other
        # keys are training-only parts of the module (distill.hidden_weight's projection), not the model's.
        state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"{ckpt} does not belong to this run: unknown weights {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)
    return model


# Backbones we can name on the Hugging Face Hub when the run used a local copy (the packaged ones).
_KNOWN_BASES = {
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}
# Data folders (a source's `root`) that are re-packagings of a Hub dataset.
_KNOWN_DATASETS = {
    "tfns": "zeroshot/twitter-financial-news-sentiment",
    "tfn_topic": "zeroshot/twitter-financial-news-topic",
    "fpb": "takala/financial_phrasebank",
    "fiqa_sa": "pauri32/fiqa-2018",
    "fnspid_sample": "Zihan1004/FNSPID",
}


def _hub_base_model(base_model: str) -> str | None:
    """The Hub id of the backbone: itself when it is one, else a packaged copy's upstream id, else None."""
    if not Path(base_model).exists() and base_model.count("/") == 1:
        return base_model
    flat = base_model.lower().replace("_", "-")
    return next((hub for key, hub in _KNOWN_BASES.items() if key in flat), None)


def _front_matter(meta: dict[str, Any], run_info: dict[str, Any]) -> str:
    """Hugging Face model-card metadata, so an export folder can be pushed to the Hub as it is."""
    import yaml

    sources = run_info.get("config", {}).get("data", {}).get("sources", {}) or {}
    roots = [Path(str(src.get("root", ""))).name for src in sources.values() if isinstance(src, dict)]
    card: dict[str, Any] = {
        "library_name": "peft" if meta["format"] == "adapter" else "transformers",
        "language": ["en"],
        "pipeline_tag": "text-classification",
        "tags": ["newsimpact", "finance", "financial-news", "sentiment-analysis", "market-impact"]
        + (["lora"] if meta["peft"].get("method", "lora") == "lora" else [])
        + (["onnx"] if meta["format"] == "onnx" else []),
    }
    base = _hub_base_model(str(meta["base_model"]))
    if base:
        card["base_model"] = base
    datasets = sorted({_KNOWN_DATASETS[r] for r in roots if r in _KNOWN_DATASETS})
    if datasets:
        card["datasets"] = datasets
    names = {k.split("/")[-1] for k in run_info.get("val_metrics") or {}}
    # Hub metric ids of the validation metrics logged (f1_macro -> f1, ..._spearman -> spearmanr)
    hub_metrics = {"f1": "f1", "accuracy": "accuracy", "spearman": "spearmanr", "mse": "mse"}
    metrics = sorted({hub for key, hub in hub_metrics.items() if any(key in n for n in names)})
    if metrics:
        card["metrics"] = metrics
    return "---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n"


def _model_card(meta: dict[str, Any], run_info: dict[str, Any]) -> str:
    metrics = run_info.get("val_metrics") or {}
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items())) or "| (none logged) | |"
    sources = ", ".join(run_info.get("config", {}).get("data", {}).get("sources", {})) or "unknown"
    schema = meta["schema"]
    counts = meta.get("label_counts")
    missing = untrained(counts)
    if counts:
        heads = ", ".join(f"{k} {v:,}" for k, v in counts["heads"].items())
        taught = (
            f"- Training rows per head: {heads} (of {counts['rows']:,}); per class and topic: "
            "`label_counts` in newsimpact.json.\n"
            f"- Never taught, so never emitted by the scorer: classes {', '.join(missing['sentiment']) or 'none'}; "
            f"topics {', '.join(missing['topics']) or 'none'}.\n"
        )
    else:
        taught = ""
    return (
        _front_matter(meta, run_info)
        + f"""
# newsimpact model ({meta["format"]})

Financial-news sentiment and market-impact model exported by newsimpact.

- Base model: `{meta["base_model"]}`
- Fine-tuning: {meta["peft"].get("method", "lora")} (r={meta["peft"].get("r")}), config hash `{meta["config_hash"]}`
- Training data: {sources}
- Sentiment scale: {", ".join(schema["sentiment_labels"])}
- Topics: {", ".join(schema["topics"])}
- Max length: {meta["max_length"]} tokens per chunk; longer articles are scored in overlapping chunks.
{taught}
## Validation metrics (as logged at the end of training)
| metric | value |
|---|---|
{rows}

## Intended use
Scoring English financial news and headlines for research: sentiment towards the named companies,
expected size of the market reaction, topics. Run it with `newsimpact score model_dir=THIS_FOLDER ...`.

## Limits
- Learned from the labelled sources above; heads without labels in those sources are untrained and
  their outputs carry no meaning (check which heads have metrics above).
- Impact is a learned expectation of reaction size, not a forecast of direction or returns.
- Not investment advice; English only; behaviour on other domains (social media slang, other languages)
  is untested.
"""
    )


def run(config: ExportConfig) -> Path:
    """Write the export; returns the output folder."""
    run_dir, out = Path(config.run_dir), Path(config.output_dir)
    opts = config.export
    run_meta = read_meta(run_dir / "adapter")
    run_info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    model = load_run_model(run_dir, opts.checkpoint)
    tokenizer = load_tokenizer(str(run_dir / "adapter"))
    # Everything is written into a temporary folder beside output_dir, renamed into place when whole.
    with atomic_dir(out, replace=config.overwrite) as folder:
        dtype = _DTYPES[EXPORT_DTYPES[opts.dtype]]
        is_peft = hasattr(model.backbone, "peft_config")
        if opts.format == "adapter":
            if not is_peft:
                raise ConfigError(
                    ["export.format=adapter: this run fine-tuned the full backbone (peft.method=none)"]
                )
            model.backbone.save_pretrained(folder)
        else:
            backbone = model.backbone.merge_and_unload() if is_peft else model.backbone
            model.backbone = backbone
            with pooler_attached(backbone.to(dtype)):  # loads with AutoModel without missing-weight warnings
                backbone.save_pretrained(folder)
            if opts.format == "onnx":
                model.float()
                model.backbone.config._attn_implementation = "eager"
                export_onnx(model, tokenizer, folder / "model.onnx", opts.opset)
                if opts.quantize == "int8":
                    from onnxruntime.quantization import QuantType, quantize_dynamic

                    quantize_dynamic(
                        str(folder / "model.onnx"),
                        str(folder / "model.int8.onnx"),
                        weight_type=QuantType.QInt8,
                    )
        from safetensors.torch import save_file

        save_file(
            {k: v.float().contiguous() for k, v in model.heads.state_dict().items()}, str(folder / HEADS_FILE)
        )
        tokenizer.save_pretrained(folder)
        meta = {
            **run_meta,
            "format_version": FORMAT_VERSION,
            "format": opts.format,
            "dtype": EXPORT_DTYPES[opts.dtype],
            "metrics": run_info.get("val_metrics", {}),
            "exported_from": {"run_dir": str(run_dir.resolve()), "checkpoint": opts.checkpoint},
            "chunking": {
                "max_length": run_meta["max_length"],
                "stride": default_stride(run_meta["max_length"]),
            },
            "onnx": {"file": "model.onnx", "outputs": list(HEAD_OUTPUTS)} if opts.format == "onnx" else None,
        }
        model_meta.write(folder, meta)
        (folder / "README.md").write_text(_model_card(meta, run_info))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"newsimpact: exported {opts.format} model to {out} ({size / 1e6:.1f} MB)")
    return out


@entry_point("export")
def main(cfg: DictConfig) -> None:
    config, _ = load_validated(cfg, ExportConfig, validate_export_config)
    exit_on_config_error(lambda: run(config))


if __name__ == "__main__":
    main()
