//! The controller's only unsafe code: thin wrappers over Linux system calls that have no
//! safe std or tokio equivalent. (Runtimes set their own parent-death signal: see
//! `spawner.rs`.)
//!
//! - [`send_sigterm`] and [`send_sigkill`]: `kill(2)`, because tokio can only send SIGKILL and a cancelled runtime
//!   must first get SIGTERM to close its upstream connection and emit its `cancelled` event.
//! - [`raise_nofile_limit`]: `getrlimit(2)` / `setrlimit(2)`, because every execution holds
//!   three pipes plus sockets and the default soft limit (often 1024) caps concurrency.
//! - [`is_root`]: `geteuid(2)`, to refuse the hardened process mode where it cannot work.
//! - [`lower_thread_priority`]: `setpriority(2)` on one thread, which std cannot do, so that
//!   the store's bookkeeping thread does not preempt the threads on a request's critical path.
//!
//! The crate lints `unsafe_code = "deny"` (see crates/controller/Cargo.toml); this module alone
//! opts out, and every `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::io;

/// Sends SIGTERM to process `pid` (SIGKILL goes through tokio's `Child::start_kill`).
///
/// The caller must guarantee that `pid` is its own child that has not been reaped yet (tokio's
/// `Child::id()` returns `None` once it has), so the pid cannot have been reused by another
/// process.
pub(crate) fn send_sigterm(pid: u32) -> io::Result<()> {
    send_signal(pid, libc::SIGTERM)
}

/// Sends SIGKILL to process `pid`: for an adopted runtime (DESIGN.md 5.2), which is no longer
/// this process's child, so tokio cannot kill it. The caller checks, right before, that `pid`
/// still has the start time it was journaled with (so it is the same process, not a reuse of
/// its number); the window between that check and the signal is the caller's to accept.
pub(crate) fn send_sigkill(pid: u32) -> io::Result<()> {
    send_signal(pid, libc::SIGKILL)
}

fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pid <= 0 {
        // kill(0) or kill(-1) would signal a whole group or every process we may signal.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours; `pid` is positive, so
    // it names exactly one process.
    if unsafe { libc::kill(pid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft `RLIMIT_NOFILE` to `target`, capped at the hard limit, and returns the soft
/// limit now in force. Never lowers it: a soft limit already at or above `target` is kept.
///
/// Each running execution holds three pipe ends in the controller and the runtime holds a
/// socket or two, so a few thousand concurrent executions need far more than the common
/// default of 1024.
pub fn raise_nofile_limit(target: u64) -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) writes one `rlimit` struct through a pointer to a live, properly
    // aligned local that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == -1 {
        return Err(io::Error::last_os_error());
    }
    let want = target.min(limit.rlim_max);
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit(2) reads one `rlimit` struct through a pointer to a live local.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(want)
}

/// Whether this process runs with effective uid 0 (the hardened process mode switches runtimes
/// to another user, which only root may do).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Lowers the calling thread's scheduling priority to `nice` (0..=19; only this thread, not
/// the process). A failure is returned for the caller to log; the thread runs on unchanged.
pub(crate) fn lower_thread_priority(nice: i32) -> io::Result<()> {
    // SAFETY: gettid(2) takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority(2) takes plain integers; on Linux PRIO_PROCESS with a thread id
    // applies to that one thread. Raising a nice value needs no privilege.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
