"""Parts of fetching: X's size variants, the allow-list, Retry-After parsing, kept-alive connections,
TLS."""
from email.utils import formatdate
import http.server
import shutil
import socket
import ssl
import subprocess
import threading
import time

import pytest

from tests.conftest import Routes
from shards.build.fetch import FetchConfig, HttpClient, fetch, host_allowed, retry_delay, x_media_url, x_variant


def test_x_media_urls_ask_for_the_size_variant():
    assert x_media_url("https://pbs.twimg.com/media/AbC.jpg", "medium") == \
        "https://pbs.twimg.com/media/AbC?format=jpg&name=medium"
    assert x_media_url("https://pbs.twimg.com/media/AbC?format=png&name=orig", "small") == \
        "https://pbs.twimg.com/media/AbC?format=png&name=small"
    assert x_media_url("http://127.0.0.1:9/a.jpg", "medium") == "http://127.0.0.1:9/a.jpg"
    assert x_media_url("https://pbs.twimg.com/media/AbC.jpg", None).endswith("AbC.jpg")


@pytest.mark.parametrize("width, height, size, variant", [
    (4000, 3000, 256, "small"),        # 510 px short side in small's 680 box
    (4096, 1088, 256, "medium"),       # small gives 180, 900x900 239, medium 318
    (4096, 873, 256, "large"),         # medium gives 255.8: short of 256
    (4096, 874, 256, "medium"),        # medium gives 256
    (4096, 510, 256, "4096x4096"),     # large gives 255: only the whole photo is enough
    (8192, 500, 256, "orig"),          # larger than any box and still short: the original
    (600, 400, 256, "small"),          # fits small's box whole: nothing bigger exists
    (1000, 800, 1024, "medium"),       # smaller than --size: the smallest variant holding it whole
    (None, 3000, 256, "medium"),       # dimensions unknown: today's medium
    (0, 0, 256, "medium"),
])
def test_the_smallest_variant_that_still_gives_the_size(width, height, size, variant):
    assert x_variant(width, height, size) == variant
    assert x_variant(height, width, size) == variant  # portrait or landscape alike


def test_the_variant_is_chosen_for_x_photos_only():
    from shards import BuildConfig
    from shards.build.worker import variant_of
    from shards.build.resize import ResizeConfig

    auto = BuildConfig(images=None, out=None, resize=ResizeConfig(size=256))
    photo = {"url": "https://pbs.twimg.com/media/AbC.jpg", "orig_width": 4000, "orig_height": 3000}
    assert variant_of(photo, auto) == "small"
    assert variant_of({**photo, "url": "https://example.org/a.jpg"}, auto) is None  # other hosts untouched
    assert variant_of({**photo, "url": None}, auto) is None
    forced = BuildConfig(images=None, out=None, fetch=FetchConfig(remote_size="large"))
    assert variant_of(photo, forced) == "large"  # --remote-size overrides the choice


def test_allow_list_is_exact_unless_a_domain_is_given():
    assert host_allowed("pbs.twimg.com", ("pbs.twimg.com",))
    assert not host_allowed("evil-pbs.twimg.com.example", ("pbs.twimg.com",))
    assert host_allowed("a.b.example.org", (".example.org",)) and not host_allowed("example.org.evil", (".example.org",))
    assert not host_allowed(None, ("pbs.twimg.com",))


def test_retry_after_seconds_dates_backoff_and_cap():
    config = FetchConfig(backoff=0.25, max_retry_after=30)
    assert retry_delay("2", 0, config) == 2.0
    assert 5 <= retry_delay(formatdate(time.time() + 7, usegmt=True), 0, config) <= 7
    assert retry_delay(None, 2, config) == 1.0  # 0.25 · 2²
    assert retry_delay("", 0, config) == 0.25  # an empty header: plain backoff
    assert retry_delay("3600", 0, config) is None  # give up, record the 429


def test_one_client_keeps_its_connection_alive_between_images(photos):
    """Connection set-up costs as much CPU as the transfer on loopback: a client reuses one."""
    connections = []

    class KeepAlive(Routes):
        protocol_version = "HTTP/1.1"
        routes = {"/a.jpg": (200, {}, photos["coffee"]), "/b.jpg": (200, {}, photos["astronaut"])}
        hits: dict = {}

        def setup(self):
            connections.append(self.client_address)
            super().setup()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), KeepAlive)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base, client = f"http://127.0.0.1:{server.server_address[1]}", HttpClient(2)
        config = FetchConfig(allow_hosts=("127.0.0.1",))
        got = [fetch(f"{base}/{name}.jpg", client, config).data for name in ("a", "b", "a", "b")]
    finally:
        server.shutdown()
        server.server_close()
    assert got == [photos["coffee"], photos["astronaut"]] * 2
    assert len(connections) == 1
    assert client.tls is None  # plain http never loads the CA bundle (20 ms of an actor's start)


def test_a_kept_alive_connection_the_server_dropped_is_opened_anew(photos):
    """Servers close idle keep-alive connections without notice; the next image sent on one finds
    it dead. That request must go out again on a new connection, not end as a connection_error."""
    body = photos["coffee"]
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve_one_request_per_connection():
        # Answers as HTTP/1.1 keep-alive would, then closes: the client keeps the connection.
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(conn)
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    threading.Thread(target=serve_one_request_per_connection, daemon=True).start()
    try:
        client, config = HttpClient(1), FetchConfig(allow_hosts=("127.0.0.1",), retries=0)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/a.jpg"
        first = fetch(url, client, config)
        time.sleep(0.1)  # the server has closed its end by now
        second = fetch(url, client, config)
    finally:
        listener.close()
    assert (first.status, second.status) == ("ok", "ok") and second.data == body
    assert len(accepted) == 2  # the dead connection was replaced, once


def test_a_path_with_spaces_is_escaped_not_refused(http_server, photos):
    """Archive URLs may hold characters a browser would escape; http.client refuses them raw."""
    base, routes, _ = http_server
    routes["/my%20photo.jpg"] = (200, {}, photos["chelsea"])
    result = fetch(f"{base}/my photo.jpg", HttpClient(1), FetchConfig(allow_hosts=("127.0.0.1",)))
    assert result.status == "ok" and result.data == photos["chelsea"]


@pytest.fixture()
def https_server(tmp_path, photos):
    """An HTTPS keep-alive server on 127.0.0.1 with a self-signed certificate; yields (base, cert)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    handler = type("Handler", (Routes,), {"routes": {"/a.jpg": (200, {}, photos["rocket"])}, "hits": {},
                                          "protocol_version": "HTTP/1.1"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", cert
    server.shutdown()
    server.server_close()


def test_https_checks_the_certificate_and_keeps_the_connection(https_server, photos):
    base, cert = https_server
    config = FetchConfig(allow_hosts=("127.0.0.1",), retries=0)
    refused = fetch(f"{base}/a.jpg", HttpClient(1), config)  # self-signed: not in certifi's bundle
    assert refused.status == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in refused.error
    client = HttpClient(1)
    client.tls = ssl.create_default_context(cafile=str(cert))  # as if a CA the bundle holds had signed it
    got = [fetch(f"{base}/a.jpg", client, config) for _ in range(3)]
    assert all(r.status == "ok" and r.data == photos["rocket"] for r in got)
    [idle] = client.idle.values()
    assert len(idle) == 1 and idle[0].sock is not None  # one connection, kept for the next image


def test_a_body_trickled_slower_than_total_timeout_is_cut_off(http_server, photos):
    """Bytes that keep coming, each well within the read timeout, still may not hold a thread."""
    base, routes, _ = http_server
    body = photos["coffee"]

    def trickle(handler, n):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            for start in range(0, len(body), 512):
                handler.wfile.write(body[start:start + 512])
                handler.wfile.flush()
                time.sleep(0.05)
        except OSError:  # the client gave up, as it should
            pass

    routes["/slow.jpg"] = trickle
    config = FetchConfig(allow_hosts=("127.0.0.1",), timeout=5, total_timeout=0.5, retries=0)
    start = time.monotonic()
    result = fetch(f"{base}/slow.jpg", HttpClient(1), config)
    assert result.status == "timeout" and "not complete after 0.5s" in result.error
    assert time.monotonic() - start < 2  # the whole body would take several seconds


def test_a_refused_connection_is_a_connection_error_not_a_timeout():
    """The status says what happened, so that a user reading `timeout` looks at slow hosts, not
    dead ones (urllib3, which fetched before, filed a refused connection under its timeouts)."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    result = fetch(f"http://127.0.0.1:{port}/a.jpg", HttpClient(1), FetchConfig(allow_hosts=("127.0.0.1",), retries=0))
    assert result.status == "connection_error" and "refused" in result.error.lower()
    assert time.monotonic() - started < 5  # refused at once, not waited out


def test_a_slow_host_holds_one_fetch_while_the_other_rows_are_fetched_and_decoded(http_server, photos):
    """The build's pipeline (shards.build.worker.processed) fetches in batches and decodes in the
    calling thread as rows arrive: a photo that takes a second must not stop the rows after it
    from being fetched and decoded, and the rows still come out in their order."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import contextmanager

    from shards import BuildConfig
    from shards.build.worker import CpuClock, processed

    base, routes, _ = http_server
    bodies = list(photos.values())
    answered = []

    def slow(handler, hit):
        time.sleep(1.0)
        answered.append(time.monotonic())
        return 200, {"Content-Type": "image/jpeg"}, bodies[0]

    routes["/slow.jpg"] = slow
    for i in range(24):
        routes[f"/p{i}.jpg"] = (200, {"Content-Type": "image/jpeg"}, bodies[i % len(bodies)])
    rows = [{"key": "k00", "url": f"{base}/slow.jpg"}] + [{"key": f"k{i + 1:02d}", "url": f"{base}/p{i}.jpg"} for i in range(24)]

    class DecodeTimes(CpuClock):
        def __init__(self):
            super().__init__()
            self.decoded_at = []

        @contextmanager
        def step(self, name):
            if name == "resize":
                self.decoded_at.append(time.monotonic())
            with super().step(name):
                yield

    clock = DecodeTimes()
    config = BuildConfig(images=None, out=None, threads=4, fetch=FetchConfig(allow_hosts=("127.0.0.1",)))
    with ThreadPoolExecutor(config.threads) as pool:
        out = list(processed(rows, pool, HttpClient(config.threads), config, clock))
    assert [row["key"] for row, _ in out] == [row["key"] for row in rows]
    assert all(row["status"] == "ok" and jpeg for row, jpeg in out)
    # Every other row was fetched and decoded while the slow one was still on its way.
    assert sum(t < answered[0] for t in clock.decoded_at) == 24
