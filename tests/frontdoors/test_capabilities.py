"""Tools, tool results (a second turn), images, reasoning and refusals through the front doors
(DESIGN.md 4.5 and 5.1), with each provider behind each door. The ground truth is
`polydev-runtime` run alone on the same job against the same emulator: the doors must report
the same tool calls, and a second turn built by the SDK from its own final answer must work."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import PROVIDERS, model

import _support  # the fidelity suite's helpers

PNG_B64 = "iVBORw0KGgoAAAANSUhEUg=="
QUESTION = "What is the weather where this picture was taken?"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [
    {"name": "get_weather", "description": "Weather now", "parameters": SCHEMA},
    {"name": "get_time", "description": "Time now", "parameters": {"type": "object"}},
]


def runtime_calls(runtime_bin: Any, emulator: Any, provider: str, mdl: str) -> list[tuple[str, Any]]:
    """The tool calls `polydev-runtime` alone reports for the same job (arguments parsed)."""
    env = {
        "MESSAGES": json.dumps([{"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image", "media_type": "image/png", "data": PNG_B64},
        ]}]),
        "TOOLS": json.dumps(TOOLS),
    }
    events = _support.run_runtime(runtime_bin, emulator.base, provider, mdl.split("/", 1)[1], env)
    assert events[-1]["type"] == "end", events[-1]
    return [(e["name"], json.loads(e["arguments"])) for e in events if e["type"] == "tool_call"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_openai_door_tool_calls_image_and_second_turn(provider, openai_door, emulator, runtime_bin):  # type: ignore[no-untyped-def]
    client = openai_door(provider)
    mdl = model(provider, "tools2", "argsplit3", "len5")
    messages: list[Any] = [{"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    ]}]
    tools = [{"type": "function", "function": t} for t in TOOLS]
    with client.chat.completions.stream(
        model=mdl, messages=messages, tools=tools, stream_options={"include_usage": True}
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    got = [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls]
    assert got == runtime_calls(runtime_bin, emulator, provider, mdl)
    assert len(got) == 2 and len({c.id for c in choice.message.tool_calls}) == 2
    # Second turn: the SDK's own assistant message, then one result per call.
    messages.append(choice.message.model_dump(exclude_none=True, exclude={"annotations", "refusal"}))
    for c in choice.message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temp_c": 21})})
    again = client.chat.completions.create(model=mdl, messages=messages, tools=tools)
    assert again.choices[0].message.content == emulator.text("answer", 5)
    assert again.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_door_tool_use_image_and_second_turn(provider, anthropic_door, emulator, runtime_bin):  # type: ignore[no-untyped-def]
    client = anthropic_door(provider)
    mdl = model(provider, "tools2", "argsplit3", "len5")
    messages: list[Any] = [{"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
    ]}]
    tools = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in TOOLS]
    with client.messages.stream(model=mdl, max_tokens=2000, messages=messages, tools=tools) as s:
        for _ in s:
            pass
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == runtime_calls(runtime_bin, emulator, provider, mdl)
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": b.id, "content": json.dumps({"temp_c": 21})} for b in uses
    ]})
    again = client.messages.create(model=mdl, max_tokens=2000, messages=messages, tools=tools)
    assert [b.type for b in again.content] == ["text"]
    assert again.content[0].text == emulator.text("answer", 5)
    assert again.stop_reason == "end_turn"


def test_anthropic_thinking_signature_round_trips(anthropic_door, emulator):  # type: ignore[no-untyped-def]
    """Claude's signed thinking comes back in the second turn, as Anthropic requires."""
    client = anthropic_door("anthropic")
    mdl = model("anthropic", "think4", "tools1", "len3")
    tools = [{"name": "get_weather", "description": "Weather now", "input_schema": SCHEMA}]
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with client.messages.stream(model=mdl, max_tokens=4000, messages=messages, tools=tools, thinking=thinking) as s:
        for _ in s:
            pass
        final = s.get_final_message()
    kinds = [b.type for b in final.content]
    assert kinds[0] == "thinking" and "tool_use" in kinds, kinds
    assert final.content[0].thinking == emulator.text("reasoning", 4)
    assert final.content[0].signature
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]})
    use = next(b for b in final.content if b.type == "tool_use")
    messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21C"}]})
    again = client.messages.create(model=mdl, max_tokens=4000, messages=messages, tools=tools, thinking=thinking)
    assert "".join(b.text for b in again.content if b.type == "text") == emulator.text("answer", 3)


def test_openai_door_reasoning_and_refusal(openai_door, emulator):  # type: ignore[no-untyped-def]
    # Claude's thinking behind the OpenAI door streams as delta.reasoning_content.
    client = openai_door("anthropic")
    reasoning, text = "", ""
    with client.chat.completions.create(
        model=model("anthropic", "think4", "len3"), messages=[{"role": "user", "content": QUESTION}],
        reasoning_effort="low", max_completion_tokens=8000, stream=True,
    ) as s:
        for chunk in s:
            for ch in chunk.choices:
                reasoning += getattr(ch.delta, "reasoning_content", None) or (ch.delta.model_extra or {}).get("reasoning_content") or ""
                text += ch.delta.content or ""
    assert reasoning == emulator.text("reasoning", 4)
    assert text == emulator.text("answer", 3)
    # An OpenAI refusal streams as delta.refusal and the SDK's final message carries it.
    client = openai_door("openai")
    with client.chat.completions.stream(model=model("openai", "refuse", "len6"), messages=[{"role": "user", "content": QUESTION}]) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    assert final.choices[0].message.refusal == emulator.text("answer", 6)
    assert not final.choices[0].message.content
    assert final.choices[0].finish_reason == "stop"  # as OpenAI marks a refusal


@pytest.mark.parametrize("provider", PROVIDERS)
def test_json_schema_output(provider, openai_door):  # type: ignore[no-untyped-def]
    client = openai_door(provider)
    c = client.chat.completions.create(
        model=model(provider), messages=[{"role": "user", "content": "Where?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}},
    )
    assert json.loads(c.choices[0].message.content) == {"city": "emulated"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_anthropic_door_structured_output(provider, anthropic_door):  # type: ignore[no-untyped-def]
    m = anthropic_door(provider).messages.create(
        model=model(provider), max_tokens=500, messages=[{"role": "user", "content": "Where?"}],
        extra_body={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    )
    assert json.loads(m.content[0].text) == {"city": "emulated"}
