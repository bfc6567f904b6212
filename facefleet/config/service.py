"""``[service]``: the settings of ``facefleet serve`` (the REST service and its web UI).

The service's workers take the job sections of the same file (``[model]``, ``[gpu]``, ``[cpu]``,
``[run]``, ``[queue]``, ``[video]``); this section holds what only a server has: where it listens,
where it keeps jobs and uploads, who may call it and how much, and how requests are batched.
Importing this module does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from facefleet.config.fields import check_fields, setting


def _positive(v: float) -> str | None:
    return None if v > 0 else f"must be > 0, got {v!r}"


@dataclass(frozen=True)
class ServiceConfig:
    """``[service]``: ``facefleet serve``'s server, its limits and its dynamic batching."""

    host: str = setting(
        "127.0.0.1", "address to listen on (127.0.0.1: this host only; 0.0.0.0 or an address to serve others)"
    )
    port: int = setting(8000, "TCP port to listen on", minimum=1, maximum=65535)
    data_dir: str = setting(
        "facefleet-service",
        "folder of the service's state: its job database, uploads and every job's outputs (jobs/ID/out); "
        "a restarted server resumes the jobs it finds there",
    )
    roots: tuple[str, ...] = setting(
        (),
        "folders (comma-separated) that jobs may read by path; a path outside them, or a symlink out of "
        "them, is refused with 403 (default: none, only uploaded files)",
    )
    api_keys: str | None = setting(
        None,
        "JSON file of API keys, stored hashed (`facefleet keys create NAME --file FILE` makes one); "
        "requests carry a key as `Authorization: Bearer KEY` or `X-API-Key: KEY`",
    )
    auth: bool = setting(
        True,
        "require an API key on every /v1 route and the UI's actions (false: no keys, only for a server "
        "bound to 127.0.0.1)",
    )
    rate_limit: float = setting(
        50.0, "requests per second per key (a key's own limit in the keys file wins)", check=_positive
    )
    burst: int = setting(100, "requests a key may send at once above its rate", minimum=1)
    quota: int = setting(
        0, "images per key over the service's life (a key's own quota wins; 0: unlimited)", minimum=0
    )
    max_request_mb: float = setting(
        32.0, "largest body of POST /v1/reconstruct, in MiB (larger: 413)", check=_positive
    )
    max_upload_mb: float = setting(
        2048.0, "largest body of POST /v1/jobs (its uploaded files), in MiB (larger: 413)", check=_positive
    )
    max_pixels: int = setting(
        50_000_000,
        "images with more pixels are refused from their header, before decoding (decompression bombs)",
        minimum=1,
    )
    max_batch: int = setting(
        64, "most images of concurrent POST /v1/reconstruct requests run as one batch", minimum=1
    )
    batch_wait_ms: float = setting(
        2.0,
        "how long a batch waits for more requests once the device is free (a lone request waits this "
        "long at most; under load the batch fills while the previous one runs)",
        minimum=0,
    )
    cors_origins: tuple[str, ...] = setting(
        (), "origins allowed to call the API from browsers (CORS; default: none, same origin only)"
    )
    shutdown_grace_s: float = setting(
        30.0,
        "on SIGTERM/SIGINT: seconds to let running jobs finish the units they hold before they are left "
        "for the next start (nothing is lost: a restarted server resumes them)",
        minimum=0,
    )
    ui: bool = setting(True, "serve the browser UI at /ui")

    def __post_init__(self) -> None:
        for name in ("roots", "cors_origins"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        check_fields(self, "service")
