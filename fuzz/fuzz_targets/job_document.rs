//! Fuzz target: arbitrary text as a job document (stdin `run --job -`, warm mode, the
//! controller's hand-over) and as an event line (what the controller reads from a runtime).
//! Parsing and validation must never panic; a parsed job serializes back to a document that
//! parses to a job with the same validation verdict; an event line that parses re-serializes
//! to a line that parses to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use polydev_protocol::{Event, Job};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(job) = Job::from_json(text) {
        let verdict = job.validate();
        let again = serde_json::to_string(&job).expect("a parsed job serializes");
        let reparsed = Job::from_json(&again).expect("a serialized job parses");
        assert_eq!(reparsed.validate(), verdict, "validation changed across a round trip");
    }
    if let Ok(event) = serde_json::from_str::<Event>(text) {
        let line = serde_json::to_string(&event).expect("an event serializes");
        let back: Event = serde_json::from_str(&line).expect("a serialized event parses");
        assert_eq!(back, event, "an event changed across a round trip");
    }
});
