"""Serve the API with uvicorn: ``python -m api [--host H] [--port P]`` (default API_HOST and API_PORT)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from config import get_settings


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and serve until interrupted."""
    import uvicorn

    from api.app import create_app

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m api", description="Serve the workflow task system API.")
    parser.add_argument(
        "--host", default=settings.api_host, help=f"address to bind (default {settings.api_host})"
    )
    parser.add_argument(
        "--port", type=int, default=settings.api_port, help=f"port (default {settings.api_port})"
    )
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    args = parser.parse_args(argv)
    log_level = settings.log_level.lower()
    if args.workers > 1:
        # Several processes need an import string: each builds its own app (and its own clients).
        uvicorn.run(
            "api.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
            log_level=log_level,
        )  # fmt: skip
    else:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=log_level)


if __name__ == "__main__":
    main()
