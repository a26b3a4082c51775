"""Fetching an image's bytes from an HTTP(S) URL, a file:// URL or a local path.

Errors of one image are values: `fetch` returns `Fetched(data=...)` or `Fetched(status=..., error=...)`
and never raises for a bad URL, a slow server or a wrong body. Statuses: `http_NNN`, `timeout`,
`truncated`, `connection_error`, `too_large`, `empty`, `not_image`, `host_not_allowed`,
`too_many_redirects`, `bad_url`, `no_url`, `not_found`, `read_error`, `local_not_allowed`,
`not_regular_file`.

Local paths and file:// URLs are read only below the roots the user allowed (`allow_local`),
symbolic links resolved first, regular files only (no FIFO, device or socket), capped by the
bytes actually read and by the same total time as a download: an images table is data, and
its URLs must not reach the rest of the machine.
"""
from __future__ import annotations

import http.client
import os
import ssl
import stat
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

import certifi

X_MEDIA_HOSTS = ("pbs.twimg.com", "ton.twimg.com")
RETRY_STATUSES = {429, 500, 502, 503, 504}
# Transient failures worth another try (besides the HTTP statuses above).
RETRY_ERRORS = {"timeout", "truncated", "connection_error"}
# Magic numbers of the image formats Pillow decodes for us; the content type is not trusted.
MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
MAX_REDIRECTS = 5
REDIRECTS = {301, 302, 303, 307, 308}
READ_CHUNK = 1024 * 1024
HEADERS = {"User-Agent": "iipa (image popularity research; shards build)"}
# What a request target may hold unescaped; the rest is percent-encoded (as requests does), since
# http.client refuses a space or a control character in a URL where a browser would encode it.
URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


@dataclass
class FetchConfig:
    """How images are fetched (a section of the shards build config)."""

    allow_hosts: tuple[str, ...] = X_MEDIA_HOSTS
    """HTTP hosts images may come from (exact names; `.example.com` also allows its subdomains).
    Every redirect hop is checked too."""
    allow_local: tuple[Path, ...] = ()
    """Folders whose files local paths and file:// URLs may name (the synthetic set's or an account
    archive's media); none by default. Symbolic links are resolved before the check."""
    timeout: float = 10.0
    """Seconds to wait for a connection or for the next bytes of a body."""
    total_timeout: float = 60.0
    """Seconds one attempt may take in all, so a server trickling bytes cannot hold a thread."""
    retries: int = 3
    """Retries after 429, 5xx, a timeout, a broken connection or a truncated body."""
    backoff: float = 0.5
    """First backoff in seconds (doubles each retry); a Retry-After header takes precedence."""
    max_retry_after: float = 60.0
    """Longest Retry-After we honour; a server asking for more gets its status recorded instead."""
    max_bytes: int = 20 * 1024 * 1024
    """Larger bodies are refused as too_large (by Content-Length before reading, else while reading)."""
    x_hosts: tuple[str, ...] = X_MEDIA_HOSTS
    """Hosts that serve X's size variants (`name=`): X's media hosts, or a mirror of them."""
    remote_size: str | None = "auto"
    """Size variant asked of X's media hosts (`name=`), so we never fetch more pixels than we keep:
    `auto` picks per photo (x_variant), a name forces it, None ('' on the command line) asks for the original."""


@dataclass
class Fetched:
    """The bytes of one image, or why there are none."""

    data: bytes | None = None
    status: str = "ok"
    error: str | None = None
    http_status: int | None = None
    """The final response's HTTP status, when there was one (for the retry decision)."""
    retry_after: str | None = None
    """The final response's Retry-After header, when it sent one."""


def is_image(data: bytes) -> bool:
    """Whether the bytes start like an image format we decode (the content type is not trusted)."""
    return any(data.startswith(m) for m in MAGIC) and (not data.startswith(b"RIFF") or data[8:12] == b"WEBP")


def host_allowed(host: str | None, allow: tuple[str, ...]) -> bool:
    if not host:
        return False
    host = host.lower()
    return any(host == h or (h.startswith(".") and host.endswith(h)) for h in allow)


# X's `name=` variants that fit the photo in a square box (thumb is cropped: never used), smallest first.
X_VARIANTS = (("small", 680), ("900x900", 900), ("medium", 1200), ("large", 2048), ("4096x4096", 4096))
UNKNOWN_SIZE_VARIANT = "medium"


def x_variant(width: int | None, height: int | None, size: int) -> str:
    """The smallest variant whose shorter side, once the photo is fitted in its box, is still
    ≥ `size` (the side we store), or for a photo smaller than that the smallest that keeps it
    whole; `medium` when the photo's dimensions are unknown."""
    if not width or not height:
        return UNKNOWN_SIZE_VARIANT
    long_side, short_side = max(width, height), min(width, height)
    for name, box in X_VARIANTS:
        if box >= long_side or short_side * box // long_side >= size:
            return name
    return "orig"


def is_x_media(url: str, hosts: tuple[str, ...] = X_MEDIA_HOSTS) -> bool:
    return urlsplit(url).hostname in hosts


def x_media_url(url: str, size: str | None, hosts: tuple[str, ...] = X_MEDIA_HOSTS) -> str:
    """Ask X's media host for the `size` variant of a photo instead of the original."""
    parts = urlsplit(url)
    if size is None or parts.hostname not in hosts:
        return url
    query = dict(parse_qsl(parts.query))
    path = parts.path
    if "." in path.rsplit("/", 1)[-1] and "format" not in query:
        path, ext = path.rsplit(".", 1)
        query["format"] = ext
    query["name"] = size
    return urlunsplit((parts.scheme, parts.netloc, path, urlencode(query), ""))


def local_root(path: Path, roots: tuple[Path, ...]) -> Path | None:
    """`path` with symbolic links and `..` resolved if that lies under one of `roots`, else None."""
    real = Path(os.path.realpath(path))
    for root in roots:
        if real.is_relative_to(os.path.realpath(root)):
            return real
    return None


def _read_local(path: Path, config: FetchConfig) -> Fetched:
    real = local_root(path, config.allow_local)
    if real is None:
        return Fetched(status="local_not_allowed", error=f"{path} is not under an --allow-local folder")
    started = time.monotonic()
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: the path checked is
        # the path opened, even if a link is swapped in after the check.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        return Fetched(status="not_found" if isinstance(exc, FileNotFoundError) else "read_error",
                       error=f"{exc.strerror}: {path}")
    with os.fdopen(fd, "rb", buffering=0) as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return Fetched(status="not_regular_file", error=f"{path} is not a regular file")
        try:
            data = _read_capped(file.read, config, started, str(path))
        except OSError as exc:
            return Fetched(status="read_error", error=f"{exc.strerror}: {path}")
    return data if isinstance(data, Fetched) else _checked(data)


def _read_capped(read, config: FetchConfig, started: float, what: str) -> bytes | Fetched:
    """Read to the end, counting the bytes read (a size on record may lie: /proc files say 0)
    and the time since `started`, so neither a huge file nor a slow one holds a thread."""
    chunks, size = [], 0
    while chunk := read(READ_CHUNK):
        chunks.append(chunk)
        size += len(chunk)
        if size > config.max_bytes:
            return Fetched(status="too_large", error=f"{what} over {config.max_bytes} bytes")
        if time.monotonic() - started > config.total_timeout:
            return Fetched(status="timeout", error=f"{what} not complete after {config.total_timeout:g}s")
    return b"".join(chunks)


def _checked(data: bytes) -> Fetched:
    if not data:
        return Fetched(status="empty", error="zero bytes")
    if not is_image(data):
        return Fetched(status="not_image", error=f"body starts with {data[:16]!r}")
    return Fetched(data=data)


class HttpClient:
    """One per actor, shared by its threads: keep-alive connections per host (up to `size` idle
    ones each, more are opened when busy and closed after), no hidden retries, TLS checked against
    certifi's CA bundle as requests does (slim images may have no system certificates). It is
    http.client underneath, as urllib.request is: through urllib3's pool, URL and response
    layers a fetch of X's `small` variant cost 0.24 ms of CPU on loopback, and 0.16 through this
    (0.10 of it http.client's own); with 32 threads fetching at once, 0.5 against 0.3."""

    def __init__(self, size: int):
        self.size = size
        self.idle: dict[tuple[str, str, int | None], list[http.client.HTTPConnection]] = {}
        self.lock = threading.Lock()
        self.tls: ssl.SSLContext | None = None  # made for the first https URL (see tls_context)

    def tls_context(self) -> ssl.SSLContext:
        """The TLS settings of every https connection, made once: loading the CA bundle costs
        20 ms of CPU, which an actor fetching only plain http or local files need not pay."""
        with self.lock:
            if self.tls is None:
                self.tls = ssl.create_default_context(cafile=certifi.where())
            return self.tls

    def take(self, parts: SplitResult, timeout: float) -> http.client.HTTPConnection:
        """An idle connection to the URL's host (connected, or one http.client connects when it
        sends), with `timeout` for connecting and for each receive."""
        with self.lock:
            idle = self.idle.get((parts.scheme, parts.hostname, parts.port))
            conn = idle.pop() if idle else None
        if conn is None:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                   context=self.tls_context())
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def give_back(self, parts: SplitResult, conn: http.client.HTTPConnection) -> None:
        """Keep a connection whose last response was read to its end, for the host's next image."""
        with self.lock:
            idle = self.idle.setdefault((parts.scheme, parts.hostname, parts.port), [])
            if len(idle) < self.size:
                idle.append(conn)
                return
        conn.close()


def retry_delay(header: str | None, attempt: int, config: FetchConfig) -> float | None:
    """Seconds to wait before the next attempt: Retry-After (seconds or an HTTP date) when the
    server sent one, else exponential backoff; None when the server asks for too long a wait."""
    if header:
        header = header.strip()
        try:
            delay = float(header) if header.replace(".", "", 1).isdigit() else (
                parsedate_to_datetime(header).timestamp() - time.time())
        except (TypeError, ValueError):
            delay = None
        if delay is not None:
            return max(0.0, delay) if delay <= config.max_retry_after else None
    return config.backoff * 2 ** attempt


def _read_body(response: http.client.HTTPResponse, config: FetchConfig, started: float) -> Fetched:
    length = response.length  # the Content-Length http.client read (None for a chunked body or none)
    if length is not None and length > config.max_bytes:
        return Fetched(status="too_large", error=f"Content-Length {length} > {config.max_bytes} bytes")
    # read1 returns what one receive brings (up to READ_CHUNK): a photo on a fast link comes in a
    # few pieces, and the byte cap and the total time are checked after each, so a server
    # trickling bytes is cut off on time.
    try:
        data = _read_capped(response.read1, config, started, "body")
    except http.client.IncompleteRead as exc:  # a chunked body cut short
        return Fetched(status="truncated", error=f"{exc!r}"[:200])
    if isinstance(data, Fetched):
        return data
    if length is not None and len(data) < length:  # a server that closes early without an error
        return Fetched(status="truncated", error=f"{len(data)} of {length} bytes")
    return _checked(data)


def _get(client: HttpClient, parts: SplitResult, config: FetchConfig):
    """Send a GET and read the response's head: (connection, response). A kept-alive connection
    that its server closed meanwhile fails before any byte of a response comes; that one request
    goes out again on a new connection (urllib3 and requests do the same), anything else raises."""
    target = quote(urlunsplit(("", "", parts.path or "/", parts.query, "")), safe=URL_SAFE)
    conn = client.take(parts, config.timeout)
    reused = conn.sock is not None
    try:
        try:
            conn.request("GET", target, headers=HEADERS)
            return conn, conn.getresponse()
        except (ConnectionError, ssl.SSLEOFError):  # RemoteDisconnected, a broken pipe, a reset; TLS's own EOF
            if not reused:
                raise
            conn.close()  # the next request connects anew
            conn.request("GET", target, headers=HEADERS)
            return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _answer(response: http.client.HTTPResponse, config: FetchConfig, started: float) -> Fetched | None:
    """What a response brings: None for a redirect (its Location is the next hop), else the image
    or why there is none."""
    if response.status in REDIRECTS and response.getheader("Location"):
        return None
    if response.status != 200:
        return Fetched(status=f"http_{response.status}", error=response.reason, http_status=response.status,
                       retry_after=response.getheader("Retry-After"))
    return _read_body(response, config, started)


def _http_once(client: HttpClient, url: str, config: FetchConfig) -> Fetched:
    """One GET, following redirects by hand so that every hop is checked against the allow-list."""
    started = time.monotonic()
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if not host_allowed(parts.hostname, config.allow_hosts):
            return Fetched(status="host_not_allowed", error=f"host {parts.hostname} is not in the allow-list")
        conn, response = _get(client, parts, config)
        result = None
        try:
            result = _answer(response, config, started)
        finally:
            # Only a body read to its end leaves the connection ready for the next image; any
            # other (a redirect's, an error page's, a body cut short or refused) is dropped with it.
            if result is not None and result.status == "ok":
                response.close()
                client.give_back(parts, conn)
            else:
                conn.close()
        if result is not None:
            return result
        url = urljoin(url, response.getheader("Location"))
    return Fetched(status="too_many_redirects", error=f"more than {MAX_REDIRECTS} redirects")


def _http_attempt(client: HttpClient, url: str, config: FetchConfig) -> Fetched:
    try:
        return _http_once(client, url, config)
    except TimeoutError as exc:  # socket.timeout: connecting, or waiting for the head or the body
        return Fetched(status="timeout", error=f"no answer within {config.timeout:g}s ({exc})"[:200])
    except (http.client.HTTPException, OSError) as exc:  # refused, reset, DNS, TLS, a malformed response
        return Fetched(status="connection_error", error=f"{type(exc).__name__}: {exc}"[:200])
    # A bad port, a character http.client refuses, a host name IDNA refuses (after OSError: a
    # failed certificate check is both).
    except ValueError as exc:
        return Fetched(status="bad_url", error=f"{type(exc).__name__}: {exc}"[:200])


def fetch(url: str | None, client: HttpClient, config: FetchConfig, variant: str | None = None) -> Fetched:
    """Fetch one image's bytes (X's `variant` of it, default `config.remote_size`); never raises
    for a problem of that image."""
    if not url:
        return Fetched(status="no_url", error="the row has no URL")
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        if parts.scheme and parts.netloc not in ("", "localhost"):
            return Fetched(status="bad_url", error=f"file URL on another host {parts.netloc!r}")
        return _read_local(Path(unquote(parts.path) if parts.scheme else url), config)
    if parts.scheme not in ("http", "https"):
        return Fetched(status="bad_url", error=f"unsupported URL scheme {parts.scheme!r}")
    url = x_media_url(url, variant or config.remote_size, config.x_hosts)
    for attempt in range(config.retries + 1):
        result = _http_attempt(client, url, config)
        retryable = result.status in RETRY_ERRORS or result.http_status in RETRY_STATUSES
        if not retryable or attempt == config.retries:
            return result
        delay = retry_delay(result.retry_after, attempt, config)
        if delay is None:
            result.error = f"{result.error} (Retry-After over {config.max_retry_after:g}s)"
            return result
        time.sleep(delay)
    return result
