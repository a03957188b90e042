"""The unit tier starts no Ray, server, subprocess or package install: what needs one is in
tests/integration. A unit test that reaches ``ray.init`` (directly or through Ray Data's auto-init)
fails at once, naming the rule, instead of starting a cluster."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("a unit test started Ray: move it to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
