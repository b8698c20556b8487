//! `polydev-controller`: parses the configuration, wires real resources (the SQLite file, the
//! process backend, the listener, SIGTERM/SIGINT) and hands them to the library's `run`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use polydev_controller::backend::docker::{
    DockerBackend, DockerBackendConfig, DockerMode, record_interrupted,
};
use polydev_controller::backend::process::{
    ProcessBackend, ProcessBackendConfig, PullOptions, find_runtime, raise_nofile_limit,
};
use polydev_controller::backend::{Backend, nomad};
use polydev_controller::config::{
    BackendKind, Cli, Command, ENV_RUNTIME, ENV_RUNTIME_MODE, RuntimeMode, ServeArgs,
};
use polydev_controller::store::Store;
use polydev_controller::{Controller, capacity, run_tls};

/// File descriptors per concurrent execution: the controller's ends of three pipes, the client
/// socket(s), plus slack for warm instances.
const FDS_PER_EXECUTION: u64 = 8;
/// Client connections allowed whatever the open-file limit (below this nothing works anyway).
const MIN_CONNECTIONS: usize = 16;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Capacity(args)) => {
            print!("{}", capacity::report(&args));
            ExitCode::SUCCESS
        }
        Some(Command::NomadSpec(args)) => match nomad::spec_json(&args) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("polydev-controller nomad-spec: {e}");
                ExitCode::FAILURE
            }
        },
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("polydev-controller: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Served from a worker thread, not from this one: the accept loop then runs on the worker
    // whose I/O driver saw the connection, with no hand-off to this thread per connection.
    let served = runtime
        .block_on(runtime.spawn(serve_async(args)))
        .unwrap_or_else(|e| Err(format!("the server task failed: {e}")));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            tracing::error!("{msg}");
            eprintln!("polydev-controller: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(mut args: ServeArgs) -> Result<(), String> {
    let mut config = args.controller_config().map_err(|e| e.to_string())?;
    if args.pool_size > config.max_concurrency {
        tracing::warn!(
            pool_size = args.pool_size,
            max_concurrency = config.max_concurrency,
            "the warm pool is larger than the executions that can run at once; using {}",
            config.max_concurrency
        );
        args.pool_size = config.max_concurrency;
    }
    // Runtimes' descriptors first: client connections get what is left, so idle sockets can
    // never take the descriptors a runtime start needs (security probe F1).
    let runtime_fds = (config.max_concurrency + config.queue_size + args.pool_size) as u64
        * FDS_PER_EXECUTION
        + 256;
    let wanted_fds = runtime_fds + config.connections.max_connections as u64;
    let got = match raise_nofile_limit(wanted_fds) {
        Ok(got) => got,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            wanted_fds
        }
    };
    if got < wanted_fds {
        let fit = usize::try_from(got.saturating_sub(runtime_fds))
            .unwrap_or(usize::MAX)
            .max(MIN_CONNECTIONS);
        tracing::warn!(
            wanted = wanted_fds,
            got,
            max_connections = fit,
            "the open-file limit is below what the limits need; client connections capped to \
             what it leaves after the runtimes (raise it with ulimit -n)"
        );
        config.connections.max_connections = config.connections.max_connections.min(fit);
    }
    // Bind first: a taken port fails fast with nothing touched (no row recovered, no runtime
    // started). Then the store's lock: a second controller on the same database stops there,
    // before recovery could call the first one's live executions interrupted.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    // Executions of a backend whose runtimes outlive the controller stay `running` and are
    // adopted once the controller is up (DESIGN.md 5.2).
    let adopting = match (args.backend, args.runtime_api.runtime_mode) {
        (BackendKind::Nomad, _) => Some("nomad"),
        (BackendKind::Process, RuntimeMode::Pull) => Some("process"),
        (BackendKind::Docker, _) if args.docker.docker_mode == DockerMode::Pull => Some("docker"),
        _ => None,
    };
    let (store, recovery) = Store::open_adopting(&args.db, adopting)
        .map_err(|e| format!("cannot open the database {}: {e}", args.db.display()))?;
    if recovery.interrupted > 0 {
        tracing::warn!(
            count = recovery.interrupted,
            "marked executions left unfinished by the previous run as failed (interrupted)"
        );
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let tls = args.runtime_api.tls().map_err(|e| e.to_string())?;
    // Containers journaled for adoption: start-up recovery leaves them to `adopt`.
    let adopting_handles: Vec<String> = recovery
        .adoptable
        .iter()
        .filter(|a| a.instance.backend == "docker")
        .map(|a| a.instance.handle.clone())
        .collect();
    let backend = build_backend(&args, &store, addr, adopting_handles).await?;
    tracing::info!(
        %addr,
        backend = backend.name(),
        max_concurrency = config.max_concurrency,
        queue_size = config.queue_size,
        max_per_user = config.max_per_user,
        pool_size = args.pool_size,
        auth = config.api_token.is_some(),
        "polydev-controller listening"
    );
    // One line on stdout, like the emulator's, for scripts that start it on port 0.
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("polydev-controller listening on {scheme}://{addr}");
    let controller = Controller::new(config, backend, store);
    let adopted = controller.adopt(recovery.adoptable);
    if adopted > 0 {
        tracing::info!(
            count = adopted,
            "adopted executions left running by the previous run; waiting for their runtimes"
        );
    }
    run_tls(listener, tls, controller, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// The backend `POLYDEV_BACKEND` names (validated by `controller_config`).
async fn build_backend(
    args: &ServeArgs,
    store: &Store,
    addr: std::net::SocketAddr,
    adopting: Vec<String>,
) -> Result<Arc<dyn Backend>, String> {
    if args.runtime_api.runtime_mode == RuntimeMode::Pull && args.backend != BackendKind::Process {
        return Err(format!(
            "{ENV_RUNTIME_MODE}=pull applies to the process backend (the Docker backend pulls \
             with POLYDEV_DOCKER_MODE=pull; the Nomad backend always pulls)"
        ));
    }
    match args.backend {
        BackendKind::Process => {
            let runtime_path = match &args.runtime {
                Some(p) => p.clone(),
                None => {
                    find_runtime().map_err(|e| format!("{e} (set {ENV_RUNTIME} to its path)"))?
                }
            };
            let mut config = ProcessBackendConfig::new(runtime_path);
            config.env = args.runtime_env.vars();
            config.pool_size = args.pool_size;
            config.pull = pull_options(args, addr)?;
            config.hardening = args.process.hardening();
            let backend = ProcessBackend::new(config).map_err(|e| e.to_string())?;
            Ok(Arc::new(backend))
        }
        BackendKind::Docker => {
            let pull = match args.docker.docker_mode {
                DockerMode::Pull => Some(runtime_pull_options(args, addr)?),
                DockerMode::Attach => None,
            };
            let mut config = DockerBackendConfig::from_args(
                &args.docker,
                args.runtime_env.vars(),
                args.pool_size,
                pull,
            )
            .map_err(|e| e.to_string())?;
            config.adopting = adopting;
            let backend = Arc::new(DockerBackend::new(config).map_err(|e| e.to_string())?);
            // Containers a previous run left: removed in the background (retried while the
            // engine is unreachable), but for those of executions being adopted (pull mode);
            // the executions they ran end failed/interrupted.
            let (found, store) = (Arc::clone(&backend), store.clone());
            tokio::spawn(async move {
                if let Some(r) = found.recovery().await {
                    record_interrupted(&store, &r.interrupted).await;
                }
            });
            Ok(backend)
        }
        BackendKind::Nomad => {
            // Runtimes reach this controller at POLYDEV_PUBLIC_URL: https://, or http:// on
            // loopback only, since jobs with users' keys cross that link.
            let url = args
                .runtime_api
                .public_url(addr)
                .map_err(|e| e.to_string())?;
            let config = args
                .nomad
                .backend_config(&url, args.runtime_env.vars(), args.pool_size)
                .map_err(|e| e.to_string())?;
            // Registers the job now: a refused job or an unreachable Nomad stops the start.
            let backend = nomad::NomadBackend::start(config)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Arc::new(backend))
        }
    }
}

/// Pull mode's settings for the process backend: runtimes reach this controller at
/// POLYDEV_PUBLIC_URL (default: its own address), trusting POLYDEV_TLS_CA.
fn pull_options(
    args: &ServeArgs,
    addr: std::net::SocketAddr,
) -> Result<Option<PullOptions>, String> {
    if args.runtime_api.runtime_mode != RuntimeMode::Pull {
        return Ok(None);
    }
    runtime_pull_options(args, addr).map(Some)
}

/// Pull-mode settings of the process and Docker backends: runtimes reach this controller at
/// POLYDEV_PUBLIC_URL (default: its own address), trusting POLYDEV_TLS_CA.
fn runtime_pull_options(
    args: &ServeArgs,
    addr: std::net::SocketAddr,
) -> Result<PullOptions, String> {
    let url = args
        .runtime_api
        .public_url(addr)
        .map_err(|e| e.to_string())?;
    let mut options = PullOptions::new(url);
    options.controller_ca = args.runtime_api.tls_ca.clone();
    // A fetched job's token lives as long as the job may run, with a margin.
    options.job_ttl = args.max_execution_time + std::time::Duration::from_secs(60);
    Ok(options)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
