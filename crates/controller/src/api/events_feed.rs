//! `GET /v1/events`: the controller-wide live feed as server-sent events, and `GET /v1/stats`,
//! its statistics timeline as JSON ([`crate::feed`] says what they carry and why no user data
//! is on them).
//!
//! A stream starts with `event: snapshot` (pool and load, the most recent executions, the
//! timeline), then carries `execution` (one execution's summary, after each change of
//! status), `pool` (when the pool or the load changed) and `stats` (each closed timeline
//! bucket). Events have no `id:`: a client that reconnects, or that fell so far behind that
//! the feed's ring moved past it, gets a new `snapshot` instead of a replay.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use tokio::sync::broadcast::error::RecvError;

use super::AppError;
use crate::controller::Controller;

/// Executions listed in a snapshot.
const SNAPSHOT_EXECUTIONS: usize = 200;

fn snapshot_frame(snapshot: &serde_json::Value) -> SseEvent {
    SseEvent::default()
        .event("snapshot")
        .data(snapshot.to_string())
}

pub(super) async fn events(State(c): State<Controller>) -> Result<Response, AppError> {
    let guard = c.stream_guard().ok_or(AppError::TooManyStreams)?;
    // Subscribe before the snapshot is read, so nothing falls between the two; an event that
    // is also in the snapshot is a repeat of the same state, harmless.
    let rx = c.feed().subscribe();
    let first = snapshot_frame(&c.feed_snapshot(SNAPSHOT_EXECUTIONS).await);
    let keepalive = c.config().sse_keepalive;
    let stopped = {
        let c = c.clone();
        async move { c.stopped().await }
    };
    let rest = stream::unfold((c, rx), |(c, mut rx)| async move {
        let frame = match rx.recv().await {
            Ok(ev) => SseEvent::default().event(ev.kind).data(&*ev.data),
            Err(RecvError::Lagged(_)) => {
                snapshot_frame(&c.feed_snapshot(SNAPSHOT_EXECUTIONS).await)
            }
            Err(RecvError::Closed) => return None,
        };
        Some((frame, (c, rx)))
    });
    let s = stream::once(async { first })
        .chain(rest)
        .take_until(stopped)
        .map(move |f| {
            let _held = &guard;
            Ok::<_, Infallible>(f)
        });
    Ok(super::sse::with_keep_alive(s, keepalive, super::sse::keep_alive_comment()).into_response())
}

pub(super) async fn stats(State(c): State<Controller>) -> Response {
    Json(c.feed().stats()).into_response()
}
