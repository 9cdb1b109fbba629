//! `herald-bench publish`: Herald's durable publish throughput over HTTP, next to the raw disk.
//!
//! Each round runs, back to back:
//! 1. the raw-disk loop: `write` + `fdatasync` of one chunk the size of one batch frame as
//!    Herald stores it (the same events, ids, sources and types as headers), to a new file;
//! 2. Herald: a fresh `herald serve` (the real binary, see [`crate::herald_process`]) on a fresh
//!    data directory, one topic, and [`crate::publish_load`] posting batches from N connections.
//!    After a warm-up the window opens; the answers that arrive inside it are counted. Then the
//!    server gets SIGTERM and its data is deleted.
//!
//! A line of the report gives medians over the rounds, and the ratio to the raw disk is the
//! median of the per-round ratios (each compares figures taken seconds apart). With `--server`
//! the bench measures a server that is already running: it creates a topic per round, deletes it
//! afterwards, cannot read the server's CPU time or choose its fsync policy, and its raw-disk
//! loop runs on this machine's scratch directory, which may not be the server's disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use herald_log::LogConfig;
use serde::Serialize;

use crate::herald_process::{self, HeraldProcess};
use crate::log_bench::{median, median_cpu, median_of, raw_result};
use crate::machine::{self, MachineFacts};
use crate::publish_load::{self, LoadConfig, LoadRun};
use crate::raw_disk;
use crate::report::{Goal, RawResult, percentile_millis};
use crate::workload::Budget;

/// The goal for durable publishing, in events per second.
pub const GOAL_EVENTS_PER_SECOND: f64 = 600_000.0;

/// The topic on a server the bench started.
const MANAGED_TOPIC: &str = "bench";

/// Where the server comes from.
#[derive(Debug, Clone)]
pub enum ServerChoice {
    /// Start `binary serve --fsync POLICY` for each round.
    Start { binary: PathBuf, fsync: String },
    /// Use the server at this URL as it is.
    Existing { url: String },
}

/// What to run.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The raw loop's file and the server's data go to a fresh directory inside this one.
    pub scratch_root: PathBuf,
    pub server: ServerChoice,
    pub connections: u32,
    pub events_per_batch: u32,
    /// Bytes of each event's JSON.
    pub event_bytes: usize,
    pub partitions: u32,
    /// The topic's deduplication window (e.g. `2m`); the server's default when `None`.
    pub dedup_window: Option<String>,
    /// The measured window of each round (and the raw loop's time, within its byte limit).
    pub round_duration: Duration,
    pub warmup: Duration,
    pub rounds: u32,
    /// Worker threads of the load generator's Tokio runtime.
    pub client_threads: usize,
    pub quick: bool,
    pub allow_in_memory: bool,
    /// The command line, for the report.
    pub command: String,
}

impl PublishOptions {
    fn raw_budget(&self) -> Budget {
        Budget {
            duration: self.round_duration,
            bytes_max: if self.quick { 64 << 20 } else { 2 << 30 },
        }
    }
}

/// Everything one `herald-bench publish` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    pub git_commit: String,
    pub machine: MachineFacts,
    pub load_average_at_end: Option<f64>,
    pub command: String,
    /// `herald serve` started by the bench (its path), or the URL of an existing server.
    pub server: String,
    /// `always` or `never` when the bench started the server, else unknown.
    pub fsync: Option<String>,
    pub connections: u32,
    pub events_per_batch: u32,
    pub event_bytes: usize,
    pub partitions: u32,
    /// The topic's deduplication window when set by `--dedup-window`, else the server's default.
    pub dedup_window: Option<String>,
    /// Bytes of one request body.
    pub body_bytes: usize,
    /// Bytes of the log frame Herald writes for one batch: the raw loop's chunk.
    pub frame_bytes: usize,
    pub seconds_per_round: f64,
    pub warmup_seconds: f64,
    pub rounds: u32,
    pub client_threads: usize,
    pub quick: bool,
    pub herald: PublishFigures,
    pub raw: RawResult,
    /// The median over the rounds of Herald's events/s over the raw loop's, each round's pair
    /// measured back to back.
    pub ratio_to_raw: f64,
    pub round_results: Vec<PublishRound>,
    pub goals: Vec<Goal>,
}

/// Herald's figures: rates are medians over the rounds, latencies over every request.
#[derive(Debug, Clone, Serialize)]
pub struct PublishFigures {
    pub requests: u64,
    pub events: u64,
    pub events_per_second: f64,
    /// Event JSON bytes per second (10^6).
    pub payload_megabytes_per_second: f64,
    /// Log frame bytes per second (10^6): what reaches the disk, comparable with the raw loop.
    pub disk_megabytes_per_second: f64,
    pub requests_per_second: f64,
    pub latency_p50_millis: f64,
    pub latency_p99_millis: f64,
    pub latency_max_millis: f64,
    /// CPU seconds per second of the window: 2.0 is both cores of a 2-core machine.
    pub server_cpu_cores: Option<f64>,
    pub bench_cpu_cores: Option<f64>,
    /// CPU time per stored event, in microseconds (median over the rounds): what the server and
    /// the load generator each spend on one event.
    pub server_cpu_micros_per_event: Option<f64>,
    pub bench_cpu_micros_per_event: Option<f64>,
    /// Segment file bytes per stored event, read from the data directory at the end of a
    /// round: checks that the raw loop's chunk has Herald's size.
    pub segment_bytes_per_event: Option<f64>,
    /// Request bodies copied because the HTTP client still held them (0 is the cheap path).
    pub body_copies: u64,
}

/// One round: Herald right after its raw-disk loop.
#[derive(Debug, Clone, Serialize)]
pub struct PublishRound {
    pub events_per_second: f64,
    pub payload_megabytes_per_second: f64,
    pub requests_per_second: f64,
    pub latency_p50_millis: f64,
    pub latency_p99_millis: f64,
    pub raw_events_per_second: f64,
    pub raw_megabytes_per_second: f64,
    pub ratio_to_raw: f64,
    pub server_cpu_cores: Option<f64>,
    pub bench_cpu_cores: Option<f64>,
    pub server_cpu_micros_per_event: Option<f64>,
    pub bench_cpu_micros_per_event: Option<f64>,
    pub raw_cpu_cores: Option<f64>,
    pub segment_bytes_per_event: Option<f64>,
    /// How long the server took to stop after SIGTERM.
    pub shutdown_seconds: Option<f64>,
}

/// One round's Herald side.
struct HeraldRound {
    load: LoadRun,
    segment_bytes: Option<u64>,
    shutdown: Option<Duration>,
}

/// Runs the rounds and reports; `progress` hears a line per step.
pub fn run(
    options: &PublishOptions,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<PublishReport> {
    ensure!(options.rounds >= 1, "--rounds must be at least 1");
    ensure!(options.connections >= 1, "--connections must be at least 1");
    ensure!(options.events_per_batch >= 1, "--batch must be at least 1");
    ensure!(
        (1..=1024).contains(&options.partitions),
        "--partitions must be between 1 and 1024"
    );
    ensure!(
        options.client_threads >= 1,
        "--client-threads must be at least 1"
    );
    if let ServerChoice::Start { binary, fsync } = &options.server {
        herald_process::check_binary(binary)?;
        ensure!(
            matches!(fsync.as_str(), "always" | "never") || fsync.starts_with("interval:"),
            "--fsync must be always, never or interval:DURATION"
        );
    }
    let (scratch, machine) = machine::scratch_directory(
        &options.scratch_root,
        "herald-bench-publish-",
        options.allow_in_memory,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads)
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;

    let tag = publish_load::run_tag();
    let round_tag = |round: u32| format!("{tag}-r{round:02}");
    let limits = LogConfig::default().batch_limits();
    let frame_bytes = publish_load::frame_bytes(
        limits,
        &publish_load::event_source(&round_tag(1), 0),
        options.events_per_batch,
        options.event_bytes,
    )?;
    let body_bytes = publish_load::BatchTemplate::new(
        publish_load::event_source(&round_tag(1), 0),
        options.events_per_batch,
        options.event_bytes,
    )?
    .body_bytes();
    let events_per_frame_byte = f64::from(options.events_per_batch) / frame_bytes as f64;
    progress(&format!(
        "bench directory {} on {} ({}); {} round(s): raw write+fdatasync of {frame_bytes} B, then \
         {} connections x batches of {} x {} B for {:.1} s after {:.1} s of warm-up",
        scratch.path().display(),
        machine.filesystem.device,
        machine.filesystem.kind,
        options.rounds,
        options.connections,
        options.events_per_batch,
        options.event_bytes,
        options.round_duration.as_secs_f64(),
        options.warmup.as_secs_f64(),
    ));

    let mut raw_runs = Vec::new();
    let mut raw_rounds = Vec::new();
    let mut rounds = Vec::new();
    let mut latencies: Vec<u32> = Vec::new();
    let mut requests = 0u64;
    let mut events = 0u64;
    let mut body_copies = 0u64;
    let mut segment_figures = Vec::new();
    for round in 1..=options.rounds {
        let raw_path = scratch.path().join(format!("{round:02}-raw.data"));
        let raw = raw_disk::write_loop(&raw_path, frame_bytes, true, options.raw_budget())
            .with_context(|| format!("raw write+fdatasync in {}", raw_path.display()))?;
        settle(scratch.path())?;
        let raw_seconds = raw.elapsed.as_secs_f64();
        let raw_events_per_second = raw.bytes as f64 * events_per_frame_byte / raw_seconds;
        let raw_megabytes_per_second = raw.bytes as f64 / raw_seconds / 1e6;
        progress(&format!(
            "round {round}: raw write+fdatasync {frame_bytes} B {raw_events_per_second:>10.0} events/s {raw_megabytes_per_second:>8.1} MB/s"
        ));

        let load_config = LoadConfig {
            base_url: String::new(),
            topic: String::new(),
            connections: options.connections,
            events_per_batch: options.events_per_batch,
            event_bytes: options.event_bytes,
            warmup: options.warmup,
            duration: options.round_duration,
            run: round_tag(round),
        };
        let herald = match &options.server {
            ServerChoice::Start { binary, fsync } => {
                let directory = scratch.path().join(format!("{round:02}-herald"));
                managed_round(&runtime, binary, fsync, &directory, options, load_config)?
            }
            ServerChoice::Existing { url } => {
                let topic = format!("herald-bench-{}", round_tag(round));
                existing_round(&runtime, url, &topic, options, load_config)?
            }
        };
        settle(scratch.path())?;
        let load = herald.load;
        let seconds = load.elapsed.as_secs_f64();
        let events_per_second = load.events as f64 / seconds;
        let micros_per_event = |cores: Option<f64>| {
            cores
                .filter(|_| events_per_second > 0.0)
                .map(|cores| cores / events_per_second * 1e6)
        };
        let mut round_latencies = load.latencies_micros.clone();
        round_latencies.sort_unstable();
        let segment_bytes_per_event = herald
            .segment_bytes
            .filter(|_| load.events_total > 0)
            .map(|bytes| bytes as f64 / load.events_total as f64);
        segment_figures.extend(segment_bytes_per_event);
        let result = PublishRound {
            events_per_second,
            payload_megabytes_per_second: load.payload_bytes as f64 / seconds / 1e6,
            requests_per_second: load.requests as f64 / seconds,
            latency_p50_millis: percentile_millis(&round_latencies, 0.50),
            latency_p99_millis: percentile_millis(&round_latencies, 0.99),
            raw_events_per_second,
            raw_megabytes_per_second,
            ratio_to_raw: events_per_second / raw_events_per_second,
            server_cpu_cores: load.server_cpu_cores,
            bench_cpu_cores: load.bench_cpu_cores,
            server_cpu_micros_per_event: micros_per_event(load.server_cpu_cores),
            bench_cpu_micros_per_event: micros_per_event(load.bench_cpu_cores),
            raw_cpu_cores: raw.cpu_cores,
            segment_bytes_per_event,
            shutdown_seconds: herald.shutdown.map(|shutdown| shutdown.as_secs_f64()),
        };
        let cores = |cores: Option<f64>| cores.map_or("?".to_owned(), |c| format!("{c:.2}"));
        progress(&format!(
            "round {round}: herald {events_per_second:>10.0} events/s {:>8.1} MB/s payload, p50 {:.1} ms p99 {:.1} ms, CPU cores server {} bench {}, {:.2}x raw",
            result.payload_megabytes_per_second,
            result.latency_p50_millis,
            result.latency_p99_millis,
            cores(result.server_cpu_cores),
            cores(result.bench_cpu_cores),
            result.ratio_to_raw,
        ));
        requests += load.requests;
        events += load.events;
        body_copies += load.body_copies;
        latencies.extend(load.latencies_micros);
        raw_rounds.push((raw_events_per_second, raw_megabytes_per_second));
        raw_runs.push(raw);
        rounds.push(result);
    }
    latencies.sort_unstable();

    let raw = raw_result(
        format!("write+fdatasync {frame_bytes} B (one batch frame)"),
        &raw_runs,
        &raw_rounds,
    );
    let events_per_second = median_of(&rounds, |round| round.events_per_second);
    let herald = PublishFigures {
        requests,
        events,
        events_per_second,
        payload_megabytes_per_second: median_of(&rounds, |round| {
            round.payload_megabytes_per_second
        }),
        disk_megabytes_per_second: events_per_second / events_per_frame_byte / 1e6,
        requests_per_second: median_of(&rounds, |round| round.requests_per_second),
        latency_p50_millis: percentile_millis(&latencies, 0.50),
        latency_p99_millis: percentile_millis(&latencies, 0.99),
        latency_max_millis: latencies
            .last()
            .map_or(0.0, |&micros| f64::from(micros) / 1e3),
        server_cpu_cores: median_cpu(rounds.iter().map(|round| round.server_cpu_cores)),
        bench_cpu_cores: median_cpu(rounds.iter().map(|round| round.bench_cpu_cores)),
        server_cpu_micros_per_event: median_cpu(
            rounds.iter().map(|round| round.server_cpu_micros_per_event),
        ),
        bench_cpu_micros_per_event: median_cpu(
            rounds.iter().map(|round| round.bench_cpu_micros_per_event),
        ),
        segment_bytes_per_event: (!segment_figures.is_empty()).then(|| median(segment_figures)),
        body_copies,
    };
    let ratio_to_raw = median_of(&rounds, |round| round.ratio_to_raw);
    let (server, fsync) = match &options.server {
        ServerChoice::Start { binary, fsync } => (
            format!(
                "herald serve started by herald-bench ({})",
                binary.display()
            ),
            Some(fsync.clone()),
        ),
        ServerChoice::Existing { url } => (format!("existing server at {url}"), None),
    };
    let goals = goals(options, fsync.as_deref(), &herald, ratio_to_raw);
    scratch.close().context("removing the bench directory")?;
    Ok(PublishReport {
        git_commit: machine::git_commit(),
        machine,
        load_average_at_end: machine::load_average(),
        command: options.command.clone(),
        server,
        fsync,
        connections: options.connections,
        events_per_batch: options.events_per_batch,
        event_bytes: options.event_bytes,
        partitions: options.partitions,
        dedup_window: options.dedup_window.clone(),
        body_bytes,
        frame_bytes,
        seconds_per_round: options.round_duration.as_secs_f64(),
        warmup_seconds: options.warmup.as_secs_f64(),
        rounds: options.rounds,
        client_threads: options.client_threads,
        quick: options.quick,
        herald,
        raw,
        ratio_to_raw,
        round_results: rounds,
        goals,
    })
}

/// Starts a server, loads it, reads its segment sizes, stops it and deletes its data.
fn managed_round(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    fsync: &str,
    directory: &Path,
    options: &PublishOptions,
    mut load_config: LoadConfig,
) -> anyhow::Result<HeraldRound> {
    let mut process = HeraldProcess::start(binary, directory, fsync)?;
    process.wait_ready(runtime)?;
    load_config.base_url = process.url();
    load_config.topic = MANAGED_TOPIC.to_owned();
    runtime.block_on(publish_load::create_topic(
        &load_config.base_url,
        MANAGED_TOPIC,
        options.partitions,
        options.dedup_window.as_deref(),
    ))?;
    let load = publish_load::run_load(runtime, &load_config, &|| process.cpu_seconds())
        .with_context(|| format!("server log:\n{}", process.log_tail()));
    let load = match load {
        Ok(load) => load,
        Err(error) => {
            // Dropping the process kills it and removes its directory.
            drop(process);
            return Err(error);
        }
    };
    process.check_running()?;
    let segment_bytes = herald_process::segment_bytes(&process.data_directory()).ok();
    let (_, shutdown) = process.stop()?;
    Ok(HeraldRound {
        load,
        segment_bytes,
        shutdown: Some(shutdown),
    })
}

/// Loads a topic of its own on an existing server, then deletes it.
fn existing_round(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    topic: &str,
    options: &PublishOptions,
    mut load_config: LoadConfig,
) -> anyhow::Result<HeraldRound> {
    let url = url.trim_end_matches('/');
    load_config.base_url = url.to_owned();
    load_config.topic = topic.to_owned();
    runtime.block_on(publish_load::create_topic(
        url,
        topic,
        options.partitions,
        options.dedup_window.as_deref(),
    ))?;
    let load = publish_load::run_load(runtime, &load_config, &|| None);
    let deleted = runtime.block_on(publish_load::delete_topic(url, topic));
    let load = load?;
    deleted?;
    Ok(HeraldRound {
        load,
        segment_bytes: None,
        shutdown: None,
    })
}

/// Makes the last deletion durable, so that its journal commit is not paid by the next run.
fn settle(scratch: &Path) -> anyhow::Result<()> {
    File::open(scratch)
        .and_then(|directory| directory.sync_all())
        .with_context(|| format!("syncing {}", scratch.display()))
}

/// The goal: at least 600,000 durable events/s under `fsync always` (not judged on a
/// `--quick` run).
fn goals(
    options: &PublishOptions,
    fsync: Option<&str>,
    herald: &PublishFigures,
    ratio_to_raw: f64,
) -> Vec<Goal> {
    // The goal is about the workload; a --quick run checks that the bench works.
    if fsync != Some("always") || options.quick {
        return Vec::new();
    }
    vec![Goal {
        goal: format!(
            "durable publish over HTTP, fsync always, {} connections, batches of {} x {} B: >= 600,000 events/s",
            options.connections, options.events_per_batch, options.event_bytes
        ),
        measured: format!(
            "{:.0} events/s ({:.0} % of the goal; {:.2}x raw write+fdatasync of one batch frame)",
            herald.events_per_second,
            herald.events_per_second / GOAL_EVENTS_PER_SECOND * 100.0,
            ratio_to_raw
        ),
        met: herald.events_per_second >= GOAL_EVENTS_PER_SECOND,
    }]
}
