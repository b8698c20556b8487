"""Anthropic Messages: the official `anthropic` SDK against the emulator."""

from __future__ import annotations

import re
import time

import anthropic
import pytest

from _support import AnthropicStream, PROMPT, anthropic_blocks, anthropic_stream, model, nonce

BASE = "claude-sonnet-4-5"
SPLITS = ["", "split1", "split7"]
MSGS = [{"role": "user", "content": PROMPT}]
THINKING = {"type": "enabled", "budget_tokens": 1024}


def nonstream(client, mdl: str, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("max_tokens", 1024)
    return client.messages.create(model=mdl, messages=MSGS, **kw)


# The shape of a text-only stream as the SDK yields it (it drops `ping` itself).
TEXT_EVENTS = re.compile(
    r"^message_start content_block_start( content_block_delta)+ content_block_stop"
    r"( message_delta)+ message_stop$"
)


# --- success ---------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: s or "default")
def test_stream_reassembles_nonstream_text(ant, split: str) -> None:
    mdl = model(BASE, "len48", split)
    full = nonstream(ant, mdl)
    assert full.type == "message" and full.role == "assistant"
    text, _, _ = anthropic_blocks(full)
    assert text
    assert full.stop_reason == "end_turn"
    assert full.usage.output_tokens == 48
    assert full.usage.input_tokens > 0

    s = anthropic_stream(ant, mdl)
    assert TEXT_EVENTS.match(" ".join(s.events)), s.events
    assert s.block_types == ["text"]
    assert s.text == text
    assert s.stop_reason == "end_turn"
    assert s.start_usage.input_tokens == full.usage.input_tokens
    # message_delta usage is cumulative: its output_tokens is the final count.
    assert s.delta_usage.output_tokens == full.usage.output_tokens


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_stream_helper_accumulates_same_message(ant, split: str) -> None:
    mdl = model(BASE, "len40", split)
    full = nonstream(ant, mdl)
    with ant.messages.stream(model=mdl, messages=MSGS, max_tokens=1024) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == anthropic_blocks(full)[0]
    assert final.content[0].text == anthropic_blocks(full)[0]
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == full.usage.input_tokens
    assert final.usage.output_tokens == full.usage.output_tokens


def test_answer_text_has_multibyte_utf8(ant) -> None:
    text = anthropic_blocks(nonstream(ant, model(BASE, "len64")))[0]
    assert any(ord(c) > 0x7F for c in text)
    assert anthropic_stream(ant, model(BASE, "len64", "split1")).text == text


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_thinking_blocks_surface(ant, split: str) -> None:
    mdl = model(BASE, "len20", "think16", split)
    full = nonstream(ant, mdl, max_tokens=4096, thinking=THINKING)
    assert [b.type for b in full.content] == ["thinking", "text"]
    text, thinking, sig = anthropic_blocks(full)
    assert thinking and sig and text

    s = anthropic_stream(ant, mdl, max_tokens=4096, thinking=THINKING)
    assert s.block_types == ["thinking", "text"]
    assert s.thinking == thinking
    assert s.text == text
    assert s.signature, "a signature_delta must close the thinking block"
    assert s.stop_reason == "end_turn"
    # Thinking tokens are billed as output tokens.
    assert s.delta_usage.output_tokens == full.usage.output_tokens == 20 + 16

    with ant.messages.stream(model=mdl, messages=MSGS, max_tokens=4096, thinking=THINKING) as st:
        final = st.get_final_message()
    ftext, fthinking, fsig = anthropic_blocks(final)
    assert (ftext, fthinking) == (text, thinking)
    assert fsig == s.signature or fsig


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_max_tokens_stop_reason(ant, split: str) -> None:
    mdl = model(BASE, "len20", split)
    whole = anthropic_blocks(nonstream(ant, mdl))[0]
    cut = nonstream(ant, mdl, max_tokens=5)
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 5
    cut_text = anthropic_blocks(cut)[0]
    assert whole.startswith(cut_text) and len(cut_text) < len(whole)
    s = anthropic_stream(ant, mdl, max_tokens=5)
    assert s.stop_reason == "max_tokens"
    assert s.text == cut_text
    assert s.delta_usage.output_tokens == 5


def test_block_is_refusal_with_stop_details(ant) -> None:
    mdl = model(BASE, "len20", "block")
    full = nonstream(ant, mdl)
    assert full.stop_reason == "refusal"
    # wire-formats.md §4.2: a refusal carries stop_details {type: "refusal", category, explanation}.
    assert full.stop_details is not None and full.stop_details.type == "refusal"
    s = anthropic_stream(ant, mdl)
    assert s.stop_reason == "refusal"
    assert s.stop_details is not None and s.stop_details.type == "refusal"
    assert s.events[-1] == "message_stop"
    assert s.text == anthropic_blocks(full)[0]
    with ant.messages.stream(model=mdl, messages=MSGS, max_tokens=1024) as st:
        final = st.get_final_message()
    assert final.stop_reason == "refusal"
    assert final.stop_details is not None and final.stop_details.type == "refusal"


def test_sdk_sends_api_key_and_version(ant, emulator) -> None:
    """Pinned: anthropic 2.10.0 sends the API key as `Authorization: Bearer` (not
    `x-api-key`, as wire-formats.md §4.1 recorded for the 2026-08 SDK) and its own
    `anthropic-version` constant (2026-10-21, not 2023-06-01). The emulator accepts
    both forms; see docs/sdk-fidelity.md."""
    from anthropic._constants import ANTHROPIC_API_VERSION

    mdl = model(BASE, "len5")
    anthropic_stream(ant, mdl)
    nonstream(ant, mdl)
    reqs = emulator.requests()
    assert [(r.method, r.path) for r in reqs] == [("POST", "/v1/messages")] * 2
    for r in reqs:
        assert r.header("authorization") == "Bearer sk-ant-api03-fidelity-test-key"
        assert r.header("x-api-key") is None
        assert r.header("anthropic-version") == ANTHROPIC_API_VERSION == "2026-10-21"
        assert r.body["model"] == mdl
        assert r.body["max_tokens"] == 1024
        assert r.body["messages"] == MSGS
    assert reqs[0].body["stream"] is True


def test_documented_x_api_key_and_2023_version_accepted(emulator) -> None:
    """What our runtime sends (wire-formats.md §4.1): `x-api-key` and
    `anthropic-version: 2023-06-01`. The SDK can be made to send exactly that."""
    client = anthropic.Anthropic(
        api_key=None, base_url=emulator.base, max_retries=0,
        default_headers={"x-api-key": "sk-ant-api03-doc", "anthropic-version": "2023-06-01"},
    )
    s = anthropic_stream(client, model(BASE, "len5"))
    assert s.stop_reason == "end_turn"
    (r,) = emulator.requests()
    assert r.header("x-api-key") == "sk-ant-api03-doc"
    assert r.header("authorization") is None
    assert r.header("anthropic-version") == "2023-06-01"


def test_missing_version_header_rejected(emulator) -> None:
    client = anthropic.Anthropic(
        api_key="sk-ant-api03-x", base_url=emulator.base, max_retries=0,
        default_headers={"anthropic-version": anthropic.omit},
    )
    with pytest.raises(anthropic.BadRequestError) as ei:
        anthropic_stream(client, model(BASE, "len5"))
    assert ei.value.body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in ei.value.body["error"]["message"]


# --- HTTP errors -------------------------------------------------------------

ERRORS = [
    (400, anthropic.BadRequestError, "invalid_request_error"),
    (401, anthropic.AuthenticationError, "authentication_error"),
    (403, anthropic.PermissionDeniedError, "permission_error"),
    (404, anthropic.NotFoundError, "not_found_error"),
    (413, anthropic.ContentTooLargeError, "request_too_large"),
    (429, anthropic.RateLimitError, "rate_limit_error"),
    (500, anthropic.InternalServerError, "api_error"),
    (503, anthropic.ServiceUnavailableError, None),
    (529, anthropic.OverloadedError, "overloaded_error"),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "nonstream"])
@pytest.mark.parametrize("status,cls,etype", ERRORS, ids=[str(s) for s, _, _ in ERRORS])
def test_http_error_maps_to_sdk_class(ant, status: int, cls: type, etype: str | None, stream: bool) -> None:
    with pytest.raises(anthropic.APIStatusError) as ei:
        if stream:
            anthropic_stream(ant, model(BASE, f"err{status}"))
        else:
            nonstream(ant, model(BASE, f"err{status}"))
    e = ei.value
    assert type(e) is cls, f"{status} -> {type(e).__name__}"
    assert e.status_code == status
    assert isinstance(e.body, dict) and e.body.get("type") == "error", e.body
    assert isinstance(e.body["error"].get("message"), str)
    if etype is not None:
        assert e.body["error"]["type"] == etype
    assert e.request_id and e.request_id.startswith("req_")


def test_invalid_key_is_authentication_error(emulator) -> None:
    client = anthropic.Anthropic(api_key="sk-ant-invalid", base_url=emulator.base, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        anthropic_stream(client, model(BASE, "len5"))
    assert ei.value.status_code == 401
    assert ei.value.body["error"]["type"] == "authentication_error"


def test_429_retry_after_parsed_by_sdk(ant) -> None:
    with pytest.raises(anthropic.RateLimitError) as ei:
        anthropic_stream(ant, model(BASE, "err429", "retry2000"))
    h = ei.value.response.headers
    assert h["retry-after"] == "2"
    assert ant._parse_retry_after_header(h) == pytest.approx(2.0)


def test_529_overloaded(ant) -> None:
    with pytest.raises(anthropic.OverloadedError) as ei:
        anthropic_stream(ant, model(BASE, "err529", "retry3000"))
    e = ei.value
    assert isinstance(e, anthropic.InternalServerError)  # retryable ≥500 family
    assert e.status_code == 529
    assert e.body["error"]["type"] == "overloaded_error"
    assert ant._parse_retry_after_header(e.response.headers) == pytest.approx(3.0)


def test_sdk_retry_honours_hint_then_succeeds(emulator) -> None:
    client = anthropic.Anthropic(api_key="sk-ant-api03-x", base_url=emulator.base, max_retries=1, timeout=20)
    mdl = model(BASE, "len10", "err529", "retry1000", "times1", nonce())
    t0 = time.monotonic()
    s = anthropic_stream(client, mdl)
    elapsed = time.monotonic() - t0
    assert s.stop_reason == "end_turn" and s.text
    assert elapsed >= 1.0, f"SDK retried after {elapsed:.3f}s, before the 1 s hint"
    reqs = emulator.requests()
    assert len(reqs) == 2
    assert reqs[1].header("x-stainless-retry-count") == "1"


# --- in-stream failures ------------------------------------------------------


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_in_stream_overloaded_error(ant, split: str) -> None:
    whole = anthropic_blocks(nonstream(ant, model(BASE, "len30")))[0]
    got = AnthropicStream()
    with pytest.raises(anthropic.APIStatusError) as ei:
        anthropic_stream(ant, model(BASE, "len30", "mid4", split), into=got)
    e = ei.value
    assert e.body["type"] == "error"
    assert e.body["error"]["type"] == "overloaded_error"
    # The HTTP status was 200, so the SDK's status→class table does not pick
    # OverloadedError: it raises the base APIStatusError carrying status 200.
    assert type(e) is anthropic.APIStatusError
    assert e.status_code == 200
    assert got.content_events == 4
    assert got.text and whole.startswith(got.text)
    assert "message_stop" not in got.events


def test_in_stream_overloaded_error_via_helper(ant) -> None:
    with pytest.raises(anthropic.APIStatusError) as ei:
        with ant.messages.stream(model=model(BASE, "len30", "mid2"), messages=MSGS, max_tokens=1024) as st:
            st.get_final_message()
    assert ei.value.body["error"]["type"] == "overloaded_error"


def test_drop_raises(ant) -> None:
    got = AnthropicStream()
    with pytest.raises(Exception) as ei:
        anthropic_stream(ant, model(BASE, "len30", "drop3"), into=got)
    # Pinned: the raw stream does not wrap transport errors into anthropic.APIConnectionError.
    assert type(ei.value).__name__ == "RemoteProtocolError", repr(ei.value)
    assert got.content_events == 3


# --- leniencies (pinned SDK behaviour; our runtime is stricter) --------------


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_lenient_missing_message_stop_reads_as_clean_end(ant, split: str) -> None:
    """LENIENCY: a stream that ends cleanly without `message_stop` is not an error
    for the SDK. Our runtime reports it as truncated."""
    whole = anthropic_blocks(nonstream(ant, model(BASE, "len30")))[0]
    s = anthropic_stream(ant, model(BASE, "len30", "trunc5", split))  # no exception
    assert "message_stop" not in s.events
    assert s.content_events == 5
    assert whole.startswith(s.text) and len(s.text) < len(whole)
    assert s.stop_reason is None


def test_lenient_helper_returns_partial_message(ant) -> None:
    """LENIENCY: `messages.stream().get_final_message()` returns the partial
    snapshot (stop_reason None) instead of raising."""
    with ant.messages.stream(model=model(BASE, "len30", "trunc5"), messages=MSGS, max_tokens=1024) as st:
        final = st.get_final_message()
    assert final.stop_reason is None
    assert final.content and final.content[0].text


def test_keepalive_pings_skipped(ant) -> None:
    s = anthropic_stream(ant, model(BASE, "len6", "rate20", "ka20"))
    assert TEXT_EVENTS.match(" ".join(s.events)), s.events
    assert s.text == anthropic_blocks(nonstream(ant, model(BASE, "len6")))[0]


def test_stall_surfaces_as_read_timeout(emulator) -> None:
    client = anthropic.Anthropic(api_key="sk-ant-x", base_url=emulator.base, max_retries=0, timeout=1.0)
    got = AnthropicStream()
    with pytest.raises(Exception) as ei:
        anthropic_stream(client, model(BASE, "len30", "stall2"), into=got)
    # Pinned: the raw stream does not wrap it into anthropic.APITimeoutError.
    assert type(ei.value).__name__ == "ReadTimeout", repr(ei.value)
    assert got.content_events == 2


def test_thinking_budget_validated(ant) -> None:
    with pytest.raises(anthropic.BadRequestError) as ei:
        nonstream(ant, model(BASE, "len5"), max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 100})
    assert ei.value.body["error"]["type"] == "invalid_request_error"
    assert "budget_tokens" in ei.value.body["error"]["message"]


def test_started_stream_is_never_retried(emulator) -> None:
    """wire-formats.md §6: an in-stream `overloaded_error` is raised, never retried."""
    client = anthropic.Anthropic(api_key="sk-ant-x", base_url=emulator.base, max_retries=2, timeout=20)
    with pytest.raises(anthropic.APIStatusError):
        anthropic_stream(client, model(BASE, "len10", "mid1", "times1", nonce()))
    assert len(emulator.requests()) == 1


def test_nonstream_faults(ant) -> None:
    """Pinned: a cleanly-ended half JSON body escapes as json.JSONDecodeError; an
    aborted body is APIConnectionError (wrapped here, unlike the raw stream);
    `mid` is a 529 OverloadedError."""
    import json

    with pytest.raises(json.JSONDecodeError):
        nonstream(ant, model(BASE, "len10", "trunc3"))
    with pytest.raises(anthropic.APIConnectionError):
        nonstream(ant, model(BASE, "len10", "drop3"))
    with pytest.raises(anthropic.OverloadedError) as ei:
        nonstream(ant, model(BASE, "len10", "mid3"))
    assert ei.value.status_code == 529


def test_thinking_display_omitted_keeps_signature(ant) -> None:
    mdl = model(BASE, "len6", "think8")
    thinking = {"type": "enabled", "budget_tokens": 1024, "display": "omitted"}
    s = anthropic_stream(ant, mdl, max_tokens=4096, thinking=thinking)
    assert s.block_types == ["thinking", "text"]
    assert s.thinking == "" and s.signature
    assert s.delta_usage.output_tokens == 6 + 8
    full = nonstream(ant, mdl, max_tokens=4096, thinking=thinking)
    assert anthropic_blocks(full)[1] == "" and anthropic_blocks(full)[2]


def test_thinking_disabled_has_no_thinking_block(ant) -> None:
    s = anthropic_stream(ant, model(BASE, "len6", "think8"), thinking={"type": "disabled"})
    assert s.block_types == ["text"] and s.thinking == ""
    assert s.delta_usage.output_tokens == 6


# --- content-policy refusals sent as errors (issue 16) -------------------------

FILTERED = "Output blocked by content filtering policy"


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "nonstream"])
def test_content_filter_400_is_plain_bad_request(ant, stream: bool) -> None:
    """Pinned: Anthropic's content-filter refusal is a BadRequestError of type
    `invalid_request_error`; only the message says it was a policy block. Our
    runtime reports it as `blocked`."""
    with pytest.raises(anthropic.BadRequestError) as ei:
        if stream:
            anthropic_stream(ant, model(BASE, "policy400"))
        else:
            nonstream(ant, model(BASE, "policy400"))
    e = ei.value
    assert e.status_code == 400
    assert e.body["error"] == {"type": "invalid_request_error", "message": FILTERED}
    assert e.request_id and e.request_id.startswith("req_")


@pytest.mark.parametrize("after", [0, 3])
def test_in_stream_content_filter_error_is_status_200_api_status_error(ant, after: int) -> None:
    """Pinned: in the stream it is the base APIStatusError with status 200 (as for
    the in-stream overload), before or after output."""
    got = AnthropicStream()
    with pytest.raises(anthropic.APIStatusError) as ei:
        anthropic_stream(ant, model(BASE, "len10", f"policymid{after}"), into=got)
    e = ei.value
    assert type(e) is anthropic.APIStatusError
    assert e.status_code == 200
    assert e.body["error"]["type"] == "invalid_request_error"
    assert e.body["error"]["message"] == FILTERED
    assert got.content_events == after
    assert "message_stop" not in got.events
