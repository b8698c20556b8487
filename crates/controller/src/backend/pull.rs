//! Controller-pull warm mode, the controller's side (DESIGN.md 4.4, orchestration.md 2.2 option 2
//! "one-time token, then a pull", 3.4 "Lambda-style pull").
//!
//! Some hosts cannot attach to a runtime's stdin (Nomad; any scheduler that only starts
//! processes). There the runtime starts with no credential and no job, long-polls
//! `GET /runtime/v1/next` for its one job, streams its NDJSON events back in one chunked
//! `POST /runtime/v1/executions/{id}/events`, and exits. The job carries the user's key, so this
//! module is mostly about *who may fetch what, how often*:
//!
//! - **An instance is authenticated, not a client.** Each request presents the instance's own
//!   credential, checked by an [`InstanceAuthenticator`] that maps it to an [`InstanceId`]. The
//!   process backend uses [`TokenAuthenticator`]: 32 bytes from the OS RNG per instance, kept
//!   only as a SHA-256 digest, compared in constant time, with an expiry, handed to the runtime
//!   as a 0600 file in a private directory ([`PrivateDir`]) and deleted once used. The Nomad
//!   backend can plug in a workload-identity JWT verifier instead (claims → allocation id →
//!   [`InstanceId`]) and keep everything else.
//! - **One job per instance, one instance per job** ([`InstanceRegistry`]). A slot moves
//!   `Idle → Assigned(job) → Handed(execution) → Reported`, every step under one mutex, so
//!   concurrent polls with the same credential get the job at most once (the others
//!   `410 Gone`); a job is assigned to a single slot; the events endpoint accepts only the
//!   execution handed to that slot.
//! - **A report can be resumed** (DESIGN.md 5.2, `polydev_protocol::report`): the registry
//!   counts the whole lines it holds of each execution; a runtime whose report broke asks for
//!   that position and sends the rest from there, and a new report supersedes an open one
//!   (cut after its last whole line), so the backend's channel sees every line once, in
//!   order. An instance adopted after a controller restart gets a slot already `Handed` its
//!   execution ([`InstanceRegistry::register_adopted`]), position 0.
//! - **Events join the backend's ordinary output.** A report's lines are parsed into
//!   [`InstanceOutput`] items and sent into the channel the backend registered for the slot, so
//!   the driver sees the same stream as with stdin, followed by the backend's own `Exited`.
//! - **A vanished instance never hangs an execution.** If the report is refused (over-long
//!   line) or ends before a terminal event, [`ReportSink`] sends a terminal error saying so; a
//!   connection that broke waits up to the reattach grace for the runtime to resume first (the
//!   backend's own exit watch still ends it at once when the instance is gone); a runtime that never fetches its job is noticed by the backend's start
//!   timeout; a runtime that never reports is bounded by the driver's execution deadline.
//!
//! Everything here is bounded: poll hold time, line length, report size, credential length.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use polydev_protocol::report::{DEFAULT_REATTACH_GRACE, ReportPosition};
use polydev_protocol::{ErrorEvent, ErrorKind, Event, Job};
use ring::rand::SecureRandom;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::InstanceOutput;

/// How long `next` holds a poll with nothing to hand out before answering `204` (the runtime
/// then polls again). Under the usual 30-60 s idle cut of proxies and load balancers.
pub const DEFAULT_POLL_HOLD: Duration = Duration::from_secs(25);
/// Longest event line accepted in a report (the stdin path's bound is the backend's own).
pub const DEFAULT_MAX_REPORT_LINE: usize = 4 * 1024 * 1024;
/// Largest report body. The controller stops an execution long before (its event log bound);
/// this only caps what one connection may push.
pub const DEFAULT_MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;
/// Longest credential looked at (a Nomad workload-identity JWT is 1-2 KiB).
pub const MAX_CREDENTIAL_BYTES: usize = 8 * 1024;
/// Random bytes in a runtime token.
const TOKEN_BYTES: usize = 32;

/// Why the pull machinery could not do something. Messages never contain a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    #[error("the operating system's random number generator failed")]
    Rng,
    #[error("cannot create the private directory for runtime tokens ({0})")]
    PrivateDir(std::io::ErrorKind),
    #[error("cannot write a runtime token file ({0})")]
    TokenFile(std::io::ErrorKind),
    #[error("this authenticator has no directory for token files")]
    NoTokenDir,
    #[error("invalid instance id (1 to 128 characters from A-Z a-z 0-9 _ -)")]
    InvalidId,
    #[error("instance {0} is already registered")]
    Duplicate(String),
    #[error("the runtime API is closed (shutting down)")]
    Closed,
    #[error("the job has no execution_id")]
    NoExecutionId,
    #[error("a journaled credential digest is not 64 hex digits")]
    InvalidDigest,
    #[error("the controller URL for runtimes is unusable: {0}")]
    ControllerUrl(String),
}

/// Why a credential was refused. All of them answer `401`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a runtime credential is required (Authorization: Bearer …)")]
    Missing,
    #[error("the runtime credential is not valid")]
    Invalid,
    #[error("the runtime credential has expired")]
    Expired,
}

/// One runtime instance as the controller knows it: a process, a container, a Nomad
/// allocation. Used as a file name, so restricted to `[A-Za-z0-9_-]{1,128}`.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct InstanceId(String);

impl InstanceId {
    /// Validates an id chosen elsewhere (for example a Nomad allocation id).
    pub fn new(id: impl Into<String>) -> Result<InstanceId, PullError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(InstanceId(id))
        } else {
            Err(PullError::InvalidId)
        }
    }

    /// `pi_` and 64 random bits, unique for the controller's lifetime in practice.
    pub fn random() -> Result<InstanceId, PullError> {
        let mut b = [0u8; 8];
        fill_random(&mut b)?;
        Ok(InstanceId(format!("pi_{}", hex(&b))))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fill_random(buf: &mut [u8]) -> Result<(), PullError> {
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| PullError::Rng)
}

/// 64 hex digits back to 32 bytes.
fn unhex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Checks the URL runtimes are told to use (`CONTROLLER_URL`): `https://`, or `http://` only
/// to a loopback host, because the job (with the user's key) crosses that link. The runtime
/// refuses the same URLs; refusing them here fails at start-up instead of at every launch.
/// Returns the URL without a trailing slash.
pub fn check_runtime_url(url: &str) -> Result<String, PullError> {
    let url = url.trim().trim_end_matches('/');
    let uri: http::Uri = url
        .parse()
        .map_err(|_| PullError::ControllerUrl("not a valid URL".into()))?;
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(PullError::ControllerUrl("it has no host".into()));
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err(PullError::ControllerUrl(
            "it must be a base URL (scheme, host and port only)".into(),
        ));
    }
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match uri.scheme_str() {
        Some("https") => Ok(url.to_owned()),
        Some("http") if loopback => Ok(url.to_owned()),
        Some("http") => Err(PullError::ControllerUrl(
            "http:// is accepted only on a loopback address; serve HTTPS (POLYDEV_TLS_CERT, \
             POLYDEV_TLS_KEY) and use an https:// URL, since runtimes fetch credentials over it"
                .into(),
        )),
        _ => Err(PullError::ControllerUrl(
            "it must start with https://".into(),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication.

/// Maps the credential a runtime presents to the instance it belongs to. Behind a trait so that
/// a backend can verify what its platform provides instead of controller-made tokens (Nomad:
/// the allocation's workload-identity JWT, checked against the cluster's JWKS).
pub trait InstanceAuthenticator: Send + Sync + 'static {
    /// The instance `credential` (the bearer value) identifies, if it is valid now.
    fn authenticate<'a>(
        &'a self,
        credential: &'a str,
    ) -> BoxFuture<'a, Result<InstanceId, AuthError>>;

    /// `id` has started reporting its one job: its credential has served its purpose and must
    /// be refused from now on (single redemption).
    fn redeemed(&self, id: &InstanceId);
}

/// A runtime token. `Debug` never shows it; its memory is wiped on drop.
pub struct RuntimeToken(Zeroizing<String>);

impl RuntimeToken {
    /// The token itself, for the runtime's token file or `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RuntimeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RuntimeToken(**redacted**)")
    }
}

struct TokenEntry {
    digest: [u8; 32],
    expires_at: Instant,
    /// The token file, deleted with the entry.
    file: Option<PathBuf>,
}

/// Controller-made per-instance tokens: `<instance id>.<64 hex digits>`, where the hex part is
/// 32 bytes from the OS RNG. Only its SHA-256 digest is kept, and it is compared in constant
/// time (the instance id part only selects which digest to compare with). Each token expires;
/// [`TokenAuthenticator::revoke`] (or [`InstanceAuthenticator::redeemed`]) ends it early and
/// deletes its file.
pub struct TokenAuthenticator {
    tokens: Mutex<HashMap<InstanceId, TokenEntry>>,
    dir: Option<Arc<PrivateDir>>,
}

impl fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field("active", &self.active())
            .finish_non_exhaustive()
    }
}

impl Default for TokenAuthenticator {
    fn default() -> Self {
        TokenAuthenticator::new()
    }
}

impl TokenAuthenticator {
    /// Tokens held in memory only ([`TokenAuthenticator::issue`]).
    pub fn new() -> TokenAuthenticator {
        TokenAuthenticator {
            tokens: Mutex::new(HashMap::new()),
            dir: None,
        }
    }

    /// Tokens that can also be written as files in `dir` ([`TokenAuthenticator::issue_file`]).
    pub fn with_dir(dir: Arc<PrivateDir>) -> TokenAuthenticator {
        TokenAuthenticator {
            tokens: Mutex::new(HashMap::new()),
            dir: Some(dir),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<InstanceId, TokenEntry>> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Accepts the token whose digest is `digest` for `id` until `ttl` from now, in place of
    /// (and deleting the file of) any earlier one.
    fn put(&self, id: &InstanceId, digest: [u8; 32], ttl: Duration) {
        let old = self.lock().insert(
            id.clone(),
            TokenEntry {
                digest,
                expires_at: Instant::now() + ttl,
                file: None,
            },
        );
        if let Some(old) = old {
            self.delete_file(old.file);
        }
    }

    /// A fresh token for `id`, valid for `ttl`; replaces (and so revokes) an earlier one.
    pub fn issue(&self, id: &InstanceId, ttl: Duration) -> Result<RuntimeToken, PullError> {
        let mut secret = Zeroizing::new([0u8; TOKEN_BYTES]);
        fill_random(secret.as_mut_slice())?;
        let secret_hex = Zeroizing::new(hex(secret.as_slice()));
        let digest = sha256(secret_hex.as_bytes());
        let token = RuntimeToken(Zeroizing::new(format!("{id}.{}", secret_hex.as_str())));
        self.put(id, digest, ttl);
        Ok(token)
    }

    /// Issues a token for `id` and writes it to `<dir>/<id>.token` (mode 0600, created anew),
    /// for the runtime's `RUNTIME_TOKEN_FILE`. The file goes with the token.
    pub fn issue_file(&self, id: &InstanceId, ttl: Duration) -> Result<PathBuf, PullError> {
        let dir = self.dir.as_ref().ok_or(PullError::NoTokenDir)?;
        let token = self.issue(id, ttl)?;
        let path = match dir.write(&format!("{id}.token"), token.expose().as_bytes()) {
            Ok(p) => p,
            Err(e) => {
                self.revoke(id);
                return Err(e);
            }
        };
        if let Some(entry) = self.lock().get_mut(id) {
            entry.file = Some(path.clone());
        }
        Ok(path)
    }

    /// Moves the expiry of `id`'s token to `ttl` from now (a warm instance gets its job's
    /// lifetime when claimed). `false` if it has no token.
    pub fn set_ttl(&self, id: &InstanceId, ttl: Duration) -> bool {
        match self.lock().get_mut(id) {
            Some(e) => {
                e.expires_at = Instant::now() + ttl;
                true
            }
            None => false,
        }
    }

    /// What the store may keep of `id`'s token so a restarted controller can accept it again:
    /// its digest (hex) and how long it stays valid. Never the token itself.
    pub fn digest(&self, id: &InstanceId) -> Option<(String, Duration)> {
        let tokens = self.lock();
        let entry = tokens.get(id)?;
        Some((
            hex(&entry.digest),
            entry.expires_at.saturating_duration_since(Instant::now()),
        ))
    }

    /// Accepts again the token whose digest ([`TokenAuthenticator::digest`]) a previous
    /// controller journaled, for `ttl` (an adopted instance; it has no token file here).
    pub fn restore(
        &self,
        id: &InstanceId,
        digest_hex: &str,
        ttl: Duration,
    ) -> Result<(), PullError> {
        let digest = unhex32(digest_hex).ok_or(PullError::InvalidDigest)?;
        self.put(id, digest, ttl);
        Ok(())
    }

    /// Ends `id`'s token here but keeps its file and returns its path: a detaching controller
    /// leaves the file for the runtime (and the next controller, which accepts the token
    /// again from its journaled digest and deletes the file when the execution ends).
    pub fn release(&self, id: &InstanceId) -> Option<PathBuf> {
        self.lock().remove(id).and_then(|old| old.file)
    }

    /// Ends `id`'s token now and deletes its file. Idempotent.
    pub fn revoke(&self, id: &InstanceId) {
        let old = self.lock().remove(id);
        if let Some(old) = old {
            self.delete_file(old.file);
        }
    }

    /// Tokens currently valid or not yet found expired.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    fn delete_file(&self, file: Option<PathBuf>) {
        if let Some(path) = file
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "cannot delete a runtime token file");
        }
    }

    /// The instance `credential` belongs to, if it is one of ours and still valid.
    pub fn verify(&self, credential: &str) -> Result<InstanceId, AuthError> {
        let credential = credential.trim();
        if credential.is_empty() {
            return Err(AuthError::Missing);
        }
        if credential.len() > MAX_CREDENTIAL_BYTES {
            return Err(AuthError::Invalid);
        }
        let (id, secret) = credential.rsplit_once('.').ok_or(AuthError::Invalid)?;
        let id = InstanceId::new(id).map_err(|_| AuthError::Invalid)?;
        let presented = sha256(secret.as_bytes());
        let expired = {
            let mut tokens = self.lock();
            let entry = tokens.get(&id).ok_or(AuthError::Invalid)?;
            if !ct_eq(&entry.digest, &presented) {
                return Err(AuthError::Invalid);
            }
            if Instant::now() < entry.expires_at {
                return Ok(id);
            }
            tokens.remove(&id)
        };
        if let Some(entry) = expired {
            self.delete_file(entry.file);
        }
        Err(AuthError::Expired)
    }
}

impl InstanceAuthenticator for TokenAuthenticator {
    fn authenticate<'a>(
        &'a self,
        credential: &'a str,
    ) -> BoxFuture<'a, Result<InstanceId, AuthError>> {
        let result = self.verify(credential);
        Box::pin(std::future::ready(result))
    }

    fn redeemed(&self, id: &InstanceId) {
        self.revoke(id);
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Equality in time independent of where the digests differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

// ---------------------------------------------------------------------------------------------
// The private directory.

/// Name prefix of every private directory under the temporary directory.
const PRIVATE_DIR_PREFIX: &str = "polydev-runtime-api-";
/// The file whose `flock` a live controller holds for as long as its directory exists.
const PRIVATE_DIR_LOCK: &str = ".owner.lock";
/// Present in a private directory a detaching controller left for its runtimes (their token
/// files): holds the controller's instance name. Start-up sweeps leave such a directory alone;
/// the next controller of that instance removes its files as their executions end.
pub const PRIVATE_DIR_DETACHED: &str = ".detached";
/// A leftover directory without a lock file (made before there was one) counts as stale when
/// nothing in it changed for this long.
const LEGACY_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A directory only this user can enter (0700), for files runtimes read by path: token files
/// (0600) and a CA bundle. Removed with everything in it by [`PrivateDir::close`] or on drop.
/// While it exists its owner holds an advisory lock on a file inside it, so that the next
/// controller's start can tell a directory a `kill -9` left behind (lock free: removed) from a
/// live controller's (lock held: kept); security probe F9.
pub struct PrivateDir {
    path: PathBuf,
    dir: Mutex<Option<tempfile::TempDir>>,
    _owner: std::fs::File,
}

impl fmt::Debug for PrivateDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateDir")
            .field("path", &self.path)
            .finish()
    }
}

impl PrivateDir {
    /// A new directory under the system's temporary directory, after removing the ones
    /// controllers killed without cleaning up left there.
    pub fn create() -> Result<PrivateDir, PullError> {
        Self::create_in(&std::env::temp_dir())
    }

    fn create_in(parent: &Path) -> Result<PrivateDir, PullError> {
        use std::os::unix::fs::PermissionsExt;
        let swept = sweep_stale(parent);
        if swept > 0 {
            tracing::info!(
                count = swept,
                "removed runtime API directories left by controllers that were killed"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(PRIVATE_DIR_PREFIX)
            .tempdir_in(parent)
            .map_err(|e| PullError::PrivateDir(e.kind()))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| PullError::PrivateDir(e.kind()))?;
        let owner = std::fs::File::create(dir.path().join(PRIVATE_DIR_LOCK))
            .map_err(|e| PullError::PrivateDir(e.kind()))?;
        owner.try_lock().map_err(|e| {
            PullError::PrivateDir(match e {
                std::fs::TryLockError::Error(e) => e.kind(),
                std::fs::TryLockError::WouldBlock => std::io::ErrorKind::WouldBlock,
            })
        })?;
        Ok(PrivateDir {
            path: dir.path().to_path_buf(),
            dir: Mutex::new(Some(dir)),
            _owner: owner,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to a new file `name` (mode 0600; an existing file is an error).
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf, PullError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| PullError::TokenFile(e.kind()))?;
        if let Err(e) = file.write_all(contents).and_then(|()| file.flush()) {
            let _ = std::fs::remove_file(&path);
            return Err(PullError::TokenFile(e.kind()));
        }
        Ok(path)
    }

    /// Leaves the directory (and the token files in it) behind when this controller goes: it
    /// is marked [`PRIVATE_DIR_DETACHED`] with `instance`, so that no start-up sweep removes
    /// it, and it is no longer removed on drop.
    pub fn keep(&self, instance: &str) -> Result<(), PullError> {
        std::fs::write(self.path.join(PRIVATE_DIR_DETACHED), instance)
            .map_err(|e| PullError::PrivateDir(e.kind()))?;
        let dir = self.dir.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(dir) = dir {
            // Not removed on drop any more.
            let _ = dir.keep();
        }
        Ok(())
    }

    /// Removes the directory and everything in it. Idempotent.
    pub fn close(&self) {
        let dir = self.dir.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(dir) = dir
            && let Err(e) = dir.close()
        {
            tracing::warn!(error = %e, "cannot remove the runtime API's private directory");
        }
    }
}

/// The private directories under the system's temporary directory that a detached
/// controller of `instance` left ([`PrivateDir::keep`]) and whose owner has ended (its lock is
/// free): the next controller of that instance deletes what no adopted runtime needs.
pub fn detached_dirs(instance: &str) -> Vec<PathBuf> {
    detached_dirs_in(&std::env::temp_dir(), instance)
}

fn detached_dirs_in(parent: &Path, instance: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(PRIVATE_DIR_PREFIX))
        })
        .map(|e| e.path())
        .filter(|path| {
            std::fs::read_to_string(path.join(PRIVATE_DIR_DETACHED)).is_ok_and(|i| i == instance)
                && std::fs::File::open(path.join(PRIVATE_DIR_LOCK))
                    .is_ok_and(|lock| lock.try_lock().is_ok())
        })
        .collect()
}

/// Removes the private directories under `parent` that no live controller owns: the lock
/// file is free (its owner died), or, for a directory without one, nothing changed in it for
/// [`LEGACY_STALE_AFTER`]. Directories this user cannot open are left alone. Returns how many
/// were removed.
fn sweep_stale(parent: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PRIVATE_DIR_PREFIX))
        {
            continue;
        }
        let path = entry.path();
        if path.join(PRIVATE_DIR_DETACHED).exists() {
            // Token files of runtimes that outlive their controller: the next controller of
            // that instance removes them.
            continue;
        }
        let stale = match std::fs::File::open(path.join(PRIVATE_DIR_LOCK)) {
            // The lock is released when its owner's process ends, however it ended.
            Ok(lock) => lock.try_lock().is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > LEGACY_STALE_AFTER),
            Err(_) => false,
        };
        if stale && std::fs::remove_dir_all(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

// ---------------------------------------------------------------------------------------------
// The registry.

/// Bounds of an [`InstanceRegistry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// How long `next` holds a poll before `204`.
    pub poll_hold: Duration,
    /// Longest event line in a report.
    pub max_line_bytes: usize,
    /// Largest report body.
    pub max_report_bytes: u64,
    /// How long an execution whose report broke without a terminal event waits for its
    /// runtime to resume before it ends (`POLYDEV_REATTACH_GRACE`; the controller sets it
    /// with [`InstanceRegistry::set_reattach_grace`]).
    pub reattach_grace: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            poll_hold: DEFAULT_POLL_HOLD,
            max_line_bytes: DEFAULT_MAX_REPORT_LINE,
            max_report_bytes: DEFAULT_MAX_REPORT_BYTES,
            reattach_grace: DEFAULT_REATTACH_GRACE,
        }
    }
}

enum Phase {
    /// Waiting for a job (a warm instance).
    Idle,
    /// A job is waiting to be fetched.
    Assigned(Box<Job>),
    /// `next` handed out the job for this execution (or a restarted controller adopted the
    /// instance running it): its report is accepted, and resumed after a break.
    Handed(String),
    /// The execution takes no more report (its terminal event arrived, the report was refused,
    /// or the runtime did not come back within the reattach grace).
    Reported,
    /// No job will come (released, taken back, shutting down).
    Retired,
}

struct Slot {
    phase: Phase,
    /// Bumped on every phase change a poll waits for.
    wake: watch::Sender<()>,
    /// Fired by the first poll (the instance can reach us and its credential works).
    polled: Option<oneshot::Sender<()>>,
    /// Fired when the job is handed out; dropped unfired if it never is.
    fetched: Option<oneshot::Sender<()>>,
    /// Where the report's events go, until the first report (or position query) moves it into
    /// the execution's [`ReportState`].
    feed: Option<mpsc::Sender<InstanceOutput>>,
    /// The execution's report position, shared by its successive report connections.
    report: Option<Arc<ReportState>>,
}

/// One execution's report across its connections: which lines the controller holds and which
/// connection may add to them. Behind an async mutex held while a line is forwarded, so that a
/// superseding report reads a position no line is still on its way to.
struct ReportState {
    cursor: tokio::sync::Mutex<Cursor>,
}

struct Cursor {
    /// The backend's channel; `None` once the execution takes no more report.
    feed: Option<mpsc::Sender<InstanceOutput>>,
    /// Lines received (every newline-terminated line, whatever it holds).
    received: u64,
    /// Bumped by every accepted report; only the current one may forward lines.
    generation: u64,
    /// The current report's connection is open.
    open: bool,
    terminal_seen: bool,
    output_seen: bool,
}

#[derive(Default)]
struct RegState {
    slots: HashMap<InstanceId, Slot>,
    closed: bool,
}

/// What a backend learns about its registered instance.
#[derive(Debug)]
pub struct Registration {
    /// Fires on the instance's first `next` (readiness for a warm instance).
    pub polled: oneshot::Receiver<()>,
    /// With a job given at registration: fires when it is fetched.
    pub fetched: Option<oneshot::Receiver<()>>,
}

/// The answer to a `next` poll.
#[derive(Debug)]
pub enum NextOutcome {
    /// The instance's job (200).
    Job(Box<Job>),
    /// Nothing yet; poll again (204).
    NoContent,
    /// No job will come for this instance (410): it exits.
    Gone,
}

/// Why a job could not be assigned to an instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignError {
    #[error("no such instance")]
    Unknown,
    #[error("the instance is not waiting for a job")]
    NotIdle,
    #[error("the job has no execution_id")]
    NoExecutionId,
}

/// Why a report (or a position query) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReportRefused {
    /// The credential's instance was handed another execution (403).
    #[error("this instance's credential does not cover that execution")]
    WrongExecution,
    /// The job was not fetched yet, so there is nothing to report (409).
    #[error("this instance has not fetched a job")]
    NotFetched,
    /// The report does not start where the controller's copy ends (409, with the position).
    #[error("the report must start at line {0}")]
    Offset(u64),
    /// The instance is gone, or its execution takes no more report (410).
    #[error("this execution no longer takes a report")]
    Gone,
    /// The controller is shutting down and leaves this execution to the next one (503).
    #[error("the controller is restarting; report to it again shortly")]
    Unavailable,
}

/// Jobs waiting for, or handed to, pull-mode instances. See the module documentation.
pub struct InstanceRegistry {
    config: RegistryConfig,
    /// [`RegistryConfig::reattach_grace`], settable after construction (by the controller,
    /// which owns the setting); milliseconds.
    reattach_grace_ms: std::sync::atomic::AtomicU64,
    /// The controller is detaching (DESIGN.md 5.2): reports are refused as unavailable (`503`,
    /// try again), never as gone, so runtimes wait for the next controller.
    detached: std::sync::atomic::AtomicBool,
    /// Adoptions under way after a restart ([`InstanceRegistry::begin_adoptions`]): until
    /// they settle, a credential this registry does not know yet may be one being restored.
    adopting: std::sync::atomic::AtomicUsize,
    state: Mutex<RegState>,
}

impl fmt::Debug for InstanceRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceRegistry")
            .field("config", &self.config)
            .field("instances", &self.len())
            .finish()
    }
}

impl InstanceRegistry {
    pub fn new(config: RegistryConfig) -> InstanceRegistry {
        let grace = duration_ms(config.reattach_grace);
        InstanceRegistry {
            config,
            reattach_grace_ms: std::sync::atomic::AtomicU64::new(grace),
            detached: std::sync::atomic::AtomicBool::new(false),
            adopting: std::sync::atomic::AtomicUsize::new(0),
            state: Mutex::new(RegState::default()),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// How long a broken report waits for the runtime to resume before the execution ends.
    pub fn reattach_grace(&self) -> Duration {
        Duration::from_millis(
            self.reattach_grace_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// The controller is detaching from its runtimes: from now on reports and position
    /// queries answer "unavailable" ([`ReportRefused::Unavailable`]), so a runtime keeps its
    /// output and reconnects to the next controller instead of exiting.
    pub fn detach(&self) {
        self.detached
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_detached(&self) -> bool {
        self.detached.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A restarted controller is about to adopt `n` instances. The runtime API serves before
    /// each backend's `adopt` has restored its instance's credential, and a returning runtime
    /// refused then (`401`) would give up for good; while adoptions are pending an unknown
    /// credential is answered "unavailable, try again" (`503`) instead. Each adoption calls
    /// [`InstanceRegistry::adoption_settled`] once, whatever its outcome.
    pub fn begin_adoptions(&self, n: usize) {
        self.adopting
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// One adoption announced by [`InstanceRegistry::begin_adoptions`] is done (taken back,
    /// or refused).
    pub fn adoption_settled(&self) {
        let _ = self.adopting.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
    }

    /// Whether adoptions are still restoring credentials.
    pub fn adoptions_pending(&self) -> bool {
        self.adopting.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Sets [`InstanceRegistry::reattach_grace`] (`POLYDEV_REATTACH_GRACE`).
    pub fn set_reattach_grace(&self, grace: Duration) {
        self.reattach_grace_ms
            .store(duration_ms(grace), std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, RegState> {
        // Every critical section leaves the map consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers instance `id`, whose report will go to `feed`: idle (a warm instance) or with
    /// its job already assigned (a cold one).
    pub fn register(
        &self,
        id: InstanceId,
        feed: mpsc::Sender<InstanceOutput>,
        job: Option<Job>,
    ) -> Result<Registration, PullError> {
        if job.as_ref().is_some_and(|j| j.execution_id.is_none()) {
            return Err(PullError::NoExecutionId);
        }
        let mut st = self.lock();
        if st.closed {
            return Err(PullError::Closed);
        }
        if st.slots.contains_key(&id) {
            return Err(PullError::Duplicate(id.0));
        }
        let (polled_tx, polled) = oneshot::channel();
        let (phase, fetched_tx, fetched) = match job {
            Some(job) => {
                let (tx, rx) = oneshot::channel();
                (Phase::Assigned(Box::new(job)), Some(tx), Some(rx))
            }
            None => (Phase::Idle, None, None),
        };
        let (wake, _) = watch::channel(());
        st.slots.insert(
            id,
            Slot {
                phase,
                wake,
                polled: Some(polled_tx),
                fetched: fetched_tx,
                feed: Some(feed),
                report: None,
            },
        );
        Ok(Registration { polled, fetched })
    }

    /// Registers instance `id`, adopted after a controller restart: it already has the job of
    /// `execution_id`, and its resent report (from line 0) goes to `feed`. Its polls get `410`.
    pub fn register_adopted(
        &self,
        id: InstanceId,
        feed: mpsc::Sender<InstanceOutput>,
        execution_id: &str,
    ) -> Result<(), PullError> {
        let mut st = self.lock();
        if st.closed {
            return Err(PullError::Closed);
        }
        if st.slots.contains_key(&id) {
            return Err(PullError::Duplicate(id.0));
        }
        let (wake, _) = watch::channel(());
        st.slots.insert(
            id,
            Slot {
                phase: Phase::Handed(execution_id.to_owned()),
                wake,
                polled: None,
                fetched: None,
                feed: Some(feed),
                report: None,
            },
        );
        Ok(())
    }

    /// Gives `job` to idle instance `id` (a warm claim); the receiver fires when the instance
    /// fetches it, and fails if it never will (the instance ended or the job was taken back).
    pub fn assign(&self, id: &InstanceId, job: Job) -> Result<oneshot::Receiver<()>, AssignError> {
        if job.execution_id.is_none() {
            return Err(AssignError::NoExecutionId);
        }
        let mut st = self.lock();
        let slot = st.slots.get_mut(id).ok_or(AssignError::Unknown)?;
        if !matches!(slot.phase, Phase::Idle) {
            return Err(AssignError::NotIdle);
        }
        let (tx, rx) = oneshot::channel();
        slot.phase = Phase::Assigned(Box::new(job));
        slot.fetched = Some(tx);
        slot.wake.send_replace(());
        Ok(rx)
    }

    /// Waits, at most `wait`, for the claimed idle instance `id` to fetch the job
    /// [`InstanceRegistry::assign`] gave it (`fetched`). `false` when it did not get the job:
    /// its slot went first (it died), or it was too slow and the job was taken back (the
    /// instance is retired; `backend` names who says so in the warning). A fetch that raced
    /// the end of the wait counts as handed over.
    pub async fn claimed_fetch(
        &self,
        id: &InstanceId,
        fetched: oneshot::Receiver<()>,
        wait: Duration,
        backend: &str,
    ) -> bool {
        // A claimed instance is polling: the fetch is a wake-up and a response write away.
        match tokio::time::timeout(wait, fetched).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) if self.unassign(id) => {
                tracing::warn!(instance = %id,
                    "{backend} backend: a claimed pull-mode instance did not fetch its job; retiring it");
                false
            }
            Err(_) => true,
        }
    }

    /// Waits, at most `wait`, for the cold instance `id` to fetch the job it was registered
    /// with (`fetched`; `None` when there is nothing to wait for). `false` when it never did
    /// and the job was taken back, so it was never handed out; `true` when it fetched it, or
    /// ended before that (its output then says how).
    pub async fn cold_fetch(
        &self,
        id: &InstanceId,
        fetched: Option<oneshot::Receiver<()>>,
        wait: Duration,
    ) -> bool {
        let Some(fetched) = fetched else {
            return true;
        };
        tokio::time::timeout(wait, fetched).await.is_ok() || !self.unassign(id)
    }

    /// Takes back a job that `id` has not fetched yet, and retires the instance (it was too
    /// slow to be trusted with another). `true` if the job was still there: then it was never
    /// handed out.
    pub fn unassign(&self, id: &InstanceId) -> bool {
        let mut st = self.lock();
        match st.slots.get_mut(id) {
            Some(slot) if matches!(slot.phase, Phase::Assigned(_)) => {
                slot.phase = Phase::Retired;
                slot.fetched = None;
                slot.wake.send_replace(());
                true
            }
            _ => false,
        }
    }

    /// No job will come for `id` (an idle instance leaving the pool): its polls get `410`, and
    /// a job assigned but not fetched is dropped.
    pub fn retire(&self, id: &InstanceId) {
        let mut st = self.lock();
        if let Some(slot) = st.slots.get_mut(id)
            && matches!(slot.phase, Phase::Idle | Phase::Assigned(_))
        {
            slot.phase = Phase::Retired;
            slot.fetched = None;
            slot.wake.send_replace(());
        }
    }

    /// Forgets `id` (the instance is gone). Its feed closes once a report in progress (or its
    /// reattach grace) ends.
    pub fn remove(self: &Arc<Self>, id: &InstanceId) {
        let slot = self.lock().slots.remove(id);
        // A report waiting to be resumed never will be: the instance is gone.
        if let Some(state) = slot.as_ref().and_then(|s| s.report.clone()) {
            end_abandoned(Arc::clone(self), id.clone(), state, None);
        }
        // Dropped outside the lock; waiting polls wake up and find it gone.
        drop(slot);
    }

    /// The controller ended `execution_id` (cancelled, timed out, its runtime not back in
    /// time): its report is refused from now on (`410`, the runtime stops).
    pub fn end_execution(&self, execution_id: &str) {
        let mut st = self.lock();
        for slot in st.slots.values_mut() {
            if matches!(&slot.phase, Phase::Handed(e) if e == execution_id) {
                slot.phase = Phase::Reported;
                slot.feed = None;
                slot.wake.send_replace(());
            }
        }
    }

    fn has(&self, id: &InstanceId) -> bool {
        self.lock().slots.contains_key(id)
    }

    /// Refuses new registrations and retires every instance without a fetched job.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        for slot in st.slots.values_mut() {
            if matches!(slot.phase, Phase::Idle | Phase::Assigned(_)) {
                slot.phase = Phase::Retired;
                slot.fetched = None;
                slot.wake.send_replace(());
            }
        }
    }

    /// Registered instances.
    pub fn len(&self) -> usize {
        self.lock().slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Long-polls for `id`'s job: at most [`RegistryConfig::poll_hold`]. A job is handed out
    /// exactly once; after that, and for unknown or retired instances, the answer is
    /// [`NextOutcome::Gone`].
    pub async fn next(&self, id: &InstanceId) -> NextOutcome {
        let deadline = Instant::now() + self.config.poll_hold;
        loop {
            let mut wake = {
                let mut st = self.lock();
                let Some(slot) = st.slots.get_mut(id) else {
                    return NextOutcome::Gone;
                };
                if let Some(tx) = slot.polled.take() {
                    let _ = tx.send(());
                }
                match std::mem::replace(&mut slot.phase, Phase::Retired) {
                    Phase::Assigned(job) => {
                        slot.phase = Phase::Handed(job.execution_id.clone().unwrap_or_default());
                        if let Some(tx) = slot.fetched.take() {
                            let _ = tx.send(());
                        }
                        return NextOutcome::Job(job);
                    }
                    Phase::Idle => {
                        slot.phase = Phase::Idle;
                        // Subscribed under the lock: no change after this check is missed.
                        slot.wake.subscribe()
                    }
                    other => {
                        slot.phase = other;
                        return NextOutcome::Gone;
                    }
                }
            };
            tokio::select! {
                // A change, or the slot was removed (then the next round says Gone).
                _ = wake.changed() => {}
                () = tokio::time::sleep_until(deadline) => return NextOutcome::NoContent,
            }
        }
    }

    /// The report state of `execution_id` on instance `id`, if that instance may report it.
    fn report_state(
        &self,
        id: &InstanceId,
        execution_id: &str,
    ) -> Result<Arc<ReportState>, ReportRefused> {
        if self.is_detached() {
            return Err(ReportRefused::Unavailable);
        }
        let mut st = self.lock();
        let slot = st.slots.get_mut(id).ok_or(ReportRefused::Gone)?;
        match &slot.phase {
            Phase::Handed(e) if e == execution_id => {}
            Phase::Handed(_) => return Err(ReportRefused::WrongExecution),
            Phase::Idle | Phase::Assigned(_) => return Err(ReportRefused::NotFetched),
            Phase::Reported | Phase::Retired => return Err(ReportRefused::Gone),
        }
        if slot.report.is_none() {
            let feed = slot.feed.take().ok_or(ReportRefused::Gone)?;
            slot.report = Some(Arc::new(ReportState {
                cursor: tokio::sync::Mutex::new(Cursor {
                    feed: Some(feed),
                    received: 0,
                    generation: 0,
                    open: false,
                    terminal_seen: false,
                    output_seen: false,
                }),
            }));
        }
        slot.report.clone().ok_or(ReportRefused::Gone)
    }

    /// How many lines of `execution_id`'s report the controller holds (the resume handshake).
    pub async fn position(
        &self,
        id: &InstanceId,
        execution_id: &str,
    ) -> Result<ReportPosition, ReportRefused> {
        let state = self.report_state(id, execution_id)?;
        let cursor = state.cursor.lock().await;
        if cursor.feed.is_none() {
            return Err(ReportRefused::Gone);
        }
        Ok(ReportPosition {
            received: cursor.received,
        })
    }

    /// Starts receiving the events of `execution_id` from instance `id`, from line `offset`:
    /// only for the execution handed to that instance, only where the controller's copy ends.
    /// A report still open for it is superseded (cut after its last whole line).
    pub async fn begin_report(
        self: &Arc<Self>,
        id: &InstanceId,
        execution_id: &str,
        offset: u64,
    ) -> Result<ReportSink, ReportRefused> {
        let state = self.report_state(id, execution_id)?;
        let generation = {
            let mut cursor = state.cursor.lock().await;
            if cursor.feed.is_none() {
                return Err(ReportRefused::Gone);
            }
            if cursor.received != offset {
                return Err(ReportRefused::Offset(cursor.received));
            }
            cursor.generation += 1;
            cursor.open = true;
            cursor.generation
        };
        Ok(ReportSink {
            registry: Arc::clone(self),
            id: id.clone(),
            state: Some(state),
            generation,
            line: Vec::new(),
            skipping: false,
            received_bytes: 0,
        })
    }

    fn report_done(&self, id: &InstanceId) {
        if let Some(slot) = self.lock().slots.get_mut(id)
            && matches!(slot.phase, Phase::Handed(_))
        {
            slot.phase = Phase::Reported;
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Reports.

/// Why receiving a report stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("an event line is longer than {0} bytes")]
    LineTooLong(usize),
    #[error("the report is larger than {0} bytes")]
    TooLarge(u64),
    #[error("nobody is listening for this execution's events any more")]
    Closed,
    #[error("a newer report for this execution took over")]
    Superseded,
}

/// How a report ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportEnd {
    /// The body ended normally.
    Complete,
    /// The body was refused.
    Cut(ReportError),
    /// The connection broke or the body could not be read: the runtime may resume.
    Broken,
}

/// What [`ReportSink::finish`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// The execution takes no more report (its terminal event arrived, or one was sent for
    /// it): the instance's credential has served its purpose.
    Ended,
    /// The report broke before a terminal event; the runtime may resume it within the
    /// reattach grace.
    Waiting,
    /// A newer report took over.
    Superseded,
}

/// Receives one report connection of an execution: split into bounded lines, counted,
/// parsed, forwarded in order. If it ends without a terminal event, [`ReportSink::finish`]
/// (or, as a last resort, dropping it) either ends the execution with a clear error (a refused
/// body, a body that ended without a result) or, when the connection broke, waits up to the
/// reattach grace for the runtime to resume before doing so.
pub struct ReportSink {
    registry: Arc<InstanceRegistry>,
    id: InstanceId,
    /// `None` once finished.
    state: Option<Arc<ReportState>>,
    generation: u64,
    line: Vec<u8>,
    /// Discarding the rest of an over-long line (never resumed: the report is cut).
    skipping: bool,
    received_bytes: u64,
}

impl fmt::Debug for ReportSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportSink")
            .field("instance", &self.id)
            .field("received_bytes", &self.received_bytes)
            .finish_non_exhaustive()
    }
}

impl ReportSink {
    /// The instance reporting.
    pub fn instance(&self) -> &InstanceId {
        &self.id
    }

    /// Takes the next chunk of the body; complete lines are forwarded (waiting for room in the
    /// backend's channel, which slows the runtime down instead of buffering).
    pub async fn push(&mut self, mut chunk: &[u8]) -> Result<(), ReportError> {
        let cfg = self.registry.config();
        self.received_bytes = self.received_bytes.saturating_add(chunk.len() as u64);
        if self.received_bytes > cfg.max_report_bytes {
            return Err(ReportError::TooLarge(cfg.max_report_bytes));
        }
        let max_line = cfg.max_line_bytes;
        while !chunk.is_empty() {
            match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    if self.skipping || self.line.len() + i > max_line {
                        return Err(ReportError::LineTooLong(max_line));
                    }
                    self.line.extend_from_slice(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.forward_line(&line).await?;
                }
                None => {
                    if self.line.len() + chunk.len() > max_line {
                        self.skipping = true;
                        self.line = Vec::new();
                        return Err(ReportError::LineTooLong(max_line));
                    }
                    self.line.extend_from_slice(chunk);
                    chunk = &[];
                }
            }
        }
        Ok(())
    }

    /// Counts one whole line and forwards what it holds, if this report is still the current
    /// one.
    async fn forward_line(&mut self, line: &[u8]) -> Result<(), ReportError> {
        let state = self.state.as_ref().ok_or(ReportError::Closed)?;
        let mut cursor = state.cursor.lock().await;
        if cursor.generation != self.generation {
            return Err(ReportError::Superseded);
        }
        if cursor.feed.is_none() {
            return Err(ReportError::Closed);
        }
        cursor.received += 1;
        let line = line.trim_ascii();
        if line.is_empty() {
            return Ok(());
        }
        let item = match Event::from_line(line) {
            Ok(Event::Ready) => return Ok(()),
            Ok(event) => {
                cursor.terminal_seen |= event.is_terminal();
                cursor.output_seen |= event.is_output();
                InstanceOutput::Event(event)
            }
            // The driver masks the key in what it logs.
            Err(_) => InstanceOutput::Garbage(super::text::garbage_text(line, None)),
        };
        let feed = cursor.feed.as_ref().ok_or(ReportError::Closed)?;
        feed.send(item).await.map_err(|_| ReportError::Closed)
    }

    /// Ends this report connection. A last line without its newline still counts when the body
    /// ended normally. Without a terminal event so far: a broken connection waits for a resume
    /// (up to the reattach grace), anything else ends the execution with an error saying what
    /// happened.
    pub async fn finish(mut self, end: ReportEnd) -> ReportOutcome {
        let mut end = end;
        if end == ReportEnd::Complete && !self.line.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.line);
            if let Err(e) = self.forward_line(&line).await {
                end = ReportEnd::Cut(e);
            }
        }
        let Some(state) = self.state.take() else {
            return ReportOutcome::Superseded;
        };
        let mut cursor = state.cursor.lock().await;
        if cursor.generation != self.generation {
            return ReportOutcome::Superseded;
        }
        cursor.open = false;
        if cursor.terminal_seen || cursor.feed.is_none() {
            cursor.feed = None;
            drop(cursor);
            self.registry.report_done(&self.id);
            return ReportOutcome::Ended;
        }
        if end == ReportEnd::Broken {
            drop(cursor);
            wait_for_resume(
                Arc::clone(&self.registry),
                self.id.clone(),
                state,
                self.generation,
            );
            return ReportOutcome::Waiting;
        }
        let item = missing_terminal(cursor.output_seen, &end);
        if let Some(feed) = cursor.feed.take() {
            let _ = feed.send(item).await;
        }
        drop(cursor);
        self.registry.report_done(&self.id);
        ReportOutcome::Ended
    }
}

/// After a report of generation `generation` broke: if no report took over within the
/// reattach grace (at once if the instance is already gone), the execution ends with the error
/// a vanished runtime gets.
fn wait_for_resume(
    registry: Arc<InstanceRegistry>,
    id: InstanceId,
    state: Arc<ReportState>,
    generation: u64,
) {
    let grace = if registry.has(&id) {
        registry.reattach_grace()
    } else {
        Duration::ZERO
    };
    end_abandoned_after(registry, id, state, Some(generation), grace);
}

/// Ends the execution of `state` with the vanished-runtime error unless a report is open, or
/// one newer than `generation` (any, with `None`) took over, or it already ended.
fn end_abandoned(
    registry: Arc<InstanceRegistry>,
    id: InstanceId,
    state: Arc<ReportState>,
    generation: Option<u64>,
) {
    end_abandoned_after(registry, id, state, generation, Duration::ZERO);
}

fn end_abandoned_after(
    registry: Arc<InstanceRegistry>,
    id: InstanceId,
    state: Arc<ReportState>,
    generation: Option<u64>,
    after: Duration,
) {
    let task = async move {
        if !after.is_zero() {
            tokio::time::sleep(after).await;
        }
        let mut cursor = state.cursor.lock().await;
        let superseded = generation.is_some_and(|g| g != cursor.generation);
        // With a generation, a newer report would have bumped it (and `open` may be stale
        // when a dropped sink could not take the lock); without one, an open report ends on
        // its own.
        if superseded || (generation.is_none() && cursor.open) || cursor.terminal_seen {
            return;
        }
        let item = missing_terminal(cursor.output_seen, &ReportEnd::Broken);
        if let Some(feed) = cursor.feed.take() {
            tracing::warn!(instance = %id, "runtime API: the runtime did not resume its report");
            let _ = feed.send(item).await;
        }
        drop(cursor);
        registry.report_done(&id);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(task);
        }
        // No runtime (a sink dropped outside one): nothing can wait; the backend's own exit
        // watch still ends the execution.
        Err(_) => tracing::warn!("runtime API: no runtime to wait for a report to resume"),
    }
}

/// The terminal error of an execution whose report ended without one.
fn missing_terminal(output_seen: bool, end: &ReportEnd) -> InstanceOutput {
    let (kind, message) = match end {
        ReportEnd::Cut(ReportError::LineTooLong(n)) => (
            ErrorKind::Protocol,
            format!("the runtime sent an event line longer than {n} bytes"),
        ),
        ReportEnd::Cut(ReportError::TooLarge(n)) => (
            ErrorKind::Protocol,
            format!("the runtime's event stream exceeded {n} bytes"),
        ),
        ReportEnd::Complete => (
            ErrorKind::Internal,
            "the runtime instance ended its event stream without a result".to_owned(),
        ),
        ReportEnd::Cut(ReportError::Closed | ReportError::Superseded) | ReportEnd::Broken => (
            ErrorKind::Internal,
            "the runtime instance vanished mid-job: its event stream was cut before a result and \
             not resumed"
                .to_owned(),
        ),
    };
    InstanceOutput::Event(Event::Error(ErrorEvent {
        retryable: true,
        partial: output_seen,
        ..ErrorEvent::new(kind, message)
    }))
}

impl Drop for ReportSink {
    /// A report abandoned without [`ReportSink::finish`] (its connection task was dropped): a
    /// broken connection, so the execution waits for a resume.
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            // Marking the connection closed needs the cursor; if a line is in flight, the
            // grace task below checks `open` only after the grace, by when it is released.
            if let Ok(mut cursor) = state.cursor.try_lock()
                && cursor.generation == self.generation
            {
                cursor.open = false;
                if cursor.terminal_seen {
                    cursor.feed = None;
                    drop(cursor);
                    self.registry.report_done(&self.id);
                    return;
                }
            }
            wait_for_resume(
                Arc::clone(&self.registry),
                self.id.clone(),
                state,
                self.generation,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the HTTP layer gets.

/// The runtime API of a backend: who is asking ([`InstanceAuthenticator`]) and what they may
/// have ([`InstanceRegistry`]). The HTTP routes (`crate::api::runtime`) only translate.
#[derive(Clone)]
pub struct RuntimeApi {
    pub auth: Arc<dyn InstanceAuthenticator>,
    pub registry: Arc<InstanceRegistry>,
}

impl fmt::Debug for RuntimeApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuntimeApi")
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        let line = serde_json::json!({
            "execution_id": id, "user_id": "u", "provider": "openai", "prompt": "hi",
            "credentials": {"api_key": "sk-test"},
        })
        .to_string();
        Job::from_json(&line).unwrap()
    }

    fn registry(hold: Duration) -> Arc<InstanceRegistry> {
        Arc::new(InstanceRegistry::new(RegistryConfig {
            poll_hold: hold,
            max_line_bytes: 64,
            max_report_bytes: 1024,
            reattach_grace: Duration::from_millis(100),
        }))
    }

    #[test]
    fn a_killed_controllers_directory_is_swept_and_a_live_ones_kept() {
        let parent = tempfile::tempdir().unwrap();
        // A live controller's directory (its lock held by this handle).
        let live = PrivateDir::create_in(parent.path()).unwrap();
        // What `kill -9` leaves: the lock file is there but nobody holds it.
        let dead = parent.path().join(format!("{PRIVATE_DIR_PREFIX}dead"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join(PRIVATE_DIR_LOCK), b"").unwrap();
        std::fs::write(dead.join("instance.token"), b"secret").unwrap();
        // A recent directory from before lock files, and something else entirely.
        let legacy = parent.path().join(format!("{PRIVATE_DIR_PREFIX}legacy"));
        std::fs::create_dir(&legacy).unwrap();
        let other = parent.path().join("unrelated");
        std::fs::create_dir(&other).unwrap();

        let next = PrivateDir::create_in(parent.path()).unwrap();
        assert!(!dead.exists(), "the dead controller's directory stayed");
        assert!(live.path().exists() && next.path().exists());
        assert!(legacy.exists() && other.exists());
        live.close();
        next.close();
        assert!(!live.path().exists());
    }

    #[test]
    fn a_detached_controllers_directory_outlives_it_and_every_sweep() {
        let parent = tempfile::tempdir().unwrap();
        let auth_dir = Arc::new(PrivateDir::create_in(parent.path()).unwrap());
        let auth = TokenAuthenticator::with_dir(Arc::clone(&auth_dir));
        let id = InstanceId::random().unwrap();
        let file = auth.issue_file(&id, Duration::from_secs(60)).unwrap();
        // Detach: the token is no longer this controller's, but its file stays.
        assert_eq!(auth.release(&id).as_deref(), Some(file.as_path()));
        assert_eq!(auth.active(), 0);
        assert!(file.is_file());
        auth_dir.keep("inst").unwrap();
        let path = auth_dir.path().to_path_buf();
        drop(auth);
        drop(auth_dir);
        // Its lock is free now, as after the process ended; the next start does not sweep it.
        assert!(path.join(PRIVATE_DIR_DETACHED).is_file());
        let next = PrivateDir::create_in(parent.path()).unwrap();
        assert!(
            file.is_file(),
            "a detached controller's token file was swept"
        );
        assert_eq!(
            std::fs::read_to_string(path.join(PRIVATE_DIR_DETACHED)).unwrap(),
            "inst"
        );
        // Found by the next controller of that instance only, once its owner is gone.
        assert_eq!(detached_dirs_in(parent.path(), "inst"), vec![path.clone()]);
        assert!(detached_dirs_in(parent.path(), "other").is_empty());
        next.close();
    }

    #[test]
    fn tokens_are_random_verified_expired_and_revoked() {
        let auth = TokenAuthenticator::new();
        let a = InstanceId::random().unwrap();
        let b = InstanceId::random().unwrap();
        assert_ne!(a, b);
        let ta = auth.issue(&a, Duration::from_secs(60)).unwrap();
        let tb = auth.issue(&b, Duration::from_secs(60)).unwrap();
        // id, a dot, 64 hex digits (32 random bytes).
        let secret = ta.expose().rsplit_once('.').unwrap().1;
        assert_eq!(secret.len(), 64);
        assert_ne!(ta.expose(), tb.expose());
        assert!(!format!("{ta:?}").contains(secret));
        assert_eq!(auth.verify(ta.expose()), Ok(a.clone()));
        assert_eq!(auth.verify(tb.expose()), Ok(b.clone()));
        // Another instance's secret under this id, a changed digit, garbage: refused.
        let (_, sb) = tb.expose().rsplit_once('.').unwrap();
        assert_eq!(auth.verify(&format!("{a}.{sb}")), Err(AuthError::Invalid));
        let mut bad = ta.expose().to_owned();
        let last = bad.pop().unwrap();
        bad.push(if last == '0' { '1' } else { '0' });
        assert_eq!(auth.verify(&bad), Err(AuthError::Invalid));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        assert_eq!(auth.verify("nodot"), Err(AuthError::Invalid));
        assert_eq!(
            auth.verify(&"x".repeat(MAX_CREDENTIAL_BYTES + 1)),
            Err(AuthError::Invalid)
        );
        // Revoked: refused.
        auth.redeemed(&b);
        assert_eq!(auth.verify(tb.expose()), Err(AuthError::Invalid));
        // Expired: refused and forgotten.
        assert!(auth.set_ttl(&a, Duration::ZERO));
        assert_eq!(auth.verify(ta.expose()), Err(AuthError::Expired));
        assert_eq!(auth.active(), 0);
    }

    #[test]
    fn a_journaled_digest_restores_the_token_in_another_authenticator() {
        let a = TokenAuthenticator::new();
        let id = InstanceId::random().unwrap();
        let token = a.issue(&id, Duration::from_secs(60)).unwrap();
        let (digest, left) = a.digest(&id).unwrap();
        assert_eq!(digest.len(), 64);
        assert!(!token.expose().contains(&digest));
        assert!(left <= Duration::from_secs(60));
        let b = TokenAuthenticator::new();
        assert_eq!(b.verify(token.expose()), Err(AuthError::Invalid));
        b.restore(&id, &digest, left).unwrap();
        assert_eq!(b.verify(token.expose()), Ok(id.clone()));
        assert_eq!(b.restore(&id, "zz", left), Err(PullError::InvalidDigest));
    }

    #[test]
    fn token_files_are_private_and_deleted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Arc::new(PrivateDir::create().unwrap());
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let auth = TokenAuthenticator::with_dir(Arc::clone(&dir));
        let id = InstanceId::random().unwrap();
        let path = auth.issue_file(&id, Duration::from_secs(60)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(auth.verify(&token), Ok(id.clone()));
        auth.revoke(&id);
        assert!(!path.exists());
        let dir_path = dir.path().to_path_buf();
        dir.close();
        assert!(!dir_path.exists());
    }

    #[test]
    fn runtime_urls() {
        assert!(check_runtime_url("https://controller.example:8443/").is_ok());
        assert_eq!(
            check_runtime_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(check_runtime_url("http://[::1]:8080").is_ok());
        assert!(check_runtime_url("http://localhost:8080").is_ok());
        assert!(check_runtime_url("http://10.0.0.5:8080").is_err());
        assert!(check_runtime_url("http://controller:8080").is_err());
        assert!(check_runtime_url("ftp://127.0.0.1").is_err());
        assert!(check_runtime_url("https://c/some/path").is_err());
        assert!(check_runtime_url("not a url").is_err());
    }

    #[tokio::test]
    async fn a_job_is_handed_out_once_then_gone() {
        let reg = registry(Duration::from_millis(50));
        let id = InstanceId::random().unwrap();
        let (tx, _rx) = mpsc::channel(8);
        let r = reg.register(id.clone(), tx, Some(job("ex_1"))).unwrap();
        match reg.next(&id).await {
            NextOutcome::Job(j) => assert_eq!(j.execution_id.as_deref(), Some("ex_1")),
            other => panic!("{other:?}"),
        }
        r.fetched.unwrap().await.unwrap();
        r.polled.await.unwrap();
        assert!(matches!(reg.next(&id).await, NextOutcome::Gone));
        let unknown = InstanceId::random().unwrap();
        assert!(matches!(reg.next(&unknown).await, NextOutcome::Gone));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_polls_get_the_job_at_most_once() {
        let reg = registry(Duration::from_millis(300));
        let id = InstanceId::random().unwrap();
        let (tx, _rx) = mpsc::channel(8);
        reg.register(id.clone(), tx, None).unwrap();
        let polls: Vec<_> = (0..32)
            .map(|_| {
                let reg = Arc::clone(&reg);
                let id = id.clone();
                tokio::spawn(async move { reg.next(&id).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let fetched = reg.assign(&id, job("ex_2")).unwrap();
        let mut jobs = 0;
        for p in polls {
            match p.await.unwrap() {
                NextOutcome::Job(_) => jobs += 1,
                NextOutcome::Gone => {}
                NextOutcome::NoContent => panic!("a poll missed the assignment"),
            }
        }
        assert_eq!(jobs, 1);
        fetched.await.unwrap();
        // A second assignment to the same instance is refused.
        assert_eq!(
            reg.assign(&id, job("ex_3")).unwrap_err(),
            AssignError::NotIdle
        );
    }

    #[tokio::test]
    async fn idle_polls_time_out_and_retired_instances_are_told_to_exit() {
        let reg = registry(Duration::from_millis(30));
        let id = InstanceId::random().unwrap();
        let (tx, _rx) = mpsc::channel(8);
        reg.register(id.clone(), tx, None).unwrap();
        let t = Instant::now();
        assert!(matches!(reg.next(&id).await, NextOutcome::NoContent));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let waiting = {
            let reg = Arc::clone(&reg);
            let id = id.clone();
            tokio::spawn(async move { reg.next(&id).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        reg.retire(&id);
        assert!(matches!(waiting.await.unwrap(), NextOutcome::Gone));
        assert_eq!(
            reg.assign(&id, job("ex")).unwrap_err(),
            AssignError::NotIdle
        );
        // Taking back a job that was not fetched.
        let id2 = InstanceId::random().unwrap();
        let (tx, _rx) = mpsc::channel(8);
        let r = reg.register(id2.clone(), tx, Some(job("ex_4"))).unwrap();
        assert!(reg.unassign(&id2));
        assert!(r.fetched.unwrap().await.is_err());
        assert!(matches!(reg.next(&id2).await, NextOutcome::Gone));
        // Closing retires everything and refuses registrations.
        reg.close();
        let (tx, _rx) = mpsc::channel(8);
        assert_eq!(
            reg.register(InstanceId::random().unwrap(), tx, None)
                .unwrap_err(),
            PullError::Closed
        );
    }

    fn drain(rx: &mut mpsc::Receiver<InstanceOutput>) -> Vec<InstanceOutput> {
        let mut got = Vec::new();
        while let Ok(item) = rx.try_recv() {
            got.push(item);
        }
        got
    }

    #[tokio::test]
    async fn reports_are_accepted_for_the_handed_execution_and_counted() {
        let reg = registry(Duration::from_millis(30));
        let id = InstanceId::random().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        reg.register(id.clone(), tx, Some(job("ex_5"))).unwrap();
        assert_eq!(
            reg.begin_report(&id, "ex_5", 0).await.unwrap_err(),
            ReportRefused::NotFetched
        );
        assert!(matches!(reg.next(&id).await, NextOutcome::Job(_)));
        assert_eq!(
            reg.begin_report(&id, "ex_other", 0).await.unwrap_err(),
            ReportRefused::WrongExecution
        );
        assert_eq!(reg.position(&id, "ex_5").await.unwrap().received, 0);
        let mut sink = reg.begin_report(&id, "ex_5", 0).await.unwrap();
        sink.push(b"{\"type\":\"ready\"}\n{\"type\":\"text\",\"te")
            .await
            .unwrap();
        sink.push(b"xt\":\"hi\"}\n\nnot json\n").await.unwrap();
        // ready, text, an empty line and garbage: four whole lines.
        assert_eq!(reg.position(&id, "ex_5").await.unwrap().received, 4);
        sink.push(b"{\"type\":\"end\",\"finish_reason\":\"stop\",\"duration_ms\":1}")
            .await
            .unwrap();
        assert_eq!(sink.finish(ReportEnd::Complete).await, ReportOutcome::Ended);
        let got = drain(&mut rx);
        assert!(matches!(&got[0], InstanceOutput::Event(Event::Text { text }) if text == "hi"));
        assert!(matches!(&got[1], InstanceOutput::Garbage(g) if g == "not json"));
        assert!(matches!(&got[2], InstanceOutput::Event(Event::End { .. })));
        assert_eq!(got.len(), 3);
        // The execution takes no more report.
        assert_eq!(
            reg.begin_report(&id, "ex_5", 5).await.unwrap_err(),
            ReportRefused::Gone
        );
        assert_eq!(
            reg.position(&id, "ex_5").await.unwrap_err(),
            ReportRefused::Gone
        );
    }

    #[tokio::test]
    async fn a_broken_report_resumes_without_gap_or_duplicate() {
        let reg = registry(Duration::from_millis(30));
        reg.set_reattach_grace(Duration::from_secs(30));
        let id = InstanceId::random().unwrap();
        let (tx, mut rx) = mpsc::channel(32);
        reg.register(id.clone(), tx, Some(job("ex_r"))).unwrap();
        assert!(matches!(reg.next(&id).await, NextOutcome::Job(_)));
        let text = |i: u32| format!("{{\"type\":\"text\",\"text\":\"{i}\"}}\n");
        let mut sink = reg.begin_report(&id, "ex_r", 0).await.unwrap();
        sink.push(format!("{}{}", text(0), text(1)).as_bytes())
            .await
            .unwrap();
        // Half of line 2 arrives, then the connection breaks.
        sink.push(&text(2).as_bytes()[..5]).await.unwrap();
        assert_eq!(sink.finish(ReportEnd::Broken).await, ReportOutcome::Waiting);
        assert_eq!(reg.position(&id, "ex_r").await.unwrap().received, 2);
        // A wrong offset is refused with the position.
        assert_eq!(
            reg.begin_report(&id, "ex_r", 0).await.unwrap_err(),
            ReportRefused::Offset(2)
        );
        let mut second = reg.begin_report(&id, "ex_r", 2).await.unwrap();
        second.push(text(2).as_bytes()).await.unwrap();
        // A third report supersedes the open second one (cut after its last whole line).
        second.push(&text(3).as_bytes()[..4]).await.unwrap();
        let mut third = reg.begin_report(&id, "ex_r", 3).await.unwrap();
        assert_eq!(
            second.push(&text(3).as_bytes()[4..]).await,
            Err(ReportError::Superseded)
        );
        assert_eq!(
            second.finish(ReportEnd::Cut(ReportError::Superseded)).await,
            ReportOutcome::Superseded
        );
        third
            .push(
                format!(
                    "{}{{\"type\":\"end\",\"finish_reason\":\"stop\",\"duration_ms\":1}}\n",
                    text(3)
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(
            third.finish(ReportEnd::Complete).await,
            ReportOutcome::Ended
        );
        let texts: Vec<String> = drain(&mut rx)
            .into_iter()
            .map(|i| match i {
                InstanceOutput::Event(Event::Text { text }) => text,
                InstanceOutput::Event(Event::End { .. }) => "end".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(texts, ["0", "1", "2", "3", "end"]);
    }

    #[tokio::test]
    async fn a_report_not_resumed_within_the_grace_ends_the_execution() {
        let reg = registry(Duration::from_millis(30));
        reg.set_reattach_grace(Duration::from_millis(50));
        let id = InstanceId::random().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        reg.register(id.clone(), tx, Some(job("ex_g"))).unwrap();
        assert!(matches!(reg.next(&id).await, NextOutcome::Job(_)));
        let mut sink = reg.begin_report(&id, "ex_g", 0).await.unwrap();
        sink.push(b"{\"type\":\"text\",\"text\":\"a\"}\n")
            .await
            .unwrap();
        drop(sink);
        // Nothing but the text until the grace passes; then the error.
        assert!(matches!(
            rx.recv().await,
            Some(InstanceOutput::Event(Event::Text { .. }))
        ));
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(InstanceOutput::Event(Event::Error(e)))) => {
                assert!(e.message.contains("not resumed"), "{}", e.message);
                assert!(e.partial);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reg.position(&id, "ex_g").await.unwrap_err(),
            ReportRefused::Gone
        );
    }

    #[tokio::test]
    async fn an_adopted_instance_reports_from_line_zero() {
        let reg = registry(Duration::from_millis(30));
        let id = InstanceId::random().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        reg.register_adopted(id.clone(), tx, "ex_a").unwrap();
        assert!(matches!(reg.next(&id).await, NextOutcome::Gone));
        assert_eq!(reg.position(&id, "ex_a").await.unwrap().received, 0);
        let mut sink = reg.begin_report(&id, "ex_a", 0).await.unwrap();
        sink.push(b"{\"type\":\"text\",\"text\":\"a\"}\n")
            .await
            .unwrap();
        assert!(matches!(
            rx.recv().await,
            Some(InstanceOutput::Event(Event::Text { .. }))
        ));
    }

    #[tokio::test]
    async fn a_cut_report_ends_with_a_clear_error() {
        let reg = registry(Duration::from_millis(30));
        for (end, chunk, expect) in [
            (
                ReportEnd::Broken,
                &b"{\"type\":\"text\",\"text\":\"a\"}\n"[..],
                "not resumed",
            ),
            (ReportEnd::Complete, &b""[..], "without a result"),
            (ReportEnd::Broken, &[b'x'; 100][..], "longer than 64 bytes"),
        ] {
            let id = InstanceId::random().unwrap();
            let (tx, mut rx) = mpsc::channel(8);
            reg.register(id.clone(), tx, Some(job("ex_6"))).unwrap();
            assert!(matches!(reg.next(&id).await, NextOutcome::Job(_)));
            let mut sink = reg.begin_report(&id, "ex_6", 0).await.unwrap();
            let end = match sink.push(chunk).await {
                Ok(()) => end,
                Err(e) => ReportEnd::Cut(e),
            };
            sink.finish(end).await;
            // A broken report ends after the (short) reattach grace.
            let mut last = None;
            while let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
            {
                last = Some(item);
            }
            match last {
                Some(InstanceOutput::Event(Event::Error(e))) => {
                    assert!(e.message.contains(expect), "{}", e.message);
                    assert_eq!(e.partial, !chunk.is_empty() && chunk[0] == b'{');
                }
                other => panic!("{other:?}"),
            }
        }
        // Dropped without finish: still a terminal error.
        let id = InstanceId::random().unwrap();
        let (tx, mut rx) = mpsc::channel(8);
        reg.register(id.clone(), tx, Some(job("ex_7"))).unwrap();
        assert!(matches!(reg.next(&id).await, NextOutcome::Job(_)));
        drop(reg.begin_report(&id, "ex_7", 0).await.unwrap());
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await,
            Ok(Some(InstanceOutput::Event(Event::Error(_))))
        ));
        // Too large in total.
        let id = InstanceId::random().unwrap();
        let (tx, _rx) = mpsc::channel(64);
        reg.register(id.clone(), tx, Some(job("ex_8"))).unwrap();
        assert!(matches!(reg.next(&id).await, NextOutcome::Job(_)));
        let mut sink = reg.begin_report(&id, "ex_8", 0).await.unwrap();
        let line = b"{\"type\":\"text\",\"text\":\"0123456789\"}\n";
        let mut err = None;
        for _ in 0..40 {
            if let Err(e) = sink.push(line).await {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(ReportError::TooLarge(1024)));
    }
}
