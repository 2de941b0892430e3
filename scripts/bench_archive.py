"""Archive-scale scoring, before and after work units became byte ranges and claims (issue 14).

    python scripts/bench_archive.py --model-dir bench_runs/merged/tfns [--before 06bfe85]

Measures, for the code of ``--before`` (a git revision, checked out with ``git worktree`` into the work
dir) and for this checkout:

- planning time for a 1,000-file jsonl archive at two sizes (200 and 2,000 rows per file);
- bytes decompressed to read a 200,000-row .jsonl.gz cut into 40 units (``unit_rows=5000``), planning
  included, and the seconds that takes (reading only, no model);
- per-worker seconds of 2 torchrun CPU workers (1 thread each) on files of 3,000 / 100 / 3,000 / 100
  headlines with the model of ``--model-dir``: from each worker's start to its last part;
- this checkout only: ``inference.backend=ray`` (2 actors of 1 CPU) against torchrun (2 processes of 1
  thread) on the same 4,000 headlines: wall seconds of the command and the manifest's articles/s.

Writes docs/bench_archive.json and the section between the ``bench_archive`` markers of
docs/experiments/archive.md. Each phase runs in its own process with the measured tree first on sys.path.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
MARKERS = ("<!-- bench_archive:begin -->", "<!-- bench_archive:end -->")
HEADLINES = [
    "Acme Corp beats estimates and raises its full-year guidance",
    "Globex shares slump after a surprise profit warning",
    "Initech wins a multi-year cloud contract with a federal agency",
    "Regulators open an inquiry into Umbrella's accounting",
    "Hooli cuts 5% of staff as advertising revenue stalls",
]


# -- phases (run in a subprocess: ``--phase NAME --tree DIR``) ---------------------------------------
def _plan_units_fn() -> Any:
    try:
        from inference.readers import plan_units  # after: planning lives with the readers
    except ImportError:
        from inference.score import plan_units  # type: ignore[no-redef]  # before
    return plan_units


def phase_plan(data: Path) -> dict[str, Any]:
    plan_units = _plan_units_fn()
    out = {}
    for name in ("small", "large"):
        files = sorted(str(p) for p in (data / f"plan_{name}").glob("*.jsonl"))
        start = time.perf_counter()
        units = plan_units(files, 5000)
        out[name] = {
            "files": len(files),
            "units": len(units),
            "seconds": round(time.perf_counter() - start, 3),
        }
    return out


def phase_gz(data: Path) -> dict[str, Any]:
    from inference import readers

    counted = {"bytes": 0, "opens": 0}
    original = readers._open_binary

    class Counting:
        def __init__(self, fh: Any):
            self.fh = fh

        def __iter__(self) -> Any:
            for line in self.fh:
                counted["bytes"] += len(line)
                yield line

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.fh.close()

    def opening(path: str) -> Any:
        counted["opens"] += 1
        return Counting(original(path))

    readers._open_binary = opening  # type: ignore[assignment]
    path = str(data / "big.jsonl.gz")
    plan_units = _plan_units_fn()
    start = time.perf_counter()
    units = plan_units([path], 5000)
    rows = 0
    if hasattr(readers, "read_unit"):
        for unit in units:
            rows += sum(1 for _ in readers.read_unit(unit))
    else:
        for unit in units:
            rows += sum(1 for _ in readers.read_range(unit.path, unit.start, unit.end))
    return {
        "units": len(units),
        "rows": rows,
        "opens": counted["opens"],
        "bytes_decompressed": counted["bytes"],
        "file_bytes": os.path.getsize(path),
        "seconds": round(time.perf_counter() - start, 2),
    }


# -- driver -------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, n: int, prefix: str) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"{prefix}-{i}", "text": f"{HEADLINES[i % 5]} ({i})"}) + "\n")


def make_data(data: Path) -> None:
    if (data / "done").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (("small", 200), ("large", 2000)):
        folder = data / f"plan_{name}"
        folder.mkdir(exist_ok=True)
        for f in range(1000):
            _write_jsonl(folder / f"f{f:04d}.jsonl", rows, f"{name}{f}")
    with gzip.open(data / "big.jsonl.gz", "wt") as fh:
        for i in range(200_000):
            fh.write(json.dumps({"id": f"g-{i}", "text": f"{HEADLINES[i % 5]} ({i})"}) + "\n")
    skew = data / "skew"
    skew.mkdir(exist_ok=True)
    for f, n in enumerate((3000, 100, 3000, 100)):
        _write_jsonl(skew / f"f{f}.jsonl", n, f"s{f}")
    _write_jsonl(data / "ray.jsonl", 4000, "r")
    (data / "done").write_text("")


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _phase(tree: Path, name: str, data: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--phase", name, "--tree", str(tree), "--data", str(data)],
        cwd=tree, env=_env(tree), capture_output=True, text=True, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _score(tree: Path, args: list[str], torchrun: bool, log: Path) -> float:
    head = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        if torchrun
        else [sys.executable]
    )
    start = time.perf_counter()
    with log.open("w") as fh:
        subprocess.run([*head, "-m", "inference.score", *args], cwd=tree, env=_env(tree), stdout=fh,
                       stderr=subprocess.STDOUT, check=True)  # fmt: skip
    return time.perf_counter() - start


def skew_run(tree: Path, model_dir: str, data: Path, out: Path) -> dict[str, Any]:
    """Per-worker seconds from the job's creation to each worker's last part (the same for both trees)."""
    args = [f"model_dir={model_dir}", f"input={data / 'skew'}/*.jsonl", f"output_dir={out}",
            "inference.max_chunks=1", "inference.progress=false", "inference.precision=bf16"]  # fmt: skip
    wall = _score(tree, args, torchrun=True, log=out.with_suffix(".log"))
    created = (out / "_job.json").stat().st_mtime
    job = json.loads((out / "_job.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    if "workers" in manifest["this_run"]:  # after: each done record names its worker
        finish: dict[str, float] = {}
        for record_path in (out / "_done").glob("*.json"):
            record = json.loads(record_path.read_text())
            last = max((out / p).stat().st_mtime for p in record["parts"])
            finish[record["worker"]] = max(finish.get(record["worker"], 0.0), last)
    else:  # before: unit i went to rank i % 2
        finish = {}
        for i, unit in enumerate(job["units"]):
            last = (out / f"part-{unit['file_index']:05d}-{unit['index']:05d}.parquet").stat().st_mtime
            finish[f"rank{i % 2}"] = max(finish.get(f"rank{i % 2}", 0.0), last)
    seconds = sorted(round(t - created, 1) for t in finish.values())
    return {
        "worker_seconds": seconds,
        "slowest_over_fastest": round(seconds[-1] / seconds[0], 2) if seconds[0] else None,
        "wall_seconds": round(wall, 1),
        "scored": manifest["scored"],
    }


def ray_vs_torchrun(model_dir: str, data: Path, work: Path) -> dict[str, Any]:
    common = [f"model_dir={model_dir}", f"input={data / 'ray.jsonl'}", "inference.max_chunks=1",
              "inference.progress=false", "inference.precision=bf16", "inference.unit_rows=250"]  # fmt: skip
    out: dict[str, Any] = {}
    for name, extra, torchrun in (
        ("torchrun", [], True),
        (
            "ray",
            ["inference.backend=ray", "inference.ray.num_cpus=2", "inference.ray.cpus_per_actor=1"],
            False,
        ),
    ):
        folder = work / f"ray_{name}"
        wall = _score(ROOT, [*common, *extra, f"output_dir={folder}"], torchrun, folder.with_suffix(".log"))
        manifest = json.loads((folder / "manifest.json").read_text())
        out[name] = {
            "wall_seconds": round(wall, 1),
            "articles_per_s": manifest["this_run"]["articles_per_s"],
            "workers": [(w["worker"], w["units"], w["seconds"]) for w in manifest["this_run"]["workers"]],
            "scored": manifest["scored"],
        }
    return out


def markdown(r: dict[str, Any]) -> str:
    b, a = r["before"], r["after"]
    lines = [
        f"Machine: {r['machine']}. Command: `{r['command']}`. Before = `{r['before_rev']}` (rows counted at",
        "planning, jsonl/csv units read from the first row, round-robin units); after = this checkout.",
        "",
        "| measure | before | after |",
        "|---|---:|---:|",
    ]
    for size in ("small", "large"):
        rows = 200 if size == "small" else 2000
        lines.append(
            f"| planning, 1,000 jsonl files x {rows:,} rows | {b['plan'][size]['seconds']:.2f} s "
            f"({b['plan'][size]['units']} units) | {a['plan'][size]['seconds']:.2f} s ({a['plan'][size]['units']} units) |"
        )
    gb, ga = b["gz"], a["gz"]
    lines += [
        f"| 200k-row .jsonl.gz, 40 units: bytes decompressed (file {gb['file_bytes'] / 1e6:.1f} MB) | "
        f"{gb['bytes_decompressed'] / 1e6:,.0f} MB, {gb['opens']} opens | "
        f"{ga['bytes_decompressed'] / 1e6:,.0f} MB, {ga['opens']} open |",
        f"| the same: seconds to plan and read every unit | {gb['seconds']:.1f} s | {ga['seconds']:.1f} s |",
        f"| 2 torchrun workers, files of 3,000/100/3,000/100 rows: worker seconds | "
        f"{' / '.join(str(s) for s in b['skew']['worker_seconds'])} (x{b['skew']['slowest_over_fastest']}) | "
        f"{' / '.join(str(s) for s in a['skew']['worker_seconds'])} (x{a['skew']['slowest_over_fastest']}) |",
        f"| the same: wall seconds of the command | {b['skew']['wall_seconds']} | {a['skew']['wall_seconds']} |",
        "",
        "| 4,000 headlines, 2 CPUs | wall s (command) | articles/s (manifest) | slowest worker s | articles / slowest worker s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("torchrun", "torchrun, 2 processes x 1 thread"),
        ("ray", "inference.backend=ray, 2 actors x 1 CPU"),
    ):
        x = r["ray_vs_torchrun"][name]
        slowest = max(w[2] for w in x["workers"])
        lines.append(
            f"| {label} | {x['wall_seconds']} | {x['articles_per_s']} | {slowest:.1f} | {x['scored'] / slowest:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", default="bench_runs/merged/tfns")
    parser.add_argument("--before", default="06bfe85")
    parser.add_argument("--work-dir", default="bench_runs/archive")
    parser.add_argument(
        "--render", action="store_true", help="rewrite the section from docs/bench_archive.json"
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        sys.path.insert(0, args.tree)
        fn = {"plan": phase_plan, "gz": phase_gz}[args.phase]
        print(json.dumps(fn(Path(args.data))))
        return
    from bench_quality import machine, write_section

    if args.render:
        saved = json.loads((ROOT / "docs" / "bench_archive.json").read_text())
        write_section(
            ROOT / "docs" / "experiments" / "archive.md",
            markdown(saved),
            MARKERS,
            "Archive scale (`scripts/bench_archive.py`)",
        )
        print(markdown(saved))
        return
    work = (ROOT / args.work_dir).resolve()
    data = work / "data"
    make_data(data)
    before = work / "before"
    if not before.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True)
    model_dir = str(Path(args.model_dir).resolve())
    result: dict[str, Any] = {
        "machine": machine(),
        "command": "python scripts/bench_archive.py --model-dir " + args.model_dir,
        "before_rev": args.before,
    }
    for label, tree in (("before", before), ("after", ROOT)):
        runs = work / label
        runs.mkdir(exist_ok=True)
        for old in runs.glob("skew*"):
            subprocess.run(["rm", "-rf", str(old)], check=True)
        result[label] = {
            "plan": _phase(tree, "plan", data),
            "gz": _phase(tree, "gz", data),
            "skew": skew_run(tree, model_dir, data, runs / "skew"),
        }
        print(label, json.dumps(result[label]), flush=True)
    for old in work.glob("ray_*"):
        subprocess.run(["rm", "-rf", str(old)], check=True)
    result["ray_vs_torchrun"] = ray_vs_torchrun(model_dir, data, work)
    (ROOT / "docs" / "bench_archive.json").write_text(json.dumps(result, indent=2) + "\n")
    write_section(
        ROOT / "docs" / "experiments" / "archive.md",
        markdown(result),
        MARKERS,
        "Archive scale (`scripts/bench_archive.py`)",
    )
    print(markdown(result))


if __name__ == "__main__":
    main()
