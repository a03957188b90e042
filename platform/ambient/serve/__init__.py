"""The Ray Serve sampler: config, request schemas, the deployment, metrics, auth and the app builder.

``ambient.serve.app:build_app`` is the import path for ``serve run`` and KubeRay's RayService;
``jobs/serve.py`` deploys it on a local cluster (or RAY_ADDRESS) and waits. See docs/api.md.
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
