"""Build the Serve application from a config: for jobs/serve.py, ``serve run`` and KubeRay's RayService.

    serve run ambient.serve.app:build_app model=s3://models/faces-t500 config=jobs/configs/serve_demo.yaml

RayService / serve config files::

    applications:
      - name: ambient
        import_path: ambient.serve.app:build_app
        args: {config: jobs/configs/serve_demo.yaml, model: s3://models/faces-t500, set: [limits.max_steps=30]}

``args`` holds ``config`` (a YAML file), ``set`` (``key.path=value`` overrides, a list or a comma-separated
string) and any config sections inline (``{limits: {max_steps: 30}}``); precedence: file < inline < set.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ray.serve import Application

from ambient.config import deep_merge, load_config, read_yaml

from .auth import resolve_token
from .config import ServeConfig
from .deployment import Sampler
from .model import ModelChoice, choose_model

logger = logging.getLogger(__name__)


def load_serve_config(
    path: str | None = None, overrides: Iterable[str] = (), inline: Mapping[str, Any] | None = None
) -> ServeConfig:
    data = deep_merge(read_yaml(path) if path else {}, inline or {})
    return load_config(ServeConfig, None, overrides, base=data)


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    rep, auto = cfg.replica, cfg.autoscaling
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": rep.num_cpus, "num_gpus": rep.num_gpus},
        "max_ongoing_requests": max(rep.max_ongoing_requests, cfg.batching.max_batch_images),
        "max_queued_requests": rep.max_queued_requests,
    }
    if auto.min_replicas == auto.max_replicas:
        options["num_replicas"] = auto.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": auto.min_replicas,
            "max_replicas": auto.max_replicas,
            "initial_replicas": auto.initial_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests,
        }
    return options


def build_application(cfg: ServeConfig, choice: ModelChoice | None = None) -> Application:
    """Check the model and the token here (the driver), so that a mistake fails before deployment."""
    cfg = cfg.model_copy(update={"storage": cfg.storage.resolved()})
    choice = choice or choose_model(cfg.model, cfg.storage)
    token = resolve_token(cfg.auth.token_env)
    return Sampler.options(**deployment_options(cfg)).bind(cfg, choice, token)


def build_app(args: dict[str, Any]) -> Application:
    """Ray Serve's application-builder entry point (``import_path: ambient.serve.app:build_app``)."""
    args = dict(args or {})
    path = args.pop("config", None)
    overrides = args.pop("set", [])
    if isinstance(overrides, str):
        overrides = [o for o in overrides.split(",") if o.strip()]
    return build_application(load_serve_config(path, overrides, args))
