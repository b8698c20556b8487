"""Helpers shared by the fidelity tests: the emulator's control API, model-name
knobs, and per-SDK stream collectors that record what the SDK surfaced."""

from __future__ import annotations

import json
import ssl
import urllib.request
import uuid
from dataclasses import dataclass, field
from typing import Any

PROMPT = "Say something for the fidelity suite."


def model(base: str, *knobs: str) -> str:
    """`model("gpt-4o", "len20", "split1")` -> "gpt-4o-len20-split1"."""
    return "-".join([base, *[k for k in knobs if k]])


def nonce() -> str:
    """A token the emulator ignores, making a model name unique (times{N} counts per name)."""
    return "nonce" + uuid.uuid4().hex[:10]


class Emulator:
    """The emulator's own control endpoints (never an SDK path)."""

    def __init__(self, base: str, ca_file: str | None = None) -> None:
        self.base = base
        self.ca_file = ca_file
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if ca_file:
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
        self._opener = urllib.request.build_opener(*handlers)

    def _call(self, method: str, path: str) -> Any:
        req = urllib.request.Request(self.base + path, method=method, data=b"" if method == "POST" else None)
        with self._opener.open(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.strip() else None

    def status(self) -> Any:
        return self._call("GET", "/emulator/status")

    def text(self, kind: str, n: int) -> str:
        """The exact text the emulator says an n-token answer/reasoning carries."""
        req = urllib.request.Request(f"{self.base}/emulator/text?kind={kind}&len={n}")
        with self._opener.open(req, timeout=10) as resp:
            raw = resp.read().decode("utf-8")
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
        return data["text"] if isinstance(data, dict) else data

    def reset(self) -> None:
        self._call("POST", "/emulator/reset")

    def requests(self) -> list[Recorded]:
        data = self._call("GET", "/emulator/requests")
        if isinstance(data, dict):
            data = data.get("requests", data.get("data", []))
        out = [Recorded.parse(r) for r in data]
        return [r for r in out if not r.path.startswith("/emulator/")]


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, list[str]]
    body: Any
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @staticmethod
    def parse(r: dict[str, Any]) -> Recorded:
        hdrs: dict[str, list[str]] = {}
        h = r.get("headers") or {}
        items = h.items() if isinstance(h, dict) else h
        for item in items:
            k, v = (item[0], item[1]) if not isinstance(item, dict) else (item["name"], item["value"])
            for vv in v if isinstance(v, list) else [v]:
                hdrs.setdefault(str(k).lower(), []).append(str(vv))
        body = r.get("body")
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                pass
        query = r.get("query") or ""
        if isinstance(query, dict):
            query = "&".join(f"{k}={v}" for k, v in query.items())
        return Recorded(
            method=str(r.get("method", "")).upper(),
            path=str(r.get("path", "")),
            query=str(query),
            headers=hdrs,
            body=body,
            raw=r,
        )

    def header(self, name: str) -> str | None:
        v = self.headers.get(name.lower())
        return v[0] if v else None


# --------------------------------------------------------------------------
# OpenAI


@dataclass
class OpenAIStream:
    text: str = ""
    refusal: str = ""
    finish_reason: str | None = None
    usage: Any = None
    roles: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    created: set[int] = field(default_factory=set)
    objects: set[str] = field(default_factory=set)
    content_chunks: int = 0
    chunks: int = 0
    usage_chunk_choices: list[Any] | None = None


def openai_stream(client: Any, mdl: str, into: OpenAIStream | None = None, **kw: Any) -> OpenAIStream:
    """Stream a chat completion, recording what the SDK yields. `into` keeps the
    partial record when the SDK raises mid-stream."""
    out = into if into is not None else OpenAIStream()
    kw.setdefault("stream_options", {"include_usage": True})
    stream = client.chat.completions.create(
        model=mdl, messages=[{"role": "user", "content": PROMPT}], stream=True, **kw
    )
    with stream:
        for chunk in stream:
            out.chunks += 1
            out.ids.add(chunk.id)
            out.created.add(chunk.created)
            out.objects.add(chunk.object)
            if chunk.usage is not None:
                out.usage = chunk.usage
                out.usage_chunk_choices = list(chunk.choices)
            for ch in chunk.choices:
                assert ch.index == 0
                d = ch.delta
                if d.role:
                    out.roles.append(d.role)
                if d.content:
                    out.text += d.content
                    out.content_chunks += 1
                if d.refusal:
                    out.refusal += d.refusal
                if ch.finish_reason:
                    assert out.finish_reason is None, "two finish reasons"
                    out.finish_reason = ch.finish_reason
    return out


# --------------------------------------------------------------------------
# Anthropic


@dataclass
class AnthropicStream:
    text: str = ""
    thinking: str = ""
    signature: str = ""
    events: list[str] = field(default_factory=list)
    stop_reason: str | None = None
    stop_details: Any = None
    start_usage: Any = None
    delta_usage: Any = None
    block_types: list[str] = field(default_factory=list)
    content_events: int = 0


def anthropic_stream(client: Any, mdl: str, into: AnthropicStream | None = None, **kw: Any) -> AnthropicStream:
    """Raw `messages.create(stream=True)`: every event the SDK yields, in order."""
    out = into if into is not None else AnthropicStream()
    kw.setdefault("max_tokens", 1024)
    stream = client.messages.create(
        model=mdl, messages=[{"role": "user", "content": PROMPT}], stream=True, **kw
    )
    with stream:
        for ev in stream:
            out.events.append(ev.type)
            if ev.type == "message_start":
                out.start_usage = ev.message.usage
            elif ev.type == "content_block_start":
                out.block_types.append(ev.content_block.type)
            elif ev.type == "content_block_delta":
                out.content_events += 1
                if ev.delta.type == "text_delta":
                    out.text += ev.delta.text
                elif ev.delta.type == "thinking_delta":
                    out.thinking += ev.delta.thinking
                elif ev.delta.type == "signature_delta":
                    out.signature += ev.delta.signature
            elif ev.type == "message_delta":
                out.stop_reason = ev.delta.stop_reason
                out.stop_details = ev.delta.stop_details
                out.delta_usage = ev.usage
    return out


def anthropic_blocks(message: Any) -> tuple[str, str, str]:
    """(text, thinking, signature) of a final Message."""
    text = "".join(b.text for b in message.content if b.type == "text")
    thinking = "".join(b.thinking for b in message.content if b.type == "thinking")
    sig = "".join(b.signature for b in message.content if b.type == "thinking")
    return text, thinking, sig


# --------------------------------------------------------------------------
# Gemini


@dataclass
class GeminiStream:
    text: str = ""
    thoughts: str = ""
    chunks: list[Any] = field(default_factory=list)
    finish_reason: Any = None
    finish_chunks: int = 0
    usage: Any = None
    prompt_feedback: Any = None
    response_ids: set[str] = field(default_factory=set)
    model_versions: set[str] = field(default_factory=set)


def gemini_parts(resp: Any) -> tuple[str, str]:
    """(answer text, thought text) of one GenerateContentResponse."""
    text = thoughts = ""
    for cand in resp.candidates or []:
        assert (cand.index or 0) == 0
        if cand.content is None:
            continue
        for p in cand.content.parts or []:
            if p.text is None:
                continue
            if p.thought:
                thoughts += p.text
            else:
                text += p.text
    return text, thoughts


def gemini_stream(client: Any, mdl: str, into: GeminiStream | None = None, config: Any = None) -> GeminiStream:
    out = into if into is not None else GeminiStream()
    for chunk in client.models.generate_content_stream(model=mdl, contents=PROMPT, config=config):
        out.chunks.append(chunk)
        t, th = gemini_parts(chunk)
        out.text += t
        out.thoughts += th
        if chunk.response_id:
            out.response_ids.add(chunk.response_id)
        if chunk.model_version:
            out.model_versions.add(chunk.model_version)
        if chunk.usage_metadata is not None:
            out.usage = chunk.usage_metadata
        if chunk.prompt_feedback is not None:
            out.prompt_feedback = chunk.prompt_feedback
        for cand in chunk.candidates or []:
            if cand.finish_reason is not None:
                out.finish_reason = cand.finish_reason
                out.finish_chunks += 1
    return out


# --------------------------------------------------------------------------
# The runtime binary, for side-by-side comparisons with the SDKs

RUNTIME_KEYS = {
    "openai": ("OPENAI_API_KEY", "sk-proj-fidelity-test-key", "OPENAI_BASE_URL", "/v1"),
    "anthropic": ("ANTHROPIC_API_KEY", "sk-ant-api03-fidelity-test-key", "ANTHROPIC_BASE_URL", ""),
    "google": ("GOOGLE_API_KEY", "AIzaFidelityTestKey0000000000000000000", "GOOGLE_BASE_URL", ""),
}


def run_runtime(bin_path: Any, base: str, provider: str, mdl: str, env: dict[str, str]) -> list[dict[str, Any]]:
    """Runs `polydev-runtime` for one job against the emulator at `base`; its NDJSON events."""
    import subprocess

    key_var, key, url_var, suffix = RUNTIME_KEYS[provider]
    full = {"PROVIDER": provider, key_var: key, url_var: base + suffix, "MODEL": mdl, "USER_ID": "fidelity", **env}
    proc = subprocess.run([str(bin_path)], env=full, capture_output=True, timeout=30, check=False)
    events = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    assert events and events[-1]["type"] in ("end", "error"), (proc.stdout, proc.stderr)
    return events
