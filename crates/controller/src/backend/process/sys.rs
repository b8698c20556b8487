//! The controller's only unsafe code: three thin wrappers over Linux system calls that have no
//! safe std or tokio equivalent.
//!
//! - [`die_with_parent`]: a `pre_exec` hook that sets `PR_SET_PDEATHSIG(SIGKILL)` in the forked
//!   child, so runtimes die with the controller even on `kill -9` (nothing else can clean up
//!   after a SIGKILLed controller).
//! - [`send_sigterm`]: `kill(2)`, because tokio can only send SIGKILL and a cancelled runtime
//!   must first get SIGTERM to close its upstream connection and emit its `cancelled` event.
//! - [`raise_nofile_limit`]: `getrlimit(2)` / `setrlimit(2)`, because every execution holds
//!   three pipes plus sockets and the default soft limit (often 1024) caps concurrency.
//!
//! The crate lints `unsafe_code = "deny"` (see crates/controller/Cargo.toml); this module alone
//! opts out, and every `unsafe` block says why it is sound.
#![allow(unsafe_code)]

use std::io;

/// Arranges for the command's child to receive SIGKILL when the thread that spawns it exits
/// (and therefore when the controller process dies, however it dies).
///
/// The caller must spawn from a thread that lives as long as the process: the kernel delivers
/// the parent-death signal when the *thread* that forked the child exits, not the process
/// (prctl(2)). See `spawner.rs`.
pub(crate) fn die_with_parent(cmd: &mut tokio::process::Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child between fork and exec, where only
    // async-signal-safe operations are allowed. It calls prctl(2) and getppid(2), both
    // async-signal-safe system calls, and builds `io::Error` values from raw errno codes, which
    // neither allocates nor takes locks. It captures only a `u32` (Copy), touches no shared
    // state, and returns without unwinding.
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: see above; PR_SET_PDEATHSIG takes the signal number as its only argument.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The controller may have died between fork and prctl; the signal would then never
            // come, because the child was already re-parented. Refuse to exec in that case.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends SIGTERM to process `pid` (SIGKILL goes through tokio's `Child::start_kill`).
///
/// The caller must guarantee that `pid` is its own child that has not been reaped yet (tokio's
/// `Child::id()` returns `None` once it has), so the pid cannot have been reused by another
/// process.
pub(crate) fn send_sigterm(pid: u32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    if pid <= 0 {
        // kill(0) or kill(-1) would signal a whole group or every process we may signal.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    // SAFETY: kill(2) takes two integers and touches no memory of ours; `pid` is positive, so
    // it names exactly one process.
    if unsafe { libc::kill(pid, libc::SIGTERM) } == -1 {
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
