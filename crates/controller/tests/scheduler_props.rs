//! C8: a property test over random submit / cancel / complete / crash / emit sequences against
//! the scheduler and the driver with a fake backend. Invariants: running never exceeds the
//! limit (in the scheduler and in the backend), the queue and per-user counts stay within
//! their bounds, each accepted execution ends exactly once with the outcome its first
//! effective operation decided, its log is numbered 1..n with the terminal event last, the
//! metrics count every end once, and the store records every execution as terminal.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use polydev_controller::Controller;
use polydev_controller::backend::ExitInfo;
use polydev_controller::config::ControllerConfig;
use polydev_controller::controller::SubmitError;
use polydev_controller::execution::{Execution, Status};
use polydev_controller::store::Store;
use polydev_controller::testing::{Behavior, Control, FakeBackend, OnCancel};
use polydev_protocol::{ApiKey, Credentials, Event, Job, Provider};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Submit(u8),
    Cancel(usize),
    Complete(usize),
    Crash(usize),
    Emit(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..4).prop_map(Op::Submit),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Crash),
        1 => any::<usize>().prop_map(Op::Emit),
    ]
}

fn job(user: u8) -> Job {
    let mut job = Job::new(
        Provider::ALL[user as usize % 3],
        Credentials {
            api_key: ApiKey::new("k-FAKE"),
        },
    );
    job.user_id = Some(format!("user{user}"));
    job.prompt = Some("p".into());
    job
}

/// The outcome the first effective operation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Succeeded,
    Crashed,
    Cancelled,
}

struct World {
    c: Controller,
    fake: FakeBackend,
    store: Store,
    execs: Vec<Arc<Execution>>,
    want: HashMap<String, Want>,
    limit: usize,
    queue: usize,
    per_user: usize,
}

impl World {
    fn check_bounds(&self) {
        let load = self.c.load();
        assert!(load.running <= self.limit, "{load:?}");
        assert!(load.queued <= self.queue, "{load:?}");
        assert!(load.peak_running <= self.limit, "{load:?}");
        assert!(self.fake.peak_live() <= self.limit);
    }

    /// Waits until every driver has caught up: each slot holder runs in the backend and every
    /// other active execution waits in the queue.
    async fn settle(&self) {
        for _ in 0..4000 {
            self.check_bounds();
            let load = self.c.load();
            let active: Vec<_> = self.execs.iter().filter(|e| !e.is_ended()).collect();
            let launched = active
                .iter()
                .filter(|e| self.fake.is_running(&e.id))
                .count();
            if self.fake.live() == load.running
                && launched == load.running
                && load.running + load.queued == active.len()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("did not settle: {:?}", self.c.load());
    }

    async fn until_ended(&self, e: &Execution) {
        for _ in 0..4000 {
            if e.is_ended() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{} did not end", e.id);
    }

    async fn apply(&mut self, op: Op) {
        let pick = |i: usize, n: usize| if n == 0 { None } else { Some(i % n) };
        match op {
            Op::Submit(user) => {
                let before = self.c.load();
                let active_user = self
                    .execs
                    .iter()
                    .filter(|e| !e.is_ended() && e.user_id == format!("user{user}"))
                    .count();
                match self.c.submit(job(user)) {
                    Ok(e) => {
                        assert!(active_user < self.per_user);
                        self.execs.push(e);
                    }
                    Err(SubmitError::UserLimit) => assert_eq!(active_user, self.per_user),
                    Err(SubmitError::AtCapacity) => {
                        assert_eq!(before.running, self.limit, "{before:?}");
                        assert_eq!(before.queued, self.queue, "{before:?}");
                    }
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
            Op::Cancel(i) => {
                let Some(i) = pick(i, self.execs.len()) else {
                    return;
                };
                let e = Arc::clone(&self.execs[i]);
                if !e.is_ended() {
                    self.want.entry(e.id.clone()).or_insert(Want::Cancelled);
                }
                self.c.cancel(&e.id);
                self.until_ended(&e).await;
            }
            Op::Complete(i) | Op::Crash(i) | Op::Emit(i) => {
                let Some(i) = pick(i, self.execs.len()) else {
                    return;
                };
                let e = Arc::clone(&self.execs[i]);
                let (control, want) = match op {
                    Op::Complete(_) => (Control::Complete, Some(Want::Succeeded)),
                    Op::Crash(_) => (
                        Control::Crash(ExitInfo {
                            code: None,
                            signal: Some(9),
                            detail: None,
                            oom_killed: false,
                        }),
                        Some(Want::Crashed),
                    ),
                    _ => (Control::Event(Event::Text { text: "x".into() }), None),
                };
                // Only a running instance takes controls; a queued one ignores them.
                if !e.is_ended()
                    && self.fake.control(&e.id, control)
                    && let Some(w) = want
                {
                    self.want.entry(e.id.clone()).or_insert(w);
                    self.until_ended(&e).await;
                }
            }
        }
        self.settle().await;
    }

    async fn finish(mut self) {
        // End whatever is left by cancelling it.
        for e in self.execs.clone() {
            if !e.is_ended() {
                self.want.entry(e.id.clone()).or_insert(Want::Cancelled);
                self.c.cancel(&e.id);
            }
        }
        self.c.wait_idle().await;
        self.check_bounds();
        assert_eq!(self.fake.live(), 0);
        assert_eq!(self.c.ended_total(), self.execs.len() as u64);
        self.c.flush().await;
        for e in &self.execs {
            let log = e.events_after(0, usize::MAX);
            let seqs: Vec<u64> = log.iter().map(|l| l.seq).collect();
            let want_seqs: Vec<u64> = (1..=log.len() as u64).collect();
            assert_eq!(seqs, want_seqs);
            assert_eq!(log[0].kind, "start");
            assert_eq!(log.iter().filter(|l| l.terminal).count(), 1, "{log:?}");
            assert!(log.last().unwrap().terminal);
            let status = e.status();
            let want = self.want.get(&e.id).copied();
            match want {
                Some(Want::Succeeded) => assert_eq!(status, Status::Succeeded),
                Some(Want::Crashed) => {
                    assert_eq!(status, Status::Failed);
                    assert_eq!(e.outcome(), Some("internal"));
                }
                Some(Want::Cancelled) => assert_eq!(status, Status::Cancelled),
                None => panic!("{} ended without a decision: {status:?}", e.id),
            }
            let rec = self.store.get(&e.id).await.unwrap().unwrap();
            assert_eq!(rec.status, status.as_str());
        }
        let load = self.c.load();
        assert_eq!((load.running, load.queued), (0, 0));
        self.fake.set_on_cancel(OnCancel::Report);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_execution_ends_exactly_once_and_running_stays_bounded(
        limit in 1usize..4,
        queue in 0usize..4,
        per_user in 1usize..4,
        die_on_cancel in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let store = Store::in_memory().unwrap();
            let fake = FakeBackend::new(Behavior::Manual);
            if die_on_cancel {
                fake.set_on_cancel(OnCancel::Die);
            }
            let cfg = ControllerConfig {
                max_concurrency: limit,
                queue_size: queue,
                max_per_user: per_user,
                queue_wait: Duration::from_secs(600),
                ..ControllerConfig::default()
            };
            let c = Controller::new(cfg, Arc::new(fake.clone()), store.clone());
            let mut w = World {
                c,
                fake,
                store,
                execs: Vec::new(),
                want: HashMap::new(),
                limit,
                queue,
                per_user,
            };
            for op in ops {
                w.apply(op).await;
            }
            w.finish().await;
        });
    }
}
