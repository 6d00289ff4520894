"""`cli.py serve`: the HTTP API under uvicorn, on the loopback interface unless a key protects it."""
from __future__ import annotations

import ipaddress
import os

from utils.api.app import API_KEY_ENV, create_app
from utils.config import Settings


class ServeError(ValueError):
    """The API must not start like this; the message says why and what to do."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def api_key_for(host: str) -> str | None:
    """The key the API will require: OCR_API_KEY when set; off the loopback interface it must be."""
    key = os.environ.get(API_KEY_ENV) or None
    if key is None and not is_loopback(host):
        raise ServeError(f"refusing to listen on {host} without an API key: set {API_KEY_ENV} "
                         "(clients then send 'Authorization: Bearer <key>'), or keep the default --host 127.0.0.1")
    return key


def serve(host: str, port: int, settings: Settings | None = None) -> int:
    import uvicorn

    if not 0 < port < 65536:
        raise ServeError(f"--port must be between 1 and 65535, got {port}")
    app = create_app(settings, api_key=api_key_for(host))
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0
