//! The `polydev-runtime` image itself (deploy/docker): FROM scratch, small, non-root, tagged; and
//! the original design's own usage (seed/unified-runtime-v2.md, "Run Container" and "Testing")
//! run verbatim against the emulator.
//!
//! These tests need a Docker Engine. They build the images first (`deploy/docker/build.sh`,
//! fast when up to date). Without an engine they print `SKIPPED …`; under `CI=true` that is a
//! failure (see `polydev_test_support::docker`). Every container runs hardened, and every
//! container and network is removed afterwards, also when a test fails.

use polydev_protocol::Event;
use polydev_test_support::docker::{RUNTIME_IMAGE, docker, docker_ok, hardened, require_docker};
use polydev_test_support::{RunOutput, answer_text, parse_events};

/// The image is at most this many bytes, as `docker image inspect` reports it (issue #4).
const MAX_IMAGE_BYTES: u64 = 5 * 1024 * 1024;

fn run_output(out: std::process::Output) -> RunOutput {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let events = if stdout.starts_with('{') {
        parse_events(&stdout)
    } else {
        Vec::new()
    };
    RunOutput {
        code: out.status.code(),
        stdout,
        stderr,
        events,
    }
}

#[test]
fn image_is_from_scratch_small_static_non_root_and_tagged() {
    let Some(_scope) = require_docker("image_is_from_scratch_small_static_non_root_and_tagged")
    else {
        return;
    };
    let inspect =
        |image: &str, format: &str| docker_ok(["image", "inspect", "--format", format, image]);

    let size: u64 = inspect(RUNTIME_IMAGE, "{{.Size}}")
        .parse()
        .unwrap_or(u64::MAX);
    assert!(
        size < MAX_IMAGE_BYTES,
        "{RUNTIME_IMAGE} is {size} bytes, the target is under {MAX_IMAGE_BYTES}"
    );
    // One layer: the binary. FROM scratch has no base layers.
    assert_eq!(inspect(RUNTIME_IMAGE, "{{len .RootFS.Layers}}"), "1");
    assert_eq!(
        inspect(RUNTIME_IMAGE, "{{json .Config.Entrypoint}}"),
        r#"["/polydev-runtime"]"#
    );
    assert_eq!(inspect(RUNTIME_IMAGE, "{{.Config.User}}"), "65534:65534");

    // The pinned tag is the same image as latest (Nomad re-pulls `latest`; deploys pin this).
    let version = env!("CARGO_PKG_VERSION");
    let pinned = format!("polydev-runtime:{version}");
    assert_eq!(
        inspect(&pinned, "{{.Id}}"),
        inspect(RUNTIME_IMAGE, "{{.Id}}"),
        "{pinned} and {RUNTIME_IMAGE} differ"
    );
    assert_eq!(
        inspect(
            RUNTIME_IMAGE,
            r#"{{index .Config.Labels "org.opencontainers.image.version"}}"#
        ),
        version
    );

    // Nothing but the binary: there is no shell to start.
    let mut args = vec!["run".to_owned(), "--rm".to_owned()];
    args.extend(hardened("16m", 32));
    args.extend(
        [
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
            RUNTIME_IMAGE,
            "-c",
            "true",
        ]
        .map(String::from),
    );
    let out = docker(&args);
    assert!(
        !out.status.success(),
        "the image has a shell: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The seed's "Testing" section loaded each SDK with `node -e`; the Rust equivalent is
/// `--version`, which lists the three provider adapters. The seed's lines are kept verbatim
/// up to the command; the hardening flags are added.
#[test]
fn seed_testing_section_version_lists_the_three_adapters() {
    let Some(_scope) = require_docker("seed_testing_section_version_lists_the_three_adapters")
    else {
        return;
    };
    let seed_lines: [&[&str]; 3] = [
        &["-e", "PROVIDER=openai", "-e", "OPENAI_API_KEY=sk-test"],
        &[
            "-e",
            "PROVIDER=anthropic",
            "-e",
            "ANTHROPIC_API_KEY=sk-ant-test",
        ],
        &["-e", "PROVIDER=google", "-e", "GOOGLE_API_KEY=test"],
    ];
    for env in seed_lines {
        let mut args = vec!["run".to_owned(), "--rm".to_owned()];
        args.extend(env.iter().map(|s| (*s).to_owned()));
        args.extend(hardened("16m", 32));
        args.extend(["--network", "none", RUNTIME_IMAGE, "--version"].map(String::from));
        let out = docker(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{env:?}: {out:?}");
        assert!(
            stdout.starts_with(&format!("polydev-runtime {}", env!("CARGO_PKG_VERSION"))),
            "{stdout}"
        );
        for adapter in ["openai", "anthropic", "google"] {
            assert!(stdout.contains(adapter), "{adapter} missing from: {stdout}");
        }
    }
}

/// The seed's three "Run Container" examples, verbatim, plus only what pointing them at a
/// local emulator needs (the network and the base-URL override) and the hardening flags: each
/// prints the answer and exits 0.
#[test]
fn seed_run_container_examples_print_the_answer() {
    let Some(scope) = require_docker("seed_run_container_examples_print_the_answer") else {
        return;
    };
    let net = scope.network("net");
    let emu = scope.start_emulator(&net, &scope.name("emu"), false, &[]);

    // (seed flags, base-URL override)
    let examples: [(&[&str], String); 3] = [
        (
            &[
                "-e",
                "PROVIDER=openai",
                "-e",
                "OPENAI_API_KEY=sk-test123",
                "-e",
                "PROMPT=Write a hello world function",
            ],
            format!("OPENAI_BASE_URL={}/v1", emu.base_url),
        ),
        (
            &[
                "-e",
                "PROVIDER=anthropic",
                "-e",
                "ANTHROPIC_API_KEY=sk-ant-test123",
                "-e",
                "PROMPT=Explain how async/await works",
            ],
            format!("ANTHROPIC_BASE_URL={}", emu.base_url),
        ),
        (
            &[
                "-e",
                "PROVIDER=google",
                "-e",
                "GOOGLE_API_KEY=AIza-test123",
                "-e",
                "PROMPT=Debug this error",
            ],
            format!("GOOGLE_BASE_URL={}", emu.base_url),
        ),
    ];
    for (seed, base_url) in examples {
        let mut args = vec!["run".to_owned(), "--rm".to_owned()];
        args.extend(seed.iter().map(|s| (*s).to_owned()));
        args.extend(scope.labels());
        args.extend(hardened("16m", 32));
        args.extend([
            "--network".to_owned(),
            net.clone(),
            "-e".to_owned(),
            base_url,
        ]);
        args.push(RUNTIME_IMAGE.to_owned());
        let out = run_output(docker(&args));
        let ctx = format!("{seed:?}: {out:#?}");
        assert_eq!(out.code, Some(0), "{ctx}");
        assert!(
            matches!(out.events.first(), Some(Event::Start { .. })),
            "{ctx}"
        );
        assert!(matches!(out.terminal(), Event::End { .. }), "{ctx}");
        // The emulator's default answer (12 tokens) for a real model name.
        assert_eq!(out.text(), answer_text(12), "{ctx}");
        // The seed's examples omit USER_ID: it defaults to "unknown", with a warning.
        assert!(out.stderr.contains("USER_ID"), "{ctx}");
    }
}
