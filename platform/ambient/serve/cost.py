"""What a request costs the model, in megapixel-steps: the unit of ``limits.max_request_cost``.

Cost = height x width x images x steps x passes / 1e6, where passes counts the UNet evaluations per
image and step: 2 for heun (a second-order corrector each step; its last step to sigma 0 is a plain
Euler step, so 2 is a bound), x 2 with classifier-free guidance, whose unconditional branch runs in the
same call unless guidance_scale is exactly 1 (ambient.models.denoiser.guided).
"""

from __future__ import annotations

from .sampler import SamplingKey


def passes(method: str, guidance: float) -> int:
    """UNet evaluations per image and step."""
    return (2 if method == "heun" else 1) * (1 if guidance == 1.0 else 2)


def image_cost(key: SamplingKey) -> float:
    """Megapixel-steps of one image sampled with ``key``."""
    spec = key.spec
    return key.height * key.width * spec.steps * passes(spec.method, spec.guidance) / 1e6


def request_cost(key: SamplingKey, images: int) -> float:
    return image_cost(key) * images


def cost_problem(key: SamplingKey, images: int, limit: float) -> str | None:
    """The message for a request over ``limits.max_request_cost``, or None when it fits."""
    cost = request_cost(key, images)
    if cost <= limit:
        return None
    spec = key.spec
    p = passes(spec.method, spec.guidance)
    # Worded in the request's own field names (steps, num_images, guidance_scale): the client fixes it.
    return (
        f"request cost {cost:.4g} megapixel-steps exceeds limits.max_request_cost {limit:.4g} "
        f"({key.height} x {key.width} px x {images} images x {spec.steps} steps x {p} passes "
        f"({spec.method}, guidance_scale {spec.guidance:g}) / 1e6); lower steps, num_images or "
        "the size, or use guidance_scale 1"
    )
