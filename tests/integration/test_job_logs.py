"""What a person reads: jobs/finetune.py with stdout not a terminal (a pipe, as in a log file), stderr
merged into it. Each line once, a few lines per logged step, no traceback, Ray Data without progress
blocks, a start banner and a final block, and the summary path as the very last line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ambient.train.layout import RunLayout

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

STEPS, LOG_EVERY = 6, 2


@pytest.fixture(scope="module")
def finetune_log(tiny_model, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    root = tmp_path_factory.mktemp("job-logs")
    overrides = {
        "model.path": tiny_model,
        # The demo's own path (relative: resolved against the job's directory, root) is prepared by the
        # job itself, so its Ray Data stage is in the log too.
        "data.uri": "runs/demo/shards",
        "showcase.enabled": False,
        "run.storage_path": root / "runs",
        "run.name": "logs",
        "scaling.num_workers": 1,
        "train.batch_size": 4,
        "train.max_steps": STEPS,
        "train.log_every": LOG_EVERY,
        "train.checkpoint_every": 3,
        "validation.every_steps": STEPS,
        "validation.num_steps": 2,
    }
    args = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "finetune.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=root,
        timeout=1200,
    )
    return done, Path(RunLayout.of(str(root / "runs"), "logs").summary)


def test_the_last_line_is_the_summary_path(finetune_log):
    done, summary = finetune_log
    assert done.returncode == 0, done.stdout[-4000:]
    assert done.stdout.rstrip("\n").splitlines()[-1] == str(summary), done.stdout[-2000:]
    assert summary.is_file()


def test_each_line_once_and_no_traceback(finetune_log):
    done, _ = finetune_log
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    repeated = {line: n for line, n in Counter(lines).items() if n > 1}
    assert not repeated, repeated
    assert "Traceback" not in done.stdout, done.stdout[-4000:]
    assert "PlacementGroupCleaner" not in done.stdout
    # No error-level line from Ray's C++ core (such as ray#53727's line for an actor pool's transform,
    # which the shards' encoding logged before it ran as tasks): an E line must mean an error.
    assert not re.search(r"\[\d{4}-\d\d-\d\d [\d:,]+ E \d+ \d+\]", done.stdout), done.stdout[-4000:]
    assert "Loading weights" not in done.stdout  # transformers' progress bars, from every worker
    assert "FutureWarning" not in done.stdout and "UserWarning" not in done.stdout, done.stdout[-4000:]


def test_a_few_lines_per_logged_step_and_one_per_dataset_stage(finetune_log):
    done, _ = finetune_log
    lines = done.stdout.splitlines()
    steps = [i for i, line in enumerate(lines) if "[ambient train] step " in line]
    assert len(steps) == STEPS // LOG_EVERY, done.stdout[-4000:]
    # Between the first and the last step line: the step lines, a checkpoint line, little else.
    assert steps[-1] - steps[0] + 1 <= 3 * len(steps), "\n".join(lines[steps[0] : steps[-1] + 1])
    assert len(lines) <= 60, done.stdout  # banner, steps, final block, a line per dataset, a few more
    # Ray Data: no progress blocks when stdout is no terminal; at most one line per dataset it ran.
    assert not re.search(r"Total Progress|Running Dataset|logging_progress", done.stdout)
    finished = [line for line in lines if re.search(r"Dataset \S+ execution finished", line)]
    assert len(finished) <= 2, finished  # the demo shards' encoding, the training stream


def test_start_banner_and_final_block(finetune_log):
    done, summary = finetune_log
    out = done.stdout
    for label in ("---- fine-tune logs ----", "workers    1 x batch 4", "data       ", "model      ",
                  "sigma_n    0.5, sampling ", "outputs    "):  # fmt: skip
        assert label in out, label
    final = out[out.index("---- done: logs ----") :]
    assert f"steps      {STEPS}" in final and re.search(r"loss       [\d.e+-]+ -> [\d.e+-]+", final)
    assert re.search(r"speed      [\d.]+ img/s", final) and f"summary    {summary}" in final
