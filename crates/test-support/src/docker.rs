//! Helpers for tests that need a Docker Engine: the CI rule, the project's images, and a scope
//! that removes every container and network a test created, also when the test fails.
//!
//! **The CI rule.** Docker tests run in the normal `cargo test`. When the engine is unreachable
//! (or the images cannot be had), a test calls [`require_docker`], which
//! - under CI (`CI` set to anything but `""`, `0` or `false`) panics: a failure, never a silent
//!   pass;
//! - elsewhere prints `SKIPPED <test>: <reason>` on stderr and returns `None`, so the test
//!   returns early. (`cargo test -- --nocapture` shows the line; so does a failing run.)
//!
//! **Images.** [`require_docker`] also makes sure `polydev-runtime:latest` and
//! `polydev-emulator:latest` exist and match the current sources by running
//! `deploy/docker/build.sh` once per test process (idempotent, serialized by a lock, well under a
//! second when nothing changed). `POLYDEV_DOCKER_BUILD=0` skips that step; a missing image is
//! then a skip (a failure under CI).
//!
//! Everything goes through the `docker` CLI: tests exercise exactly what an operator types.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The image the runtime ships as.
pub const RUNTIME_IMAGE: &str = "polydev-runtime:latest";
/// The emulator's image (development and tests only).
pub const EMULATOR_IMAGE: &str = "polydev-emulator:latest";
/// The label every test resource carries; its value is the owning [`DockerScope`]'s id.
pub const SCOPE_LABEL: &str = "dev.polydev.test.scope";
/// The label holding the pid of the test process that created a resource.
pub const PID_LABEL: &str = "dev.polydev.test.pid";
/// The non-root numeric user the images run as (nobody:nogroup).
pub const NON_ROOT_USER: &str = "65534:65534";

/// Whether this run is under CI, where an unusable Docker is a failure rather than a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false" | "FALSE" | "False"))
}

/// `Ok(server version)` when the `docker` CLI can reach an engine, `Err(why not)` otherwise.
pub fn docker_available() -> Result<String, String> {
    static STATUS: OnceLock<Result<String, String>> = OnceLock::new();
    STATUS
        .get_or_init(|| {
            let out = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run the docker CLI: {e}"))?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            } else {
                Err(format!(
                    "the Docker Engine is not reachable: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        })
        .clone()
}

/// The repository root (where `deploy/docker/build.sh` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")))
}

/// Builds (or confirms) the images once per process with `deploy/docker/build.sh --quiet`.
fn ensure_images() -> Result<(), String> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let build = !matches!(
                std::env::var("POLYDEV_DOCKER_BUILD").as_deref(),
                Ok("0" | "false")
            );
            if build {
                let script = repo_root().join("deploy/docker/build.sh");
                let out = Command::new(&script)
                    .arg("--quiet")
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
                if !out.status.success() {
                    // A broken image build is a real failure, CI or not.
                    panic!(
                        "deploy/docker/build.sh failed ({}):\n{}{}",
                        out.status,
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
            for image in [RUNTIME_IMAGE, EMULATOR_IMAGE] {
                let ok = Command::new("docker")
                    .args(["image", "inspect", "--format", "{{.Id}}", image])
                    .stdin(Stdio::null())
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !ok {
                    return Err(format!(
                        "image {image} is missing (run deploy/docker/build.sh)"
                    ));
                }
            }
            Ok(())
        })
        .clone()
}

/// The entry check of every Docker test: `Some(scope)` to go on, `None` to return early (skip,
/// reason printed). Under CI an unusable engine or a missing image panics instead.
pub fn require_docker(test: &str) -> Option<DockerScope> {
    let ready = docker_available().and_then(|_| ensure_images());
    match ready {
        Ok(()) => Some(DockerScope::new(test)),
        Err(reason) if under_ci() => panic!("{test}: Docker is required under CI: {reason}"),
        Err(reason) => {
            eprintln!("SKIPPED {test}: {reason} (under CI=true this is a failure)");
            None
        }
    }
}

/// The hardening flags every test container runs with (CIS Docker Benchmark 4.1, 5.4, 5.11,
/// 5.13, 5.26, 5.29): read-only root, no capabilities, no privilege gain, a numeric non-root
/// user, and small pids and memory limits.
pub fn hardened(memory: &str, pids: u32) -> Vec<String> {
    [
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        NON_ROOT_USER,
        "--pids-limit",
        &pids.to_string(),
        "--memory",
        memory,
        "--memory-swap",
        memory,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs `docker ARGS` to completion (stdin closed) and returns its output.
pub fn docker<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new("docker");
    cmd.args(args).stdin(Stdio::null());
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run docker: {e}"),
    }
}

/// Runs `docker ARGS`, panics (with its stderr) unless it succeeds, returns trimmed stdout.
pub fn docker_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = docker(&args);
    assert!(
        out.status.success(),
        "docker {:?} failed ({}): {}",
        args,
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Owns the Docker resources of one test. Names it hands out are unique (test name, pid,
/// counter); every container and network it creates carries [`SCOPE_LABEL`], and dropping the
/// scope removes them all (`docker rm -f`, `docker network rm`), even when the test panicked.
/// Creating the first scope of a process also removes resources left behind by test processes
/// that no longer exist (killed runs).
pub struct DockerScope {
    id: String,
}

impl DockerScope {
    fn new(test: &str) -> DockerScope {
        static SWEPT: OnceLock<()> = OnceLock::new();
        SWEPT.get_or_init(sweep_orphans);
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let slug: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(24)
            .collect();
        let id = format!(
            "pdt-{}-{}-{}",
            slug.trim_matches('-'),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        DockerScope { id }
    }

    /// This scope's id (also the prefix of every name it hands out).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A unique resource name within this scope.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.id)
    }

    /// The `--label` arguments that tie a resource to this scope.
    pub fn labels(&self) -> Vec<String> {
        vec![
            "--label".into(),
            format!("{SCOPE_LABEL}={}", self.id),
            "--label".into(),
            format!("{PID_LABEL}={}", std::process::id()),
        ]
    }

    /// Creates a private bridge network; returns its name.
    pub fn network(&self, suffix: &str) -> String {
        let name = self.name(suffix);
        let mut args = vec!["network".to_owned(), "create".to_owned()];
        args.extend(self.labels());
        args.push(name.clone());
        docker_ok(&args);
        name
    }

    /// `docker run` arguments up to (not including) the image: `run`, the scope's labels, the
    /// name. The caller adds the rest.
    pub fn run_args(&self, name: &str) -> Vec<String> {
        let mut args = vec!["run".to_owned()];
        args.extend(self.labels());
        args.push("--name".into());
        args.push(name.to_owned());
        args
    }

    /// Starts a hardened emulator container on `network`, named `name` (its DNS name there).
    /// With `tls`, it serves HTTPS on port 8443 with `name` among its certificate's names and
    /// writes its CA to the returned directory (`ca.pem`, to mount read-only into clients);
    /// otherwise plain HTTP on port 8787. Returns once it is listening.
    pub fn start_emulator(&self, network: &str, name: &str, tls: bool, extra: &[&str]) -> Emulated {
        let ca_dir = match tempfile::Builder::new().prefix("polydev-emu-ca-").tempdir() {
            Ok(d) => d,
            Err(e) => panic!("cannot create a temp dir: {e}"),
        };
        // The emulator runs as nobody: it must be able to write the CA here.
        make_world_writable(ca_dir.path());
        let mut args = self.run_args(name);
        args.extend(["-d".into(), "--network".into(), network.into()]);
        args.extend(hardened("64m", 64));
        args.push("-v".into());
        args.push(format!("{}:/ca", ca_dir.path().display()));
        args.push(EMULATOR_IMAGE.into());
        let port = if tls { 8443 } else { 8787 };
        args.push("--listen".into());
        args.push(format!("0.0.0.0:{port}"));
        if tls {
            args.extend([
                "--tls".into(),
                "--tls-san".into(),
                name.into(),
                "--tls-ca-out".into(),
                "/ca/ca.pem".into(),
            ]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        docker_ok(&args);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let logs = docker(["logs", name]);
            if String::from_utf8_lossy(&logs.stdout).contains("listening on") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the emulator container {name} did not start: {}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let scheme = if tls { "https" } else { "http" };
        Emulated {
            base_url: format!("{scheme}://{name}:{port}"),
            ca_pem: tls.then(|| ca_dir.path().join("ca.pem")),
            _ca_dir: ca_dir,
        }
    }
}

/// An emulator container started by [`DockerScope::start_emulator`].
pub struct Emulated {
    /// `http(s)://<container name>:<port>`, valid on the emulator's network.
    pub base_url: String,
    /// The CA certificate on the host (TLS mode), to mount read-only into clients.
    pub ca_pem: Option<PathBuf>,
    _ca_dir: tempfile::TempDir,
}

impl Emulated {
    /// `-v <ca>:/etc/polydev/ca.pem:ro -e EXTRA_CA_CERTS=/etc/polydev/ca.pem` (TLS mode only).
    pub fn ca_args(&self) -> Vec<String> {
        match &self.ca_pem {
            Some(ca) => vec![
                "-v".into(),
                format!("{}:/etc/polydev/ca.pem:ro", ca.display()),
                "-e".into(),
                "EXTRA_CA_CERTS=/etc/polydev/ca.pem".into(),
            ],
            None => Vec::new(),
        }
    }
}

fn make_world_writable(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)) {
        panic!("cannot chmod {}: {e}", path.display());
    }
}

/// Removes every container, then every network, labelled with `filter`.
fn remove_labelled(filter: &str) {
    let ids = docker(["ps", "-aq", "--filter", filter]);
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !ids.is_empty() {
        let mut args = vec!["rm".to_owned(), "-f".to_owned(), "-v".to_owned()];
        args.extend(ids);
        let _ = docker(&args);
    }
    let nets = docker(["network", "ls", "-q", "--filter", filter]);
    for net in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
        let _ = docker(["network", "rm", net]);
    }
}

/// Removes resources of earlier test processes that are gone (a killed `cargo test`).
fn sweep_orphans() {
    let out = docker([
        "ps",
        "-a",
        "--filter",
        &format!("label={PID_LABEL}"),
        "--format",
        &format!("{{{{.Label \"{PID_LABEL}\"}}}}"),
    ]);
    let mut pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let nets = docker([
        "network",
        "ls",
        "--filter",
        &format!("label={PID_LABEL}"),
        "--format",
        &format!("{{{{.Label \"{PID_LABEL}\"}}}}"),
    ]);
    pids.extend(
        String::from_utf8_lossy(&nets.stdout)
            .split_whitespace()
            .map(str::to_owned),
    );
    pids.sort();
    pids.dedup();
    for pid in pids {
        let alive = pid.parse::<u32>().is_ok_and(|p| {
            p == std::process::id() || std::path::Path::new(&format!("/proc/{p}")).exists()
        });
        if !alive {
            remove_labelled(&format!("label={PID_LABEL}={pid}"));
        }
    }
}

impl Drop for DockerScope {
    fn drop(&mut self) {
        remove_labelled(&format!("label={SCOPE_LABEL}={}", self.id));
    }
}
