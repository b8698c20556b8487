//! Lowers the runtime's privileges before it touches any input (the hardened process mode of
//! the controller's process backend, `POLYDEV_PROCESS_USER`; README "Hardened process mode").
//!
//! A runtime holds one user's provider key and talks to the network; the controller that
//! starts it holds the client token and every other user's running executions. With the
//! process backend both used to run as the same user, so a runtime compromised through a
//! parser bug could read the controller's token file, `ptrace` the controller or its siblings,
//! or fill the disk. Containers get isolation from Docker; processes get what Linux offers a
//! process on its own, applied here, first thing in `main`, while the process still has one
//! thread (the identity calls below change only the calling thread's credentials, so they must
//! run before any other thread exists):
//!
//! - always: `PR_SET_NO_NEW_PRIVS` (nothing it could execute gains privileges) and no core
//!   dumps (`RLIMIT_CORE` 0: a core file would hold the user's key);
//! - `RUNTIME_USER=uid:gid`: drop every supplementary group, then the group, then the user,
//!   for real, effective and saved ids, and check that the way back is closed;
//! - `RUNTIME_MAX_MEMORY` (bytes of address space, `RLIMIT_AS`) and `RUNTIME_MAX_OPEN_FILES`
//!   (`RLIMIT_NOFILE`): hard limits, so a runaway runtime fails alone.

use std::fmt;

use crate::config::Env;

/// `uid:gid` to run as (numeric: a static binary has no user database).
pub const RUNTIME_USER: &str = "RUNTIME_USER";
/// Address-space limit in bytes.
pub const RUNTIME_MAX_MEMORY: &str = "RUNTIME_MAX_MEMORY";
/// Open file descriptor limit.
pub const RUNTIME_MAX_OPEN_FILES: &str = "RUNTIME_MAX_OPEN_FILES";

/// The smallest address-space limit accepted: the runtime maps its binary, a TLS stack and
/// tokio's threads; below this it could not even start.
pub const MIN_MEMORY_BYTES: u64 = 64 * 1024 * 1024;
/// The fewest open files accepted: stdio, the upstream connection, the controller connection,
/// the event loop, DNS.
pub const MIN_OPEN_FILES: u64 = 16;

/// What to apply, read from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hardening {
    pub user: Option<(u32, u32)>,
    pub max_memory: Option<u64>,
    pub max_open_files: Option<u64>,
}

/// Why the runtime could not harden itself. Any of these stops it: running with less
/// protection than the operator asked for is worse than not running.
#[derive(Debug)]
pub enum HardenError {
    /// A setting is malformed.
    Config(String),
    /// A system call failed.
    Sys(&'static str, std::io::Error),
    /// After the switch, the process could still become root again.
    NotDropped,
}

impl fmt::Display for HardenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HardenError::Config(m) => f.write_str(m),
            HardenError::Sys(what, e) => write!(f, "cannot {what}: {e}"),
            HardenError::NotDropped => f.write_str(
                "the user switch did not stick (the process could regain its old identity)",
            ),
        }
    }
}

impl Hardening {
    pub fn from_env(env: &dyn Env) -> Result<Hardening, HardenError> {
        let user = match env.var(RUNTIME_USER) {
            None => None,
            Some(v) => Some(parse_user(v.trim()).ok_or_else(|| {
                HardenError::Config(format!(
                    "{RUNTIME_USER}={v:?} is not valid: use numeric uid:gid, neither 0"
                ))
            })?),
        };
        let max_memory = parse_limit(env, RUNTIME_MAX_MEMORY, MIN_MEMORY_BYTES)?;
        let max_open_files = parse_limit(env, RUNTIME_MAX_OPEN_FILES, MIN_OPEN_FILES)?;
        Ok(Hardening {
            user,
            max_memory,
            max_open_files,
        })
    }

    /// Applies everything. Call while the process has a single thread.
    #[cfg(target_os = "linux")]
    pub fn apply(&self) -> Result<(), HardenError> {
        use rustix::process::{Resource, Rlimit, setrlimit};
        let limit = |resource, value: u64, what| {
            let l = Rlimit {
                current: Some(value),
                maximum: Some(value),
            };
            setrlimit(resource, l).map_err(|e| HardenError::Sys(what, e.into()))
        };
        limit(Resource::Core, 0, "turn off core dumps")?;
        if let Some(bytes) = self.max_memory {
            limit(Resource::As, bytes, "limit the address space")?;
        }
        if let Some(files) = self.max_open_files {
            limit(Resource::Nofile, files, "limit open files")?;
        }
        rustix::thread::set_no_new_privs(true)
            .map_err(|e| HardenError::Sys("set no_new_privs", e.into()))?;
        if let Some((uid, gid)) = self.user {
            drop_to(uid, gid)?;
        }
        Ok(())
    }

    /// Other systems: only a plain run is possible.
    #[cfg(not(target_os = "linux"))]
    pub fn apply(&self) -> Result<(), HardenError> {
        if *self == Hardening::default() {
            Ok(())
        } else {
            Err(HardenError::Config(
                "RUNTIME_USER and the RUNTIME_MAX_* limits need Linux".into(),
            ))
        }
    }
}

#[cfg(target_os = "linux")]
fn drop_to(uid: u32, gid: u32) -> Result<(), HardenError> {
    use rustix::process::{Gid, Uid, getegid, geteuid};
    use rustix::thread::{set_thread_groups, set_thread_res_gid, set_thread_res_uid};
    // `parse_user` refused 0 for both: "run as root" is not hardening.
    let (uid, gid) = (Uid::from_raw(uid), Gid::from_raw(gid));
    if geteuid() == uid && getegid() == gid {
        return Ok(());
    }
    // Groups first, then the group, then the user: once the user is dropped, the rest is no
    // longer allowed.
    set_thread_groups(&[]).map_err(|e| HardenError::Sys("drop supplementary groups", e.into()))?;
    set_thread_res_gid(gid, gid, gid).map_err(|e| HardenError::Sys("switch group", e.into()))?;
    set_thread_res_uid(uid, uid, uid).map_err(|e| HardenError::Sys("switch user", e.into()))?;
    if rustix::thread::set_thread_res_uid(Uid::ROOT, Uid::ROOT, Uid::ROOT).is_ok()
        || geteuid() != uid
        || getegid() != gid
    {
        return Err(HardenError::NotDropped);
    }
    Ok(())
}

/// `uid:gid`, both numeric and not 0.
fn parse_user(v: &str) -> Option<(u32, u32)> {
    let (u, g) = v.split_once(':')?;
    let uid: u32 = u.parse().ok()?;
    let gid: u32 = g.parse().ok()?;
    (uid != 0 && gid != 0 && uid != u32::MAX && gid != u32::MAX).then_some((uid, gid))
}

fn parse_limit(env: &dyn Env, var: &str, min: u64) -> Result<Option<u64>, HardenError> {
    let Some(v) = env.var(var) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if n >= min => Ok(Some(n)),
        _ => Err(HardenError::Config(format!(
            "{var}={v:?} is not valid: a whole number of at least {min}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Vars(HashMap<&'static str, &'static str>);

    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    fn env(pairs: &[(&'static str, &'static str)]) -> Vars {
        Vars(pairs.iter().copied().collect())
    }

    #[test]
    fn settings_are_parsed_and_checked() {
        assert_eq!(
            Hardening::from_env(&env(&[])).ok(),
            Some(Hardening::default())
        );
        let h = Hardening::from_env(&env(&[
            (RUNTIME_USER, "65534:65534"),
            (RUNTIME_MAX_MEMORY, "536870912"),
            (RUNTIME_MAX_OPEN_FILES, "256"),
        ]));
        assert_eq!(
            h.ok(),
            Some(Hardening {
                user: Some((65534, 65534)),
                max_memory: Some(512 * 1024 * 1024),
                max_open_files: Some(256),
            })
        );
        for bad in ["0:0", "0:5", "5:0", "nobody", "5", "5:x", ":5", "-1:5"] {
            let v: &'static str = Box::leak(bad.to_owned().into_boxed_str());
            let e = Hardening::from_env(&env(&[(RUNTIME_USER, v)])).err();
            assert!(
                matches!(&e, Some(HardenError::Config(m)) if m.contains("RUNTIME_USER")),
                "{bad}: {e:?}"
            );
        }
        assert!(Hardening::from_env(&env(&[(RUNTIME_MAX_MEMORY, "1000")])).is_err());
        assert!(Hardening::from_env(&env(&[(RUNTIME_MAX_OPEN_FILES, "3")])).is_err());
        assert!(Hardening::from_env(&env(&[(RUNTIME_MAX_OPEN_FILES, "many")])).is_err());
    }
}
