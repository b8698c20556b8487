"""Gemini generateContent / streamGenerateContent: the official `google-genai`
SDK against the emulator."""

from __future__ import annotations

import pytest
from google import genai
from google.genai import errors, types

from _support import GeminiStream, PROMPT, gemini_parts, gemini_stream, model

BASE = "gemini-2.5-flash"
SPLITS = ["", "split1", "split7"]
THOUGHTS = types.GenerateContentConfig(
    thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024)
)


def nonstream(client, mdl: str, config=None):  # type: ignore[no-untyped-def]
    return client.models.generate_content(model=mdl, contents=PROMPT, config=config)


def retry_delay_seconds(details: dict) -> float | None:
    for d in details.get("error", {}).get("details", []) or []:
        if d.get("@type") == "type.googleapis.com/google.rpc.RetryInfo":
            v = d["retryDelay"]
            assert v.endswith("s"), v
            return float(v[:-1])
    return None


# --- success ---------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: s or "default")
def test_stream_reassembles_nonstream_text(gem, split: str) -> None:
    mdl = model(BASE, "len48", split)
    full = nonstream(gem, mdl)
    text, thoughts = gemini_parts(full)
    assert text and not thoughts
    assert full.text == text
    assert full.candidates[0].finish_reason == types.FinishReason.STOP
    u = full.usage_metadata
    assert u.candidates_token_count == 48
    assert u.prompt_token_count and u.prompt_token_count > 0
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count

    s = gemini_stream(gem, mdl)
    assert len(s.chunks) >= 2
    assert s.text == text
    assert s.finish_reason == types.FinishReason.STOP
    assert s.finish_chunks == 1, "finishReason only on the last chunk"
    last = s.chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert len(s.response_ids) == 1, "responseId is the same on every chunk"
    assert len(s.model_versions) == 1
    # usageMetadata is a running snapshot: the last one is the total.
    assert s.usage.prompt_token_count == u.prompt_token_count
    assert s.usage.candidates_token_count == u.candidates_token_count
    assert s.usage.total_token_count == u.total_token_count


def test_answer_text_has_multibyte_utf8(gem) -> None:
    text = nonstream(gem, model(BASE, "len64")).text
    assert any(ord(c) > 0x7F for c in text)
    assert gemini_stream(gem, model(BASE, "len64", "split1")).text == text


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_thought_parts_surface(gem, split: str) -> None:
    mdl = model(BASE, "len20", "think16", split)
    full = nonstream(gem, mdl, THOUGHTS)
    text, thoughts = gemini_parts(full)
    assert text and thoughts
    # The SDK's .text leaves thought parts out.
    assert full.text == text
    assert full.usage_metadata.thoughts_token_count == 16
    assert full.usage_metadata.candidates_token_count == 20
    u = full.usage_metadata
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count + u.thoughts_token_count

    assert any(p.thought_signature for p in full.candidates[0].content.parts)

    s = gemini_stream(gem, mdl, config=THOUGHTS)
    assert s.thoughts == thoughts
    assert s.text == text
    assert s.usage.thoughts_token_count == 16
    assert s.finish_reason == types.FinishReason.STOP
    sigs = [p.thought_signature for c in s.chunks for cand in c.candidates or []
            for p in (cand.content.parts if cand.content else None) or [] if p.thought_signature]
    assert sigs, "thoughtSignature (base64 bytes) must reach the SDK"


def test_thoughts_hidden_unless_requested(gem) -> None:
    mdl = model(BASE, "len10", "think8")
    s = gemini_stream(gem, mdl)
    assert s.thoughts == "" and s.text
    assert s.usage.thoughts_token_count == 8
    assert s.text == nonstream(gem, mdl).text


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_max_output_tokens(gem, split: str) -> None:
    mdl = model(BASE, "len20", split)
    whole = nonstream(gem, mdl).text
    cfg = types.GenerateContentConfig(max_output_tokens=5)
    cut = nonstream(gem, mdl, cfg)
    assert cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert cut.usage_metadata.candidates_token_count == 5
    assert whole.startswith(cut.text) and len(cut.text) < len(whole)
    s = gemini_stream(gem, mdl, config=cfg)
    assert s.finish_reason == types.FinishReason.MAX_TOKENS
    assert s.text == cut.text
    assert s.usage.candidates_token_count == 5


def test_sdk_sends_key_in_header_not_url(gem, emulator) -> None:
    """Pinned: google-genai 3.3.0 defaults to API version `v1` for the Gemini
    Developer API (wire-formats.md §5.1 recorded `v1beta`); the key goes in the
    `x-goog-api-key` header, never in the URL."""
    mdl = model(BASE, "len5")
    gemini_stream(gem, mdl)
    nonstream(gem, mdl)
    reqs = emulator.requests()
    assert [(r.method, r.path) for r in reqs] == [
        ("POST", f"/v1/models/{mdl}:streamGenerateContent"),
        ("POST", f"/v1/models/{mdl}:generateContent"),
    ]
    assert reqs[0].query == "alt=sse"
    assert reqs[1].query in ("", "None")
    for r in reqs:
        assert r.header("x-goog-api-key") == "AIzaFidelityTestKey0000000000000000000"
        assert "key=" not in r.query
        assert r.header("authorization") is None
        assert r.body["contents"] == [{"role": "user", "parts": [{"text": PROMPT}]}]


def test_v1beta_path_as_our_runtime_uses(emulator) -> None:
    """Our runtime calls /v1beta (wire-formats.md §5.1); the same SDK with
    api_version="v1beta" gets the same stream there."""
    client = genai.Client(
        api_key="AIza-x", http_options=types.HttpOptions(base_url=emulator.base, api_version="v1beta")
    )
    mdl = model(BASE, "len9", "split1")
    s = gemini_stream(client, mdl)
    full = nonstream(client, mdl)
    assert s.text == full.text and s.finish_reason == types.FinishReason.STOP
    assert [r.path for r in emulator.requests()] == [
        f"/v1beta/models/{mdl}:streamGenerateContent",
        f"/v1beta/models/{mdl}:generateContent",
    ]


def test_sdk_generation_config_field_names(gem, emulator) -> None:
    """Pinned: the SDK sends `generationConfig`/`maxOutputTokens` in camelCase but
    the fields inside `thinkingConfig` in snake_case (`include_thoughts`,
    `thinking_budget`); proto-JSON servers accept both, and so must the emulator."""
    s = gemini_stream(gem, model(BASE, "len5", "think4"), config=types.GenerateContentConfig(
        max_output_tokens=7, thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=1024)))
    (r,) = emulator.requests()
    gc = r.body["generationConfig"]
    assert gc["maxOutputTokens"] == 7
    assert gc["thinkingConfig"] == {"include_thoughts": True, "thinking_budget": 1024}
    assert s.thoughts, "the emulator must honour the snake_case include_thoughts"


# --- HTTP errors -------------------------------------------------------------

ERRORS = [
    (400, errors.ClientError, "INVALID_ARGUMENT"),
    (401, errors.ClientError, "UNAUTHENTICATED"),
    (403, errors.ClientError, "PERMISSION_DENIED"),
    (404, errors.ClientError, "NOT_FOUND"),
    (413, errors.ClientError, None),
    (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
    (500, errors.ServerError, "INTERNAL"),
    (503, errors.ServerError, "UNAVAILABLE"),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "nonstream"])
@pytest.mark.parametrize("status,cls,gstatus", ERRORS, ids=[str(s) for s, _, _ in ERRORS])
def test_http_error_maps_to_sdk_class(gem, status: int, cls: type, gstatus: str | None, stream: bool) -> None:
    with pytest.raises(errors.APIError) as ei:
        if stream:
            gemini_stream(gem, model(BASE, f"err{status}"))
        else:
            nonstream(gem, model(BASE, f"err{status}"))
    e = ei.value
    assert type(e) is cls, f"{status} -> {type(e).__name__}"
    assert e.code == status
    assert isinstance(e.details, dict) and e.details["error"]["code"] == status
    assert e.message
    if gstatus is not None:
        assert e.status == gstatus


def test_invalid_key_is_400_api_key_invalid(emulator) -> None:
    client = genai.Client(api_key="AIza-invalid-key", http_options=types.HttpOptions(base_url=emulator.base))
    with pytest.raises(errors.ClientError) as ei:
        gemini_stream(client, model(BASE, "len5"))
    e = ei.value
    assert e.code == 400 and e.status == "INVALID_ARGUMENT"
    reasons = [d.get("reason") for d in e.details["error"].get("details", [])]
    assert "API_KEY_INVALID" in reasons


@pytest.mark.parametrize("status", [429, 503])
def test_retry_info_in_body_not_headers(gem, status: int) -> None:
    with pytest.raises(errors.APIError) as ei:
        gemini_stream(gem, model(BASE, f"err{status}", "retry2500"))
    e = ei.value
    assert e.code == status
    assert retry_delay_seconds(e.details) == pytest.approx(2.5)
    assert "retry-after" not in e.response.headers


# --- in-stream failures ------------------------------------------------------


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_bare_json_503_mid_stream_raises_server_error(gem, split: str) -> None:
    whole = nonstream(gem, model(BASE, "len30")).text
    got = GeminiStream()
    with pytest.raises(errors.ServerError) as ei:
        gemini_stream(gem, model(BASE, "len30", "mid4", split), into=got)
    e = ei.value
    assert e.code == 503 and e.status == "UNAVAILABLE"
    assert e.message
    assert got.text and whole.startswith(got.text)


# --- leniencies (pinned SDK behaviour; our runtime is stricter) --------------


def test_lenient_prompt_block_is_not_an_error(gem) -> None:
    """LENIENCY: a blocked prompt (one chunk, promptFeedback.blockReason, no
    candidates) ends the stream without an exception; `.text` is None. Our
    runtime reports a blocked prompt as an explicit outcome."""
    mdl = model(BASE, "len20", "block")
    s = gemini_stream(gem, mdl)
    assert len(s.chunks) == 1
    (chunk,) = s.chunks
    assert not chunk.candidates
    assert chunk.text is None
    assert chunk.prompt_feedback.block_reason == types.BlockedReason.SAFETY
    full = nonstream(gem, mdl)
    assert not full.candidates and full.text is None
    assert full.prompt_feedback.block_reason == types.BlockedReason.SAFETY


@pytest.mark.parametrize("reason", ["OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"])
def test_lenient_every_block_reason_is_not_an_error(gem, reason: str) -> None:
    """LENIENCY: the same for every `blockReason` the Gemini API sends: the SDK
    parses it into its `BlockedReason` enum and raises nothing."""
    mdl = model(BASE, "len20", f"block{reason}")
    (chunk,) = gemini_stream(gem, mdl).chunks
    assert chunk.text is None
    assert chunk.prompt_feedback.block_reason == types.BlockedReason(reason)
    assert nonstream(gem, mdl).prompt_feedback.block_reason == types.BlockedReason(reason)


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_lenient_truncated_stream_reads_as_clean_end(gem, split: str) -> None:
    """LENIENCY: a stream that ends cleanly before any finishReason chunk is
    not an error for the SDK."""
    whole = nonstream(gem, model(BASE, "len30")).text
    s = gemini_stream(gem, model(BASE, "len30", "trunc5", split))
    assert s.finish_reason is None
    assert s.text and whole.startswith(s.text) and len(s.text) < len(whole)


def test_lenient_drop(gem) -> None:
    """Pinned: an aborted connection surfaces as the HTTP library's transport
    error, not a google.genai APIError."""
    got = GeminiStream()
    with pytest.raises(Exception) as ei:
        gemini_stream(gem, model(BASE, "len30", "drop3"), into=got)
    assert not isinstance(ei.value, errors.APIError)
    assert type(ei.value).__name__ == "RemoteProtocolError", repr(ei.value)
    assert got.finish_reason is None


def test_keepalive_does_not_break_sdk(gem) -> None:
    """Real Gemini streams carry no keep-alive; python-genai would choke on an SSE
    comment line (it is not `data: ` and not JSON). The emulator's `ka` knob must
    therefore keep a Gemini stream parseable."""
    s = gemini_stream(gem, model(BASE, "len6", "rate20", "ka20"))
    assert s.finish_reason == types.FinishReason.STOP
    assert s.text == nonstream(gem, model(BASE, "len6")).text


def test_stall_surfaces_as_read_timeout(emulator) -> None:
    client = genai.Client(api_key="AIza-x", http_options=types.HttpOptions(base_url=emulator.base, timeout=1000))
    got = GeminiStream()
    with pytest.raises(Exception) as ei:
        gemini_stream(client, model(BASE, "len30", "stall2"), into=got)
    assert not isinstance(ei.value, errors.APIError)
    assert type(ei.value).__name__ == "ReadTimeout", repr(ei.value)
    assert got.text


def test_sdk_retry_ignores_retry_info(emulator) -> None:
    """Pinned: with retries switched on, python-genai retries a 429 on its own
    backoff and does not read RetryInfo.retryDelay (5 s here). Our runtime honours it."""
    import time

    from _support import nonce

    client = genai.Client(api_key="AIza-x", http_options=types.HttpOptions(
        base_url=emulator.base,
        retry_options=types.HttpRetryOptions(attempts=2, initial_delay=0.05, max_delay=0.1, http_status_codes=[429]),
    ))
    mdl = model(BASE, "len6", "err429", "retry5000", "times1", nonce())
    t0 = time.monotonic()
    s = gemini_stream(client, mdl)
    elapsed = time.monotonic() - t0
    assert s.finish_reason == types.FinishReason.STOP
    assert elapsed < 2.5, f"{elapsed:.2f}s: the SDK now seems to honour RetryInfo"
    assert len(emulator.requests()) == 2


def test_started_stream_is_never_retried(emulator) -> None:
    from _support import nonce

    client = genai.Client(api_key="AIza-x", http_options=types.HttpOptions(
        base_url=emulator.base,
        retry_options=types.HttpRetryOptions(attempts=3, initial_delay=0.05, max_delay=0.1, http_status_codes=[503]),
    ))
    with pytest.raises(errors.ServerError):
        gemini_stream(client, model(BASE, "len10", "mid1", "times1", nonce()))
    assert len(emulator.requests()) == 1


def test_nonstream_faults(gem) -> None:
    """Pinned: a cleanly-ended half JSON body escapes as json.JSONDecodeError; an
    aborted body is the HTTP library's RemoteProtocolError; `mid` is a 503."""
    import json

    with pytest.raises(json.JSONDecodeError):
        nonstream(gem, model(BASE, "len10", "trunc3"))
    with pytest.raises(Exception) as ei:
        nonstream(gem, model(BASE, "len10", "drop3"))
    assert type(ei.value).__name__ == "RemoteProtocolError", repr(ei.value)
    with pytest.raises(errors.ServerError) as ei2:
        nonstream(gem, model(BASE, "len10", "mid3"))
    assert ei2.value.code == 503 and ei2.value.status == "UNAVAILABLE"
