"""The sweep's axes: each named axis sets the FinetuneConfig field at its dotted path through the jobs'
own ``--set`` mechanism (same validation, same error), and ambient.tune's modules import no loop."""

from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from ambient.config import ConfigError, _parse_value, load_config
from ambient.train import FinetuneConfig
from ambient.tune import SweepConfig
from ambient.tune.axes import AXES, override
from ambient.tune.report import write_reports
from ambient.tune.trial import apply_axes, trial_config

ROOT = Path(__file__).resolve().parents[2]
TUNE = ROOT / "platform" / "ambient" / "tune"


def leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """A config dump flattened to {dotted path: value}."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(leaves(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
    return out


def another_value(default: Any) -> Any:
    """A valid value other than the field's default (None: a trainable noise level, numbers: larger)."""
    if default is None:
        return 1.0
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float):
        return default * 2 + 1
    pytest.fail(f"give another_value a value for a field whose default is {default!r}")


@pytest.mark.parametrize("axis", AXES, ids=[a.name for a in AXES])
def test_each_axis_path_is_a_finetune_config_field(axis):
    model: type[BaseModel] = FinetuneConfig
    *sections, field = axis.path.split(".")
    for part in sections:
        assert part in model.model_fields, f"{axis.name}: {axis.path}: no section {part!r}"
        model = model.model_fields[part].annotation
    assert field in model.model_fields, f"{axis.name}: {axis.path}: no field {field!r}"


@pytest.mark.parametrize("axis", AXES, ids=[a.name for a in AXES])
def test_an_axis_value_changes_exactly_its_field(axis):
    base = FinetuneConfig().model_dump()
    before = leaves(base)
    value = another_value(before[axis.path])
    after = leaves(apply_axes(base, {axis.name: value}).model_dump())
    changed = {path for path in before if after[path] != before[path]}
    assert changed == {axis.path}
    assert after[axis.path] == value


@pytest.mark.parametrize("axis", AXES, ids=[a.name for a in AXES])
def test_a_bad_axis_value_fails_as_the_same_set_does(axis):
    with pytest.raises(ConfigError) as direct:
        load_config(FinetuneConfig, None, [f"{axis.path}=-5"])
    with pytest.raises(ConfigError) as swept:
        load_config(SweepConfig, None, [f"space.{axis.name}=[-5]"])
    field_error = str(direct.value).splitlines()[1].strip()  # e.g. "optim.lr: Input should be ..."
    assert f"space.{axis.name} = -5 (sets {axis.path}): {field_error}" in str(swept.value)


@pytest.mark.parametrize("value", [1e-5, 2.5e-4, 0.1, 3, True, None, "a red circle", [0.2, 1e-6], {"a": 1}])
def test_override_text_parses_back_to_the_value(value):
    key, _, text = override("optim.lr", value).partition("=")
    assert key == "optim.lr" and _parse_value(text) == value


def test_the_demo_sweep_yaml_keeps_its_axes():
    cfg = load_config(SweepConfig, ROOT / "jobs" / "configs" / "sweep_demo.yaml")
    assert cfg.space.axes() == {"sigma_train": [0.5, 1.0], "consistency_weight": [0.0, 1.0]}
    assert load_config(SweepConfig).space.axes() == cfg.space.axes()  # the built-in default


def test_path_axes_sweep_any_field_and_are_checked_like_set():
    dotted = load_config(SweepConfig, None, ["space.paths={optim.weight_decay: [0, 0.05]}"])
    nested = load_config(SweepConfig, None, ["space.paths.optim.weight_decay=[0, 0.05]"])
    assert (
        dotted.space.axes()["optim.weight_decay"] == nested.space.paths["optim.weight_decay"] == [0.0, 0.05]
    )
    cfg = trial_config(dotted.base.model_dump(), {"optim.weight_decay": 0.05, "lr": 1e-5}, "t", "/tmp/s")
    assert (cfg.optim.weight_decay, cfg.optim.lr, cfg.run.name) == (0.05, 1e-5, "t")
    with pytest.raises(
        ConfigError, match=r"space.paths.optim.weight_decy = 0 \(sets optim.weight_decy\): optim"
    ):
        load_config(SweepConfig, None, ["space.paths.optim.weight_decy=[0]"])
    with pytest.raises(ConfigError, match="loss.sigma_train: sweep it as space.sigma_train"):
        load_config(SweepConfig, None, ["space.paths.loss.sigma_train=[1.0]"])
    with pytest.raises(ConfigError, match="run.name: not a sweepable"):
        load_config(SweepConfig, None, ["space.paths.run.name=[a, b]"])


def test_axis_values_are_checked_against_the_sweeps_base():
    with pytest.raises(ConfigError, match=r"space.sigma_train = 0.5 \(sets loss.sigma_train\).*data_noise"):
        load_config(SweepConfig, None, ["base.loss.data_noise=ignored"])  # the default space's sigma_train
    cfg = load_config(SweepConfig, None, ["base.loss.data_noise=ignored", "space.sigma_train=null"])
    assert "sigma_train" not in cfg.space.axes()


def test_reports_carry_path_axes_and_the_best_config_applies_them(tmp_path):
    space = ["space.sigma_train=[1.0]", "space.consistency_weight=[0.0]"]
    cfg = load_config(SweepConfig, None, [*space, "space.paths={optim.weight_decay: [0.0, 0.05]}"])
    rows = [
        {"trial": name, "sigma_train": 1.0, "consistency_weight": 0.0, "optim.weight_decay": wd,
         "status": "completed", "val_ambient_loss": loss, "objective": loss, "quality_sw": q}
        for name, wd, loss, q in (("a", 0.0, 0.3, 0.2), ("b", 0.05, 0.1, 0.4))
    ]  # fmt: skip
    base = cfg.base.model_dump()
    write_reports(rows, tmp_path, cfg, base, "note")
    (best, other) = csv.DictReader((tmp_path / "results.csv").read_text().splitlines())
    assert (best["trial"], best["optim.weight_decay"]) == ("b", "0.05")
    saved = FinetuneConfig.model_validate(yaml.safe_load((tmp_path / "best_config.yaml").read_text()))
    assert (saved.optim.weight_decay, saved.loss.sigma_train, saved.consistency.weight) == (0.05, 1.0, 0.0)


def tune_imports(path: Path) -> set[str]:
    """The ambient.tune modules a module imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.add(node.module or "")
            elif (node.module or "").startswith("ambient.tune."):
                found.add(node.module.split(".")[2])
    return found - {""}


def test_tune_modules_import_no_loop():
    graph = {p.stem: tune_imports(p) for p in TUNE.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, set()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    loops = sorted(m for m in graph if reaches(m, m, {m}))
    assert not loops, f"import loops through {loops}: {graph}"
