//! `herald-bench queue`: queue subscriptions of the real `herald serve`, end to end over HTTP.
//!
//! One server (started here, see [`crate::herald_process`]) and two phases:
//! 1. **Throughput.** Topic `bench` (N partitions) is filled with events (batches of 1,000, every
//!    id unique), then the queue subscription `workers` (`start: earliest`) is drained by competing
//!    consumers, each looping `pull` (`max`, `wait: 1s`) then `ack` of every receipt it got. Every
//!    ack result must be `ok`. The clock runs from the first pull to the ack that completes the
//!    count; the rate is acked events per second.
//! 2. **Latency.** A fresh subscription `latency` (`start: latest`) on the same topic, one consumer
//!    long-polling (`wait: 20s`) and acking each batch, and a publisher sending batches at a fixed
//!    rate, paced by an interval timer (each batch its own request, so a slow publish does not
//!    delay the next one). Each event's `data` carries its send time in microseconds since the
//!    epoch; each delivered event gives receive time − send time, the receive time being when
//!    the whole pull answer has arrived. This includes the publish's fsync, the pull's wake-up
//!    and the HTTP round trips, and the consumer's own ack of the previous batch.
//!
//! The answers are read by byte search (`{"receipt":"`, `"attempt":`, `"sent_us":`,
//! `"status":"ok"`): parsing 1 KiB events as JSON would cost the load generator, which shares the
//! cores with the server, more than the server's own reads.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use reqwest::StatusCode;
use serde::Serialize;

use crate::herald_process::{self, HeraldProcess};
use crate::machine::{self, MachineFacts};
use crate::publish_load::{self, BatchTemplate, EVENT_TYPE, find};
use crate::report::{Goal, percentile_millis};

/// The issue's goal for draining a queue, in acked events per second.
pub const GOAL_EVENTS_PER_SECOND: f64 = 100_000.0;

/// The issue's goal for the delivery latency's 99th percentile, in milliseconds.
pub const GOAL_P99_MILLIS: f64 = 10.0;

const TOPIC: &str = "bench";
const THROUGHPUT_SUBSCRIPTION: &str = "workers";
const LATENCY_SUBSCRIPTION: &str = "latency";
const PREFILL_BATCH: u32 = 1000;
const JSON: &str = "application/json";

/// What to run.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    /// The server's data goes to a fresh directory inside this one.
    pub scratch_root: PathBuf,
    pub binary: PathBuf,
    pub fsync: String,
    pub partitions: u32,
    /// Events pre-filled and drained by the throughput phase (a multiple of 1,000).
    pub events: u64,
    pub event_bytes: usize,
    pub consumers: u32,
    /// `max` of every pull of the throughput phase.
    pub pull_max: u32,
    /// Events per second the latency phase publishes.
    pub latency_rate: u32,
    /// Events per publish request of the latency phase.
    pub latency_batch: u32,
    pub latency_duration: Duration,
    pub client_threads: usize,
    pub quick: bool,
    pub allow_in_memory: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Everything one `herald-bench queue` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct QueueReport {
    pub git_commit: String,
    pub machine: MachineFacts,
    pub load_average_at_end: Option<f64>,
    pub command: String,
    /// The binary the bench started.
    pub server: String,
    pub fsync: String,
    pub partitions: u32,
    pub event_bytes: usize,
    pub client_threads: usize,
    pub quick: bool,
    pub throughput: ThroughputFigures,
    pub latency: LatencyFigures,
    pub goals: Vec<Goal>,
}

/// The throughput phase.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputFigures {
    pub events: u64,
    pub consumers: u32,
    pub pull_max: u32,
    /// How fast the topic was filled (one connection, batches of 1,000).
    pub prefill_events_per_second: f64,
    pub elapsed_seconds: f64,
    /// Acked events per second, first pull to last ack.
    pub events_per_second: f64,
    pub pulls: u64,
    /// Pulls that returned no delivery (the end of the drain).
    pub empty_pulls: u64,
    pub acks: u64,
    pub deliveries_per_pull: f64,
    /// Deliveries with `attempt` > 1.
    pub redeliveries: u64,
    pub pull_p50_millis: f64,
    pub pull_p99_millis: f64,
    pub ack_p50_millis: f64,
    pub ack_p99_millis: f64,
    pub server_cpu_cores: Option<f64>,
    pub bench_cpu_cores: Option<f64>,
    pub server_cpu_micros_per_event: Option<f64>,
}

/// The latency phase.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyFigures {
    pub target_events_per_second: u32,
    pub events_per_publish: u32,
    pub seconds: f64,
    pub published: u64,
    /// Events per second the publisher achieved (requests answered over the run).
    pub published_per_second: f64,
    pub received: u64,
    pub pulls: u64,
    pub deliveries_per_pull: f64,
    pub p50_millis: f64,
    pub p99_millis: f64,
    pub p999_millis: f64,
    pub max_millis: f64,
    /// From sending a publish to its 201 (the publish's fsync included).
    pub publish_p50_millis: f64,
    pub publish_p99_millis: f64,
    pub server_cpu_cores: Option<f64>,
}

/// Runs both phases against a fresh server and reports; `progress` hears a line per step.
pub fn run(options: &QueueOptions, progress: &mut dyn FnMut(&str)) -> anyhow::Result<QueueReport> {
    ensure!(options.consumers >= 1, "--consumers must be at least 1");
    ensure!(
        (1..=1000).contains(&options.pull_max),
        "--pull-max must be between 1 and 1000"
    );
    ensure!(
        options.events >= u64::from(PREFILL_BATCH)
            && options.events.is_multiple_of(u64::from(PREFILL_BATCH)),
        "--events must be a positive multiple of {PREFILL_BATCH}"
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
        "herald-bench-queue-",
        options.allow_in_memory,
        options.client_threads,
        &options.fsync,
    )?;
    let base_url = process.url();
    progress(&format!(
        "herald serve at {base_url} (fsync {}), data in {} on {} ({})",
        options.fsync,
        process.data_directory().display(),
        machine.filesystem.device,
        machine.filesystem.kind,
    ));
    let phases = (|| {
        let throughput = throughput_phase(&runtime, &base_url, options, &process, progress)?;
        process.check_running()?;
        let latency = latency_phase(&runtime, &base_url, options, &process, progress)?;
        process.check_running()?;
        anyhow::Ok((throughput, latency))
    })();
    let (throughput, latency) = match phases {
        Ok(phases) => phases,
        Err(error) => {
            let log = process.log_tail();
            // Dropping the process kills it and removes its directory.
            drop(process);
            return Err(error.context(format!("server log:\n{log}")));
        }
    };
    process.stop()?;
    let goals = goals(options, &throughput, &latency);
    scratch.close().context("removing the bench directory")?;
    Ok(QueueReport {
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
        client_threads: options.client_threads,
        quick: options.quick,
        throughput,
        latency,
        goals,
    })
}

/// An HTTP client for one connection of the load.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(90))
        .build()
        .context("building an HTTP client")
}

fn create_subscription(
    runtime: &tokio::runtime::Runtime,
    base_url: &str,
    name: &str,
    start: &str,
) -> anyhow::Result<()> {
    let settings = serde_json::json!({ "topics": [TOPIC], "start": start, "mode": "queue" });
    runtime.block_on(publish_load::put_json(
        &format!("{base_url}/v1/subscriptions/{name}"),
        &settings,
    ))
}

fn throughput_phase(
    runtime: &tokio::runtime::Runtime,
    base_url: &str,
    options: &QueueOptions,
    process: &HeraldProcess,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<ThroughputFigures> {
    runtime.block_on(publish_load::create_topic(
        base_url,
        TOPIC,
        options.partitions,
        None,
    ))?;
    create_subscription(runtime, base_url, THROUGHPUT_SUBSCRIPTION, "earliest")?;
    let prefill_started = Instant::now();
    let source = publish_load::event_source(&publish_load::run_tag(), 0);
    let mut template = BatchTemplate::new(source, PREFILL_BATCH, options.event_bytes)?;
    let url = format!("{base_url}/v1/topics/{TOPIC}/events");
    let batches = options.events / u64::from(PREFILL_BATCH);
    runtime.block_on(async {
        let client = client()?;
        for _ in 0..batches {
            publish_load::publish_batch(&client, &url, &mut template).await?;
        }
        anyhow::Ok(())
    })?;
    let prefill_seconds = prefill_started.elapsed().as_secs_f64();
    let prefill_events_per_second = options.events as f64 / prefill_seconds;
    progress(&format!(
        "throughput: filled {} events of {} B in {prefill_seconds:.1} s ({prefill_events_per_second:.0} events/s); draining with {} consumers, pulls of {}",
        options.events, options.event_bytes, options.consumers, options.pull_max
    ));

    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let bench_before = machine::process_cpu_seconds();
    let server_before = process.cpu_seconds();
    let mut tasks = Vec::new();
    for number in 0..options.consumers {
        let settings = Drain {
            client: client()?,
            pull_url: format!("{base_url}/v1/subscriptions/{THROUGHPUT_SUBSCRIPTION}/pull"),
            ack_url: format!("{base_url}/v1/subscriptions/{THROUGHPUT_SUBSCRIPTION}/ack"),
            pull_body: Bytes::from(format!(
                r#"{{"max":{},"consumer":"c{number}","wait":"1s"}}"#,
                options.pull_max
            )),
            target: options.events,
            acked: acked.clone(),
            server_pid: process.pid(),
        };
        tasks.push(runtime.spawn(drain(settings)));
    }
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await);
        }
        results
    });
    let mut runs = Vec::new();
    let mut errors = Vec::new();
    for (number, result) in results.into_iter().enumerate() {
        match result {
            Ok(Ok(run)) => runs.push(run),
            Ok(Err(error)) => errors.push(format!("consumer c{number}: {error:#}")),
            Err(error) => errors.push(format!("consumer c{number} panicked: {error}")),
        }
    }
    if !errors.is_empty() {
        bail!("the drain failed:\n  {}", errors.join("\n  "));
    }
    let done = runs
        .iter()
        .find_map(|run| run.completed)
        .context("no consumer saw the last ack")?;
    let elapsed = done.at - started;
    let (bench_after, server_after) = (done.bench_cpu_seconds, done.server_cpu_seconds);
    let total_acked = acked.load(Ordering::Relaxed);
    ensure!(
        total_acked == options.events,
        "acked {total_acked} events, expected exactly {}",
        options.events
    );
    let seconds = elapsed.as_secs_f64();
    let events_per_second = options.events as f64 / seconds;
    let mut pull_latencies = Vec::new();
    let mut ack_latencies = Vec::new();
    let (mut pulls, mut empty_pulls, mut acks, mut redeliveries) = (0, 0, 0, 0);
    for run in runs {
        pulls += run.pulls;
        empty_pulls += run.empty_pulls;
        acks += run.acks;
        redeliveries += run.redeliveries;
        pull_latencies.extend(run.pull_micros);
        ack_latencies.extend(run.ack_micros);
    }
    pull_latencies.sort_unstable();
    ack_latencies.sort_unstable();
    let server_cpu_cores = server_before
        .zip(server_after)
        .map(|(before, after)| (after - before) / seconds);
    let figures = ThroughputFigures {
        events: options.events,
        consumers: options.consumers,
        pull_max: options.pull_max,
        prefill_events_per_second,
        elapsed_seconds: seconds,
        events_per_second,
        pulls,
        empty_pulls,
        acks,
        deliveries_per_pull: options.events as f64 / (pulls - empty_pulls).max(1) as f64,
        redeliveries,
        pull_p50_millis: percentile_millis(&pull_latencies, 0.50),
        pull_p99_millis: percentile_millis(&pull_latencies, 0.99),
        ack_p50_millis: percentile_millis(&ack_latencies, 0.50),
        ack_p99_millis: percentile_millis(&ack_latencies, 0.99),
        server_cpu_cores,
        bench_cpu_cores: bench_before
            .zip(bench_after)
            .map(|(before, after)| (after - before) / seconds),
        server_cpu_micros_per_event: server_before
            .zip(server_after)
            .map(|(before, after)| (after - before) / options.events as f64 * 1e6),
    };
    progress(&format!(
        "throughput: {events_per_second:.0} acked events/s ({seconds:.2} s), pull p50 {:.2} ms p99 {:.2} ms, ack p50 {:.2} ms p99 {:.2} ms",
        figures.pull_p50_millis,
        figures.pull_p99_millis,
        figures.ack_p50_millis,
        figures.ack_p99_millis
    ));
    Ok(figures)
}

/// One competing consumer of the throughput phase.
struct Drain {
    client: reqwest::Client,
    pull_url: String,
    ack_url: String,
    pull_body: Bytes,
    target: u64,
    /// Acked by all consumers together.
    acked: Arc<AtomicU64>,
    server_pid: Option<u32>,
}

#[derive(Debug, Default)]
struct DrainRun {
    pulls: u64,
    empty_pulls: u64,
    acks: u64,
    redeliveries: u64,
    pull_micros: Vec<u32>,
    ack_micros: Vec<u32>,
    /// When this consumer's ack brought the count to the target.
    completed: Option<Completion>,
}

/// The moment the last event was acked, and the CPU times then.
#[derive(Debug, Clone, Copy)]
struct Completion {
    at: Instant,
    server_cpu_seconds: Option<f64>,
    bench_cpu_seconds: Option<f64>,
}

fn micros_since(start: Instant) -> u32 {
    u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX)
}

async fn drain(settings: Drain) -> anyhow::Result<DrainRun> {
    let mut run = DrainRun::default();
    while settings.acked.load(Ordering::Relaxed) < settings.target {
        let sent = Instant::now();
        let answer = pull(
            &settings.client,
            &settings.pull_url,
            settings.pull_body.clone(),
        )
        .await?;
        let pull_micros = micros_since(sent);
        run.pulls += 1;
        let deliveries = Deliveries::parse(&answer)?;
        if deliveries.receipts.is_empty() {
            // A long poll that timed out (the end of the drain): no pull latency.
            run.empty_pulls += 1;
            continue;
        }
        run.pull_micros.push(pull_micros);
        run.redeliveries += deliveries.redeliveries;
        let sent = Instant::now();
        ack(&settings.client, &settings.ack_url, &deliveries.receipts).await?;
        run.ack_micros.push(micros_since(sent));
        run.acks += 1;
        let count = deliveries.receipts.len() as u64;
        let before = settings.acked.fetch_add(count, Ordering::Relaxed);
        if before < settings.target && before + count >= settings.target {
            run.completed = Some(Completion {
                at: Instant::now(),
                server_cpu_seconds: settings.server_pid.and_then(machine::cpu_seconds_of),
                bench_cpu_seconds: machine::process_cpu_seconds(),
            });
        }
    }
    Ok(run)
}

/// `POST .../pull`; the answer, which must be 200.
pub(crate) async fn pull(
    client: &reqwest::Client,
    url: &str,
    body: Bytes,
) -> anyhow::Result<Bytes> {
    let (status, answer) = publish_load::post(client, url, JSON, body).await?;
    if status != StatusCode::OK {
        bail!(
            "POST {url} answered {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(500)])
        );
    }
    Ok(answer)
}

/// `POST .../ack` of `receipts` (JSON strings, quotes included); every result must be `ok`.
pub(crate) async fn ack(
    client: &reqwest::Client,
    url: &str,
    receipts: &[&[u8]],
) -> anyhow::Result<()> {
    let mut body = Vec::with_capacity(16 + receipts.iter().map(|r| r.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"receipts\":[");
    for (number, receipt) in receipts.iter().enumerate() {
        if number > 0 {
            body.push(b',');
        }
        body.extend_from_slice(receipt);
    }
    body.extend_from_slice(b"]}");
    let (status, answer) = publish_load::post(client, url, JSON, Bytes::from(body)).await?;
    let ok = count(&answer, b"\"status\":\"ok\"");
    if status != StatusCode::OK || ok != receipts.len() {
        bail!(
            "POST {url} of {} receipts answered {status} with {ok} \"ok\": {}",
            receipts.len(),
            String::from_utf8_lossy(&answer[..answer.len().min(500)])
        );
    }
    Ok(())
}

/// Occurrences of `needle` in `haystack`.
pub(crate) fn count(haystack: &[u8], needle: &[u8]) -> usize {
    let mut found = 0;
    let mut at = 0;
    while let Some(offset) = find(&haystack[at..], needle) {
        found += 1;
        at += offset + needle.len();
    }
    found
}

/// What a pull answer holds, read by byte search.
#[derive(Debug)]
pub(crate) struct Deliveries<'a> {
    /// Each delivery's receipt as a JSON string, quotes included.
    pub(crate) receipts: Vec<&'a [u8]>,
    /// Deliveries with an `attempt` other than 1.
    pub(crate) redeliveries: u64,
    /// Each delivery's `sent_us` (latency phase only; empty when the events carry none).
    pub(crate) sent_micros: Vec<u64>,
}

impl<'a> Deliveries<'a> {
    pub(crate) fn parse(answer: &'a [u8]) -> anyhow::Result<Deliveries<'a>> {
        const RECEIPT: &[u8] = b"{\"receipt\":\"";
        const ATTEMPT: &[u8] = b",\"attempt\":";
        const SENT: &[u8] = b"\"sent_us\":";
        ensure!(
            answer.starts_with(b"{\"deliveries\":["),
            "a pull answered {}",
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        );
        let mut deliveries = Deliveries {
            receipts: Vec::new(),
            redeliveries: 0,
            sent_micros: Vec::new(),
        };
        let mut at = 0;
        while let Some(offset) = find(&answer[at..], RECEIPT) {
            let start = at + offset + RECEIPT.len() - 1;
            let mut end = start + 1;
            while end < answer.len() && answer[end] != b'"' {
                end += if answer[end] == b'\\' { 2 } else { 1 };
            }
            ensure!(end < answer.len(), "a receipt is not terminated");
            deliveries.receipts.push(&answer[start..=end]);
            at = end + 1;
            ensure!(
                answer[at..].starts_with(ATTEMPT),
                "no attempt after a receipt"
            );
            at += ATTEMPT.len();
            if !answer[at..].starts_with(b"1,") {
                deliveries.redeliveries += 1;
            }
            // The event follows; its `sent_us`, if any, comes before the next receipt.
            let next = find(&answer[at..], RECEIPT).map_or(answer.len(), |offset| at + offset);
            if let Some(offset) = find(&answer[at..next], SENT) {
                let digits = &answer[at + offset + SENT.len()..next];
                let length = digits.iter().take_while(|b| b.is_ascii_digit()).count();
                let text = std::str::from_utf8(&digits[..length]).unwrap_or_default();
                deliveries
                    .sent_micros
                    .push(text.parse().context("a sent_us that is not a number")?);
            }
            at = next;
        }
        Ok(deliveries)
    }
}

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// A batch of `events` CloudEvents whose data is `{"sent_us":SENT,"filler":"…"}`, each of about
/// `event_bytes` bytes, ids `{first}`, `{first+1}`, ….
pub(crate) fn timed_batch(
    source: &str,
    first: u64,
    events: u32,
    event_bytes: usize,
    sent: u64,
) -> Bytes {
    let mut body = String::with_capacity(events as usize * (event_bytes + 1) + 2);
    body.push('[');
    for number in 0..u64::from(events) {
        if number > 0 {
            body.push(',');
        }
        let head = format!(
            "{{\"specversion\":\"1.0\",\"id\":\"{:016x}\",\"source\":\"{source}\",\"type\":\"{EVENT_TYPE}\",\
             \"datacontenttype\":\"application/json\",\"data\":{{\"sent_us\":{sent},\"filler\":\"",
            first + number
        );
        body.push_str(&head);
        let filler = event_bytes.saturating_sub(head.len() + 3);
        body.extend(std::iter::repeat_n('x', filler));
        body.push_str("\"}}");
    }
    body.push(']');
    Bytes::from(body)
}

fn latency_phase(
    runtime: &tokio::runtime::Runtime,
    base_url: &str,
    options: &QueueOptions,
    process: &HeraldProcess,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<LatencyFigures> {
    create_subscription(runtime, base_url, LATENCY_SUBSCRIPTION, "latest")?;
    let batch = options.latency_batch;
    let period = Duration::from_secs_f64(f64::from(batch) / f64::from(options.latency_rate));
    let batches = (options.latency_duration.as_secs_f64() / period.as_secs_f64()).round() as u64;
    ensure!(batches >= 1, "the latency phase is too short for one batch");
    let expected = batches * u64::from(batch);
    progress(&format!(
        "latency: publishing {} events/s ({batch} every {:.1} ms) for {:.1} s, one consumer long-polling",
        options.latency_rate,
        period.as_secs_f64() * 1e3,
        options.latency_duration.as_secs_f64(),
    ));
    let server_before = process.cpu_seconds();
    let started = Instant::now();
    let consumer = runtime.spawn(receive(
        client()?,
        format!("{base_url}/v1/subscriptions/{LATENCY_SUBSCRIPTION}/pull"),
        format!("{base_url}/v1/subscriptions/{LATENCY_SUBSCRIPTION}/ack"),
        expected,
    ));
    let publish_url = format!("{base_url}/v1/topics/{TOPIC}/events");
    let source = publish_load::event_source(&publish_load::run_tag(), 1);
    let event_bytes = options.event_bytes;
    let publisher = runtime.spawn(async move {
        let clients = (0..4)
            .map(|_| client())
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut requests = Vec::with_capacity(batches as usize);
        for number in 0..batches {
            interval.tick().await;
            // Each batch is its own request, on one of a few connections, so a slow publish
            // does not hold back the next one.
            let client = clients[number as usize % clients.len()].clone();
            let url = publish_url.clone();
            let body = timed_batch(
                &source,
                number * u64::from(batch),
                batch,
                event_bytes,
                unix_micros(),
            );
            requests.push(tokio::spawn(async move {
                let sent = Instant::now();
                let (status, answer) =
                    publish_load::post(&client, &url, publish_load::BATCH_CONTENT_TYPE, body)
                        .await?;
                publish_load::check_published(&url, status, &answer, u64::from(batch))?;
                anyhow::Ok(micros_since(sent))
            }));
        }
        let mut latencies = Vec::with_capacity(requests.len());
        for request in requests {
            latencies.push(request.await??);
        }
        anyhow::Ok(latencies)
    });
    let (published, received) = runtime.block_on(async {
        let published = publisher.await;
        let deadline = options.latency_duration + Duration::from_secs(30);
        let received = tokio::time::timeout(deadline, consumer).await;
        (published, received)
    });
    let mut publish_latencies = published.context("the publisher panicked")??;
    let publish_seconds = started.elapsed().as_secs_f64();
    let received = received
        .context("the consumer did not receive every event within 30 s of the end")?
        .context("the consumer panicked")??;
    let seconds = started.elapsed().as_secs_f64();
    let server_after = process.cpu_seconds();
    publish_latencies.sort_unstable();
    let mut latencies = received.latencies_micros;
    latencies.sort_unstable();
    let figures = LatencyFigures {
        target_events_per_second: options.latency_rate,
        events_per_publish: batch,
        seconds: options.latency_duration.as_secs_f64(),
        published: expected,
        published_per_second: expected as f64 / publish_seconds,
        received: latencies.len() as u64,
        pulls: received.pulls,
        deliveries_per_pull: latencies.len() as f64 / received.pulls.max(1) as f64,
        p50_millis: percentile_millis(&latencies, 0.50),
        p99_millis: percentile_millis(&latencies, 0.99),
        p999_millis: percentile_millis(&latencies, 0.999),
        max_millis: latencies
            .last()
            .map_or(0.0, |&micros| f64::from(micros) / 1e3),
        publish_p50_millis: percentile_millis(&publish_latencies, 0.50),
        publish_p99_millis: percentile_millis(&publish_latencies, 0.99),
        server_cpu_cores: server_before
            .zip(server_after)
            .map(|(before, after)| (after - before) / seconds),
    };
    progress(&format!(
        "latency: {} events, p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms ({:.1} deliveries per pull)",
        figures.received,
        figures.p50_millis,
        figures.p99_millis,
        figures.p999_millis,
        figures.max_millis,
        figures.deliveries_per_pull,
    ));
    Ok(figures)
}

#[derive(Debug, Default)]
struct ReceiveRun {
    pulls: u64,
    latencies_micros: Vec<u32>,
}

/// The latency phase's consumer: long-polls and acks until `expected` events have arrived.
async fn receive(
    client: reqwest::Client,
    pull_url: String,
    ack_url: String,
    expected: u64,
) -> anyhow::Result<ReceiveRun> {
    let body = Bytes::from_static(br#"{"max":100,"consumer":"latency","wait":"20s"}"#);
    let mut run = ReceiveRun::default();
    while (run.latencies_micros.len() as u64) < expected {
        let answer = pull(&client, &pull_url, body.clone()).await?;
        let now = unix_micros();
        run.pulls += 1;
        let deliveries = Deliveries::parse(&answer)?;
        ensure!(
            deliveries.sent_micros.len() == deliveries.receipts.len(),
            "{} of {} deliveries carry a sent_us",
            deliveries.sent_micros.len(),
            deliveries.receipts.len()
        );
        ensure!(deliveries.redeliveries == 0, "an event was delivered twice");
        run.latencies_micros.extend(
            deliveries
                .sent_micros
                .iter()
                .map(|&sent| u32::try_from(now.saturating_sub(sent)).unwrap_or(u32::MAX)),
        );
        if !deliveries.receipts.is_empty() {
            ack(&client, &ack_url, &deliveries.receipts).await?;
        }
    }
    Ok(run)
}

/// The issue's goals (not judged on a `--quick` run or without `fsync always`).
fn goals(
    options: &QueueOptions,
    throughput: &ThroughputFigures,
    latency: &LatencyFigures,
) -> Vec<Goal> {
    if options.quick || options.fsync != "always" {
        return Vec::new();
    }
    vec![
        Goal {
            goal: format!(
                "queue drain, fsync always, {} consumers, pull {} + ack, {} B events: >= 100,000 acked events/s",
                throughput.consumers, throughput.pull_max, options.event_bytes
            ),
            measured: format!(
                "{:.0} events/s ({:.0} % of the goal)",
                throughput.events_per_second,
                throughput.events_per_second / GOAL_EVENTS_PER_SECOND * 100.0
            ),
            met: throughput.events_per_second >= GOAL_EVENTS_PER_SECOND,
        },
        Goal {
            goal: format!(
                "publish → long-poll pull at {} events/s, fsync always: p99 < 10 ms",
                latency.target_events_per_second
            ),
            measured: format!("p99 {:.2} ms", latency.p99_millis),
            met: latency.p99_millis < GOAL_P99_MILLIS,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_answer_gives_receipts_attempts_and_send_times() {
        let answer = br#"{"deliveries":[{"receipt":"r1.a","attempt":1,"deadline":"2026-11-26T00:00:00Z","topic":"bench","partition":0,"offset":0,"event":{"id":"1","data":{"sent_us":1234,"filler":"x"}}},{"receipt":"r\"2","attempt":2,"deadline":"2026-11-26T00:00:00Z","topic":"bench","partition":1,"offset":5,"event":{"id":"2","data":{"sent_us":99}}}]}"#;
        let deliveries = Deliveries::parse(answer).expect("parses");
        assert_eq!(deliveries.receipts, [&br#""r1.a""#[..], &br#""r\"2""#[..]]);
        assert_eq!(deliveries.redeliveries, 1);
        assert_eq!(deliveries.sent_micros, [1234, 99]);
        let empty = Deliveries::parse(br#"{"deliveries":[]}"#).expect("parses");
        assert!(empty.receipts.is_empty());
        assert!(Deliveries::parse(br#"{"title":"not found"}"#).is_err());
    }

    #[test]
    fn a_timed_batch_is_valid_json_of_the_asked_size() {
        let body = timed_batch("/herald-bench/tag/c001", 7, 3, 1024, unix_micros());
        let events: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(events.len(), 3);
        assert_eq!(body.len(), 2 + 3 * 1024 + 2);
        assert_eq!(events[1]["id"], "0000000000000008");
        assert!(events[2]["data"]["sent_us"].as_u64().expect("a number") > 0);
    }

    #[test]
    fn counts_every_occurrence() {
        assert_eq!(
            count(
                br#"[{"status":"ok"},{"status":"ok"}]"#,
                b"\"status\":\"ok\""
            ),
            2
        );
        assert_eq!(count(b"", b"x"), 0);
    }
}
