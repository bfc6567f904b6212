"""``facefleet serve``: the REST service and browser UI (:mod:`facefleet.entrypoints.service`) on uvicorn,
and ``facefleet keys``: the API keys it accepts. Every ``[service]`` setting has its flag (``--host``,
``--port``, ``--data-dir``, ``--roots``, ``--api-keys``, ...), and the job settings (``--devices``,
``[model]``, ``[gpu]``, ...) are its workers'."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from facefleet.config import add_config_arguments
from facefleet.config.flags import all_keys, section_keys
from facefleet.entrypoints.cli.options import parse_job


def build_parser(prog: str = "facefleet serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve facefleet over HTTP: POST /v1/reconstruct (one image, batched with concurrent "
        "requests on the GPU), /v1/jobs (folders, uploads and videos through the engine's durable queue: a "
        "restarted server resumes them), /metrics (Prometheus), /healthz, /readyz, the browser UI at /ui and "
        "the API's documentation at /docs. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    keys = [*section_keys("service"), *all_keys()]
    add_config_arguments(p, keys)
    return p


def serve_main(argv: list[str]) -> int:
    """Runs until SIGINT/SIGTERM (graceful: jobs drain and resume at the next start). Exit 2: bad
    settings or a missing keys file."""
    parsed = parse_job(build_parser(), argv)
    if isinstance(parsed, int):
        return parsed
    args, cfg = parsed
    import uvicorn

    from facefleet.entrypoints.service.app import create_app
    from facefleet.entrypoints.service.core import Service
    from facefleet.entrypoints.service.keys import KeyFileError

    _json_logs(args.log_level)
    try:
        service = Service(cfg)
    except (ValueError, KeyFileError) as e:
        print(f"facefleet serve: error: {e}", file=sys.stderr)
        return 2
    s = cfg.service
    app = create_app(service)
    logging.getLogger("facefleet.service").info(
        json.dumps(
            {
                "event": "listening",
                "url": f"http://{s.host}:{s.port}",
                "data_dir": str(service.data_dir),
                "auth": s.auth,
                "keys": len(service.keys),
            }
        )
    )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=s.host,
            port=s.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(s.shutdown_grace_s) + 5,
        )
    )
    server.run()
    return 0


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, and the message (itself JSON where we log JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        try:
            body = json.loads(msg) if msg.startswith("{") else {"message": msg}
        except ValueError:
            body = {"message": msg}
        return json.dumps(
            {"t": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name, **body}
        )


def _json_logs(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    for name in ("facefleet.service", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


def keys_main(argv: list[str]) -> int:
    """``facefleet keys create NAME --file F [--rate-limit R] [--quota N] | list --file F | revoke NAME
    --file F``: the API keys file of ``facefleet serve --api-keys F`` (hashes only; a new key is printed
    once)."""
    from facefleet.entrypoints.service.keys import KeyFileError, create_key, load_keys, revoke_key

    p = argparse.ArgumentParser(prog="facefleet keys", description=keys_main.__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="make a new key and print it (once)")
    c.add_argument("name")
    c.add_argument("--rate-limit", type=float, default=None, help="requests/s (default: the server's)")
    c.add_argument("--quota", type=int, default=None, help="images over the key's life (0: unlimited)")
    c.add_argument(
        "--burst", type=int, default=None, help="requests at once above the rate (default: server's)"
    )
    r = sub.add_parser("revoke", help="remove a key")
    r.add_argument("name")
    sub.add_parser("list", help="names and limits of the keys")
    for sp in sub.choices.values():
        sp.add_argument("--file", required=True, help="the keys file (JSON)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.action == "create":
            print(
                create_key(
                    args.file, args.name, rate_limit=args.rate_limit, quota=args.quota, burst=args.burst
                )
            )
        elif args.action == "revoke":
            revoke_key(args.file, args.name)
        else:
            for k in load_keys(args.file):
                print(f"{k.name}\trate_limit={k.rate_limit or 'default'}\tquota={k.quota or 'default'}")
    except (ValueError, KeyFileError) as e:
        print(f"facefleet keys: error: {e}", file=sys.stderr)
        return 2
    return 0
