//! The publish load generator against a stand-in for Herald's publish endpoint: an HTTP server
//! in this process that answers like Herald (201, one `{"id","partition","offset","duplicate"}`
//! per event, in order) and deduplicates by `source` + `id`. The generator must store every
//! event it sends, and a run that repeats another's events, or meets an error status, must fail
//! instead of counting.
//!
//! The real server is exercised by `herald-bench publish --quick` (see docs/performance.md);
//! depending on `herald-http` here would tie this crate's lint and test state to it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use herald_bench::publish_load::{self, LoadConfig};
use serde_json::Value;

#[derive(Default)]
struct Topic {
    seen: HashSet<(String, String)>,
    next_offset: u64,
    /// Answer every publish with this status instead, when set.
    fail_with: Option<StatusCode>,
}

type Shared = Arc<Mutex<Topic>>;

async fn publish(State(topic): State<Shared>, Path(_name): Path<String>, body: Bytes) -> Response {
    let events: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(events) => events,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let mut topic = topic.lock().expect("not poisoned");
    if let Some(status) = topic.fail_with {
        return (status, "{\"title\":\"failing on purpose\"}").into_response();
    }
    let mut answers = Vec::with_capacity(events.len());
    for event in events {
        let key = (
            event["source"].as_str().unwrap_or_default().to_owned(),
            event["id"].as_str().unwrap_or_default().to_owned(),
        );
        let duplicate = !topic.seen.insert(key.clone());
        let offset = topic.next_offset;
        if !duplicate {
            topic.next_offset += 1;
        }
        answers.push(serde_json::json!({
            "id": key.1, "partition": 0, "offset": offset, "duplicate": duplicate
        }));
    }
    let answer = serde_json::json!({ "events": answers }).to_string();
    (StatusCode::CREATED, answer).into_response()
}

struct StandIn {
    base_url: String,
    topic: Shared,
    runtime: tokio::runtime::Runtime,
}

fn stand_in() -> StandIn {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let topic = Shared::default();
    let router = Router::new()
        .route("/v1/topics/{name}", put(|| async { StatusCode::CREATED }))
        .route("/v1/topics/{name}/events", post(publish))
        .with_state(topic.clone());
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port");
    let base_url = format!("http://{}", listener.local_addr().expect("an address"));
    runtime.spawn(async move { axum::serve(listener, router).await });
    StandIn {
        base_url,
        topic,
        runtime,
    }
}

fn load(base_url: &str, run: String) -> LoadConfig {
    LoadConfig {
        base_url: base_url.to_owned(),
        topic: "bench".to_owned(),
        connections: 2,
        events_per_batch: 5,
        event_bytes: 400,
        warmup: Duration::from_millis(50),
        duration: Duration::from_millis(300),
        run,
    }
}

#[test]
fn every_event_is_new_and_counted() {
    let server = stand_in();
    server
        .runtime
        .block_on(publish_load::create_topic(
            &server.base_url,
            "bench",
            1,
            Some("2m"),
        ))
        .expect("the topic is created");
    let config = load(&server.base_url, publish_load::run_tag());
    let run = publish_load::run_load(&server.runtime, &config, &|| Some(0.0)).expect("it runs");
    assert!(run.requests > 0);
    assert_eq!(run.events, run.requests * 5);
    assert_eq!(run.payload_bytes, run.events * 400);
    assert_eq!(run.latencies_micros.len() as u64, run.requests);
    assert!(run.events_total >= run.events);
    assert!(run.bench_cpu_cores.is_some());
    assert_eq!(run.server_cpu_cores, Some(0.0));
    // Every event the generator counted (warm-up included) was new to the server.
    assert_eq!(
        server.topic.lock().expect("not poisoned").next_offset,
        run.events_total
    );
}

#[test]
fn repeated_events_fail_the_run() {
    let server = stand_in();
    let config = load(&server.base_url, publish_load::run_tag());
    publish_load::run_load(&server.runtime, &config, &|| None).expect("the first run stores");
    // The same run tag sends the same sources and ids again.
    let error = publish_load::run_load(&server.runtime, &config, &|| None)
        .expect_err("repeated events fail the run");
    assert!(format!("{error:#}").contains("duplicates"), "{error:#}");
}

#[test]
fn an_error_status_fails_the_run() {
    let server = stand_in();
    server.topic.lock().expect("not poisoned").fail_with = Some(StatusCode::SERVICE_UNAVAILABLE);
    let config = load(&server.base_url, publish_load::run_tag());
    let error = publish_load::run_load(&server.runtime, &config, &|| None)
        .expect_err("a 503 fails the run");
    assert!(format!("{error:#}").contains("503"), "{error:#}");
}
