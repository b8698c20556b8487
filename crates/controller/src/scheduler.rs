//! Admission control: at most `limit` executions run at once, at most `queue_cap` wait, at most
//! `per_user` are active for one user; everything beyond is refused at once (a fast `429`), not
//! buffered (reference/reliability.md 6, C4).
//!
//! A slot is a [`Permit`]; dropping it frees the slot and hands it, under the same lock, to the
//! oldest waiter, so `running` can never exceed `limit` and a freed slot is never idle while
//! someone waits. Everything happens under one short `std` mutex: admission is a few
//! arithmetic operations and never awaits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Why an execution was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Every slot is busy and the queue is full.
    #[error("the controller is at capacity")]
    Full,
    /// This user already has the maximum number of active executions.
    #[error("too many active executions for this user")]
    UserLimit,
    /// The scheduler is closed (shutting down).
    #[error("shutting down")]
    Closed,
}

/// The outcome of admission.
#[derive(Debug)]
pub enum Admission {
    /// A slot is free: run now.
    Ready(Permit),
    /// Wait for a slot.
    Queued(Queued),
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub running: usize,
    pub queued: usize,
    pub limit: usize,
    /// The highest `running` ever seen.
    pub peak_running: usize,
}

#[derive(Debug)]
pub struct Scheduler {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    limit: usize,
    queue_cap: usize,
    per_user: usize,
    running: usize,
    peak_running: usize,
    queue: VecDeque<Waiter>,
    users: HashMap<String, usize>,
    next_ticket: u64,
    closed: bool,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    user: String,
    tx: oneshot::Sender<Permit>,
}

impl Scheduler {
    pub fn new(limit: usize, queue_cap: usize, per_user: usize) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            state: Mutex::new(State {
                limit: limit.max(1),
                queue_cap,
                per_user: per_user.max(1),
                running: 0,
                peak_running: 0,
                queue: VecDeque::new(),
                users: HashMap::new(),
                next_ticket: 0,
                closed: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can panic half-way through an update; a poisoned lock still
        // holds consistent counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits one execution for `user`.
    pub fn admit(self: &Arc<Self>, user: &str) -> Result<Admission, Rejection> {
        let mut v = self.admit_many(user, 1)?;
        v.pop().ok_or(Rejection::Full)
    }

    /// Admits `n` executions for `user`, all or none.
    pub fn admit_many(self: &Arc<Self>, user: &str, n: usize) -> Result<Vec<Admission>, Rejection> {
        let mut queued = Vec::new();
        let ready = {
            let mut s = self.lock();
            if s.closed {
                return Err(Rejection::Closed);
            }
            let active = s.users.get(user).copied().unwrap_or(0);
            if active + n > s.per_user {
                return Err(Rejection::UserLimit);
            }
            let free = if s.queue.is_empty() {
                s.limit.saturating_sub(s.running)
            } else {
                0
            };
            let to_queue = n.saturating_sub(free);
            if to_queue > s.queue_cap.saturating_sub(s.queue.len()) {
                return Err(Rejection::Full);
            }
            *s.users.entry(user.to_owned()).or_insert(0) += n;
            let ready = n - to_queue;
            s.running += ready;
            s.peak_running = s.peak_running.max(s.running);
            for _ in 0..to_queue {
                let (tx, rx) = oneshot::channel();
                let ticket = s.next_ticket;
                s.next_ticket += 1;
                s.queue.push_back(Waiter {
                    ticket,
                    user: user.to_owned(),
                    tx,
                });
                queued.push(Queued {
                    sched: Arc::clone(self),
                    ticket,
                    rx,
                });
            }
            ready
        };
        let mut out: Vec<Admission> = (0..ready)
            .map(|_| {
                Admission::Ready(Permit {
                    sched: Arc::clone(self),
                    user: user.to_owned(),
                })
            })
            .collect();
        out.extend(queued.into_iter().map(Admission::Queued));
        Ok(out)
    }

    /// A slot for an execution a restarted controller adopts: it is already running, so it
    /// takes a slot even above the limit (and above the user's limit); new work waits until
    /// enough of them end.
    pub fn adopt(self: &Arc<Self>, user: &str) -> Permit {
        let mut s = self.lock();
        *s.users.entry(user.to_owned()).or_insert(0) += 1;
        s.running += 1;
        s.peak_running = s.peak_running.max(s.running);
        drop(s);
        Permit {
            sched: Arc::clone(self),
            user: user.to_owned(),
        }
    }

    /// Stops admitting; every waiter is refused (its [`Queued::wait`] returns `None`).
    pub fn close(&self) {
        let waiters: Vec<Waiter> = {
            let mut s = self.lock();
            s.closed = true;
            let waiters: Vec<Waiter> = s.queue.drain(..).collect();
            for w in &waiters {
                dec_user(&mut s.users, &w.user);
            }
            waiters
        };
        // Dropping the senders wakes the waiters, outside the lock.
        drop(waiters);
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn load(&self) -> Load {
        let s = self.lock();
        Load {
            running: s.running,
            queued: s.queue.len(),
            limit: s.limit,
            peak_running: s.peak_running,
        }
    }

    /// Active (queued + running) executions of `user`.
    pub fn active_for(&self, user: &str) -> usize {
        self.lock().users.get(user).copied().unwrap_or(0)
    }

    fn release(self: &Arc<Self>, user: &str) {
        let handoff = {
            let mut s = self.lock();
            dec_user(&mut s.users, user);
            s.running = s.running.saturating_sub(1);
            match s.queue.pop_front() {
                Some(w) => {
                    s.running += 1;
                    s.peak_running = s.peak_running.max(s.running);
                    Some(w)
                }
                None => None,
            }
        };
        if let Some(w) = handoff {
            let permit = Permit {
                sched: Arc::clone(self),
                user: w.user,
            };
            // If the waiter is gone the permit comes back and is dropped here, which releases
            // the slot again (to the next waiter), outside the lock.
            let _ = w.tx.send(permit);
        }
    }
}

fn dec_user(users: &mut HashMap<String, usize>, user: &str) {
    if let Some(n) = users.get_mut(user) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            users.remove(user);
        }
    }
}

/// One running slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    sched: Arc<Scheduler>,
    user: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.sched.release(&self.user);
    }
}

/// A place in the queue; dropping it leaves the queue.
#[derive(Debug)]
pub struct Queued {
    sched: Arc<Scheduler>,
    ticket: u64,
    rx: oneshot::Receiver<Permit>,
}

impl Queued {
    /// Waits for a slot; `None` when the scheduler closed first. Cancel-safe.
    pub async fn wait(&mut self) -> Option<Permit> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        let mut s = self.sched.lock();
        if let Some(pos) = s.queue.iter().position(|w| w.ticket == self.ticket)
            && let Some(w) = s.queue.remove(pos)
        {
            dec_user(&mut s.users, &w.user);
        }
        // Otherwise the waiter was already handed a permit (it sits in `rx` and is released
        // when `rx` drops, after this lock is gone) or the scheduler closed.
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ready(a: Admission) -> Permit {
        match a {
            Admission::Ready(p) => p,
            Admission::Queued(_) => panic!("expected a free slot"),
        }
    }

    fn queued(a: Admission) -> Queued {
        match a {
            Admission::Queued(q) => q,
            Admission::Ready(_) => panic!("expected to queue"),
        }
    }

    #[tokio::test]
    async fn limit_queue_and_handoff() {
        let s = Scheduler::new(2, 1, 10);
        let p1 = ready(s.admit("a").unwrap());
        let _p2 = ready(s.admit("b").unwrap());
        let mut q = queued(s.admit("c").unwrap());
        assert_eq!(s.admit("d").unwrap_err(), Rejection::Full);
        assert_eq!(s.load().queued, 1);
        drop(p1);
        let p3 = q.wait().await.unwrap();
        assert_eq!(s.load().running, 2);
        assert_eq!(s.load().queued, 0);
        drop(p3);
        drop(q);
        assert_eq!(s.load().running, 1);
        assert_eq!(s.active_for("c"), 0);
        assert_eq!(s.load().peak_running, 2);
    }

    #[tokio::test]
    async fn per_user_limit_counts_queued_and_running() {
        let s = Scheduler::new(1, 10, 2);
        let p = ready(s.admit("u").unwrap());
        let q = queued(s.admit("u").unwrap());
        assert_eq!(s.admit("u").unwrap_err(), Rejection::UserLimit);
        assert!(s.admit("v").is_ok());
        drop(q);
        assert_eq!(s.active_for("u"), 1);
        drop(p);
        assert_eq!(s.active_for("u"), 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_passes_its_slot_on() {
        let s = Scheduler::new(1, 10, 10);
        let p = ready(s.admit("a").unwrap());
        let q1 = queued(s.admit("b").unwrap());
        let mut q2 = queued(s.admit("c").unwrap());
        drop(q1);
        drop(p);
        let p2 = q2.wait().await.unwrap();
        assert_eq!(s.load().running, 1);
        drop(p2);
        assert_eq!(s.load().running, 0);
        assert_eq!(s.active_for("b") + s.active_for("c"), 0);
    }

    #[tokio::test]
    async fn admit_many_is_all_or_nothing() {
        let s = Scheduler::new(2, 1, 10);
        assert_eq!(s.admit_many("u", 4).unwrap_err(), Rejection::Full);
        assert_eq!(s.load().running, 0);
        assert_eq!(s.active_for("u"), 0);
        let v = s.admit_many("u", 3).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(
            s.load(),
            Load {
                running: 2,
                queued: 1,
                limit: 2,
                peak_running: 2
            }
        );
        let s2 = Scheduler::new(10, 10, 2);
        assert_eq!(s2.admit_many("u", 3).unwrap_err(), Rejection::UserLimit);
    }

    #[tokio::test]
    async fn close_refuses_waiters_and_new_work() {
        let s = Scheduler::new(1, 10, 10);
        let p = ready(s.admit("a").unwrap());
        let mut q = queued(s.admit("b").unwrap());
        s.close();
        assert!(q.wait().await.is_none());
        assert_eq!(s.admit("c").unwrap_err(), Rejection::Closed);
        drop(p);
        assert_eq!(s.load().running, 0);
    }
}
