//! The load generator of `herald-bench publish`: N connections, each posting batches of
//! CloudEvents (`application/cloudevents-batch+json`) back to back, one request in flight per
//! connection.
//!
//! It shares the machine's cores with the server, so it must cost little per event:
//! - each connection serializes one batch body once ([`BatchTemplate`]) and, before every
//!   request, only overwrites the fixed-width `id` of each event in place (16 hex digits of a
//!   per-connection counter; the `source` names the run and the connection, so `source` + `id`
//!   is unique and Herald's deduplication never drops an event);
//! - the body buffer goes to `reqwest` as [`Bytes`] and is taken back (not copied) once the
//!   answer is in, when `hyper` has let go of it;
//! - an answer is checked by byte search: status 201 and exactly one `"duplicate":false` per
//!   event, no `"duplicate":true`. Anything else fails the run, since a duplicate is an event
//!   Herald did not store and would inflate the rate.
//!
//! Requests are counted when their answer arrives inside the measurement window, which starts
//! after a warm-up (connections opened, the topic's first segment created).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::{Bytes, BytesMut};
use herald_log::{BatchBuilder, BatchLimits, RecordInput};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;

use crate::machine;
use crate::workload::now_ms;

/// The content type of a batch of structured CloudEvents.
pub const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// Hex digits of every event id: fixed width, so that it can be rewritten in place.
pub const ID_DIGITS: usize = 16;

/// The CloudEvents `type` of every event.
pub const EVENT_TYPE: &str = "herald.bench.event";

/// What `herald_core` stores as record headers next to each event (names as in
/// `herald_core::broker::HEADER_*`). Used to size the raw-disk baseline's chunk like Herald's
/// batch frame.
const RECORD_HEADER_NAMES: [&[u8]; 3] = [b"id", b"source", b"type"];

/// The body of one connection's batches, and where each event's id sits in it.
#[derive(Debug)]
pub struct BatchTemplate {
    body: BytesMut,
    id_offsets: Vec<usize>,
    next_sequence: u64,
    /// The `source` shared by the events of this template.
    source: String,
    event_bytes: usize,
}

/// The `source` attribute of the events of one connection.
pub fn event_source(run: &str, connection: u32) -> String {
    format!("/herald-bench/{run}/c{connection:03}")
}

/// One CloudEvent of exactly `event_bytes` bytes of JSON, its `data` padded with letters and
/// digits; the id is `ID_DIGITS` zeros. Fails when `event_bytes` is too small for the attributes.
pub fn event_json(
    source: &str,
    time: &str,
    event_bytes: usize,
    filler_seed: u64,
) -> anyhow::Result<String> {
    let id = "0".repeat(ID_DIGITS);
    let head = format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"{source}\",\"type\":\"{EVENT_TYPE}\",\
         \"time\":\"{time}\",\"datacontenttype\":\"application/json\",\"data\":{{\"filler\":\""
    );
    let tail = "\"}}";
    let fixed = head.len() + tail.len();
    ensure!(
        event_bytes >= fixed,
        "--event-bytes must be at least {fixed}: the attributes alone take that much"
    );
    let mut event = String::with_capacity(event_bytes);
    event.push_str(&head);
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = filler_seed | 1;
    for _ in 0..event_bytes - fixed {
        // xorshift64: letters that do not compress, no JSON escapes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        event.push(char::from(ALPHABET[(state % 62) as usize]));
    }
    event.push_str(tail);
    debug_assert_eq!(event.len(), event_bytes);
    Ok(event)
}

impl BatchTemplate {
    /// A JSON array of `events` CloudEvents of `event_bytes` bytes each, all with `source`.
    pub fn new(source: String, events: u32, event_bytes: usize) -> anyhow::Result<BatchTemplate> {
        ensure!(events >= 1, "--batch must be at least 1");
        let time = rfc3339_utc(now_ms());
        let mut body = BytesMut::with_capacity(2 + events as usize * (event_bytes + 1));
        let mut id_offsets = Vec::with_capacity(events as usize);
        body.extend_from_slice(b"[");
        for number in 0..events {
            if number > 0 {
                body.extend_from_slice(b",");
            }
            let event = event_json(&source, &time, event_bytes, 0x5eed + u64::from(number))?;
            let id_at = event
                .find("\"id\":\"")
                .map(|at| at + "\"id\":\"".len())
                .ok_or_else(|| anyhow!("the event has no id"))?;
            id_offsets.push(body.len() + id_at);
            body.extend_from_slice(event.as_bytes());
        }
        body.extend_from_slice(b"]");
        Ok(BatchTemplate {
            body,
            id_offsets,
            next_sequence: 0,
            source,
            event_bytes,
        })
    }

    pub fn events(&self) -> u32 {
        self.id_offsets.len() as u32
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Bytes of the request body.
    pub fn body_bytes(&self) -> usize {
        self.body.len()
    }

    /// Payload bytes (event JSON) of one batch.
    pub fn payload_bytes(&self) -> u64 {
        u64::from(self.events()) * self.event_bytes as u64
    }

    /// Gives every event the next ids of the sequence and hands out the body; give the buffer
    /// back with [`BatchTemplate::reclaim`] once the request is done.
    pub fn next_body(&mut self) -> Bytes {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for &at in &self.id_offsets {
            let mut sequence = self.next_sequence;
            for slot in self.body[at..at + ID_DIGITS].iter_mut().rev() {
                *slot = HEX[(sequence & 0xf) as usize];
                sequence >>= 4;
            }
            self.next_sequence += 1;
        }
        std::mem::take(&mut self.body).freeze()
    }

    /// Takes the body back after a request: without a copy when nothing else holds it (the
    /// usual case once the answer has arrived), with one otherwise. Returns whether it copied.
    pub fn reclaim(&mut self, body: Bytes) -> bool {
        match body.try_into_mut() {
            Ok(buffer) => {
                self.body = buffer;
                false
            }
            Err(shared) => {
                self.body = BytesMut::from(&shared[..]);
                true
            }
        }
    }
}

/// The bytes Herald writes for one batch of the template's shape: a log frame of `events`
/// records with the event JSON as payload and the id, source and type as headers, as
/// `herald_core` encodes them. The raw-disk baseline writes chunks of this size.
pub fn frame_bytes(
    limits: BatchLimits,
    source: &str,
    events: u32,
    event_bytes: usize,
) -> anyhow::Result<usize> {
    let payload = vec![b'x'; event_bytes];
    let id = [b'0'; ID_DIGITS];
    let values: [&[u8]; 3] = [&id, source.as_bytes(), EVENT_TYPE.as_bytes()];
    let headers: Vec<(&[u8], &[u8])> = RECORD_HEADER_NAMES.into_iter().zip(values).collect();
    let mut builder = BatchBuilder::with_capacity(limits, events as usize * (event_bytes + 128));
    for _ in 0..events {
        builder
            .push(RecordInput {
                timestamp_ms: 0,
                key: None,
                headers: &headers,
                payload: &payload,
            })
            .context("one batch does not fit the log's limits")?;
    }
    Ok(builder.finish()?.encoded_bytes())
}

/// Counts `"duplicate":false` and `"duplicate":true` in a publish answer.
pub fn count_duplicate_flags(body: &[u8]) -> (u64, u64) {
    const NEEDLE: &[u8] = b"\"duplicate\":";
    let mut fresh = 0;
    let mut duplicates = 0;
    let mut at = 0;
    while let Some(found) = find(&body[at..], NEEDLE) {
        at += found + NEEDLE.len();
        match body.get(at) {
            Some(b'f') => fresh += 1,
            Some(b't') => duplicates += 1,
            _ => {}
        }
    }
    (fresh, duplicates)
}

/// Where `needle` first occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let first = needle[0];
    let mut at = 0;
    while at + needle.len() <= haystack.len() {
        let next = haystack[at..=haystack.len() - needle.len()]
            .iter()
            .position(|&byte| byte == first)?;
        at += next;
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time in milliseconds.
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let days = (seconds / 86_400) as i64;
    let second_of_day = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// A tag that makes this run's event sources unique: the clock and the process id, fixed width
/// so that every run's events have the same size.
pub fn run_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!(
        "{:012x}-{:08x}",
        nanos & 0xffff_ffff_ffff,
        std::process::id()
    )
}

/// What to send, where, for how long.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `http://HOST:PORT`.
    pub base_url: String,
    pub topic: String,
    pub connections: u32,
    pub events_per_batch: u32,
    pub event_bytes: usize,
    /// Requests before the window opens are sent and checked but not counted.
    pub warmup: Duration,
    pub duration: Duration,
    /// Makes the sources unique to this load (see [`run_tag`]).
    pub run: String,
}

/// What one load did inside its window (and, in `*_total`, overall).
#[derive(Debug, Clone, Default)]
pub struct LoadRun {
    /// Requests answered inside the window.
    pub requests: u64,
    /// Events stored by those requests.
    pub events: u64,
    /// Their payload (event JSON) bytes.
    pub payload_bytes: u64,
    /// The window's length.
    pub elapsed: Duration,
    /// From sending each request of the window to having its whole answer, in microseconds.
    pub latencies_micros: Vec<u32>,
    /// Events stored by every request of the run, warm-up and stragglers included.
    pub events_total: u64,
    /// Bodies that had to be copied because `hyper` still held them when the answer came.
    pub body_copies: u64,
    /// CPU seconds per second of the window, of this process (the load generator) and of the
    /// server process when its pid is known.
    pub bench_cpu_cores: Option<f64>,
    pub server_cpu_cores: Option<f64>,
}

#[derive(Debug, Default)]
struct ConnectionRun {
    requests: u64,
    events: u64,
    payload_bytes: u64,
    latencies_micros: Vec<u32>,
    events_total: u64,
    body_copies: u64,
}

/// Creates `topic` with `partitions` partitions and, when given, a deduplication window (a
/// duration such as `2m`; the server's default otherwise), or confirms it exists.
pub async fn create_topic(
    base_url: &str,
    topic: &str,
    partitions: u32,
    dedup_window: Option<&str>,
) -> anyhow::Result<()> {
    let mut settings = serde_json::json!({ "partitions": partitions });
    if let Some(window) = dedup_window {
        settings["dedup_window"] = serde_json::Value::from(window);
    }
    put_json(&format!("{base_url}/v1/topics/{topic}"), &settings).await
}

/// `PUT url` with a JSON body (creating a topic or a subscription); fails unless it answers 2xx.
pub async fn put_json(url: &str, body: &serde_json::Value) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .put(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("PUT {url} answered {status}: {text}");
    }
    Ok(())
}

/// Deletes a topic the bench created on a server it did not start.
pub async fn delete_topic(base_url: &str, topic: &str) -> anyhow::Result<()> {
    let url = format!("{base_url}/v1/topics/{topic}");
    let response = reqwest::Client::new()
        .delete(&url)
        .send()
        .await
        .with_context(|| format!("DELETE {url}"))?;
    ensure!(
        response.status().is_success(),
        "DELETE {url} answered {}",
        response.status()
    );
    Ok(())
}

/// Runs the load on `runtime` and measures it; `server_cpu_seconds` reads the server's CPU time
/// (when the server is a local process). The calling thread only keeps time, so it must not be
/// one of the runtime's workers.
pub fn run_load(
    runtime: &tokio::runtime::Runtime,
    config: &LoadConfig,
    server_cpu_seconds: &dyn Fn() -> Option<f64>,
) -> anyhow::Result<LoadRun> {
    ensure!(config.connections >= 1, "--connections must be at least 1");
    let url = format!("{}/v1/topics/{}/events", config.base_url, config.topic);
    let templates = (0..config.connections)
        .map(|connection| {
            BatchTemplate::new(
                event_source(&config.run, connection),
                config.events_per_batch,
                config.event_bytes,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let failed = Arc::new(AtomicBool::new(false));
    let window_start = Instant::now() + config.warmup;
    let window = Window {
        start: window_start,
        end: window_start + config.duration,
    };
    let mut tasks = Vec::with_capacity(templates.len());
    for template in templates {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(60))
            .build()
            .context("building an HTTP client")?;
        let url = url.clone();
        let failed = failed.clone();
        tasks.push(runtime.spawn(async move {
            let result = connection(client, url, template, window).await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            result
        }));
    }

    // Keep time on this thread while the runtime's workers send.
    let sleep_until = |deadline: Instant| {
        while !failed.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(20)));
        }
    };
    sleep_until(window.start);
    let bench_before = machine::process_cpu_seconds();
    let server_before = server_cpu_seconds();
    let started = Instant::now();
    sleep_until(window.end);
    let elapsed = started.elapsed();
    let bench_after = machine::process_cpu_seconds();
    let server_after = server_cpu_seconds();

    let results = runtime.block_on(async {
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await);
        }
        results
    });
    let mut run = LoadRun {
        elapsed,
        ..LoadRun::default()
    };
    let mut errors = Vec::new();
    for (number, result) in results.into_iter().enumerate() {
        match result {
            Ok(Ok(connection)) => {
                run.requests += connection.requests;
                run.events += connection.events;
                run.payload_bytes += connection.payload_bytes;
                run.events_total += connection.events_total;
                run.body_copies += connection.body_copies;
                run.latencies_micros.extend(connection.latencies_micros);
            }
            Ok(Err(error)) => errors.push(format!("connection {number}: {error:#}")),
            Err(error) => errors.push(format!("connection {number} panicked: {error}")),
        }
    }
    if !errors.is_empty() {
        bail!("the load failed:\n  {}", errors.join("\n  "));
    }
    ensure!(
        run.requests > 0,
        "no request was answered within the {:.2} s window",
        config.duration.as_secs_f64()
    );
    let seconds = elapsed.as_secs_f64();
    run.bench_cpu_cores = bench_before
        .zip(bench_after)
        .map(|(before, after)| (after - before) / seconds);
    run.server_cpu_cores = server_before
        .zip(server_after)
        .map(|(before, after)| (after - before) / seconds);
    Ok(run)
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

/// Posts the template's next batch and checks that every event was stored as new. Returns
/// whether the body had to be copied (see [`BatchTemplate::reclaim`]).
pub async fn publish_batch(
    client: &reqwest::Client,
    url: &str,
    template: &mut BatchTemplate,
) -> anyhow::Result<bool> {
    let body = template.next_body();
    let (status, answer) = post(client, url, BATCH_CONTENT_TYPE, body.clone()).await?;
    let copied = template.reclaim(body);
    check_published(url, status, &answer, u64::from(template.events()))
        .with_context(|| format!("source {}", template.source()))?;
    Ok(copied)
}

/// `POST url` with `body`; the status and the whole answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Bytes,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let response = client
        .post(url)
        .header(CONTENT_TYPE, content_type)
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let answer = response
        .bytes()
        .await
        .with_context(|| format!("reading the answer of POST {url}"))?;
    Ok((status, answer))
}

/// Checks a publish answer: 201 and `events` events stored, none a duplicate.
pub fn check_published(
    url: &str,
    status: StatusCode,
    answer: &[u8],
    events: u64,
) -> anyhow::Result<()> {
    if status != StatusCode::CREATED {
        bail!(
            "POST {url} answered {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(500)])
        );
    }
    let (fresh, duplicates) = count_duplicate_flags(answer);
    if duplicates > 0 || fresh != events {
        bail!(
            "POST {url} stored {fresh} of {events} events ({duplicates} duplicates): every \
             event must be new for the rate to mean anything"
        );
    }
    Ok(())
}

async fn connection(
    client: reqwest::Client,
    url: String,
    mut template: BatchTemplate,
    window: Window,
) -> anyhow::Result<ConnectionRun> {
    let events = u64::from(template.events());
    let payload_bytes = template.payload_bytes();
    let mut run = ConnectionRun::default();
    while Instant::now() < window.end {
        let sent = Instant::now();
        if publish_batch(&client, &url, &mut template).await? {
            run.body_copies += 1;
        }
        let answered = Instant::now();
        run.events_total += events;
        if answered >= window.start && answered < window.end {
            run.requests += 1;
            run.events += events;
            run.payload_bytes += payload_bytes;
            run.latencies_micros
                .push(u32::try_from((answered - sent).as_micros()).unwrap_or(u32::MAX));
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use herald_log::LogConfig;

    use super::*;

    #[test]
    fn an_event_has_exactly_the_asked_size_and_is_valid_json() {
        let source = event_source("tag", 3);
        let event = event_json(&source, "2026-11-26T00:00:00Z", 1024, 7).expect("fits");
        assert_eq!(event.len(), 1024);
        let value: serde_json::Value = serde_json::from_str(&event).expect("valid JSON");
        assert_eq!(value["source"], "/herald-bench/tag/c003");
        assert_eq!(value["type"], EVENT_TYPE);
        assert!(event_json(&source, "2026-11-26T00:00:00Z", 100, 7).is_err());
    }

    #[test]
    fn every_body_has_new_ids_in_place() {
        let mut template = BatchTemplate::new(event_source("tag", 0), 3, 300).expect("fits");
        let length = template.body_bytes();
        assert_eq!(length, 2 + 3 * 300 + 2);
        let mut ids = Vec::new();
        for _ in 0..2 {
            let body = template.next_body();
            assert_eq!(body.len(), length);
            let events: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(events.len(), 3);
            for event in &events {
                ids.push(event["id"].as_str().expect("a string id").to_owned());
            }
            assert!(!template.reclaim(body), "nothing else held the body");
        }
        assert_eq!(
            ids,
            [
                "0000000000000000",
                "0000000000000001",
                "0000000000000002",
                "0000000000000003",
                "0000000000000004",
                "0000000000000005"
            ]
        );
        let body = template.next_body();
        let held = body.clone();
        assert!(template.reclaim(body), "a shared body is copied");
        drop(held);
        assert_eq!(template.body_bytes(), length);
    }

    #[test]
    fn the_baseline_frame_is_what_herald_core_would_encode() {
        let limits = LogConfig::default().batch_limits();
        let source = event_source("tag", 0);
        let bytes = frame_bytes(limits, &source, 100, 1024).expect("fits");
        // 40 B of frame; per record 24 B of fields, 3 headers of 4+name+4+value, the payload.
        let headers = (4 + 2 + 4 + ID_DIGITS) + (4 + 6 + 4 + source.len()) + (4 + 4 + 4 + 18);
        assert_eq!(bytes, 40 + 100 * (24 + headers + 1024));
    }

    #[test]
    fn duplicate_flags_are_counted() {
        let answer = br#"{"events":[{"id":"a","partition":0,"offset":1,"duplicate":false},{"id":"b","partition":0,"offset":2,"duplicate":true},{"id":"c","partition":0,"offset":3,"duplicate":false}]}"#;
        assert_eq!(count_duplicate_flags(answer), (2, 1));
        assert_eq!(count_duplicate_flags(b"{\"events\":[]}"), (0, 0));
        assert_eq!(count_duplicate_flags(b"\"duplicate\":"), (0, 0));
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_827_696_000), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339_utc(1_795_651_200_000), "2026-11-26T00:00:00Z");
    }
}
