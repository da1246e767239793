"""Driving tests/p2p_node.py processes inside the network lab (tests/netlab.py).

    node = LabNode(lab, host, {"peers": [peer_spec(a, neighbours={...}, relays=[...])]}, tmp_path)
    node.call("send", **{"from": a.peer_id, "to": b.peer_id, "size": 1000})   # -> the reply
    node.wait_got(lambda got: ..., timeout)   # the deliveries so far, once the predicate holds
    node.status()[a.peer_id]["links"]

Every call and wait is bounded; the lab stops the processes at teardown.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from gossip.identity import Identity

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
START_TIMEOUT = 90.0
PORT = 4001


def addr(host_address: str, identity: Identity | None = None, port: int = PORT) -> str:
    text = f"/ip4/{host_address}/tcp/{port}"
    return f"{text}/p2p/{identity.peer_id}" if identity is not None else text


def peer_spec(identity: Identity, **settings) -> dict:
    return {"seed": identity.seed.hex(), "listen": [f"/ip4/0.0.0.0/tcp/{PORT}"], **settings}


def relay_spec(identity: Identity, allowed: list[Identity], **limits) -> dict:
    return {"relay": {"seed": identity.seed.hex(), "listen": [f"/ip4/0.0.0.0/tcp/{PORT}"],
                      "allowed": [i.peer_id for i in allowed], "limits": limits}}


class LabNode:
    def __init__(self, lab, host, spec: dict, log_dir: Path, name: str | None = None):
        self.name = name or host.name
        self.log = log_dir / f"{self.name}.log"
        self.proc = lab.run(host, [sys.executable, "-m", "tests.p2p_node", json.dumps(spec)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True, env=ENV, cwd=str(ROOT))
        self.got: list[dict] = []
        self.addrs: dict[str, list[str]] = {}
        self._replies: dict[int, dict] = {}
        self._ids = itertools.count()
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        with self._changed:
            if not self._changed.wait_for(lambda: self.addrs or self.proc.poll() is not None, START_TIMEOUT):
                raise AssertionError(f"{self.name} did not start:\n{self.tail()}")
        if not self.addrs:
            raise AssertionError(f"{self.name} exited:\n{self.tail()}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                if event.get("event") == "ready":
                    self.addrs = event["addrs"]
                elif event.get("event") == "got":
                    self.got.append(event)
                elif event.get("event") == "reply":
                    self._replies[event["id"]] = event
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text()[-n:]
        except OSError:
            return ""

    def call(self, op: str, timeout: float = 60.0, **args) -> dict:
        i = next(self._ids)
        self.proc.stdin.write(json.dumps({"op": op, "id": i, **args}) + "\n")
        self.proc.stdin.flush()
        with self._changed:
            if not self._changed.wait_for(lambda: i in self._replies or self.proc.poll() is not None, timeout):
                raise AssertionError(f"{self.name}: no reply to {op} in {timeout:.0f} s:\n{self.tail()}")
        if i not in self._replies:
            raise AssertionError(f"{self.name} exited during {op}:\n{self.tail()}")
        reply = self._replies.pop(i)
        assert "error" not in reply, (self.name, reply, self.tail())
        return reply

    def send(self, sender: Identity, to: Identity, size: int = 1000, head: str = "", timeout: float = 60.0) -> bool:
        return self.call("send", timeout, **{"from": sender.peer_id, "to": to.peer_id, "size": size,
                                             "head": head})["ok"]

    def status(self) -> dict:
        return self.call("status")["status"]

    def wait_got(self, predicate, timeout: float) -> list[dict]:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.got), timeout):
                raise AssertionError(f"{self.name}: deliveries {self.got} never matched:\n{self.tail()}")
            return list(self.got)

    def wait_status(self, predicate, timeout: float, every: float = 0.5) -> dict:
        """Poll status() until predicate(status) holds."""
        end = time.monotonic() + timeout
        while True:
            status = self.status()
            if predicate(status):
                return status
            if time.monotonic() > end:
                raise AssertionError(f"{self.name}: status never matched: {status}\n{self.tail()}")
            time.sleep(every)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def send_until(node: LabNode, sender: Identity, to: Identity, timeout: float, **kw) -> bool:
    """Send until a send succeeds (a first dial may still be waiting for a reservation)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if node.send(sender, to, **kw):
            return True
        time.sleep(0.5)
    return False
