"""OpenAI Chat Completions: the official `openai` SDK against the emulator."""

from __future__ import annotations

import time

import openai
import pytest

from _support import OpenAIStream, model, nonce, openai_stream, PROMPT

BASE = "gpt-4o-mini"
SPLITS = ["", "split1", "split7"]
MSGS = [{"role": "user", "content": PROMPT}]


def nonstream(client, mdl: str, **kw):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(model=mdl, messages=MSGS, **kw)


# --- success ---------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS, ids=lambda s: s or "default")
def test_stream_reassembles_nonstream_text(oai, split: str) -> None:
    mdl = model(BASE, "len48", split)
    full = nonstream(oai, mdl)
    assert full.object == "chat.completion"
    msg = full.choices[0].message
    assert msg.role == "assistant"
    assert msg.content, "non-streaming answer is empty"
    assert full.choices[0].finish_reason == "stop"
    assert full.usage.completion_tokens == 48
    assert full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    s = openai_stream(oai, mdl)
    assert s.text == msg.content
    assert s.finish_reason == "stop"
    assert s.roles == ["assistant"], "role must come once, on the first delta"
    assert len(s.ids) == 1 and len(s.created) == 1, "id/created must be the same on every chunk"
    assert s.objects == {"chat.completion.chunk"}
    assert s.content_chunks >= 2
    # include_usage: one extra chunk with choices == [] and the whole request's usage.
    assert s.usage_chunk_choices == []
    assert s.usage.prompt_tokens == full.usage.prompt_tokens
    assert s.usage.completion_tokens == full.usage.completion_tokens
    assert s.usage.total_tokens == full.usage.total_tokens


def test_answer_text_has_multibyte_utf8(oai) -> None:
    text = nonstream(oai, model(BASE, "len64")).choices[0].message.content
    assert any(ord(c) > 0x7F for c in text), "answer_text should exercise multi-byte UTF-8"
    assert openai_stream(oai, model(BASE, "len64", "split1")).text == text


def test_without_include_usage_no_usage_chunk(oai) -> None:
    mdl = model(BASE, "len12")
    s = openai_stream(oai, mdl, stream_options=openai.omit)
    assert s.usage is None
    assert s.finish_reason == "stop"
    assert s.text == nonstream(oai, mdl).choices[0].message.content


def test_high_level_stream_helper_final_completion(oai) -> None:
    mdl = model(BASE, "len30", "split3")
    full = nonstream(oai, mdl)
    with oai.chat.completions.stream(
        model=mdl, messages=MSGS, stream_options={"include_usage": True}
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == full.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == 30


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_reasoning_tokens_in_usage_only(oai, split: str) -> None:
    mdl = model(BASE, "len20", "think16", split)
    full = nonstream(oai, mdl)
    u = full.usage
    assert u.completion_tokens_details is not None
    assert u.completion_tokens_details.reasoning_tokens == 16
    # OpenAI counts reasoning tokens inside completion_tokens.
    assert u.completion_tokens == 20 + 16
    s = openai_stream(oai, mdl)
    assert s.text == full.choices[0].message.content
    assert s.usage.completion_tokens_details.reasoning_tokens == 16
    assert s.usage.completion_tokens == u.completion_tokens
    # The Chat Completions SDK surfaces no reasoning text: only the count.
    assert not hasattr(full.choices[0].message, "reasoning_content") or not getattr(
        full.choices[0].message, "reasoning_content", None
    )


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_max_completion_tokens_gives_length(oai, split: str) -> None:
    mdl = model(BASE, "len20", split)
    whole = nonstream(oai, mdl).choices[0].message.content
    cut = nonstream(oai, mdl, max_completion_tokens=5)
    assert cut.choices[0].finish_reason == "length"
    assert cut.usage.completion_tokens == 5
    assert whole.startswith(cut.choices[0].message.content)
    assert len(cut.choices[0].message.content) < len(whole)
    s = openai_stream(oai, mdl, max_completion_tokens=5)
    assert s.finish_reason == "length"
    assert s.text == cut.choices[0].message.content
    assert s.usage.completion_tokens == 5


def test_legacy_max_tokens_also_limits(oai) -> None:
    s = openai_stream(oai, model(BASE, "len20"), max_tokens=4)
    assert s.finish_reason == "length"
    assert s.usage.completion_tokens == 4


def test_block_gives_content_filter(oai) -> None:
    mdl = model(BASE, "len20", "block")
    full = nonstream(oai, mdl)
    assert full.choices[0].finish_reason == "content_filter"
    s = openai_stream(oai, mdl)
    assert s.finish_reason == "content_filter"
    assert s.text == (full.choices[0].message.content or "")


def test_sdk_sends_bearer_auth(oai, emulator) -> None:
    mdl = model(BASE, "len5")
    openai_stream(oai, mdl)
    nonstream(oai, mdl)
    reqs = emulator.requests()
    assert [(r.method, r.path) for r in reqs] == [("POST", "/v1/chat/completions")] * 2
    for r in reqs:
        assert r.header("authorization") == "Bearer sk-proj-fidelity-test-key"
        assert (r.header("content-type") or "").startswith("application/json")
        assert r.header("x-api-key") is None
        assert r.body["model"] == mdl
        assert r.body["messages"] == MSGS
    assert reqs[0].body["stream"] is True
    assert reqs[0].body["stream_options"] == {"include_usage": True}
    assert "stream" not in reqs[1].body or reqs[1].body["stream"] is False


# --- HTTP errors -------------------------------------------------------------

ERRORS = [
    (400, openai.BadRequestError),
    (401, openai.AuthenticationError),
    (403, openai.PermissionDeniedError),
    (404, openai.NotFoundError),
    (413, openai.APIStatusError),  # no dedicated class in the SDK
    (429, openai.RateLimitError),
    (500, openai.InternalServerError),
    (503, openai.InternalServerError),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "nonstream"])
@pytest.mark.parametrize("status,cls", ERRORS, ids=[str(s) for s, _ in ERRORS])
def test_http_error_maps_to_sdk_class(oai, status: int, cls: type, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as ei:
        if stream:
            openai_stream(oai, model(BASE, f"err{status}"))
        else:
            nonstream(oai, model(BASE, f"err{status}"))
    e = ei.value
    assert type(e) is cls, f"{status} -> {type(e).__name__}"
    assert e.status_code == status
    # The SDK unwraps {"error": {...}}: body is the inner object.
    assert isinstance(e.body, dict), e.body
    assert isinstance(e.body.get("message"), str) and e.body["message"]
    assert "type" in e.body and "code" in e.body and "param" in e.body
    assert e.type == e.body["type"]
    assert e.request_id, "x-request-id should be on error responses"


def test_invalid_key_is_authentication_error(emulator) -> None:
    client = openai.OpenAI(api_key="sk-invalid-key", base_url=f"{emulator.base}/v1", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as ei:
        openai_stream(client, model(BASE, "len5"))
    assert ei.value.status_code == 401
    assert ei.value.code == "invalid_api_key"
    assert ei.value.type == "invalid_request_error"


def test_429_retry_hint_parsed_by_sdk(oai) -> None:
    with pytest.raises(openai.RateLimitError) as ei:
        openai_stream(oai, model(BASE, "err429", "retry1500"))
    h = ei.value.response.headers
    assert float(h["retry-after-ms"]) == 1500
    assert float(h["retry-after"]) >= 1.5 or h["retry-after"] == "1.5"
    # What the SDK itself would wait before its retry.
    assert oai._parse_retry_after_header(h) == pytest.approx(1.5)


def test_503_maps_to_internal_server_error_with_hint(oai) -> None:
    with pytest.raises(openai.InternalServerError) as ei:
        nonstream(oai, model(BASE, "err503", "retry2000"))
    assert ei.value.status_code == 503
    assert oai._parse_retry_after_header(ei.value.response.headers) == pytest.approx(2.0)


def test_sdk_retry_honours_hint_then_succeeds(emulator) -> None:
    client = openai.OpenAI(
        api_key="sk-proj-fidelity-test-key", base_url=f"{emulator.base}/v1", max_retries=1, timeout=20
    )
    mdl = model(BASE, "len10", "err429", "retry400", "times1", nonce())
    t0 = time.monotonic()
    s = openai_stream(client, mdl)
    elapsed = time.monotonic() - t0
    assert s.finish_reason == "stop" and s.text
    assert elapsed >= 0.4, f"SDK retried after {elapsed:.3f}s, before the 400 ms hint"
    reqs = emulator.requests()
    assert len(reqs) == 2
    assert reqs[1].header("x-stainless-retry-count") == "1"


# --- in-stream failures ------------------------------------------------------


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_in_stream_error_chunk_raises_api_error(oai, split: str) -> None:
    whole = nonstream(oai, model(BASE, "len30")).choices[0].message.content
    got = OpenAIStream()
    with pytest.raises(openai.APIError) as ei:
        openai_stream(oai, model(BASE, "len30", "mid4", split), into=got)
    e = ei.value
    # HTTP was already 200: the SDK raises the plain APIError, not a status error.
    assert type(e) is openai.APIError
    assert isinstance(e.body, dict) and e.body.get("message")
    assert e.message == e.body["message"]
    assert got.content_chunks == 4
    assert whole.startswith(got.text) and got.text
    assert got.finish_reason is None


def test_drop_raises_connection_error(oai) -> None:
    got = OpenAIStream()
    with pytest.raises(openai.APIConnectionError):
        openai_stream(oai, model(BASE, "len30", "drop3"), into=got)
    assert got.content_chunks == 3
    assert got.finish_reason is None


# --- leniencies (pinned SDK behaviour; our runtime is stricter) --------------


@pytest.mark.parametrize("split", ["", "split1"], ids=lambda s: s or "default")
def test_lenient_truncated_stream_reads_as_clean_end(oai, split: str) -> None:
    """LENIENCY: a stream that ends cleanly without `data: [DONE]` is not an
    error for the SDK: iteration just stops. Our runtime reports it as truncated."""
    whole = nonstream(oai, model(BASE, "len30")).choices[0].message.content
    s = openai_stream(oai, model(BASE, "len30", "trunc5", split))  # no exception
    assert s.content_chunks == 5
    assert whole.startswith(s.text) and len(s.text) < len(whole)
    assert s.finish_reason is None
    assert s.usage is None


def test_lenient_truncated_stream_helper_returns_partial_completion(oai) -> None:
    """LENIENCY: even the accumulating helper returns a 'final' completion with
    finish_reason None instead of raising."""
    with oai.chat.completions.stream(model=model(BASE, "len30", "trunc5"), messages=MSGS) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].finish_reason is None
    assert final.choices[0].message.content


def test_keepalive_comments_ignored(oai) -> None:
    mdl = model(BASE, "len6", "rate20", "ka20")
    s = openai_stream(oai, mdl)
    assert s.finish_reason == "stop"
    assert s.text == nonstream(oai, model(BASE, "len6")).choices[0].message.content


def test_stall_surfaces_as_sdk_timeout(emulator) -> None:
    client = openai.OpenAI(api_key="sk-proj-x", base_url=f"{emulator.base}/v1", max_retries=0, timeout=1.0)
    got = OpenAIStream()
    with pytest.raises(openai.APITimeoutError):
        openai_stream(client, model(BASE, "len30", "stall2"), into=got)
    assert got.content_chunks == 2


def test_max_tokens_rejected_for_reasoning_models(oai) -> None:
    """wire-formats.md §2.1: `max_tokens` on gpt-5 / o-series is a 400 unsupported_parameter."""
    with pytest.raises(openai.BadRequestError) as ei:
        openai_stream(oai, model("gpt-5-mini", "len5"), max_tokens=5)
    assert ei.value.code == "unsupported_parameter"
    assert ei.value.param == "max_tokens"
    s = openai_stream(oai, model("gpt-5-mini", "len5"), max_completion_tokens=5)
    assert s.finish_reason == "stop"


def test_started_stream_is_never_retried(emulator) -> None:
    """wire-formats.md §6: the SDK raises on an in-stream error and does not
    retry, even with retries enabled and a retryable-looking error."""
    client = openai.OpenAI(api_key="sk-proj-x", base_url=f"{emulator.base}/v1", max_retries=2, timeout=20)
    with pytest.raises(openai.APIError):
        openai_stream(client, model(BASE, "len10", "mid1", "times1", nonce()))
    assert len(emulator.requests()) == 1


def test_nonstream_faults(oai) -> None:
    """Pinned: a cleanly-ended half JSON body escapes as json.JSONDecodeError (not
    an openai error); an aborted body is APIConnectionError; `mid` is a 500."""
    import json

    with pytest.raises(json.JSONDecodeError):
        nonstream(oai, model(BASE, "len10", "trunc3"))
    with pytest.raises(openai.APIConnectionError):
        nonstream(oai, model(BASE, "len10", "drop3"))
    with pytest.raises(openai.InternalServerError) as ei:
        nonstream(oai, model(BASE, "len10", "mid3"))
    assert ei.value.status_code == 500 and ei.value.type == "server_error"


# --- content-policy refusals sent as errors (issue 16) -------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "nonstream"])
def test_invalid_prompt_policy_400_is_plain_bad_request(oai, stream: bool) -> None:
    """Pinned: OpenAI's usage-policy refusal is an ordinary BadRequestError; only
    `code == "invalid_prompt"` and the message tell it from a malformed request.
    Our runtime reports it as `blocked`."""
    with pytest.raises(openai.BadRequestError) as ei:
        if stream:
            openai_stream(oai, model(BASE, "policy400"))
        else:
            nonstream(oai, model(BASE, "policy400"))
    e = ei.value
    assert e.status_code == 400
    assert e.code == "invalid_prompt"
    assert e.type == "invalid_request_error"
    assert "usage policy" in e.message


def test_azure_content_filter_400_keeps_innererror_in_body(oai) -> None:
    """Pinned: Azure's content filter 400 is a BadRequestError with `code ==
    "content_filter"`; the SDK exposes `innererror` only through `e.body`."""
    with pytest.raises(openai.BadRequestError) as ei:
        openai_stream(oai, model(BASE, "azure400"))
    e = ei.value
    assert e.code == "content_filter" and e.param == "prompt" and e.type is None
    assert e.body["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert e.body["innererror"]["content_filter_result"]["violence"]["filtered"] is True
    assert not isinstance(e, openai.ContentFilterFinishReasonError)


@pytest.mark.parametrize("after", [0, 3])
def test_in_stream_policy_error_is_plain_api_error(oai, after: int) -> None:
    """Pinned: in the stream the same error object becomes the base APIError (no
    status class, HTTP was 200), before or after output."""
    got = OpenAIStream()
    with pytest.raises(openai.APIError) as ei:
        openai_stream(oai, model(BASE, "len10", f"policymid{after}"), into=got)
    e = ei.value
    assert type(e) is openai.APIError
    assert e.code == "invalid_prompt" and "usage policy" in e.message
    assert got.content_chunks == after
