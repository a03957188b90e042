"""ModelRef (checked on the driver, made local on a worker), the demo's locations, folder atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ambient import demo_paths
from ambient.models.base_model import ensure_default_model
from ambient.models.ref import ModelRef
from ambient.storage import local_folder_atomic

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "jobs" / "configs"


def test_a_missing_model_is_reported_as_its_field(tmp_path):
    ref = ModelRef(str(tmp_path / "absent"), field="model.path")
    with pytest.raises(FileNotFoundError, match=r"^model\.path: model folder .*absent does not exist"):
        ref.check()
    with pytest.raises(FileNotFoundError, match=r"^model\.path: "):
        ref.local()
    with pytest.raises(FileNotFoundError, match=r"^model folder"):  # no field: the message alone
        ModelRef(str(tmp_path / "absent")).check()


def test_the_default_checks_to_its_folder_and_a_local_one_as_written():
    default = ensure_default_model()
    checked = ModelRef(field="model.path").check()
    assert checked == ModelRef(str(default), field="model.path") and checked.uri == str(default)
    assert ModelRef().is_default and not ModelRef().is_s3 and ModelRef("s3://b/m").is_s3
    with pytest.raises(ValueError, match="until it is checked"):
        _ = ModelRef().uri
    local = ModelRef(str(default))
    assert local.check() == local  # a local reference is handed on as written
    assert local.local() == default == ModelRef().local()


def test_components_load_from_the_local_folder():
    comps, folder = ModelRef().components(text_encoders=False)
    assert folder == ensure_default_model()
    assert comps.text_encoder is None and comps.unet is not None and comps.vae_scale_factor > 1


def test_the_demo_locations_are_anchored_in_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert demo_paths.demo_data_uri() == str(tmp_path / "runs" / "demo" / "shards")
    assert demo_paths.is_demo_data_uri("runs/demo/shards")
    assert demo_paths.is_demo_data_uri(str(tmp_path / "runs" / "demo" / "shards"))
    assert not demo_paths.is_demo_data_uri("runs/demo/other")
    assert not demo_paths.is_demo_data_uri("s3://bucket/runs/demo/shards")
    # The export is where the demo run's layout puts it, not a path built by hand.
    assert demo_paths.demo_export() == tmp_path / "runs" / "ray" / "demo" / "outputs" / "model"


def test_the_demo_configs_name_the_demo_locations():
    from ambient.data import PrepareShardsConfig
    from ambient.train import FinetuneConfig

    finetune = yaml.safe_load((CONFIGS / "finetune_demo.yaml").read_text())
    assert finetune["data"]["uri"] == demo_paths.DATA_URI
    assert finetune["run"] == {"name": demo_paths.RUN_NAME, "storage_path": demo_paths.RUN_STORAGE_PATH}
    prepare = yaml.safe_load((CONFIGS / "prepare_demo.yaml").read_text())
    assert prepare["destination"]["uri"] == demo_paths.DATA_URI
    sweep = yaml.safe_load((CONFIGS / "sweep_demo.yaml").read_text())
    assert sweep["base"]["data"]["uri"] == demo_paths.DATA_URI
    defaults = FinetuneConfig()
    assert (defaults.data.uri, defaults.run.name, defaults.run.storage_path) == (
        demo_paths.DATA_URI,
        demo_paths.RUN_NAME,
        demo_paths.RUN_STORAGE_PATH,
    )
    assert PrepareShardsConfig().destination.uri == demo_paths.DATA_URI


def test_serving_without_a_model_takes_the_demo_export_or_the_default(tmp_path, monkeypatch):
    from ambient.serve.model import choose_model

    monkeypatch.chdir(tmp_path)  # no demo export here
    assert choose_model(None).uri == str(ensure_default_model())
    default = ensure_default_model()
    os.symlink(default, tmp_path / "model")
    chosen = choose_model("model")  # a path not from a config (a benchmark's command line)
    assert chosen.label == "model" and chosen.uri == str(tmp_path / "model")


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    final = tmp_path / "cache" / "model"
    with local_folder_atomic(final) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not final.exists()
    assert (final / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), local_folder_atomic(final) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("cut off")
    assert (final / "a.txt").read_text() == "one"  # the failed write left the old folder
    with local_folder_atomic(final) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]  # replaced, not merged
    assert sorted(p.name for p in final.parent.iterdir()) == ["model"]  # no temporary or stale folder
