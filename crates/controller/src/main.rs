//! `polydev-controller`: parses the configuration, wires real resources (the SQLite file, the
//! process backend, the listener, SIGTERM/SIGINT) and hands them to the library's `run`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use polydev_controller::backend::Backend;
use polydev_controller::backend::process::{
    ProcessBackend, ProcessBackendConfig, find_runtime, raise_nofile_limit,
};
use polydev_controller::config::{BackendKind, Cli, Command, ENV_RUNTIME, ServeArgs};
use polydev_controller::store::Store;
use polydev_controller::{Controller, capacity, run};

/// File descriptors per concurrent execution: the controller's ends of three pipes, the client
/// socket(s), plus slack for warm instances.
const FDS_PER_EXECUTION: u64 = 8;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Capacity(args)) => {
            print!("{}", capacity::report(&args));
            ExitCode::SUCCESS
        }
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
    match runtime.block_on(serve_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            tracing::error!("{msg}");
            eprintln!("polydev-controller: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_async(args: ServeArgs) -> Result<(), String> {
    let config = args.controller_config().map_err(|e| e.to_string())?;
    let wanted_fds = (config.max_concurrency + config.queue_size + args.pool_size) as u64
        * FDS_PER_EXECUTION
        + config.max_streams as u64
        + 256;
    match raise_nofile_limit(wanted_fds) {
        Ok(got) if got < wanted_fds => tracing::warn!(
            wanted = wanted_fds,
            got,
            "the open-file limit is below what the concurrency limit needs; raise it (ulimit -n)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let (store, interrupted) = Store::open(&args.db)
        .map_err(|e| format!("cannot open the database {}: {e}", args.db.display()))?;
    if interrupted > 0 {
        tracing::warn!(
            count = interrupted,
            "marked executions left unfinished by the previous run as failed (interrupted)"
        );
    }
    // Bind before starting any runtime, so a taken port fails fast with nothing to clean up.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let backend = build_backend(&args)?;
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
    println!("polydev-controller listening on http://{addr}");
    let controller = Controller::new(config, backend, store);
    run(listener, controller, shutdown_signal())
        .await
        .map_err(|e| format!("server error: {e}"))
}

/// The backend `POLYDEV_BACKEND` names (validated by `controller_config`).
fn build_backend(args: &ServeArgs) -> Result<Arc<dyn Backend>, String> {
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
            let backend = ProcessBackend::new(config).map_err(|e| e.to_string())?;
            Ok(Arc::new(backend))
        }
        BackendKind::Docker | BackendKind::Nomad => Err(format!(
            "POLYDEV_BACKEND={:?} is not built yet",
            args.backend
        )),
    }
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
