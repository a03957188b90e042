"""The sweep and the audit with everything on S3 (SeaweedFS): the sweep's trials, results table, best
config and grids land under an s3:// storage_path and a rerun restores the sweep from there; the
audit reads an s3:// model. (Serving an s3:// export is tested in test_serve.py.)"""

from __future__ import annotations

import csv
import json
import uuid

import pytest
import yaml

from ambient.config import load_config
from ambient.eval import AuditConfig, run_audit
from ambient.storage import file_infos, join, read_text, upload_directory
from ambient.train import FinetuneConfig
from ambient.tune import SweepConfig, run_sweep

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def on_s3(seaweedfs, tiny_model, demo_shards, monkeypatch_module) -> dict[str, str]:
    prefix = f"s3://{seaweedfs.bucket}/jobs-{uuid.uuid4().hex[:8]}"
    upload_directory(tiny_model, f"{prefix}/models/tiny", seaweedfs.storage())
    upload_directory(demo_shards, f"{prefix}/shards/demo", seaweedfs.storage())
    for name, value in seaweedfs.env().items():  # as the job's environment (a Secret on KubeRay) gives them
        monkeypatch_module.setenv(name, value)
    return {"prefix": prefix, "model": f"{prefix}/models/tiny", "data": f"{prefix}/shards/demo"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_sweep_on_s3_writes_its_reports_there_and_restores_from_there(on_s3, seaweedfs, ray_session):
    storage = seaweedfs.storage()
    sweep_uri = join(on_s3["prefix"], "tune", "s3grid")
    overrides = [
        "name=s3grid",
        f"storage_path={on_s3['prefix']}/tune",
        "space.consistency_weight=[0.0]",
        "asha.enabled=false",
        "max_concurrent_trials=1",
        "quality_samples=4",
        "quality_steps=2",
        "memorization.enabled=false",
        f"base.model.path={on_s3['model']}",
        f"base.data.uri={on_s3['data']}",
        f"base.validation.data_uri={on_s3['data']}",
        "base.scaling.num_workers=1",
        "base.train.batch_size=4",
        "base.train.max_steps=2",
        "base.train.log_every=2",
        "base.train.checkpoint_every=2",
        "base.validation.every_steps=2",
        "base.validation.num_steps=2",
        "base.validation.rows=4",
        "base.validation.prompts=[a red circle on a blue background]",
    ]
    cfg = load_config(SweepConfig, None, overrides)
    table = run_sweep(cfg)
    assert table == join(sweep_uri, "results.md")
    files = file_infos(sweep_uri, storage)
    assert {"results.md", "results.csv", "best_config.yaml", "pareto.png"} <= set(files)
    rows = list(csv.DictReader(read_text(join(sweep_uri, "results.csv"), storage).splitlines()))
    assert len(rows) == 1 and rows[0]["status"] == "completed", rows
    assert rows[0]["sample_grid"].startswith(f"{sweep_uri}/grids/") and rows[0]["summary"].startswith("s3://")
    summary = json.loads(read_text(rows[0]["summary"], storage))
    assert summary["exported_model"].startswith(f"{sweep_uri}/trials/")
    best = FinetuneConfig.model_validate(
        yaml.safe_load(read_text(join(sweep_uri, "best_config.yaml"), storage))
    )
    assert best.consistency.weight == 0.0
    # Tune's experiment state is on S3 too: a rerun restores it and reruns no finished trial.
    before = files[rows[0]["summary"].removeprefix(sweep_uri + "/")].mtime
    assert run_sweep(cfg) == table
    assert file_infos(sweep_uri, storage)[rows[0]["summary"].removeprefix(sweep_uri + "/")].mtime == before


def test_audit_reads_an_s3_model(on_s3, tmp_path):
    cfg = load_config(
        AuditConfig,
        overrides=[
            f"models=[{{path: {on_s3['model']}, label: from-s3}}]",
            "items.count=2",
            "attack.steps=2",
            "generation.n=2",
            "generation.steps=2",
            "generation.top_k=1",
            "quality.enabled=false",
            f"output_dir={tmp_path / 'report'}",
        ],
    )
    md = run_audit(cfg)
    report = json.loads((md.parent / "report.json").read_text())
    assert "| from-s3 |" in md.read_text()
    assert on_s3["model"] in json.dumps(report)  # the report names the model as the user gave it
