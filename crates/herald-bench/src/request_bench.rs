//! `herald-bench request`: action/response round trips of the real `herald serve`, over HTTP.
//!
//! One server (started here) and, per case, requesters and responders on the same machine:
//! - a **requester** sends `POST /v1/topics/asks/requests?timeout=10s` (plain JSON data of
//!   `event_bytes`, service `bench`) and waits for the `200` that carries the reply; the round
//!   trip is from sending the request to having the whole answer;
//! - a **responder** long-polls the queue subscription `responders` (`pull`, max 32, wait 1s),
//!   replies to each delivery (`POST /v1/requests/{correlationid}/reply`), then acks the batch.
//!
//! Cases: closed loops of 1 and of 16 concurrent requesters (each sends its next request when the
//! last one is answered: round trips per second), and an open loop at a fixed rate (1,000
//! requests/s by default): requests are started by a timer whatever the answers do, and each
//! latency is measured from the moment the request was due, so a stall shows in the tail instead
//! of silently slowing the load (no coordinated omission).
//!
//! What one round trip costs the server, estimated before measuring: four HTTP calls (request,
//! pull, reply, ack; the pull and ack are shared by a responder's batch), five durable writes on
//! the critical path (the request record, the request event, the reply record, the reply event,
//! the reply marked taken in the reply queue), each an `fdatasync` of ≈ 0.15-0.5 ms here, shared
//! between concurrent requests by group commit. So ≈ 1-3 ms for one requester alone, and a few
//! thousand round trips per second on two cores before the CPU runs out.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use reqwest::StatusCode;
use serde::Serialize;

use crate::herald_process::{self, HeraldProcess};
use crate::machine::{self, MachineFacts};
use crate::publish_load::{self, find};
use crate::report::{Goal, format_rate, percentile_millis, write_context, write_goals};

/// The issue's goal: p99 of a round trip at 1,000 requests/s, in milliseconds.
pub const GOAL_P99_MILLIS: f64 = 5.0;
/// The rate the goal is stated at.
pub const GOAL_RATE: u32 = 1000;

/// The topic requests go to, and the queue subscription the responders pull.
pub(crate) const TOPIC: &str = "asks";
pub(crate) const SUBSCRIPTION: &str = "responders";
const SERVICE: &str = "bench";
const JSON: &str = "application/json";

/// What to run.
#[derive(Debug, Clone)]
pub struct RequestOptions {
    pub scratch_root: PathBuf,
    pub binary: PathBuf,
    pub fsync: String,
    pub event_bytes: usize,
    /// Concurrent requesters of each closed-loop case.
    pub concurrency: Vec<u32>,
    /// Requests per second of the open-loop case.
    pub rate: u32,
    pub responders: u32,
    pub case_duration: Duration,
    pub client_threads: usize,
    pub quick: bool,
    pub allow_in_memory: bool,
    pub command: String,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RequestReport {
    pub git_commit: String,
    pub machine: MachineFacts,
    pub load_average_at_end: Option<f64>,
    pub command: String,
    pub server: String,
    pub fsync: String,
    pub event_bytes: usize,
    pub responders: u32,
    pub client_threads: usize,
    pub quick: bool,
    pub cases: Vec<RequestCase>,
    pub goals: Vec<Goal>,
}

/// One case: a closed loop of N requesters, or an open loop at a rate.
#[derive(Debug, Clone, Serialize)]
pub struct RequestCase {
    /// `closed` or `open`.
    pub kind: String,
    pub requesters: u32,
    /// The open loop's rate (requests started per second).
    pub target_rate: Option<u32>,
    pub seconds: f64,
    pub round_trips: u64,
    pub round_trips_per_second: f64,
    pub p50_millis: f64,
    pub p99_millis: f64,
    pub p999_millis: f64,
    pub max_millis: f64,
    /// Requests answered 202 (no reply within the call's 10 s): must be 0.
    pub not_answered: u64,
    pub server_cpu_cores: Option<f64>,
}

/// Runs every case against a fresh server and reports; `progress` hears a line per step.
pub fn run(
    options: &RequestOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<RequestReport> {
    ensure!(options.responders >= 1, "--responders must be at least 1");
    ensure!(options.rate >= 1, "--rate must be at least 1");
    ensure!(
        options.concurrency.iter().all(|n| *n >= 1),
        "--concurrency values must be at least 1"
    );
    let herald_process::BenchServer {
        scratch,
        machine,
        runtime,
        mut process,
    } = herald_process::BenchServer::start(
        &options.binary,
        &options.scratch_root,
        "herald-bench-request-",
        options.allow_in_memory,
        options.client_threads,
        &options.fsync,
    )?;
    let base_url = process.url();
    progress(&format!(
        "herald serve at {base_url} (fsync {}), data on {} ({})",
        options.fsync, machine.filesystem.device, machine.filesystem.kind,
    ));
    let cases = (|| {
        runtime.block_on(publish_load::put_json(
            &format!("{base_url}/v1/subscriptions/{SUBSCRIPTION}"),
            &serde_json::json!({"topics": [TOPIC], "start": "latest"}),
        ))?;
        let mut cases = Vec::new();
        for requesters in &options.concurrency {
            let case = run_case(
                &runtime,
                &base_url,
                options,
                &process,
                Load::Closed(*requesters),
            )?;
            progress(&case_line(&case));
            cases.push(case);
            process.check_running()?;
        }
        let case = run_case(
            &runtime,
            &base_url,
            options,
            &process,
            Load::Open(options.rate),
        )?;
        progress(&case_line(&case));
        cases.push(case);
        process.check_running()?;
        anyhow::Ok(cases)
    })();
    let cases = match cases {
        Ok(cases) => cases,
        Err(error) => {
            let log = process.log_tail();
            drop(process);
            return Err(error.context(format!("server log:\n{log}")));
        }
    };
    process.stop()?;
    scratch.close().context("removing the bench directory")?;
    let goals = cases
        .iter()
        .filter(|case| case.target_rate == Some(GOAL_RATE) && options.fsync == "always")
        .map(|case| Goal {
            goal: format!(
                "round trip p99 < {GOAL_P99_MILLIS} ms at {GOAL_RATE} requests/s, fsync always"
            ),
            measured: format!("{:.2} ms", case.p99_millis),
            met: case.p99_millis < GOAL_P99_MILLIS && case.not_answered == 0,
        })
        .collect();
    Ok(RequestReport {
        git_commit: machine::git_commit(),
        machine,
        load_average_at_end: machine::load_average(),
        command: options.command.clone(),
        server: format!(
            "herald serve started by herald-bench ({})",
            options.binary.display()
        ),
        fsync: options.fsync.clone(),
        event_bytes: options.event_bytes,
        responders: options.responders,
        client_threads: options.client_threads,
        quick: options.quick,
        cases,
        goals,
    })
}

fn case_line(case: &RequestCase) -> String {
    format!(
        "{} loop, {} requester(s){}: {:.0} round trips/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        case.kind,
        case.requesters,
        case.target_rate
            .map(|rate| format!(" at {rate}/s"))
            .unwrap_or_default(),
        case.round_trips_per_second,
        case.p50_millis,
        case.p99_millis,
        case.p999_millis
    )
}

#[derive(Debug, Clone, Copy)]
enum Load {
    /// N requesters, each sending its next request when the last is answered.
    Closed(u32),
    /// Requests started at this rate by a timer.
    Open(u32),
}

pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building an HTTP client")
}

fn run_case(
    runtime: &tokio::runtime::Runtime,
    base_url: &str,
    options: &RequestOptions,
    process: &HeraldProcess,
    load: Load,
) -> anyhow::Result<RequestCase> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut responders = Vec::new();
    for number in 0..options.responders {
        responders.push(runtime.spawn(respond(
            client()?,
            base_url.to_owned(),
            number,
            stop.clone(),
        )));
    }
    let data = Bytes::from(request_data(options.event_bytes));
    let url = format!("{base_url}/v1/topics/{TOPIC}/requests?timeout=10s");
    let duration = options.case_duration;
    let server_before = process.cpu_seconds();
    let started = Instant::now();
    let outcome: anyhow::Result<(Vec<u32>, u64)> = runtime.block_on(async {
        match load {
            Load::Closed(requesters) => {
                let mut tasks = Vec::new();
                for _ in 0..requesters {
                    let (client, url, data) = (client()?, url.clone(), data.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut latencies = Vec::new();
                        let mut not_answered = 0;
                        while started.elapsed() < duration {
                            let sent = Instant::now();
                            if !round_trip(&client, &url, data.clone()).await? {
                                not_answered += 1;
                            }
                            latencies.push(micros_since(sent));
                        }
                        anyhow::Ok((latencies, not_answered))
                    }));
                }
                let mut latencies = Vec::new();
                let mut not_answered = 0;
                for task in tasks {
                    let (mine, missed) = task.await.context("a requester panicked")??;
                    latencies.extend(mine);
                    not_answered += missed;
                }
                Ok((latencies, not_answered))
            }
            Load::Open(rate) => {
                let client = client()?;
                let period = Duration::from_secs_f64(1.0 / f64::from(rate));
                let mut timer = tokio::time::interval(period);
                timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut tasks = Vec::new();
                while started.elapsed() < duration {
                    let due = timer.tick().await.into_std();
                    let (client, url, data) = (client.clone(), url.clone(), data.clone());
                    tasks.push(tokio::spawn(async move {
                        let answered = round_trip(&client, &url, data).await?;
                        anyhow::Ok((micros_since(due), answered))
                    }));
                }
                let mut latencies = Vec::new();
                let mut not_answered = 0;
                for task in tasks {
                    let (latency, answered) = task.await.context("a requester panicked")??;
                    latencies.push(latency);
                    if !answered {
                        not_answered += 1;
                    }
                }
                Ok((latencies, not_answered))
            }
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let server_after = process.cpu_seconds();
    stop.store(true, Ordering::Relaxed);
    for responder in responders {
        runtime
            .block_on(responder)
            .context("a responder panicked")??;
    }
    let (mut latencies, not_answered) = outcome?;
    latencies.sort_unstable();
    let round_trips = latencies.len() as u64;
    let (kind, requesters, target_rate) = match load {
        Load::Closed(requesters) => ("closed", requesters, None),
        Load::Open(rate) => ("open", 0, Some(rate)),
    };
    Ok(RequestCase {
        kind: kind.to_owned(),
        requesters,
        target_rate,
        seconds,
        round_trips,
        round_trips_per_second: round_trips as f64 / seconds,
        p50_millis: percentile_millis(&latencies, 0.50),
        p99_millis: percentile_millis(&latencies, 0.99),
        p999_millis: percentile_millis(&latencies, 0.999),
        max_millis: latencies.last().map_or(0.0, |max| f64::from(*max) / 1000.0),
        not_answered,
        server_cpu_cores: server_before
            .zip(server_after)
            .map(|(before, after)| (after - before) / seconds),
    })
}

/// The request's data: a JSON object of about `bytes` bytes.
pub(crate) fn request_data(bytes: usize) -> String {
    let padding = bytes.saturating_sub(16).max(1);
    format!(r#"{{"pad":"{}"}}"#, "x".repeat(padding))
}

fn micros_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// One request; `true` when it was answered with its reply (200), `false` for a 202.
pub(crate) async fn round_trip(
    client: &reqwest::Client,
    url: &str,
    data: Bytes,
) -> anyhow::Result<bool> {
    let response = client
        .post(url)
        .header("content-type", JSON)
        .header("herald-service", SERVICE)
        .body(data)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .context("reading a request's answer")?;
    match status {
        StatusCode::OK => {
            ensure!(
                find(&body, b"\"reply\":").is_some(),
                "a 200 without a reply: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
            Ok(true)
        }
        StatusCode::ACCEPTED => Ok(false),
        other => bail!(
            "POST {url} answered {other}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        ),
    }
}

/// A responder: pull, reply to each request, ack the batch; until `stop`.
pub(crate) async fn respond(
    client: reqwest::Client,
    base_url: String,
    number: u32,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let pull_url = format!("{base_url}/v1/subscriptions/{SUBSCRIPTION}/pull");
    let ack_url = format!("{base_url}/v1/subscriptions/{SUBSCRIPTION}/ack");
    let pull_body = Bytes::from(format!(
        r#"{{"max":32,"consumer":"responder-{number}","wait":"1s"}}"#
    ));
    let reply_body = Bytes::from_static(br#"{"ok":true}"#);
    while !stop.load(Ordering::Relaxed) {
        let (status, answer) =
            publish_load::post(&client, &pull_url, JSON, pull_body.clone()).await?;
        ensure!(status == StatusCode::OK, "pull answered {status}");
        let mut receipts: Vec<&[u8]> = Vec::new();
        let mut at = 0;
        while let Some(offset) = find(&answer[at..], b"{\"receipt\":") {
            let start = at + offset + b"{\"receipt\":".len();
            let end =
                start + find(&answer[start..], b"\",").context("a receipt without its end")? + 1;
            receipts.push(&answer[start..end]);
            let id_at = start
                + find(&answer[start..], b"\"correlationid\":\"")
                    .context("a request event without correlationid")?
                + b"\"correlationid\":\"".len();
            let id_end = id_at + find(&answer[id_at..], b"\"").context("an unterminated id")?;
            let id = std::str::from_utf8(&answer[id_at..id_end]).context("an id not UTF-8")?;
            let (status, body) = publish_load::post(
                &client,
                &format!("{base_url}/v1/requests/{id}/reply"),
                JSON,
                reply_body.clone(),
            )
            .await?;
            // 409: a redelivered request (its lease ran out) that was answered already.
            ensure!(
                status == StatusCode::CREATED || status == StatusCode::CONFLICT,
                "reply answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
            at = id_end;
        }
        if receipts.is_empty() {
            continue;
        }
        let mut body = Vec::new();
        body.extend_from_slice(b"{\"receipts\":[");
        for (number, receipt) in receipts.iter().enumerate() {
            if number > 0 {
                body.push(b',');
            }
            body.extend_from_slice(receipt);
        }
        body.extend_from_slice(b"]}");
        let (status, _) = publish_load::post(&client, &ack_url, JSON, Bytes::from(body)).await?;
        ensure!(status == StatusCode::OK, "ack answered {status}");
    }
    Ok(())
}

impl RequestReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(out, "## herald-bench request");
        let _ = writeln!(out);
        write_context(
            &mut out,
            &self.git_commit,
            &self.command,
            &self.machine,
            self.load_average_at_end,
        );
        let _ = writeln!(
            out,
            "- server: {}, fsync {}; request data of {} B; {} responder(s) (pull max 32 + reply \
             each + ack); load generator: reqwest on {} Tokio worker thread(s), same machine{}",
            self.server,
            self.fsync,
            self.event_bytes,
            self.responders,
            self.client_threads,
            if self.quick {
                " (--quick: short cases, rough figures)"
            } else {
                ""
            }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| case | round trips | round trips/s | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | not answered | server CPU cores |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for case in &self.cases {
            let name = match case.target_rate {
                Some(rate) => format!("open loop at {rate}/s"),
                None => format!("{} requester(s)", case.requesters),
            };
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
                case.round_trips,
                format_rate(case.round_trips_per_second),
                case.p50_millis,
                case.p99_millis,
                case.p999_millis,
                case.max_millis,
                case.not_answered,
                case.server_cpu_cores
                    .map_or_else(|| "?".to_owned(), |cores| format!("{cores:.2}")),
            );
        }
        if !self.goals.is_empty() {
            let _ = writeln!(out);
            write_goals(&mut out, &self.goals);
        }
        out
    }
}
