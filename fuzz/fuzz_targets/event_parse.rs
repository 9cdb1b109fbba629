//! Event parsing on arbitrary bodies, in the structured, batch and plain-JSON modes: never a
//! panic, and whatever is accepted is stored as JSON that a consumer's parser reads back.

#![no_main]

use herald_http::cloudevents::{EventLimits, build_from_json_data, parse_batch, parse_structured};
use libfuzzer_sys::fuzz_target;

const LIMITS: EventLimits = EventLimits {
    event_bytes_max: 1024 * 1024,
    batch_events_max: 100,
};

fn readable(body: &[u8]) {
    let value: serde_json::Value =
        serde_json::from_slice(body).expect("an accepted event is readable JSON");
    assert!(value.is_object(), "an accepted event is a JSON object");
}

fuzz_target!(|input: &[u8]| {
    if let Ok(event) = parse_structured(input, &LIMITS) {
        readable(event.body);
        assert!(!event.id.is_empty() && !event.source.is_empty());
    }
    if let Ok(events) = parse_batch(input, &LIMITS) {
        for event in events {
            readable(event.body);
        }
    }
    if let Ok(built) =
        build_from_json_data(input, "topic", Some("svc"), "2026-01-01T00:00:00Z", &LIMITS)
    {
        readable(&built.json);
    }
});
