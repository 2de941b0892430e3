"""Data sources derived from the public datasets, built on first use and cached.

A data config names one with ``root: ${derived:NAME}`` and ``derived: NAME`` on the source
(configs/data/weak_topics.yaml). ``${derived:NAME}`` resolves to its cache folder,
``<cache>/derived/NAME-v<version>-<key>``, where the key hashes the inputs' location and sizes and the
builder's arguments; nothing is built while a config composes. Validation checks that every input the
builder reads is present (a missing one names the dataset and where to put it); loading the source
(:func:`ensure`) builds the folder once, under a file lock and atomically, so ranks that start together
wait for one another and a kill midway leaves no folder that looks whole. A new version of the labelling
function (``training.weak_labels.VERSION``) is a new folder: the cache is never stale.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.artifacts import _tmp_name
from training.errors import ConfigError
from training.packaged_models import _exclusive, cache_dir, data_dir

DONE = "_BUILT.json"


@dataclass(frozen=True)
class Builder:
    version: str
    inputs: dict[str, list[str]]  # dataset folder -> files it reads
    build: Callable[..., dict[str, Any]]  # (data_dir, out, **params) -> summary
    params: dict[str, Any] = field(default_factory=dict)


def _build_weak_topics(data: Path, out: Path, pairs: int, max_earnings: int) -> dict[str, Any]:
    from training.weak_labels import build_frame, write_source

    return write_source(build_frame(data, pairs=pairs, max_earnings=max_earnings), out)


def _builders() -> dict[str, Builder]:
    from training import weak_labels

    return {
        "weak_topics": Builder(
            version=f"v{weak_labels.VERSION}",
            inputs=weak_labels.INPUTS,
            build=_build_weak_topics,
            params={"pairs": 1000, "max_earnings": 1000},
        )
    }


def _data_dir() -> Path:
    return Path(data_dir())


def _builder(name: str) -> Builder:
    builders = _builders()
    if name not in builders:
        raise ConfigError([f"derived source '{name}' is unknown; known: {', '.join(builders)}"])
    return builders[name]


def derived_dir(name: str) -> str:
    """The cache folder of derived source ``name`` (``${derived:NAME}``); built or not."""
    builder = _builder(name)
    data = _data_dir()
    sizes = {
        f"{d}/{f}": (data / d / f).stat().st_size if (data / d / f).is_file() else -1
        for d, files in builder.inputs.items()
        for f in files
    }
    blob = json.dumps({"data": str(data.resolve()), "sizes": sizes, "params": builder.params}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return str(cache_dir() / "derived" / f"{name}-{builder.version}-{key}")


def missing_inputs(name: str) -> list[str]:
    """One line per input file of ``name`` that is not there, naming the dataset and where it goes."""
    builder, data = _builder(name), _data_dir()
    return [
        f"derived source '{name}' needs the {d} dataset: {data / d / f} is missing; put the dataset's "
        f"folder at {data / d} (see its SOURCE.md) or set NEWSIMPACT_DATA_DIR to the folder that holds it"
        for d, files in builder.inputs.items()
        for f in files
        if not (data / d / f).is_file()
    ]


def ensure(name: str, root: str | os.PathLike[str]) -> Path:
    """Build derived source ``name`` into ``root`` unless it is there; returns ``root``."""
    target = Path(root)
    if (target / DONE).is_file():
        return target
    builder = _builder(name)
    with _exclusive(target.parent / f".{target.name}.lock"):
        if (target / DONE).is_file():  # another process built it while we waited
            return target
        problems = missing_inputs(name)
        if problems:
            raise ConfigError(problems)
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a build killed midway (we hold the lock)
        tmp = _tmp_name(target)
        try:
            summary = builder.build(_data_dir(), tmp, **builder.params)
            (tmp / DONE).write_text(
                json.dumps({"name": name, "version": builder.version, "summary": summary}, indent=1)
            )
            if target.exists():
                shutil.rmtree(target)  # a folder without its done marker
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
