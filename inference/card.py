"""``newsimpact card "headline. summary ..." [...]``: each article's news card, as a terminal shows it.

Texts come as arguments, or one per line on stdin when there are none (``cat news.txt | newsimpact card``).
Each card shows the expected market impact, the overall sentiment (its level and score), the tickers'
sentiment and the topic tags: in colour on a terminal, plain when piped (or with ``NO_COLOR`` set, or
``--color never``); ``--json`` prints one JSON object per article instead (the scorer's record plus the
text). ``model_dir=DIR`` uses another model (default: the packaged ``card``); ``ticker_names=a,b`` the
packaged company-name maps that find tickers named without a cashtag (default ``us_stocknet``; ``none``).
The model runs once over all texts, with the same scorer and precision as ``newsimpact score``.

Speed from a cold start: an adapter folder (every packaged model) is merged into its backbone once and
the merged copy cached (``$NEWSIMPACT_CACHE_DIR/merged/<hash of the folder's files>``), so later cards
load plain ``transformers`` weights and never import peft, whose import alone costs longer than the card.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

USAGE = 'newsimpact card [--json] [--color auto|always|never] [model_dir=DIR] [ticker_names=a,b] "TEXT" ...'
BAR = 10


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="newsimpact card",
        usage=USAGE,
        description="Print each article's news card: impact, sentiment, ticker sentiment, topics.",
        epilog="Texts: as arguments, or one per line on stdin. model_dir= defaults to the packaged 'card'.",
    )
    parser.add_argument("texts", nargs="*", help="articles (headline, summary or full text)")
    parser.add_argument("--json", action="store_true", help="one JSON object per article")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto")
    parser.add_argument(
        "--backend",
        choices=("auto", "torch"),
        default="auto",
        help="auto: a cached ONNX copy of the model on onnxruntime (fp32; built on first use) where onnx is "
        "installed, else PyTorch; torch: always the PyTorch model (bf16 where the CPU has it, as `score`)",
    )
    args, settings = parser.parse_args(argv), {"model_dir": "card", "ticker_names": "us_stocknet"}
    texts = []
    for item in args.texts:
        key, sep, value = item.partition("=")
        if sep and key in settings:
            settings[key] = value
        else:
            texts.append(item)
    args.texts, args.model_dir = texts, settings["model_dir"]
    names = settings["ticker_names"]
    args.ticker_names = [] if names in ("", "none", "[]") else names.strip("[]").split(",")
    return args


def _style(color: bool):
    def paint(text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if color else text

    return paint


def _tone(score: float | None) -> str:
    if score is None:
        return "2"
    return (
        "1;32"
        if score >= 0.5
        else "32"
        if score > 0.15
        else "1;31"
        if score <= -0.5
        else "31"
        if score < -0.15
        else "33"
    )


def render(record: dict[str, Any], text: str, color: bool, width: int = 100) -> str:
    """One card as text lines (ANSI colours when ``color``)."""
    paint = _style(color)
    headline = text if len(text) <= width else text[: width - 1] + "…"
    lines = [paint(headline, "1")]
    impact = record.get("impact")
    if impact is not None:
        filled = round(impact * BAR)
        level = "high" if impact >= 0.66 else "medium" if impact >= 0.33 else "low"
        bar = paint("█" * filled, "36") + paint("░" * (BAR - filled), "2")
        lines.append(f"  impact     {bar} {impact:4.2f}  {level}")
    score = record.get("sentiment_score")
    probs = " · ".join(
        f"{label} {p:.2f}" for label, p in zip(record["labels"], record["sentiment_probs"]) if p >= 0.005
    )
    shown = f"{record['sentiment']}  {score:+.2f}" if score is not None else record["sentiment"]
    lines.append(f"  sentiment  {paint(shown, _tone(score))}   {paint('(' + probs + ')', '2')}")
    tickers = [
        paint(f"{t['ticker']} {t['sentiment_score']:+.2f}", _tone(t["sentiment_score"]))
        if t["sentiment_score"] is not None
        else f"{t['ticker']} (no score)"
        for t in record.get("tickers", [])
    ]
    lines.append(f"  tickers    {'  '.join(tickers) if tickers else paint('none found', '2')}")
    scores = {s["topic"]: s["score"] for s in record.get("topic_scores", [])}
    topics = [paint(f"{t} {scores.get(t, 0.0):.2f}", "35") for t in record.get("topics", [])]
    lines.append(f"  topics     {'  '.join(topics) if topics else paint('none', '2')}")
    return "\n".join(lines)


def _folder_hash(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def merged_copy(model_dir: str) -> str:
    """``model_dir`` itself, or for an adapter folder (an adapter export or a run's ``adapter/``) a cached
    merged copy: the adapter merged into its backbone by peft once, saved like ``export.format=merged``
    (same heads, tokenizer and ``newsimpact.json``), under a lock and atomically."""
    from training import model_meta

    folder = Path(model_dir)
    meta = model_meta.read(folder)
    weights = folder / "backbone" if meta.format == "run" else folder
    if meta.format not in ("adapter", "run") or not (weights / "adapter_config.json").is_file():
        return model_dir
    return _cached("merged", folder, lambda target: _write_merged(folder, target, meta))


def _cached(kind: str, folder: Path, build: Any) -> str:
    """``$NEWSIMPACT_CACHE_DIR/<kind>/<hash of folder>``, made by ``build(target)`` once, under a lock."""
    from training import model_meta
    from training.packaged_models import _exclusive, cache_dir

    target = cache_dir() / kind / _folder_hash(folder)
    if not (target / model_meta.META_FILE).is_file():
        with _exclusive(target.parent / f".{target.name}.lock"):
            if not (target / model_meta.META_FILE).is_file():
                build(target)
    return str(target)


def _write_merged(folder: Path, target: Path, meta: Any) -> None:
    from safetensors.torch import save_file

    from training import model_meta
    from training.artifacts import atomic_dir
    from training.modeling import HEADS_FILE, load_tokenizer, load_trained, pooler_attached

    print(f"newsimpact card: first use of {folder}: caching a merged copy in {target}", file=sys.stderr)
    import warnings

    warnings.filterwarnings(
        "ignore", category=FutureWarning
    )  # the libraries' own deprecations, not the user's
    model = load_trained(folder)
    backbone = model.backbone.merge_and_unload()
    with atomic_dir(target, replace=True) as tmp:
        with pooler_attached(backbone):
            backbone.save_pretrained(tmp)
        heads = {k: v.float().contiguous() for k, v in model.heads.state_dict().items()}
        save_file(heads, str(tmp / HEADS_FILE))
        load_tokenizer(str(folder)).save_pretrained(tmp)
        meta.format, meta.dtype = "merged", "float32"
        meta.chunking = meta.chunking or {"max_length": meta.max_length, "stride": meta.stride}
        meta.extra["merged_from"] = str(folder.resolve())
        model_meta.write(tmp, meta)


def onnx_copy(model_dir: str) -> str | None:
    """A cached ONNX folder of ``model_dir`` for cards (None where it cannot be made: an ONNX export already
    is one, and without onnx/onnxruntime, or for a graph torch cannot export, the card runs the model with
    PyTorch). A card then starts without transformers' model code or peft: the graph in fp32 on
    onnxruntime and the tokenizer's core (inference.prep.CoreTokenizer). Built once from the merged copy,
    keyed by the source folder's content, under a lock and atomically."""
    import importlib.util

    from training import model_meta

    folder = Path(model_dir)
    meta = model_meta.read(folder)
    if meta.format == "onnx":
        return model_dir
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return None
    try:
        return _cached("card", folder, lambda target: _write_onnx(Path(merged_copy(model_dir)), target))
    except Exception as err:  # noqa: BLE001 - any export failure: the card runs with PyTorch
        print(f"newsimpact card: no ONNX copy ({err}); running the model with PyTorch", file=sys.stderr)
        return None


def _write_onnx(merged: Path, target: Path) -> None:
    import shutil
    import warnings

    from training import model_meta
    from training.artifacts import atomic_dir
    from training.modeling import load_tokenizer, load_trained
    from training.onnx_graph import export_onnx

    print(f"newsimpact card: first use of {merged}: caching an ONNX copy in {target}", file=sys.stderr)
    warnings.filterwarnings("ignore")  # the exporter's tracer warnings are not the user's business
    meta = model_meta.read(merged)
    with atomic_dir(target, replace=True) as tmp:
        export_onnx(load_trained(merged).eval(), load_tokenizer(str(merged)), tmp / "model.onnx", opset=17)
        for path in merged.iterdir():  # tokenizer files, config.json, the heads (the graph holds them)
            if path.is_file() and path.suffix != ".safetensors" and path.name != model_meta.META_FILE:
                shutil.copy2(path, tmp / path.name)
        meta.format = "onnx"
        meta.onnx = {"file": "model.onnx", "for": "newsimpact card"}
        meta.extra["onnx_from"] = str(merged.resolve())
        model_meta.write(tmp, meta)


def _texts(args: argparse.Namespace, stdin: TextIO) -> list[str]:
    if args.texts:
        return [t for t in args.texts if t.strip()]
    if stdin.isatty():
        return []
    return [line.strip() for line in stdin if line.strip()]


def run(argv: Sequence[str], stdout: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> int:
    args = parse(argv)
    texts = _texts(args, stdin)
    if not texts:
        print(f"newsimpact card: no text given; usage: {USAGE}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    from training.config import ConfigError
    from training.modeling import META_FILE
    from training.packaged_models import model_dir_problem, packaged_name, resolve_model_dir

    model_dir = resolve_model_dir(args.model_dir)
    if not os.path.isfile(os.path.join(model_dir, META_FILE)):
        print(f"newsimpact card: {model_dir_problem(args.model_dir)}", file=sys.stderr)
        return 2
    from inference.engine import Scorer
    from inference.prep import PACKAGED_TICKER_MAPS, Article, CoreTokenizer, load_ticker_map
    from inference.runner import configure_process, resolve_precision

    unknown = [n for n in args.ticker_names if n not in PACKAGED_TICKER_MAPS]
    if unknown:
        print(
            f"newsimpact card: ticker_names: {', '.join(unknown)} not packaged "
            f"(choose from {', '.join(PACKAGED_TICKER_MAPS)}, or none)",
            file=sys.stderr,
        )
        return 2
    ticker_map = load_ticker_map(None, None, args.ticker_names)
    try:
        fast = onnx_copy(model_dir) if args.backend == "auto" else None
        if fast is not None and CoreTokenizer.available(fast):
            # no transformers model code, no peft, no CPU attention kernels: the graph on onnxruntime
            scorer = Scorer(fast, precision="fp32", ticker_map=ticker_map, tokenizer=CoreTokenizer(fast))
        else:
            configure_process("cpu")
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a card prints the card, not the weights loading
            scorer = Scorer(
                merged_copy(model_dir), precision=resolve_precision("auto", "cpu"), ticker_map=ticker_map
            )
    except ConfigError as err:
        print(f"newsimpact card: {err}", file=sys.stderr)
        return 2
    records = scorer.score([Article(id=str(i), text=t) for i, t in enumerate(texts)])
    seconds = time.perf_counter() - start
    if args.json:
        for text, record in zip(texts, records):
            stdout.write(json.dumps({**record, "text": text}) + "\n")
        return 0
    color = args.color == "always" or (
        args.color == "auto" and stdout.isatty() and not os.environ.get("NO_COLOR")
    )
    cards = [render({**r, "labels": scorer.labels}, t, color) for t, r in zip(texts, records)]
    stdout.write("\n\n".join(cards) + "\n")
    name = packaged_name(model_dir) or model_dir
    footer = f"{len(texts)} article{'s' if len(texts) != 1 else ''} · model {name} · {seconds:.1f} s"
    stdout.write(_style(color)(footer, "2") + "\n")
    return 0


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except BrokenPipeError:  # `newsimpact card ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)


if __name__ == "__main__":
    main()
