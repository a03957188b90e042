"""ambient.logs: which worker lines are hidden as harmless, and that --verbose shows them all."""

from __future__ import annotations

import pytest

from ambient import logs


@pytest.fixture
def quiet():
    logs._verbose = False
    yield
    logs._verbose = False


def test_harmless_lines_and_their_continuations_are_dropped(quiet):
    lines = [
        "[ambient train] step 2/6  loss 6.3629",
        "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'step': 2})",
        "/x/c10d_logger.py:83: FutureWarning: `torch.distributed.all_gather_into_tensor` is deprecated.",
        "  return func(*args, **kwargs)",
        "[ambient train] checkpoint at step 3 (0.4 s)",
        "Checkpoint successfully created at: Checkpoint(filesystem=local, path=/tmp/x)",
        "RuntimeError: something that matters",
        "  with its indented detail",
    ]
    assert logs.filter_lines(lines) == [lines[0], lines[4], lines[6], lines[7]]


def test_placement_group_cleaner_output_is_hidden_unless_verbose(quiet):
    batch = {"actor_name": "PlacementGroupCleaner", "pid": 7, "lines": ["Traceback (most recent call last):"]}
    assert logs._filtered(batch) is None
    logs._verbose = True
    assert logs._filtered(batch) == batch


def test_a_batch_of_only_harmless_lines_prints_nothing(quiet):
    batch = {"pid": 9, "lines": ["DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully"]}
    assert logs._filtered(batch) is None
    kept = logs._filtered({"pid": 9, "lines": ["[ambient train] step 4/6"]})
    assert kept is not None and kept["lines"] == ["[ambient train] step 4/6"]


def test_output_is_configured_where_a_job_starts_and_verbose_keeps_libraries_talking(monkeypatch):
    import importlib
    import logging
    import os

    import transformers

    import ambient.cli

    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    importlib.reload(ambient.cli)  # importing the command line changes nothing in the environment
    assert "TRANSFORMERS_VERBOSITY" not in os.environ and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    transformers.logging.set_verbosity_warning()
    logs.configure_output(verbose=True)
    assert "TRANSFORMERS_VERBOSITY" not in os.environ and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
    assert transformers.logging.get_verbosity() == logging.WARNING
    try:
        logs.configure_output(verbose=False)
        assert os.environ["TRANSFORMERS_VERBOSITY"] == "error"
        assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
        assert transformers.logging.get_verbosity() == logging.ERROR  # imported before: set directly
    finally:
        transformers.logging.set_verbosity_warning()
        logs.configure_output(verbose=False)


def test_a_harmless_line_takes_its_traceback_with_it_even_across_batches(quiet):
    first = {
        "pid": 11,
        "actor_name": "TrainController",
        "lines": [
            "Failed to stop PlacementGroupCleaner gracefully.",
            "Traceback (most recent call last):",
            '  File "placement_group_callback.py", line 126, in _stop_cleaner',
        ],
    }
    second = {
        "pid": 11,
        "actor_name": "TrainController",
        "lines": [
            "    ray.get(self._cleaner.stop.remote(), timeout=self._stop_timeout)",
            "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready.",
            "[ambient train] a line that matters",
        ],
    }
    assert logs._filtered({"pid": "autoscaler", "lines": ["Resized to 2 CPUs."]}) is not None
    assert logs._filtered(first) is None
    assert logs._filtered(second)["lines"] == ["[ambient train] a line that matters"]
    # A traceback that follows no harmless line is kept whole.
    other = ["Traceback (most recent call last):", '  File "x.py", line 1', "ValueError: real"]
    assert logs.filter_lines(other) == other


def test_a_progress_bar_redrawn_in_place_is_harmless_only_if_every_frame_is(quiet):
    bar = "\rLoading weights:   0%|          | 0/52\rLoading weights: 100%|##########| 52/52"
    assert logs.is_harmless(bar)
    assert not logs.is_harmless(bar + "\rRuntimeError: out of memory")
