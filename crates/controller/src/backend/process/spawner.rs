//! Spawns every runtime process from one dedicated thread that lives as long as the controller.
//!
//! Why a thread: runtimes must die with the controller even when it is `kill -9`ed (nothing else
//! can clean up then), so each one sets `PR_SET_PDEATHSIG(SIGKILL)` first thing (the runtime's
//! `parent.rs`, told the controller's pid in `PARENT_PID`, exits at once if its parent is
//! already someone else). But the kernel sends that signal when the *thread* that spawned the
//! child exits, not when the process does (prctl(2): "the parent" is the creating thread).
//! Tokio's worker and blocking threads come and go (blocking threads idle out after 10 s), so a
//! child spawned from one of them could be killed at a random moment. Spawning from a thread
//! that never exits makes the parent-death signal mean exactly "the controller process died".
//!
//! Why the runtime sets the signal itself: a `pre_exec` hook in the controller would make the
//! standard library use `fork` + `exec` instead of `posix_spawn` (`vfork`-like); `fork` copies
//! the controller's page tables, which costs more the more executions it holds (0.24 ms at
//! 10 MiB, about 19 ms at 600 MiB on the benchmark machine). Without a hook the spawn costs the
//! same at any size.
//!
//! Alternatives considered: a subreaper or a tiny supervisor process per child (one more process
//! per execution, and still needs its own death detection); a pipe the runtime watches (misses a
//! stalled runtime); cgroups (need privileges and are not available to a plain `cargo run`). The
//! thread costs one parked OS thread and a channel hop per spawn (a few microseconds).
//!
//! Pull-mode runtimes are the exception (`SpawnSpec::outlive`): they report over the runtime
//! API and reconnect to whichever controller answers, so a controller restart must not kill
//! them (DESIGN.md 5.2). They get no `PARENT_PID` and are not killed when their `Child` is
//! dropped; the trade-off is that a controller killed with `kill -9` leaves them running until
//! they finish their job or give up reconnecting (the runtime's reconnect window).
//!
//! The child is still a `tokio::process::Child`: the spawner enters the caller's runtime
//! context before spawning, so tokio registers the child (pidfd or SIGCHLD) with that runtime
//! and the caller awaits its exit and pipes as usual.

use std::ffi::OsString;
use std::io;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock, mpsc};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// What to run. The environment is exactly `env`: nothing is inherited from the controller.
#[derive(Debug)]
pub(crate) struct SpawnSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    /// The runtime may outlive the controller (pull mode, DESIGN.md 5.2): it is not tied to
    /// the controller's life (no `PARENT_PID`), and a `Child` dropped without being waited for
    /// (the controller detaching at shutdown) is left running rather than killed.
    pub outlive: bool,
}

struct Request {
    spec: SpawnSpec,
    runtime: Handle,
    reply: oneshot::Sender<io::Result<tokio::process::Child>>,
}

type SpawnerTx = mpsc::Sender<Request>;

/// The spawner thread's inbox, started on first use. It is never dropped (it lives in a
/// static), so the thread's receive loop never ends and the thread lives until the process
/// exits.
fn spawner() -> io::Result<SpawnerTx> {
    static SPAWNER: OnceLock<Mutex<Option<SpawnerTx>>> = OnceLock::new();
    let slot = SPAWNER.get_or_init(|| Mutex::new(None));
    let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = guard.as_ref() {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("polydev-spawner".into())
        .spawn(move || {
            for req in rx {
                serve(req);
            }
        })?;
    *guard = Some(tx.clone());
    Ok(tx)
}

fn serve(req: Request) {
    let Request {
        spec,
        runtime,
        reply,
    } = req;
    // A panic here would end this thread and, with it, SIGKILL every runtime it ever started;
    // contain it to the one request.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let _entered = runtime.enter();
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .env_clear()
            .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // The runtime ties itself to this process (and to this thread: see above).
            .envs((!spec.outlive).then(|| ("PARENT_PID", std::process::id().to_string())))
            // A runtime wakes up once per streamed token; glibc's restartable-sequences
            // registration costs a user-memory update on every return from a preempted syscall
            // (about 4% of a streaming runtime's CPU in docs/profile.md) and the runtime has no
            // use for it. Ignored by other C libraries.
            .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Safety net: a `Child` dropped without being waited for is killed and handed to
            // tokio's orphan reaper. The process backend normally waits for every child itself.
            .kill_on_drop(!spec.outlive)
            // Own process group: a Ctrl-C on the controller's terminal reaches the controller,
            // which shuts down gracefully, instead of cancelling every runtime at once.
            .process_group(0);
        cmd.spawn()
    }));
    let result = result.unwrap_or_else(|_| Err(io::Error::other("the spawner panicked")));
    // The caller may have given up waiting; the child is then dropped, killed and reaped.
    let _ = reply.send(result);
}

/// Spawns `spec` from the spawner thread and returns the child, registered with the current
/// tokio runtime. Must be called from within a tokio runtime.
pub(crate) async fn spawn(spec: SpawnSpec) -> io::Result<tokio::process::Child> {
    let runtime = Handle::try_current().map_err(io::Error::other)?;
    let (reply, rx) = oneshot::channel();
    spawner()?
        .send(Request {
            spec,
            runtime,
            reply,
        })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}
