//! The Docker backend's settings: defaults, what the command line maps to, and the checks
//! that run before anything touches the engine ("parse, then build"): a credential-like
//! variable, root, a memory limit Docker would refuse or a CA file that is not there fail at
//! start-up, with a message naming the setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::BackendError;
use super::spec::{self, CA_MOUNT};
use crate::backend::process::PullOptions;
use crate::config::DockerArgs;

/// The engine socket when `DOCKER_HOST` is unset.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// The runtime image: pinned to this controller's version, never `latest`.
pub const DEFAULT_IMAGE: &str = concat!("polydev-runtime:", env!("CARGO_PKG_VERSION"));
/// The backend's own bridge network, created if missing.
pub const DEFAULT_NETWORK: &str = "polydev";
/// Memory per container. The runtime's peak RSS is a few MiB; the rest is headroom for large
/// SSE events (Gemini's thought signatures can be megabytes).
pub const DEFAULT_MEMORY: u64 = 32 * 1024 * 1024;
/// Docker refuses smaller memory limits.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;
/// Processes (threads) per container: the runtime uses a main thread and at most two blocking
/// threads.
pub const DEFAULT_PIDS: u32 = 32;
/// The user containers run as (nobody:nogroup; numeric, as the image has no /etc/passwd).
pub const DEFAULT_USER: &str = "65534:65534";
/// The default instance name.
pub const DEFAULT_INSTANCE: &str = "default";

/// How Docker runtimes get their job and send their events (`POLYDEV_DOCKER_MODE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DockerMode {
    /// The job is written on the container's attached stdin and the events are read from its
    /// attached stdout: an execution's output depends on that connection to the controller.
    #[default]
    Attach,
    /// Controller-pull mode (DESIGN.md 4.4): containers fetch their job from the runtime API
    /// at `POLYDEV_PUBLIC_URL` with a per-container token (a read-only bind-mounted file) and
    /// post their events back, so that they do not depend on an attach connection.
    Pull,
}
/// How the Docker backend runs runtimes.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerBackendConfig {
    /// The engine's unix socket (from `DOCKER_HOST=unix://…`, see [`socket_from_docker_host`]).
    pub socket: PathBuf,
    /// The runtime image, tag pinned.
    pub image: String,
    /// `NetworkMode` of containers: a network name, `host`, `bridge` or `none`.
    pub network: String,
    /// Create `network` (a bridge without inter-container traffic) if it does not exist.
    pub create_network: bool,
    /// This controller's name on the engine (label `io.polydev.controller`): containers of a
    /// previous run with the same name are removed at start. Controllers sharing an engine
    /// need different names.
    pub instance: String,
    /// Non-secret runtime settings passed as env (base URLs, timeouts, `EXTRA_CA_CERTS` as a
    /// host path, mounted read-only). Credential-like names are refused.
    pub env: Vec<(String, String)>,
    /// More labels for every container and network (for example a test's cleanup scope).
    pub extra_labels: Vec<(String, String)>,
    /// `User` of containers: numeric `uid:gid`, never root.
    pub user: String,
    pub memory_bytes: u64,
    pub pids_limit: u32,
    /// CPU limit in cores; `None`: no limit.
    pub cpus: Option<f64>,
    /// Target number of idle warm containers (0: every launch is cold).
    pub pool_size: usize,
    /// Time between SIGTERM and SIGKILL on cancel, shutdown or a dropped output.
    pub cancel_grace: Duration,
    /// Bound on every engine call (create, start, inspect, remove…).
    pub api_timeout: Duration,
    /// How long a warm runtime may take to print `ready`, and a claimed one to print anything.
    pub ready_timeout: Duration,
    /// Longest stdout line accepted; a longer one is garbage and the container is killed.
    pub max_line_bytes: usize,
    /// How much of a container's stderr is kept (its end) for the exit detail.
    pub max_stderr_bytes: usize,
    /// Capacity of each instance's output channel, in items.
    pub output_buffer: usize,
    /// How many warm containers may be starting at once.
    pub max_concurrent_starts: usize,
    /// Longest wait between warm starts after repeated failures.
    pub start_backoff_max: Duration,
    /// Controller-pull mode (`POLYDEV_DOCKER_MODE=pull`) when set: the runtime API URL the
    /// containers are given, the CA they must trust for it, and the token lifetimes. `None`:
    /// attach mode.
    pub pull: Option<PullOptions>,
    /// Pull mode: ids of the containers the store journaled for adoption after a controller
    /// restart (the handles of its `docker` instance records). Start-up recovery leaves them
    /// running for [`Backend::adopt`](crate::backend::Backend::adopt) and removes every other
    /// container a previous run left.
    pub adopting: Vec<String>,
}

impl DockerBackendConfig {
    /// Defaults: the default socket, image, network (created if missing) and limits; no pool.
    pub fn new() -> DockerBackendConfig {
        DockerBackendConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            image: DEFAULT_IMAGE.to_owned(),
            network: DEFAULT_NETWORK.to_owned(),
            create_network: true,
            instance: DEFAULT_INSTANCE.to_owned(),
            env: Vec::new(),
            extra_labels: Vec::new(),
            user: DEFAULT_USER.to_owned(),
            memory_bytes: DEFAULT_MEMORY,
            pids_limit: DEFAULT_PIDS,
            cpus: None,
            pool_size: 0,
            cancel_grace: Duration::from_secs(2),
            api_timeout: Duration::from_secs(60),
            ready_timeout: Duration::from_secs(10),
            max_line_bytes: 32 * 1024 * 1024,
            max_stderr_bytes: 4096,
            output_buffer: 256,
            max_concurrent_starts: 4,
            start_backoff_max: Duration::from_secs(30),
            pull: None,
            adopting: Vec::new(),
        }
    }

    /// The configuration the command line and environment describe. `pull`: the pull-mode
    /// options, required when `args` says `POLYDEV_DOCKER_MODE=pull` and ignored otherwise.
    pub fn from_args(
        args: &DockerArgs,
        env: Vec<(String, String)>,
        pool_size: usize,
        pull: Option<PullOptions>,
    ) -> Result<DockerBackendConfig, BackendError> {
        let pull = match args.docker_mode {
            DockerMode::Attach => None,
            DockerMode::Pull => Some(pull.ok_or_else(|| {
                BackendError::Unavailable(
                    "POLYDEV_DOCKER_MODE=pull needs POLYDEV_PUBLIC_URL (the URL runtimes use to reach this controller)".into(),
                )
            })?),
        };
        let socket = socket_from_docker_host(args.docker_host.as_deref())
            .map_err(BackendError::Unavailable)?;
        let network = args.docker_network.trim().to_owned();
        Ok(DockerBackendConfig {
            socket,
            image: args.docker_image.trim().to_owned(),
            create_network: network == DEFAULT_NETWORK,
            network,
            instance: args.docker_instance.trim().to_owned(),
            env,
            memory_bytes: args.docker_memory,
            pids_limit: args.docker_pids,
            cpus: args.docker_cpus,
            pool_size,
            pull,
            ..DockerBackendConfig::new()
        })
    }

    /// Attach or pull.
    pub fn mode(&self) -> DockerMode {
        if self.pull.is_some() {
            DockerMode::Pull
        } else {
            DockerMode::Attach
        }
    }
}

impl Default for DockerBackendConfig {
    fn default() -> Self {
        DockerBackendConfig::new()
    }
}

/// The socket `DOCKER_HOST` names: unset or empty means [`DEFAULT_SOCKET`]; only
/// `unix:///absolute/path` is supported (the backend never speaks TCP to an engine: an
/// unauthenticated TCP engine is root on its host).
pub fn socket_from_docker_host(value: Option<&str>) -> Result<PathBuf, String> {
    let value = value.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        return Ok(PathBuf::from(DEFAULT_SOCKET));
    }
    match value.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') => Ok(PathBuf::from(path)),
        _ => Err(format!(
            "DOCKER_HOST={value} is not supported: the Docker backend talks to the engine's unix socket only (DOCKER_HOST=unix:///var/run/docker.sock)"
        )),
    }
}

/// What [`DockerBackendConfig::prepare`] derives: the containers' env (`KEY=VALUE`, with
/// `OUTPUT=ndjson` forced and `EXTRA_CA_CERTS` pointing at the mount), their binds, and the CPU
/// limit in the engine's unit.
pub(super) struct Prepared {
    pub env: Vec<String>,
    pub binds: Vec<String>,
    pub nano_cpus: Option<i64>,
}

impl DockerBackendConfig {
    /// Checks every setting and derives the containers' env and binds.
    pub(super) fn prepare(&self) -> Result<Prepared, BackendError> {
        let invalid = |what: String| BackendError::Unavailable(what);
        if !spec::is_name_safe(&self.instance) {
            return Err(invalid(format!(
                "invalid Docker instance name {:?}: use letters, digits, '.', '_' or '-' (at most 64)",
                self.instance
            )));
        }
        if self.image.trim().is_empty() {
            return Err(invalid("the runtime image name is empty".into()));
        }
        let tag = self.image.rsplit_once(':').map(|(_, t)| t);
        if tag.is_none_or(|t| t == "latest" || t.contains('/')) && !self.image.contains('@') {
            tracing::warn!(image = %self.image,
                "docker backend: the runtime image tag is not pinned; use polydev-runtime:<version>");
        }
        if self.network.trim().is_empty() || self.network.contains('/') {
            return Err(invalid(format!(
                "invalid Docker network name {:?}",
                self.network
            )));
        }
        if self.memory_bytes < MIN_MEMORY {
            return Err(invalid(format!(
                "the container memory limit must be at least {} MiB (Docker's minimum)",
                MIN_MEMORY >> 20
            )));
        }
        if self.pids_limit < 2 {
            return Err(invalid(
                "the container pids limit must be at least 2 (the runtime's main thread and its resolver)".into(),
            ));
        }
        let user_ok = self
            .user
            .split(':')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !user_ok || self.user.split(':').next() == Some("0") {
            return Err(invalid(format!(
                "the container user must be a numeric non-root uid[:gid], not {:?}",
                self.user
            )));
        }
        let nano_cpus = match self.cpus {
            None => None,
            Some(c) if c.is_finite() && c > 0.0 && c <= 1024.0 => Some((c * 1e9) as i64),
            Some(c) => return Err(invalid(format!("invalid CPU limit {c}"))),
        };
        check_env(&self.env)?;
        if !socket_exists(&self.socket) {
            tracing::warn!(socket = %self.socket.display(),
                "docker backend: no Docker engine socket there yet; executions fail as unavailable until there is");
        }
        for (k, v) in &self.extra_labels {
            if k.starts_with("io.polydev.") || k.is_empty() || k.contains('\0') || v.contains('\0')
            {
                return Err(invalid(format!("invalid extra label {k:?}")));
            }
        }
        let mut env = Vec::new();
        let mut binds = Vec::new();
        for (k, v) in &self.env {
            match k.as_str() {
                "OUTPUT" | "WARM_POOL" => {}
                "EXTRA_CA_CERTS" => {
                    let host = std::fs::canonicalize(v)
                        .ok()
                        .filter(|p| p.is_file())
                        .ok_or_else(|| {
                            invalid(
                                "EXTRA_CA_CERTS does not name a readable file on this host".into(),
                            )
                        })?;
                    binds.push(format!("{}:{CA_MOUNT}:ro", host.display()));
                    env.push(format!("EXTRA_CA_CERTS={CA_MOUNT}"));
                }
                _ => env.push(format!("{k}={v}")),
            }
        }
        env.push("OUTPUT=ndjson".into());
        Ok(Prepared {
            env,
            binds,
            nano_cpus,
        })
    }
}

/// Refuses environment entries that look like credentials: they must travel only in the job.
fn check_env(env: &[(String, String)]) -> Result<(), BackendError> {
    for (name, value) in env {
        let upper = name.to_ascii_uppercase();
        if name.is_empty() || name.contains('=') || name.contains('\0') || value.contains('\0') {
            return Err(BackendError::Unavailable(format!(
                "invalid runtime environment variable {name:?}"
            )));
        }
        let secret = upper.ends_with("_API_KEY")
            || upper.ends_with("_API_KEY_FILE")
            || upper.starts_with("RUNTIME_TOKEN");
        if secret {
            return Err(BackendError::Unavailable(format!(
                "{name} must not be passed to runtimes: credentials travel only inside the job"
            )));
        }
    }
    Ok(())
}

/// Whether `path` exists as a unix socket (for a clear start-up warning).
pub fn socket_exists(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_is_a_unix_socket_or_nothing() {
        assert_eq!(
            socket_from_docker_host(None).unwrap(),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(
            socket_from_docker_host(Some("")).unwrap(),
            PathBuf::from(DEFAULT_SOCKET)
        );
        assert_eq!(
            socket_from_docker_host(Some("unix:///run/user/1000/docker.sock")).unwrap(),
            PathBuf::from("/run/user/1000/docker.sock")
        );
        let e = socket_from_docker_host(Some("tcp://10.0.0.1:2375")).unwrap_err();
        assert!(e.contains("unix socket only"), "{e}");
        assert!(socket_from_docker_host(Some("unix://relative")).is_err());
    }

    #[test]
    fn the_mode_is_attach_unless_pull_is_asked_for_with_a_url() {
        use clap::Parser;
        let parse = |args: &[&str]| {
            let mut argv = vec!["polydev-controller"];
            argv.extend_from_slice(args);
            crate::config::Cli::try_parse_from(argv).unwrap()
        };
        let cli = parse(&[]);
        assert_eq!(cli.serve.docker.docker_mode, DockerMode::Attach);
        let c = DockerBackendConfig::from_args(&cli.serve.docker, vec![], 0, None).unwrap();
        assert_eq!(c.mode(), DockerMode::Attach);
        // Pull options given for another backend's sake do not switch attach mode to pull.
        let opts = PullOptions::new("http://127.0.0.1:8080");
        let c = DockerBackendConfig::from_args(&cli.serve.docker, vec![], 0, Some(opts.clone()))
            .unwrap();
        assert!(c.pull.is_none());
        let cli = parse(&["--docker-mode", "pull"]);
        assert_eq!(cli.serve.docker.docker_mode, DockerMode::Pull);
        let c = DockerBackendConfig::from_args(&cli.serve.docker, vec![], 0, Some(opts.clone()))
            .unwrap();
        assert_eq!(c.mode(), DockerMode::Pull);
        assert_eq!(c.pull, Some(opts));
        let e = DockerBackendConfig::from_args(&cli.serve.docker, vec![], 0, None).unwrap_err();
        assert!(e.to_string().contains("POLYDEV_PUBLIC_URL"), "{e}");
        assert!(
            crate::config::Cli::try_parse_from(["polydev-controller", "--docker-mode", "stdin"])
                .is_err()
        );
    }

    #[test]
    fn the_default_image_is_pinned_to_this_version() {
        assert_eq!(
            DEFAULT_IMAGE,
            format!("polydev-runtime:{}", env!("CARGO_PKG_VERSION"))
        );
        assert!(!DEFAULT_IMAGE.ends_with(":latest"));
    }
}
