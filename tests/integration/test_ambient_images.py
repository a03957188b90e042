"""benchmarks/ambient_images.py end to end with tiny settings: the plumbing and the report, not the numbers.

Two cells, one per study (the suite's budget; the variants' training and sampling switches are the
fine-tune's own, tested in test_finetune.py): each really runs prepare_shards -> run_finetune (Ray Train +
DeepSpeed) -> the audits, on the untrained tiny model. What the numbers say needs the base model and the
full budgets (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.helpers.services import load_script

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ambient_images.py"
pytestmark = pytest.mark.integration

TINY = {
    "sigma_ns": "0.5",
    "train_count": 32,
    "heldout_count": 8,
    "quality_steps": 2,
    "memo_count": 16,
    "memo_steps": 2,
    "quality_variants": "consistency",  # the noisy shards, the ambient and consistency losses, full sampling
    "memo_variants": "",  # the memorization study's clean cell only
    "batch_size": 8,
    "sample_steps": 2,
    "attack_items": 4,
    "memo_generations": 4,
    "quality_generations": 2,
    "error_items": 4,
    "error_points": 1,
    "threads": 1,
}
CELLS = ["quality-consistency-s0.5", "memorization-clean"]
METRICS = {
    "fd_builtin", "adherence", "adherence_shape", "adherence_colors", "heldout_tweedie_similarity",
    "tweedie_similarity", "tweedie_psnr", "sample_similarity", "generation_mean_max_similarity",
    "generation_near_duplicates", "generation_above_0.9", "vae_ceiling_similarity",
}  # fmt: skip


def _load_benchmark():
    return load_script(SCRIPT, "ambient_images_benchmark")


def _tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in [*markdown.splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append([r for r in current if not all(set(c) <= {"-"} for c in r)])
            current = []
    return tables


@pytest.fixture(scope="module")
def study(tmp_path_factory, ray_session) -> dict:
    # The session's cluster first (this module runs before the other Ray tests, and a cluster the
    # benchmark started would lack the session's metrics port): the benchmark joins a running one.
    from ambient.models.vae_pretrain import ensure_untrained_model

    bench = _load_benchmark()
    root = tmp_path_factory.mktemp("ambient-images")
    docs = root / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nhand-written text\n")
    argv = [
        "--quick",
        "--base-model", str(ensure_untrained_model()),
        "--results", str(root / "results"),
        "--work", str(root / "work"),
        "--docs", str(docs),
        "--ray-start-attempts", "10",
        *[f"--set={k}={v}" for k, v in TINY.items()],
    ]  # fmt: skip
    payload = bench.main(argv)
    return {
        "bench": bench,
        "argv": argv,
        "payload": payload,
        "results": root / "results",
        "docs": docs,
    }


def test_every_cell_has_every_metric(study):
    payload = study["payload"]
    assert [c["name"] for c in payload["cells"]] == CELLS
    for cell in payload["cells"]:
        m = cell["metrics"]
        assert set(m) >= METRICS, f"{cell['name']} lacks {METRICS - set(m)}"
        assert all(isinstance(m[k], float) and math.isfinite(m[k]) for k in METRICS), cell["name"]
        bands = m["denoiser_error"]
        assert list(bands) == ["0.5"], cell["name"]
        assert math.isfinite(bands["0.5"]["below"]) and math.isfinite(bands["0.5"]["above"])
        assert cell["steps"] == 2 and set(cell["seconds"]) == {"prepare", "finetune", "evaluate"}
    by = {c["name"]: c for c in payload["cells"]}
    # What the model was trained at and how it is sampled, as the export says.
    assert by["quality-consistency-s0.5"]["trained_sigma_n"] == pytest.approx(0.5)
    assert by["quality-consistency-s0.5"]["sampling_mode"] == "full"
    assert by["memorization-clean"]["trained_sigma_n"] == 0.0
    assert by["memorization-clean"]["metrics"]["audited_items"] == 16
    assert by["quality-consistency-s0.5"]["metrics"]["audited_items"] == 4


def test_results_files_and_tables_parse(study):
    results = study["results"]
    for name in (
        "ambient_images.json",
        "ambient_images.md",
        "quality_vs_sigma.png",
        "memorization_vs_quality.png",
    ):
        assert (results / name).is_file() and (results / name).stat().st_size > 0, name
    assert sorted(p.stem for p in (results / "cells").glob("*.json")) == sorted(CELLS)
    # each cell's audit pictures kept beside its JSON (a report recomposes them without the work folder)
    kept = sorted(p.name for p in (results / "cells").glob("*.png"))
    assert kept == sorted(f"{c}-{kind}.png" for c in CELLS for kind in ("attack", "generations"))
    assert json.loads((results / "ambient_images.json").read_text())["cells"] == study["payload"]["cells"]

    tables = _tables((results / "ambient_images.md").read_text())
    assert len(tables) == 2, "one quality table (one sigma_n) and the memorization table"
    quality, memo = tables
    assert [r[0] for r in quality[1:]] == ["consistency"]
    assert [r[0] for r in memo[1:]] == ["clean"]
    for table in tables:
        assert all(len(r) == len(table[0]) for r in table), "ragged table"
        for row in table[1:]:
            assert "-" not in row[2:], f"a metric is missing in {row}"
            float(row[2].split()[0])  # metric columns hold numbers
            float(row[-1])
    text = (results / "ambient_images.md").read_text()
    assert text.count("**holds**") + text.count("**does not hold**") == 3


def test_rerun_skips_finished_cells_and_report_rebuilds_the_docs(study):
    bench, results, docs = study["bench"], study["results"], study["docs"]
    before = {p.name: p.read_text() for p in (results / "cells").glob("*.json")}
    again = bench.main(study["argv"])
    # A cell that ran again would be rewritten (its timings and run differ): the files are untouched.
    assert {p.name: p.read_text() for p in (results / "cells").glob("*.json")} == before
    assert again["cells"] == study["payload"]["cells"]

    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text\n")
    assert text.count(bench.DOCS_BEGIN) == 1 and text.count(bench.DOCS_END) == 1
    (results / "ambient_images.md").unlink()
    bench.main(["--report", "--results", str(results), "--docs", str(docs)])
    assert docs.read_text() == text  # regenerated from the JSON alone, in place
    assert (results / "ambient_images.md").is_file()
