"""Two preparations of one destination at once, against SeaweedFS S3 and a local folder, with a short
lease: exactly one commits its manifest, the other stops with an error naming the lock, and every
shard the committed manifest lists exists. The stage after encoding (lock, shard writing, commit,
cleanup) runs with a plain shard writer: no Ray."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from ambient.config import load_config
from ambient.data import PrepareShardsConfig
from ambient.data.lock import LOCK_NAME, DestinationLease, DestinationLockedError, S3LockStore
from ambient.data.prepare import prepare_locked
from ambient.data.schema import Manifest
from ambient.data.writer import ShardWriter, WriteReport, fold_reports
from ambient.storage import exists, join, list_files, read_text

pytestmark = pytest.mark.integration

SHAPE = (3, 8, 8)


def config(uri: str, storage) -> PrepareShardsConfig:
    overrides = [
        f"destination.uri={uri}",
        "encode.space=image",
        "resolution=8",
        "destination.overwrite=true",
        "destination.lock_lease_s=2",
        "destination.lock_renew_s=0.5",
    ]
    cfg = load_config(PrepareShardsConfig, overrides=overrides)
    return cfg.model_copy(update={"storage": storage}) if storage else cfg


def batch(n: int, tag: str) -> dict[str, np.ndarray]:
    return {
        "id": np.array([f"{tag}-{i}" for i in range(n)], dtype=object),
        "reject": np.array([""] * n, dtype=object),
        "caption": np.array([f"caption {i}" for i in range(n)], dtype=object),
        "tensor": np.zeros((n, *SHAPE), np.float32),
        "original_size_hw": np.array([[8, 8]] * n, np.int32),
        "crop_top_left": np.array([[0, 0]] * n, np.int32),
    }


@dataclass
class PlainStage:
    """Writes ``shards`` shards, ``delay`` s apart; ``crash`` stops the lease's renewal first (a run
    that stalls or dies while its files stay)."""

    cfg: PrepareShardsConfig
    shards: int = 3
    delay: float = 0.0
    crash: bool = False
    writing: threading.Event = field(default_factory=threading.Event)
    written: list[str] = field(default_factory=list)

    def start(self) -> None:
        pass

    def write(self, run_id: str, lease: DestinationLease) -> WriteReport:
        if self.crash:
            lease.stop_renewal()
        writer = ShardWriter(self.cfg.destination.uri, self.cfg.storage, run_id, "image", 0.5, 0)
        reports = []
        for i in range(self.shards):
            reports.append(writer(batch(2, f"{run_id}-{i}"))["report"][0])
            self.written.append(fold_reports(reports[-1:]).shards[0].file)
            self.writing.set()
            time.sleep(self.delay)
        return fold_reports(reports)

    def text_info(self, run_id: str) -> None:
        return None


def run(stage: PlainStage, results: dict, name: str) -> threading.Thread:
    def target() -> None:
        try:
            results[name] = prepare_locked(stage.cfg, stage.cfg.storage, SHAPE, None, stage)
        except Exception as exc:  # noqa: BLE001 (the test inspects it)
            results[name] = exc

    thread = threading.Thread(target=target, name=name)
    thread.start()
    return thread


def committed(uri: str, storage) -> Manifest:
    manifest = Manifest.model_validate_json(read_text(join(uri, "manifest.json"), storage))
    files = set(list_files(uri, storage))
    assert all(s.file in files for s in manifest.shards), "a listed shard is missing"
    return manifest


@pytest.fixture(params=["local", "s3"])
def destination(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "ds"), None
    s3 = request.getfixturevalue("seaweedfs")
    return f"s3://{s3.bucket}/lease/{tmp_path.name}/ds", s3.storage()


def test_of_two_overlapping_preparations_exactly_one_commits(destination):
    uri, storage = destination
    results: dict = {}
    slow = PlainStage(config(uri, storage), shards=4, delay=1.0)  # 4 s: twice the lease, renewed
    first = run(slow, results, "first")
    assert slow.writing.wait(30)
    time.sleep(2.5)  # past the first lease: only its renewals keep the lock
    assert first.is_alive()
    second = run(PlainStage(config(uri, storage)), results, "second")
    first.join(60)
    second.join(60)
    lock = join(uri, LOCK_NAME)
    assert isinstance(results["second"], DestinationLockedError), results["second"]
    assert f"its lock {lock} is held (lease renewed" in str(results["second"])
    manifest = committed(uri, storage)
    assert manifest.dataset_id == results["first"].manifest.dataset_id and manifest.num_shards == 4
    assert not exists(lock, storage)


def test_a_stalled_holder_is_taken_over_and_its_commit_refused(destination):
    uri, storage = destination
    results: dict = {}
    stalled = PlainStage(config(uri, storage), shards=4, delay=1.5, crash=True)
    first = run(stalled, results, "first")
    assert stalled.writing.wait(30)
    time.sleep(2.2)  # its lease (2 s) runs out, unrenewed
    taker = PlainStage(config(uri, storage), shards=2)
    second = run(taker, results, "second")
    second.join(60)
    first.join(60)
    lock = join(uri, LOCK_NAME)
    assert isinstance(results["first"], DestinationLockedError), results["first"]
    assert f"lost the lock {lock}: it was taken over" in str(results["first"])
    manifest = committed(uri, storage)
    assert manifest.dataset_id == results["second"].manifest.dataset_id
    assert {s.file for s in manifest.shards} == set(taker.written)
    # The taker's cleanup removed the stalled run's files from before its lock, not those after it.
    files = set(list_files(uri, storage))
    assert stalled.written[0] not in files and stalled.written[-1] in files
    assert not exists(lock, storage)


def test_seaweedfs_honours_conditional_writes(seaweedfs):
    store = S3LockStore(f"s3://{seaweedfs.bucket}/probe/{LOCK_NAME}", seaweedfs.storage())
    store.probe()  # raises ConditionalWritesUnsupportedError on a store that ignores them
    assert store.conditional_delete
