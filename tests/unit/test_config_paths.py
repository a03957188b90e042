"""Every job resolves each relative local path of its config against the caller's directory, before any
cluster work (one mechanism: ``PathOrUri`` fields and ``resolve_local_paths``); s3:// URIs are untouched."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from ambient.cli import parse_job_config
from ambient.config import LOCAL_PATH
from ambient.data import PrepareShardsConfig
from ambient.eval import AuditConfig
from ambient.serve.config import ServeConfig
from ambient.train import FinetuneConfig
from ambient.tune import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
JOB_CONFIGS = (PrepareShardsConfig, FinetuneConfig, SweepConfig, ServeConfig, AuditConfig)
PATH_LIKE_NAMES = ("path", "uri", "dir", "model", "weights", "inception", "stats")


def parse(cls, *overrides: str, config: str | None = None):
    return parse_job_config(cls, argparse.Namespace(config=config, overrides=list(overrides)))


def test_finetune_paths_resolve_against_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = parse(
        FinetuneConfig,
        "model.path=models/base",
        "validation.data_uri=../held/out",
        "data.uri=s3://bucket/shards",
        config=str(ROOT / "jobs" / "configs" / "finetune_demo.yaml"),
    )
    assert cfg.model.path == str(tmp_path / "models" / "base")
    assert cfg.validation.data_uri == str(tmp_path.parent / "held" / "out")
    assert cfg.data.uri == "s3://bucket/shards"  # URIs untouched
    assert cfg.run.storage_path == str(tmp_path / "runs" / "ray")  # from the YAML file
    default = parse(FinetuneConfig)
    assert default.data.uri == str(tmp_path / "runs" / "demo" / "shards")  # defaults too


def test_sweep_audit_prepare_and_serve_paths_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = parse(SweepConfig, "memorization.items_uri=originals", "base.validation.data_uri=~/held")
    assert sweep.storage_path == str(tmp_path / "runs" / "tune")
    assert sweep.base.data.uri == str(tmp_path / "runs" / "demo" / "shards")
    assert sweep.memorization.items_uri == str(tmp_path / "originals")
    assert sweep.base.validation.data_uri == str(Path.home() / "held")
    audit = parse(AuditConfig, "models=[{path: m1}, {path: null}, {path: /abs/m2}]")
    assert [m.path for m in audit.models] == [str(tmp_path / "m1"), None, "/abs/m2"]
    assert audit.output_dir == str(tmp_path / "runs" / "audit")
    prep = parse(PrepareShardsConfig, "source.kind=folder", "source.path=imgs", "encode.model=s3://m/x")
    assert (prep.source.path, prep.encode.model) == (str(tmp_path / "imgs"), "s3://m/x")
    assert parse(ServeConfig, "model=./export").model == str(tmp_path / "export")


def _annotations(annotation) -> list:
    args = typing.get_args(annotation)
    return [annotation, *(a for arg in args for a in _annotations(arg))]


def _sections(annotation) -> list[type[BaseModel]]:
    return [a for a in _annotations(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def _path_like_fields_without_marker(cls: type[BaseModel], prefix: str) -> list[str]:
    missing = []
    for name, field in cls.model_fields.items():
        is_str = str in _annotations(field.annotation) or field.annotation is str
        if is_str and name.endswith(PATH_LIKE_NAMES) and LOCAL_PATH not in field.metadata:
            missing.append(f"{prefix}{name}")
        for section in _sections(field.annotation):
            missing += _path_like_fields_without_marker(section, f"{prefix}{name}.")
    return missing


@pytest.mark.parametrize("cls", JOB_CONFIGS, ids=lambda c: c.__name__)
def test_every_path_like_field_is_resolved(cls):
    """A new path field that is a plain ``str`` would resolve inside a Ray worker's directory."""
    assert _path_like_fields_without_marker(cls, "") == []
