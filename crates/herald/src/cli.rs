//! The command line: every subcommand and flag, as clap types. Parsing only; the commands are
//! carried out by [`crate::serve`] and [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use herald_client::duration;
use serde_json::Value;

use crate::config::ServeArgs;

/// The server the client commands talk to when neither `--server` nor `HERALD_URL` is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

const LONG_ABOUT: &str = "\
Herald, a durable event broker.

`herald serve` runs the broker. The other commands are a client of its HTTP API: they talk to the
server at --server (default http://127.0.0.1:7070, or HERALD_URL) and print aligned tables, or the
server's JSON with --output json (one JSON document per line for --follow and tail).

Exit codes:
  0  success
  1  the server answered with an error; one line on stderr: `error: <status> <title>: <detail>`
     (for `herald serve`: the server could not start or failed)
  2  usage error: bad flags, bad input data or bad configuration
  3  the server cannot be reached; one line on stderr naming its URL";

/// The `herald` command line.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about = "Herald, a durable event broker", long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The Herald server's URL.
    #[arg(long, global = true, help_heading = "Client options", env = "HERALD_URL", value_name = "URL", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// How to print answers: aligned tables, or the server's JSON.
    #[arg(long, global = true, help_heading = "Client options", value_enum, value_name = "FORMAT", default_value_t = Output::Table)]
    pub output: Output,
    /// The calling service's name, sent as the `herald-service` header.
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        env = "HERALD_SERVICE",
        value_name = "NAME"
    )]
    pub service: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Publish events to a topic.
    Publish(PublishArgs),
    /// Read a topic's partition from an offset or a time, without a subscription.
    Read(ReadArgs),
    /// Create, list, describe and delete subscriptions; seek and redrive.
    #[command(subcommand)]
    Sub(SubCommand),
    /// Pull deliveries from a subscription.
    Pull(PullArgs),
    /// Acknowledge deliveries by receipt.
    Ack(ReceiptArgs),
    /// Deliver again later, by receipt.
    Nack(NackArgs),
    /// Lengthen the leases of deliveries, by receipt.
    Extend(ExtendArgs),
    /// Move deliveries to the dead-letter topic now, by receipt.
    Reject(RejectArgs),
    /// Work with a subscription's dead-letter topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Watch the events published to topics matching patterns, from now on.
    Tail(TailArgs),
    /// List the services that named themselves, with what they publish and consume.
    Services,
    /// Send a request event and wait for its reply (action/response); the reply also goes to
    /// the reply group's queue `_replies.{group}`.
    Request(RequestArgs),
    /// Answer a request, by its id (the request event's `correlationid`).
    Reply(ReplyArgs),
    /// Run the benchmarks: `herald-bench`, built next to this binary (`cargo build --release -p
    /// herald-bench`). Without a subcommand it runs `compare`, the side-by-side run against
    /// NATS JetStream, RabbitMQ, PostgreSQL and Redis: `herald bench --quick`, `herald bench
    /// --help`, `herald bench publish --help`.
    #[command(disable_help_flag = true)]
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// herald-bench's subcommand (compare, publish, queue, log; compare when left out) and its
    /// flags, passed on as they are.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub arguments: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// The topic the request event is published to.
    pub topic: String,
    /// The request's data as JSON, or `-` to read it from stdin.
    #[arg(value_name = "DATA|-")]
    pub data: String,
    /// How long to wait for the reply before printing `pending` (at most 60s) [server default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub timeout: Option<String>,
    /// How long the request stays open for a reply [server default: 1h, at most 7d].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub deadline: Option<String>,
    /// JSON kept with the request and handed back with its reply.
    #[arg(long, value_name = "JSON", value_parser = json_arg)]
    pub context: Option<Value>,
    /// The service whose instances may claim the reply [default: --service].
    #[arg(long, value_name = "NAME")]
    pub reply_group: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplyArgs {
    /// The request's id.
    pub request_id: String,
    /// The reply's data as JSON, or `-` to read it from stdin.
    #[arg(value_name = "DATA|-")]
    pub data: String,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic, or confirm it exists with these settings.
    Create(TopicCreateArgs),
    /// List topics.
    List,
    /// Show a topic's settings and partitions.
    Describe { name: String },
    /// Delete a topic and its events.
    Delete { name: String },
}

#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// 1–249 characters of `[A-Za-z0-9._-]`; `.` separates segments.
    pub name: String,
    /// Number of partitions [server default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: Option<u32>,
    /// Delete events older than this, e.g. 7d [server default: 7d].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub max_age: Option<String>,
    /// Delete the oldest events past this many bytes per partition [server default: no limit].
    #[arg(long, value_name = "BYTES")]
    pub max_bytes: Option<u64>,
    /// How long an event's source and id are remembered to drop duplicates [server default: 2m].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub dedup_window: Option<String>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The topic's name.
    pub topic: String,
    /// The event's data as JSON, or `-` to read it from stdin. Without --type, --source, --id and
    /// --key it is posted as application/json and the server fills in the CloudEvent attributes.
    #[arg(
        value_name = "DATA|-",
        required_unless_present = "batch_file",
        conflicts_with = "batch_file"
    )]
    pub data: Option<String>,
    /// The CloudEvent `type` [default: the topic's name].
    #[arg(long = "type", value_name = "TYPE")]
    pub event_type: Option<String>,
    /// The CloudEvent `source` [default: /herald-cli].
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// The CloudEvent `id` [default: a new ULID].
    #[arg(long, value_name = "ID", conflicts_with = "batch_file")]
    pub id: Option<String>,
    /// The `partitionkey`: events with the same key go to the same partition, in order.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Publish a file (`-` for stdin) as one batch: a JSON array, or one JSON value per line.
    /// Each value is a CloudEvent; with --type, --source or --key each value is the data of a new
    /// event instead.
    #[arg(long, value_name = "FILE")]
    pub batch_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The topic's name.
    pub topic: String,
    #[arg(long, value_name = "P", default_value_t = 0)]
    pub partition: u32,
    /// The first offset to read [server default: the start of the partition].
    #[arg(long, value_name = "O", conflicts_with = "from_time")]
    pub offset: Option<u64>,
    /// Read from the first event stored at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub from_time: Option<String>,
    /// Most events per read, 1 to 1000 [server default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Wait up to this long for an event when there is none yet (at most 60s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub wait: Option<String>,
    /// Keep reading as events arrive (long-polls with --wait, default 20s).
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Subcommand)]
pub enum SubCommand {
    /// Create a subscription, or confirm it exists with these settings.
    Create(Box<SubCreateArgs>),
    /// List subscriptions.
    List,
    /// Show a subscription's settings and stats.
    Describe { name: String },
    /// Delete a subscription.
    Delete { name: String },
    /// Move a subscription's position.
    Seek(SeekArgs),
    /// Move events from the dead-letter topic back into this subscription (same as `herald dlq
    /// redrive`).
    Redrive(RedriveArgs),
    /// A webhook subscription's latest delivery attempts, newest first.
    Attempts(AttemptsArgs),
    /// Change a webhook subscription's delivery settings: rotate its secret, point it
    /// elsewhere; also enables it again after its endpoint answered 410 Gone.
    Webhook(WebhookArgs),
}

#[derive(Debug, Args)]
pub struct AttemptsArgs {
    /// The subscription's name.
    pub name: String,
    /// Most attempts to show [server default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// The subscription's name.
    pub name: String,
    /// A new endpoint URL.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// A new secret (`whsec_` + base64); the old one keeps signing for --secret-grace. (A flag
    /// shows in `ps` and the shell's history: --rotate-secret avoids that.)
    #[arg(long, value_name = "SECRET", conflicts_with = "rotate_secret")]
    pub secret: Option<String>,
    /// Let the server generate a new secret (printed once).
    #[arg(long)]
    pub rotate_secret: bool,
    /// How long the previous secret still signs too [server default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub secret_grace: Option<String>,
    /// Time for one attempt.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub timeout: Option<String>,
    /// Most requests at once, 1 to 1000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_in_flight: Option<u32>,
    #[arg(long, value_name = "MODE", value_parser = ["structured", "binary"])]
    pub content_mode: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Move events from the subscription's dead-letter topic back into this subscription only.
    Redrive(RedriveArgs),
}

#[derive(Debug, Args)]
pub struct SubCreateArgs {
    /// The subscription's name.
    pub name: String,
    /// A topic name or pattern (`*` = one segment, `#` = zero or more); repeat or separate
    /// with commas.
    #[arg(
        long = "topic",
        value_name = "T",
        required = true,
        value_delimiter = ','
    )]
    pub topics: Vec<String>,
    /// `queue`: competing consumers, per-event ack. `stream`: ordered per partition, cumulative
    /// commit [server default: queue].
    #[arg(long, value_name = "MODE", value_parser = ["queue", "stream"])]
    pub mode: Option<String>,
    /// Where a new subscription starts: earliest, latest or an RFC 3339 time [server default:
    /// latest].
    #[arg(long, value_name = "earliest|latest|TIME")]
    pub start: Option<String>,
    /// A CloudEvents Subscriptions API filter, e.g. '{"prefix": {"type": "order."}}'.
    #[arg(long, value_name = "JSON", value_parser = json_arg)]
    pub filter: Option<Value>,
    /// How long a delivery is leased before it comes back [server default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub ack_timeout: Option<String>,
    /// Attempts before an event moves to the dead-letter topic [server default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: Option<u32>,
    /// [server default: NAME.dlq]
    #[arg(long, value_name = "T")]
    pub dead_letter_topic: Option<String>,
    /// `key`: events with the same partitionkey are delivered one at a time, in order
    /// [server default: none].
    #[arg(long, value_name = "ORDERING", value_parser = ["none", "key"])]
    pub ordering: Option<String>,
    /// The first retry delay after a nack without a delay or an expired lease [server default:
    /// 1s].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, help_heading = "Retry backoff")]
    pub retry_initial: Option<String>,
    /// The longest retry delay [server default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, help_heading = "Retry backoff")]
    pub retry_max: Option<String>,
    /// How much each retry delay grows over the one before [server default: 2.0].
    #[arg(long, value_name = "F", value_parser = multiplier_arg, help_heading = "Retry backoff")]
    pub retry_multiplier: Option<f64>,
    /// Make it a webhook subscription: Herald POSTs each event to this URL (signed with
    /// Standard Webhooks headers) and acks it on a 2xx.
    #[arg(long, value_name = "URL", help_heading = "Webhook")]
    pub push: Option<String>,
    /// The signing secret, `whsec_` + base64 [server default: generated, printed once]. (A
    /// flag shows in `ps` and the shell's history: letting the server generate it avoids that.)
    #[arg(
        long,
        value_name = "SECRET",
        requires = "push",
        help_heading = "Webhook"
    )]
    pub push_secret: Option<String>,
    /// Time for one attempt [server default: 10s, or less to fit a short --ack-timeout: at most
    /// the lease minus 1s or a tenth of it, whichever is longer].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, requires = "push", help_heading = "Webhook")]
    pub push_timeout: Option<String>,
    /// Most requests at once, 1 to 1000 [server default: 16].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000), requires = "push", help_heading = "Webhook")]
    pub push_max_in_flight: Option<u32>,
    /// `structured`: the whole event as the (signed) body; `binary`: `ce-*` headers and the data
    /// as the body [server default: structured].
    #[arg(long, value_name = "MODE", value_parser = ["structured", "binary"], requires = "push", help_heading = "Webhook")]
    pub push_content_mode: Option<String>,
}

#[derive(Debug, Args)]
pub struct SeekArgs {
    pub name: String,
    /// earliest, latest, an RFC 3339 time, or PARTITION:OFFSET.
    #[arg(long, value_name = "TARGET")]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct RedriveArgs {
    /// The subscription's name.
    pub name: String,
    /// Most events to move [server default].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max: Option<u32>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The subscription's name.
    pub subscription: String,
    /// Most deliveries per pull, 1 to 1000 [server default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max: Option<u32>,
    /// Wait up to this long for a delivery when there is none yet (at most 60s).
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub wait: Option<String>,
    /// This consumer's name [default: one the server generates].
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,
    /// Acknowledge the deliveries once printed.
    #[arg(long, conflicts_with_all = ["nack", "extend"])]
    pub ack: bool,
    /// Nack the deliveries once printed: deliver them again after --delay, or after the
    /// subscription's retry backoff.
    #[arg(long, conflicts_with = "extend")]
    pub nack: bool,
    /// With --nack: deliver again after this long.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg, requires = "nack")]
    pub delay: Option<String>,
    /// Lengthen the leases of the deliveries once printed by this long.
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub extend: Option<String>,
    /// Keep pulling (long-polls with --wait, default 20s).
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ReceiptArgs {
    /// The subscription's name.
    pub subscription: String,
    /// Receipts of deliveries, as `pull` printed them.
    #[arg(required = true, value_name = "RECEIPT")]
    pub receipts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NackArgs {
    /// The subscription's name.
    pub subscription: String,
    /// Receipts of deliveries, as `pull` printed them.
    #[arg(required = true, value_name = "RECEIPT")]
    pub receipts: Vec<String>,
    /// Deliver again after this long [default: the subscription's retry backoff].
    #[arg(long, value_name = "DURATION", value_parser = duration_arg)]
    pub delay: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    /// The subscription's name.
    pub subscription: String,
    /// Receipts of deliveries, as `pull` printed them.
    #[arg(required = true, value_name = "RECEIPT")]
    pub receipts: Vec<String>,
    /// Lengthen each lease by this long.
    #[arg(long, required = true, value_name = "DURATION", value_parser = duration_arg)]
    pub by: String,
}

#[derive(Debug, Args)]
pub struct RejectArgs {
    /// The subscription's name.
    pub subscription: String,
    /// Receipts of deliveries, as `pull` printed them.
    #[arg(required = true, value_name = "RECEIPT")]
    pub receipts: Vec<String>,
    /// Why, kept with the dead-lettered event as `deadletterreason: rejected: TEXT`.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Topic names or patterns: `*` matches one segment, `#` zero or more.
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
}

/// Checks a duration flag and sends it in its canonical form.
fn duration_arg(value: &str) -> Result<String, String> {
    duration::parse(value)
        .map(duration::format)
        .map_err(|error| error.to_string())
}

fn multiplier_arg(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(multiplier) if multiplier.is_finite() && multiplier > 0.0 => Ok(multiplier),
        _ => Err("expected a positive number such as 2 or 1.5".to_owned()),
    }
}

fn json_arg(value: &str) -> Result<Value, String> {
    serde_json::from_str(value).map_err(|error| format!("not JSON: {error}"))
}
