"""Trained models shipped with newsimpact: adapter exports on the packaged backbones, one folder each, with
their model cards (README.md) and ``models.json`` (each file's SHA-256). Pass a name wherever a model folder
goes (``model_dir=card``); ``training.packaged_models`` resolves it. Rebuilt by ``scripts/package_model.py``.
"""
