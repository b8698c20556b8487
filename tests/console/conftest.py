"""Fixtures for the console's browser tests: the emulator, a controller pointed at it (process
backend, a token, a throwaway SQLite file), and headless Chromium.

Everything listens on 127.0.0.1; no real provider is contacted (the runtimes' base URLs are
the emulator's, and the keys are obvious fakes).

Chromium: scripts/setup-chromium.sh installs Debian's `chromium` where it can. Where it is
still absent, the tests skip with the reason, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cdp import Browser, find_chromium  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "console-test-token-not-a-secret"
LISTEN = re.compile(r"^(polydev-\w+) listening on (https?://\S+)\s*$")


def bin_dir() -> Path:
    env = os.environ.get("POLYDEV_BIN_DIR")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug"


class Server:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self.log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = LISTEN.match(line)
        if not m:
            self.stop()
            raise RuntimeError(f"{argv[0]} did not start: {line!r}; log: {log.read_text()[-2000:]}")
        self.url = m.group(2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="polydev-console-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def emulator(workdir: Path) -> Iterator[Server]:
    s = Server([str(bin_dir() / "polydev-emulator"), "--listen", "127.0.0.1:0"],
               dict(os.environ), workdir / "emulator.log")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def controller(emulator: Server, workdir: Path) -> Iterator[Server]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POLYDEV_", "OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_"))}
    env.update({
        "POLYDEV_LISTEN": "127.0.0.1:0",
        "POLYDEV_API_TOKEN": TOKEN,
        "POLYDEV_DB": str(workdir / "polydev.db"),
        "POLYDEV_POOL_SIZE": "2",
        "OPENAI_BASE_URL": emulator.url + "/v1",
        "ANTHROPIC_BASE_URL": emulator.url,
        "GOOGLE_BASE_URL": emulator.url,
        "RUST_LOG": "info",
    })
    s = Server([str(bin_dir() / "polydev-controller")], env, workdir / "controller.log")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        reason = ("headless Chromium is not installed (Debian package `chromium`; "
                  "scripts/setup-chromium.sh installs it)")
        if os.environ.get("CI") == "true":
            pytest.fail(reason + ": required under CI=true")
        pytest.skip(reason)
    b = Browser(binary)
    yield b
    b.close()


def http(method: str, url: str, body: bytes | None = None, token: str | None = TOKEN,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def wait_until(cond, timeout: float = 20, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of the controller whose open connections a test can
    cut at once, the way a flaky network or a restarting load balancer does."""

    def __init__(self, upstream: str) -> None:
        import socket
        import threading

        host, port = upstream.split("//", 1)[1].rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:  # type: ignore[no-untyped-def]
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop_all(self) -> None:
        import socket

        with self.lock:
            conns, self.open = self.open, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.drop_all()


@pytest.fixture()
def proxy(controller: Server) -> Iterator[DroppingProxy]:
    p = DroppingProxy(controller.url)
    yield p
    p.close()
