"""Build the Serve application from a config: for jobs/serve.py, ``serve run`` and KubeRay's RayService.

    serve run ambient.serve.app:build_app model=s3://models/faces-t500 config=jobs/configs/serve_demo.yaml

RayService / serve config files::

    applications:
      - name: ambient
        import_path: ambient.serve.app:build_app
        args: {config: jobs/configs/serve_demo.yaml, model: s3://models/faces-t500, set: [limits.max_steps=30]}

``args`` holds ``config`` (a YAML file), ``set`` (``key.path=value`` overrides, a list or a comma-separated
string) and any config sections inline (``{limits: {max_steps: 30}}``); precedence: file < inline < set.

Here Serve's proxy binds Serve's own HTTP host (the running Serve's, from the serve config's
``http_options``, else ``RAY_SERVE_DEFAULT_HTTP_HOST``, else loopback), not ``http.host``: a public one
without ``auth.token_env`` is refused as on the jobs/serve.py path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ray.serve import Application

from ambient.config import deep_merge, load_config, read_yaml

from .auth import resolve_token
from .config import ServeConfig, public_host_problem
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


def build_application(
    cfg: ServeConfig, choice: ModelChoice | None = None, serve_host: str | None = None
) -> Application:
    """Check the host, the model and the token here (the driver), so that a mistake fails before
    deployment. ``serve_host``: the host Serve's proxy binds when it is not ``http.host`` (Serve's own)."""
    if serve_host:  # "": Serve runs no HTTP proxy
        problem = public_host_problem(cfg, serve_host, "Serve's HTTP host (http_options.host)")
        if problem:
            raise ValueError(problem)
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
    cfg = load_serve_config(path, overrides, args)
    return build_application(cfg, serve_host=serve_http_host())


_UNKNOWN = "0.0.0.0"  # what a host that cannot be read counts as: public, so the token check holds


def serve_http_host() -> str:
    """The host Serve's HTTP proxy binds for an app built here; "" when Serve runs no HTTP proxy.

    A running Serve's (RayService builds the app inside its cluster, after Serve started with the
    config's ``http_options``), else the default that ``serve run`` and ``serve.start`` use.
    """
    host = running_serve_http_host()
    if host is not None:
        return host
    from ray.serve.config import HTTPOptions

    return os.environ.get("RAY_SERVE_DEFAULT_HTTP_HOST") or HTTPOptions().host or ""


def running_serve_http_host() -> str | None:
    """The HTTP host of the Serve instance on the connected cluster; None when none runs (or no Ray)."""
    import ray

    if not ray.is_initialized():
        return None
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    try:
        return ray.get(controller.get_http_config.remote(), timeout=30).host or ""
    except Exception as err:  # a controller that does not answer: assume the worst
        logger.warning("could not read Serve's HTTP host (%s): treating it as public", err)
        return _UNKNOWN
