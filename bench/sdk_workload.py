"""One streaming execution with a provider's official Python SDK: the peer workload that
`bench/runtime_bench.py` measures next to `polydev-runtime`.

It does what the runtime does for one job: one streaming request to the provider (here
the emulator), every content chunk consumed and written to stdout as one NDJSON line
(flushed per line, as a streaming relay must), then an `end` line. No retries, so a
failure cannot hide behind a second attempt.

    python bench/sdk_workload.py PROVIDER BASE_URL MODEL PROMPT

PROVIDER is openai, anthropic or google; BASE_URL is the emulator's root (http://HOST:PORT).
The SDK is imported inside the measured process on purpose: start-up and import cost are part
of what one execution costs when each execution is its own process.
"""

from __future__ import annotations

import json
import sys

# Placeholder keys: the emulator accepts any key that does not contain "invalid".
OPENAI_KEY = "sk-proj-bench-key"
ANTHROPIC_KEY = "sk-ant-api03-bench-key"
GOOGLE_KEY = "AIzaBenchKey000000000000000000000000000"
TIMEOUT_S = 60.0
MAX_TOKENS = 4096  # what polydev-runtime sends to Anthropic by default


def emit(out, event: dict) -> None:
    out.write(json.dumps(event, ensure_ascii=False))
    out.write("\n")
    out.flush()


def run_openai(base: str, model: str, prompt: str, out) -> str | None:
    import openai

    finish = None
    with openai.OpenAI(api_key=OPENAI_KEY, base_url=f"{base}/v1", max_retries=0, timeout=TIMEOUT_S) as client:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
            stream_options={"include_usage": True},
        )
        with stream:
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.delta.content:
                        emit(out, {"type": "text", "text": choice.delta.content})
                    if choice.finish_reason:
                        finish = choice.finish_reason
    return finish


def run_anthropic(base: str, model: str, prompt: str, out) -> str | None:
    import anthropic

    finish = None
    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=base, max_retries=0, timeout=TIMEOUT_S) as client:
        # The raw event stream (not the `.stream()` helper, which also accumulates a message
        # snapshot): the lightest way the SDK offers to relay deltas.
        stream = client.messages.create(
            model=model,
            max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        )
        with stream:
            for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    emit(out, {"type": "text", "text": event.delta.text})
                elif event.type == "message_delta" and event.delta.stop_reason:
                    finish = event.delta.stop_reason
    return finish


def run_google(base: str, model: str, prompt: str, out) -> str | None:
    from google import genai
    from google.genai import types

    finish = None
    client = genai.Client(
        api_key=GOOGLE_KEY,
        http_options=types.HttpOptions(base_url=base, timeout=int(TIMEOUT_S * 1000)),
    )
    try:
        # Same request shape as polydev-runtime (it asks for thought summaries).
        config = types.GenerateContentConfig(thinking_config=types.ThinkingConfig(include_thoughts=True))
        for chunk in client.models.generate_content_stream(model=model, contents=prompt, config=config):
            for cand in chunk.candidates or []:
                for part in (cand.content.parts if cand.content else None) or []:
                    if part.text and not part.thought:
                        emit(out, {"type": "text", "text": part.text})
                if cand.finish_reason:
                    finish = str(cand.finish_reason.value if hasattr(cand.finish_reason, "value") else cand.finish_reason)
    finally:
        client.close()
    return finish


RUNNERS = {"openai": run_openai, "anthropic": run_anthropic, "google": run_google}


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[1] not in RUNNERS:
        print(__doc__, file=sys.stderr)
        return 64
    _, provider, base, model, prompt = argv
    out = sys.stdout
    finish = RUNNERS[provider](base.rstrip("/"), model, prompt, out)
    emit(out, {"type": "end", "finish_reason": finish})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
