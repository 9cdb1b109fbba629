//! `herald-bench`: measures Herald on this machine. Parses flags and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::ensure;
use clap::{Args, Parser, Subcommand, ValueEnum};
use herald_bench::compare::{self, CompareOptions, PeerAddresses, Settings, Workload};
use herald_bench::herald_process;
use herald_bench::log_bench::{self, Options};
use herald_bench::machine::default_scratch_root;
use herald_bench::publish_bench::{self, PublishOptions, ServerChoice};
use herald_bench::push_bench::{self, PushOptions};
use herald_bench::queue_bench::{self, QueueOptions};
use herald_bench::request_bench::{self, RequestOptions};

#[derive(Debug, Parser)]
#[command(name = "herald-bench", about = "Measures Herald on this machine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The partition log's appends and reads, each next to a raw-disk loop doing the same I/O.
    Log(LogArgs),
    /// Durable publishing over HTTP: the real `herald serve` (started here, or --server) taking
    /// batches of CloudEvents from N connections, each round next to a raw write+fdatasync loop.
    Publish(PublishArgs),
    /// Queue subscriptions of the real `herald serve`: draining a pre-filled queue with competing
    /// consumers (pull + ack), then the publish-to-delivery latency of a long-polling consumer.
    Queue(QueueArgs),
    /// Action/response of the real `herald serve`: request → responder (pull, reply, ack) → 200
    /// round trips, with 1 and 16 concurrent requesters and at a fixed rate.
    Request(RequestArgs),
    /// Webhook (push) subscriptions of the real `herald serve`: deliveries/s of a backlog to a
    /// receiver in this process that answers 204 at once (1 and 16 subscriptions), then the
    /// publish-to-receipt latency at a fixed rate.
    Push(PushArgs),
    /// Side by side: the same workloads against Herald (fsync always and never) and the peers
    /// running on this machine (NATS JetStream, RabbitMQ, PostgreSQL, Redis Streams).
    Compare(CompareArgs),
}

#[derive(Debug, Args)]
struct CompareArgs {
    /// Tiny sizes: checks in seconds that every workload still runs against every system.
    #[arg(long)]
    quick: bool,
    /// Rounds; each runs every system once, in an order rotated every round [default: 3, or 1
    /// with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// The workloads to run, comma-separated [default: all]:
    /// publish, queue, replay, fanout, latency, request-reply.
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<Workload>,
    /// The systems to run, comma-separated [default: all]: herald, nats, rabbitmq, postgres,
    /// redis (`herald` is both fsync settings).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Events stored before the queue rounds (drained in parts, one per round) and read by the
    /// replay [default: 1000000, or 2000 with --quick].
    #[arg(long)]
    backlog: Option<u64>,
    /// Seconds measured per publish round [default: 5, or 0.3 with --quick].
    #[arg(long)]
    publish_seconds: Option<f64>,
    /// Events published per fan-out round [default: 40000, or 500 with --quick].
    #[arg(long)]
    fanout_events: Option<u64>,
    /// Seconds of each latency round [default: 5, or 0.3 with --quick].
    #[arg(long)]
    latency_seconds: Option<f64>,
    /// Events per publish of the latency workload.
    #[arg(long, default_value_t = 5)]
    latency_batch: u32,
    /// Seconds measured per request/reply round [default: 3, or 0.3 with --quick].
    #[arg(long)]
    request_seconds: Option<f64>,
    /// Bytes of each event.
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// Worker threads of the load generator (it shares the cores with the systems measured).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// NATS server URL.
    #[arg(long, default_value_t = PeerAddresses::default().nats)]
    nats: String,
    /// RabbitMQ AMQP URL.
    #[arg(long, default_value_t = PeerAddresses::default().amqp)]
    amqp: String,
    /// PostgreSQL connection settings (libpq key=value, without dbname).
    #[arg(long, default_value_t = PeerAddresses::default().postgres)]
    postgres: String,
    /// PostgreSQL database (`postgres` is tried when it does not exist).
    #[arg(long, default_value_t = PeerAddresses::default().postgres_database)]
    postgres_database: String,
    /// Redis URL.
    #[arg(long, default_value_t = PeerAddresses::default().redis)]
    redis: String,
    /// The herald binary to start [default: `herald` next to herald-bench].
    #[arg(long, value_name = "PATH")]
    herald: Option<PathBuf>,
    /// Where Herald's data goes (a fresh directory inside it, removed afterwards). Must be on
    /// the disk under test. Default: the workspace's target/ directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as markdown or as JSON.
    #[arg(long, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    /// Run even if the directory is in memory (tmpfs); Herald's figures are then meaningless.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// Concurrent requesters of the closed-loop cases (repeat or comma-separate) [default: 1,16].
    #[arg(long, value_delimiter = ',')]
    concurrency: Vec<u32>,
    /// Requests per second of the open-loop case.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Responders pulling the request queue.
    #[arg(long, default_value_t = 4)]
    responders: u32,
    /// Bytes of each request's data.
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// Seconds per case [default: 10, or 1 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// The fsync policy of the server [default: always].
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Worker threads of the load generator (it shares the cores with the server).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Short cases: checks that the bench works in a few seconds.
    #[arg(long)]
    quick: bool,
    /// The herald binary to start [default: `herald` next to herald-bench].
    #[arg(long, value_name = "PATH")]
    herald: Option<PathBuf>,
    /// Where the server's data goes (a fresh directory inside it, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as markdown or as JSON.
    #[arg(long, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    /// Run even if the directory is in memory (tmpfs); the figures are then meaningless.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Args)]
struct LogArgs {
    /// Where the data goes (a fresh directory inside it, removed afterwards). Must be on the
    /// disk under test, not tmpfs. Default: the workspace's target/ directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds per case, all rounds together [default: 3, or 0.3 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Rounds per case; each runs the raw-disk loop and then the log case, back to back
    /// [default: 3, or 1 with --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// Short cases and small sizes: checks that the bench works in a few seconds.
    #[arg(long)]
    quick: bool,
    /// Appender threads of the group commit case (batches of 1, fsync always).
    #[arg(long, default_value_t = 64)]
    writers: u32,
    /// Run only the cases whose id contains this, e.g. `batch1-` or `read` (ids are in the JSON
    /// output).
    #[arg(long)]
    only: Option<String>,
    /// Print the report as markdown or as JSON.
    #[arg(long, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    /// Run even if the directory is in memory (tmpfs); the figures are then meaningless.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// Concurrent connections, each with one request in flight [default: 16, or 4 with --quick].
    #[arg(long)]
    connections: Option<u32>,
    /// Events per request [default: 100, or 20 with --quick].
    #[arg(long)]
    batch: Option<u32>,
    /// Bytes of each event's JSON (the CloudEvent as stored).
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// Seconds measured per round (the raw loop runs as long, within 2 GiB) [default: 10, or 1
    /// with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Seconds of load before each round's measurement starts [default: 1, or 0.25 with
    /// --quick].
    #[arg(long)]
    warmup: Option<f64>,
    /// Rounds; each runs the raw-disk loop and then Herald, back to back [default: 3, or 1 with
    /// --quick].
    #[arg(long)]
    rounds: Option<u32>,
    /// The fsync policy of the server herald-bench starts [default: always].
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// The topic's deduplication window, e.g. 2m or 1ms [default: the server's, 2m].
    #[arg(long, value_name = "DURATION")]
    dedup_window: Option<String>,
    /// Worker threads of the load generator (it shares the cores with the server).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// About 3 seconds with small sizes: checks that the bench works, e.g. in CI.
    #[arg(long)]
    quick: bool,
    /// Measure the server at this URL (e.g. http://127.0.0.1:7070) instead of starting one; a
    /// topic is created per round and deleted afterwards.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The herald binary to start [default: `herald` next to herald-bench, e.g.
    /// target/release/herald].
    #[arg(long, value_name = "PATH")]
    herald: Option<PathBuf>,
    /// Where the raw loop's file and the server's data go (a fresh directory inside it, removed
    /// afterwards). Must be on the disk under test. Default: the workspace's target/ directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as markdown or as JSON.
    #[arg(long, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    /// Run even if the directory is in memory (tmpfs); the figures are then meaningless.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Args)]
struct QueueArgs {
    /// Events pre-filled and drained by the throughput phase, a multiple of 1,000 [default:
    /// 200000, or 20000 with --quick].
    #[arg(long)]
    events: Option<u64>,
    /// Competing consumers of the throughput phase.
    #[arg(long, default_value_t = 4)]
    consumers: u32,
    /// `max` of each pull of the throughput phase.
    #[arg(long, default_value_t = 100)]
    pull_max: u32,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Bytes of each event's JSON.
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// Events per second the latency phase publishes.
    #[arg(long, default_value_t = 5000)]
    latency_rate: u32,
    /// Events per publish request of the latency phase.
    #[arg(long, default_value_t = 50)]
    latency_batch: u32,
    /// Seconds of the latency phase [default: 10, or 2 with --quick].
    #[arg(long)]
    latency_seconds: Option<f64>,
    /// The fsync policy of the server [default: always].
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Worker threads of the load generator (it shares the cores with the server).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Small sizes: checks that the bench works in a few seconds.
    #[arg(long)]
    quick: bool,
    /// The herald binary to start [default: `herald` next to herald-bench].
    #[arg(long, value_name = "PATH")]
    herald: Option<PathBuf>,
    /// Where the server's data goes (a fresh directory inside it, removed afterwards). Must be on
    /// the disk under test. Default: the workspace's target/ directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as markdown or as JSON.
    #[arg(long, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    /// Run even if the directory is in memory (tmpfs); the figures are then meaningless.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Args)]
struct PushArgs {
    /// Events of the backlog delivered to one subscription [default: 100000, or 2000 with
    /// --quick].
    #[arg(long)]
    events: Option<u64>,
    /// Subscriptions of the fan-out case, all on one topic: every event is delivered this many
    /// times.
    #[arg(long, default_value_t = 16)]
    fanout: u32,
    /// Events of the fan-out case's backlog [default: 6000, or 200 with --quick].
    #[arg(long)]
    fanout_events: Option<u64>,
    /// `push.max_in_flight` of every subscription: requests at once per subscription.
    #[arg(long, default_value_t = 16)]
    max_in_flight: u32,
    /// `push.content_mode` of every subscription.
    #[arg(long, value_enum, default_value_t = PushContentMode::Structured)]
    content_mode: PushContentMode,
    /// Events per publish request while filling a backlog (each request is one batch frame in
    /// the log).
    #[arg(long, default_value_t = 100)]
    backlog_batch: u32,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Bytes of each event's JSON.
    #[arg(long, default_value_t = 1024)]
    event_bytes: usize,
    /// Events per second of the latency case.
    #[arg(long, default_value_t = 2000)]
    latency_rate: u32,
    /// Events per publish request of the latency case.
    #[arg(long, default_value_t = 1)]
    latency_batch: u32,
    /// Seconds of publishing in the latency case [default: 10, or 1 with --quick].
    #[arg(long)]
    latency_seconds: Option<f64>,
    /// The parts to run, comma-separated [default: all]: one, fanout, latency.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<PushPart>,
    /// The fsync policy of the server [default: always].
    #[arg(long, value_enum)]
    fsync: Option<Fsync>,
    /// Worker threads of the receiver and load generator (they share the cores with the
    /// server).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Small sizes: checks that the bench works in a few seconds.
    #[arg(long)]
    quick: bool,
    /// The herald binary to start [default: `herald` next to herald-bench].
    #[arg(long, value_name = "PATH")]
    herald: Option<PathBuf>,
    /// Where the server's data goes (a fresh directory inside it, removed afterwards). Must be on
    /// the disk under test. Default: the workspace's target/ directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Print the report as markdown or as JSON.
    #[arg(long, value_enum, default_value_t = Output::Markdown)]
    output: Output,
    /// Run even if the directory is in memory (tmpfs); the figures are then meaningless.
    #[arg(long)]
    allow_tmpfs: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PushContentMode {
    Structured,
    Binary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PushPart {
    One,
    Fanout,
    Latency,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Fsync {
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Markdown,
    Json,
}

impl Fsync {
    fn policy(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Never => "never",
        }
    }
}

impl Output {
    fn print(self, markdown: impl FnOnce() -> String, json: impl FnOnce() -> String) {
        match self {
            Output::Markdown => print!("{}", markdown()),
            Output::Json => println!("{}", json()),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(arguments) => run_log(arguments),
        Command::Publish(arguments) => run_publish(arguments),
        Command::Queue(arguments) => run_queue(arguments),
        Command::Request(arguments) => run_request(arguments),
        Command::Push(arguments) => run_push(arguments),
        Command::Compare(arguments) => run_compare(arguments),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("herald-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_log(arguments: LogArgs) -> anyhow::Result<()> {
    let seconds = arguments
        .seconds
        .unwrap_or(if arguments.quick { 0.3 } else { 3.0 });
    ensure!(
        seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0,
        "--seconds must be between 0 and 3600"
    );
    let options = Options {
        scratch_root: arguments.dir.unwrap_or_else(default_scratch_root),
        case_duration: Duration::from_secs_f64(seconds),
        rounds: arguments
            .rounds
            .unwrap_or(if arguments.quick { 1 } else { 3 }),
        quick: arguments.quick,
        writers: arguments.writers,
        allow_in_memory: arguments.allow_tmpfs,
        only: arguments.only,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = log_bench::run(&options, &mut |line| eprintln!("{line}"))?;
    arguments
        .output
        .print(|| report.to_markdown(), || report.to_json());
    Ok(())
}

fn seconds_arg(name: &str, value: f64) -> anyhow::Result<Duration> {
    ensure!(
        value.is_finite() && (0.0..=3600.0).contains(&value),
        "--{name} must be between 0 and 3600"
    );
    Ok(Duration::from_secs_f64(value))
}

fn run_publish(arguments: PublishArgs) -> anyhow::Result<()> {
    let quick = arguments.quick;
    let round_duration = seconds_arg(
        "seconds",
        arguments.seconds.unwrap_or(if quick { 1.0 } else { 10.0 }),
    )?;
    ensure!(!round_duration.is_zero(), "--seconds must be more than 0");
    let warmup = seconds_arg(
        "warmup",
        arguments.warmup.unwrap_or(if quick { 0.25 } else { 1.0 }),
    )?;
    let server = match (arguments.server, arguments.fsync, arguments.herald) {
        (Some(_), Some(_), _) => {
            anyhow::bail!(
                "--fsync applies to a server herald-bench starts; a --server keeps its own policy"
            )
        }
        (Some(_), None, Some(_)) => {
            anyhow::bail!("--herald (the binary to start) and --server exclude each other")
        }
        (Some(url), None, None) => ServerChoice::Existing { url },
        (None, fsync, binary) => ServerChoice::Start {
            binary: match binary {
                Some(binary) => binary,
                None => herald_process::default_binary()?,
            },
            fsync: fsync.unwrap_or(Fsync::Always).policy().to_owned(),
        },
    };
    let options = PublishOptions {
        scratch_root: arguments.dir.unwrap_or_else(default_scratch_root),
        server,
        connections: arguments.connections.unwrap_or(if quick { 4 } else { 16 }),
        events_per_batch: arguments.batch.unwrap_or(if quick { 20 } else { 100 }),
        event_bytes: arguments.event_bytes,
        partitions: arguments.partitions,
        dedup_window: arguments.dedup_window,
        round_duration,
        warmup,
        rounds: arguments.rounds.unwrap_or(if quick { 1 } else { 3 }),
        client_threads: arguments.client_threads,
        quick,
        allow_in_memory: arguments.allow_tmpfs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = publish_bench::run(&options, &mut |line| eprintln!("{line}"))?;
    arguments
        .output
        .print(|| report.to_markdown(), || report.to_json());
    Ok(())
}

fn run_queue(arguments: QueueArgs) -> anyhow::Result<()> {
    let quick = arguments.quick;
    let latency_duration = seconds_arg(
        "latency-seconds",
        arguments
            .latency_seconds
            .unwrap_or(if quick { 2.0 } else { 10.0 }),
    )?;
    let options = QueueOptions {
        scratch_root: arguments.dir.unwrap_or_else(default_scratch_root),
        binary: match arguments.herald {
            Some(binary) => binary,
            None => herald_process::default_binary()?,
        },
        fsync: arguments.fsync.unwrap_or(Fsync::Always).policy().to_owned(),
        partitions: arguments.partitions,
        events: arguments
            .events
            .unwrap_or(if quick { 20_000 } else { 200_000 }),
        event_bytes: arguments.event_bytes,
        consumers: arguments.consumers,
        pull_max: arguments.pull_max,
        latency_rate: arguments.latency_rate,
        latency_batch: arguments.latency_batch,
        latency_duration,
        client_threads: arguments.client_threads,
        quick,
        allow_in_memory: arguments.allow_tmpfs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = queue_bench::run(&options, &mut |line| eprintln!("{line}"))?;
    arguments
        .output
        .print(|| report.to_markdown(), || report.to_json());
    Ok(())
}

fn run_request(arguments: RequestArgs) -> anyhow::Result<()> {
    let quick = arguments.quick;
    let case_duration = seconds_arg(
        "seconds",
        arguments.seconds.unwrap_or(if quick { 1.0 } else { 10.0 }),
    )?;
    ensure!(!case_duration.is_zero(), "--seconds must be more than 0");
    let options = RequestOptions {
        scratch_root: arguments.dir.unwrap_or_else(default_scratch_root),
        binary: match arguments.herald {
            Some(binary) => binary,
            None => herald_process::default_binary()?,
        },
        fsync: arguments.fsync.unwrap_or(Fsync::Always).policy().to_owned(),
        event_bytes: arguments.event_bytes,
        concurrency: if arguments.concurrency.is_empty() {
            vec![1, 16]
        } else {
            arguments.concurrency
        },
        rate: arguments.rate,
        responders: arguments.responders,
        case_duration,
        client_threads: arguments.client_threads,
        quick,
        allow_in_memory: arguments.allow_tmpfs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = request_bench::run(&options, &mut |line| eprintln!("{line}"))?;
    arguments
        .output
        .print(|| report.to_markdown(), || report.to_json());
    Ok(())
}

fn run_push(arguments: PushArgs) -> anyhow::Result<()> {
    let quick = arguments.quick;
    let latency_duration = seconds_arg(
        "latency-seconds",
        arguments
            .latency_seconds
            .unwrap_or(if quick { 1.0 } else { 10.0 }),
    )?;
    let parts = if arguments.only.is_empty() {
        vec![PushPart::One, PushPart::Fanout, PushPart::Latency]
    } else {
        arguments.only
    };
    let options = PushOptions {
        scratch_root: arguments.dir.unwrap_or_else(default_scratch_root),
        binary: match arguments.herald {
            Some(binary) => binary,
            None => herald_process::default_binary()?,
        },
        fsync: arguments.fsync.unwrap_or(Fsync::Always).policy().to_owned(),
        parts: parts
            .into_iter()
            .map(|part| match part {
                PushPart::One => push_bench::Part::One,
                PushPart::Fanout => push_bench::Part::Fanout,
                PushPart::Latency => push_bench::Part::Latency,
            })
            .collect(),
        events: arguments
            .events
            .unwrap_or(if quick { 2_000 } else { 100_000 }),
        fanout_subscriptions: arguments.fanout,
        fanout_events: arguments
            .fanout_events
            .unwrap_or(if quick { 200 } else { 6_000 }),
        backlog_batch: arguments.backlog_batch,
        partitions: arguments.partitions,
        event_bytes: arguments.event_bytes,
        max_in_flight: arguments.max_in_flight,
        content_mode: match arguments.content_mode {
            PushContentMode::Structured => push_bench::ContentMode::Structured,
            PushContentMode::Binary => push_bench::ContentMode::Binary,
        },
        latency_rate: arguments.latency_rate,
        latency_batch: arguments.latency_batch,
        latency_duration,
        client_threads: arguments.client_threads,
        quick,
        allow_in_memory: arguments.allow_tmpfs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = push_bench::run(&options, &mut |line| eprintln!("{line}"))?;
    arguments
        .output
        .print(|| report.to_markdown(), || report.to_json());
    Ok(())
}

fn run_compare(arguments: CompareArgs) -> anyhow::Result<()> {
    let quick = arguments.quick;
    let mut settings = if quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    settings.event_bytes = arguments.event_bytes;
    settings.latency_batch = arguments.latency_batch;
    if let Some(backlog) = arguments.backlog {
        settings.backlog_events = backlog;
    }
    if let Some(events) = arguments.fanout_events {
        settings.fanout_events = events;
    }
    if let Some(seconds) = arguments.publish_seconds {
        settings.publish_seconds = seconds;
    }
    if let Some(seconds) = arguments.latency_seconds {
        settings.latency_seconds = seconds;
    }
    if let Some(seconds) = arguments.request_seconds {
        settings.request_seconds = seconds;
    }
    let options = CompareOptions {
        scratch_root: arguments.dir.unwrap_or_else(default_scratch_root),
        binary: match arguments.herald {
            Some(binary) => binary,
            None => herald_process::default_binary()?,
        },
        settings,
        rounds: arguments.rounds.unwrap_or(if quick { 1 } else { 3 }),
        workloads: if arguments.workloads.is_empty() {
            Workload::ALL.to_vec()
        } else {
            arguments.workloads
        },
        systems: arguments.systems,
        peers: PeerAddresses {
            nats: arguments.nats,
            amqp: arguments.amqp,
            postgres: arguments.postgres,
            postgres_database: arguments.postgres_database,
            redis: arguments.redis,
        },
        client_threads: arguments.client_threads,
        quick,
        allow_in_memory: arguments.allow_tmpfs,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let report = compare::run(&options)?;
    arguments
        .output
        .print(|| report.to_markdown(), || report.to_json());
    ensure!(
        report.herald_failures == 0,
        "Herald failed in {} round(s) (see the report): the harness or the server is broken",
        report.herald_failures
    );
    Ok(())
}
