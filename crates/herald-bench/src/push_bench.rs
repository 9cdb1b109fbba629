//! `herald-bench push`: webhook (push) subscriptions of the real `herald serve`, end to end.
//!
//! One server (started here, see [`crate::herald_process`]) and a **receiver** in this process:
//! an HTTP server on 127.0.0.1 (axum) that answers `204` at once to `POST /hook/{subscription}`.
//! It marks each delivery's `(partition, offset)`, read from the `webhook-id` header, in a bitmap,
//! so that duplicates are found and the run ends exactly when every event has arrived. Herald's
//! dispatcher is the only HTTP client of the throughput cases; the bench itself sends nothing
//! while they are timed.
//!
//! Cases, all on one server:
//! 1. **Deliveries/s, 1 subscription.** A topic is filled with a backlog (batches of
//!    `backlog_batch` events, one connection). Then the clock starts, the push subscription is
//!    created with `start: earliest`, and the clock stops when the receiver has every event. The
//!    subscription's `stats` must then show `acked` = events and `backlog` = 0 (how long that took
//!    is reported too). CPU time of the server and of this process is read at both ends
//!    ([`CpuMark`], as `compare` does).
//! 2. **Deliveries/s, fan-out.** The same with N subscriptions (16 by default) on one topic, all
//!    created after the backlog, so every event is delivered N times.
//! 3. **Latency.** One push subscription (`start: latest`) on a fresh topic. A publisher sends a
//!    fixed rate (2,000 events/s by default, one event per request), paced by a timer, each
//!    request on its own task (open loop: a slow publish does not hold back the next one). Each
//!    event's `data` carries `sent_us`, the wall-clock time the publish request was started. The
//!    receiver takes its own clock when the delivery's body has arrived. The latency is the
//!    difference, so it covers the publish (its fsync included), the dispatcher's wake-up and
//!    pull, signing, and the POST.
//!
//! The subscriptions, topics and receivers of a case are removed before the next case starts.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::serve::ListenerExt;
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::compare::load::{CpuMark, CpuProbe};
use crate::herald_process::{self, HeraldProcess};
use crate::machine::{self, MachineFacts};
use crate::publish_load::{self, BatchTemplate, find};
use crate::queue_bench::{timed_batch, unix_micros};
use crate::report::{Goal, format_rate, percentile_millis, write_context, write_goals};

/// The issue's goal for deliveries to a fast local receiver, per second.
pub const GOAL_DELIVERIES_PER_SECOND: f64 = 20_000.0;
/// The issue's goal for the publish-to-receipt latency's 99th percentile, in milliseconds.
pub const GOAL_P99_MILLIS: f64 = 20.0;
/// The rate the latency goal is stated at, in events per second.
pub const GOAL_RATE: u32 = 2000;

/// How long a throughput case may take to deliver everything before the run fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the acks may trail the last delivery before the run fails.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a waiting case prints how far it got.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
const LATENCY_TOPIC: &str = "latency";
const LATENCY_SUBSCRIPTION: &str = "latency";

/// Which parts of the run to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Deliveries/s with one subscription.
    One,
    /// Deliveries/s with the fan-out's N subscriptions.
    Fanout,
    /// Publish-to-receipt latency at a fixed rate.
    Latency,
}

/// How the webhook carries the event (the subscription's `push.content_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    Structured,
    Binary,
}

impl ContentMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ContentMode::Structured => "structured",
            ContentMode::Binary => "binary",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// The server's data goes to a fresh directory inside this one.
    pub scratch_root: PathBuf,
    pub binary: PathBuf,
    pub fsync: String,
    pub parts: Vec<Part>,
    /// Events of the backlog delivered to one subscription.
    pub events: u64,
    /// Subscriptions of the fan-out case.
    pub fanout_subscriptions: u32,
    /// Events of the fan-out case's backlog (each delivered `fanout_subscriptions` times).
    pub fanout_events: u64,
    /// Events per publish request while filling a backlog.
    pub backlog_batch: u32,
    pub partitions: u32,
    pub event_bytes: usize,
    /// `push.max_in_flight` of every subscription.
    pub max_in_flight: u32,
    pub content_mode: ContentMode,
    /// Events per second of the latency case.
    pub latency_rate: u32,
    /// Events per publish request of the latency case.
    pub latency_batch: u32,
    pub latency_duration: Duration,
    pub client_threads: usize,
    pub quick: bool,
    pub allow_in_memory: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Everything one `herald-bench push` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub git_commit: String,
    pub machine: MachineFacts,
    pub load_average_at_end: Option<f64>,
    pub command: String,
    /// The binary the bench started.
    pub server: String,
    pub fsync: String,
    pub partitions: u32,
    pub event_bytes: usize,
    pub max_in_flight: u32,
    pub content_mode: ContentMode,
    pub backlog_batch: u32,
    pub client_threads: usize,
    pub quick: bool,
    pub throughput: Vec<ThroughputCase>,
    pub latency: Option<LatencyFigures>,
    pub goals: Vec<Goal>,
}

/// A backlog delivered to N push subscriptions.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputCase {
    pub subscriptions: u32,
    /// Events in the backlog; each is delivered once per subscription.
    pub events: u64,
    pub deliveries: u64,
    /// How fast the backlog was published (one connection).
    pub backlog_events_per_second: f64,
    /// From creating the first subscription to the receiver having every delivery.
    pub seconds: f64,
    pub deliveries_per_second: f64,
    /// From creating the first subscription to every subscription's stats showing all acked.
    pub acked_seconds: f64,
    /// POSTs the receiver got, duplicates included.
    pub requests: u64,
    /// Deliveries that arrived more than once.
    pub duplicates: u64,
    /// Requests whose `herald-attempt` was not 1.
    pub retried_requests: u64,
    /// Attempts that failed, from `stats.push.attempts_failed`.
    pub failed_attempts: u64,
    /// TCP connections the receiver accepted (Herald's client reuses them when it can).
    pub connections: u64,
    pub server_cpu_cores: Option<f64>,
    pub bench_cpu_cores: Option<f64>,
    /// Every other program on the machine: more than a few tenths means the run was disturbed.
    pub other_cpu_cores: Option<f64>,
    pub server_cpu_micros_per_delivery: Option<f64>,
    pub bench_cpu_micros_per_delivery: Option<f64>,
}

/// The latency case.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyFigures {
    pub target_events_per_second: u32,
    pub events_per_publish: u32,
    pub seconds: f64,
    pub published: u64,
    pub received: u64,
    pub duplicates: u64,
    pub p50_millis: f64,
    pub p90_millis: f64,
    pub p99_millis: f64,
    pub p999_millis: f64,
    pub max_millis: f64,
    /// From starting a publish to its 201 (the publish's fsync included).
    pub publish_p50_millis: f64,
    pub publish_p99_millis: f64,
    /// How late the publisher started a request against its schedule (the load generator's own
    /// delay; large values mean the open loop was not kept).
    pub schedule_lag_p99_millis: f64,
    pub schedule_lag_max_millis: f64,
    pub server_cpu_cores: Option<f64>,
    pub bench_cpu_cores: Option<f64>,
    pub other_cpu_cores: Option<f64>,
}

/// Runs the asked parts against a fresh server and reports; `progress` hears a line per step.
pub fn run(options: &PushOptions, progress: &mut dyn FnMut(&str)) -> anyhow::Result<PushReport> {
    ensure!(!options.parts.is_empty(), "nothing to run");
    ensure!(options.events >= 1, "--events must be at least 1");
    ensure!(
        options.fanout_events >= 1,
        "--fanout-events must be at least 1"
    );
    ensure!(
        options.fanout_subscriptions >= 1,
        "--fanout must be at least 1"
    );
    ensure!(
        (1..=1000).contains(&options.backlog_batch),
        "--backlog-batch must be between 1 and 1000"
    );
    ensure!(options.partitions >= 1, "--partitions must be at least 1");
    ensure!(
        options.max_in_flight >= 1,
        "--max-in-flight must be at least 1"
    );
    ensure!(
        options.latency_batch >= 1 && options.latency_rate >= options.latency_batch,
        "--latency-rate must be at least --latency-batch, which must be at least 1"
    );
    ensure!(
        options.client_threads >= 1,
        "--client-threads must be at least 1"
    );
    let herald_process::BenchServer {
        scratch,
        machine,
        runtime,
        mut process,
    } = herald_process::BenchServer::start(
        &options.binary,
        &options.scratch_root,
        "herald-bench-push-",
        options.allow_in_memory,
        options.client_threads,
        &options.fsync,
    )?;
    let base_url = process.url();
    progress(&format!(
        "herald serve at {base_url} (fsync {}), data on {} ({}); max_in_flight {}, {} mode",
        options.fsync,
        machine.filesystem.device,
        machine.filesystem.kind,
        options.max_in_flight,
        options.content_mode.as_str(),
    ));
    let parts = (|| {
        let mut throughput = Vec::new();
        let mut latency = None;
        for part in &options.parts {
            match part {
                Part::One | Part::Fanout => {
                    let (subscriptions, events) = if *part == Part::One {
                        (1, options.events)
                    } else {
                        (options.fanout_subscriptions, options.fanout_events)
                    };
                    let case = throughput_case(
                        &runtime,
                        &base_url,
                        options,
                        &mut process,
                        subscriptions,
                        events,
                        progress,
                    )?;
                    throughput.push(case);
                }
                Part::Latency => {
                    latency = Some(latency_case(
                        &runtime,
                        &base_url,
                        options,
                        &mut process,
                        progress,
                    )?);
                }
            }
            process.check_running()?;
        }
        anyhow::Ok((throughput, latency))
    })();
    let (throughput, latency) = match parts {
        Ok(parts) => parts,
        Err(error) => {
            let log = process.log_tail();
            // Dropping the process kills it and removes its directory.
            drop(process);
            return Err(error.context(format!("server log:\n{log}")));
        }
    };
    process.stop()?;
    scratch.close().context("removing the bench directory")?;
    let goals = goals(options, &throughput, latency.as_ref());
    Ok(PushReport {
        git_commit: machine::git_commit(),
        machine,
        load_average_at_end: machine::load_average(),
        command: options.command.clone(),
        server: format!(
            "herald serve started by herald-bench ({})",
            options.binary.display()
        ),
        fsync: options.fsync.clone(),
        partitions: options.partitions,
        event_bytes: options.event_bytes,
        max_in_flight: options.max_in_flight,
        content_mode: options.content_mode,
        backlog_batch: options.backlog_batch,
        client_threads: options.client_threads,
        quick: options.quick,
        throughput,
        latency,
        goals,
    })
}

/// The `push` settings of a subscription that delivers to `url`.
fn subscription_settings(
    topic: &str,
    start: &str,
    url: &str,
    options: &PushOptions,
) -> serde_json::Value {
    serde_json::json!({
        "topics": [topic],
        "start": start,
        "push": {
            "url": url,
            "max_in_flight": options.max_in_flight,
            "content_mode": options.content_mode.as_str(),
        },
    })
}

/// Publishes `events` events to `topic` in batches of `options.backlog_batch` (the last one
/// smaller if need be); returns events per second.
fn publish_backlog(
    runtime: &tokio::runtime::Runtime,
    base_url: &str,
    topic: &str,
    events: u64,
    options: &PushOptions,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let url = format!("{base_url}/v1/topics/{topic}/events");
    let source = publish_load::event_source(&publish_load::run_tag(), 0);
    let batch = u64::from(options.backlog_batch).min(events);
    let mut full = BatchTemplate::new(source.clone(), batch as u32, options.event_bytes)?;
    let rest = events % batch;
    runtime.block_on(async {
        let client = crate::queue_bench::client()?;
        for _ in 0..events / batch {
            publish_load::publish_batch(&client, &url, &mut full).await?;
        }
        if rest > 0 {
            // Another source, so that its ids cannot repeat the full batches' ids.
            let mut last =
                BatchTemplate::new(format!("{source}-rest"), rest as u32, options.event_bytes)?;
            publish_load::publish_batch(&client, &url, &mut last).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

fn throughput_case(
    runtime: &tokio::runtime::Runtime,
    base_url: &str,
    options: &PushOptions,
    process: &mut HeraldProcess,
    subscriptions: u32,
    events: u64,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ThroughputCase> {
    let topic = format!("push{subscriptions}");
    runtime.block_on(publish_load::create_topic(
        base_url,
        &topic,
        options.partitions,
        None,
    ))?;
    let backlog_events_per_second = publish_backlog(runtime, base_url, &topic, events, options)?;
    let deliveries = events * u64::from(subscriptions);
    progress(&format!(
        "{subscriptions} subscription(s): published {events} events of {} B ({} events/s); delivering {deliveries}",
        options.event_bytes,
        format_rate(backlog_events_per_second),
    ));
    let tally = Arc::new(Tally::new(subscriptions, options.partitions, events, false));
    let receiver = runtime.block_on(Receiver::start(tally.clone()))?;
    let names: Vec<String> = (0..subscriptions)
        .map(|number| format!("push{subscriptions}-{number}"))
        .collect();
    let probe = process.pid().map_or(CpuProbe::None, CpuProbe::Pid);
    let start_mark = CpuMark::now(&probe);
    let started = Instant::now();
    for (number, name) in names.iter().enumerate() {
        let url = format!("http://{}/hook/{number}", receiver.address);
        runtime.block_on(publish_load::put_json(
            &format!("{base_url}/v1/subscriptions/{name}"),
            &subscription_settings(&topic, "earliest", &url, options),
        ))?;
    }
    wait_for_every_delivery(runtime, &tally, process, DELIVERY_TIMEOUT, progress)?;
    let end_mark = CpuMark::now(&probe);
    let done_at = *tally.done_at.get().context("the receiver saw no end")?;
    let seconds = (done_at - started).as_secs_f64();
    let mut failed_attempts = 0;
    for name in &names {
        let stats = runtime.block_on(wait_for_acks(base_url, name, events, started))?;
        failed_attempts += stats.failed_attempts;
    }
    let acked_seconds = started.elapsed().as_secs_f64();
    for name in &names {
        runtime.block_on(delete(&format!("{base_url}/v1/subscriptions/{name}")))?;
    }
    runtime.block_on(receiver.stop());
    runtime.block_on(delete(&format!("{base_url}/v1/topics/{topic}")))?;
    let cores = start_mark.cores_until(&end_mark);
    let marked_seconds = end_mark_seconds(&start_mark, &end_mark);
    let per_delivery =
        |cores: Option<f64>| cores.map(|cores| cores * marked_seconds / deliveries as f64 * 1e6);
    let case = ThroughputCase {
        subscriptions,
        events,
        deliveries,
        backlog_events_per_second,
        seconds,
        deliveries_per_second: deliveries as f64 / seconds,
        acked_seconds,
        requests: tally.requests.load(Ordering::Relaxed),
        duplicates: tally.duplicates(),
        retried_requests: tally.retried.load(Ordering::Relaxed),
        failed_attempts,
        connections: tally.connections.load(Ordering::Relaxed),
        server_cpu_cores: cores.server,
        bench_cpu_cores: cores.bench,
        other_cpu_cores: cores.other,
        server_cpu_micros_per_delivery: per_delivery(cores.server),
        bench_cpu_micros_per_delivery: per_delivery(cores.bench),
    };
    tally.check()?;
    progress(&format!(
        "{subscriptions} subscription(s): {} deliveries/s ({seconds:.2} s; all acked after {acked_seconds:.2} s), CPU cores server {} / bench {} / other {}, {} duplicates, {} connections",
        format_rate(case.deliveries_per_second),
        cores_text(case.server_cpu_cores),
        cores_text(case.bench_cpu_cores),
        cores_text(case.other_cpu_cores),
        case.duplicates,
        case.connections,
    ));
    Ok(case)
}

/// Wall-clock seconds between two CPU marks (what their cores are per).
fn end_mark_seconds(start: &CpuMark, end: &CpuMark) -> f64 {
    (end.at() - start.at()).as_secs_f64()
}

fn cores_text(cores: Option<f64>) -> String {
    cores.map_or_else(|| "?".to_owned(), |cores| format!("{cores:.2}"))
}

/// Blocks until the receiver has every expected delivery, printing how far it got now and then;
/// fails after `timeout` or when the server exits.
fn wait_for_every_delivery(
    runtime: &tokio::runtime::Runtime,
    tally: &Tally,
    process: &mut HeraldProcess,
    timeout: Duration,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let done = runtime.block_on(async {
            tokio::time::timeout(PROGRESS_INTERVAL, tally.done.notified())
                .await
                .is_ok()
        });
        if done {
            return Ok(());
        }
        process.check_running()?;
        let distinct = tally.distinct.load(Ordering::Relaxed);
        ensure!(
            Instant::now() < deadline,
            "the receiver had {distinct} of {} deliveries after {} s",
            tally.expected,
            timeout.as_secs()
        );
        progress(&format!(
            "  … {distinct} of {} deliveries received",
            tally.expected
        ));
    }
}

/// What a subscription's stats said once everything was acked.
#[derive(Debug)]
struct SettledStats {
    failed_attempts: u64,
}

/// Polls `GET /v1/subscriptions/{name}` until `stats.acked` is `events` and the backlog is empty.
async fn wait_for_acks(
    base_url: &str,
    name: &str,
    events: u64,
    started: Instant,
) -> anyhow::Result<SettledStats> {
    let url = format!("{base_url}/v1/subscriptions/{name}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + ACK_TIMEOUT;
    loop {
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        ensure!(
            response.status().is_success(),
            "GET {url} answered {}",
            response.status()
        );
        let body: serde_json::Value = response
            .json()
            .await
            .with_context(|| format!("reading GET {url}"))?;
        let stats = &body["stats"];
        let acked = stats["acked"].as_u64().unwrap_or(0);
        let backlog = stats["backlog"].as_u64().unwrap_or(u64::MAX);
        if acked == events && backlog == 0 {
            return Ok(SettledStats {
                failed_attempts: stats["push"]["attempts_failed"].as_u64().unwrap_or(0),
            });
        }
        ensure!(
            acked <= events,
            "{name}: stats show {acked} acked of {events} events"
        );
        if Instant::now() >= deadline {
            bail!(
                "{name}: {acked} of {events} acked and a backlog of {backlog}, {:.1} s after the \
                 subscription was created; stats: {stats}",
                started.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `DELETE url`; fails unless it answers 2xx.
async fn delete(url: &str) -> anyhow::Result<()> {
    let response = reqwest::Client::new()
        .delete(url)
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

fn latency_case(
    runtime: &tokio::runtime::Runtime,
    base_url: &str,
    options: &PushOptions,
    process: &mut HeraldProcess,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<LatencyFigures> {
    let batch = options.latency_batch;
    let period = Duration::from_secs_f64(f64::from(batch) / f64::from(options.latency_rate));
    let requests = (options.latency_duration.as_secs_f64() / period.as_secs_f64()).round() as u64;
    ensure!(
        requests >= 1,
        "the latency case is too short for one publish"
    );
    let expected = requests * u64::from(batch);
    runtime.block_on(publish_load::create_topic(
        base_url,
        LATENCY_TOPIC,
        options.partitions,
        None,
    ))?;
    let tally = Arc::new(Tally::new(1, options.partitions, expected, true));
    let receiver = runtime.block_on(Receiver::start(tally.clone()))?;
    runtime.block_on(publish_load::put_json(
        &format!("{base_url}/v1/subscriptions/{LATENCY_SUBSCRIPTION}"),
        &subscription_settings(
            LATENCY_TOPIC,
            "latest",
            &format!("http://{}/hook/0", receiver.address),
            options,
        ),
    ))?;
    progress(&format!(
        "latency: publishing {} events/s ({batch} per request, one every {:.2} ms) for {:.1} s to one push subscription",
        options.latency_rate,
        period.as_secs_f64() * 1e3,
        options.latency_duration.as_secs_f64(),
    ));
    let probe = process.pid().map_or(CpuProbe::None, CpuProbe::Pid);
    let start_mark = CpuMark::now(&probe);
    let publish_url = format!("{base_url}/v1/topics/{LATENCY_TOPIC}/events");
    let source = publish_load::event_source(&publish_load::run_tag(), 1);
    let event_bytes = options.event_bytes;
    let publisher = runtime.spawn(async move {
        let client = crate::request_bench::client()?;
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut tasks = Vec::with_capacity(requests as usize);
        for number in 0..requests {
            let due = timer.tick().await.into_std();
            let (client, url, source) = (client.clone(), publish_url.clone(), source.clone());
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let body = timed_batch(
                    &source,
                    number * u64::from(batch),
                    batch,
                    event_bytes,
                    unix_micros(),
                );
                let (status, answer) =
                    publish_load::post(&client, &url, publish_load::BATCH_CONTENT_TYPE, body)
                        .await?;
                publish_load::check_published(&url, status, &answer, u64::from(batch))?;
                anyhow::Ok((
                    micros_between(due, sent),
                    micros_between(sent, Instant::now()),
                ))
            }));
        }
        let mut lags = Vec::with_capacity(tasks.len());
        let mut publishes = Vec::with_capacity(tasks.len());
        for task in tasks {
            let (lag, publish) = task.await.context("a publish panicked")??;
            lags.push(lag);
            publishes.push(publish);
        }
        anyhow::Ok((lags, publishes))
    });
    let published = runtime.block_on(publisher);
    let (mut lags, mut publishes) = published.context("the publisher panicked")??;
    let timeout = Duration::from_secs(30);
    wait_for_every_delivery(runtime, &tally, process, timeout, progress)
        .context("the latency case's events did not all arrive within 30 s of the last publish")?;
    let end_mark = CpuMark::now(&probe);
    let seconds = end_mark_seconds(&start_mark, &end_mark);
    runtime.block_on(wait_for_acks(
        base_url,
        LATENCY_SUBSCRIPTION,
        expected,
        Instant::now(),
    ))?;
    runtime.block_on(delete(&format!(
        "{base_url}/v1/subscriptions/{LATENCY_SUBSCRIPTION}"
    )))?;
    runtime.block_on(receiver.stop());
    tally.check()?;
    let cores = start_mark.cores_until(&end_mark);
    lags.sort_unstable();
    publishes.sort_unstable();
    let mut latencies = std::mem::take(&mut *lock(&tally.latencies_micros));
    latencies.sort_unstable();
    let figures = LatencyFigures {
        target_events_per_second: options.latency_rate,
        events_per_publish: batch,
        seconds,
        published: expected,
        received: latencies.len() as u64,
        duplicates: tally.duplicates(),
        p50_millis: percentile_millis(&latencies, 0.50),
        p90_millis: percentile_millis(&latencies, 0.90),
        p99_millis: percentile_millis(&latencies, 0.99),
        p999_millis: percentile_millis(&latencies, 0.999),
        max_millis: latencies
            .last()
            .map_or(0.0, |&micros| f64::from(micros) / 1e3),
        publish_p50_millis: percentile_millis(&publishes, 0.50),
        publish_p99_millis: percentile_millis(&publishes, 0.99),
        schedule_lag_p99_millis: percentile_millis(&lags, 0.99),
        schedule_lag_max_millis: lags.last().map_or(0.0, |&micros| f64::from(micros) / 1e3),
        server_cpu_cores: cores.server,
        bench_cpu_cores: cores.bench,
        other_cpu_cores: cores.other,
    };
    progress(&format!(
        "latency: {} events, p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms max {:.2} ms; publish p50 {:.2} ms p99 {:.2} ms; CPU cores server {} / bench {} / other {}",
        figures.received,
        figures.p50_millis,
        figures.p90_millis,
        figures.p99_millis,
        figures.max_millis,
        figures.publish_p50_millis,
        figures.publish_p99_millis,
        cores_text(figures.server_cpu_cores),
        cores_text(figures.bench_cpu_cores),
        cores_text(figures.other_cpu_cores),
    ));
    Ok(figures)
}

fn micros_between(from: Instant, to: Instant) -> u32 {
    u32::try_from(to.saturating_duration_since(from).as_micros()).unwrap_or(u32::MAX)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in a handler leaves a list of numbers: still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the receiver got in one case.
#[derive(Debug)]
struct Tally {
    subscriptions: u32,
    partitions: u32,
    /// Offsets per partition the bitmap has room for (the events published in the case).
    offsets_per_partition: u64,
    /// One bit per (subscription, partition, offset): arrived.
    seen: Vec<AtomicU64>,
    /// Distinct deliveries that make the case complete.
    expected: u64,
    distinct: AtomicU64,
    requests: AtomicU64,
    retried: AtomicU64,
    /// Requests without the Standard Webhooks headers or with a webhook-id the bench cannot
    /// place: the run fails if there is any.
    malformed: AtomicU64,
    connections: AtomicU64,
    /// When the last expected delivery arrived.
    done_at: OnceLock<Instant>,
    done: Notify,
    /// Whether to read `sent_us` from each body (latency case).
    record_latency: bool,
    latencies_micros: Mutex<Vec<u32>>,
}

impl Tally {
    fn new(subscriptions: u32, partitions: u32, events: u64, record_latency: bool) -> Tally {
        let bits = u64::from(subscriptions) * u64::from(partitions) * events;
        Tally {
            subscriptions,
            partitions,
            offsets_per_partition: events,
            seen: (0..bits.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            expected: u64::from(subscriptions) * events,
            distinct: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            done_at: OnceLock::new(),
            done: Notify::new(),
            record_latency,
            latencies_micros: Mutex::new(Vec::with_capacity(if record_latency {
                events as usize
            } else {
                0
            })),
        }
    }

    /// One POST of subscription number `subscription`.
    fn record(&self, subscription: u32, headers: &HeaderMap, body: &[u8]) {
        let received_micros = unix_micros();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        if header("herald-attempt") != Some("1") {
            self.retried.fetch_add(1, Ordering::Relaxed);
        }
        let place = header("webhook-id").and_then(parse_webhook_id);
        let signed = header("webhook-signature").is_some_and(|value| value.starts_with("v1,"))
            && header("webhook-timestamp").is_some();
        let bit = match place {
            Some((partition, offset))
                if signed
                    && subscription < self.subscriptions
                    && partition < self.partitions
                    && offset < self.offsets_per_partition =>
            {
                (u64::from(subscription) * u64::from(self.partitions) + u64::from(partition))
                    * self.offsets_per_partition
                    + offset
            }
            _ => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mask = 1u64 << (bit % 64);
        let before = self.seen[(bit / 64) as usize].fetch_or(mask, Ordering::Relaxed);
        if before & mask != 0 {
            // A duplicate: counted as a request, not as a delivery, and no second latency.
            return;
        }
        if self.record_latency {
            match sent_micros(body) {
                Some(sent) => lock(&self.latencies_micros)
                    .push(u32::try_from(received_micros.saturating_sub(sent)).unwrap_or(u32::MAX)),
                None => {
                    self.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if self.distinct.fetch_add(1, Ordering::AcqRel) + 1 == self.expected {
            let _ = self.done_at.set(Instant::now());
            // Stores a permit if nobody waits yet.
            self.done.notify_one();
        }
    }

    fn duplicates(&self) -> u64 {
        let requests = self.requests.load(Ordering::Relaxed);
        let malformed = self.malformed.load(Ordering::Relaxed);
        requests.saturating_sub(malformed + self.distinct.load(Ordering::Relaxed))
    }

    /// Fails if a request could not be placed.
    fn check(&self) -> anyhow::Result<()> {
        let malformed = self.malformed.load(Ordering::Relaxed);
        ensure!(
            malformed == 0,
            "{malformed} webhook request(s) lacked the Standard Webhooks headers, a webhook-id \
             of the form msg_…_PARTITION_OFFSET for an event of this case, or (latency) a sent_us"
        );
        Ok(())
    }
}

/// `(partition, offset)` of a webhook id `msg_{subscription}_{topic}_{partition}_{offset}`.
fn parse_webhook_id(id: &str) -> Option<(u32, u64)> {
    let mut parts = id.strip_prefix("msg_")?.rsplitn(3, '_');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((partition, offset))
}

/// The `sent_us` a latency event's data carries (in either content mode).
fn sent_micros(body: &[u8]) -> Option<u64> {
    const SENT: &[u8] = b"\"sent_us\":";
    let at = find(body, SENT)? + SENT.len();
    let digits = &body[at..];
    let length = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..length]).ok()?.parse().ok()
}

/// The webhook endpoint: answers every POST with 204 at once.
#[derive(Debug)]
struct Receiver {
    address: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Receiver {
    async fn start(tally: Arc<Tally>) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the webhook receiver")?;
        let address = listener.local_addr()?;
        let counting = tally.clone();
        let listener = listener.tap_io(move |stream| {
            // The answers are tiny; do not let Nagle hold them back.
            let _ = stream.set_nodelay(true);
            counting.connections.fetch_add(1, Ordering::Relaxed);
        });
        let router = Router::new()
            .route("/hook/{subscription}", post(hook))
            .with_state(tally);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(Receiver {
            address,
            stop,
            task,
        })
    }

    /// Stops accepting; Herald's idle keep-alive connections are closed. Gives up waiting after
    /// a few seconds (a connection still busy is dropped with the task).
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn hook(
    State(tally): State<Arc<Tally>>,
    Path(subscription): Path<u32>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    tally.record(subscription, &headers, &body);
    StatusCode::NO_CONTENT
}

/// The issue's goals (not judged on a `--quick` run or without `fsync always`).
fn goals(
    options: &PushOptions,
    throughput: &[ThroughputCase],
    latency: Option<&LatencyFigures>,
) -> Vec<Goal> {
    if options.quick || options.fsync != "always" {
        return Vec::new();
    }
    let mut goals: Vec<Goal> = throughput
        .iter()
        .map(|case| Goal {
            goal: format!(
                "webhook deliveries to a local receiver answering 204, {} subscription(s), \
                 max_in_flight {}, fsync always, {} B events: >= 20,000 deliveries/s",
                case.subscriptions, options.max_in_flight, options.event_bytes
            ),
            measured: format!(
                "{:.0} deliveries/s ({:.0} % of the goal)",
                case.deliveries_per_second,
                case.deliveries_per_second / GOAL_DELIVERIES_PER_SECOND * 100.0
            ),
            met: case.deliveries_per_second >= GOAL_DELIVERIES_PER_SECOND,
        })
        .collect();
    if let Some(latency) = latency.filter(|latency| latency.target_events_per_second == GOAL_RATE) {
        goals.push(Goal {
            goal: format!(
                "publish → webhook receipt at {GOAL_RATE} events/s, fsync always: p99 < 20 ms"
            ),
            measured: format!("p99 {:.2} ms", latency.p99_millis),
            met: latency.p99_millis < GOAL_P99_MILLIS,
        });
    }
    goals
}

impl PushReport {
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "## herald-bench push");
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
            "- server: {}, fsync {}; topics of {} partition(s), events of {} B; push \
             max_in_flight {}, {} mode; backlogs published in batches of {}; receiver (axum, \
             204 at once) and load generator on {} Tokio worker thread(s), same machine{}",
            self.server,
            self.fsync,
            self.partitions,
            self.event_bytes,
            self.max_in_flight,
            self.content_mode.as_str(),
            self.backlog_batch,
            self.client_threads,
            if self.quick {
                " (--quick: small sizes, rough figures)"
            } else {
                ""
            }
        );
        if !self.throughput.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| subscriptions | events | deliveries | deliveries/s | seconds (all acked) | CPU cores server / bench / other | CPU µs per delivery server / bench | duplicates | retried | failed attempts | connections |"
            );
            let _ = writeln!(
                out,
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            let micros = |micros: Option<f64>| {
                micros.map_or_else(|| "?".to_owned(), |micros| format!("{micros:.1}"))
            };
            for case in &self.throughput {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.2} ({:.2}) | {} / {} / {} | {} / {} | {} | {} | {} | {} |",
                    case.subscriptions,
                    case.events,
                    case.deliveries,
                    format_rate(case.deliveries_per_second),
                    case.seconds,
                    case.acked_seconds,
                    cores_text(case.server_cpu_cores),
                    cores_text(case.bench_cpu_cores),
                    cores_text(case.other_cpu_cores),
                    micros(case.server_cpu_micros_per_delivery),
                    micros(case.bench_cpu_micros_per_delivery),
                    case.duplicates,
                    case.retried_requests,
                    case.failed_attempts,
                    case.connections,
                );
            }
        }
        if let Some(l) = &self.latency {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "| latency | events | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | publish p50 / p99 (ms) | publisher lag p99 / max (ms) | CPU cores server / bench / other |"
            );
            let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            let _ = writeln!(
                out,
                "| {} ev/s, {} per publish | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} / {} / {} |",
                format_rate(f64::from(l.target_events_per_second)),
                l.events_per_publish,
                l.received,
                l.p50_millis,
                l.p90_millis,
                l.p99_millis,
                l.p999_millis,
                l.max_millis,
                l.publish_p50_millis,
                l.publish_p99_millis,
                l.schedule_lag_p99_millis,
                l.schedule_lag_max_millis,
                cores_text(l.server_cpu_cores),
                cores_text(l.bench_cpu_cores),
                cores_text(l.other_cpu_cores),
            );
        }
        if !self.goals.is_empty() {
            let _ = writeln!(out);
            write_goals(&mut out, &self.goals);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_id_gives_partition_and_offset() {
        assert_eq!(parse_webhook_id("msg_1f_2a_3_12345"), Some((3, 12345)));
        assert_eq!(parse_webhook_id("msg_1f_2a_0_0"), Some((0, 0)));
        assert_eq!(parse_webhook_id("1f_2a_0_0"), None);
        assert_eq!(parse_webhook_id("msg_0_x"), None);
        assert_eq!(parse_webhook_id("msg_a_b_c_d"), None);
    }

    #[test]
    fn sent_micros_is_read_from_a_structured_or_binary_body() {
        let structured = br#"{"id":"1","data":{"sent_us":1234,"filler":"x"}}"#;
        assert_eq!(sent_micros(structured), Some(1234));
        assert_eq!(sent_micros(br#"{"sent_us":99,"filler":""}"#), Some(99));
        assert_eq!(sent_micros(br#"{"filler":""}"#), None);
    }

    fn headers(id: &str, attempt: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", id.parse().unwrap());
        headers.insert("webhook-timestamp", "1700000000".parse().unwrap());
        headers.insert("webhook-signature", "v1,abc=".parse().unwrap());
        headers.insert("herald-attempt", attempt.parse().unwrap());
        headers
    }

    #[test]
    fn the_tally_counts_distinct_deliveries_duplicates_and_malformed_requests() {
        let tally = Tally::new(2, 1, 3, false);
        for subscription in 0..2 {
            for offset in 0..3 {
                tally.record(
                    subscription,
                    &headers(&format!("msg_1_2_0_{offset}"), "1"),
                    b"",
                );
            }
        }
        assert_eq!(tally.distinct.load(Ordering::Relaxed), 6);
        assert!(tally.done_at.get().is_some());
        tally.record(1, &headers("msg_1_2_0_2", "2"), b"");
        assert_eq!(tally.duplicates(), 1);
        assert_eq!(tally.retried.load(Ordering::Relaxed), 1);
        assert!(tally.check().is_ok());
        tally.record(0, &headers("msg_1_2_0_3", "1"), b"");
        tally.record(2, &headers("msg_1_2_0_0", "1"), b"");
        let mut unsigned = headers("msg_1_2_0_1", "1");
        unsigned.remove("webhook-signature");
        tally.record(0, &unsigned, b"");
        assert_eq!(tally.malformed.load(Ordering::Relaxed), 3);
        assert_eq!(tally.duplicates(), 1);
        assert!(tally.check().is_err());
    }

    #[test]
    fn the_latency_tally_reads_each_first_delivery_once() {
        let tally = Tally::new(1, 1, 2, true);
        let sent = unix_micros();
        let body = format!(r#"{{"data":{{"sent_us":{sent}}}}}"#);
        tally.record(0, &headers("msg_1_2_0_0", "1"), body.as_bytes());
        tally.record(0, &headers("msg_1_2_0_0", "2"), body.as_bytes());
        assert_eq!(lock(&tally.latencies_micros).len(), 1);
        assert!(tally.done_at.get().is_none());
    }
}
