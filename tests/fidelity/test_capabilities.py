"""Tools, images, reasoning and refusals (DESIGN.md 4.5): each official SDK's own API for
them, pointed at the emulator, side by side with `polydev-runtime` running the equivalent job
against the same emulator and model name. They must agree on the request (the emulator
records both) and on the stream: the same tool calls and arguments, reasoning signatures,
refusals and finish reasons."""

from __future__ import annotations

import base64
import json
from typing import Any

from google.genai import types

from _support import Emulator, model, nonce, run_runtime

PNG_B64 = "iVBORw0KGgoAAAANSUhEUg=="
QUESTION = "What is the weather where this picture was taken?"
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}
RUNTIME_TOOLS = [
    {"name": "get_weather", "description": "Weather now", "parameters": WEATHER_SCHEMA},
    {"name": "get_time", "description": "Time now", "parameters": {"type": "object"}},
]
RUNTIME_MESSAGES = [
    {"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image", "media_type": "image/png", "data": PNG_B64},
    ]}
]


def runtime_env(**extra: str) -> dict[str, str]:
    return {
        "MESSAGES": json.dumps(RUNTIME_MESSAGES),
        "TOOLS": json.dumps(RUNTIME_TOOLS),
        "REASONING_EFFORT": "low",
        **extra,
    }


def calls(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["name"], e["arguments"]) for e in events if e["type"] == "tool_call"]


def end(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert events[-1]["type"] == "end", events[-1]
    return events[-1]


def signatures(events: list[dict[str, Any]]) -> list[str]:
    return [e["signature"] for e in events if e["type"] == "reasoning" and e.get("signature")]


def reasoning_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "reasoning")


def camel(v: Any) -> Any:
    """Proto-JSON field names in lowerCamelCase, as Google's canonical form."""
    if isinstance(v, dict):
        return {
            k.split("_")[0] + "".join(w.title() for w in k.split("_")[1:]): camel(x)
            for k, x in v.items()
        }
    if isinstance(v, list):
        return [camel(x) for x in v]
    return v


def two_requests(emulator: Emulator) -> tuple[Any, Any]:
    reqs = [r for r in emulator.requests() if r.method == "POST"]
    assert len(reqs) == 2, reqs
    return reqs[0].body, reqs[1].body


def test_openai_tool_calls_image_and_effort(oai, emulator, runtime_bin) -> None:
    mdl = model("gpt-5-mini", "tools3", "argsplit1", "interleave", nonce())
    tools = [{"type": "function", "function": t} for t in RUNTIME_TOOLS]
    messages = [{"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
    ]}]
    with oai.chat.completions.stream(
        model=mdl, messages=messages, tools=tools, reasoning_effort="low",
        stream_options={"include_usage": True},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    sdk_calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
    assert all(c.id.startswith("call_") for c in choice.message.tool_calls or [])

    events = run_runtime(runtime_bin, emulator.base, "openai", mdl, runtime_env())
    assert calls(events) == sdk_calls and len(sdk_calls) == 3
    assert end(events)["raw_finish_reason"] == choice.finish_reason == "tool_calls"
    assert end(events)["finish_reason"] == "tool_calls"

    sdk_req, rt_req = two_requests(emulator)
    for k in ("messages", "tools", "reasoning_effort"):
        assert rt_req[k] == sdk_req[k], k


def test_openai_refusal(oai, emulator, runtime_bin) -> None:
    mdl = model("gpt-4o", "refuse", "len6", nonce())
    with oai.chat.completions.stream(model=mdl, messages=[{"role": "user", "content": QUESTION}]) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    msg = final.choices[0].message
    assert msg.refusal and not msg.content
    events = run_runtime(runtime_bin, emulator.base, "openai", mdl, {"PROMPT": QUESTION})
    refusal = "".join(e["text"] for e in events if e["type"] == "refusal")
    assert refusal == msg.refusal
    assert not any(e["type"] == "text" for e in events)
    # The wire says `stop`; DESIGN 4.5 reports a marked refusal as content_filter.
    assert end(events)["raw_finish_reason"] == final.choices[0].finish_reason == "stop"
    assert end(events)["finish_reason"] == "content_filter"


def test_anthropic_tool_use_image_and_thinking(ant, emulator, runtime_bin) -> None:
    mdl = model("claude-sonnet-4-5", "think5", "tools2", "argsplit3", nonce())
    tools = [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
             for t in RUNTIME_TOOLS]
    messages = [{"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
    ]}]
    with ant.messages.stream(
        model=mdl, max_tokens=8192, messages=messages, tools=tools,
        thinking={"type": "enabled", "budget_tokens": 4096},
    ) as stream:
        final = stream.get_final_message()
    sdk_calls = [(b.name, b.input) for b in final.content if b.type == "tool_use"]
    thinking = [b for b in final.content if b.type == "thinking"]

    events = run_runtime(runtime_bin, emulator.base, "anthropic", mdl, runtime_env())
    assert [(n, json.loads(a)) for n, a in calls(events)] == sdk_calls and len(sdk_calls) == 2
    assert reasoning_text(events) == thinking[0].thinking
    assert signatures(events) == [thinking[0].signature]
    assert end(events)["raw_finish_reason"] == final.stop_reason == "tool_use"

    sdk_req, rt_req = two_requests(emulator)
    for k in ("messages", "tools", "thinking", "max_tokens"):
        assert rt_req[k] == sdk_req[k], k

    # The second turn, as the SDK user would build it from the final message, equals the
    # runtime's replay of its own events (thinking with signature, tool_use, tool_result).
    ids = [b.id for b in final.content if b.type == "tool_use"]
    sdk_turn2 = messages + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": "21"} for i in ids]},
    ]
    emulator.reset()
    mdl2 = model("claude-sonnet-4-5", "len4", nonce())
    with ant.messages.stream(
        model=mdl2, max_tokens=8192, messages=sdk_turn2, tools=tools,
        thinking={"type": "enabled", "budget_tokens": 4096},
    ) as stream:
        answer = stream.get_final_message()
    rt_calls = [e for e in events if e["type"] == "tool_call"]
    rt_turn2 = RUNTIME_MESSAGES + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": c["id"], "name": c["name"], "arguments": c["arguments"]} for c in rt_calls],
         "reasoning": [{"text": reasoning_text(events), "signature": signatures(events)[0]}]},
        *[{"role": "tool", "tool_call_id": c["id"], "content": "21"} for c in rt_calls],
    ]
    events2 = run_runtime(
        runtime_bin, emulator.base, "anthropic", mdl2,
        runtime_env(MESSAGES=json.dumps(rt_turn2)),
    )
    assert end(events2)["finish_reason"] == "stop" and answer.stop_reason == "end_turn"
    text = "".join(e["text"] for e in events2 if e["type"] == "text")
    assert text == "".join(b.text for b in answer.content if b.type == "text")
    sdk_req, rt_req = two_requests(emulator)
    # Same shape; the ids differ because each first turn had its own.
    strip = lambda m: json.loads(json.dumps(m).replace(ids[0], "ID0").replace(ids[1], "ID1"))  # noqa: E731
    rt_ids = [c["id"] for c in rt_calls]
    strip_rt = lambda m: json.loads(json.dumps(m).replace(rt_ids[0], "ID0").replace(rt_ids[1], "ID1"))  # noqa: E731
    assert strip_rt(rt_req["messages"][1:]) == strip(sdk_req["messages"][1:])


def test_anthropic_refusal(ant, emulator, runtime_bin) -> None:
    mdl = model("claude-sonnet-4-5", "block", nonce())
    with ant.messages.stream(model=mdl, max_tokens=1024, messages=[{"role": "user", "content": QUESTION}]) as s:
        final = s.get_final_message()
    events = run_runtime(runtime_bin, emulator.base, "anthropic", mdl, {"PROMPT": QUESTION})
    refusal = "".join(e["text"] for e in events if e["type"] == "refusal")
    assert final.stop_reason == "refusal" == end(events)["raw_finish_reason"]
    assert refusal == final.stop_details.explanation
    assert end(events)["finish_reason"] == "content_filter"


def test_gemini_function_calls_image_and_thinking(gem, emulator, runtime_bin) -> None:
    mdl = model("gemini-3-flash", "think4", "tools2", nonce())
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[
            types.FunctionDeclaration(name=t["name"], description=t["description"],
                                      parameters_json_schema=t["parameters"])
            for t in RUNTIME_TOOLS])],
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_level="LOW"),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    contents = [types.Content(role="user", parts=[
        types.Part.from_text(text=QUESTION),
        types.Part.from_bytes(data=base64.b64decode(PNG_B64), mime_type="image/png"),
    ])]
    sdk_calls, sigs, thoughts, finish = [], [], "", None
    for chunk in gem.models.generate_content_stream(model=mdl, contents=contents, config=config):
        for cand in chunk.candidates or []:
            finish = cand.finish_reason or finish
            for p in (cand.content.parts if cand.content else None) or []:
                if p.thought_signature:
                    sigs.append(base64.b64encode(p.thought_signature).decode())
                if p.function_call:
                    sdk_calls.append((p.function_call.name, p.function_call.args))
                elif p.thought and p.text:
                    thoughts += p.text

    events = run_runtime(runtime_bin, emulator.base, "google", mdl, runtime_env())
    assert [(n, json.loads(a)) for n, a in calls(events)] == sdk_calls and len(sdk_calls) == 2
    assert signatures(events) == sigs and sigs
    assert reasoning_text(events) == thoughts
    assert finish == types.FinishReason.STOP and end(events)["raw_finish_reason"] == "STOP"
    assert end(events)["finish_reason"] == "tool_calls"
    # Gemini gives no ids: the runtime numbers the calls.
    assert [e["id"] for e in events if e["type"] == "tool_call"] == ["call_1", "call_2"]

    sdk_req, rt_req = two_requests(emulator)
    # python-genai 3.3 writes some nested names in snake_case (`inlineData.mime_type`,
    # `parameters_json_schema`); proto JSON accepts either spelling and the runtime sends the
    # canonical lowerCamelCase.
    assert rt_req["contents"] == camel(sdk_req["contents"])
    assert rt_req["tools"] == camel(sdk_req["tools"])
    assert rt_req["generationConfig"]["thinkingConfig"] == camel(sdk_req["generationConfig"]["thinkingConfig"])
