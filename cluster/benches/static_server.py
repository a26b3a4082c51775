"""A lean static HTTP/1.1 file server on 127.0.0.1 for the download benchmarks.

`python static_server.py DIRECTORY PORT [LATENCY_S]` serves the files of DIRECTORY to GET
requests, keeping connections alive, with the body sent by the kernel (`sendfile`) and no
logging; with a latency, each answer waits that long first, as a distant CDN's round trip and
first byte do. Python's own `http.server` spent about 0.9 ms of CPU per 370 kB photo (headers
parsed through the email package, the body copied through Python 64 kB at a time) on the same
two cores as the pipeline it fed; a real media CDN costs the downloader nothing, so the
benchmark's server should cost as little as it can. It is the same server for every tool
measured against it.

One thread serves every connection, woken by the kernel when a socket can be read or written
(selectors, as nginx uses epoll). A thread per connection cost 0.20 ms of CPU a photo while
`shards build` kept 64 connections busy, against 0.145 this way (medians of 9 alternating
builds of 2 000 photos); one request after the other, the two cost about the same.
"""
from __future__ import annotations

import heapq
import itertools
import mimetypes
import os
import selectors
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO
from urllib.parse import parse_qs, unquote

MAX_HEAD = 64 * 1024
NOT_FOUND = b"not found\n"


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


@dataclass
class Answer:
    """One response: its head still to send, then `left` bytes of `file` from `offset`."""

    head: bytes
    file: BinaryIO | None = None
    offset: int = 0
    left: int = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def answer(root: Path, head: bytes) -> Answer:
    """The response to one request head: the file it names, or a 404."""
    method, target = (head.split(b" ", 2) + [b"", b""])[:2]
    path = resolve(root, target) if method == b"GET" else None
    if path is None:
        return Answer(response_head("404 Not Found", len(NOT_FOUND)) + NOT_FOUND)
    file = open(path, "rb")
    size = os.fstat(file.fileno()).st_size
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Answer(response_head("200 OK", size, content_type), file, 0, size)


@dataclass
class Connection:
    sock: socket.socket
    received: bytes = b""
    answers: deque = field(default_factory=deque)  # in the order the requests came
    close_after: bool = False  # the client asked for `Connection: close`
    closed: bool = False


class Server:
    """The event loop: accept, read request heads, send answers as far as each socket takes them."""

    def __init__(self, root: Path, port: int, latency: float):
        self.root, self.latency = root, latency
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=256)
        self.listener.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.waiting: list = []  # (due time, order, connection, answer): answers held for the latency
        self.order = itertools.count()

    def run(self) -> None:
        while True:
            timeout = max(0.0, self.waiting[0][0] - time.monotonic()) if self.waiting else None
            for key, events in self.selector.select(timeout):
                if key.fileobj is self.listener:
                    self.accept()
                    continue
                if events & selectors.EVENT_READ:
                    self.receive(key.data)
                if not key.data.closed and key.data.answers:
                    self.send(key.data)
            self.release_due()

    def accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:  # another wake-up took it
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector.register(sock, selectors.EVENT_READ, Connection(sock))

    def receive(self, conn: Connection) -> None:
        """Read what came and answer every complete request head in it."""
        try:
            chunk = conn.sock.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client closed
            self.close(conn)
            return
        conn.received += chunk
        while b"\r\n\r\n" in conn.received:
            head, _, conn.received = conn.received.partition(b"\r\n\r\n")
            conn.close_after = conn.close_after or b"\r\nconnection: close" in head.lower()
            reply = answer(self.root, head)
            if self.latency:
                heapq.heappush(self.waiting, (time.monotonic() + self.latency, next(self.order), conn, reply))
            else:
                conn.answers.append(reply)
        if len(conn.received) > MAX_HEAD:  # no head in 64 kB: not HTTP
            self.close(conn)

    def release_due(self) -> None:
        """Hand the answers whose latency has passed to their connections."""
        while self.waiting and self.waiting[0][0] <= time.monotonic():
            _, _, conn, reply = heapq.heappop(self.waiting)
            if conn.closed:
                reply.close()
                continue
            conn.answers.append(reply)
            self.send(conn)

    def send(self, conn: Connection) -> None:
        """Send answers until the socket's buffer is full (then wait until it can be written) or
        none is left; a connection whose client asked to close is closed after its last answer."""
        while conn.answers:
            reply = conn.answers[0]
            try:
                if reply.head:
                    reply.head = reply.head[conn.sock.send(reply.head):]
                    if reply.head:
                        break
                while reply.left:
                    sent = os.sendfile(conn.sock.fileno(), reply.file.fileno(), reply.offset, reply.left)
                    if not sent:  # the file shrank under us: the response cannot be completed
                        raise OSError("file shorter than its Content-Length")
                    reply.offset, reply.left = reply.offset + sent, reply.left - sent
            except BlockingIOError:
                break
            except OSError:  # the client went away
                self.close(conn)
                return
            reply.close()
            conn.answers.popleft()
        if not conn.answers and conn.close_after and not self.waiting_for(conn):
            self.close(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.answers else 0)
        if self.selector.get_key(conn.sock).events != events:
            self.selector.modify(conn.sock, events, conn)

    def waiting_for(self, conn: Connection) -> bool:
        return any(held is conn for _, _, held, _ in self.waiting)

    def close(self, conn: Connection) -> None:
        conn.closed = True
        self.selector.unregister(conn.sock)
        conn.sock.close()
        for reply in conn.answers:
            reply.close()
        conn.answers.clear()


def main(directory: str, port: str, latency: str = "0") -> None:
    Server(Path(directory).resolve(), int(port), float(latency)).run()


if __name__ == "__main__":
    main(*sys.argv[1:4])
