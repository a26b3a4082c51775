"""Fetching an image's bytes from an HTTP(S) URL, a file:// URL or a local path.

Errors of one image are values: `fetch` returns `Fetched(data=...)` or `Fetched(status=..., error=...)`
and never raises for a bad URL, a slow server or a wrong body.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import requests

X_MEDIA_HOSTS = ("pbs.twimg.com", "ton.twimg.com")
RETRY_STATUSES = {429, 500, 502, 503, 504}
# Magic numbers of the image formats Pillow decodes for us; the content type is not trusted.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


@dataclass
class FetchConfig:
    """How images are fetched (a section of the shards build config)."""

    allow_hosts: tuple[str, ...] = X_MEDIA_HOSTS
    """HTTP hosts images may come from; local files and file:// are always allowed."""
    timeout: float = 10.0
    """Seconds to wait for a connection or for the next bytes of a body."""
    retries: int = 3
    """Retries after 429, 5xx or a timeout, with exponential backoff honouring Retry-After."""
    backoff: float = 0.5
    """First backoff in seconds (doubles each retry)."""
    max_bytes: int = 20 * 1024 * 1024
    """Larger bodies are refused as too_large."""
    remote_size: str | None = "medium"
    """Size variant asked of X's media hosts (`name=`), so we never fetch more pixels than we keep."""


@dataclass
class Fetched:
    data: bytes | None = None
    status: str = "ok"
    error: str | None = None


def is_image(data: bytes) -> bool:
    return any(data.startswith(m) for m in MAGIC) and (not data.startswith(b"RIFF") or data[8:12] == b"WEBP")


def x_media_url(url: str, size: str | None) -> str:
    """Ask X's media host for the `size` variant of a photo instead of the original."""
    parts = urlsplit(url)
    if size is None or parts.hostname not in X_MEDIA_HOSTS:
        return url
    query = dict(parse_qsl(parts.query))
    path = parts.path
    if "." in path.rsplit("/", 1)[-1] and "format" not in query:
        path, ext = path.rsplit(".", 1)
        query["format"] = ext
    query["name"] = size
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def _read_local(path: Path, config: FetchConfig) -> Fetched:
    try:
        size = path.stat().st_size
        if size > config.max_bytes:
            return Fetched(status="too_large", error=f"{size} bytes > {config.max_bytes}")
        data = path.read_bytes()
    except OSError as exc:
        return Fetched(status="not_found" if isinstance(exc, FileNotFoundError) else "read_error",
                       error=f"{exc.strerror}: {path}")
    return _checked(data)


def _checked(data: bytes) -> Fetched:
    if not data:
        return Fetched(status="empty", error="zero bytes")
    if not is_image(data):
        return Fetched(status="not_image", error=f"body starts with {data[:16]!r}")
    return Fetched(data=data)


def _retry_after(response: requests.Response | None, attempt: int, config: FetchConfig) -> float:
    header = response.headers.get("Retry-After") if response is not None else None
    if header and header.strip().isdigit():
        return min(float(header), 60.0)
    return config.backoff * 2 ** attempt


def _http_once(session: requests.Session, url: str, config: FetchConfig) -> tuple[Fetched, requests.Response | None]:
    """One GET, following redirects by hand so that every hop is checked against the allow-list."""
    for _ in range(5):
        host = urlsplit(url).hostname
        if host not in config.allow_hosts:
            return Fetched(status="host_not_allowed", error=f"host {host} is not in the allow-list"), None
        response = session.get(url, timeout=config.timeout, stream=True, allow_redirects=False)
        if response.is_redirect:
            url = requests.compat.urljoin(url, response.headers["Location"])
            response.close()
            continue
        if response.status_code != 200:
            response.close()
            return Fetched(status=f"http_{response.status_code}", error=response.reason), response
        body = bytearray()
        for chunk in response.iter_content(64 * 1024):
            body += chunk
            if len(body) > config.max_bytes:
                response.close()
                return Fetched(status="too_large", error=f"body over {config.max_bytes} bytes"), response
        return _checked(bytes(body)), response
    return Fetched(status="too_many_redirects", error="more than 5 redirects"), None


def fetch(url: str, session: requests.Session, config: FetchConfig) -> Fetched:
    """Fetch one image's bytes; never raises for a problem of that image."""
    parts = urlsplit(url or "")
    if parts.scheme in ("", "file"):
        if not url:
            return Fetched(status="no_url", error="the row has no URL")
        return _read_local(Path(unquote(parts.path) if parts.scheme else url), config)
    if parts.scheme not in ("http", "https"):
        return Fetched(status="bad_url", error=f"unsupported URL scheme {parts.scheme!r}")
    url = x_media_url(url, config.remote_size)
    result = Fetched(status="error")
    for attempt in range(config.retries + 1):
        response = None
        try:
            result, response = _http_once(session, url, config)
        except requests.Timeout as exc:
            result = Fetched(status="timeout", error=str(exc)[:200])
        except requests.RequestException as exc:
            return Fetched(status="connection_error", error=str(exc)[:200])
        retryable = result.status == "timeout" or (response is not None and response.status_code in RETRY_STATUSES)
        if not retryable or attempt == config.retries:
            return result
        time.sleep(_retry_after(response, attempt, config))
    return result
