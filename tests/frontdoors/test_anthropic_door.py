"""The official `anthropic` SDK against the controller's Messages door (DESIGN.md 5.1), with
each of the three providers behind it."""

from __future__ import annotations

import anthropic
import pytest
from conftest import PROVIDERS, TOKEN, model, upstream_count

PROMPT = [{"role": "user", "content": "Say something for the front-door suite."}]


def raw_stream(client, mdl: str, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("max_tokens", 1024)
    events, text, stop, usage, start = [], "", None, None, None
    with client.messages.create(model=mdl, messages=PROMPT, stream=True, **kw) as s:
        for ev in s:
            events.append(ev.type)
            if ev.type == "message_start":
                start = ev.message
            elif ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                text += ev.delta.text
            elif ev.type == "message_delta":
                stop, usage = ev.delta.stop_reason, ev.usage
    return events, text, stop, usage, start


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_events_and_text(provider, anthropic_door, emulator, controller):  # type: ignore[no-untyped-def]
    events, text, stop, usage, start = raw_stream(anthropic_door(provider), model(provider, "len9"))
    assert text == emulator.text("answer", 9)
    assert stop == "end_turn"
    assert usage.output_tokens == 9 and usage.input_tokens > 0
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert events[1] == "content_block_start"  # the SDK does not yield pings
    assert events[-3:-1] == ["content_block_stop", "message_delta"]
    assert start.id.startswith("msg_ex_") and start.role == "assistant"
    ex = controller.execution(start.id.removeprefix("msg_"))
    assert (ex["status"], ex["provider"]) == ("succeeded", provider)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_helper_and_final_message(provider, anthropic_door, emulator):  # type: ignore[no-untyped-def]
    client = anthropic_door(provider)
    with client.messages.stream(
        model=model(provider, "len6"), max_tokens=100, messages=PROMPT, system="Be brief."
    ) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    answer = emulator.text("answer", 6)
    assert streamed == answer
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == answer
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 6


@pytest.mark.parametrize("provider", PROVIDERS)
def test_message_equals_the_emulator_answer(provider, anthropic_door, emulator):  # type: ignore[no-untyped-def]
    raw = anthropic_door(provider).messages.with_raw_response.create(
        model=model(provider, "len9"), max_tokens=4, messages=PROMPT
    )
    m = raw.parse()
    assert raw.headers["x-execution-id"] == m.id.removeprefix("msg_")
    assert m.type == "message" and m.role == "assistant"
    assert m.content[0].text == emulator.text("answer", 4)
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 4


def test_bearer_auth_also_works(anthropic_door, emulator):  # type: ignore[no-untyped-def]
    client = anthropic_door("openai", auth_token=TOKEN)
    m = client.messages.create(model=model("openai", "len2"), max_tokens=50, messages=PROMPT)
    assert m.content[0].text == emulator.text("answer", 2)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize(
    ("knob", "exc", "status"),
    [
        ("err401", anthropic.AuthenticationError, 401),
        ("err403", anthropic.PermissionDeniedError, 403),
        ("err404", anthropic.NotFoundError, 404),
        ("err400", anthropic.BadRequestError, 400),
        ("err429", anthropic.RateLimitError, 429),
        ("err500", anthropic.InternalServerError, 502),
    ],
)
@pytest.mark.parametrize("stream", [True, False])
def test_upstream_errors_raise_the_matching_exception(provider, knob, exc, status, stream, anthropic_door):  # type: ignore[no-untyped-def]
    client = anthropic_door(provider)
    with pytest.raises(exc) as info:
        if stream:
            raw_stream(client, model(provider, knob, "retry0"))
        else:
            client.messages.create(model=model(provider, knob, "retry0"), max_tokens=64, messages=PROMPT)
    assert info.value.status_code == status
    assert info.value.body["type"] == "error" and info.value.body["error"]["message"]


def test_overload_is_anthropics_529(anthropic_door):  # type: ignore[no-untyped-def]
    with pytest.raises(anthropic.OverloadedError) as info:
        anthropic_door("anthropic").messages.create(
            model=model("anthropic", "err529", "retry0"), max_tokens=64, messages=PROMPT
        )
    assert info.value.status_code == 529
    assert info.value.body["error"]["type"] == "overloaded_error"


def test_controller_errors_raise_the_matching_exception(anthropic_door):  # type: ignore[no-untyped-def]
    with pytest.raises(anthropic.AuthenticationError) as info:
        anthropic_door("openai", api_key="not-the-token").messages.create(
            model="gpt-4o", max_tokens=8, messages=PROMPT
        )
    assert info.value.body["error"]["type"] == "authentication_error"
    client = anthropic_door("openai")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="llama-3", max_tokens=8, messages=PROMPT)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="gpt-4o", max_tokens=8, messages=PROMPT, extra_body={"mcp_servers": [{"url": "https://x"}]})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_mid_stream_failure_raises_and_is_not_retried(provider, anthropic_door, emulator):  # type: ignore[no-untyped-def]
    client = anthropic_door(provider, max_retries=2)
    mdl = model(provider, "len9", "mid3")
    got = ""
    with pytest.raises(anthropic.APIError):
        with client.messages.stream(model=mdl, max_tokens=100, messages=PROMPT) as s:
            for t in s.text_stream:
                got += t
    assert got == emulator.text("answer", 3)
    assert upstream_count(emulator, mdl) == 1
    mdl = model(provider, "len9", "mid3")
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model=mdl, max_tokens=100, messages=PROMPT)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert upstream_count(emulator, mdl) == 1


def test_a_client_that_goes_away_cancels_the_execution(anthropic_door, controller):  # type: ignore[no-untyped-def]
    client = anthropic_door("google")
    s = client.messages.create(
        model=model("google", "len400", "rate40"), max_tokens=1000, messages=PROMPT, stream=True
    )
    msg_id = None
    for i, ev in enumerate(s):
        if ev.type == "message_start":
            msg_id = ev.message.id
        if i == 5:
            break
    s.close()
    assert msg_id is not None
    controller.wait_status(msg_id.removeprefix("msg_"), "cancelled")
