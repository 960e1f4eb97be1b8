"""Where the plugin's requests go: a backend URL parsed once, and whether a proxy stands in between (stdlib)."""

from __future__ import annotations

import ipaddress
import urllib.parse
import urllib.request
from typing import NamedTuple, Optional

from ..errors import BackendError


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: requests to them never go through a proxy."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def proxy_for(url: str) -> Optional[str]:
    """The proxy URL to use for ``url``: never one for loopback, else the environment's unless ``no_proxy`` says no."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if is_loopback_host(host):
        return None
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy:
        return None
    where = f"{host}:{parts.port}" if parts.port else host
    if urllib.request.proxy_bypass(where) or urllib.request.proxy_bypass(host):
        return None
    return proxy


class Target(NamedTuple):
    """Where requests go: a backend URL, its token and the URL's parts."""

    url: str
    token: Optional[str]
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str, token: Optional[str]) -> Target:
        url = url.rstrip("/")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"The backend URL {url!r} is not an http:// or https:// URL: fix it in the "
                               "plugin settings (for example http://127.0.0.1:8765).", "bad_url")
        return cls(url, token, parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                   parts.path.rstrip("/"))
