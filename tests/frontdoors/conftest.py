"""Session fixtures for the front-door suite: the official `openai` and `anthropic` SDKs
pointed at a real `polydev-controller` (process backend, real `polydev-runtime` children) in
front of `polydev-emulator`, on 127.0.0.1 only.

The emulator fixtures, the environment scrubbing and the loopback-only resolver guard are the
fidelity suite's own (tests/fidelity/conftest.py), loaded from there rather than copied.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_FIDELITY = ROOT / "tests" / "fidelity" / "conftest.py"
_spec = importlib.util.spec_from_file_location("fidelity_conftest", _FIDELITY)
assert _spec is not None and _spec.loader is not None
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)

# The fidelity suite's fixtures, registered here by name.
emulator_bin = fidelity.emulator_bin
emulator = fidelity.emulator
_fresh_emulator = fidelity._fresh_emulator
runtime_bin = fidelity.runtime_bin

TOKEN = "test-token-frontdoors-0000"
USER = "frontdoor-user"
MAX_BODY = 65536
LISTEN_LINE = re.compile(r"^polydev-controller listening on (http://\S+)\s*$")
KEYS = {"openai": fidelity.OPENAI_KEY, "anthropic": fidelity.ANTHROPIC_KEY, "google": fidelity.GEMINI_KEY}
BASES = {"openai": "gpt-4o", "anthropic": "claude-haiku-4-5", "google": "gemini-2.5-flash"}
PROVIDERS = list(BASES)
TIMEOUT_S = fidelity.TIMEOUT_S


def _bin(name: str) -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / name


class Controller:
    """A running controller and its native API (for checks the SDKs cannot make)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.base + path, method=method, headers={"authorization": f"Bearer {TOKEN}"}
        )
        try:
            with self._opener.open(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def execution(self, execution_id: str) -> Any:
        status, body = self.call("GET", f"/v1/executions/{execution_id}")
        assert status == 200, body
        return body

    def wait_status(self, execution_id: str, want: str, limit: float = 10.0) -> Any:
        deadline = time.monotonic() + limit
        while True:
            v = self.execution(execution_id)
            if v["status"] == want:
                return v
            assert time.monotonic() < deadline, f"{execution_id} is {v['status']}, not {want}"
            time.sleep(0.05)


@pytest.fixture(scope="session")
def controller(emulator, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    binary = _bin("polydev-controller")
    if not binary.is_file():
        pytest.exit(f"{binary} is missing: tests/frontdoors/run.sh builds it", returncode=3)
    d = tmp_path_factory.mktemp("controller")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "POLYDEV_LISTEN": "127.0.0.1:0",
        "POLYDEV_API_TOKEN": TOKEN,
        "POLYDEV_BACKEND": "process",
        "POLYDEV_DB": str(d / "polydev.db"),
        "POLYDEV_POOL_SIZE": "2",
        "POLYDEV_MAX_BODY_BYTES": str(MAX_BODY),
        "POLYDEV_LOG": "info",
        "OPENAI_BASE_URL": f"{emulator.base}/v1",
        "ANTHROPIC_BASE_URL": emulator.base,
        "GOOGLE_BASE_URL": emulator.base,
        # One attempt per execution: a retry is then visible as a second execution.
        "MAX_ATTEMPTS": "1",
        "NO_PROXY": "127.0.0.1,localhost,::1",
    }
    log = open(d / "stderr.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([str(binary)], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    assert proc.stdout is not None
    first: list[bytes] = []
    t = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    t.start()
    t.join(30)
    m = LISTEN_LINE.match(first[0].decode() if first else "")
    if not m:
        proc.kill()
        proc.wait()
        log.close()
        pytest.exit(f"controller did not start:\n{(d / 'stderr.log').read_text()[-4000:]}", returncode=3)
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        yield Controller(m.group(1))
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def headers(provider: str, user: str = USER) -> dict[str, str]:
    return {"X-Provider-Api-Key": KEYS[provider], "X-User-Id": user}


@pytest.fixture
def openai_door(controller: Controller):  # type: ignore[no-untyped-def]
    """`make(provider, **kw)`: an `openai.OpenAI` on the controller with that provider's key."""
    import openai

    clients: list[Any] = []

    def make(provider: str, **kw: Any) -> Any:
        kw.setdefault("max_retries", 0)
        kw.setdefault("api_key", TOKEN)
        c = openai.OpenAI(
            base_url=f"{controller.base}/v1",
            default_headers=headers(provider),
            timeout=TIMEOUT_S,
            **kw,
        )
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def anthropic_door(controller: Controller):  # type: ignore[no-untyped-def]
    """`make(provider, **kw)`: an `anthropic.Anthropic` on the controller with that provider's key."""
    import anthropic

    clients: list[Any] = []

    def make(provider: str, **kw: Any) -> Any:
        kw.setdefault("max_retries", 0)
        if "auth_token" not in kw:
            kw.setdefault("api_key", TOKEN)
        c = anthropic.Anthropic(
            base_url=controller.base,
            default_headers=headers(provider),
            timeout=TIMEOUT_S,
            **kw,
        )
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def model(provider: str, *knobs: str, prefixed: bool = True) -> str:
    """`provider/<base>-<knobs>-<nonce>`: a unique emulator scenario per call."""
    name = fidelity_support().model(BASES[provider], *knobs, fidelity_support().nonce())
    return f"{provider}/{name}" if prefixed else name


def fidelity_support() -> Any:
    import _support  # the fidelity suite's helpers (its conftest put it on sys.path)

    return _support


def upstream_count(emulator: Any, name: str) -> int:
    """Requests the emulator received for the model `name` (bare, without the provider)."""
    bare = name.split("/", 1)[-1]
    n = 0
    for r in emulator.requests():
        body = r.body if isinstance(r.body, dict) else {}
        if body.get("model") == bare or bare in r.path:
            n += 1
    return n
