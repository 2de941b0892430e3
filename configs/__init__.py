# Makes configs/ the package `newsimpact.configs` (pyproject.toml maps it), so Hydra finds the configs of an
# installed distribution with config_path="pkg://newsimpact.configs", from any working directory.
