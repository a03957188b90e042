"""Optional bearer-token authentication. The token is never logged, printed or echoed."""

from __future__ import annotations

import hmac
import os

from pydantic import SecretStr

# Routes a load balancer or orchestrator probes without credentials. The API's description (/docs,
# /openapi.json) is part of the API and needs the token like the rest.
PUBLIC_PATHS = frozenset({"/v1/health"})


def resolve_token(token_env: str | None) -> SecretStr | None:
    """The token from the environment variable named in the config; None when auth is off.

    Resolved where the app is built (the driver), so that replicas on nodes whose environment lacks the
    variable still enforce it; a replica whose own environment sets it uses its own value.
    """
    if token_env is None:
        return None
    value = os.environ.get(token_env, "")
    if not value:
        raise ValueError(
            f"auth.token_env names {token_env}, but that environment variable is not set or empty"
        )
    return SecretStr(value)


class BearerAuth:
    def __init__(self, token_env: str | None, forwarded: SecretStr | None) -> None:
        own = os.environ.get(token_env, "") if token_env else ""
        self._token = own.encode() if own else (forwarded.get_secret_value().encode() if forwarded else None)

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, path: str, authorization: str | None) -> str | None:
        """None if the request may proceed, else the reason to refuse it (for a 401)."""
        if self._token is None or path in PUBLIC_PATHS:
            return None
        if not authorization:
            return "missing bearer token (send 'Authorization: Bearer <token>')"
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return "the Authorization header must be 'Bearer <token>'"
        if not hmac.compare_digest(value.strip().encode(), self._token):
            return "invalid bearer token"
        return None
