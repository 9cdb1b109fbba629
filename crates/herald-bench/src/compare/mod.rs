//! `herald-bench compare`: the same workloads against Herald and against the brokers a user
//! would run instead, on this machine, in one run.
//!
//! The map:
//! - this module: the options, the plan (workloads × rounds × systems, the systems' order
//!   rotated every round so that each one runs early and late), the results, medians and
//!   Herald ÷ peer ratios, progress on stderr (indicatif);
//! - [`load`]: the load generator every system shares: workers stopped by a time window or a
//!   count, budgets for draining a backlog in parts, the fixed-rate latency run, CPU probes;
//! - [`herald`]: Herald, the real `herald serve` under `fsync always` and `fsync never`;
//! - [`nats`], [`rabbitmq`], [`postgres`], [`redis`]: the peers, each through its mainstream Rust
//!   client, each module saying how the workloads map onto it and which durability class it is.
//!
//! Every row carries its durability class: **fsync before ack** (the answer comes after an
//! fsync), **OS-buffered** (written to the page cache, synced later) or **not durable** (kept in
//! memory, or not stored at all). A peer's ratio is taken against the Herald of its class:
//! `fsync always` for "fsync before ack", `fsync never` for the others. A peer that cannot be
//! reached is reported as not available, never left out; a workload a peer has no counterpart
//! for is reported as not applicable.

pub mod herald;
pub mod load;
pub mod nats;
pub mod postgres;
pub mod rabbitmq;
pub mod redis;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use self::herald::HeraldTarget;
use self::load::{CpuMark, CpuProbe, LatencyRun, Run, Stop, Worker, run_workers_keeping};
use self::nats::NatsTarget;
use self::postgres::PostgresTarget;
use self::rabbitmq::RabbitTarget;
use self::redis::RedisTarget;
use crate::machine::{self, MachineFacts};
use crate::report::Goal;

/// The workloads, in the order they run (replay reads what the queue workload stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Publish,
    Queue,
    Replay,
    Fanout,
    Latency,
    RequestReply,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::Publish,
        Workload::Queue,
        Workload::Replay,
        Workload::Fanout,
        Workload::Latency,
        Workload::RequestReply,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Workload::Publish => "publish",
            Workload::Queue => "queue",
            Workload::Replay => "replay",
            Workload::Fanout => "fanout",
            Workload::Latency => "latency",
            Workload::RequestReply => "request-reply",
        }
    }

    /// Lower p99 is better for latency; higher rates for everything else.
    pub fn lower_is_better(self) -> bool {
        self == Workload::Latency
    }

    /// The number a row is ranked by: the p99 for latency, the rate otherwise.
    pub fn metric(self, measurement: &Measurement) -> Option<f64> {
        if self.lower_is_better() {
            measurement.p99_millis
        } else {
            Some(measurement.rate)
        }
    }
}

impl std::str::FromStr for Workload {
    type Err = String;

    fn from_str(text: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|workload| workload.id() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Workload::ALL.iter().map(|w| w.id()).collect();
                format!("unknown workload {text:?}; one of {}", names.join(", "))
            })
    }
}

/// What an acknowledgement promises about the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// The answer comes after the data was fsynced.
    FsyncBeforeAck,
    /// The answer comes once the data is written to the page cache; it is synced later.
    OsBuffered,
    /// Kept in memory only, or not stored at all.
    NotDurable,
}

impl Durability {
    pub fn label(self) -> &'static str {
        match self {
            Durability::FsyncBeforeAck => "fsync before ack",
            Durability::OsBuffered => "OS-buffered",
            Durability::NotDurable => "not durable",
        }
    }

    /// The Herald a peer of this class is compared with.
    fn herald(self) -> SystemId {
        match self {
            Durability::FsyncBeforeAck => SystemId::HeraldAlways,
            Durability::OsBuffered | Durability::NotDurable => SystemId::HeraldNever,
        }
    }
}

/// The systems, in the order the report lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SystemId {
    HeraldAlways,
    HeraldNever,
    Nats,
    RabbitMq,
    Postgres,
    Redis,
}

impl SystemId {
    pub const ALL: [SystemId; 6] = [
        SystemId::HeraldAlways,
        SystemId::HeraldNever,
        SystemId::Nats,
        SystemId::RabbitMq,
        SystemId::Postgres,
        SystemId::Redis,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemId::HeraldAlways => "Herald (fsync always)",
            SystemId::HeraldNever => "Herald (fsync never)",
            SystemId::Nats => "NATS JetStream",
            SystemId::RabbitMq => "RabbitMQ",
            SystemId::Postgres => "PostgreSQL",
            SystemId::Redis => "Redis Streams",
        }
    }

    /// The name `--systems` takes (both Herald rows are `herald`).
    pub fn option_name(self) -> &'static str {
        match self {
            SystemId::HeraldAlways | SystemId::HeraldNever => "herald",
            SystemId::Nats => "nats",
            SystemId::RabbitMq => "rabbitmq",
            SystemId::Postgres => "postgres",
            SystemId::Redis => "redis",
        }
    }

    pub fn is_herald(self) -> bool {
        matches!(self, SystemId::HeraldAlways | SystemId::HeraldNever)
    }
}

/// Where the peers are.
#[derive(Debug, Clone, Serialize)]
pub struct PeerAddresses {
    pub nats: String,
    pub amqp: String,
    /// libpq-style `key=value` settings without `dbname`.
    pub postgres: String,
    pub postgres_database: String,
    pub redis: String,
}

impl Default for PeerAddresses {
    fn default() -> PeerAddresses {
        PeerAddresses {
            nats: "nats://127.0.0.1:4222".to_owned(),
            amqp: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            postgres: "host=127.0.0.1 port=5432 user=postgres".to_owned(),
            postgres_database: "test".to_owned(),
            redis: "redis://127.0.0.1:6379/".to_owned(),
        }
    }
}

/// The sizes of every workload; the same for every system.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub event_bytes: usize,
    /// publish: concurrent producers, each with one batch in flight.
    pub producers: u32,
    pub publish_batch: u32,
    pub publish_warmup_seconds: f64,
    pub publish_seconds: f64,
    /// queue and replay: events stored before the rounds; the queue rounds drain it in parts.
    pub backlog_events: u64,
    /// Events per batch while filling the backlog (by `producers` producers).
    pub prefill_batch: u32,
    pub consumers: u32,
    pub pull_max: u32,
    pub fanout_subscriptions: u32,
    /// Events published per fan-out round, by one producer.
    pub fanout_events: u64,
    pub fanout_batch: u32,
    pub latency_rate: u32,
    /// Events per publish of the latency workload (one batch every `batch / rate` seconds).
    pub latency_batch: u32,
    pub latency_seconds: f64,
    /// Events per read (or prefetch) of the replay.
    pub replay_batch: u32,
    pub requesters: u32,
    pub request_warmup_seconds: f64,
    pub request_seconds: f64,
}

impl Settings {
    /// The full run: about 10-15 minutes with every peer on the 2-core development machine.
    pub fn full() -> Settings {
        Settings {
            event_bytes: 1024,
            producers: 4,
            publish_batch: 100,
            publish_warmup_seconds: 1.0,
            publish_seconds: 5.0,
            backlog_events: 1_000_000,
            prefill_batch: 1000,
            consumers: 4,
            pull_max: 100,
            fanout_subscriptions: 10,
            fanout_events: 40_000,
            fanout_batch: 100,
            latency_rate: 5000,
            latency_batch: 5,
            latency_seconds: 5.0,
            replay_batch: 1000,
            requesters: 4,
            request_warmup_seconds: 0.5,
            request_seconds: 3.0,
        }
    }

    /// Tiny sizes: checks that every system and workload still works, in seconds.
    pub fn quick() -> Settings {
        Settings {
            publish_warmup_seconds: 0.1,
            publish_seconds: 0.3,
            backlog_events: 2_000,
            prefill_batch: 100,
            fanout_events: 500,
            latency_seconds: 0.3,
            request_warmup_seconds: 0.1,
            request_seconds: 0.3,
            ..Settings::full()
        }
    }

    pub fn publish_stop(&self) -> Stop {
        Stop::Window {
            warmup: Duration::from_secs_f64(self.publish_warmup_seconds),
            duration: Duration::from_secs_f64(self.publish_seconds),
        }
    }

    pub fn request_stop(&self) -> Stop {
        Stop::Window {
            warmup: Duration::from_secs_f64(self.request_warmup_seconds),
            duration: Duration::from_secs_f64(self.request_seconds),
        }
    }

    pub fn latency_duration(&self) -> Duration {
        Duration::from_secs_f64(self.latency_seconds)
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.event_bytes >= 512, "events must be at least 512 B");
        ensure!(
            self.producers >= 1 && self.consumers >= 1 && self.requesters >= 1,
            "producers, consumers and requesters must be at least 1"
        );
        ensure!(
            (1..=1000).contains(&self.publish_batch)
                && (1..=1000).contains(&self.pull_max)
                && (1..=1000).contains(&self.fanout_batch)
                && (2..=1000).contains(&self.replay_batch),
            "batches and pulls must be between 1 and 1,000"
        );
        ensure!(
            self.prefill_batch >= 1
                && self.backlog_events >= 1
                && self
                    .backlog_events
                    .is_multiple_of(u64::from(self.prefill_batch)),
            "the backlog ({}) must be a positive multiple of the prefill batch ({})",
            self.backlog_events,
            self.prefill_batch
        );
        ensure!(
            self.fanout_events >= 1
                && self
                    .fanout_events
                    .is_multiple_of(u64::from(self.fanout_batch)),
            "the fan-out events must be a positive multiple of its batch ({})",
            self.fanout_batch
        );
        ensure!(
            self.latency_batch >= 1 && self.latency_rate >= self.latency_batch,
            "the latency rate must be at least its batch"
        );
        for (name, seconds) in [
            ("publish", self.publish_seconds),
            ("latency", self.latency_seconds),
            ("request", self.request_seconds),
        ] {
            ensure!(
                seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0,
                "--{name}-seconds must be more than 0 and at most 3600"
            );
        }
        Ok(())
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Herald's data goes to a fresh directory inside this one.
    pub scratch_root: PathBuf,
    pub binary: PathBuf,
    pub settings: Settings,
    pub rounds: u32,
    pub workloads: Vec<Workload>,
    /// `--systems` names (`herald`, `nats`, ...); empty for all.
    pub systems: Vec<String>,
    pub peers: PeerAddresses,
    pub client_threads: usize,
    pub quick: bool,
    pub allow_in_memory: bool,
    /// The command line, for the report.
    pub command: String,
}

/// The figures of one round of one system.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Measurement {
    /// Events per second (round trips per second for request/reply); for fan-out, events
    /// published per second with every subscriber having received them.
    pub rate: f64,
    pub events: u64,
    pub seconds: f64,
    /// Latencies: of each step (a batch's confirms, a pull + ack, a round trip), or, for the
    /// latency workload, of each event from publish to delivery.
    pub p50_millis: Option<f64>,
    pub p99_millis: Option<f64>,
    pub p999_millis: Option<f64>,
    pub max_millis: Option<f64>,
    /// CPU seconds per second: 2.0 is both cores of a 2-core machine.
    pub server_cpu_cores: Option<f64>,
    pub bench_cpu_cores: Option<f64>,
    /// What the rest of the machine used meanwhile (see [`load::CpuCores::other`]).
    pub other_cpu_cores: Option<f64>,
}

/// Above this many cores used by other processes, a round counts as disturbed.
pub const DISTURBED_CORES: f64 = 0.3;

impl Measurement {
    /// Whether something else used a noticeable share of the machine during the round (only
    /// said of rounds of a second or more: CPU time is counted in 10 ms ticks).
    pub fn disturbed(&self) -> bool {
        self.seconds >= 1.0
            && self
                .other_cpu_cores
                .is_some_and(|cores| cores > DISTURBED_CORES)
    }
}

impl From<Run> for Measurement {
    fn from(run: Run) -> Measurement {
        let steps = !run.step_micros.is_empty();
        Measurement {
            rate: run.events_per_second(),
            events: run.events,
            seconds: run.seconds,
            p50_millis: steps.then(|| run.step_percentile_millis(0.50)),
            p99_millis: steps.then(|| run.step_percentile_millis(0.99)),
            p999_millis: steps.then(|| run.step_percentile_millis(0.999)),
            max_millis: steps.then(|| run.step_percentile_millis(1.0)),
            server_cpu_cores: run.server_cpu_cores,
            bench_cpu_cores: run.bench_cpu_cores,
            other_cpu_cores: run.other_cpu_cores,
        }
    }
}

impl From<LatencyRun> for Measurement {
    fn from(run: LatencyRun) -> Measurement {
        Measurement {
            rate: if run.seconds > 0.0 {
                run.received as f64 / run.seconds
            } else {
                0.0
            },
            events: run.received,
            seconds: run.seconds,
            p50_millis: Some(run.p50_millis),
            p99_millis: Some(run.p99_millis),
            p999_millis: Some(run.p999_millis),
            max_millis: Some(run.max_millis),
            server_cpu_cores: run.server_cpu_cores,
            bench_cpu_cores: run.bench_cpu_cores,
            other_cpu_cores: run.other_cpu_cores,
        }
    }
}

/// What a system did in one round of a workload.
#[derive(Debug, Clone)]
pub enum Outcome {
    Measured(Measurement),
    /// The system has no counterpart for the workload.
    NotApplicable(String),
}

/// One producer publishing `events` while every subscriber receives all of them; the rate is
/// `events` over the time until the last subscriber has the last one.
pub(crate) async fn run_fanout<P: Worker, S: Worker>(
    producer: P,
    subscribers: Vec<S>,
    events: u64,
    server: &CpuProbe,
) -> anyhow::Result<Measurement> {
    let cpu_before = CpuMark::now(server);
    let started = Instant::now();
    let producing = run_workers_keeping(
        vec![producer],
        Stop::Count { target: events },
        &CpuProbe::None,
    );
    let consuming = futures_util::future::try_join_all(subscribers.into_iter().map(|subscriber| {
        run_workers_keeping(
            vec![subscriber],
            Stop::Count { target: events },
            &CpuProbe::None,
        )
    }));
    let ((produced, producer), consumed) = tokio::try_join!(producing, consuming)?;
    let seconds = started.elapsed().as_secs_f64();
    let cores = cpu_before.cores_until(&CpuMark::now(server));
    // Only now may the connections close (see `run_workers_keeping`).
    drop(producer);
    let consumed: Vec<Run> = consumed.into_iter().map(|(run, _)| run).collect();
    ensure!(
        produced.events == events,
        "published {} of {events}",
        produced.events
    );
    for (number, run) in consumed.iter().enumerate() {
        ensure!(
            run.events == events,
            "subscriber {number} received {} of {events}",
            run.events
        );
    }
    Ok(Measurement {
        rate: events as f64 / seconds,
        events,
        seconds,
        bench_cpu_cores: cores.bench,
        server_cpu_cores: cores.server,
        other_cpu_cores: cores.other,
        ..Measurement::default()
    })
}

/// A connected system.
#[derive(Debug)]
enum Target {
    Herald(HeraldTarget),
    Nats(NatsTarget),
    Rabbit(RabbitTarget),
    Postgres(PostgresTarget),
    Redis(RedisTarget),
}

/// Calls the same method on whichever system `$target` is.
macro_rules! on_target {
    ($target:expr, $system:ident => $call:expr) => {
        match $target {
            Target::Herald($system) => $call,
            Target::Nats($system) => $call,
            Target::Rabbit($system) => $call,
            Target::Postgres($system) => $call,
            Target::Redis($system) => $call,
        }
    };
}

impl Target {
    fn durability(&self, workload: Workload) -> Durability {
        on_target!(self, system => system.durability(workload))
    }

    fn design(&self, workload: Workload) -> &'static str {
        on_target!(self, system => system.design(workload))
    }

    fn describe(&self) -> String {
        match self {
            Target::Herald(herald) => format!("herald serve at {}", herald.url()),
            Target::Nats(nats) => nats.describe(),
            Target::Rabbit(rabbit) => rabbit.describe(),
            Target::Postgres(postgres) => postgres.describe(),
            Target::Redis(redis) => redis.describe(),
        }
    }

    fn not_applicable(&self, workload: Workload) -> Option<&'static str> {
        match (self, workload) {
            (Target::Postgres(_), Workload::Replay) => {
                Some("a queue table deletes what it delivers: nothing to replay")
            }
            (Target::Postgres(_) | Target::Redis(_), Workload::RequestReply) => {
                Some("no request/reply primitive")
            }
            _ => None,
        }
    }

    async fn run(
        &mut self,
        workload: Workload,
        settings: &Settings,
        round: u32,
        part: u64,
    ) -> anyhow::Result<Outcome> {
        if let Some(reason) = self.not_applicable(workload) {
            return Ok(Outcome::NotApplicable(reason.to_owned()));
        }
        match (self, workload) {
            (target, Workload::Publish) => {
                on_target!(target, system => system.publish(settings, round).await)
            }
            (target, Workload::Queue) => {
                on_target!(target, system => system.drain(settings, part, round).await)
            }
            (target, Workload::Fanout) => {
                on_target!(target, system => system.fanout(settings, round).await)
            }
            (target, Workload::Latency) => {
                on_target!(target, system => system.latency(settings, round).await)
            }
            (Target::Herald(system), Workload::Replay) => system.replay(settings, round).await,
            (Target::Nats(system), Workload::Replay) => system.replay(settings, round).await,
            (Target::Rabbit(system), Workload::Replay) => system.replay(settings, round).await,
            (Target::Redis(system), Workload::Replay) => system.replay(settings, round).await,
            (Target::Herald(system), Workload::RequestReply) => {
                system.request_reply(settings, round).await
            }
            (Target::Nats(system), Workload::RequestReply) => {
                system.request_reply(settings, round).await
            }
            (Target::Rabbit(system), Workload::RequestReply) => {
                system.request_reply(settings, round).await
            }
            (Target::Postgres(_) | Target::Redis(_), _) => {
                unreachable!("answered by not_applicable above")
            }
        }
    }

    async fn prefill(&mut self, settings: &Settings) -> anyhow::Result<Outcome> {
        on_target!(self, system => system.prefill(settings).await)
    }

    async fn cleanup(&mut self) -> anyhow::Result<()> {
        match self {
            // The server is stopped (and its data deleted) after the runtime work is done.
            Target::Herald(_) => Ok(()),
            Target::Nats(nats) => nats.cleanup().await,
            Target::Rabbit(rabbit) => rabbit.cleanup().await,
            Target::Postgres(postgres) => postgres.cleanup().await,
            Target::Redis(redis) => redis.cleanup().await,
        }
    }
}

/// One system of the run: connected, or why not.
#[derive(Debug, Clone, Serialize)]
pub struct SystemInfo {
    pub id: SystemId,
    pub name: String,
    pub available: bool,
    /// Version and settings when available; why not otherwise.
    pub description: String,
}

/// One round of one system in one workload.
#[derive(Debug, Clone, Serialize)]
pub struct RoundResult {
    pub round: u32,
    pub measurement: Option<Measurement>,
    pub error: Option<String>,
}

/// One row of a workload's table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub system: SystemId,
    pub name: String,
    pub durability: Option<Durability>,
    /// How the workload was mapped onto the system.
    pub design: String,
    /// `measured`, or why there are no figures: `not available: …`, `not applicable: …`,
    /// `error: …` (the rounds that worked are still listed).
    pub status: String,
    pub rounds: Vec<RoundResult>,
    /// Medians over the measured rounds, field by field.
    pub median: Option<Measurement>,
    /// The Herald row this row is compared with (none for Herald's own rows).
    pub compared_with: Option<SystemId>,
    /// The median over the rounds of Herald's metric divided by this row's (the rate, or the
    /// p99 for latency), each round's pair measured in the same round.
    pub herald_ratio: Option<f64>,
}

/// One workload's results.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadResult {
    pub workload: Workload,
    pub lower_is_better: bool,
    pub rows: Vec<Row>,
    /// Queue only: how fast each system's backlog was filled (not a measured workload).
    pub prefill: Vec<(SystemId, Option<Measurement>, Option<String>)>,
}

/// Everything one `herald-bench compare` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub git_commit: String,
    pub machine: MachineFacts,
    pub load_average_at_end: Option<f64>,
    pub command: String,
    pub quick: bool,
    pub rounds: u32,
    pub client_threads: usize,
    pub settings: Settings,
    pub systems: Vec<SystemInfo>,
    pub workloads: Vec<WorkloadResult>,
    pub goals: Vec<Goal>,
    pub seconds: f64,
    /// Rounds in which Herald failed: a harness or server problem (the run exits non-zero).
    pub herald_failures: u32,
}

/// The order systems run in round `round`: rotated by one place each round.
fn rotated<T: Copy>(systems: &[T], round: u32) -> Vec<T> {
    let mut order = systems.to_vec();
    if !order.is_empty() {
        let shift = round as usize % order.len();
        order.rotate_left(shift);
    }
    order
}

/// The events the queue workload drains in round `round`: the backlog split evenly, the last
/// part taking the remainder.
fn part(backlog: u64, rounds: u32, round: u32) -> u64 {
    let even = backlog / u64::from(rounds);
    if round + 1 == rounds {
        backlog - even * u64::from(rounds - 1)
    } else {
        even
    }
}

fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

fn median_of(
    measurements: &[&Measurement],
    field: impl Fn(&Measurement) -> Option<f64>,
) -> Option<f64> {
    let mut values: Vec<f64> = measurements.iter().filter_map(|m| field(m)).collect();
    median(&mut values)
}

fn median_measurement(measurements: &[&Measurement]) -> Option<Measurement> {
    if measurements.is_empty() {
        return None;
    }
    Some(Measurement {
        rate: median_of(measurements, |m| Some(m.rate))?,
        events: median_of(measurements, |m| Some(m.events as f64))? as u64,
        seconds: median_of(measurements, |m| Some(m.seconds))?,
        p50_millis: median_of(measurements, |m| m.p50_millis),
        p99_millis: median_of(measurements, |m| m.p99_millis),
        p999_millis: median_of(measurements, |m| m.p999_millis),
        max_millis: median_of(measurements, |m| m.max_millis),
        server_cpu_cores: median_of(measurements, |m| m.server_cpu_cores),
        bench_cpu_cores: median_of(measurements, |m| m.bench_cpu_cores),
        other_cpu_cores: median_of(measurements, |m| m.other_cpu_cores),
    })
}

/// What `--systems` selects.
fn selected(options: &CompareOptions, system: SystemId) -> bool {
    options.systems.is_empty()
        || options
            .systems
            .iter()
            .any(|name| name == system.option_name())
}

/// The results gathered while the run goes on.
#[derive(Default)]
struct Results {
    rounds: BTreeMap<(Workload, SystemId), Vec<RoundResult>>,
    prefill: BTreeMap<SystemId, Result<Measurement, String>>,
    not_applicable: BTreeMap<(Workload, SystemId), String>,
}

/// Runs every selected workload against every selected system and reports.
pub fn run(options: &CompareOptions) -> anyhow::Result<CompareReport> {
    options.settings.check()?;
    ensure!(options.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        options.client_threads >= 1,
        "--client-threads must be at least 1"
    );
    ensure!(!options.workloads.is_empty(), "no workload selected");
    for name in &options.systems {
        ensure!(
            SystemId::ALL
                .iter()
                .any(|system| system.option_name() == name),
            "unknown system {name:?}; one of herald, nats, rabbitmq, postgres, redis"
        );
    }
    let run_started = Instant::now();
    let settings = &options.settings;
    let (scratch, machine) = machine::scratch_directory(
        &options.scratch_root,
        "herald-bench-compare-",
        options.allow_in_memory,
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.client_threads)
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;

    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("the progress template is valid")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(250));
    let say = |line: &str| bar.suspend(|| eprintln!("{line}"));

    // Connect to every system; one that cannot be reached is reported, not dropped.
    let mut systems = Vec::new();
    let mut targets: Vec<(SystemId, Target)> = Vec::new();
    for system in SystemId::ALL {
        if !selected(options, system) {
            continue;
        }
        bar.set_message(format!("connecting to {}", system.name()));
        let connected: anyhow::Result<Target> = match system {
            SystemId::HeraldAlways | SystemId::HeraldNever => {
                let fsync = if system == SystemId::HeraldAlways {
                    "always"
                } else {
                    "never"
                };
                HeraldTarget::start(
                    &options.binary,
                    &scratch.path().join(format!("herald-{fsync}")),
                    fsync,
                    &runtime,
                )
                .map(Target::Herald)
            }
            SystemId::Nats => runtime
                .block_on(NatsTarget::connect(&options.peers.nats, settings))
                .map(Target::Nats),
            SystemId::RabbitMq => runtime
                .block_on(RabbitTarget::connect(&options.peers.amqp, settings))
                .map(Target::Rabbit),
            SystemId::Postgres => runtime
                .block_on(PostgresTarget::connect(
                    &options.peers.postgres,
                    &options.peers.postgres_database,
                    settings,
                ))
                .map(Target::Postgres),
            SystemId::Redis => runtime
                .block_on(RedisTarget::connect(&options.peers.redis, settings))
                .map(Target::Redis),
        };
        match connected {
            Ok(target) => {
                let description = target.describe();
                say(&format!("{}: {description}", system.name()));
                systems.push(SystemInfo {
                    id: system,
                    name: system.name().to_owned(),
                    available: true,
                    description,
                });
                targets.push((system, target));
            }
            Err(error) if system.is_herald() => {
                return Err(error.context(format!("starting {}", system.name())));
            }
            Err(error) => {
                let reason = format!("not available: {error:#}");
                say(&format!("{}: {reason}", system.name()));
                systems.push(SystemInfo {
                    id: system,
                    name: system.name().to_owned(),
                    available: false,
                    description: reason,
                });
            }
        }
    }

    let mut workloads = options.workloads.clone();
    workloads.sort();
    workloads.dedup();
    let cells_per_round = targets.len() as u64;
    let prefill_cells = if workloads.contains(&Workload::Queue) {
        cells_per_round
    } else {
        0
    };
    bar.set_length(
        cells_per_round * u64::from(options.rounds) * workloads.len() as u64 + prefill_cells,
    );

    let mut results = Results::default();
    let mut herald_failures = 0;
    let order: Vec<usize> = (0..targets.len()).collect();
    for &workload in &workloads {
        if workload == Workload::Queue {
            for &index in &order {
                let (system, target) = &mut targets[index];
                bar.set_message(format!("queue · filling the backlog · {}", system.name()));
                let outcome = runtime.block_on(target.prefill(settings));
                let outcome = match outcome {
                    Ok(Outcome::Measured(measurement)) => {
                        say(&format!(
                            "queue: {} filled {} events at {:.0} events/s",
                            system.name(),
                            measurement.events,
                            measurement.rate
                        ));
                        Ok(measurement)
                    }
                    Ok(Outcome::NotApplicable(reason)) => Err(reason),
                    Err(error) => {
                        say(&format!(
                            "queue: {} could not fill its backlog: {error:#}",
                            system.name()
                        ));
                        if system.is_herald() {
                            herald_failures += 1;
                        }
                        Err(format!("{error:#}"))
                    }
                };
                results.prefill.insert(*system, outcome);
                bar.inc(1);
            }
        }
        for round in 0..options.rounds {
            let part = part(settings.backlog_events, options.rounds, round);
            for index in rotated(&order, round) {
                let (system, target) = &mut targets[index];
                bar.set_message(format!(
                    "{} · round {}/{} · {}",
                    workload.id(),
                    round + 1,
                    options.rounds,
                    system.name()
                ));
                let result = if workload == Workload::Queue
                    && !matches!(results.prefill.get(system), Some(Ok(_)))
                {
                    Err(anyhow::anyhow!("the backlog could not be filled"))
                } else {
                    runtime.block_on(target.run(workload, settings, round, part))
                };
                let result = result.and_then(|outcome| {
                    if let Target::Herald(herald) = target {
                        herald.check_running()?;
                    }
                    Ok(outcome)
                });
                let round_result = match result {
                    Ok(Outcome::Measured(measurement)) => {
                        say(&format!(
                            "{} round {}: {}: {}{}",
                            workload.id(),
                            round + 1,
                            system.name(),
                            summary(workload, &measurement),
                            measurement
                                .other_cpu_cores
                                .map_or_else(String::new, |cores| {
                                    format!(
                                        " [other processes: {cores:.2} cores{}]",
                                        if measurement.disturbed() {
                                            ", disturbed"
                                        } else {
                                            ""
                                        }
                                    )
                                })
                        ));
                        RoundResult {
                            round,
                            measurement: Some(measurement),
                            error: None,
                        }
                    }
                    Ok(Outcome::NotApplicable(reason)) => {
                        results.not_applicable.insert((workload, *system), reason);
                        RoundResult {
                            round,
                            measurement: None,
                            error: None,
                        }
                    }
                    Err(error) => {
                        say(&format!(
                            "{} round {}: {} failed: {error:#}",
                            workload.id(),
                            round + 1,
                            system.name()
                        ));
                        if system.is_herald() {
                            herald_failures += 1;
                        }
                        RoundResult {
                            round,
                            measurement: None,
                            error: Some(format!("{error:#}")),
                        }
                    }
                };
                results
                    .rounds
                    .entry((workload, *system))
                    .or_default()
                    .push(round_result);
                bar.inc(1);
            }
        }
    }

    bar.set_message("cleaning up");
    let mut designs = BTreeMap::new();
    let mut durabilities = BTreeMap::new();
    for (system, target) in &mut targets {
        for workload in Workload::ALL {
            designs.insert((workload, *system), target.design(workload).to_owned());
            durabilities.insert((workload, *system), target.durability(workload));
        }
        if let Err(error) = runtime.block_on(target.cleanup()) {
            say(&format!("{}: cleaning up failed: {error:#}", system.name()));
        }
        if let Target::Herald(herald) = target
            && let Err(error) = herald.stop()
        {
            say(&format!("{}: stopping failed: {error:#}", system.name()));
            herald_failures += 1;
        }
    }
    drop(targets);
    runtime.shutdown_timeout(Duration::from_secs(5));
    bar.finish_and_clear();
    scratch.close().context("removing the bench directory")?;

    let workload_results: Vec<WorkloadResult> = workloads
        .iter()
        .map(|&workload| workload_result(workload, &systems, &results, &designs, &durabilities))
        .collect();
    let goals = if options.quick {
        Vec::new()
    } else {
        goals(&workload_results)
    };
    Ok(CompareReport {
        git_commit: machine::git_commit(),
        machine,
        load_average_at_end: machine::load_average(),
        command: options.command.clone(),
        quick: options.quick,
        rounds: options.rounds,
        client_threads: options.client_threads,
        settings: settings.clone(),
        systems,
        workloads: workload_results,
        goals,
        seconds: run_started.elapsed().as_secs_f64(),
        herald_failures,
    })
}

/// One line of progress for a measured round.
fn summary(workload: Workload, measurement: &Measurement) -> String {
    let millis = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
    match workload {
        Workload::Latency => format!(
            "p50 {} ms, p99 {} ms, p99.9 {} ms",
            millis(measurement.p50_millis),
            millis(measurement.p99_millis),
            millis(measurement.p999_millis)
        ),
        Workload::RequestReply => format!(
            "{:.0} round trips/s, p99 {} ms",
            measurement.rate,
            millis(measurement.p99_millis)
        ),
        _ => format!(
            "{:.0} events/s ({} events in {:.2} s)",
            measurement.rate, measurement.events, measurement.seconds
        ),
    }
}

fn workload_result(
    workload: Workload,
    systems: &[SystemInfo],
    results: &Results,
    designs: &BTreeMap<(Workload, SystemId), String>,
    durabilities: &BTreeMap<(Workload, SystemId), Durability>,
) -> WorkloadResult {
    let mut rows = Vec::new();
    for info in systems {
        let system = info.id;
        let rounds = results
            .rounds
            .get(&(workload, system))
            .cloned()
            .unwrap_or_default();
        let measured: Vec<&Measurement> = rounds
            .iter()
            .filter_map(|round| round.measurement.as_ref())
            .collect();
        let status = if !info.available {
            info.description.clone()
        } else if let Some(reason) = results.not_applicable.get(&(workload, system)) {
            format!("not applicable: {reason}")
        } else if let Some(error) = rounds.iter().find_map(|round| round.error.as_ref()) {
            format!("error: {error}")
        } else {
            "measured".to_owned()
        };
        let durability = durabilities.get(&(workload, system)).copied();
        rows.push(Row {
            system,
            name: info.name.clone(),
            durability,
            design: designs
                .get(&(workload, system))
                .cloned()
                .unwrap_or_default(),
            status,
            median: median_measurement(&measured),
            compared_with: durability
                .filter(|_| !system.is_herald())
                .map(Durability::herald),
            herald_ratio: None,
            rounds,
        });
    }
    // Each peer against the Herald of its class, round by round.
    let by_system: BTreeMap<SystemId, Vec<RoundResult>> = rows
        .iter()
        .map(|row| (row.system, row.rounds.clone()))
        .collect();
    for row in &mut rows {
        let Some(herald) = row.compared_with else {
            continue;
        };
        let Some(herald_rounds) = by_system.get(&herald) else {
            continue;
        };
        let mut ratios: Vec<f64> = row
            .rounds
            .iter()
            .filter_map(|round| {
                let peer = workload.metric(round.measurement.as_ref()?)?;
                let herald = herald_rounds
                    .iter()
                    .find(|other| other.round == round.round)?
                    .measurement
                    .as_ref()?;
                let herald = workload.metric(herald)?;
                (peer > 0.0).then(|| herald / peer)
            })
            .collect();
        row.herald_ratio = median(&mut ratios);
    }
    let prefill = if workload == Workload::Queue {
        systems
            .iter()
            .filter(|info| info.available)
            .filter_map(|info| {
                let outcome = results.prefill.get(&info.id)?;
                Some(match outcome {
                    Ok(measurement) => (info.id, Some(measurement.clone()), None),
                    Err(error) => (info.id, None, Some(error.clone())),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    WorkloadResult {
        workload,
        lower_is_better: workload.lower_is_better(),
        rows,
        prefill,
    }
}

/// The goals: at least 2x the best peer of the same class on publish, queue and
/// fan-out; a lower p99 than every peer of the class on latency. Herald `fsync always` is held
/// against the "fsync before ack" peers, `fsync never` against the "OS-buffered" ones; a peer
/// that is not durable is a reference, not a competitor, and is left out.
fn goals(workloads: &[WorkloadResult]) -> Vec<Goal> {
    let mut goals = Vec::new();
    for result in workloads {
        let workload = result.workload;
        if !matches!(
            workload,
            Workload::Publish | Workload::Queue | Workload::Fanout | Workload::Latency
        ) {
            continue;
        }
        for (herald, classes) in [
            (SystemId::HeraldAlways, &[Durability::FsyncBeforeAck][..]),
            (SystemId::HeraldNever, &[Durability::OsBuffered][..]),
        ] {
            let Some(herald_row) = result.rows.iter().find(|row| row.system == herald) else {
                continue;
            };
            let Some(herald_value) = herald_row
                .median
                .as_ref()
                .and_then(|median| workload.metric(median))
            else {
                continue;
            };
            let peers: Vec<(&Row, f64)> = result
                .rows
                .iter()
                .filter(|row| {
                    !row.system.is_herald()
                        && row.durability.is_some_and(|class| classes.contains(&class))
                })
                .filter_map(|row| Some((row, workload.metric(row.median.as_ref()?)?)))
                .collect();
            let class_names: Vec<&str> = classes.iter().map(|class| class.label()).collect();
            let class_names = class_names.join(" or ");
            if peers.is_empty() {
                goals.push(Goal {
                    goal: format!(
                        "{}: {} vs peers that are {class_names}",
                        workload.id(),
                        herald.name()
                    ),
                    measured: "no peer of this class measured".to_owned(),
                    met: false,
                });
                continue;
            }
            if workload.lower_is_better() {
                let worst_case = peers
                    .iter()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("peers is not empty");
                goals.push(Goal {
                    goal: format!(
                        "latency: {} p99 below every peer that is {class_names}",
                        herald.name()
                    ),
                    measured: format!(
                        "Herald p99 {herald_value:.2} ms; lowest peer p99 {:.2} ms ({})",
                        worst_case.1, worst_case.0.name
                    ),
                    met: herald_value < worst_case.1,
                });
            } else {
                let best = peers
                    .iter()
                    .max_by(|a, b| a.1.total_cmp(&b.1))
                    .expect("peers is not empty");
                let ratio = herald_value / best.1;
                goals.push(Goal {
                    goal: format!(
                        "{}: {} at least 2x the best peer that is {class_names}",
                        workload.id(),
                        herald.name()
                    ),
                    measured: format!(
                        "Herald {herald_value:.0}/s; best peer {:.0}/s ({}): {ratio:.2}x",
                        best.1, best.0.name
                    ),
                    met: ratio >= 2.0,
                });
            }
        }
    }
    goals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_starts_with_another_system() {
        let systems = [1, 2, 3];
        assert_eq!(rotated(&systems, 0), [1, 2, 3]);
        assert_eq!(rotated(&systems, 1), [2, 3, 1]);
        assert_eq!(rotated(&systems, 3), [1, 2, 3]);
        assert!(rotated::<u8>(&[], 2).is_empty());
    }

    #[test]
    fn the_backlog_is_drained_in_parts_that_add_up() {
        let parts: Vec<u64> = (0..3).map(|round| part(1_000_000, 3, round)).collect();
        assert_eq!(parts, [333_333, 333_333, 333_334]);
        assert_eq!(part(2000, 1, 0), 2000);
    }

    #[test]
    fn medians_take_the_middle_or_the_mean_of_the_two_middles() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn workloads_parse_from_their_ids() {
        for workload in Workload::ALL {
            assert_eq!(workload.id().parse::<Workload>(), Ok(workload));
        }
        assert!("queues".parse::<Workload>().is_err());
    }

    #[test]
    fn a_peer_is_compared_with_the_herald_of_its_class() {
        assert_eq!(Durability::FsyncBeforeAck.herald(), SystemId::HeraldAlways);
        assert_eq!(Durability::OsBuffered.herald(), SystemId::HeraldNever);
        assert_eq!(Durability::NotDurable.herald(), SystemId::HeraldNever);
    }

    fn row(system: SystemId, durability: Durability, rates: &[f64]) -> Row {
        let rounds: Vec<RoundResult> = rates
            .iter()
            .enumerate()
            .map(|(round, &rate)| RoundResult {
                round: round as u32,
                measurement: Some(Measurement {
                    rate,
                    ..Measurement::default()
                }),
                error: None,
            })
            .collect();
        let measured: Vec<&Measurement> = rounds
            .iter()
            .filter_map(|r| r.measurement.as_ref())
            .collect();
        Row {
            system,
            name: system.name().to_owned(),
            durability: Some(durability),
            design: String::new(),
            status: "measured".to_owned(),
            median: median_measurement(&measured),
            compared_with: None,
            herald_ratio: None,
            rounds,
        }
    }

    #[test]
    fn goals_compare_herald_with_the_best_peer_of_its_class() {
        let result = WorkloadResult {
            workload: Workload::Publish,
            lower_is_better: false,
            rows: vec![
                row(SystemId::HeraldAlways, Durability::FsyncBeforeAck, &[300.0]),
                row(SystemId::HeraldNever, Durability::OsBuffered, &[400.0]),
                row(SystemId::RabbitMq, Durability::FsyncBeforeAck, &[100.0]),
                row(SystemId::Postgres, Durability::FsyncBeforeAck, &[200.0]),
                row(SystemId::Nats, Durability::OsBuffered, &[250.0]),
                row(SystemId::Redis, Durability::NotDurable, &[900.0]),
            ],
            prefill: Vec::new(),
        };
        let goals = goals(&[result]);
        assert_eq!(goals.len(), 2);
        assert!(
            goals[0].measured.contains("PostgreSQL"),
            "{}",
            goals[0].measured
        );
        assert!(!goals[0].met, "1.5x is not 2x");
        assert!(goals[1].measured.contains("NATS"), "{}", goals[1].measured);
        assert!(!goals[1].met);
        assert!(
            goals.iter().all(|goal| !goal.measured.contains("Redis")),
            "a peer that is not durable is no competitor"
        );
    }
}
