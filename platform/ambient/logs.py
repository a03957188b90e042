"""What a job prints: each line once, Ray's known-harmless noise hidden, the result as the last line.

- Ray Train V2 tees every worker ``print`` into a logger that writes to stderr as well: each training
  line arrived twice. ``RAY_TRAIN_ENABLE_PRINT_PATCH=0`` (propagated by Ray Train to its controller
  and workers) leaves one copy.
- Ray Data redraws a multi-line progress block every few seconds when stdout is not a terminal: then
  its progress bars are off and each dataset logs one line when it finishes; on a terminal they stay.
- Ray's worker logs reach the driver through one handler (``ray_print_logs``); it is replaced by a
  filtering one that hides known-harmless lines (``HARMLESS``, ``HARMLESS_ACTORS``) unless verbose.
- The stream is asynchronous (docs/architecture.md): ``finish_ray_output`` waits until it goes quiet,
  flushes Ray's deduplicated leftovers, stops it and (for batch jobs) shuts Ray down, so that the
  job's result line is the last line printed.

``--verbose`` on any job shows everything Ray prints, as before.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable

_HANDLER = "ray_print_logs"  # the name ray._private.worker registers its log printer under

# Lines that are known to be harmless here; each names what prints it.
HARMLESS = tuple(
    re.compile(p)
    for p in (
        r"Reporting training result \d+:",  # Ray Train worker, each report
        r"Checkpoint successfully created at:",  # Ray Train worker
        r"Setting up process group for:",  # Ray Train worker
        r"^Requesting resources: ",  # Ray Train controller
        r"Attempting to start training worker group",
        r"^Started training worker group",
        r"^- \(ip=.*\) world_rank=\d+",
        r"Setting accelerator to CPU\.",  # DeepSpeed on a machine without GPUs
        r"deepspeed_shm_comm_op built successfully",
        r"Attempting to get learning rate from scheduler before it has started",
        r"requires torchvision \(not installed\); falling back",  # transformers
        r"^Loading weights:",  # transformers' tqdm
        r"UserWarning: The given NumPy array is not writable",  # torch, on read-only Ray Data arrays
        r"PYTHON worker processes have been started on node",  # raylet, many small actors
        r"has constructor arguments in the object store and max_restarts > 0",  # Ray Train's own actors
        # DeepSpeed's ZeRO-2 gathers with a torch API that torch deprecates (their fix, not ours).
        r"FutureWarning: `torch\.distributed\.all_gather_into_tensor` is deprecated",
        r"Starting execution of Dataset",  # Ray Data: the finish line stays
        r"Execution plan of Dataset",
        r"A new progress UI is available",
        r"Progress will be logged because stdout",
        r"Progress bars disabled\. To enable",
        r"`ExecutionOptions\.exclude_resources` is deprecated",
        r"The argument ``concurrency`` is deprecated",
        r"Token authentication is enabled for this Ray cluster",
        # Ray Train's controller, when the PlacementGroupCleaner (below) does not stop in time; the
        # traceback that follows is dropped with it.
        r"Failed to stop PlacementGroupCleaner gracefully",
        # Ray Train's controller on an overloaded machine ("safe to ignore", Ray says), and its traceback.
        r"Failed to send resource request for train-",
    )
)
# Actors whose output is all harmless: Ray Train's PlacementGroupCleaner polls the state API, which
# fails without a dashboard ("Failed to query ...") or with several Ray instances on one machine.
HARMLESS_ACTORS = ("PlacementGroupCleaner",)

_verbose = False
_last_arrival = 0.0
_drop_state: dict[
    str, dict
] = {}  # per worker pid ("autoscaler" for some): a harmless block cut across batches


def is_harmless(line: str) -> bool:
    """A progress bar redrawn in place is one line of ``\\r``-separated frames: harmless when every
    frame is."""
    frames = [f for f in line.split("\r") if f.strip()]
    return bool(frames) and all(any(p.search(f) for p in HARMLESS) for f in frames)


_TRACEBACK = "Traceback (most recent call last):"


def filter_lines(lines: Iterable[str], state: dict | None = None) -> list[str]:
    """Drop harmless lines and what continues them: indented lines (a warning's source line) and a
    traceback that follows (its frames and the exception line that ends it).

    ``state`` carries an unfinished drop over to the next batch of the same process (Ray cuts a
    process's output into batches wherever its log file was read)."""
    state = {} if state is None else state
    kept = []
    for line in lines:
        if is_harmless(line):
            state["mode"] = "after"
            continue
        mode = state.get("mode")
        indented = line.startswith((" ", "\t")) or not line.strip()
        if mode == "after" and line.startswith(_TRACEBACK):
            state["mode"] = "traceback"
            continue
        if mode == "traceback":
            if not indented:
                state["mode"] = None  # the exception line ends the traceback
            continue
        if mode == "after" and indented:
            continue
        state["mode"] = None
        kept.append(line)
    return kept


class HarmlessRecordFilter(logging.Filter):
    """For Python log handlers in the driver (Ray, Ray Data): hides the same lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _verbose or not is_harmless(record.getMessage())


class _DeepSpeedCpuNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


def configure_output(verbose: bool = False) -> None:
    """What a job prints: call once in its driver, where it starts and before Ray starts (every job does,
    through ambient.cli.parse_job_config). Unless ``verbose``, libraries' harmless notices are hidden:
    transformers' warnings and "Loading weights" bars (by the environment, for this process's later
    imports and every process Ray starts from it, and directly if transformers is already imported) and
    DeepSpeed's CPU-accelerator notice."""
    global _verbose
    _verbose = verbose
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            sys.modules["transformers"].logging.set_verbosity_error()
        logging.getLogger("DeepSpeed").addFilter(_DeepSpeedCpuNotice())  # survives DeepSpeed's own setup
    import ray.data

    if not sys.stdout.isatty():
        ray.data.DataContext.get_current().enable_progress_bars = False
    filter_ray_loggers()


def filter_ray_loggers() -> None:
    """Add HarmlessRecordFilter to the handlers of Ray's Python loggers (idempotent)."""
    names = ["ray", *(n for n in logging.Logger.manager.loggerDict if n.startswith("ray."))]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, HarmlessRecordFilter) for f in handler.filters):
                handler.addFilter(HarmlessRecordFilter())


def _ray_logging():
    """Ray's (private) worker-log plumbing, or None when this Ray version lacks it."""
    try:
        from ray._private import ray_logging
        from ray._private import worker as ray_worker

        _ = ray_logging.global_worker_stdstream_dispatcher, ray_logging.stdout_deduplicator
        _ = ray_worker.print_to_stdstream, ray_worker.print_worker_logs
    except (ImportError, AttributeError):
        return None
    return ray_logging, ray_worker


def _filtered(batch: dict) -> dict | None:
    if _verbose:
        return batch
    if any(a in str(batch.get("actor_name") or "") for a in HARMLESS_ACTORS):
        return None
    # Blank worker lines carry nothing but the "(Worker pid=...)" prefix Ray puts before them.
    state = _drop_state.setdefault(str(batch.get("pid")), {})
    lines = [line for line in filter_lines(batch.get("lines", []), state) if line.strip()]
    return {**batch, "lines": lines} if lines else None


def attach_worker_log_filter() -> None:
    """After ray.init: route worker logs through the filter and note when each batch arrives."""
    plumbing = _ray_logging()
    filter_ray_loggers()  # Ray Data and Train configure their loggers on import
    if plumbing is None:
        return
    ray_logging, ray_worker = plumbing
    dispatcher = ray_logging.global_worker_stdstream_dispatcher
    if not any(name == _HANDLER for name, _ in dispatcher.handlers):
        return  # log_to_driver=False: nothing is streamed
    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)

    def handle(batch: dict) -> None:
        global _last_arrival
        _last_arrival = time.monotonic()
        try:
            kept = _filtered(batch)
        except Exception:  # a filter bug must never stop the log stream: print the batch as it came
            kept = batch
        if kept is not None:
            ray_worker.print_to_stdstream(kept, ignore_prefix=ignore_prefix)

    dispatcher.remove_handler(_HANDLER)
    dispatcher.add_handler(_HANDLER, handle)


def drain_worker_logs(quiet_s: float = 1.5, timeout_s: float = 15.0) -> None:
    """Wait until no worker log has arrived for ``quiet_s`` (at most ``timeout_s``), print what Ray's
    deduplicator still holds, and stop the stream: nothing from a worker is printed after this."""
    plumbing = _ray_logging()
    if plumbing is None:
        return
    ray_logging, ray_worker = plumbing
    start = time.monotonic()
    while time.monotonic() < start + timeout_s and time.monotonic() - max(_last_arrival, start) < quiet_s:
        time.sleep(0.1)
    ray_logging.global_worker_stdstream_dispatcher.remove_handler(_HANDLER)
    for dedup, sink in (
        (ray_logging.stdout_deduplicator, sys.stdout),
        (ray_logging.stderr_deduplicator, sys.stderr),
    ):
        for batch in dedup.flush():
            kept = _filtered(batch)
            if kept is not None:
                ray_worker.print_worker_logs(kept, sink)
    sys.stdout.flush()
    sys.stderr.flush()


def finish_ray_output(shutdown: bool = True) -> None:
    """Before a job prints its result: drain and stop worker logs; ``shutdown`` also disconnects from
    (or stops the local) Ray, whose exit would otherwise print after the result."""
    import ray

    if not ray.is_initialized():
        return
    drain_worker_logs()
    if shutdown:
        ray.shutdown()
