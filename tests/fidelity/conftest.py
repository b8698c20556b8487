"""Session fixtures for the SDK-fidelity suite.

The suite starts the already-built `polydev-emulator` binary (it builds
nothing itself; tests/fidelity/run.sh does), points the official Python SDKs at
it and checks that they read its streams and errors the way they read the real
providers'.

Nothing here may reach a real provider: the SDKs get explicit 127.0.0.1 base
URLs, provider environment variables are scrubbed, and a resolver guard makes
any non-loopback host name fail loudly.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _support import Emulator  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LISTEN_LINE = re.compile(r"^polydev-emulator listening on (https?://\S+)\s*$")

# Variables through which an SDK could be pointed somewhere else, or pick up a
# real credential. Scrubbed for the whole session.
_SCRUB_PREFIXES = ("OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_", "AZURE_OPENAI_")
_SCRUB_EXACT = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CLOUDSDK_CONFIG",
)
for _k in list(os.environ):
    if _k.startswith(_SCRUB_PREFIXES) or _k in _SCRUB_EXACT:
        del os.environ[_k]
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"

# --- loopback-only guard ---------------------------------------------------
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "ip6-localhost"}
_real_getaddrinfo = socket.getaddrinfo


def _loopback_only_getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    h = host.decode() if isinstance(host, bytes) else host
    if h is not None and h not in _LOOPBACK and not str(h).startswith("127."):
        raise OSError(
            f"fidelity suite: refusing to resolve {h!r}: only the local emulator may be contacted"
        )
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only_getaddrinfo  # type: ignore[assignment]


def _emulator_bin() -> Path:
    env = os.environ.get("POLYDEV_EMULATOR_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    if not target.is_absolute():
        target = ROOT / target
    return target / "debug" / "polydev-emulator"


def _start(bin_path: Path, extra: list[str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [str(bin_path), "--listen", "127.0.0.1:0", *extra],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert proc.stdout is not None
    first: list[bytes] = []

    def read_first() -> None:
        first.append(proc.stdout.readline())  # type: ignore[union-attr]

    t = threading.Thread(target=read_first, daemon=True)
    t.start()
    t.join(30)
    line = first[0].decode("utf-8", "replace") if first else ""
    m = LISTEN_LINE.match(line)
    if not m:
        proc.kill()
        proc.wait()
        log.close()
        tail = log_path.read_text(errors="replace")[-4000:]
        pytest.exit(
            f"polydev-emulator did not print its listening line (got {line!r}, exit {proc.returncode}).\n"
            f"stderr:\n{tail}",
            returncode=3,
        )

    # Keep draining stdout so that a chatty emulator can never block on a full pipe.
    def drain() -> None:
        for _ in proc.stdout:  # type: ignore[union-attr]
            pass

    threading.Thread(target=drain, daemon=True).start()
    proc._fidelity_log = log  # type: ignore[attr-defined]
    return proc, m.group(1).rstrip("/")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc._fidelity_log.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def emulator_bin() -> Path:
    path = _emulator_bin()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.exit(
            f"polydev-emulator binary not found at {path}.\n"
            "Build it with `cargo build -p polydev-emulator` (tests/fidelity/run.sh does), "
            "or point POLYDEV_EMULATOR_BIN at it.",
            returncode=3,
        )
    return path


def _runtime_bin() -> Path:
    env = os.environ.get("POLYDEV_RUNTIME_BIN")
    if env:
        return Path(env)
    return _emulator_bin().parent / "polydev-runtime"


@pytest.fixture(scope="session")
def runtime_bin() -> Path:
    """The `polydev-runtime` binary, for tests that compare its events with an SDK's view."""
    path = _runtime_bin()
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.exit(
            f"polydev-runtime binary not found at {path}.\n"
            "Build it with `cargo build -p polydev-runtime` (tests/fidelity/run.sh does), "
            "or point POLYDEV_RUNTIME_BIN at it.",
            returncode=3,
        )
    return path


@pytest.fixture(scope="session")
def emulator(emulator_bin: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    log_path = tmp_path_factory.mktemp("emulator") / "stderr.log"
    proc, base = _start(emulator_bin, [], log_path)
    assert base.startswith("http://127.0.0.1:"), base
    emu = Emulator(base)
    try:
        emu.status()
        yield emu
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def tls_emulator(emulator_bin: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("emulator-tls")
    ca = d / "ca.pem"
    proc, base = _start(emulator_bin, ["--tls", "--tls-ca-out", str(ca)], d / "stderr.log")
    assert base.startswith("https://"), base
    emu = Emulator(base, ca_file=str(ca))
    try:
        emu.status()
        yield emu
    finally:
        _stop(proc)


@pytest.fixture(autouse=True)
def _fresh_emulator(request: pytest.FixtureRequest) -> None:
    """Reset the emulator (recorded requests, times{N} counters) before each test."""
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").reset()
    if "tls_emulator" in request.fixturenames:
        request.getfixturevalue("tls_emulator").reset()


# --- SDK clients -----------------------------------------------------------

OPENAI_KEY = "sk-proj-fidelity-test-key"
ANTHROPIC_KEY = "sk-ant-api03-fidelity-test-key"
GEMINI_KEY = "AIzaFidelityTestKey0000000000000000000"
TIMEOUT_S = 20.0


@pytest.fixture
def oai(emulator: Emulator):  # type: ignore[no-untyped-def]
    import openai

    with openai.OpenAI(
        api_key=OPENAI_KEY, base_url=f"{emulator.base}/v1", max_retries=0, timeout=TIMEOUT_S
    ) as client:
        yield client


@pytest.fixture
def ant(emulator: Emulator):  # type: ignore[no-untyped-def]
    import anthropic

    with anthropic.Anthropic(
        api_key=ANTHROPIC_KEY, base_url=emulator.base, max_retries=0, timeout=TIMEOUT_S
    ) as client:
        yield client


@pytest.fixture
def gem(emulator: Emulator):  # type: ignore[no-untyped-def]
    from google import genai
    from google.genai import types

    client = genai.Client(
        api_key=GEMINI_KEY,
        http_options=types.HttpOptions(base_url=emulator.base, timeout=int(TIMEOUT_S * 1000)),
    )
    try:
        yield client
    finally:
        client.close()
