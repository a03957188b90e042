"""A Ray cluster of a head and two worker nodes on this machine (`ray start` processes with explicit
ports, their own temp dir and token auth), SeaweedFS as S3 for data, base model and run storage:
`ray job submit -- python jobs/finetune.py` (a LoRA fine-tune, as jobs/configs/sdxl_lora.yaml runs), one
worker node killed (its process group, SIGKILL) after the first checkpoint, the run completes from the S3
checkpoint on the remaining node.

The nodes get what a KubeRay pod gets (docs/operations.md): the AWS_* variables, the platform on
PYTHONPATH and the project's python on PATH. Train workers need the custom resource `trainer`,
which only the worker nodes offer (2 each), and are SPREAD: one per node while both live, both on
the survivor after the kill.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from ambient.storage import exists, file_infos, join, read_text, upload_directory
from ambient.train import FinetuneConfig
from ambient.train.layout import RunLayout
from ambient.tune.sweep import trial_layout
from tests.helpers.finetune import coverage, recorded_rows
from tests.helpers.services import free_port, free_port_block

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
pytestmark = pytest.mark.integration
EPOCH_ROWS = 64  # demo_shards


@dataclass
class RayNode:
    proc: subprocess.Popen
    log: Path

    def kill(self) -> None:
        """SIGKILL the node's whole process group: `ray start`, its raylet and every worker on it."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM, then the whole process group killed if `ray start` has not ended within grace_s
        (its graceful stop can take a minute on a loaded machine; nothing of a test node is kept)."""
        self.terminate()
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def owns(self, pid: int) -> bool:
        """Whether ``pid`` descends from this node's `ray start` process."""
        while pid > 1:
            if pid == self.proc.pid:
                return True
            try:
                pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return False
        return False


@dataclass
class LocalCluster:
    dashboard: str
    gcs: str
    env: dict[str, str]
    head: RayNode
    temp_dir: Path
    workers: list[RayNode] = field(default_factory=list)


def node_ports(head: bool) -> list[str]:
    workers = free_port_block(100)  # each node its own worker port range
    args = [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--min-worker-port={workers}",
        f"--max-worker-port={workers + 99}",
        f"--object-store-memory={200 * 1024 * 1024}",
        "--disable-usage-stats",
    ]
    return args + ([f"--ray-client-server-port={free_port()}"] if head else [])


def start_node(args: list[str], env: dict[str, str], log: Path) -> RayNode:
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(RAY), "start", "--block", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killable as a whole, by us only
        )
    return RayNode(proc, log)


def wait_for(predicate, timeout_s: float, what: str, node: RayNode | None = None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if node is not None and node.proc.poll() is not None:
            pytest.fail(f"{what}: ray exited with {node.proc.returncode}; see {node.log}")
        try:
            if predicate():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(1)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


def dashboard_answers(url: str) -> bool:
    """Token auth answers 401/403 to an unauthenticated request: the dashboard is up either way."""
    return requests.get(f"{url}/api/version", timeout=2).status_code in (200, 401, 403)


def node_started(node: RayNode) -> bool:
    """`ray start` prints this once its raylet has registered with the GCS (cheaper than asking the
    state API, which itself times out on a loaded machine)."""
    return "Ray runtime started" in node.log.read_text(errors="replace")


def start_worker_node(c: LocalCluster, log: Path, attempts: int = 3) -> RayNode:
    """One worker node at a time, retried: on a loaded machine `ray start` gives up after its fixed 30 s
    wait for the raylet to register ("timed out during startup")."""
    for attempt in range(attempts):
        args = [f"--address={c.gcs}", "--num-cpus=2", '--resources={"trainer": 2}', *node_ports(head=False)]
        node = start_node(args, c.env, log.with_suffix(f".{attempt}.log"))
        deadline = time.time() + 240
        while time.time() < deadline and node.proc.poll() is None:
            if node_started(node):
                return node
            time.sleep(2)
        node.stop()
    pytest.fail(f"a worker node did not join after {attempts} attempts; see {log.parent}")


@pytest.fixture(scope="module")
def cluster(seaweedfs, tmp_path_factory):
    logs = tmp_path_factory.mktemp("ray-nodes")
    temp_dir = tempfile.mkdtemp(prefix="rayc-", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {
        **os.environ,
        **seaweedfs.env(),
        "RAY_AUTH_MODE": "token",
        # On a loaded machine the dashboard agent can take longer than the raylet's default wait.
        "RAY_agent_register_timeout_ms": os.environ.get("RAY_agent_register_timeout_ms", "120000"),  # noqa: SIM112
        "PYTHONPATH": str(ROOT / "platform"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",  # `python` in a job = ours
    }
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    head = start_node(
        [
            "--head",
            f"--port={gcs}",
            f"--temp-dir={temp_dir}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            *node_ports(head=True),
        ],
        env,
        logs / "head.log",
    )
    c = LocalCluster(f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env, head, Path(temp_dir))
    try:
        wait_for(lambda: dashboard_answers(c.dashboard), 600, "the head", head)
        for i in range(2):
            c.workers.append(start_worker_node(c, logs / f"worker-{i}.log"))
        yield c
    finally:
        nodes = [*c.workers, head]
        for node in nodes:  # all at once, then each waited for
            node.terminate()
        for node in nodes:
            node.stop()
        if not os.environ.get("AMBIENT_KEEP_RAY_LOGS"):  # set it to keep the nodes' logs for a post-mortem
            shutil.rmtree(temp_dir, ignore_errors=True)


def submit(cluster: LocalCluster, submission_id: str, entry: list[str]) -> None:
    # The dashboard answers before its job agent has registered ("No available agent"): retry.
    for _ in range(30):
        done = subprocess.run(
            [str(RAY), "job", "submit", "--address", cluster.dashboard, "--submission-id", submission_id,
             "--no-wait", "--", *entry],
            env=cluster.env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode == 0:
            return
        assert "No available agent" in done.stdout + done.stderr, done.stdout + done.stderr
        time.sleep(3)
    pytest.fail("the job agent never became available")


def job_status(cluster: LocalCluster, submission_id: str) -> str:
    """The job's status from the dashboard's REST API (the Jobs SDK's endpoint). Polled every few
    seconds for minutes: a `ray job status` process per poll cost 2.5 s of CPU each, a third of this
    2-core machine taken from the cluster under test."""
    r = requests.get(
        f"{cluster.dashboard}/api/jobs/{submission_id}", headers=auth_header(cluster), timeout=30
    )
    r.raise_for_status()
    return r.json()["status"]


def auth_header(cluster: LocalCluster) -> dict[str, str]:
    """The cluster's token (RAY_AUTH_MODE=token), where Ray's own clients look for it."""
    token = (
        cluster.env.get("RAY_AUTH_TOKEN")
        or Path(cluster.env.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        .read_text()
        .strip()
    )
    return {"Authorization": f"Bearer {token}"}


def driver_lines(logs: str) -> list[str]:
    """The job's own output: Ray's streamed worker logs ("(RayTrainWorker pid=...) ...") and progress
    redraws left out (they may arrive after the driver's last line)."""
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", logs)
    lines = [line.strip() for line in plain.replace("\r", "\n").splitlines()]
    return [line for line in lines if line and not re.match(r"^\((\w+ )?pid=\d+", line)]


def job_logs(cluster: LocalCluster, submission_id: str) -> str:
    out = subprocess.run(
        [str(RAY), "job", "logs", "--address", cluster.dashboard, submission_id],
        env=cluster.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out.stdout


@pytest.fixture(scope="module")
def s3_inputs(seaweedfs, tiny_model, demo_shards) -> dict[str, str]:
    """The tiny base model and the demo shards, copied to S3 (nothing local reaches the job)."""
    prefix = f"s3://{seaweedfs.bucket}/multinode-{uuid.uuid4().hex[:8]}"
    upload_directory(tiny_model, f"{prefix}/models/tiny", seaweedfs.storage())
    upload_directory(demo_shards, f"{prefix}/shards/demo", seaweedfs.storage())
    return {"prefix": prefix, "model": f"{prefix}/models/tiny", "data": f"{prefix}/shards/demo"}


def run_job(cluster: LocalCluster, entry: list[str], what: str) -> str:
    """Submit ``entry``, wait for it and return its logs (asserting it succeeded)."""
    job = f"{what}-{uuid.uuid4().hex[:8]}"
    submit(cluster, job, entry)
    wait_for(lambda: job_status(cluster, job) in ("SUCCEEDED", "FAILED", "STOPPED"), 1200, f"the {what} job")
    logs = job_logs(cluster, job)
    assert job_status(cluster, job) == "SUCCEEDED", logs[-4000:]
    return logs


@pytest.mark.timeout(1500)  # three Ray nodes start inside this budget (about 4 minutes on an idle machine)
def test_sweep_trials_run_on_different_nodes_with_everything_on_s3(cluster, s3_inputs, seaweedfs):
    """`jobs/sweep.py` submitted to the cluster: two concurrent trials, each needing a whole worker node
    (trainer: 2), the results table, best config, grids and Tune's own state on S3; a second submission
    restores the sweep from S3 and reruns no finished trial. Runs before the node-loss test, which
    leaves one worker node."""
    storage = seaweedfs.storage()
    sweep_uri = join(s3_inputs["prefix"], "tune", "mnsweep")
    entry = [
        "python", str(ROOT / "jobs" / "sweep.py"),
        "--set", "name=mnsweep", "--set", f"storage_path={s3_inputs['prefix']}/tune",
        "--set", "space.sigma_train=[0.5, 0.8]", "--set", "space.consistency_weight=[0.0]",
        "--set", "asha.enabled=false", "--set", "max_concurrent_trials=2",
        "--set", "quality_samples=4", "--set", "quality_steps=2", "--set", "memorization.enabled=false",
        "--set", f"base.model.path={s3_inputs['model']}", "--set", f"base.data.uri={s3_inputs['data']}",
        "--set", f"base.validation.data_uri={s3_inputs['data']}",
        "--set", "base.scaling.num_workers=1", "--set", "base.scaling.resources_per_worker={trainer: 2}",
        "--set", "base.train.batch_size=4", "--set", "base.train.max_steps=2",
        "--set", "base.train.log_every=2", "--set", "base.train.checkpoint_every=2",
        "--set", "base.validation.every_steps=2", "--set", "base.validation.num_steps=2",
        "--set", "base.validation.rows=4", "--set", "base.validation.prompts=[a red circle on a blue background]",
    ]  # fmt: skip
    logs = run_job(cluster, entry, "sweep")
    table = join(sweep_uri, "results.md")
    assert driver_lines(logs)[-1] == table, driver_lines(logs)[-5:]
    files = file_infos(sweep_uri, storage)
    assert {"results.md", "results.csv", "best_config.yaml", "pareto.png"} <= set(files)
    rows = list(csv.DictReader(read_text(join(sweep_uri, "results.csv"), storage).splitlines()))
    assert sorted(float(r["sigma_train"]) for r in rows) == [0.5, 0.8]
    nodes = set()
    for row in rows:
        assert row["status"] == "completed", row
        assert row["sample_grid"].startswith(f"{sweep_uri}/grids/") and row["summary"].startswith("s3://")
        summary = json.loads(read_text(row["summary"], storage))
        assert summary["exported_model"].startswith(f"{sweep_uri}/trials/")
        worker = json.loads(read_text(trial_layout(sweep_uri, row["trial"]).worker_record(0), storage))
        nodes.add(worker["node_id"])
    assert len(nodes) == 2, "each trial needs a whole worker node: the two ran on different nodes"
    best = FinetuneConfig.model_validate(
        yaml.safe_load(read_text(join(sweep_uri, "best_config.yaml"), storage))
    )
    best_row = min(rows, key=lambda r: float(r["val_ambient_loss"]))
    assert best.loss.sigma_train == float(best_row["sigma_train"]) and best.consistency.weight == 0.0

    # Tune's experiment state is on S3 too: a second submission restores it and reruns no trial.
    before = {r["summary"]: file_infos(sweep_uri, storage)[r["summary"].removeprefix(sweep_uri + "/")].mtime
              for r in rows}  # fmt: skip
    logs = run_job(cluster, entry, "sweep-again")
    assert driver_lines(logs)[-1] == table
    after = file_infos(sweep_uri, storage)
    assert all(after[uri.removeprefix(sweep_uri + "/")].mtime == m for uri, m in before.items())
    # Tune copies the driver's environment into every trial's runtime_env, which Ray's runtime-env
    # agent logs in plain text: the sweep hides the AWS keys from it (the nodes have them in theirs).
    leaked = [
        str(p.relative_to(cluster.temp_dir))
        for p in cluster.temp_dir.rglob("*.log")
        if seaweedfs.secret_access_key.encode() in p.read_bytes()
    ]
    assert not leaked, f"the S3 secret is in {leaked}"


@pytest.mark.timeout(1500)  # three Ray nodes start inside this budget (about 4 minutes on an idle machine)
def test_node_loss_mid_run_resumes_from_s3_at_the_exact_row(cluster, s3_inputs, seaweedfs):
    storage = seaweedfs.storage()
    runs = f"{s3_inputs['prefix']}/runs"
    name, every, steps = "multinode", 4, 16  # 2 workers x batch 4: 8 steps an epoch, 2 epochs
    entry = [
        # The test-only step delay (ambient.train.callbacks.StepDelay) leaves time to kill a node.
        "env", "AMBIENT_TEST_STEP_DELAY_S=1",
        "python", str(ROOT / "jobs" / "finetune.py"),
        "--set", f"model.path={s3_inputs['model']}", "--set", f"data.uri={s3_inputs['data']}",
        "--set", f"run.storage_path={runs}", "--set", f"run.name={name}", "--set", "run.max_failures=2",
        "--set", "scaling.placement_strategy=SPREAD", "--set", "scaling.resources_per_worker={trainer: 1}",
        "--set", "train.batch_size=4", "--set", f"train.max_steps={steps}",
        "--set", f"train.checkpoint_every={every}", "--set", "train.log_every=4",
        "--set", "data.record_rows=true",
        "--set", "consistency.weight=0", "--set", "validation.every_steps=8", "--set", "validation.num_steps=2",
        "--set", "model.lora_rank=4",
        "--set", "showcase.enabled=false",  # the demo default's before/after picture: minutes of sampling
    ]  # fmt: skip
    job = f"multinode-{uuid.uuid4().hex[:8]}"
    submit(cluster, job, entry)
    layout = RunLayout.of(runs, name)
    outputs = layout.outputs

    # Both train workers are up, one on each worker node.
    def placed() -> list[RayNode]:
        records = [json.loads(read_text(layout.worker_record(r), storage)) for r in (0, 1)]
        return [next(n for n in cluster.workers if n.owns(rec["pid"])) for rec in records]

    wait_for(
        lambda: all(exists(layout.worker_record(r), storage) for r in (0, 1)),
        900,
        "the train workers",
    )
    hosts = placed()
    assert hosts[0] is not hosts[1], "SPREAD should put the two train workers on different nodes"
    # The first checkpoint is registered by the controller (its snapshot lists it): kill rank 1's node.
    snapshot = layout.checkpoint_snapshot
    wait_for(
        lambda: exists(snapshot, storage) and "checkpoint_dir_name" in read_text(snapshot, storage),
        900,
        "the first registered checkpoint",
    )
    assert job_status(cluster, job) == "RUNNING"
    hosts[1].kill()

    wait_for(lambda: job_status(cluster, job) in ("SUCCEEDED", "FAILED", "STOPPED"), 1200, "the job to end")
    logs = job_logs(cluster, job)
    assert job_status(cluster, job) == "SUCCEEDED", logs[-4000:]
    summary_uri = layout.summary
    assert driver_lines(logs)[-1] == summary_uri, driver_lines(logs)[-5:]  # the job's result line

    s = json.loads(read_text(summary_uri, storage))
    assert s["steps"] == steps and s["restarts"] >= 1 and s["resumed_from_step"] % every == 0
    # Everything a later job needs is on S3.
    for key in ("outputs", "exported_model", "loss_curve", "sample_grids", "latest_checkpoint"):
        assert str(s[key]).startswith("s3://"), (key, s[key])
    files = file_infos(outputs, storage)
    # The export is published: CURRENT.json names the one version a reader loads.
    current = json.loads(read_text(join(layout.model, "CURRENT.json"), storage))
    version = f"model/versions/{current['version']}"
    assert "loss_curve.png" in files and f"{version}/ambient_metadata.json" in files
    # A LoRA run exports its adapter (with rank and alpha) and the base's reference, not a base copy.
    assert f"{version}/lora/pytorch_lora_weights.safetensors" in files
    assert not any("/unet/" in f for f in files if f.startswith("model/"))
    assert json.loads(read_text(join(outputs, version, "ambient_metadata.json"), storage))["lora_rank"] == 4
    assert any(f.startswith("samples/") and f.endswith(".png") for f in files)
    assert all(c.startswith("s3://") for c in s["checkpoints"])

    # At most one checkpoint interval repeated, and the rows: every one of the 64 exactly twice.
    rows = recorded_rows(layout, storage)
    resumed = s["resumed_from_step"]
    repeated_steps = max(rows[0]) - resumed
    counts: Counter = coverage(rows, resumed)
    print(
        f"multinode: killed after step {max(rows[0])}, resumed from {resumed}: {repeated_steps} steps repeated; "
        f"rows: {len(counts)} distinct, counts {sorted(set(counts.values()))}"
    )
    assert 0 <= repeated_steps <= every
    assert len(counts) == EPOCH_ROWS and set(counts.values()) == {2}, counts.most_common(3)
