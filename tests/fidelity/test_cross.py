"""Checks across the three SDKs: one answer generator behind all three wire
formats, and the same streams over the emulator's TLS mode."""

from __future__ import annotations

import ssl

import anthropic
import openai
import pytest
from google import genai
from google.genai import types

from _support import PROMPT, anthropic_stream, gemini_stream, model, openai_stream


@pytest.mark.parametrize("n", [1, 7, 33])
def test_same_answer_text_through_all_three_sdks(oai, ant, gem, n: int) -> None:
    a = openai_stream(oai, model("gpt-4o", f"len{n}", "split1")).text
    b = anthropic_stream(ant, model("claude-sonnet-4-5", f"len{n}", "split1")).text
    c = gemini_stream(gem, model("gemini-2.5-flash", f"len{n}", "split1")).text
    assert a and a == b == c


def test_tls_mode_with_emitted_ca(tls_emulator) -> None:
    ctx = ssl.create_default_context(cafile=tls_emulator.ca_file)
    base = tls_emulator.base

    with openai.OpenAI(
        api_key="sk-proj-x", base_url=f"{base}/v1", max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=ctx),
    ) as oc:
        a = openai_stream(oc, model("gpt-4o", "len12", "split1"))
    with anthropic.Anthropic(
        api_key="sk-ant-x", base_url=base, max_retries=0,
        http_client=anthropic.DefaultHttpxClient(verify=ctx),
    ) as ac:
        b = anthropic_stream(ac, model("claude-sonnet-4-5", "len12", "split1"))
    gc = genai.Client(
        api_key="AIza-x", http_options=types.HttpOptions(base_url=base, client_args={"verify": ctx})
    )
    c = gemini_stream(gc, model("gemini-2.5-flash", "len12", "split1"))
    gc.close()
    assert a.finish_reason == "stop" and b.stop_reason == "end_turn"
    assert c.finish_reason == types.FinishReason.STOP
    assert a.text == b.text == c.text
    assert len(tls_emulator.requests()) == 3


def test_tls_rejects_unknown_ca(tls_emulator) -> None:
    """Sanity: without the emulator's CA, the SDK refuses the connection."""
    with openai.OpenAI(api_key="sk-proj-x", base_url=f"{tls_emulator.base}/v1", max_retries=0) as oc:
        with pytest.raises(openai.APIConnectionError):
            openai_stream(oc, model("gpt-4o", "len3"))


@pytest.mark.parametrize("n", [5, 29])
def test_sdk_text_equals_emulator_declared_text(oai, ant, gem, emulator, n: int) -> None:
    """The emulator's own statement of answer_text / reasoning_text (GET
    /emulator/text) is what each SDK reassembles, answer and reasoning alike."""
    answer = emulator.text("answer", n)
    reasoning = emulator.text("reasoning", 9)
    assert openai_stream(oai, model("gpt-4o", f"len{n}", "split2")).text == answer
    a = anthropic_stream(ant, model("claude-sonnet-4-5", f"len{n}", "think9", "split2"),
                         max_tokens=4096, thinking={"type": "enabled", "budget_tokens": 1024})
    assert (a.text, a.thinking) == (answer, reasoning)
    g = gemini_stream(gem, model("gemini-2.5-flash", f"len{n}", "think9", "split2"),
                      config=types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True)))
    assert (g.text, g.thoughts) == (answer, reasoning)


def test_sdks_deliver_incrementally(oai, ant, gem) -> None:
    """With pacing (rate), each SDK hands the first token over long before the last:
    neither the emulator nor the SDK buffers the stream."""
    import time

    def timed(start):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        first = None
        for _ in start():
            if first is None:
                first = time.monotonic() - t0
        return first, time.monotonic() - t0

    msgs = [{"role": "user", "content": "hi"}]
    runs = {
        "openai": lambda: oai.chat.completions.create(model="gpt-4o-len8-rate16", messages=msgs, stream=True),
        "anthropic": lambda: ant.messages.create(
            model="claude-len8-rate16", max_tokens=100, messages=msgs, stream=True),
        "gemini": lambda: gem.models.generate_content_stream(model="gemini-len8-rate16", contents="hi"),
    }
    for name, start in runs.items():
        first, total = timed(start)
        assert total >= 0.4, (name, total)
        assert first is not None and first < total / 2, (name, first, total)


def test_input_tokens_count_prompt_words_including_system(oai, ant, gem) -> None:
    """Usage as the emulator means it (crate README): input tokens = words of the
    prompt text, system prompt included; each SDK reports that number."""
    system = "Answer in one short line"  # 5 words
    words = len(PROMPT.split())
    o = oai.chat.completions.create(model="gpt-4o-len3", messages=[
        {"role": "system", "content": system}, {"role": "user", "content": PROMPT}])
    a = ant.messages.create(model="claude-len3", max_tokens=50, system=system,
                            messages=[{"role": "user", "content": PROMPT}])
    g = gem.models.generate_content(model="gemini-len3", contents=PROMPT,
                                    config=types.GenerateContentConfig(system_instruction=system))
    assert o.usage.prompt_tokens == a.usage.input_tokens == g.usage_metadata.prompt_token_count == words + 5


def test_guard_refuses_real_provider_hosts() -> None:
    """The suite's own guard: an SDK left on its default base URL cannot leave
    the machine (conftest.py refuses to resolve non-loopback names)."""
    import socket

    with pytest.raises(OSError, match="only the local emulator"):
        socket.getaddrinfo("api.openai.com", 443)
    with openai.OpenAI(api_key="sk-proj-x", max_retries=0, timeout=5) as oc:
        with pytest.raises(openai.APIConnectionError):
            oc.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
