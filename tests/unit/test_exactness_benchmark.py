"""Smoke test of benchmarks/exactness.py: a tiny run writes the documented JSON and the PNG."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "exactness.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("exactness_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_tiny_run_writes_documented_json_and_plot(tmp_path: Path) -> None:
    bench = _load_benchmark()
    out_json = tmp_path / "nested" / "exactness.json"
    out_png = tmp_path / "nested" / "exactness.png"
    argv = ["--quick", "--steps", "60", "--dim", "2", "--components", "4", "--sigma-n", "0.5", "--seed", "3"]
    bench.main([*argv, "--json", str(out_json), "--plot", str(out_png)])

    payload = json.loads(out_json.read_text())
    assert set(payload) == {"floor", "results"}
    assert list(payload["floor"]) == ["0.5"]
    assert math.isfinite(payload["floor"]["0.5"]) and payload["floor"]["0.5"] > 0
    keys = {
        "dim", "components", "sigma_n", "variant", "sw2",
        "denoiser_error_below", "denoiser_error_above", "seconds",
    }  # fmt: skip
    assert [r["variant"] for r in payload["results"]] == ["oracle", "naive", "early_stop", "consistency"]
    for row in payload["results"]:
        assert set(row) == keys
        assert (row["dim"], row["components"], row["sigma_n"]) == (2, 4, 0.5)
        for key in ("sw2", "denoiser_error_below", "denoiser_error_above", "seconds"):
            assert math.isfinite(row[key]) and row[key] >= 0, (row["variant"], key, row[key])
    assert out_png.stat().st_size > 1000
    assert not list(out_json.parent.glob(".*.tmp")), "temporary files left behind"
