//! The runtime conformance suite: one list of cases, each run for every provider against the
//! emulator, through the real `polydev-runtime` binary. Every run also checks the invariants
//! that hold on every path: exactly one terminal event, last; the exit code matches it; the
//! fake key's canary appears in no output.

use std::time::Duration;

use polydev_protocol::{ErrorKind, Event, FinishReason, Provider};
use polydev_test_support::{
    CANARY, Emulator, EmulatorConfig, RunOutput, RuntimeCommand, TlsConfig, answer_text,
    reasoning_text, start_emulator,
};

const BIN: &str = env!("CARGO_BIN_EXE_polydev-runtime");

/// What a case expects from one provider.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `end` with this finish reason; the text is the emulator's answer of `len` tokens.
    End { reason: FinishReason, len: usize },
    /// `error` of this kind; `partial` says whether output came first.
    Error { kind: ErrorKind, partial: bool },
}

/// The same expectation for every provider, or one per provider.
#[derive(Clone, Copy)]
enum Want {
    All(Expect),
    Per(fn(Provider) -> Expect),
}

impl Want {
    fn for_provider(self, p: Provider) -> Expect {
        match self {
            Want::All(e) => e,
            Want::Per(f) => f(p),
        }
    }
}

struct Case {
    /// Scenario knobs, appended to the model name (`emu-<knobs>`).
    knobs: &'static str,
    env: &'static [(&'static str, &'static str)],
    want: Want,
}

const fn ok(len: usize) -> Want {
    Want::All(Expect::End {
        reason: FinishReason::Stop,
        len,
    })
}

const fn fails(kind: ErrorKind, partial: bool) -> Want {
    Want::All(Expect::Error { kind, partial })
}

async fn run_case(provider: Provider, case: &Case) -> (RunOutput, Emulator) {
    let emu = start_emulator(EmulatorConfig::default()).await;
    let model = format!("emu-{}", case.knobs);
    let mut cmd = RuntimeCommand::job(BIN, &emu, provider, &model);
    for (k, v) in case.env {
        cmd = cmd.env(k, v);
    }
    let out = cmd.run().await;
    check(provider, case.knobs, &out, case.want.for_provider(provider));
    (out, emu)
}

/// The invariants of every run: the canary never shows, `start` first, exactly one terminal
/// event, last, and the exit code that matches it.
fn check_invariants(ctx: &str, out: &RunOutput) {
    out.assert_no_canary();
    assert!(
        matches!(out.events.first(), Some(Event::Start { .. })),
        "start first: {ctx}"
    );
    let terminal = out.terminal();
    assert_eq!(out.code, terminal.exit_code(), "exit code: {ctx}");
}

/// The invariants of every run plus the case's expectation.
fn check(provider: Provider, knobs: &str, out: &RunOutput, expect: Expect) {
    let ctx = format!("{provider} {knobs}: {out:#?}");
    check_invariants(&ctx, out);
    let terminal = out.terminal();
    match (expect, terminal) {
        (Expect::End { reason, len }, Event::End { finish_reason, .. }) => {
            assert_eq!(*finish_reason, reason, "{ctx}");
            assert_eq!(out.text(), answer_text(len), "{ctx}");
        }
        (Expect::Error { kind, partial }, Event::Error(e)) => {
            assert_eq!(e.kind, kind, "{ctx}");
            if kind == ErrorKind::Blocked {
                assert_eq!(out.code, Some(65), "{ctx}");
            }
            assert_eq!(e.partial, partial, "{ctx}");
            assert!(!out.stderr.is_empty() || kind != ErrorKind::Config, "{ctx}");
        }
        _ => panic!("expected {expect:?}: {ctx}"),
    }
}

/// Generates one test per provider for each case.
macro_rules! conformance {
    ($($name:ident => $case:expr;)*) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn openai() { run_case(Provider::OpenAi, &$case).await; }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn anthropic() { run_case(Provider::Anthropic, &$case).await; }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn google() { run_case(Provider::Google, &$case).await; }
        }
    )*};
}

const NO_RETRY: &[(&str, &str)] = &[("MAX_ATTEMPTS", "1")];

conformance! {
    text => Case { knobs: "len20", env: &[], want: ok(20) };
    split_single_bytes_keeps_unicode => Case { knobs: "len60-split1", env: &[], want: ok(60) };
    split_seven_bytes => Case { knobs: "len60-split7", env: &[], want: ok(60) };
    max_tokens_is_length => Case {
        knobs: "len20", env: &[("MAX_TOKENS", "5")],
        want: Want::All(Expect::End { reason: FinishReason::Length, len: 5 }),
    };
    err_400 => Case { knobs: "err400", env: NO_RETRY, want: fails(ErrorKind::BadRequest, false) };
    err_401 => Case { knobs: "err401", env: NO_RETRY, want: fails(ErrorKind::Auth, false) };
    err_403 => Case { knobs: "err403", env: NO_RETRY, want: fails(ErrorKind::Permission, false) };
    err_404 => Case { knobs: "err404", env: NO_RETRY, want: fails(ErrorKind::NotFound, false) };
    err_413 => Case { knobs: "err413", env: NO_RETRY, want: fails(ErrorKind::BadRequest, false) };
    err_429 => Case { knobs: "err429", env: NO_RETRY, want: fails(ErrorKind::RateLimited, false) };
    err_500 => Case { knobs: "err500", env: NO_RETRY, want: fails(ErrorKind::Upstream, false) };
    err_503 => Case { knobs: "err503", env: NO_RETRY, want: fails(ErrorKind::Overloaded, false) };
    err_529 => Case { knobs: "err529", env: NO_RETRY, want: fails(ErrorKind::Overloaded, false) };
    in_stream_error_after_output => Case {
        knobs: "len20-mid3", env: &[],
        want: Want::Per(|p| Expect::Error {
            kind: if p == Provider::OpenAi { ErrorKind::Upstream } else { ErrorKind::Overloaded },
            partial: true,
        }),
    };
    truncated_stream_is_protocol_error => Case {
        knobs: "len20-trunc5", env: &[],
        want: fails(ErrorKind::Protocol, true),
    };
    dropped_connection_is_upstream_error => Case {
        knobs: "len20-drop5", env: &[],
        want: fails(ErrorKind::Upstream, true),
    };
    stall_hits_idle_timeout => Case {
        knobs: "len20-stall3", env: &[("IDLE_TIMEOUT_MS", "300")],
        want: fails(ErrorKind::Timeout, true),
    };
    slow_first_byte_hits_first_token_timeout => Case {
        knobs: "len5-ttfb3000", env: &[("FIRST_TOKEN_TIMEOUT_MS", "300"), ("MAX_ATTEMPTS", "1")],
        want: fails(ErrorKind::Timeout, false),
    };
    slow_stream_hits_total_timeout => Case {
        knobs: "len60-rate20", env: &[("TOTAL_TIMEOUT_MS", "600")],
        want: fails(ErrorKind::Timeout, true),
    };
    safety_block => Case {
        knobs: "block", env: &[],
        want: Want::Per(|p| match p {
            Provider::Google => Expect::Error { kind: ErrorKind::Blocked, partial: false },
            _ => Expect::End { reason: FinishReason::ContentFilter, len: 0 },
        }),
    };
    // Content-policy refusals sent as errors are `blocked` whatever status carries them
    // (DESIGN.md 4.5). The Gemini API has no such error (its refusals are `promptFeedback`
    // chunks, below), so the emulator ignores these knobs for it and the answer is normal.
    content_policy_http_400 => Case {
        knobs: "policy400", env: &[],
        want: Want::Per(|p| match p {
            Provider::Google => Expect::End { reason: FinishReason::Stop, len: 12 },
            _ => Expect::Error { kind: ErrorKind::Blocked, partial: false },
        }),
    };
    content_policy_wins_over_a_403 => Case {
        knobs: "policy403", env: &[],
        want: Want::Per(|p| match p {
            Provider::Google => Expect::End { reason: FinishReason::Stop, len: 12 },
            _ => Expect::Error { kind: ErrorKind::Blocked, partial: false },
        }),
    };
    azure_content_filter_400 => Case {
        knobs: "azure400", env: &[],
        want: Want::Per(|p| match p {
            Provider::OpenAi => Expect::Error { kind: ErrorKind::Blocked, partial: false },
            _ => Expect::End { reason: FinishReason::Stop, len: 12 },
        }),
    };
    content_policy_in_stream_before_output => Case {
        knobs: "len20-policymid0", env: &[],
        want: Want::Per(|p| match p {
            Provider::Google => Expect::End { reason: FinishReason::Stop, len: 20 },
            _ => Expect::Error { kind: ErrorKind::Blocked, partial: false },
        }),
    };
    content_policy_in_stream_after_output => Case {
        knobs: "len20-policymid5", env: &[],
        want: Want::Per(|p| match p {
            Provider::Google => Expect::End { reason: FinishReason::Stop, len: 20 },
            _ => Expect::Error { kind: ErrorKind::Blocked, partial: true },
        }),
    };
    // Every Gemini `blockReason` (`block` above is SAFETY); the others' `block` is a finish.
    block_reason_other => Case { knobs: "blockOTHER", env: &[], want: Want::Per(gemini_blocked) };
    block_reason_blocklist => Case {
        knobs: "blockBLOCKLIST", env: &[], want: Want::Per(gemini_blocked),
    };
    block_reason_prohibited_content => Case {
        knobs: "blockPROHIBITED_CONTENT", env: &[], want: Want::Per(gemini_blocked),
    };
    block_reason_image_safety => Case {
        knobs: "blockIMAGE_SAFETY", env: &[], want: Want::Per(gemini_blocked),
    };
    retry_with_hint_then_success => Case {
        knobs: "len5-err503-times2-retry100", env: &[], want: ok(5),
    };
    retry_without_hint_then_success => Case {
        knobs: "len5-err500-times1-retry0", env: &[], want: ok(5),
    };
}

/// Gemini's prompt block is `blocked`; OpenAI's and Anthropic's `block` is a refusal finish.
fn gemini_blocked(p: Provider) -> Expect {
    match p {
        Provider::Google => Expect::Error {
            kind: ErrorKind::Blocked,
            partial: false,
        },
        _ => Expect::End {
            reason: FinishReason::ContentFilter,
            len: 0,
        },
    }
}

// === Cases that need more than a model name ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_policy_refusals_keep_message_and_status_and_are_not_retried() {
    let cases: [(Provider, &str, Option<u16>, &str); 5] = [
        (Provider::OpenAi, "policy400", Some(400), "usage policy"),
        (
            Provider::OpenAi,
            "azure400",
            Some(400),
            "content management policy",
        ),
        (Provider::OpenAi, "len9-policymid3", None, "usage policy"),
        (
            Provider::Anthropic,
            "policy400",
            Some(400),
            "content filtering policy",
        ),
        (
            Provider::Anthropic,
            "len9-policymid3",
            None,
            "content filtering policy",
        ),
    ];
    for (p, knobs, status, words) in cases {
        let case = Case {
            knobs,
            env: &[],
            want: fails(ErrorKind::Blocked, status.is_none()),
        };
        let (out, emu) = run_case(p, &case).await;
        let Event::Error(e) = out.terminal() else {
            unreachable!("run_case checked the terminal event")
        };
        assert_eq!(e.status, status, "{p} {knobs}: {e:?}");
        assert!(!e.retryable, "{p} {knobs}: {e:?}");
        assert!(e.message.contains(words), "{p} {knobs}: {}", e.message);
        assert_eq!(emu.status().total_requests, 1, "{p} {knobs}: not retried");
    }
}

fn for_each_provider() -> [Provider; 3] {
    Provider::ALL
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_is_kept_apart_from_the_answer() {
    for p in for_each_provider() {
        let case = Case {
            knobs: "len20-think8",
            env: &[],
            want: ok(20),
        };
        let (out, _emu) = run_case(p, &case).await;
        let usage = out.events.iter().rev().find_map(|e| match e {
            Event::Usage(u) => Some(u.clone()),
            _ => None,
        });
        let usage = usage.unwrap_or_else(|| panic!("{p}: usage missing: {out:#?}"));
        match p {
            // Chat Completions does not stream reasoning text, only counts it.
            Provider::OpenAi => assert_eq!(out.reasoning(), ""),
            _ => assert_eq!(out.reasoning(), reasoning_text(8), "{p}"),
        }
        // Anthropic does not count thinking tokens apart from output tokens.
        let counted = (p != Provider::Anthropic).then_some(8);
        assert_eq!(usage.reasoning_tokens, counted, "{p}: {usage:?}");
        assert!(usage.output_tokens >= 20, "{p}: {usage:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_reports_the_hint_when_it_exceeds_the_budget() {
    for p in for_each_provider() {
        let case = Case {
            knobs: "err429-retry60000",
            env: &[],
            want: fails(ErrorKind::RateLimited, false),
        };
        let started = std::time::Instant::now();
        let (out, emu) = run_case(p, &case).await;
        let Event::Error(e) = out.terminal() else {
            unreachable!()
        };
        assert_eq!(e.retry_after_ms, Some(60_000), "{p}: {e:?}");
        assert!(e.retryable);
        assert!(started.elapsed() < Duration::from_secs(10), "no waiting");
        assert_eq!(emu.status().total_requests, 1, "{p}: no retry");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_attempt_cap() {
    for p in for_each_provider() {
        let case = Case {
            knobs: "err500-retry10",
            env: &[],
            want: fails(ErrorKind::Upstream, false),
        };
        let (out, emu) = run_case(p, &case).await;
        assert_eq!(emu.status().total_requests, 3, "{p}");
        assert!(out.stderr.contains("retrying"), "{p}: {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_errors_are_not_retried() {
    for p in for_each_provider() {
        let case = Case {
            knobs: "err401",
            env: &[],
            want: fails(ErrorKind::Auth, false),
        };
        let (_, emu) = run_case(p, &case).await;
        assert_eq!(emu.status().total_requests, 1, "{p}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_key_is_auth_error_and_never_echoed() {
    for p in for_each_provider() {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let key = format!("{}-invalid", polydev_test_support::fake_key(p));
        let out = RuntimeCommand::job(BIN, &emu, p, "emu-len5")
            .env(polydev_test_support::key_var(p), &key)
            .run()
            .await;
        check(
            p,
            "invalid key",
            &out,
            Expect::Error {
                kind: ErrorKind::Auth,
                partial: false,
            },
        );
        // Providers echo a masked key (prefix and suffix); no fragment of it may come out.
        for fragment in ["FAKE", &key[key.len() - 12..]] {
            assert!(
                !out.stdout.contains(fragment),
                "{p}: {fragment} in {}",
                out.stdout
            );
            assert!(
                !out.stderr.contains(fragment),
                "{p}: {fragment} in {}",
                out.stderr
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_exit_64_before_any_request() {
    let emu = start_emulator(EmulatorConfig::default()).await;
    for p in for_each_provider() {
        let cases = [
            RuntimeCommand::job(BIN, &emu, p, "emu-len5")
                .remove_env(polydev_test_support::key_var(p)),
            RuntimeCommand::job(BIN, &emu, p, "emu-len5").remove_env("PROMPT"),
            RuntimeCommand::job(BIN, &emu, p, "emu-len5").env("PROVIDER", "mistral"),
            RuntimeCommand::job(BIN, &emu, p, "emu-len5").env("MAX_TOKENS", "many"),
            RuntimeCommand::job(BIN, &emu, p, "emu-len5").env("EXTRA_CA_CERTS", "/nonexistent.pem"),
        ];
        for cmd in cases {
            let out = cmd.run().await;
            out.assert_no_canary();
            assert_eq!(out.code, Some(64), "{p}: {out:#?}");
            let Event::Error(e) = out.terminal() else {
                panic!("{out:#?}")
            };
            assert_eq!(e.kind, ErrorKind::Config);
            assert_eq!(
                out.stderr.lines().filter(|l| l.contains("error")).count(),
                1,
                "{out:#?}"
            );
        }
    }
    assert_eq!(emu.status().total_requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_extra_ca_works_and_without_it_fails() {
    let emu = start_emulator(EmulatorConfig {
        tls: Some(TlsConfig::default()),
        ..EmulatorConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, emu.ca_pem().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(emu.base_url().starts_with("https://"));
    for p in for_each_provider() {
        let out = RuntimeCommand::job(BIN, &emu, p, "emu-len20-split3")
            .env("EXTRA_CA_CERTS", ca_path.to_str().unwrap_or_default())
            .run()
            .await;
        check(
            p,
            "tls",
            &out,
            Expect::End {
                reason: FinishReason::Stop,
                len: 20,
            },
        );
        let out = RuntimeCommand::job(BIN, &emu, p, "emu-len20").run().await;
        check(
            p,
            "tls untrusted",
            &out,
            Expect::Error {
                kind: ErrorKind::Upstream,
                partial: false,
            },
        );
        assert!(
            out.stderr.contains("TLS") || out.stdout.contains("TLS"),
            "{out:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_cancels_within_a_second_and_closes_upstream() {
    for p in for_each_provider() {
        let emu = start_emulator(EmulatorConfig::default()).await;
        let cmd = RuntimeCommand::job(BIN, &emu, p, "emu-len200-rate20");
        let mut child = cmd.spawn();
        let stdout = child.stdout.take().unwrap_or_else(|| panic!("stdout"));
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let mut seen = Vec::new();
        // Wait for the first text event, then stop the runtime.
        while let Ok(Some(line)) = lines.next_line().await {
            let is_text = line.contains(r#""type":"text""#);
            seen.push(line);
            if is_text {
                break;
            }
        }
        let pid = child.id().unwrap_or_else(|| panic!("pid"));
        let sent = std::time::Instant::now();
        let kill = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        assert!(kill.is_ok_and(|s| s.success()));
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
        let status = child.wait().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{p}: took {:?}",
            sent.elapsed()
        );
        assert_eq!(status.code(), Some(130), "{p}");
        let out = polydev_test_support::parse_events(&seen.join("\n"));
        let Some(Event::Error(e)) = out.last() else {
            panic!("{p}: {seen:?}")
        };
        assert_eq!(e.kind, ErrorKind::Cancelled);
        assert!(e.partial);
        // The emulator saw the client go away.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            emu.status().client_disconnects >= 1,
            "{p}: {:?}",
            emu.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_on_stdin_and_warm_mode() {
    let emu = start_emulator(EmulatorConfig::default()).await;
    for p in for_each_provider() {
        let (url_var, url) = polydev_test_support::base_url_env(p, &emu.base_url());
        let job = serde_json::json!({
            "execution_id": "ex_test", "user_id": "u1", "provider": p.as_str(),
            "model": "emu-len20", "prompt": "hi",
            "credentials": {"api_key": polydev_test_support::fake_key(p)},
        })
        .to_string();
        let base = RuntimeCommand::new(BIN)
            .env(url_var, &url)
            .stdin(&format!("{job}\n"));
        let out = base.clone().arg("run").arg("--job").arg("-").run().await;
        check(
            p,
            "stdin job",
            &out,
            Expect::End {
                reason: FinishReason::Stop,
                len: 20,
            },
        );
        // The same job from a file (not a pipe: read through tokio's stdin instead of the
        // event loop).
        let file = std::env::temp_dir().join(format!(
            "polydev-job-{}-{}.json",
            std::process::id(),
            p.as_str()
        ));
        std::fs::write(&file, format!("{job}\n")).unwrap_or_else(|e| panic!("{e}"));
        let from_file = RuntimeCommand::new(BIN)
            .env(url_var, &url)
            .stdin_file(&file)
            .arg("run")
            .arg("--job")
            .arg("-")
            .run()
            .await;
        let _ = std::fs::remove_file(&file);
        check(
            p,
            "job from a file on stdin",
            &from_file,
            Expect::End {
                reason: FinishReason::Stop,
                len: 20,
            },
        );
        let warm = base.clone().env("WARM_POOL", "true").run().await;
        assert_eq!(warm.events.first(), Some(&Event::Ready), "{warm:#?}");
        assert!(
            matches!(&warm.events[1], Event::Start { execution_id, .. } if execution_id == "ex_test")
        );
        assert_eq!(warm.text(), answer_text(20));
        warm.assert_no_canary();
        // A warm runtime whose stdin closes before any job exits 0 with only `ready`.
        let idle = RuntimeCommand::new(BIN)
            .env("WARM_POOL", "true")
            .run()
            .await;
        assert_eq!(idle.code, Some(0));
        assert_eq!(idle.events, vec![Event::Ready]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_is_just_the_answer() {
    let emu = start_emulator(EmulatorConfig::default()).await;
    for p in for_each_provider() {
        let out = RuntimeCommand::job(BIN, &emu, p, "emu-len20")
            .env("OUTPUT", "text")
            .run()
            .await;
        assert_eq!(out.code, Some(0), "{out:#?}");
        assert_eq!(out.stdout, format!("{}\n", answer_text(20)));
        assert!(!out.stdout.contains(CANARY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_travels_only_in_its_header() {
    let emu = start_emulator(EmulatorConfig::default()).await;
    for p in for_each_provider() {
        let out = RuntimeCommand::job(BIN, &emu, p, "emu-len5").run().await;
        assert_eq!(out.code, Some(0), "{out:#?}");
    }
    let requests = emu.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        let line = serde_json::to_string(r).unwrap_or_default();
        assert!(
            line.contains(CANARY),
            "the key reached the emulator: {line}"
        );
        assert!(!r.path.contains(CANARY) && !r.query.as_deref().unwrap_or("").contains(CANARY));
    }
}

// === Beyond plain text (DESIGN.md 4.5): images, reasoning, tools, refusals, JSON ===

#[path = "conformance/capabilities.rs"]
mod capabilities;
