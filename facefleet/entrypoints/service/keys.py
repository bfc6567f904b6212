"""API keys: stored hashed in a JSON file, checked in constant time, with a rate limit per key.

A key is 32 random bytes (``ff_`` + URL-safe base64): with that much entropy a plain SHA-256 is the
right hash (a slow password hash protects guessable secrets; it would only cost every request
milliseconds). The file holds names, hashes and limits, never a key: ``facefleet keys create NAME
--file FILE`` prints the new key once. An empty key is never valid.

The rate limit is a token bucket per key (``rate`` requests per second, ``burst`` at once), in
memory: it limits request floods; the quota (images over the key's life) is durable and lives in
the service's store (:mod:`facefleet.entrypoints.service.store`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from facefleet.io.atomic import atomic_write_text

KEY_PREFIX = "ff_"


def hash_key(key: str) -> str:
    """The stored form of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """A key's record: ``name`` (shown in logs and metrics instead of the key), ``sha256`` of the key,
    its own ``rate_limit`` (requests/s), ``burst`` and ``quota`` (images; 0: unlimited), None: the
    service's."""

    name: str
    sha256: str
    rate_limit: float | None = None
    quota: int | None = None
    created: float = 0.0
    burst: int | None = None


class KeyFileError(ValueError):
    """The keys file is missing, unreadable or malformed (the message names it)."""


def load_keys(path: str | os.PathLike[str]) -> list[ApiKey]:
    """The keys of a keys file (``{"keys": [{"name", "sha256", ...}]}``)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        keys = [ApiKey(**k) for k in data["keys"]]
    except FileNotFoundError:
        raise KeyFileError(
            f"{p}: API keys file not found (make one: facefleet keys create NAME --file {p})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{p}: not a facefleet API keys file ({type(e).__name__}: {e})") from None
    for k in keys:
        if len(k.sha256) != 64:
            raise KeyFileError(f"{p}: key {k.name!r} has no valid sha256")
    return keys


def create_key(
    path: str | os.PathLike[str],
    name: str,
    *,
    rate_limit: float | None = None,
    quota: int | None = None,
    burst: int | None = None,
) -> str:
    """Add a new key named ``name`` to the keys file (created if missing) and return the key; the file
    keeps only its hash. Raises ValueError when the name is taken."""
    p = Path(path)
    keys = load_keys(p) if p.exists() else []
    if not name or any(k.name == name for k in keys):
        raise ValueError(f"{p}: a key named {name!r} exists already" if name else "a key needs a name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    keys.append(ApiKey(name, hash_key(key), rate_limit, quota, round(time.time(), 3), burst))
    _save(p, keys)
    return key


def revoke_key(path: str | os.PathLike[str], name: str) -> None:
    """Remove key ``name`` from the keys file (a running server stops accepting it on restart)."""
    p = Path(path)
    keys = load_keys(p)
    if not any(k.name == name for k in keys):
        raise ValueError(f"{p}: no key named {name!r}")
    _save(p, [k for k in keys if k.name != name])


def _save(path: Path, keys: list[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"keys": [asdict(k) for k in keys]}, indent=2) + "\n")
    os.chmod(path, 0o600)


class KeyRing:
    """The keys a server accepts: :meth:`check` maps a presented key to its record (or None)."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_hash = {k.sha256: k for k in keys}

    def check(self, presented: str | None) -> ApiKey | None:
        if not presented:
            return None
        digest = hash_key(presented)
        found = None
        for h, k in self._by_hash.items():  # constant time per stored hash: no early exit
            if hmac.compare_digest(h, digest):
                found = k
        return found

    def __len__(self) -> int:
        return len(self._by_hash)


class RateLimiter:
    """Token buckets by key name: ``allow(name, rate, burst)`` takes a token or says when one is due."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill time)

    def allow(self, name: str, rate: float, burst: int) -> float:
        """0.0 when the request may go, else the seconds until a token is due (the Retry-After)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(name, (float(burst), now))
            tokens = min(float(burst), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[name] = (tokens, now)
            return (1.0 - tokens) / rate


def key_from_headers(headers: Any) -> str | None:
    """The key a request presents: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (never a query
    parameter: URLs end up in logs and browser histories)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return str(value.strip())
    value = headers.get("x-api-key")
    return str(value).strip() if value else None
