"""Text-to-image sampling with ambient.core's VE samplers through the SDXL denoiser.

Per-prompt seeds: the initial noise of sample i is drawn from its own torch.Generator seeded with
seed[i], and so is every fresh noise draw of the stochastic ("posterior") sampler, so a prompt's
image depends on its seed alone, not on the batch it is drawn in (up to float rounding of batched
matmuls). That is why this module steps ambient.core's samplers itself instead of calling
ambient.core.generate, which draws the whole batch's noise from one generator; the schedules, the
integrators and the early-stop Tweedie finish are core's. The same property lets ``micro_batch``
prompts run at a time (text encoders, UNet and VAE decode): memory follows the micro-batch, not the
number of prompts, and the images do not change (up to that rounding). Precomputed prompt embeddings
(``embeddings``, ``negative_embeddings``) replace the text encoders: a training worker that loads none
samples its grids from the embeddings the driver computed once.

How to sample (mode, stop level, steps, guidance, method) is one ``SamplingSpec``
(``ambient.core.sampling_spec``): give ``spec``, or the keywords ``mode``, ``sigma_n``, ``num_steps``,
``guidance_scale`` and ``method``, from which the spec is built by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from torch import Tensor

from ..core import Denoiser, early_stop_schedule, full_schedule, posterior_step, sample
from ..core.sampling_spec import Method, SamplingMode, SamplingSpec, explicit_spec
from .conditioning import TextEmbeddings, make_add_time_ids
from .denoiser import SDXLDenoiser, guided
from .loading import SDXLComponents
from .vae import decode_latents, tensor_to_pil


def _seeds(seed: int | list[int], count: int) -> list[int]:
    """One seed per prompt; an int seeds prompt i with seed + i."""
    if isinstance(seed, int):
        return [seed + i for i in range(count)]
    if len(seed) != count:
        raise ValueError(f"got {len(seed)} seeds for {count} prompts")
    return [int(s) for s in seed]


def _per_sample_noise(gens: list[torch.Generator], shape: tuple[int, ...], device: torch.device) -> Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


def _posterior_sample(denoiser: Denoiser, x: Tensor, sigmas: Tensor, gens: list[torch.Generator]) -> Tensor:
    """ambient.core.sample(method="posterior") with per-sample generators."""
    for s_cur, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        s_cur = s_cur.to(x).expand(x.shape[0]) if s_cur.ndim == 0 else s_cur.to(x)
        s_next = s_next.to(x).expand(x.shape[0]) if s_next.ndim == 0 else s_next.to(x)
        noise = _per_sample_noise(gens, tuple(x.shape[1:]), x.device).to(x.dtype)
        x = posterior_step(x, denoiser(x, s_cur), s_cur, s_next, noise)
    return x


@torch.no_grad()
def sample_latents(
    components: SDXLComponents,
    prompts: list[str] | None,
    *,
    spec: SamplingSpec | None = None,
    mode: SamplingMode | None = None,
    sigma_n: float | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | list[int] = 0,
    height: int | None = None,
    width: int | None = None,
    method: Method | None = None,
    uncond: Literal["empty", "zeros"] = "empty",
    negative_prompts: list[str] | None = None,
    rho: float = 7.0,
    micro_batch: int | None = None,
    embeddings: TextEmbeddings | None = None,
    negative_embeddings: TextEmbeddings | None = None,
) -> Tensor:
    """Diffusion-space latents (B, C, H/f, W/f) for ``prompts`` (or their precomputed ``embeddings``);
    see ``sample_images``."""
    spec = call_spec(spec, mode, sigma_n, num_steps, guidance_scale, method)
    _check_arguments(prompts, negative_prompts, uncond)
    text = _Text.of(prompts, embeddings, negative_prompts, negative_embeddings, uncond)
    height, width = _image_size(components, height, width)
    seeds = _seeds(seed, text.count)
    settings = _Settings(spec, uncond, rho, height, width)
    parts = []
    for chunk in _chunks(text.count, micro_batch):
        parts.append(_sample_chunk(components, text.chunk(chunk), seeds[chunk], settings))
    return torch.cat(parts)


def call_spec(
    spec: SamplingSpec | None,
    mode: SamplingMode | None = None,
    sigma_n: float | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    method: Method | None = None,
) -> SamplingSpec:
    """A sampling call's spec: ``spec`` itself, or the one the keywords name (defaults: full sampling,
    32 steps, guidance 5, heun). Both at once would leave one of them silently unused: refused."""
    keywords = {
        "mode": mode,
        "sigma_n": sigma_n,
        "num_steps": num_steps,
        "guidance_scale": guidance_scale,
        "method": method,
    }
    if spec is not None:
        given = [name for name, value in keywords.items() if value is not None]
        if given:
            raise ValueError(f"give spec or {', '.join(given)}, not both")
        return spec
    return explicit_spec(
        "full" if mode is None else mode,
        0.0 if sigma_n is None else sigma_n,
        steps=32 if num_steps is None else num_steps,
        guidance=5.0 if guidance_scale is None else guidance_scale,
        method="heun" if method is None else method,
    )


@dataclass(frozen=True)
class _Text:
    """One sampling call's prompts: captions to encode, or precomputed embeddings, for either branch."""

    count: int
    prompts: list[str] | None = None
    embeddings: TextEmbeddings | None = None
    negative_prompts: list[str] | None = None
    negative_embeddings: TextEmbeddings | None = None

    @classmethod
    def of(
        cls,
        prompts: list[str] | None,
        embeddings: TextEmbeddings | None,
        negative_prompts: list[str] | None,
        negative_embeddings: TextEmbeddings | None,
        uncond: str,
    ) -> _Text:
        if (prompts is None) == (embeddings is None):
            raise ValueError("give exactly one of prompts or embeddings")
        if negative_prompts is not None and negative_embeddings is not None:
            raise ValueError("give at most one of negative_prompts or negative_embeddings")
        if negative_embeddings is not None and uncond != "empty":
            raise ValueError("negative_embeddings are the embedded unconditional branch: use uncond='empty'")
        count = len(prompts) if prompts is not None else len(embeddings)
        if negative_embeddings is not None:
            negative_embeddings = negative_embeddings.repeat_to(count)
        return cls(count, prompts, embeddings, negative_prompts, negative_embeddings)

    def chunk(self, part: slice) -> _Text:
        return _Text(
            len(range(self.count)[part]),
            _part(self.prompts, part),
            _part(self.embeddings, part),
            _part(self.negative_prompts, part),
            _part(self.negative_embeddings, part),
        )


def _part(values: list[str] | TextEmbeddings | None, part: slice) -> list[str] | TextEmbeddings | None:
    if values is None:
        return None
    return values.rows(part) if isinstance(values, TextEmbeddings) else list(values[part])


@dataclass(frozen=True)
class _Settings:
    """What every micro-batch of one sampling call shares."""

    spec: SamplingSpec
    uncond: str
    rho: float
    height: int
    width: int


def _chunks(count: int, micro_batch: int | None) -> list[slice]:
    """Slices of at most ``micro_batch`` prompts (None: one slice of all)."""
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    if micro_batch is None or count == 0:
        return [slice(0, count)]
    return [slice(lo, lo + micro_batch) for lo in range(0, count, micro_batch)]


def _sample_chunk(components: SDXLComponents, text: _Text, seeds: list[int], s: _Settings) -> Tensor:
    """Latents for one micro-batch of prompts, each from its own seed."""
    unet = components.unet
    device = unet.device
    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    cond, neg = _conditioning(components, text, s.uncond, (s.height, s.width), device)
    base = SDXLDenoiser(unet, components.alphas_cumprod, components.scheduler.config.prediction_type)
    denoiser = guided(base, cond, neg, s.spec.guidance)
    sigmas = _schedule(base, s.spec, s.rho)

    f = components.vae_scale_factor
    shape = (unet.config.in_channels, s.height // f, s.width // f)
    x = _per_sample_noise(gens, shape, device) * base.sigma_max
    if s.spec.method == "posterior":
        x = _posterior_sample(denoiser, x, sigmas, gens)
    else:
        x = sample(denoiser, x, sigmas, method=s.spec.method)
    if s.spec.early_stop:  # one Tweedie step from sigma_n: the model is not trusted below the data's noise
        x = denoiser(x, torch.full((text.count,), s.spec.sigma_stop, device=device))
    return x


def _check_arguments(prompts: list[str] | None, negative_prompts: list[str] | None, uncond: str) -> None:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings")
    if negative_prompts is not None:
        if prompts is None:
            raise ValueError("negative_prompts go with prompts; with embeddings give negative_embeddings")
        if isinstance(negative_prompts, str) or len(negative_prompts) != len(prompts):
            raise ValueError(f"negative_prompts must be a list of {len(prompts)} strings, one per prompt")
        if uncond != "empty":
            raise ValueError("negative_prompts are the embedded unconditional branch: use uncond='empty'")


def _image_size(components: SDXLComponents, height: int | None, width: int | None) -> tuple[int, int]:
    """As diffusers: the UNet's configured sample size by default; multiples of the VAE factor."""
    f = components.vae_scale_factor
    height = height or components.unet.config.sample_size * f
    width = width or components.unet.config.sample_size * f
    if height % f or width % f:
        raise ValueError(f"height and width must be multiples of the VAE factor {f}, got {height}x{width}")
    return height, width


def _embed(components: SDXLComponents, prompts: list[str]) -> TextEmbeddings:
    return TextEmbeddings(*components.text_encoders(list(prompts)))


def _conditioning(
    components: SDXLComponents, text: _Text, uncond: str, size_hw: tuple[int, int], device: torch.device
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The conditional and unconditional branches of classifier-free guidance."""
    batch = text.count
    embeds = text.embeddings if text.embeddings is not None else _embed(components, text.prompts)
    embeds = embeds.to(device, torch.float32)
    size = torch.tensor([list(size_hw)] * batch)
    time_ids = make_add_time_ids(size, torch.zeros(batch, 2), size_hw).to(device)
    cond = {
        "encoder_hidden_states": embeds.prompt_embeds,
        "text_embeds": embeds.pooled,
        "time_ids": time_ids,
    }
    if uncond == "zeros":  # what diffusers does for SDXL base (force_zeros_for_empty_prompt)
        neg = {k: torch.zeros_like(v) for k, v in cond.items() if k != "time_ids"}
    elif uncond == "empty":  # what a model trained with drop_captions(...) -> "" has learnt
        negative = text.negative_embeddings
        if negative is None:
            negatives = [""] * batch if text.negative_prompts is None else list(text.negative_prompts)
            negative = _embed(components, negatives)
        negative = negative.to(device, torch.float32)
        neg = {"encoder_hidden_states": negative.prompt_embeds, "text_embeds": negative.pooled}
    else:
        raise ValueError(f"uncond must be 'empty' or 'zeros', got {uncond!r}")
    neg["time_ids"] = time_ids
    return cond, neg


def _schedule(base: SDXLDenoiser, spec: SamplingSpec, rho: float) -> Tensor:
    """The noise levels to step through: down to the spec's stop level (sigma_n), else to the model's
    smallest level. The schedule spans the UNet's trained range (SDXL: 0.029 .. 14.6), not EDM's."""
    sigma_min, sigma_max = base.sigma_min, base.sigma_max
    if not spec.early_stop:
        return full_schedule(spec.steps, sigma_min, sigma_max, rho)
    if spec.sigma_stop >= sigma_max:
        raise ValueError(
            f"sigma_n must be below the model's largest sigma {sigma_max:.4g}, got {spec.sigma_stop}"
        )
    return early_stop_schedule(spec.steps, spec.sigma_stop, sigma_max, rho)


def sample_images(
    components: SDXLComponents,
    prompts: list[str],
    *,
    spec: SamplingSpec | None = None,
    mode: SamplingMode | None = None,
    sigma_n: float | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | list[int] = 0,
    height: int | None = None,
    width: int | None = None,
    method: Method | None = None,
    uncond: Literal["empty", "zeros"] = "empty",
    negative_prompts: list[str] | None = None,
    micro_batch: int | None = None,
    embeddings: TextEmbeddings | None = None,
    negative_embeddings: TextEmbeddings | None = None,
) -> list[Image.Image]:
    """Images for ``prompts``, sampled as ``spec`` says (or as the keywords say: mode "full" samples
    to sigma = 0, a model trained with consistency; "early_stop" samples down to ``sigma_n`` and
    finishes with one Tweedie step; ``method`` is the integrator). ``seed`` is one int
    (prompt i gets seed + i) or one seed per prompt. height and width default to the UNet's
    sample size times the VAE factor. ``uncond`` is the unconditional branch of
    classifier-free guidance: the embedding of "" (matching caption dropout in training) or zeros
    (diffusers' default for SDXL base). ``negative_prompts`` (one per prompt, with ``uncond="empty"``)
    replaces that "" per image: prompt i is guided away from negative_prompts[i]. ``micro_batch``
    prompts are sampled and decoded at a time (None: all in one call); an image does not depend on it.
    ``embeddings`` (precomputed ``TextEmbeddings``, prompts None) and ``negative_embeddings`` (one row,
    repeated, or one per prompt) take the text encoders' place, which then need not be loaded.
    """
    latents = sample_latents(
        components,
        prompts,
        spec=call_spec(spec, mode, sigma_n, num_steps, guidance_scale, method),
        seed=seed,
        height=height,
        width=width,
        uncond=uncond,
        negative_prompts=negative_prompts,
        micro_batch=micro_batch,
        embeddings=embeddings,
        negative_embeddings=negative_embeddings,
    )
    return tensor_to_pil(decode_latents(components.vae, latents, micro_batch))


def image_grid(images: list[Image.Image], rows: int) -> Image.Image:
    """Tile images of one size into ``rows`` rows (row-major; the last row may be short)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    cols = -(-len(images) // rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        if im.size != (w, h):
            raise ValueError(f"image {i} is {im.size}, not {(w, h)}")
        grid.paste(im.convert("RGB"), ((i % cols) * w, (i // cols) * h))
    return grid
