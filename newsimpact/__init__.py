"""newsimpact: fine-tune, export and batch-score financial-news sentiment and market-impact models.

The toolkit's Python modules are ``training`` (data, model, Lightning module, train/evaluate/export) and
``inference`` (the batch scorer and signals); this package holds what an installed distribution needs
besides them: the ``newsimpact`` console command (:mod:`newsimpact.cli`), the Hydra configs
(``newsimpact.configs``, the repository's ``configs/``) and the embedded sample data (``newsimpact.sample``,
the repository's ``data/sample/``).
"""

from __future__ import annotations

from importlib import metadata, resources
from pathlib import Path

try:
    __version__ = metadata.version("newsimpact")
except metadata.PackageNotFoundError:  # a checkout without an install
    __version__ = "0+unknown"

CONFIGS = "pkg://newsimpact.configs"  # the config_path every entry point gives hydra.main


def _checkout_packages() -> None:
    """A checkout used without an install (the repository on PYTHONPATH, e.g. the offline GPU check): its
    ``configs/`` and ``data/sample/`` stand in for ``newsimpact.configs`` and ``newsimpact.sample``, which
    an install (editable or not) maps from those same folders (pyproject.toml)."""
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[1]
    for name, folder in (("configs", root / "configs"), ("sample", root / "data" / "sample")):
        full = f"{__name__}.{name}"
        if full in sys.modules or not (folder / "__init__.py").exists():
            continue
        if importlib.util.find_spec(full) is not None:
            continue  # installed: the distribution's own mapping
        spec = importlib.util.spec_from_file_location(
            full, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)


_checkout_packages()


def sample_dir() -> Path:
    """The embedded sample data (train.jsonl, validation.jsonl), installed or in a checkout."""
    return Path(str(resources.files("newsimpact.sample")))


def configs_dir() -> Path:
    return Path(str(resources.files("newsimpact.configs")))
