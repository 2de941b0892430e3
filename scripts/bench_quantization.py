"""Accuracy and speed of the int8 ONNX export against the fp32 ONNX export on a labelled split.

    python -m training.export run_dir=runs/tfns_minilm output_dir=exports/tfns_onnx export.format=onnx export.quantize=int8
    python scripts/bench_quantization.py --model-dir exports/tfns_onnx --data tfns --split validation

Both graphs go through the batch scorer's own chunking and batching (onnxruntime, CPU); the report gives
sentiment accuracy and macro-F1 of each, how often they agree, the largest score/impact difference and
the scoring time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", required=True, help="an export.format=onnx export.quantize=int8 folder"
    )
    parser.add_argument("--data", default="tfns", help="a data config name (configs/data)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--report", default=None)
    args = parser.parse_args()

    import onnxruntime as ort
    from hydra import compose, initialize_config_dir
    from torchmetrics.functional.classification import multiclass_f1_score

    from inference.engine import Scorer
    from inference.prep import Article
    from inference.runner import configure_process
    from training.config import SchemaConfig, TrainConfig, load_config
    from training.modeling import read_meta
    from training.sources import load_split, to_canonical

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        config = load_config(compose(config_name="train", overrides=[f"data={args.data}"]), TrainConfig)
    meta = read_meta(args.model_dir)
    schema = SchemaConfig(**meta["schema"])
    rows = []
    for name, source in config.data.sources.items():
        rows += to_canonical(load_split(source, source.splits[args.split]), name, source, schema).to_list()
    rows = [r for r in rows if r["sentiment"] is not None]
    articles = [Article(str(i), r["text"]) for i, r in enumerate(rows)]
    target = np.array([schema.sentiment_labels.index(r["sentiment"]) for r in rows])

    configure_process()
    scorer = Scorer(args.model_dir)
    report: dict = {"model_dir": args.model_dir, "data": args.data, "split": args.split, "rows": len(rows)}
    outputs = {}
    for variant, file in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        scorer.runner.session = ort.InferenceSession(
            str(Path(args.model_dir) / file), providers=["CPUExecutionProvider"]
        )
        start = time.perf_counter()
        records = scorer.score(articles)
        seconds = time.perf_counter() - start
        probs = np.array([r["sentiment_probs"] for r in records])
        pred = probs.argmax(1)
        import torch

        report[variant] = {
            "accuracy": float((pred == target).mean()),
            "f1_macro": float(
                multiclass_f1_score(
                    torch.tensor(pred), torch.tensor(target), len(schema.sentiment_labels), average="macro"
                )
            ),
            "seconds": round(seconds, 2),
            "file_mb": round((Path(args.model_dir) / file).stat().st_size / 1e6, 1),
        }
        outputs[variant] = (
            pred,
            np.array([r["sentiment_score"] for r in records]),
            np.array([r["impact"] for r in records]),
        )
    report["agreement"] = float((outputs["fp32"][0] == outputs["int8"][0]).mean())
    report["max_abs_diff_sentiment_score"] = float(np.abs(outputs["fp32"][1] - outputs["int8"][1]).max())
    report["max_abs_diff_impact"] = float(np.abs(outputs["fp32"][2] - outputs["int8"][2]).max())
    text = json.dumps(report, indent=2)
    print(text)
    if args.report:
        Path(args.report).write_text(text)


if __name__ == "__main__":
    main()
