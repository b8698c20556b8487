//! The resume handshake of the runtime API's event report (DESIGN.md 5.2): how a pull-mode
//! runtime whose report connection broke (a network blip, a controller restart) picks up
//! exactly where the controller's copy ends, with no gap and no duplicate.
//!
//! Positions count the *lines of the report* for one execution, from 0: every
//! newline-terminated line the runtime put in it (from `start` on, including any line the
//! controller ignores; a pull-mode runtime's `ready` goes to its stdout, not the report), in
//! order. A runtime keeps every line of its execution (bounded by
//! [`DEFAULT_REPORT_BUFFER_BYTES`]), because a restarted controller holds none of them and
//! rebuilds its event log from what the runtime resends; the controller's sequence numbers are
//! a function of the lines, so the rebuilt log has the same `id:`s as the lost one.
//!
//! 1. `GET /runtime/v1/executions/{id}/events` answers `200` with [`ReportPosition`]: how many
//!    lines the controller holds (`received`; 0 after a restart). `410`: the execution no
//!    longer takes a report (it ended, was cancelled, or its grace ran out): stop and exit.
//! 2. `POST /runtime/v1/executions/{id}/events` with [`EVENT_OFFSET_HEADER`] set to that
//!    number carries the lines from there on. An offset that is not what the controller holds
//!    is refused with `409` and a body that also carries [`ReportPosition`]; the runtime asks
//!    again. A new report supersedes one still open for the same execution (the old one is cut
//!    after its last whole line). No header means offset 0.
//! 3. The report ends after the terminal event; `204` means the controller has every line.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Request header of `POST …/events`: the position of the body's first line.
pub const EVENT_OFFSET_HEADER: &str = "polydev-event-offset";

/// What the controller holds of one execution's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportPosition {
    /// Lines received so far; the next report starts here.
    pub received: u64,
}

/// How many bytes of output lines a pull-mode runtime keeps for resending. Above the
/// controller's default event log bound (8 MiB), so a healthy execution never reaches it.
pub const DEFAULT_REPORT_BUFFER_BYTES: usize = 16 * 1024 * 1024;

/// How long a pull-mode runtime keeps trying to reach the controller after its report broke,
/// before it stops its upstream call and exits. Longer than the controller's default
/// reattach grace, so a runtime outlasts the controller's patience rather than the reverse.
pub const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(120);

/// How long a restarted controller waits for the runtimes of executions it found `running`
/// (and how long a live one waits for a runtime whose report broke) before it ends them as
/// `interrupted` (`POLYDEV_REATTACH_GRACE`).
pub const DEFAULT_REATTACH_GRACE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips() {
        let p = ReportPosition { received: 42 };
        let text = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(text, r#"{"received":42}"#);
        assert_eq!(serde_json::from_str::<ReportPosition>(&text).ok(), Some(p));
    }

    #[test]
    fn the_runtime_outlasts_the_controller_grace() {
        assert!(DEFAULT_RECONNECT_WINDOW > DEFAULT_REATTACH_GRACE);
    }
}
