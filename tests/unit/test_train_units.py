"""Fast checks of the training pieces that need no cluster: config rules, DeepSpeed config, EMA, sigmas."""

import pytest
import torch

from ambient.config import ConfigError, load_config
from ambient.core import sdxl_alphas_cumprod, ve_sigmas
from ambient.train.config import FinetuneConfig
from ambient.train.deepspeed_config import build_deepspeed_config, frozen_dtype
from ambient.train.ema import EMA
from ambient.train.objective import draw_sigma_t


def cfg_with(*overrides: str) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, overrides)


def test_deepspeed_config_follows_the_job_config():
    ds = build_deepspeed_config(
        cfg_with(
            "deepspeed.zero_stage=3",
            "deepspeed.precision=bf16",
            "optim.grad_accum=4",
            "train.batch_size=2",
            "optim.schedule=cosine",
            "train.max_steps=100",
        )
    )
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 4
    assert ds["scheduler"]["type"] == "WarmupCosineLR" and ds["scheduler"]["params"]["total_num_steps"] == 100
    assert ds["optimizer"]["params"]["torch_adam"] is True
    off = build_deepspeed_config(
        cfg_with(
            "deepspeed.offload_optimizer=cpu",
            "optim.grad_clip=0",
            "deepspeed.extra={zero_optimization: {overlap_comm: true}}",
        )
    )
    assert off["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "torch_adam" not in off["optimizer"]["params"]  # ZeRO-Offload uses DeepSpeed's CPU Adam
    assert "gradient_clipping" not in off
    assert off["zero_optimization"]["overlap_comm"] is True and off["zero_optimization"]["stage"] == 2


def _learning_rates(ds: dict, steps: int) -> list[float]:
    """The rates DeepSpeed's own scheduler (the one the config names) gives over the first steps."""
    from deepspeed.runtime import lr_schedules

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ds["optimizer"]["params"]["lr"])
    scheduler = getattr(lr_schedules, ds["scheduler"]["type"])(optimizer, **ds["scheduler"]["params"])
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    return rates


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_zero_warmup_trains_at_the_full_rate_from_the_first_step(schedule):
    for max_steps in (100, 1):  # a 1-step run has no room for a warm-up either
        ds = build_deepspeed_config(
            cfg_with(f"optim.schedule={schedule}", "optim.warmup_steps=0", f"train.max_steps={max_steps}")
        )
        rates = _learning_rates(ds, 2)
        # DeepSpeed's WarmupCosineLR holds the optimizer at 0 until its first step, warm-up or not
        assert rates[0 if schedule != "cosine" else 1] == pytest.approx(1e-4), (schedule, max_steps, rates)
    warm = _learning_rates(
        build_deepspeed_config(cfg_with(f"optim.schedule={schedule}", "optim.warmup_steps=10")), 12
    )
    assert warm[0] < 1e-5 and warm[0] < warm[5] < warm[10], schedule  # a real warm-up still ramps up


@pytest.mark.parametrize(
    "overrides,message",
    [
        (("deepspeed.offload_param=cpu",), "offload_param needs deepspeed.zero_stage = 3"),
        (("deepspeed.precision=fp16",), "fp16 needs scaling.use_gpu"),
        (("deepspeed.zero_stage=3", "train.ema_decay=0.999"), "ema_decay is not supported"),
        (("deepspeed.zero_stage=4",), "deepspeed.zero_stage"),
        (("loss.weighting=l1",), "loss.weighting"),
        (("run.name=has space",), "run.name"),
        (("loss.data_noise=ignored", "loss.sigma_train=1.0"), "cannot take loss.sigma_train"),
        (("loss.data_noise=unknown",), "loss.data_noise"),
    ],
)
def test_invalid_combinations_are_rejected_with_the_field_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg_with(*overrides)


def test_ema_tracks_the_moving_average_and_restores_from_state():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    ema.update(net)
    assert ema.shadow["weight"][0, 0].item() == pytest.approx(1 - 0.9**2)
    restored = EMA(net, decay=0.9, state=ema.shadow)
    restored.copy_to(net)
    assert net.weight[0, 0].item() == pytest.approx(0.19)
    with pytest.raises(ValueError, match="lacks 1 parameters"):
        EMA(net, decay=0.9, state={})


@pytest.mark.parametrize("sampling", ["timesteps", "lognormal", "log_uniform"])
def test_training_levels_are_above_each_rows_data_level(sampling):
    cfg = cfg_with(f"loss.sigma_sampling={sampling}")
    table = ve_sigmas(sdxl_alphas_cumprod())
    sigma_n = torch.tensor([0.0, 0.5, 1.62, 5.0] * 250)
    sigma_t = draw_sigma_t(cfg, sigma_n, table, torch.Generator().manual_seed(0))
    assert (sigma_t > sigma_n).all() and (sigma_t <= table[-1] * (1 + 1e-6)).all()
    # Never below the model's smallest level either (clean rows included): the UNet has no timestep there.
    assert (sigma_t >= table[0] * (1 - 1e-6)).all()


def test_no_training_pass_runs_below_the_models_smallest_level():
    from ambient.train.batch import ModelInputs
    from ambient.train.objective import training_loss

    table = ve_sigmas(sdxl_alphas_cumprod()).float()
    seen = []

    def den(x, s):
        seen.append(torch.as_tensor(s).reshape(-1))
        return x

    cfg = cfg_with("consistency.every=1", "consistency.fraction=1", "loss.sigma_sampling=lognormal")
    sigma_n = torch.tensor([0.0, 0.035, 0.04, 0.05, 0.2] * 40)
    inputs = ModelInputs(y=torch.randn(200, 4, 2, 2), sigma_n=sigma_n, cond={})
    training_loss(den, inputs, cfg, 0, table, torch.Generator().manual_seed(0))
    assert torch.cat(seen).min().item() >= table[0].item() * (1 - 1e-6)


def test_the_consistency_section_is_built_from_the_core_settings():
    import dataclasses

    from ambient.core import ConsistencySettings

    cfg = cfg_with()
    # One set of defaults: the section's are the dataclass's (the shipped values).
    assert cfg.consistency.settings() == ConsistencySettings()
    assert set(type(cfg.consistency).model_fields) == {
        f.name for f in dataclasses.fields(ConsistencySettings)
    }
    # Every knob is settable from YAML / --set, above_ratio included.
    assert (
        cfg_with("consistency.above_ratio=3", "consistency.anchor=above").consistency.settings().above_ratio
        == 3
    )
    # One validation: the same rule fails in both, the config error names the field.
    with pytest.raises(ConfigError, match=r"consistency\.above_ratio: Value error, must be > 1"):
        cfg_with("consistency.above_ratio=0.5")
    with pytest.raises(ValueError, match="consistency above_ratio must be > 1"):
        ConsistencySettings(above_ratio=0.5)
    with pytest.raises(ConfigError, match=r"consistency\.fraction"):
        cfg_with("consistency.fraction=2")


def test_the_naive_baseline_trains_and_samples_as_if_the_data_were_clean():
    from ambient.train.trainer import training_sigma_n

    assert training_sigma_n(cfg_with(), 0.5) == 0.5
    assert training_sigma_n(cfg_with("loss.sigma_train=1.0"), 0.5) == 1.0
    assert training_sigma_n(cfg_with("loss.sigma_train=0.2"), 0.5) == 0.5
    assert training_sigma_n(cfg_with("loss.data_noise=ignored"), 0.5) == 0.0


def test_frozen_parts_run_in_the_training_precision_on_gpu_only():
    from ambient.models import build_tiny_pipeline
    from ambient.models.real_size import VAE_CONFIG
    from ambient.models.vae import vae_dtype

    def cfg(*sets: str) -> FinetuneConfig:
        return load_config(FinetuneConfig, None, list(sets))

    assert frozen_dtype(cfg("deepspeed.precision=bf16")) == torch.float32  # CPU: float32 always
    assert frozen_dtype(cfg("scaling.use_gpu=true", "deepspeed.precision=bf16")) == torch.bfloat16
    assert frozen_dtype(cfg("scaling.use_gpu=true", "deepspeed.precision=fp16")) == torch.float16
    assert frozen_dtype(cfg("scaling.use_gpu=true", "deepspeed.precision=fp32")) == torch.float32
    # SDXL's VAE (force_upcast) stays float32 under fp16; one without the flag follows the precision.
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        sdxl_vae = AutoencoderKL(**VAE_CONFIG)
    assert vae_dtype(sdxl_vae, torch.float16) == torch.float32
    assert vae_dtype(sdxl_vae, torch.bfloat16) == torch.bfloat16
    assert vae_dtype(build_tiny_pipeline().vae, torch.float16) == torch.float16
