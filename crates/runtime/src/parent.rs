//! Dies with the process that started it (`PARENT_PID`, set by the controller's process
//! backend).
//!
//! The controller used to set `PR_SET_PDEATHSIG` in a `pre_exec` hook between `fork` and
//! `exec`; any such hook makes the standard library fall back from `posix_spawn` to a full
//! `fork`, whose cost grows with the controller's memory. The runtime sets the signal itself
//! instead, first thing, and then closes the race that leaves open: if the controller died
//! between the spawn and the `prctl`, the runtime has already been re-parented (to init or a
//! subreaper), the signal will never come, and `getppid()` no longer names the controller, so
//! it exits at once.
//!
//! The kernel sends the signal when the *thread* that spawned the child exits; the controller
//! spawns from one thread that lives as long as it does (its `spawner.rs`).

use std::fmt;

/// Why the runtime cannot run tied to its parent.
#[derive(Debug)]
pub enum ParentError {
    /// `prctl(PR_SET_PDEATHSIG)` failed.
    Prctl(std::io::Error),
    /// The parent is not (any more) the process that started this one.
    Gone { expected: u32, actual: Option<u32> },
}

impl fmt::Display for ParentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParentError::Prctl(e) => write!(f, "cannot set the parent-death signal: {e}"),
            ParentError::Gone { expected, actual } => write!(
                f,
                "the process that started this runtime ({expected}) is gone (parent now {})",
                actual.map_or_else(|| "none".to_owned(), |p| p.to_string())
            ),
        }
    }
}

/// SIGKILL this process when its parent exits; fails if the parent is already not `expected`.
#[cfg(target_os = "linux")]
pub fn die_with_parent(expected: u32) -> Result<(), ParentError> {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| ParentError::Prctl(e.into()))?;
    // Read after the prctl: a parent that dies from here on triggers the signal.
    let actual = getppid().and_then(|p| u32::try_from(p.as_raw_pid()).ok());
    if actual == Some(expected) {
        Ok(())
    } else {
        Err(ParentError::Gone { expected, actual })
    }
}

/// Other systems have no parent-death signal; the runtime only ever runs under the
/// controller's process backend on Linux.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_expected: u32) -> Result<(), ParentError> {
    Err(ParentError::Prctl(std::io::Error::other(
        "PARENT_PID needs Linux",
    )))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_parent_is_refused() {
        let parent =
            u32::try_from(rustix::process::getppid().map_or(0, |p| p.as_raw_pid())).unwrap_or(0);
        let err = die_with_parent(parent.wrapping_add(1)).err();
        assert!(
            matches!(err, Some(ParentError::Gone { actual: Some(p), .. }) if p == parent),
            "{err:?}"
        );
    }
}
