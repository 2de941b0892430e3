# Makes data/sample/ the package `newsimpact.sample` (pyproject.toml maps it): `${sample_dir:}` in
# configs/data/sample.yaml finds these files in a checkout and in an installed distribution alike.
