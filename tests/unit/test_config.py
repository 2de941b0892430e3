import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA, compose_train
from training.config import ConfigError, TrainConfig, check_overrides, load_config
from training.config_checks import validate_train_config

EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


def test_unknown_key_names_the_full_key():
    with pytest.raises(ConfigError) as err:
        load_config({"peft": {"rnak": 3}}, TrainConfig)
    assert "peft.rnak" in str(err.value)


def test_bad_type_names_the_key():
    with pytest.raises(ConfigError) as err:
        load_config({"peft": {"r": "eight"}}, TrainConfig)
    assert "peft.r" in str(err.value)


def test_validation_collects_every_problem(tmp_path):
    config = compose_train(["peft.r=0", "data.batch_size=0", f"data.sources.sample.root={tmp_path}/nope"])
    with pytest.raises(ConfigError) as err:
        validate_train_config(config)
    text = str(err.value)
    assert "peft.r" in text and "data.batch_size" in text and "data.sources.sample.root" in text


def _choice_fields(schema, prefix=""):
    """(dotted key, enum) of every training.choices field of a config dataclass, nested ones too."""
    import dataclasses
    import types
    import typing

    from training.choices import Choice

    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        optional = typing.get_origin(kind) in (typing.Union, types.UnionType)
        args = [a for a in typing.get_args(kind) if a is not type(None)] if optional else [kind]
        for arg in args:
            inner = typing.get_args(arg)[0] if typing.get_origin(arg) is list else arg
            if isinstance(inner, type) and issubclass(inner, Choice):
                yield f"{prefix}{f.name}", inner, typing.get_origin(arg) is list
            elif dataclasses.is_dataclass(inner):
                yield from _choice_fields(inner, f"{prefix}{f.name}.")


def _schemas():
    from inference.score import ScoreConfig
    from inference.signals import SignalsConfig
    from training.config import SourceConfig
    from training.evaluate import EvaluateConfig
    from training.export import ExportConfig
    from training.impact_labels import ImpactLabelsConfig

    return [
        TrainConfig,
        SourceConfig,
        EvaluateConfig,
        ExportConfig,
        ScoreConfig,
        SignalsConfig,
        ImpactLabelsConfig,
    ]


@pytest.mark.parametrize("schema", _schemas(), ids=lambda s: s.__name__)
def test_every_choice_is_checked_where_configs_merge(schema):
    """A value outside a choice stops at the merge, naming the key and every allowed value; each allowed
    value merges and comes back equal to its string."""
    from omegaconf import OmegaConf

    fields = list(_choice_fields(schema))
    assert fields
    for key, enum, is_list in fields:

        def override(value, key=key, is_list=is_list):
            cfg = OmegaConf.create({})
            OmegaConf.update(cfg, key, [value] if is_list else value)
            return cfg

        with pytest.raises(ConfigError) as err:
            load_config(OmegaConf.to_container(override("nonsense")), schema)
        message = str(err.value)
        assert f"'{key}" in message and f"[{', '.join(enum.values())}]" in message, message
        for value in enum.values():
            got = OmegaConf.select(OmegaConf.merge(OmegaConf.structured(schema), override(value)), key)
            got = got[0] if is_list else got
            assert got == value and f"{got}" == value and json.dumps(got) == json.dumps(value)


def test_default_config_validates():
    validate_train_config(compose_train([]))


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="last.ckpt"):
        validate_train_config(compose_train([f"run_dir={tmp_path}", "resume=true"]))


def _experiment_text(name: str, group: str = "experiment") -> str:
    """An experiment's yaml and that of every config it builds on: the experiments (``- fpb_mpnet``) and
    recipes (``- /recipe: public``, and a recipe's own ``- public``) in its defaults."""
    text = (REPO / "configs" / group / f"{name}.yaml").read_text()
    parents = []
    for entry in yaml.safe_load(text).get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            parents.append((group, entry))
        elif isinstance(entry, dict) and "/recipe" in entry:
            parents.append(("recipe", entry["/recipe"]))
    return text + "".join(
        _experiment_text(p, g) for g, p in parents if (REPO / "configs" / g / f"{p}.yaml").exists()
    )


def _absent(config) -> list[str]:
    """The data a config reads that this machine lacks: folders, and the inputs of derived sources."""
    from training.derived import missing_inputs

    sources = config.data.sources.values()
    return [s.root for s in sources if s.format != "hub" and not s.derived and not Path(s.root).is_dir()] + [
        line for s in sources if s.derived for line in missing_inputs(s.derived)
    ]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment, request, tmp_path, monkeypatch):
    overrides = [f"experiment={experiment}"]
    if "/trainer: gpu" in _experiment_text(experiment):
        # a GPU recipe: validated as on a GPU machine (on this one it is refused: the test below)
        import torch

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if "/model: mpnet" in _experiment_text(experiment):
        # CI has no mpnet extra: the packaged weights are the resolver's business (test_packaged_models.py)
        overrides.append(f"model.pretrained_model_name_or_path={request.getfixturevalue('tiny_mpnet')}")
    if "teacher: ???" in (REPO / "configs" / "experiment" / f"{experiment}.yaml").read_text():
        # distillation experiments need a teacher folder; validation reads only its newsimpact.json
        teacher = tmp_path / "teacher"
        teacher.mkdir()
        schema = {"sentiment_labels": ["negative", "neutral", "positive"], "topics": []}
        meta = {"schema": schema, "base_model": "x", "max_length": 64, "format": "merged"}
        (teacher / "newsimpact.json").write_text(json.dumps(meta))
        overrides.append(f"distill.teacher={teacher}")
    config = compose_train(overrides)
    assert config.name == experiment
    absent = _absent(config)
    if absent:  # ../shared/data (derived sources such as weak_topics are built from it)
        pytest.skip(f"{', '.join(absent)} not present")
    validate_train_config(config)


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs" / "data").glob("*.yaml")))
def test_every_data_config_composes_and_validates(name):
    config = compose_train([f"data={name}"])
    assert config.data.sources
    for source in config.data.sources.values():
        assert "text" in source.columns and "train" in source.splits
    absent = _absent(config)
    if absent:  # ../shared/data (derived sources such as weak_topics are built from it)
        pytest.skip(f"{', '.join(absent)} not present")
    validate_train_config(config)  # every split's files exist, every column and label maps


@pytest.mark.slow  # a real process: the command as a user runs it
@pytest.mark.parametrize("override", ["+peft.rnak=3", "peft.r=eight"])
def test_cli_typo_stops_with_one_line(override, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "training.train", override, f"run_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "peft.r" in lines[0] and "Traceback" not in result.stderr
    assert not Path(tmp_path, "run", "run.json").exists()


def test_missing_entity_table_is_named(tmp_path):
    config = compose_train(["data=sentfin"]) if SHARED_DATA.is_dir() else None
    if config is None:
        pytest.skip(f"{SHARED_DATA} not present")
    from training.config import EntityTableConfig

    config.data.sources["sentfin"].entity_table = EntityTableConfig(path="nothere.parquet")
    with pytest.raises(ConfigError, match=r"data.sources.sentfin.entity_table.path: no file at .*nothere"):
        validate_train_config(config)


def test_sweep_config_composes_with_its_own_trial_folders():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sweep=lora_optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert set(sweeper.params) == {"peft.r", "peft.lora_alpha", "peft.lora_dropout", "optim.lr"}
    subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
    assert str(cfg.hydra.mode).endswith("MULTIRUN") and subdir.startswith("trial-${now:")


def test_text_lines_on_a_labelled_source_is_refused(tmp_path):
    """Each line of a labelled row would inherit a label that belongs to the whole row."""
    (tmp_path / "train.jsonl").write_text('{"text": "a\\nb", "y": "positive"}\n')
    source = f"+data.sources.lines={{root: {tmp_path}, splits: {{train: {{path: train.jsonl}}}}, text_lines: true}}"
    validate_train_config(compose_train(["data=sample", source]))
    with pytest.raises(ConfigError) as err:
        validate_train_config(
            compose_train(["data=sample", source, "+data.sources.lines.columns.sentiment=y"])
        )
    assert "data.sources.lines.text_lines=true" in str(err.value) and "columns={text: ...}" in str(err.value)


def test_a_monitor_no_validation_logs_is_refused():
    """A three-label scale has no three-class projection to select on; a typo in the key is caught too."""
    three = ["schema.sentiment_labels=[negative,neutral,positive]"]
    with pytest.raises(ConfigError) as err:
        validate_train_config(compose_train([*three, "checkpoint.monitor=val/sentiment_coarse_f1_macro"]))
    assert "checkpoint.monitor='val/sentiment_coarse_f1_macro' is never logged" in str(err.value)
    assert "val/sentiment_f1_macro" in str(err.value)  # what to pick instead
    with pytest.raises(
        ConfigError, match=r"'checkpoint.mode': Invalid value 'maximum', expected one of \[max, min\]"
    ):
        check_overrides("train", ["checkpoint.mode=maximum"])  # as the command checks its overrides
    validate_train_config(compose_train(["checkpoint.monitor=val/sentiment_coarse_f1_macro"]))  # five levels
    validate_train_config(compose_train([*three, "checkpoint.monitor=val/sentiment_f1_macro"]))


@pytest.mark.parametrize("labels", [["negative", "neutral", "positive"], None])
def test_every_validation_metric_is_a_monitor_key(labels):
    """The names HeadMetrics logs (with every head labelled) are exactly what validation accepts."""
    import torch

    from training.config import SchemaConfig
    from training.config_checks import monitor_keys
    from training.metrics import HeadMetrics
    from training.scale import Scale

    schema = SchemaConfig(**({"sentiment_labels": labels} if labels else {}))
    scale = Scale.of(schema)
    k, t = len(scale.labels), len(schema.topics)
    metrics = HeadMetrics(k, t, torch.as_tensor(scale.membership).float() if scale.refines else None)
    out = {
        "sentiment_logits": torch.randn(4, k),
        "sentiment_score": torch.rand(4),
        "impact": torch.rand(4),
        "ticker_score": torch.rand(4, 1),
        "topic_logits": torch.randn(4, t),
    }
    batch = {
        "sentiment_id": torch.tensor([0, 1, 2, 1]),
        "sentiment_group": torch.tensor([0, 1, 2, 1]),
        "sentiment_score": torch.rand(4),
        "impact": torch.rand(4),
        "entity_scores": torch.rand(4, 1),
        "topic_targets": (torch.rand(4, t) > 0.5).float(),
    }
    metrics.update(out, batch)
    assert sorted(f"val/{key}" for key in metrics.compute()) == sorted(
        set(monitor_keys(schema)) - {"val/loss"}
    )


def test_trainer_configs_that_cannot_run_here_stop_before_any_work(monkeypatch):
    """No config silently trains on the CPU of a GPU box, and none fails at its first step: FSDP and
    DeepSpeed without CUDA, trainer=gpu without a GPU and qlora without CUDA are refused by name."""
    import torch

    from tests.conftest import compose_train
    from training.config_checks import trainer_problems

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compose_train([]).trainer.accelerator == "auto"  # the default follows the machine
    assert trainer_problems(compose_train([])) == []
    assert trainer_problems(compose_train(["trainer=cpu"])) == []
    assert compose_train(["trainer=cpu"]).trainer.accelerator == "cpu"
    fsdp = " ".join(trainer_problems(compose_train(["trainer=fsdp", "trainer.accelerator=cpu"])))
    assert "trainer.strategy=fsdp needs CUDA GPUs" in fsdp and "trainer=ddp trainer.accelerator=cpu" in fsdp
    gpu = " ".join(trainer_problems(compose_train(["trainer=gpu"])))
    assert "trainer.accelerator=gpu" in gpu and "trainer=cpu" in gpu
    deepspeed = " ".join(trainer_problems(compose_train(["trainer=deepspeed", "trainer.accelerator=auto"])))
    assert "trainer.strategy=deepspeed_stage_2 needs CUDA GPUs" in deepspeed
    assert "trainer.accelerator=gpu" in " ".join(trainer_problems(compose_train(["trainer=deepspeed"])))
    assert "peft=qlora" in " ".join(trainer_problems(compose_train(["peft=qlora"])))
    ddp = compose_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    assert trainer_problems(ddp) == []  # DDP on CPUs (gloo): what the tests run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert trainer_problems(compose_train(["trainer=fsdp"])) == []


@pytest.mark.parametrize("name", ["deepspeed", "deepspeed_stage_2", "deepspeed_stage_3_offload"])
def test_deepspeed_checkpoints_keep_only_the_trainable_weights(name):
    """trainer=deepspeed's checkpoint folders are DeepSpeed's own: the strategy is built with Lightning's
    settings for the registered name plus exclude_frozen_parameters, so they hold LoRA and heads only."""
    from pytorch_lightning.strategies import StrategyRegistry

    from training.train import deepspeed_options

    options = deepspeed_options(name)
    assert options.pop("exclude_frozen_parameters") is True
    assert options == StrategyRegistry[name]["init_params"]
