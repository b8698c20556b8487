//! The execution records: one SQLite row per execution (who, provider, model, status,
//! timestamps, time to first token, usage, finish reason or error kind, warm or cold). No
//! prompt, answer, error message or credential is ever written: those may hold user data or
//! secrets, and the row must be safe to keep and to query.
//!
//! SQLite calls block, so one dedicated thread owns the connection and takes commands over a
//! channel; writes queued while it works are applied in one transaction. The channel is
//! unbounded but its contents are bounded by admission: at most five writes per admitted
//! execution, and admitted executions are bounded by the scheduler. Senders never wait, so a
//! slow disk never stalls a stream, and writes can be issued from `Drop`. The row of an
//! execution that has not ended may wait a few milliseconds ([`COMMIT_DELAY`]) to share a
//! commit, so that a new execution's bookkeeping does not compete with its first token; a
//! crash within that window loses the row of an execution that was a few milliseconds old.
//!
//! A file store belongs to one controller at a time: `open` takes an exclusive lock on
//! `<db>.lock` before it touches any row, so a second controller started on the same file (an
//! accidental double start, a rolling restart that overlaps) fails with [`StoreError::Locked`]
//! instead of calling the first one's live executions `interrupted`. While it runs, the store
//! thread records a heartbeat every few seconds; on open, rows a crash left `queued` or
//! `running` are marked `failed` / `interrupted` with the last heartbeat as their end time (when
//! the dead controller was last known alive), not the restart time.
//!
//! Executions of a pull backend can outlive the controller (DESIGN.md 5.2): when such a job
//! is handed to an instance, the controller journals an [`InstanceRecord`] (ids, the backend's
//! handle, the credential's digest and expiry; never a key or token) in `instance_records`, and
//! deletes it when the execution ends. [`Store::open_adopting`] leaves the `running` rows that
//! have a record of the configured backend `running` and returns them for adoption; every
//! other non-terminal row is marked as above, and the records of rows not adopted are deleted.

use std::path::Path;
use std::sync::mpsc;
use std::thread;

use polydev_protocol::Usage;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::backend::InstanceRecord;
use crate::execution::unix_ms;

/// The store thread's nice value (see `Store::open`): below the workers, which run at 0.
const STORE_THREAD_NICE: i32 = 10;

/// Why the store could not be opened or read. Messages name no file path (they may reach an
/// operator's log, never a client).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the store thread is gone")]
    Closed,
    #[error("cannot start the store thread: {0}")]
    Thread(std::io::Error),
    #[error(
        "another controller is using this database (its lock file is held); stop it first or \
         give this one its own POLYDEV_DB"
    )]
    Locked,
    #[error("cannot lock the database: {0}")]
    Lock(std::io::Error),
}

/// One execution's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub user_id: String,
    pub provider: String,
    pub model: String,
    pub status: String,
    pub created_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub ttft_ms: Option<u64>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    pub error_kind: Option<String>,
    pub warm: Option<bool>,
}

/// A `running` execution a restarted controller takes back: its row and its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoptable {
    pub record: Record,
    pub instance: InstanceRecord,
    /// The last event `seq` the previous controller logged, if it detached (not crashed).
    pub last_seq: Option<u64>,
}

/// What [`Store::open_adopting`] found.
#[derive(Debug)]
pub struct Recovery {
    /// Rows a crash left non-terminal that were marked `failed`/`interrupted`.
    pub interrupted: usize,
    /// Rows left `running` for adoption.
    pub adoptable: Vec<Adoptable>,
}

enum Command {
    Upsert(Box<Record>),
    PutInstance(Box<InstanceRecord>),
    ForgetInstance(String),
    Detached(String, u64),
    Get(String, oneshot::Sender<Result<Option<Record>, StoreError>>),
    Recent(usize, oneshot::Sender<Result<Vec<Record>, StoreError>>),
    Flush(oneshot::Sender<()>),
}

/// A handle to the store thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Upsert(r) => write!(f, "Upsert({})", r.id),
            Command::PutInstance(r) => write!(f, "PutInstance({})", r.execution_id),
            Command::ForgetInstance(id) => write!(f, "ForgetInstance({id})"),
            Command::Detached(id, seq) => write!(f, "Detached({id}, {seq})"),
            Command::Get(id, _) => write!(f, "Get({id})"),
            Command::Recent(n, _) => write!(f, "Recent({n})"),
            Command::Flush(_) => f.write_str("Flush"),
        }
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    started_at_ms INTEGER,
    ended_at_ms INTEGER,
    ttft_ms INTEGER,
    input_tokens INTEGER,
    output_tokens INTEGER,
    reasoning_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_write_tokens INTEGER,
    finish_reason TEXT,
    error_kind TEXT,
    warm INTEGER
);
CREATE INDEX IF NOT EXISTS executions_user_created ON executions (user_id, created_at_ms);
CREATE INDEX IF NOT EXISTS executions_status ON executions (status);
CREATE INDEX IF NOT EXISTS executions_created ON executions (created_at_ms);
CREATE TABLE IF NOT EXISTS instance_records (
    execution_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    backend TEXT NOT NULL,
    handle TEXT NOT NULL,
    credential_digest TEXT,
    credential_expires_at_ms INTEGER,
    last_seq INTEGER
);
CREATE TABLE IF NOT EXISTS controller_heartbeat (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    alive_at_ms INTEGER NOT NULL
);
";

/// How often the store thread records that the controller is alive.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long `open` waits for the lock: long enough for a store this process just dropped to
/// finish closing, short enough to fail fast when another controller holds it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Most writes applied in one transaction.
const BATCH: usize = 512;

/// How long the row of a new or started execution may wait to be committed with others
/// (group commit). A commit is a few hundred microseconds of CPU (page writes, locks, WAL
/// checksums); done at once it lands in the window where the execution's runtime heads for
/// its first token, and on a small machine it takes a CPU from it. Terminal rows, instance
/// records, reads and flushes never wait: what a client may read back, and what a restarted
/// controller needs to adopt a runtime, is committed as promptly as before.
const COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

impl Store {
    /// Opens (or creates) the database at `path`, marks rows a crash left non-terminal as
    /// `failed`/`interrupted`, and starts the store thread. Returns how many rows were marked.
    /// Fails with [`StoreError::Locked`], touching nothing, while another store holds the file.
    pub fn open(path: &Path) -> Result<(Store, usize), StoreError> {
        Self::open_adopting(path, None).map(|(s, r)| (s, r.interrupted))
    }

    /// Like [`Store::open`], but the `running` rows with an instance record of backend
    /// `adopt` (the configured backend, when it can adopt) stay `running` and are returned.
    pub fn open_adopting(
        path: &Path,
        adopt: Option<&str>,
    ) -> Result<(Store, Recovery), StoreError> {
        let lock = lock_file(path)?;
        let conn = Connection::open(path)?;
        Self::start(conn, Some(lock), adopt)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::start(Connection::open_in_memory()?, None, None).map(|(s, _)| s)
    }

    fn start(
        conn: Connection,
        lock: Option<std::fs::File>,
        adopt: Option<&str>,
    ) -> Result<(Store, Recovery), StoreError> {
        // WAL: readers never block the writer; NORMAL sync is durable across process crashes
        // (only an OS crash can lose the last transactions).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let now = unix_ms(std::time::SystemTime::now()) as i64;
        // The previous run's last heartbeat is when it was last known alive; without one (a
        // database from before heartbeats), the restart time is all there is. An end time never
        // precedes the row's own start.
        let last_alive: i64 = conn
            .query_row(
                "SELECT alive_at_ms FROM controller_heartbeat WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(now);
        let adoptable = match adopt {
            Some(backend) => adoptable(&conn, backend)?,
            None => Vec::new(),
        };
        let interrupted = conn.execute(
            "UPDATE executions SET status = 'failed', error_kind = 'interrupted', \
             ended_at_ms = max(?1, created_at_ms, coalesce(started_at_ms, 0)) \
             WHERE status IN ('queued', 'running') AND NOT (status = 'running' AND id IN \
             (SELECT execution_id FROM instance_records WHERE backend = ?2))",
            params![last_alive, adopt.unwrap_or("")],
        )?;
        // Records of executions not adopted have nothing left to accept.
        conn.execute(
            "DELETE FROM instance_records WHERE backend != ?1 OR execution_id NOT IN \
             (SELECT id FROM executions WHERE status = 'running')",
            params![adopt.unwrap_or("")],
        )?;
        beat(&conn, now)?;
        let (tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("polydev-store".into())
            .spawn(move || {
                // Bookkeeping: on a small machine, waking this thread for a write must not
                // preempt the worker that is handing the execution's job to its runtime.
                if let Err(e) = crate::sys::lower_thread_priority(STORE_THREAD_NICE) {
                    tracing::debug!(error = %e, "store: cannot lower the thread's priority");
                }
                run(conn, rx);
                // The lock is released only once the connection is closed.
                drop(lock);
            })
            .map_err(StoreError::Thread)?;
        Ok((
            Store { tx },
            Recovery {
                interrupted,
                adoptable,
            },
        ))
    }

    /// Journals the instance that runs an execution; never waits.
    pub fn put_instance(&self, record: InstanceRecord) {
        if self
            .tx
            .send(Command::PutInstance(Box::new(record)))
            .is_err()
        {
            tracing::error!("instance record lost: the store thread is gone");
        }
    }

    /// Notes, at a detaching shutdown, the last event `seq` of `execution_id` (its client
    /// streams may have reached it); never waits.
    pub fn note_detached(&self, execution_id: &str, last_seq: u64) {
        let _ = self
            .tx
            .send(Command::Detached(execution_id.to_owned(), last_seq));
    }

    /// Forgets the instance record of `execution_id` (it ended); never waits.
    pub fn forget_instance(&self, execution_id: &str) {
        let _ = self
            .tx
            .send(Command::ForgetInstance(execution_id.to_owned()));
    }

    /// Writes (inserts or replaces) a record; never waits.
    pub fn put(&self, record: Record) {
        if self.tx.send(Command::Upsert(Box::new(record))).is_err() {
            tracing::error!("execution record lost: the store thread is gone");
        }
    }

    /// Reads one record.
    pub async fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Get(id.to_owned(), tx))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The `limit` most recently created records, newest first (the console's history).
    pub async fn recent(&self, limit: usize) -> Result<Vec<Record>, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Recent(limit, tx))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Waits until every write sent before this call is committed.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Takes the exclusive lock on `<path>.lock` (an advisory `flock`: it dies with the process,
/// so a crash never leaves a stale lock). A separate file, because closing any other descriptor
/// of the database file itself would drop SQLite's own POSIX locks on it.
fn lock_file(path: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(StoreError::Lock)?;
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(StoreError::Locked),
            Err(std::fs::TryLockError::Error(e)) => return Err(StoreError::Lock(e)),
        }
    }
}

fn beat(conn: &Connection, now_ms: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO controller_heartbeat (id, alive_at_ms) VALUES (1, ?1) \
         ON CONFLICT(id) DO UPDATE SET alive_at_ms = excluded.alive_at_ms",
        params![now_ms],
    )
    .map(|_| ())
}

/// Waits for the next command, recording a heartbeat whenever [`HEARTBEAT`] passes without one
/// (and at least every [`HEARTBEAT`] under load). `None` once every handle is gone.
fn next_command(
    conn: &Connection,
    rx: &mpsc::Receiver<Command>,
    last_beat: &mut std::time::Instant,
) -> Option<Command> {
    loop {
        if last_beat.elapsed() >= HEARTBEAT {
            if let Err(e) = beat(conn, unix_ms(std::time::SystemTime::now()) as i64) {
                tracing::warn!(error = %e, "cannot record the controller heartbeat");
            }
            *last_beat = std::time::Instant::now();
        }
        match rx.recv_timeout(HEARTBEAT.saturating_sub(last_beat.elapsed())) {
            Ok(cmd) => return Some(cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        }
    }
}

impl Command {
    /// A write that may wait up to [`COMMIT_DELAY`] for company: the row of an execution that
    /// has not ended. Everything else (a terminal row, an instance record, a read, a flush)
    /// is applied at once, together with whatever waits.
    fn is_deferrable(&self) -> bool {
        match self {
            Command::Upsert(r) => matches!(r.status.as_str(), "queued" | "running"),
            _ => false,
        }
    }
}

/// Takes the commands of one batch: `first`, whatever is already queued, and, while every
/// command so far [`is_deferrable`](Command::is_deferrable), whatever arrives within
/// `delay` ([`COMMIT_DELAY`]) of `first`. Returns the writes and the other commands, in order.
fn collect_batch(
    first: Command,
    rx: &mpsc::Receiver<Command>,
    delay: std::time::Duration,
) -> (Vec<Command>, Vec<Command>) {
    let deadline = std::time::Instant::now() + delay;
    let mut deferrable = true;
    let mut writes = Vec::new();
    let mut others = Vec::new();
    let mut next = Some(first);
    while let Some(cmd) = next.take() {
        deferrable &= cmd.is_deferrable();
        match cmd {
            Command::Upsert(_)
            | Command::PutInstance(_)
            | Command::ForgetInstance(_)
            | Command::Detached(..) => writes.push(cmd),
            other => others.push(other),
        }
        if writes.len() + others.len() >= BATCH {
            break;
        }
        next = match rx.try_recv() {
            Ok(cmd) => Some(cmd),
            Err(mpsc::TryRecvError::Empty) if deferrable => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                rx.recv_timeout(left).ok()
            }
            Err(_) => None,
        };
    }
    (writes, others)
}

fn run(mut conn: Connection, rx: mpsc::Receiver<Command>) {
    let mut last_beat = std::time::Instant::now();
    while let Some(first) = next_command(&conn, &rx, &mut last_beat) {
        let (writes, others) = collect_batch(first, &rx, COMMIT_DELAY);
        if !writes.is_empty()
            && let Err(e) = write_batch(&mut conn, &writes)
        {
            tracing::error!(error = %e, count = writes.len(), "cannot write execution records");
        }
        for cmd in others {
            match cmd {
                Command::Get(id, reply) => {
                    let _ = reply.send(read(&conn, &id).map_err(StoreError::from));
                }
                Command::Recent(limit, reply) => {
                    let _ = reply.send(recent(&conn, limit).map_err(StoreError::from));
                }
                Command::Flush(reply) => {
                    let _ = reply.send(());
                }
                Command::Upsert(_)
                | Command::PutInstance(_)
                | Command::ForgetInstance(_)
                | Command::Detached(..) => {}
            }
        }
    }
    // Every handle is gone: checkpoint so the WAL does not linger.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

fn opt_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn write_batch(conn: &mut Connection, writes: &[Command]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT OR REPLACE INTO instance_records (execution_id, instance_id, backend, handle, \
             credential_digest, credential_expires_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut forget =
            tx.prepare_cached("DELETE FROM instance_records WHERE execution_id = ?1")?;
        let mut detached =
            tx.prepare_cached("UPDATE instance_records SET last_seq = ?2 WHERE execution_id = ?1")?;
        let mut stmt = tx.prepare_cached(
            "INSERT INTO executions (id, user_id, provider, model, status, created_at_ms, \
             started_at_ms, ended_at_ms, ttft_ms, input_tokens, output_tokens, reasoning_tokens, \
             cache_read_tokens, cache_write_tokens, finish_reason, error_kind, warm) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
             ON CONFLICT(id) DO UPDATE SET model = excluded.model, status = excluded.status, \
             started_at_ms = excluded.started_at_ms, ended_at_ms = excluded.ended_at_ms, \
             ttft_ms = excluded.ttft_ms, input_tokens = excluded.input_tokens, \
             output_tokens = excluded.output_tokens, reasoning_tokens = excluded.reasoning_tokens, \
             cache_read_tokens = excluded.cache_read_tokens, \
             cache_write_tokens = excluded.cache_write_tokens, \
             finish_reason = excluded.finish_reason, error_kind = excluded.error_kind, \
             warm = excluded.warm",
        )?;
        for cmd in writes {
            let r = match cmd {
                Command::Upsert(r) => r,
                Command::PutInstance(i) => {
                    put.execute(params![
                        i.execution_id,
                        i.instance_id,
                        i.backend,
                        i.handle,
                        i.credential_digest,
                        opt_i64(i.credential_expires_at_ms),
                    ])?;
                    continue;
                }
                Command::ForgetInstance(id) => {
                    forget.execute(params![id])?;
                    continue;
                }
                Command::Detached(id, seq) => {
                    detached.execute(params![id, opt_i64(Some(*seq))])?;
                    continue;
                }
                _ => continue,
            };
            let u = r.usage.as_ref();
            stmt.execute(params![
                r.id,
                r.user_id,
                r.provider,
                r.model,
                r.status,
                opt_i64(Some(r.created_at_ms)),
                opt_i64(r.started_at_ms),
                opt_i64(r.ended_at_ms),
                opt_i64(r.ttft_ms),
                opt_i64(u.map(|u| u.input_tokens)),
                opt_i64(u.map(|u| u.output_tokens)),
                opt_i64(u.and_then(|u| u.reasoning_tokens)),
                opt_i64(u.and_then(|u| u.cache_read_tokens)),
                opt_i64(u.and_then(|u| u.cache_write_tokens)),
                r.finish_reason,
                r.error_kind,
                r.warm,
            ])?;
        }
    }
    tx.commit()
}

const COLUMNS: &str = "id, user_id, provider, model, status, created_at_ms, started_at_ms, \
    ended_at_ms, ttft_ms, input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, \
    cache_write_tokens, finish_reason, error_kind, warm";

/// The `running` rows with an instance record of `backend`.
fn adoptable(conn: &Connection, backend: &str) -> rusqlite::Result<Vec<Adoptable>> {
    let cols = COLUMNS
        .split(", ")
        .map(|c| format!("e.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn.prepare(&format!(
        "SELECT {cols}, i.instance_id, i.backend, i.handle, i.credential_digest, \
         i.credential_expires_at_ms, i.last_seq FROM executions e JOIN instance_records i \
         ON i.execution_id = e.id WHERE e.status = 'running' AND i.backend = ?1 \
         ORDER BY e.created_at_ms"
    ))?;
    stmt.query_map(params![backend], |row| {
        let record = row_record(row)?;
        let instance = InstanceRecord {
            execution_id: record.id.clone(),
            instance_id: row.get(17)?,
            backend: row.get(18)?,
            handle: row.get(19)?,
            credential_digest: row.get(20)?,
            credential_expires_at_ms: row.get::<_, Option<i64>>(21)?.map(|v| v.max(0) as u64),
        };
        let last_seq = row.get::<_, Option<i64>>(22)?.map(|v| v.max(0) as u64);
        Ok(Adoptable {
            record,
            instance,
            last_seq,
        })
    })?
    .collect()
}

fn read(conn: &Connection, id: &str) -> rusqlite::Result<Option<Record>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM executions WHERE id = ?1"))?;
    stmt.query_row(params![id], row_record).optional()
}

fn recent(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<Record>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM executions ORDER BY created_at_ms DESC, id DESC LIMIT ?1"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    stmt.query_map(params![limit], row_record)?.collect()
}

fn row_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
    let u = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    let usage = match (u(9)?, u(10)?) {
        (Some(input_tokens), Some(output_tokens)) => Some(Usage {
            input_tokens,
            output_tokens,
            reasoning_tokens: u(11)?,
            cache_read_tokens: u(12)?,
            cache_write_tokens: u(13)?,
        }),
        _ => None,
    };
    Ok(Record {
        id: row.get(0)?,
        user_id: row.get(1)?,
        provider: row.get(2)?,
        model: row.get(3)?,
        status: row.get(4)?,
        created_at_ms: u(5)?.unwrap_or(0),
        started_at_ms: u(6)?,
        ended_at_ms: u(7)?,
        ttft_ms: u(8)?,
        usage,
        finish_reason: row.get(14)?,
        error_kind: row.get(15)?,
        warm: row.get(16)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(id: &str, status: &str) -> Record {
        Record {
            id: id.into(),
            user_id: "u".into(),
            provider: "openai".into(),
            model: "m".into(),
            status: status.into(),
            created_at_ms: 1,
            started_at_ms: None,
            ended_at_ms: None,
            ttft_ms: None,
            usage: None,
            finish_reason: None,
            error_kind: None,
            warm: None,
        }
    }

    const FOREVER: std::time::Duration = std::time::Duration::from_secs(3600);

    fn upsert(id: &str, status: &str) -> Command {
        Command::Upsert(Box::new(record(id, status)))
    }

    fn ids(cmds: &[Command]) -> Vec<String> {
        cmds.iter().map(|c| format!("{c:?}")).collect()
    }

    #[test]
    fn a_new_executions_row_waits_for_company() {
        let (tx, rx) = mpsc::channel();
        tx.send(upsert("b", "running")).unwrap();
        let delay = std::time::Duration::from_millis(30);
        let t0 = std::time::Instant::now();
        let (writes, others) = collect_batch(upsert("a", "queued"), &rx, delay);
        // It waited for the rest of the window (the sender is still alive), then gave up.
        assert!(t0.elapsed() >= delay);
        assert_eq!(ids(&writes), ["Upsert(a)", "Upsert(b)"]);
        assert!(others.is_empty());
        drop(tx);
    }

    #[test]
    fn a_terminal_row_or_a_journal_write_is_committed_at_once() {
        // With an hour's delay, a wait would hang the test.
        let (_tx, rx) = mpsc::channel();
        let (writes, _) = collect_batch(upsert("a", "succeeded"), &rx, FOREVER);
        assert_eq!(ids(&writes), ["Upsert(a)"]);
        let (_tx, rx) = mpsc::channel();
        let (writes, _) = collect_batch(Command::ForgetInstance("a".into()), &rx, FOREVER);
        assert_eq!(ids(&writes), ["ForgetInstance(a)"]);
    }

    #[test]
    fn a_read_or_a_terminal_row_ends_the_wait() {
        for last in [upsert("a", "failed"), Command::Flush(oneshot::channel().0)] {
            let (tx, rx) = mpsc::channel();
            let want = format!("{last:?}");
            let (taken_tx, taken) = mpsc::channel::<()>();
            let sender = thread::spawn(move || {
                thread::sleep(std::time::Duration::from_millis(5));
                tx.send(last).unwrap();
                // The sender stays alive until the batch is taken: the wait must end on `last`
                // alone (if it did not, the test would hang).
                let _ = taken.recv();
                drop(tx);
            });
            let (writes, others) = collect_batch(upsert("a", "queued"), &rx, FOREVER);
            taken_tx.send(()).unwrap();
            let mut all = ids(&writes);
            all.extend(ids(&others));
            assert_eq!(all, ["Upsert(a)".to_owned(), want]);
            sender.join().unwrap();
        }
    }

    #[test]
    fn a_closed_channel_ends_the_wait() {
        let (tx, rx) = mpsc::channel::<Command>();
        drop(tx);
        let (writes, _) = collect_batch(upsert("a", "queued"), &rx, FOREVER);
        assert_eq!(ids(&writes), ["Upsert(a)"]);
    }

    #[tokio::test]
    async fn upsert_and_read_back() {
        let s = Store::in_memory().unwrap();
        s.put(record("a", "queued"));
        let mut done = record("a", "succeeded");
        done.usage = Some(Usage {
            input_tokens: 1,
            output_tokens: 2,
            ..Usage::default()
        });
        done.warm = Some(true);
        done.ttft_ms = Some(12);
        s.put(done.clone());
        assert_eq!(s.get("a").await.unwrap(), Some(done));
        assert_eq!(s.get("nope").await.unwrap(), None);
    }

    #[tokio::test]
    async fn recent_is_newest_first_and_limited() {
        let s = Store::in_memory().unwrap();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            let mut r = record(id, "succeeded");
            r.created_at_ms = i as u64;
            s.put(r);
        }
        let ids: Vec<String> = s
            .recent(2)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["c", "b"]);
    }

    #[tokio::test]
    async fn reopening_marks_unfinished_rows_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        {
            let (s, n) = Store::open(&path).unwrap();
            assert_eq!(n, 0);
            s.put(record("q", "queued"));
            s.put(record("r", "running"));
            s.put(record("d", "succeeded"));
            s.flush().await;
        }
        let (s, n) = Store::open(&path).unwrap();
        assert_eq!(n, 2);
        let r = s.get("r").await.unwrap().unwrap();
        assert_eq!(r.status, "failed");
        assert_eq!(r.error_kind.as_deref(), Some("interrupted"));
        assert!(r.ended_at_ms.is_some());
        assert_eq!(s.get("d").await.unwrap().unwrap().status, "succeeded");
    }

    fn instance(exec: &str, backend: &str) -> InstanceRecord {
        InstanceRecord {
            execution_id: exec.into(),
            instance_id: format!("pi_{exec}"),
            backend: backend.into(),
            handle: "1234:5678".into(),
            credential_digest: Some("ab".repeat(32)),
            credential_expires_at_ms: Some(99),
        }
    }

    #[tokio::test]
    async fn running_rows_with_an_instance_record_are_kept_for_adoption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        {
            let (s, _) = Store::open(&path).unwrap();
            s.put(record("a", "running"));
            s.put_instance(instance("a", "process"));
            s.put(record("b", "running"));
            s.put_instance(instance("b", "nomad"));
            s.put(record("c", "running"));
            s.put(record("d", "succeeded"));
            s.put_instance(instance("d", "process"));
            s.put(record("e", "running"));
            s.put_instance(instance("e", "process"));
            s.forget_instance("e");
            s.flush().await;
        }
        let (s, rec) = Store::open_adopting(&path, Some("process")).unwrap();
        assert_eq!(
            rec.interrupted, 3,
            "b (another backend), c (no record), e (forgotten)"
        );
        assert_eq!(rec.adoptable.len(), 1);
        assert_eq!(rec.adoptable[0].record.id, "a");
        assert_eq!(rec.adoptable[0].record.status, "running");
        assert_eq!(rec.adoptable[0].instance, instance("a", "process"));
        assert_eq!(s.get("a").await.unwrap().unwrap().status, "running");
        assert_eq!(s.get("b").await.unwrap().unwrap().status, "failed");
        drop(s);
        // Only the adopted execution's record is left; opened without adoption, it goes too.
        let (_s, rec) = Store::open_adopting(&path, Some("process")).unwrap();
        assert_eq!(rec.adoptable.len(), 1);
        drop(_s);
        let (_s, n) = Store::open(&path).unwrap();
        assert_eq!(n, 1);
        drop(_s);
        let conn = Connection::open(&path).unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM instance_records", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[tokio::test]
    async fn a_second_store_on_a_live_file_is_refused_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let (first, _) = Store::open(&path).unwrap();
        first.put(record("r", "running"));
        first.flush().await;
        let second = Store::open(&path);
        assert!(matches!(second, Err(StoreError::Locked)), "{second:?}");
        assert_eq!(first.get("r").await.unwrap().unwrap().status, "running");
    }

    #[tokio::test]
    async fn interrupted_rows_end_at_the_last_heartbeat_not_the_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        {
            let (s, _) = Store::open(&path).unwrap();
            s.put(record("r", "running"));
            s.flush().await;
        }
        // The dead controller was last alive at 1_000 (written as its store thread would).
        {
            let conn = Connection::open(&path).unwrap();
            beat(&conn, 1_000).unwrap();
        }
        let (s, n) = Store::open(&path).unwrap();
        assert_eq!(n, 1);
        let r = s.get("r").await.unwrap().unwrap();
        assert_eq!(r.ended_at_ms, Some(1_000));
    }
}
