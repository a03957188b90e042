"""The image study's bookkeeping (benchmarks/ambient_images.py) without Ray: cell keys, the ordering
check, the docs block. The end-to-end run is tests/integration/test_ambient_images.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.helpers.services import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ambient_images.py"


def _bench():
    return load_script(SCRIPT, "ambient_images_units")


bench = _bench()


def test_cells_cover_both_studies_and_every_variant():
    names = [c.name for c in bench.study_cells(bench.FULL, bench.STUDIES)]
    assert len(names) == 14 and len(set(names)) == 14
    assert names[:4] == [
        "quality-clean",
        "quality-naive-s0.25",
        "quality-early_stop-s0.25",
        "quality-consistency-s0.25",
    ]
    assert names[-4:] == [
        "memorization-clean",
        "memorization-consistency-s0.25",
        "memorization-consistency-s0.5",
        "memorization-consistency-s1",
    ]


def test_a_cell_key_changes_only_with_what_the_cell_depends_on():
    quality, memo = bench.Cell("quality", "naive", 0.5), bench.Cell("memorization", "clean", 0.0)
    base = bench.FULL

    def keys(settings, model="m"):
        return bench.cell_key(quality, settings, model), bench.cell_key(memo, settings, model)

    q, m = keys(base)
    assert keys(replace(base, memo_steps=1500)) == (q, keys(replace(base, memo_steps=1500))[1])
    assert keys(replace(base, memo_steps=1500))[1] != m
    assert keys(replace(base, quality_steps=10))[1] == m and keys(replace(base, quality_steps=10))[0] != q
    assert keys(replace(base, threads=1, sigma_ns=(0.5,))) == (q, m)
    lr_q, lr_m = keys(replace(base, lr=1e-3))
    assert lr_q != q and lr_m != m
    assert keys(base, model="other")[0] != q


def test_ordering_line_says_whether_the_papers_order_holds():
    holds = bench.ordering_line(
        [("clean", 1.0), ("naive", 4.0), ("early_stop", 3.0), ("consistency", 2.0)], "FD"
    )
    assert holds.endswith("**holds**") and "clean 1.000 <= consistency 2.000" in holds
    broken = bench.ordering_line([("clean", 1.0), ("naive", 2.0), ("early_stop", 3.0)], "FD")
    assert broken.endswith("**does not hold**")
    higher = bench.ordering_line([("clean", 0.9), ("naive", 0.5)], "adherence", lower_is_better=False)
    assert higher.endswith("**holds**") and ">=" in higher


def test_the_docs_block_is_replaced_in_place(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# B\n\nbefore\n\n{bench.DOCS_BEGIN}\nold\n{bench.DOCS_END}\n\nafter\n")
    bench.replace_docs_block(docs, "new table")
    assert docs.read_text() == f"# B\n\nbefore\n\n{bench.DOCS_BEGIN}\nnew table\n{bench.DOCS_END}\n\nafter\n"
    plain = tmp_path / "plain.md"
    plain.write_text("# P\n")
    bench.replace_docs_block(plain, "t")
    assert plain.read_text() == f"# P\n\n{bench.DOCS_BEGIN}\nt\n{bench.DOCS_END}\n"


def test_settings_overrides_parse_lists_and_numbers():
    s = bench.apply_settings(bench.FULL, ["sigma_ns=0.5,1", "memo_steps=9", "memo_variants=", "lr=0.001"])
    assert s.sigma_ns == (0.5, 1.0) and s.memo_steps == 9 and s.memo_variants == () and s.lr == 1e-3
    with pytest.raises(SystemExit, match="quality_variants: not a variant: cons"):
        bench.apply_settings(bench.FULL, ["quality_variants=cons"])
    with pytest.raises(SystemExit, match="memo_variants: not a variant: clean"):
        bench.apply_settings(bench.FULL, ["memo_variants=clean"])


def test_one_quality_variant_runs_alone_with_the_same_key():
    alone = bench.apply_settings(bench.FULL, ["quality_variants=consistency", "sigma_ns=0.5"])
    cells = bench.study_cells(alone, ("quality",))
    assert [c.name for c in cells] == ["quality-consistency-s0.5"]
    assert bench.cell_key(cells[0], alone, "m") == bench.cell_key(cells[0], bench.FULL, "m")


def test_composed_pictures_put_each_cells_audit_picture_side_by_side(tmp_path, capsys):
    from PIL import Image

    def cell(name, study, variant, sigma_n, folder):
        return {
            "name": name,
            "study": study,
            "variant": variant,
            "sigma_n": sigma_n,
            "audit_dir": str(folder),
        }

    colours = {"quality-clean": "red", "quality-naive-s1": "blue", "memorization-clean": "green"}
    for name in colours:
        (tmp_path / name).mkdir()
    # top matches: generations on the left, nearest training image on the right
    for name in ("quality-clean", "quality-naive-s1"):
        picture = Image.new("RGB", (64, 96), "white")
        picture.paste(Image.new("RGB", (32, 96), colours[name]), (0, 0))
        picture.save(tmp_path / name / f"top_matches_{name}.png")
    # two attack grids: the one at the highest timestep is used
    Image.new("RGB", (80, 40), "green").save(
        tmp_path / "memorization-clean" / "attack_memorization-clean_t900.png"
    )
    Image.new("RGB", (80, 40), "black").save(
        tmp_path / "memorization-clean" / "attack_memorization-clean_t300.png"
    )
    cells = [
        cell("quality-clean", "quality", "clean", 0.0, tmp_path / "quality-clean"),
        cell("quality-naive-s1", "quality", "naive", 1.0, tmp_path / "quality-naive-s1"),
        cell("quality-consistency-s1", "quality", "consistency", 1.0, tmp_path / "gone"),
        cell("memorization-clean", "memorization", "clean", 0.0, tmp_path / "memorization-clean"),
    ]
    results = tmp_path / "results"
    written = bench.compose_pictures(cells, results, None)
    assert written == {"generations": bench.GENERATIONS_PNG, "attacks": bench.ATTACKS_PNG}
    assert "no audit picture for quality-consistency-s1" in capsys.readouterr().out
    generations = Image.open(results / bench.GENERATIONS_PNG).convert("RGB")
    # two 32-wide left halves (labels are wider: each column takes max(image, label) width) under a header
    assert generations.height == 22 + 96
    assert generations.getpixel((5, 60)) == (255, 0, 0)  # clean's generations
    second = next(x for x in range(33, generations.width) if generations.getpixel((x, 60)) == (0, 0, 255))
    assert second > 32  # naive's generations, right of clean's, and never the white right halves
    assert all(generations.getpixel((x, 60)) != (255, 255, 255) for x in range(second, second + 32))
    attacks = Image.open(results / bench.ATTACKS_PNG).convert("RGB")
    assert attacks.getpixel((10, 40)) == (0, 128, 0)  # the t900 grid, not the t300 one


def test_kept_pictures_recompose_after_the_audit_folders_are_gone(tmp_path):
    from PIL import Image

    folder = tmp_path / "audits" / "memorization-clean"
    folder.mkdir(parents=True)
    Image.new("RGB", (80, 40), "green").save(folder / "attack_memorization-clean_t900.png")
    Image.new("RGB", (64, 40), "red").save(folder / "top_matches_memorization-clean.png")
    cell = {
        "name": "memorization-clean",
        "study": "memorization",
        "variant": "clean",
        "sigma_n": 0.0,
        "audit_dir": str(folder),
    }
    results = tmp_path / "results"
    bench.keep_pictures(results, cell)
    assert sorted(p.name for p in (results / "cells").iterdir()) == [
        "memorization-clean-attack.png",
        "memorization-clean-generations.png",
    ]
    for picture in folder.iterdir():
        picture.unlink()
    folder.rmdir()
    assert bench.compose_pictures([cell], results, None) == {"attacks": bench.ATTACKS_PNG}
    attacks = Image.open(results / bench.ATTACKS_PNG).convert("RGB")
    assert attacks.getpixel((10, 40)) == (0, 128, 0)
