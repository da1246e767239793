"""Accepting TCP connections without spending the trio thread on silent ones.

`QuietAcceptor(listener)` takes over one trio SocketListener's `accept` (an instance
attribute; py-libp2p's listener and trio's serve loop stay as they are). It accepts in
batches on a duplicate of the listening socket, keeps each new connection in one epoll set
of its own, and hands a connection to trio (as a SocketStream, to py-libp2p's inbound path)
only once it has sent the start of a multistream-select header (the dialer speaks first).
A connection that closes, stays silent past FIRST_BYTE_TIMEOUT or sends anything else is
closed right here, at the cost of an accept, an epoll registration and a close: no trio task,
no stream object, no protocol work. At most WAITING_SLOTS connections wait at once; a
newcomer evicts the oldest of the source address holding the most (gossip/p2p/admission.py).
When the process runs out of file descriptors, waiting connections are evicted to make room
(trio's own loop would sleep and retry with the queue full).

Why (the connection-churn stall of issue 21): trio's accept path costs about 0.4-0.8 ms of
Python per connection on the trio thread, the thread that carries every established
neighbour. A flood of TCP connections that never send a byte filled py-libp2p's listen queue
(backlog 128), and the kernel kept completing half-open connections into it for many seconds
after the flood ended (SYN-ACK retransmissions), each one again a task and a handshake started
for a client long gone, while established neighbours waited behind them.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import time
from collections import deque

import trio

from .admission import Slots

HEADER = b"\x13/multistream/1.0.0\n"
WAITING_SLOTS = 256
FIRST_BYTE_TIMEOUT = 3.0
BATCH = 256
OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

log = logging.getLogger("gossipfl.libp2p")


class QuietAcceptor:
    def __init__(self, listener, counters, *, capacity: int = WAITING_SLOTS, timeout: float = FIRST_BYTE_TIMEOUT):
        self.listener, self.counters, self.timeout = listener, counters, timeout
        self.sock = socket.socket(fileno=os.dup(listener.socket.fileno()))
        self.sock.setblocking(False)
        self.epoll = select.epoll()
        self.epoll.register(self.sock.fileno(), select.EPOLLIN)
        self.pending: dict[int, tuple[socket.socket, float]] = {}  # fd -> (socket, deadline), oldest first
        self.slots: Slots[int] = Slots(capacity)  # by file descriptor
        self.ready: deque = deque()
        self.closed = False
        self._original = listener.accept
        listener.accept = self.accept

    async def accept(self):
        while not self.ready:
            if self.closed:
                raise trio.ClosedResourceError("the acceptor was closed")
            wait = self.timeout
            if self.pending:
                wait = max(0.0, next(iter(self.pending.values()))[1] - time.monotonic())
            with trio.move_on_after(wait):
                await trio.lowlevel.wait_readable(self.epoll.fileno())
            if not self._step():
                await trio.sleep(0.1)  # out of file descriptors and nothing to evict
        return self.ready.popleft()

    def _step(self) -> bool:
        listen_fd, ok = self.sock.fileno(), True
        for fd, _ in self.epoll.poll(0, BATCH):
            if fd == listen_fd:
                ok = self._accept_batch()
            elif fd in self.pending:
                self._check(fd)
        self._expire()
        return ok

    def _accept_batch(self) -> bool:
        for _ in range(BATCH):
            try:
                conn, address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in OUT_OF_FILES:
                    if not self.pending:
                        log.warning("cannot accept a connection: %s", os.strerror(exc.errno))
                        return False
                    self._drop(next(iter(self.pending)))  # make room: the oldest silent one goes
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                raise
            conn.setblocking(False)
            fd = conn.fileno()
            evicted = self.slots.add(fd, str(address[0]) if address else "?")
            if evicted is not None:
                self._drop(evicted)
            self.pending[fd] = (conn, time.monotonic() + self.timeout)
            self.epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        return True

    def _check(self, fd: int) -> None:
        conn, _ = self.pending[fd]
        try:
            data = conn.recv(len(HEADER), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data or not HEADER.startswith(data):
            self._drop(fd)
            return
        self._release(fd)
        self.ready.append(trio.SocketStream(trio.socket.from_stdlib_socket(conn)))

    def _expire(self) -> None:
        now = time.monotonic()
        while self.pending:
            fd, (_, deadline) = next(iter(self.pending.items()))
            if deadline > now:
                return
            self._drop(fd)

    def _release(self, fd: int) -> tuple[socket.socket, float]:
        entry = self.pending.pop(fd)
        self.slots.remove(fd)
        try:
            self.epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        return entry

    def _drop(self, fd: int) -> None:
        conn, _ = self._release(fd)
        conn.close()
        self.counters.dropped_silent += 1

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in list(self.pending):
            self._release(fd)[0].close()
        for stream in self.ready:
            stream.socket.close()
        self.ready.clear()
        self.epoll.close()
        self.sock.close()
        self.listener.accept = self._original
