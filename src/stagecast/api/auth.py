"""API keys: who is calling, which roles they may use, and their limits.

Keys come from ``[[api_keys]]``: the key itself from an environment variable, or only its
SHA-256 digest in the file. A stage belongs to the key that started it; other keys are told
it does not exist (404), so stage ids leak nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass

from stagecast.config import ApiKeyConfig, Settings
from stagecast.errors import ConfigError, RequestError


class AuthError(RequestError):
    """Missing or wrong API key."""

    code = "unauthorized"
    status_code = 401


class ForbiddenError(RequestError):
    """The key is valid but may not do this (e.g. use this role)."""

    code = "forbidden"
    status_code = 403


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: a key id (None when keys are not in use) and that key's configuration."""

    key_id: str | None
    config: ApiKeyConfig | None = None

    def check_role(self, role: str) -> None:
        """403 if this key may not use ``role``."""
        allowed = self.config.roles if self.config is not None else None
        if allowed is not None and role not in allowed:
            raise ForbiddenError(
                f"API key {self.key_id!r} may not use role {role!r}; allowed: {', '.join(allowed)}"
            )


ANONYMOUS = Principal(None)


class KeyRing:
    """The configured keys, indexed by the SHA-256 of the key."""

    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        self._by_digest: dict[str, ApiKeyConfig] = {}
        for key in keys:
            if key.key_env is not None:
                secret = os.environ.get(key.key_env)
                if not secret:
                    raise ConfigError(
                        f"api key {key.id!r}: environment variable {key.key_env} is not set"
                    )
                digest = _digest(secret)
            else:
                assert key.key_sha256 is not None
                digest = key.key_sha256.lower()
            self._by_digest[digest] = key

    @property
    def enabled(self) -> bool:
        """True when keys are configured (and so required)."""
        return bool(self._by_digest)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an ``Authorization`` header; 401 if keys are on and it fails."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise AuthError("this gateway needs an API key: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError("the Authorization header must be 'Bearer <key>'")
        digest = _digest(token.strip())
        # Compare against every digest so timing says nothing about which keys exist.
        found: ApiKeyConfig | None = None
        for known, config in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                found = config
        if found is None:
            raise AuthError("unknown API key")
        return Principal(found.id, found)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (where no key is required by default)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to serve a non-loopback address without keys, unless told it is on purpose."""
    if settings.api_keys or settings.insecure_no_auth or is_loopback(settings.host):
        return
    raise ConfigError(
        f"refusing to listen on {settings.host} without API keys: configure [[api_keys]] or "
        "pass --insecure-no-auth if this network is trusted"
    )
