"""A lean static HTTP/1.1 file server on 127.0.0.1 for the download benchmarks.

`python static_server.py DIRECTORY PORT [LATENCY_S]` serves the files of DIRECTORY to GET
requests, keeping connections alive, with the body sent by the kernel (`sendfile`) and no
logging; with a latency, each answer waits that long first, as a distant CDN's round trip and
first byte do. Python's own `http.server` spent about 0.9 ms of CPU per 370 kB photo (headers
parsed through the email package, the body copied through Python 64 kB at a time) on the same
two cores as the pipeline it fed; a real media CDN costs the downloader nothing, so the
benchmark's server should cost as little as it can. It is the same server for every tool
measured against it.
"""
from __future__ import annotations

import mimetypes
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote

MAX_HEAD = 64 * 1024


def response_head(status: str, length: int, content_type: str = "text/plain") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n"
            "Connection: keep-alive\r\n\r\n").encode()


def resolve(root: Path, target: bytes) -> Path | None:
    """The file a request target names inside `root`, or None (missing, or outside root). As
    X's media hosts do, `/NAME?format=jpg&name=small` is the `small` variant of NAME.jpg, which
    lies beside it as NAME.small.jpg (`name=orig`: NAME.jpg itself)."""
    raw_path, _, raw_query = target.decode("latin-1").partition("?")
    name = unquote(raw_path).lstrip("/")
    query = parse_qs(raw_query)
    if "format" in query:
        variant = query.get("name", ["orig"])[0]
        name = f"{name}.{query['format'][0]}" if variant == "orig" else f"{name}.{variant}.{query['format'][0]}"
    path = (root / name).resolve()
    return path if path.is_file() and path.is_relative_to(root) else None


def serve_connection(conn: socket.socket, root: Path, latency: float) -> None:
    """Answer the requests of one connection until the client closes it, each after `latency` s."""
    pending = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in pending:
                chunk = conn.recv(MAX_HEAD)
                if not chunk or len(pending) > MAX_HEAD:
                    return
                pending += chunk
            head, _, pending = pending.partition(b"\r\n\r\n")
            if latency:
                time.sleep(latency)
            method, target = (head.split(b" ", 2) + [b"", b""])[:2]
            path = resolve(root, target) if method == b"GET" else None
            if path is None:
                body = b"not found\n"
                conn.sendall(response_head("404 Not Found", len(body)) + body)
            else:
                with open(path, "rb") as file:
                    size = file.seek(0, 2)
                    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                    conn.sendall(response_head("200 OK", size, content_type))
                    conn.sendfile(file, 0)
            if b"\r\nconnection: close" in head.lower():
                return


def main(directory: str, port: str, latency: str = "0") -> None:
    root = Path(directory).resolve()
    listener = socket.create_server(("127.0.0.1", int(port)), backlog=256)
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_connection, args=(conn, root, float(latency)), daemon=True).start()


if __name__ == "__main__":
    main(*sys.argv[1:4])
