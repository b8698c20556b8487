"""The official `openai` SDK against the controller's Chat Completions door (DESIGN.md 5.1),
with each of the three providers behind it."""

from __future__ import annotations

import openai
import pytest
from conftest import MAX_BODY, PROVIDERS, TOKEN, headers, model, upstream_count

PROMPT = [{"role": "user", "content": "Say something for the front-door suite."}]


def stream_all(client, mdl: str, **kw):  # type: ignore[no-untyped-def]
    text, finish, usage, ids, objects = "", None, None, set(), set()
    with client.chat.completions.create(model=mdl, messages=PROMPT, stream=True, **kw) as s:
        for chunk in s:
            ids.add(chunk.id)
            objects.add(chunk.object)
            if chunk.usage is not None:
                usage = chunk.usage
                assert chunk.choices == []
            for ch in chunk.choices:
                text += ch.delta.content or ""
                if ch.finish_reason:
                    assert finish is None
                    finish = ch.finish_reason
    return text, finish, usage, ids, objects


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_equals_the_emulator_answer_with_usage(provider, openai_door, emulator, controller):  # type: ignore[no-untyped-def]
    client = openai_door(provider)
    text, finish, usage, ids, objects = stream_all(
        client, model(provider, "len9"), stream_options={"include_usage": True}
    )
    assert text == emulator.text("answer", 9)
    assert finish == "stop"
    assert objects == {"chat.completion.chunk"}
    assert len(ids) == 1
    (chunk_id,) = ids
    assert chunk_id.startswith("chatcmpl-ex_")
    assert usage.completion_tokens == 9
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert usage.prompt_tokens_details.cached_tokens == 0
    ex = controller.execution(chunk_id.removeprefix("chatcmpl-"))
    assert ex["status"] == "succeeded" and ex["provider"] == provider and ex["user_id"] == "frontdoor-user"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_completion_equals_the_emulator_answer(provider, openai_door, emulator):  # type: ignore[no-untyped-def]
    client = openai_door(provider)
    raw = client.chat.completions.with_raw_response.create(
        model=model(provider, "len7"),
        messages=[{"role": "system", "content": "Be brief."}, *PROMPT],
        max_completion_tokens=100,
        temperature=0.5,
    )
    c = raw.parse()
    assert raw.headers["x-execution-id"] == c.id.removeprefix("chatcmpl-")
    assert c.object == "chat.completion"
    assert c.choices[0].message.content == emulator.text("answer", 7)
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].finish_reason == "stop"
    assert c.usage.completion_tokens == 7


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_token_limit_ends_with_length(provider, openai_door, emulator):  # type: ignore[no-untyped-def]
    client = openai_door(provider)
    text, finish, _, _, _ = stream_all(client, model(provider, "len9"), max_tokens=3)
    assert (text, finish) == (emulator.text("answer", 3), "length")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("knob", "exc", "status"),
    [
        ("err401", openai.AuthenticationError, 401),
        ("err403", openai.PermissionDeniedError, 403),
        ("err404", openai.NotFoundError, 404),
        ("err400", openai.BadRequestError, 400),
        ("err429", openai.RateLimitError, 429),
        ("err500", openai.InternalServerError, 502),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_raise_the_matching_exception(provider, knob, exc, status, stream, openai_door):  # type: ignore[no-untyped-def]
    client = openai_door(provider)
    with pytest.raises(exc) as info:
        if stream:
            stream_all(client, model(provider, knob, "retry0"))
        else:
            client.chat.completions.create(model=model(provider, knob, "retry0"), messages=PROMPT)
    assert info.value.status_code == status
    assert info.value.response.headers["x-execution-id"].startswith("ex_")
    assert isinstance(info.value.body, dict) and info.value.body["message"]


def test_controller_errors_raise_the_matching_exception(openai_door, controller):  # type: ignore[no-untyped-def]
    with pytest.raises(openai.AuthenticationError):
        openai_door("openai", api_key="not-the-token").chat.completions.create(model="gpt-4o", messages=PROMPT)
    client = openai_door("openai")
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="llama-3-70b", messages=PROMPT)
    assert nf.value.body["param"] == "model"
    for kw in ({"n": 2}, {"logprobs": True}, {"audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"]}):
        with pytest.raises(openai.BadRequestError) as br:
            client.chat.completions.create(model="gpt-4o", messages=PROMPT, **kw)
        assert br.value.body["param"] in kw
    big = [{"role": "user", "content": "x" * (MAX_BODY + 1)}]
    with pytest.raises(openai.APIStatusError) as tl:
        client.chat.completions.create(model="gpt-4o", messages=big)
    assert tl.value.status_code == 413
    no_user = openai.OpenAI(
        base_url=f"{controller.base}/v1", api_key=TOKEN, max_retries=0,
        default_headers={"X-Provider-Api-Key": headers("openai")["X-Provider-Api-Key"]},
    )
    with no_user:
        with pytest.raises(openai.BadRequestError):
            no_user.chat.completions.create(model="gpt-4o", messages=PROMPT)
        # The body's `user` names the user when the header does not.
        c = no_user.chat.completions.create(model="gpt-4o-len2", messages=PROMPT, user="body-user")
    assert controller.execution(c.id.removeprefix("chatcmpl-"))["user_id"] == "body-user"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_mid_stream_failure_raises_and_keeps_the_partial_text(provider, openai_door, emulator):  # type: ignore[no-untyped-def]
    client = openai_door(provider, max_retries=2)
    mdl = model(provider, "len9", "mid3")
    got = ""
    with pytest.raises(openai.APIError):
        with client.chat.completions.create(model=mdl, messages=PROMPT, stream=True) as s:
            for chunk in s:
                for ch in chunk.choices:
                    got += ch.delta.content or ""
    assert got == emulator.text("answer", 3)
    # The SDK never retries a stream that began: one execution, one upstream request.
    assert upstream_count(emulator, mdl) == 1


@pytest.mark.parametrize("provider", PROVIDERS)
def test_retries_never_duplicate_an_execution_that_streamed(provider, openai_door, emulator):  # type: ignore[no-untyped-def]
    client = openai_door(provider, max_retries=2)
    mdl = model(provider, "len9", "mid3")
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=mdl, messages=PROMPT)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert upstream_count(emulator, mdl) == 1
    # A failure before any output is retried by the SDK, as a fresh execution that succeeds.
    mdl = model(provider, "len4", "err503", "times1", "retry100")
    c = client.chat.completions.create(model=mdl, messages=PROMPT)
    assert c.choices[0].message.content == emulator.text("answer", 4)
    assert upstream_count(emulator, mdl) == 2


def test_a_client_that_goes_away_cancels_the_execution(openai_door, controller):  # type: ignore[no-untyped-def]
    client = openai_door("anthropic")
    s = client.chat.completions.create(model=model("anthropic", "len400", "rate40"), messages=PROMPT, stream=True)
    chunk_id = None
    for i, chunk in enumerate(s):
        chunk_id = chunk.id
        if i == 3:
            break
    s.close()
    assert chunk_id is not None
    ex = controller.wait_status(chunk_id.removeprefix("chatcmpl-"), "cancelled")
    assert ex["error"]["kind"] == "cancelled"


def test_models_list_and_retrieve(openai_door):  # type: ignore[no-untyped-def]
    client = openai_door("openai")
    ids = [m.id for m in client.models.list()]
    for p, default in (("openai", "gpt-5-mini"), ("anthropic", "claude-haiku-4-5"), ("google", "gemini-3.5-flash")):
        assert f"{p}/{default}" in ids
    m = client.models.retrieve("google/gemini-3.5-flash")
    assert (m.id, m.owned_by, m.object) == ("google/gemini-3.5-flash", "google", "model")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("openai/no-such-model")
