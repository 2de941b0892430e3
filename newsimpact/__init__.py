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


def sample_dir() -> Path:
    """The embedded sample data (train.jsonl, validation.jsonl), installed or in a checkout."""
    return Path(str(resources.files("newsimpact.sample")))


def configs_dir() -> Path:
    return Path(str(resources.files("newsimpact.configs")))
