"""Artifacts appear whole or not at all: written under a temporary name beside their final path, then
renamed into place (``os.replace``, atomic on one filesystem), as the scorer's part files are. A crash or a
kill midway leaves the previous artifact (or none) and a ``.tmp-*`` leftover, never a half-written file
that later steps would read."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``."""
    final = Path(path)
    tmp = _tmp_name(final)
    try:
        yield tmp
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it becomes ``path`` (an existing one is replaced only
    with ``replace``; otherwise its files stay and the new ones are moved in, each atomically)."""
    final = Path(path)
    tmp = _tmp_name(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists() and replace:
            shutil.rmtree(final)
        if not final.exists():
            tmp.rename(final)
        else:
            for item in tmp.iterdir():
                target = final / item.name
                if target.is_dir() and item.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
