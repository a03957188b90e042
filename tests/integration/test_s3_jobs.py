"""The audit reads an s3:// model (SeaweedFS). The sweep on S3 runs on a multi-node cluster in
test_multinode.py; serving an s3:// export is tested in test_serve.py."""

from __future__ import annotations

import json
import uuid

import pytest

from ambient.config import load_config
from ambient.eval import AuditConfig, run_audit
from ambient.storage import upload_directory

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
