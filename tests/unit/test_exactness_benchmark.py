"""The exactness benchmark (benchmarks/exactness/): a tiny run writes the documented JSON and the PNG; the
command line is the Config's fields; the EM reference recovers a known mixture; the settings rows and step
costs are recorded."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields, replace
from pathlib import Path

import pytest
import torch

from ambient.core import ConsistencySettings, GaussianMixture
from benchmarks.exactness import cli, config, data, model, reference, report, run, train
from tests.helpers.services import load_script

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_tiny_run_writes_documented_json_and_plot(tmp_path: Path) -> None:
    out_json = tmp_path / "nested" / "exactness.json"
    out_png = tmp_path / "nested" / "exactness.png"
    argv = ["--quick", "--steps", "60", "--dim", "2", "--components", "4", "--sigma-n", "0.5", "--seed", "3"]
    cli.main([*argv, "--json", str(out_json), "--plot", str(out_png)])

    payload = json.loads(out_json.read_text())
    assert set(payload) == {"floor", "results", "config"}
    assert list(payload["floor"]) == ["0.5"]
    assert math.isfinite(payload["floor"]["0.5"]) and payload["floor"]["0.5"] > 0
    keys = {
        "dim", "components", "sigma_n", "variant", "sw2",
        "denoiser_error_below", "denoiser_error_above", "seconds", "label",
        "step_cpu_seconds", "step_wall_seconds", "validation_loss", "settings", "step_cost_interleaved",
    }  # fmt: skip
    assert [r["variant"] for r in payload["results"]] == ["oracle", "naive", "early_stop", "consistency"]
    for row in payload["results"]:
        assert set(row) == keys
        assert (row["dim"], row["components"], row["sigma_n"]) == (2, 4, 0.5)
        assert row["label"] == row["variant"]
        assert (row["settings"] is None) == (row["variant"] != "consistency")
        assert (row["step_cost_interleaved"] is None) == (row["variant"] != "consistency")
        for key in (
            "sw2", "denoiser_error_below", "denoiser_error_above", "seconds",
            "step_cpu_seconds", "step_wall_seconds", "validation_loss",
        ):  # fmt: skip
            assert math.isfinite(row[key]) and row[key] >= 0, (row["variant"], key, row[key])
    assert out_png.stat().st_size > 1000
    assert not list(out_json.parent.glob(".*.tmp")), "temporary files left behind"


def _true_mixture() -> reference.FullMixture:
    """Three well-separated anisotropic components in R^2 (eigenvalues 0.06 and 0.03, rotated)."""
    angles = torch.tensor([0.0, 0.6, -1.1], dtype=torch.float64)
    rot = torch.stack(
        [torch.stack([angles.cos(), -angles.sin()], -1), torch.stack([angles.sin(), angles.cos()], -1)], -1
    ).transpose(1, 2)  # (K, 2, 2), columns = eigenvectors
    lam = torch.tensor([[0.06, 0.03]] * 3, dtype=torch.float64)
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    return reference.FullMixture(weights, means, lam, rot)


def _max_errors(truth, fitted) -> tuple[float, float, float]:
    """Largest mean, covariance-entry and weight errors after matching each true component to the
    nearest fitted mean."""
    match = torch.cdist(truth.means, fitted.means).argmin(dim=1)
    assert sorted(match.tolist()) == list(range(truth.means.shape[0])), "components not matched one-to-one"
    mean_err = float((truth.means - fitted.means[match]).abs().max())
    cov_err = float((truth.covariances - fitted.covariances[match]).abs().max())
    weight_err = float((truth.weights - fitted.weights[match]).abs().max())
    return mean_err, cov_err, weight_err


@pytest.mark.timeout(120)
def test_em_reference_recovers_a_known_mixture_and_rejects_wrong_subtractions() -> None:
    truth = _true_mixture()
    sigma_n = 0.3
    gen = torch.Generator().manual_seed(0)
    y = truth.sample(20_000, gen) + sigma_n * torch.randn(20_000, 2, generator=gen, dtype=torch.float64)
    noisy = reference.fit_em(y.float(), 3, sigma_n**2, restarts=2, seed=1)
    assert float(noisy.eigvals.min()) >= sigma_n**2 - 1e-12, "the constraint cov >= sigma_n^2 I"
    clean = reference.deconvolve(noisy, sigma_n)

    mean_err, cov_err, weight_err = _max_errors(truth, clean)
    assert mean_err < 0.03 and cov_err < 0.012 and weight_err < 0.02, (mean_err, cov_err, weight_err)
    # The tolerance tells a wrong subtraction apart: none at all (the noisy fit) or twice sigma_n^2.
    assert _max_errors(truth, noisy)[1] > 0.05
    assert _max_errors(truth, reference.deconvolve(clean, sigma_n))[1] > 0.025


@pytest.mark.timeout(60)
def test_em_fit_respects_the_variance_floor() -> None:
    """Data tighter than the floor: every fitted eigenvalue sits at the floor, not below it."""
    gen = torch.Generator().manual_seed(2)
    y = torch.cat([torch.randn(500, 2, generator=gen) * 0.05, torch.randn(500, 2, generator=gen) * 0.05 + 4])
    fitted = reference.fit_em(y, 2, 0.04, restarts=1, seed=0)
    assert torch.allclose(fitted.eigvals, torch.full_like(fitted.eigvals, 0.04))


def test_full_mixture_posterior_mean_matches_the_isotropic_closed_form() -> None:
    gm = GaussianMixture.random(3, 5, std=0.2, seed=4)
    full = reference.FullMixture(
        gm.weights,
        gm.means,
        (gm.stds**2)[:, None].expand(5, 3).clone(),
        torch.eye(3).double().expand(5, 3, 3),
    )
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    sigma = torch.rand(64, generator=gen, dtype=torch.float64) + 0.1
    torch.testing.assert_close(full.posterior_mean(x, sigma), gm.posterior_mean(x, sigma))
    wrong = reference.FullMixture(gm.weights, gm.means, full.eigvals * 2, full.eigvecs)
    assert not torch.allclose(wrong.posterior_mean(x, sigma), gm.posterior_mean(x, sigma), atol=1e-3)


@pytest.mark.timeout(120)
def test_settings_rows_and_em_reference_run_with_step_costs() -> None:
    torch.set_num_threads(1)
    cfg = replace(
        config.Config(components=4, sigma_ns=(0.5,), seed=3),
        train_size=2000, steps=20, eval_samples=1000, sample_steps=8, projections=32, error_points=200,
        error_levels=2, floor_pairs=1, validation_size=500, em_restarts=1, em_iters=50, cost_rounds=2,
        variants=("early_stop", "em_reference"), settings_rows=("shipped", "every=4"),
    )  # fmt: skip
    seen: list[int] = []
    _, rows = run.run_benchmark(cfg, lambda floors, outcomes: seen.append(len(outcomes)))
    assert seen == [1, 2, 3, 4, 5], "progress after every row"
    labels = [r.label for r in rows]
    assert labels == ["oracle", "early_stop", "em_reference", "consistency[shipped]", "consistency[every=4]"]
    by = dict(zip(labels, rows, strict=True))
    assert by["consistency[shipped]"].settings == asdict(config.SHIPPED)
    assert by["consistency[every=4]"].settings["every"] == 4
    assert by["em_reference"].step_cpu_seconds is None and by["em_reference"].settings is None
    assert by["early_stop"].step_cost_interleaved is None
    assert by["consistency[shipped]"].step_cost_interleaved > 0
    assert report.step_cost_ratio(by["early_stop"], rows) == 1.0
    assert report.step_cost_ratio(by["em_reference"], rows) is None
    for row in rows:
        assert math.isfinite(row.sw2) and math.isfinite(row.validation_loss), row.label
        if row.variant != "em_reference":
            assert row.step_cpu_seconds > 0, row.label


def test_each_one_knob_row_moves_exactly_its_knob() -> None:
    for name, settings in config.SETTINGS_ROWS.items():
        if "=" in name:  # one-knob moves differ from the shipped defaults in exactly the named knob
            knob = name.split("=")[0]
            diff = [k for k, v in asdict(settings).items() if v != asdict(config.SHIPPED)[k]]
            assert diff == [knob], (name, diff)


def _load_settings_report():
    return load_script(ROOT / "benchmarks" / "exactness_settings.py", "exactness_settings_report")


def test_spearman_and_merge_of_settings_parts() -> None:
    merger = _load_settings_report()
    assert merger.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert merger.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert merger.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert merger.spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)

    def row(variant: str, label: str, sw2: float, cpu: float | None, val: float | None = 1.0) -> dict:
        return {
            "sigma_n": 0.5, "variant": variant, "label": label, "sw2": sw2, "step_cpu_seconds": cpu,
            "validation_loss": val, "denoiser_error_below": 0.0, "denoiser_error_above": 0.0,
        }  # fmt: skip

    # Two processes on machines of different speed: each row's cost is against its own plain step.
    a = {"floor": {"0.5": 0.01}, "results": [row("oracle", "oracle", 0.02, 1.0), row("early_stop", "early_stop", 0.1, 2.0),
         row("em_reference", "em_reference", 0.04, None), row("consistency", "consistency[x]", 0.08, 3.0, 2.0)]}  # fmt: skip
    b = {"floor": {"0.5": 0.01}, "results": [row("oracle", "oracle", 0.02, 1.0), row("early_stop", "early_stop", 0.1, 4.0),
         row("consistency", "consistency[y]", 0.06, 10.0, 3.0)]}  # fmt: skip
    merged = merger.merge([a, b])
    by = {r["label"]: r for r in merged["rows"]}
    assert by["consistency[x]"]["step_cost_training"] == pytest.approx(1.5)
    assert by["consistency[y]"]["step_cost_training"] == pytest.approx(2.5)
    assert by["consistency[x]"]["step_cost"] is None and by["early_stop"]["step_cost"] == 1.0
    assert by["consistency[y]"]["sw2_over_oracle"] == pytest.approx(3.0)
    assert by["consistency[y]"]["sw2_over_em_reference"] == pytest.approx(1.5)
    assert by["em_reference"]["step_cost"] is None and by["em_reference"]["step_cost_training"] is None
    # Interleaved costs come from the row itself or from a --cost-only input.
    b["results"][2]["step_cost_interleaved"] = 2.0
    cost_only = {"cost_only": [{"sigma_n": 0.5, "label": "consistency[x]", "step_cost_interleaved": 1.4}]}
    by = {r["label"]: r for r in merger.merge([a, b, cost_only])["rows"]}
    assert (by["consistency[x]"]["step_cost"], by["consistency[y]"]["step_cost"]) == (1.4, 2.0)
    b["results"][0]["sw2"] = 0.03
    with pytest.raises(ValueError, match="oracle differs"):
        merger.merge([a, b])


@pytest.mark.timeout(120)
def test_interleaved_step_cost_orders_cheap_and_expensive_settings() -> None:
    """The recipe (4-step chains on every row, every step) costs clearly more than every=4 with a quarter
    of the rows; both cost more than the plain step."""
    torch.set_num_threads(1)
    cfg = replace(config.Config(), batch=256)
    y = torch.randn(2000, 2)
    cheap = train.interleaved_step_cost(y, 0.5, config.SETTINGS_ROWS["every=4"], cfg, rounds=5)
    dear = train.interleaved_step_cost(y, 0.5, config.RECIPE, cfg, rounds=5)
    assert 1.0 < cheap < 2.0 < dear, (cheap, dear)


def test_levers_default_to_the_published_network_and_act_as_documented() -> None:
    """The levers: the default MLP is the published one; the ramp, the level weights and the anchors
    below sigma_n do what Config says."""
    cfg = config.Config()
    torch.manual_seed(0)
    net = model.make_denoiser(cfg).net
    # The published network: Fourier features of c_noise at pi 2^k / 4 beside the input, 3 x 128, SiLU.
    x, c = torch.randn(5, 2), torch.randn(5)
    angles = c[:, None] * torch.pi * 2.0 ** torch.arange(8) / 4
    h = torch.cat([x, angles.sin(), angles.cos()], dim=1)
    for layer in net.hidden_layers:
        assert layer.out_features == 128
        h = torch.nn.functional.silu(layer(h))
    assert torch.allclose(net(x, c), net.out(h))
    assert len(net.hidden_layers) == 3
    for embedding, first_in in (("fourier_every_layer", 2 + 16), ("smooth", 2 + 7)):
        wide = model.MLP(2, 64, 4, 8, embedding)
        assert wide.hidden_layers[0].in_features == first_in and len(wide.hidden_layers) == 4
        assert wide(x, c).shape == (5, 2)
    # Curriculum: a linear ramp to the full weight at weight_ramp * steps, then flat.
    ramp = replace(cfg, steps=100, weight_ramp=0.5)
    scales = [train.consistency_scale(s, ramp) for s in (0, 24, 49, 99)]
    assert scales == pytest.approx([0.02, 0.5, 1.0, 1.0])
    assert train.consistency_scale(0, cfg) == 1.0
    # Level weights: mean 1, decreasing in sigma_t for p > 0, ones for clean rows.
    st, sn = torch.tensor([0.2, 0.4, 0.8]), torch.full((3,), 0.2)
    w = train.level_weights(st, sn, 1.0)
    assert (
        w.mean() == pytest.approx(1.0)
        and w[0] / w[1] == pytest.approx(2.0)
        and w[1] / w[2] == pytest.approx(2.0)
    )
    assert torch.equal(train.level_weights(st, torch.zeros(3), 1.0), torch.ones(3))
    # Anchors below sigma_n: with the exact denoiser (zero-mean isotropic Gaussian of variance v), the
    # sampler started at y ~ N(0, v + sigma_n^2) lands at x_t ~ N(0, v + t^2), t in (sigma_n / 20, sigma_n).
    v, sigma_n, n = 0.25, 0.5, 50_000
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(n, 1, generator=gen) * math.sqrt(v + sigma_n**2)

    def exact(x, sigma):
        return x * v / (v + torch.as_tensor(sigma).reshape(-1, 1) ** 2)

    # Many small steps: the posterior sampler is exact in the limit. (With few large steps it draws x_t
    # too concentrated, because each step plugs in the point estimate x0_hat: the bias
    # docs/benchmarks.md measures for the consistency chains; 3 steps give variance ratio about 0.78.)
    settings = ConsistencySettings(steps=64, s_min=0.002)
    x_t, t = train.below_anchors(exact, y, torch.full((n,), sigma_n), settings, gen)
    assert bool((t < sigma_n).all()) and bool((t >= sigma_n / 20 - 1e-6).all())
    z = x_t[:, 0] / (v + t**2).sqrt()
    assert float(z.var()) == pytest.approx(1.0, abs=0.03) and abs(float(z.mean())) < 0.02


def test_per_component_stds_give_a_second_data_shape_with_the_same_means() -> None:
    published = cli.config_from_args(cli.parse_args(["--json", "x.json", "--components", "4"]))
    assert published.std == 0.1  # one value: the published mixture, unchanged
    shaped = cli.config_from_args(
        cli.parse_args(["--json", "x.json", "--components", "4", "--std", "0.05", "0.1", "0.15", "0.2"])
    )
    gm, base = data.make_mixture(shaped), data.make_mixture(published)
    assert torch.equal(gm.means, base.means)
    assert gm.stds.tolist() == [0.05, 0.1, 0.15, 0.2]
    assert data.largest_std(shaped) == 0.2
    wrong = cli.config_from_args(
        cli.parse_args(["--json", "x.json", "--components", "4", "--std", "0.1", "0.2"])
    )
    with pytest.raises(ValueError, match="--std: got 2 values for 4 components"):
        data.make_mixture(wrong)


def test_command_line_is_generated_from_the_config_fields() -> None:
    """Every Config field but the nested consistency settings is an option whose default is the field's;
    --quick applies first and options given explicitly win; the knobs move the chosen base settings."""
    flags = {flag for action in cli.build_parser()._actions for flag in action.option_strings}
    for f in fields(config.Config):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert (flag in flags) == (f.name != "consistency"), f.name
    assert cli.config_from_args(cli.parse_args(["--json", "x.json"])) == config.Config()
    quick = cli.config_from_args(cli.parse_args(["--json", "x.json", "--quick", "--steps", "60"]))
    assert quick == replace(config.Config(), **{**config.QUICK, "steps": 60})
    argv = ["--json", "x.json", "--sigma-n", "0.5", "--validation-levels", "2", "--std", "0.2", "0.3"]
    argv += [
        "--variants",
        "early_stop",
        "--consistency-base",
        "shipped",
        "--lam",
        "2",
        "--no-stop-grad-anchor",
    ]
    cfg = cli.config_from_args(cli.parse_args([*argv, "--components", "2"]))
    assert (cfg.sigma_ns, cfg.validation_levels, cfg.std, cfg.variants) == (
        (0.5,),
        (2.0,),
        (0.2, 0.3),
        ("early_stop",),
    )
    assert cfg.consistency == replace(config.SHIPPED, weight=2.0, stop_grad_anchor=False)
    with pytest.raises(SystemExit):
        cli.parse_args(["--json", "x.json", "--variants", "oracle"])
