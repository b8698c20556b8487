"""The web console (GET /console) in a real browser: headless Chromium over the DevTools
protocol, against a controller and the emulator on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
from cdp import Page, screenshot_dir
from conftest import TOKEN, http, wait_until

# Two seconds and more each, so that all three are seen streaming at once even on a busy machine.
ANSWER_LEN = {"openai": 40, "anthropic": 45, "google": 50}
MODELS = {
    "openai": "gpt-4o-mini-len40-rate20",
    "anthropic": "claude-haiku-4-5-len45-rate20",
    "google": "gemini-2.5-flash-len50-rate20",
}


def emulator_answer(emulator, n: int) -> str:  # type: ignore[no-untyped-def]
    status, _, body = http("GET", f"{emulator.url}/emulator/text?kind=answer&len={n}", token=None)
    assert status == 200
    return body.decode()


def js(value: str) -> str:
    return json.dumps(value)


def sign_in(page: Page, base: str, token: str) -> None:
    page.goto(base + "/console")
    page.wait("!document.getElementById('login').hidden")
    page.eval(f"document.getElementById('token').value = {js(token)}")
    page.eval("document.querySelector('#login-form button[type=submit]').click()")


@pytest.fixture()
def page(browser, controller):  # type: ignore[no-untyped-def]
    p = browser.new_page()
    sign_in(p, controller.url, TOKEN)
    p.wait("document.getElementById('conn').textContent === 'live'")
    yield p
    p.close()


def test_headers_are_strict(controller) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = http("GET", controller.url + "/console", token=None)
    assert status == 200
    csp = headers["content-security-policy"]
    for directive in ("script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'",
                      "default-src 'none'"):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert headers["x-content-type-options"] == "nosniff"
    # The API still wants the token; the feed too.
    assert http("GET", controller.url + "/v1/events", token=None)[0] == 401
    assert http("GET", controller.url + "/v1/events", token="wrong")[0] == 401


def test_loads_with_no_console_error_and_no_foreign_request(page, controller) -> None:  # type: ignore[no-untyped-def]
    page.wait("document.getElementById('m-limit').textContent.startsWith('limit')")
    page.browser.pump(1.0)
    assert page.console_errors() == []
    urls = page.request_urls()
    assert any(u.endswith("/v1/events") for u in urls)
    origin = controller.url
    foreign = [u for u in urls if not (u.startswith(origin + "/") or u == "about:blank")]
    assert foreign == [], foreign


def test_wrong_token_shows_a_clear_message(browser, controller) -> None:  # type: ignore[no-untyped-def]
    p = browser.new_page()
    try:
        sign_in(p, controller.url, "not-the-token")
        msg = p.wait("document.getElementById('login-error').textContent")
        assert "refused this token" in msg and "401" in msg
        assert p.eval("document.getElementById('live').hidden") is True
        assert p.eval("sessionStorage.getItem('polydev.token')") is None
    finally:
        p.close()


def test_a_running_execution_appears_and_moves_to_succeeded(page, controller, emulator) -> None:  # type: ignore[no-untyped-def]
    job = {"user_id": "live-view", "provider": "openai", "model": "gpt-4o-mini-len90-rate15",
           "prompt": "hello", "credentials": {"api_key": "sk-test-console-live"}}
    status, _, body = http("POST", controller.url + "/v1/executions", json.dumps(job).encode())
    assert status == 202, body
    ex = json.loads(body)["id"]
    row = f"document.querySelector('tr[data-id={js(ex)}]')"
    page.wait(f"{row} && {row}.querySelector('.status').textContent === 'running'", timeout=15)
    page.wait(f"{row}.querySelector('.status').textContent === 'succeeded'", timeout=30)
    cells = page.eval(f"[...{row}.cells].map(c => c.textContent)")
    assert cells[1:4] == ["live-view", "openai", "gpt-4o-mini-len90-rate15"]
    assert cells[7] != "–"  # tokens
    # Clicking it opens its own stream: the whole answer, once.
    page.eval(f"{row}.click()")
    want = emulator_answer(emulator, 90)
    page.wait(f"document.querySelector('#detail-body .answer').textContent === {js(want)}")
    assert "finished: stop" in page.eval("document.querySelector('#detail-body .outcome').textContent")
    assert page.console_errors() == []


def test_the_detail_stream_resumes_after_a_dropped_connection(browser, proxy, controller, emulator) -> None:  # type: ignore[no-untyped-def]
    # The page is served through a proxy whose connections the test cuts mid-stream.
    page = browser.new_page()
    try:
        sign_in(page, proxy.url, TOKEN)
        page.wait("document.getElementById('conn').textContent === 'live'")
        job = {"user_id": "resume", "provider": "anthropic", "model": "claude-haiku-4-5-len80-rate10",
               "prompt": "hello", "credentials": {"api_key": "sk-ant-test-console-resume"}}
        status, _, body = http("POST", controller.url + "/v1/executions", json.dumps(job).encode())
        assert status == 202, body
        ex = json.loads(body)["id"]
        row = f"document.querySelector('tr[data-id={js(ex)}]')"
        page.wait(f"!!{row}")
        page.eval(f"{row}.click()")
        answer = "document.querySelector('#detail-body .answer').textContent"
        page.wait(f"{answer}.length > 20")
        proxy.drop_all()
        page.wait("document.getElementById('detail-note').textContent.includes('connection lost')")
        want = emulator_answer(emulator, 80)
        page.wait(f"{answer} === {js(want)}", timeout=30)
        assert page.eval("document.getElementById('detail-note').textContent").startswith("resumed after event")
        # The resume asked for what it missed: a Last-Event-ID header went out.
        sent = [e["params"]["request"]["headers"] for e in page.my_events()
                if e["method"] == "Network.requestWillBeSent"
                and e["params"]["request"]["url"].endswith(f"/v1/executions/{ex}/events")]
        assert len(sent) >= 2 and any("Last-Event-ID" in h for h in sent), sent
        # The live feed reconnected too.
        page.wait("document.getElementById('conn').textContent === 'live'")
    finally:
        page.close()


def fill_targets(page: Page, targets: list[tuple[str, str, str]]) -> None:
    page.eval("location.hash = '#playground'")
    page.wait("!document.getElementById('playground').hidden")
    page.eval("document.getElementById('pg-targets').replaceChildren()")
    for provider, model, key in targets:
        page.eval("document.getElementById('pg-add').click()")
        page.eval(
            "(() => { const t = [...document.querySelectorAll('#pg-targets .target')].pop();"
            f" t.querySelector('.t-provider').value = {js(provider)};"
            f" t.querySelector('.t-model').value = {js(model)};"
            f" t.querySelector('.t-key').value = {js(key)}; }})()"
        )


def test_the_playground_streams_three_targets_side_by_side(page, emulator) -> None:  # type: ignore[no-untyped-def]
    fill_targets(page, [(p, MODELS[p], f"sk-test-console-{p}") for p in ("openai", "anthropic", "google")])
    page.eval("document.getElementById('pg-prompt').value = 'Why is the sky blue?'")
    page.eval("document.getElementById('pg-ask').click()")
    cols = "[...document.querySelectorAll('#pg-columns .column')]"
    # All three stream at once: each has text before any has finished.
    page.wait(f"{cols}.length === 3 && {cols}.every(c => c.querySelector('.c-text').textContent.length > 0)")
    assert page.eval(f"{cols}.filter(c => c.dataset.status === 'succeeded').length") < 3
    page.wait(f"{cols}.every(c => c.dataset.status === 'succeeded')", timeout=30)
    for i, provider in enumerate(("openai", "anthropic", "google")):
        text = page.eval(f"{cols}[{i}].querySelector('.c-text').textContent")
        assert text == emulator_answer(emulator, ANSWER_LEN[provider]), provider
        stats = page.eval(f"{cols}[{i}].querySelector('.c-stats').textContent")
        assert "TTFT" in stats and "tok/s" in stats and "finish: stop" in stats, stats
    # Side by side: one row, left to right.
    boxes = page.eval(f"{cols}.map(c => {{ const r = c.getBoundingClientRect(); return [r.left, r.top]; }})")
    assert boxes[0][1] == boxes[1][1] == boxes[2][1]
    assert boxes[0][0] < boxes[1][0] < boxes[2][0]
    # The keys went into the request only: nothing in storage.
    storage = page.eval("JSON.stringify([Object.entries(sessionStorage), Object.entries(localStorage)])")
    assert "sk-test-console" not in storage
    assert page.console_errors() == []


def test_cancel_ends_its_column_as_cancelled(page, emulator) -> None:  # type: ignore[no-untyped-def]
    fill_targets(page, [("openai", "gpt-4o-mini-len400-rate10", "sk-test-console-slow"),
                        ("google", "gemini-2.5-flash-len10-rate20", "sk-test-console-fast")])
    page.eval("document.getElementById('pg-ask').click()")
    col = "document.querySelector('#pg-columns .column[data-target=\"0\"]')"
    page.wait(f"{col} && {col}.querySelector('.c-text').textContent.length > 0")
    page.eval(f"{col}.querySelector('.c-cancel').click()")
    page.wait(f"{col}.dataset.status === 'cancelled'", timeout=15)
    other = "document.querySelector('#pg-columns .column[data-target=\"1\"]')"
    page.wait(f"{other}.dataset.status === 'succeeded'", timeout=15)
    assert page.eval(f"{other}.querySelector('.c-text').textContent") == emulator_answer(emulator, 10)
    assert page.eval(f"{col}.querySelector('.c-cancel').disabled") is True
    assert page.console_errors() == []


def test_new_and_unknown_event_types_render(page) -> None:  # type: ignore[no-untyped-def]
    # The page's own renderer, fed the event types the emulator does not send today.
    out = page.eval("""(() => {
      const mk = (t) => document.createElement(t);
      const parts = { text: mk('div'), reasoningBox: mk('details'), reasoning: mk('div'),
                      refusal: mk('div'), tools: mk('ol'), other: mk('div') };
      parts.reasoningBox.hidden = parts.refusal.hidden = parts.tools.hidden = parts.other.hidden = true;
      const sink = eventSink(parts);
      sink('reasoning', {text: 'hmm '});
      sink('reasoning', {text: '', signature: 'c2lnbmF0dXJl'});
      sink('text', {text: 'Hello '});
      sink('tool_call', {id: 'call_1', name: 'get_weather', arguments: '{"city":"Paris"}'});
      sink('refusal', {text: 'I cannot help with that.'});
      sink('future_event', {type: 'future_event', x: 1});
      return { text: parts.text.textContent, reasoning: parts.reasoning.textContent,
               tools: parts.tools.textContent, toolsShown: !parts.tools.hidden,
               refusal: parts.refusal.textContent, refusalShown: !parts.refusal.hidden,
               other: parts.other.textContent, otherShown: !parts.other.hidden };
    })()""")
    assert out["text"] == "Hello "
    assert out["reasoning"].startswith("hmm ") and "signature, 12 chars" in out["reasoning"]
    assert out["toolsShown"] and "get_weather" in out["tools"] and '"city":"Paris"' in out["tools"]
    assert out["refusalShown"] and out["refusal"] == "I cannot help with that."
    assert out["otherShown"] and out["other"].startswith("future_event: ")


def test_zz_screenshots_for_the_docs(page, controller) -> None:  # type: ignore[no-untyped-def]
    """With POLYDEV_CONSOLE_SCREENSHOTS=DIR, writes console-live.png and console-playground.png
    after a minute of mixed traffic (the README shows them). Runs last: the name sorts last."""
    d = screenshot_dir()
    if d is None:
        pytest.skip("POLYDEV_CONSOLE_SCREENSHOTS is not set: no screenshot wanted")
    import random
    import threading
    import time

    rng = random.Random(14)
    models = {
        "openai": ["gpt-4o-mini-len40-rate20", "gpt-5-mini-len80-rate40", "gpt-4o-mini-err429-retry0"],
        "anthropic": ["claude-haiku-4-5-len60-rate30", "claude-sonnet-4-5-ttfb300-len30-rate20"],
        "google": ["gemini-2.5-flash-len50-rate25", "gemini-2.5-flash-err503-retry0", "gemini-2.5-pro-ttfb150-len20"],
    }
    users = ["ada", "grace", "linus", "margaret", "ken"]
    stop = time.monotonic() + 50

    def traffic() -> None:
        while time.monotonic() < stop:
            provider = rng.choice(list(models))
            job = {"user_id": rng.choice(users), "provider": provider,
                   "model": rng.choice(models[provider]), "prompt": "hello",
                   "credentials": {"api_key": f"sk-test-screenshot-{provider}"}}
            status, _, body = http("POST", controller.url + "/v1/executions", json.dumps(job).encode())
            if status == 202 and rng.random() < 0.1:
                ex = json.loads(body)["id"]
                time.sleep(0.5)
                http("DELETE", f"{controller.url}/v1/executions/{ex}")
            time.sleep(rng.uniform(0.2, 1.0))

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    for w in workers:
        w.start()
    page.eval("location.hash = '#live'")
    while time.monotonic() < stop - 3:
        page.browser.pump(1.0)
    rows = "[...document.querySelectorAll('#executions tbody tr')]"
    page.eval(f"{rows}.find(r => r.querySelector('.status').textContent === 'succeeded').click()")
    page.browser.pump(1.5)
    page.screenshot(d / "console-live.png")
    for w in workers:
        w.join()

    fill_targets(page, [("openai", "gpt-4o-mini-len60-rate12", "sk-test-screenshot-openai"),
                        ("anthropic", "claude-sonnet-4-5-think12-len50-rate10", "sk-ant-test-screenshot"),
                        ("google", "gemini-2.5-flash-len70-rate16", "sk-test-screenshot-google")])
    page.eval("document.getElementById('pg-prompt').value = 'Why is the sky blue? Answer in two sentences.'")
    page.eval("document.getElementById('pg-ask').click()")
    page.browser.pump(3.5)
    page.screenshot(d / "console-playground.png")
    page.wait("[...document.querySelectorAll('#pg-columns .column')].every(c => c.dataset.status !== 'running')",
              timeout=30)
