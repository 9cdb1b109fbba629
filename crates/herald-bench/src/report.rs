//! The results of a run: a markdown report for people, JSON for tools.
//!
//! Units: MB/s and GB/s are 10^6 and 10^9 bytes per second. In the `log` report they count whole
//! batch frames (payload, record fields and frame header and trailer), the bytes that reach the
//! disk; the `publish` report gives both the payload (event JSON) and the frame bytes.

use std::fmt::Write as _;

use serde::Serialize;

pub use crate::compare::CompareReport;
use crate::compare::{Measurement, Row, Workload, WorkloadResult};
use crate::machine::MachineFacts;
pub use crate::publish_bench::PublishReport;
pub use crate::queue_bench::QueueReport;

/// Everything one `herald-bench log` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub git_commit: String,
    pub machine: MachineFacts,
    pub load_average_at_end: Option<f64>,
    pub command: String,
    pub seconds_per_case: f64,
    pub rounds: u32,
    pub quick: bool,
    pub payload_bytes: usize,
    pub cases: Vec<CaseResult>,
    pub goals: Vec<Goal>,
}

/// One case of the log, next to its raw-disk baseline. Rates are medians over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// A stable name for tools, e.g. `append-always-batch100-writers1`.
    pub id: String,
    pub name: String,
    pub records: u64,
    pub bytes: u64,
    pub elapsed_seconds: f64,
    pub records_per_second: f64,
    pub megabytes_per_second: f64,
    /// Latency and group commit figures of an append case.
    pub appends: Option<AppendFigures>,
    /// The median over the rounds of `records_per_second / raw records_per_second`, each
    /// round's pair measured back to back.
    pub ratio_to_raw: f64,
    /// CPU seconds per second (median): 2.0 is both cores of a 2-core machine.
    pub cpu_cores: Option<f64>,
    pub raw: RawResult,
    pub rounds: Vec<Round>,
}

/// What the appends of a case did, all rounds together.
#[derive(Debug, Clone, Serialize)]
pub struct AppendFigures {
    pub appends: u64,
    /// From the call of `append` to its return, over every append of every round.
    pub latency_p50_micros: f64,
    pub latency_p99_micros: f64,
    pub latency_max_micros: f64,
    /// Appends that shared one `pwrite` of the group commit.
    pub appends_per_write: Option<f64>,
    /// Appends that shared one `fdatasync` (only under `fsync always`).
    pub appends_per_sync: Option<f64>,
    /// The share of the run's time that some thread spent inside `fdatasync` (or a directory
    /// `fsync`): how busy the log kept the disk with syncs. Under `never` these are the syncs of
    /// segment rolls, which the appends wait for.
    pub syncing_fraction: f64,
}

/// One round of a case: the log case right after its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub records_per_second: f64,
    pub megabytes_per_second: f64,
    pub raw_records_per_second: f64,
    pub ratio_to_raw: f64,
    pub cpu_cores: Option<f64>,
}

/// A baseline loop on the bare file system.
#[derive(Debug, Clone, Serialize)]
pub struct RawResult {
    pub name: String,
    /// Writes (with their syncs) or reads.
    pub operations: u64,
    pub bytes: u64,
    pub elapsed_seconds: f64,
    /// The records the same bytes carry in the log's format (median over the rounds).
    pub records_per_second: f64,
    pub megabytes_per_second: f64,
    pub cpu_cores: Option<f64>,
}

/// One of the goals and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// `12.3 k`, `1.23 M`: rates to three significant figures.
pub fn format_rate(value: f64) -> String {
    let (scaled, unit) = if value >= 1e6 {
        (value / 1e6, " M")
    } else if value >= 1e3 {
        (value / 1e3, " k")
    } else {
        (value, "")
    };
    let decimals = if scaled >= 100.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else {
        2
    };
    format!("{scaled:.decimals$}{unit}")
}

pub fn format_ratio(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.1}x")
    } else {
        format!("{ratio:.2}x")
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "## herald-bench log");
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
            "- records: {} B payload, no key, no headers; {:.1} s per case in {} round(s){}",
            self.payload_bytes,
            self.seconds_per_case,
            self.rounds,
            if self.quick {
                " (--quick: small sizes, rough figures)"
            } else {
                ""
            }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| case | records/s | MB/s | raw-disk equivalent (same bytes) | raw records/s | raw MB/s | herald/raw (rounds' range) |"
        );
        let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|");
        for case in &self.cases {
            let ratios = case.rounds.iter().map(|round| round.ratio_to_raw);
            let lowest = ratios.clone().fold(f64::INFINITY, f64::min);
            let highest = ratios.fold(f64::NEG_INFINITY, f64::max);
            let range = if case.rounds.len() > 1 {
                format!(" ({}-{})", format_ratio(lowest), format_ratio(highest))
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {} | {} | {:.1} | {}{range} |",
                case.name,
                format_rate(case.records_per_second),
                case.megabytes_per_second,
                case.raw.name,
                format_rate(case.raw.records_per_second),
                case.raw.megabytes_per_second,
                format_ratio(case.ratio_to_raw),
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| case | append latency p50 / p99 / max (µs) | appends per pwrite | appends per fdatasync | time in fdatasync | CPU cores herald / raw |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        let optional = |value: Option<f64>| {
            value.map_or_else(|| "-".to_owned(), |value| format!("{value:.1}"))
        };
        let cores = |cores: Option<f64>| {
            cores.map_or_else(|| "?".to_owned(), |cores| format!("{cores:.2}"))
        };
        for case in &self.cases {
            let cpu = format!("{} / {}", cores(case.cpu_cores), cores(case.raw.cpu_cores));
            match &case.appends {
                Some(appends) => {
                    let _ = writeln!(
                        out,
                        "| {} | {:.0} / {:.0} / {:.0} | {} | {} | {:.0} % | {cpu} |",
                        case.name,
                        appends.latency_p50_micros,
                        appends.latency_p99_micros,
                        appends.latency_max_micros,
                        optional(appends.appends_per_write),
                        optional(appends.appends_per_sync),
                        appends.syncing_fraction * 100.0,
                    );
                }
                None => {
                    let _ = writeln!(out, "| {} | - | - | - | - | {cpu} |", case.name);
                }
            }
        }
        let _ = writeln!(out);
        write_goals(&mut out, &self.goals);
        out
    }
}

impl PublishReport {
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "## herald-bench publish");
        let _ = writeln!(out);
        write_context(
            &mut out,
            &self.git_commit,
            &self.command,
            &self.machine,
            self.load_average_at_end,
        );
        let _ = writeln!(out, "- server: {}", self.server);
        let _ = writeln!(
            out,
            "- load: {} connections, one request in flight each, batches of {} CloudEvents of {} B \
             (application/cloudevents-batch+json, {} B per request), topic of {} partition(s) \
             with a dedup window of {}, fsync {}; load generator: reqwest on {} Tokio worker \
             thread(s), same machine",
            self.connections,
            self.events_per_batch,
            self.event_bytes,
            self.body_bytes,
            self.partitions,
            self.dedup_window
                .as_deref()
                .unwrap_or("the server's default"),
            self.fsync
                .as_deref()
                .unwrap_or("as configured on the server"),
            self.client_threads,
        );
        let _ = writeln!(
            out,
            "- {} round(s) of {:.1} s measured after {:.1} s of warm-up, each right after the raw \
             loop{}",
            self.rounds,
            self.seconds_per_round,
            self.warmup_seconds,
            if self.quick {
                " (--quick: small sizes, rough figures)"
            } else {
                ""
            }
        );
        let segment = self
            .herald
            .segment_bytes_per_event
            .map_or_else(String::new, |bytes| {
                format!("; measured in the segment files: {bytes:.1} B per event")
            });
        let _ = writeln!(
            out,
            "- one batch is a {} B log frame ({:.1} B per event){segment}",
            self.frame_bytes,
            self.frame_bytes as f64 / f64::from(self.events_per_batch),
        );
        let _ = writeln!(out);
        let cores = |cores: Option<f64>| {
            cores.map_or_else(|| "?".to_owned(), |cores| format!("{cores:.2}"))
        };
        let _ = writeln!(
            out,
            "| | events/s | payload MB/s | disk MB/s | requests/s | latency p50 / p99 / max (ms) | CPU cores | CPU µs per event |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let herald = &self.herald;
        let micros = |micros: Option<f64>| {
            micros.map_or_else(|| "?".to_owned(), |micros| format!("{micros:.2}"))
        };
        let _ = writeln!(
            out,
            "| Herald, fsync {} | {} | {:.1} | {:.1} | {} | {:.2} / {:.2} / {:.2} | server {}, bench {} | server {}, bench {} |",
            self.fsync.as_deref().unwrap_or("as the server has it"),
            format_rate(herald.events_per_second),
            herald.payload_megabytes_per_second,
            herald.disk_megabytes_per_second,
            format_rate(herald.requests_per_second),
            herald.latency_p50_millis,
            herald.latency_p99_millis,
            herald.latency_max_millis,
            cores(herald.server_cpu_cores),
            cores(herald.bench_cpu_cores),
            micros(herald.server_cpu_micros_per_event),
            micros(herald.bench_cpu_micros_per_event),
        );
        let raw = &self.raw;
        let raw_events_per_second = raw.records_per_second;
        let _ = writeln!(
            out,
            "| raw {} | {} | {:.1} | {:.1} | {} fsyncs/s | - | {} | {} |",
            raw.name,
            format_rate(raw.records_per_second),
            raw.megabytes_per_second
                * (f64::from(self.events_per_batch) * self.event_bytes as f64
                    / self.frame_bytes as f64),
            raw.megabytes_per_second,
            format_rate(raw.megabytes_per_second * 1e6 / self.frame_bytes as f64),
            cores(raw.cpu_cores),
            micros(
                raw.cpu_cores
                    .filter(|_| raw_events_per_second > 0.0)
                    .map(|cores| cores / raw_events_per_second * 1e6)
            ),
        );
        let ratios = self.round_results.iter().map(|round| round.ratio_to_raw);
        let lowest = ratios.clone().fold(f64::INFINITY, f64::min);
        let highest = ratios.fold(f64::NEG_INFINITY, f64::max);
        let range = if self.round_results.len() > 1 {
            format!(
                " (rounds: {}-{})",
                format_ratio(lowest),
                format_ratio(highest)
            )
        } else {
            String::new()
        };
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Herald / raw events/s: {}{range}",
            format_ratio(self.ratio_to_raw)
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| round | raw events/s | Herald events/s | Herald/raw | p50 / p99 (ms) | CPU cores server / bench / raw loop |"
        );
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
        for (number, round) in self.round_results.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} / {:.2} | {} / {} / {} |",
                number + 1,
                format_rate(round.raw_events_per_second),
                format_rate(round.events_per_second),
                format_ratio(round.ratio_to_raw),
                round.latency_p50_millis,
                round.latency_p99_millis,
                cores(round.server_cpu_cores),
                cores(round.bench_cpu_cores),
                cores(round.raw_cpu_cores),
            );
        }
        if !self.goals.is_empty() {
            let _ = writeln!(out);
            write_goals(&mut out, &self.goals);
        }
        out
    }
}

impl QueueReport {
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "## herald-bench queue");
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
            "- server: {}, fsync {}; topic of {} partition(s), events of {} B; load generator: \
             reqwest on {} Tokio worker thread(s), same machine{}",
            self.server,
            self.fsync,
            self.partitions,
            self.event_bytes,
            self.client_threads,
            if self.quick {
                " (--quick: small sizes, rough figures)"
            } else {
                ""
            }
        );
        let cores = |cores: Option<f64>| {
            cores.map_or_else(|| "?".to_owned(), |cores| format!("{cores:.2}"))
        };
        let t = &self.throughput;
        let _ = writeln!(
            out,
            "- throughput: {} events pre-filled (batches of 1,000, {} events/s), then drained by \
             {} competing consumers, each looping pull (max {}, wait 1s) + ack of every receipt",
            t.events,
            format_rate(t.prefill_events_per_second),
            t.consumers,
            t.pull_max,
        );
        let l = &self.latency;
        let _ = writeln!(
            out,
            "- latency: {} events/s published in batches of {} (one request per batch, paced by \
             a timer) for {:.1} s; one consumer long-polling (max 100, wait 20s), acking each \
             batch; latency = end of the pull answer − the send time carried in the event",
            l.target_events_per_second, l.events_per_publish, l.seconds,
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| throughput | acked events/s | seconds | pull p50 / p99 (ms) | ack p50 / p99 (ms) | deliveries per pull | pulls (empty) | redeliveries | CPU cores server / bench | server CPU µs per event |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {} x {} | {} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.1} | {} ({}) | {} | {} / {} | {} |",
            t.consumers,
            t.pull_max,
            format_rate(t.events_per_second),
            t.elapsed_seconds,
            t.pull_p50_millis,
            t.pull_p99_millis,
            t.ack_p50_millis,
            t.ack_p99_millis,
            t.deliveries_per_pull,
            t.pulls,
            t.empty_pulls,
            t.redeliveries,
            cores(t.server_cpu_cores),
            cores(t.bench_cpu_cores),
            t.server_cpu_micros_per_event
                .map_or_else(|| "?".to_owned(), |micros| format!("{micros:.1}")),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| latency | events | published/s | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | deliveries per pull | publish p50 / p99 (ms) | server CPU cores |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let _ = writeln!(
            out,
            "| {} ev/s | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} / {:.2} | {} |",
            format_rate(f64::from(l.target_events_per_second)),
            l.received,
            format_rate(l.published_per_second),
            l.p50_millis,
            l.p99_millis,
            l.p999_millis,
            l.max_millis,
            l.deliveries_per_pull,
            l.publish_p50_millis,
            l.publish_p99_millis,
            cores(l.server_cpu_cores),
        );
        if !self.goals.is_empty() {
            let _ = writeln!(out);
            write_goals(&mut out, &self.goals);
        }
        out
    }
}

impl CompareReport {
    pub fn to_json(&self) -> String {
        // Serializing plain structs of numbers and strings cannot fail.
        serde_json::to_string_pretty(self).expect("the report serializes")
    }

    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "## herald-bench compare");
        let _ = writeln!(out);
        write_context(
            &mut out,
            &self.git_commit,
            &self.command,
            &self.machine,
            self.load_average_at_end,
        );
        let s = &self.settings;
        let _ = writeln!(
            out,
            "- {} round(s); in each round the systems run one after another, the order rotated by \
             one place every round; a table gives medians over the rounds{}; the whole run took \
             {:.0} s",
            self.rounds,
            if self.quick {
                " (--quick: tiny sizes, figures not meaningful)"
            } else {
                ""
            },
            self.seconds,
        );
        let _ = writeln!(
            out,
            "- load generator: this process, Tokio with {} worker thread(s), on the same machine; \
             events of {} B",
            self.client_threads, s.event_bytes
        );
        let _ = writeln!(
            out,
            "- Herald ÷ peer: the median over the rounds of Herald's figure divided by the peer's, \
             both measured in the same round; the Herald of the peer's durability class: `fsync \
             always` for \"fsync before ack\", `fsync never` for \"OS-buffered\" and \"not durable\""
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "### Systems");
        let _ = writeln!(out);
        let _ = writeln!(out, "| system | setup |");
        let _ = writeln!(out, "|---|---|");
        for system in &self.systems {
            let _ = writeln!(out, "| {} | {} |", system.name, escape(&system.description));
        }
        for result in &self.workloads {
            let _ = writeln!(out);
            write_workload(&mut out, result, s);
        }
        if !self.goals.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "### The issue's goals");
            let _ = writeln!(out);
            write_goals(&mut out, &self.goals);
        }
        out
    }
}

/// `|` would end a table cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn cores(value: Option<f64>) -> String {
    value.map_or_else(|| "?".to_owned(), |cores| format!("{cores:.2}"))
}

fn millis(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |millis| format!("{millis:.2}"))
}

/// Server and load-generator CPU per event (or round trip), in µs.
fn micros_per_event(measurement: &Measurement) -> String {
    if measurement.rate <= 0.0 {
        return "?".to_owned();
    }
    let per = |cores: Option<f64>| {
        cores.map_or_else(
            || "?".to_owned(),
            |cores| format!("{:.1}", cores / measurement.rate * 1e6),
        )
    };
    format!(
        "{} / {}",
        per(measurement.server_cpu_cores),
        per(measurement.bench_cpu_cores)
    )
}

/// The cells of a row that has no median: its status across the figure columns.
fn status_cells(row: &Row, columns: usize) -> String {
    let mut cells = vec![escape(&row.status)];
    cells.extend(std::iter::repeat_n("-".to_owned(), columns - 1));
    cells.join(" | ")
}

fn ratio_cell(row: &Row) -> String {
    match (row.compared_with, row.herald_ratio) {
        (None, _) => "-".to_owned(),
        (Some(_), None) => "?".to_owned(),
        (Some(herald), Some(ratio)) => {
            let which = if herald == crate::compare::SystemId::HeraldAlways {
                "always"
            } else {
                "never"
            };
            format!("{} ({which})", format_ratio(ratio))
        }
    }
}

fn rounds_cell(workload: Workload, row: &Row) -> String {
    let cells: Vec<String> = row
        .rounds
        .iter()
        .map(|round| match &round.measurement {
            Some(measurement) => {
                let value = if workload == Workload::Latency {
                    millis(measurement.p99_millis)
                } else {
                    format_rate(measurement.rate)
                };
                if measurement.disturbed() {
                    format!("{value}*")
                } else {
                    value
                }
            }
            None if round.error.is_some() => "error".to_owned(),
            None => "-".to_owned(),
        })
        .collect();
    cells.join(", ")
}

fn write_workload(out: &mut String, result: &WorkloadResult, s: &crate::compare::Settings) {
    let workload = result.workload;
    let (title, describe) = match workload {
        Workload::Publish => (
            "publish",
            format!(
                "{} producers, each with one batch of {} events in flight (sent, then every \
                 confirm awaited); {:.1} s measured after {:.1} s of warm-up. Latency: one batch, \
                 from sending to its last confirm.",
                s.producers, s.publish_batch, s.publish_seconds, s.publish_warmup_seconds
            ),
        ),
        Workload::Queue => (
            "queue",
            format!(
                "a backlog of {} events stored first (by {} producers, batches of {}), then \
                 drained by {} competing consumers taking up to {} events at a time and \
                 acknowledging each event; each round drains its part of the backlog (the \
                 backlog divided by the rounds), so the first round starts on the full backlog. \
                 Latency: one take + ack.",
                s.backlog_events, s.producers, s.prefill_batch, s.consumers, s.pull_max
            ),
        ),
        Workload::Replay => (
            "replay",
            format!(
                "one reader reads the {} stored events from the first, {} per read (or \
                 prefetch); every round reads all of them again.",
                s.backlog_events, s.replay_batch
            ),
        ),
        Workload::Fanout => (
            "fan-out",
            format!(
                "one producer publishes {} events in batches of {} (confirms awaited) to {} \
                 subscriptions that each receive every event; the rate is events published \
                 over the time until the last subscription has the last event \
                 ({}x as many deliveries).",
                s.fanout_events, s.fanout_batch, s.fanout_subscriptions, s.fanout_subscriptions
            ),
        ),
        Workload::Latency => (
            "latency",
            format!(
                "{} events/s published for {:.1} s, {} per publish (one publish every {:.1} ms, \
                 each on its own task, confirms awaited), one consumer; latency = arrival at \
                 the consumer − the send time carried in the event. Lower is better: Herald ÷ \
                 peer below 1 means Herald's p99 is lower.",
                s.latency_rate,
                s.latency_seconds,
                s.latency_batch,
                f64::from(s.latency_batch) / f64::from(s.latency_rate) * 1e3
            ),
        ),
        Workload::RequestReply => (
            "request/reply",
            format!(
                "{} requesters, each sending a request of {} B and waiting for its reply of \
                 the same size before the next; {:.1} s measured after {:.1} s of warm-up. \
                 Herald stores the request and the reply (and survives a restart in between); \
                 NATS request/reply and RabbitMQ direct reply-to keep nothing.",
                s.requesters, s.event_bytes, s.request_seconds, s.request_warmup_seconds
            ),
        ),
    };
    let _ = writeln!(out, "### {title}");
    let _ = writeln!(out);
    let _ = writeln!(out, "{describe}");
    let _ = writeln!(out);
    match workload {
        Workload::Latency => {
            let _ = writeln!(
                out,
                "| system | durability | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | p99 per round (ms) | CPU cores server / bench | Herald ÷ peer (p99) |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
            for row in &result.rows {
                let durability = row.durability.map_or("-", |d| d.label());
                match &row.median {
                    Some(m) => {
                        let _ = writeln!(
                            out,
                            "| {} | {durability} | {} | {} | {} | {} | {} | {} / {} | {} |",
                            row.name,
                            millis(m.p50_millis),
                            millis(m.p99_millis),
                            millis(m.p999_millis),
                            millis(m.max_millis),
                            rounds_cell(workload, row),
                            cores(m.server_cpu_cores),
                            cores(m.bench_cpu_cores),
                            ratio_cell(row),
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "| {} | {durability} | {} |",
                            row.name,
                            status_cells(row, 7)
                        );
                    }
                }
            }
        }
        _ => {
            let (unit, latency) = match workload {
                Workload::RequestReply => ("round trips/s", "round trip p50 / p99 (ms)"),
                Workload::Fanout => ("events/s (to every subscription)", "deliveries/s"),
                Workload::Replay => ("events/s", "per read p50 / p99 (ms)"),
                Workload::Queue => ("acked events/s", "take + ack p50 / p99 (ms)"),
                _ => ("events/s", "batch p50 / p99 (ms)"),
            };
            let per = match workload {
                Workload::RequestReply => "round trip",
                Workload::Fanout => "event published",
                _ => "event",
            };
            let _ = writeln!(
                out,
                "| system | durability | {unit} | per round | {latency} | CPU cores server / bench | CPU µs per {per} server / bench | Herald ÷ peer |"
            );
            let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|");
            for row in &result.rows {
                let durability = row.durability.map_or("-", |d| d.label());
                match &row.median {
                    Some(m) => {
                        let latency = if workload == Workload::Fanout {
                            format_rate(m.rate * f64::from(s.fanout_subscriptions))
                        } else if m.p50_millis.is_some() {
                            format!("{} / {}", millis(m.p50_millis), millis(m.p99_millis))
                        } else {
                            "-".to_owned()
                        };
                        let _ = writeln!(
                            out,
                            "| {} | {durability} | {} | {} | {latency} | {} / {} | {} | {} |",
                            row.name,
                            format_rate(m.rate),
                            rounds_cell(workload, row),
                            cores(m.server_cpu_cores),
                            cores(m.bench_cpu_cores),
                            micros_per_event(m),
                            ratio_cell(row),
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "| {} | {durability} | {} |",
                            row.name,
                            status_cells(row, 6)
                        );
                    }
                }
            }
        }
    }
    let errors: Vec<&Row> = result
        .rows
        .iter()
        .filter(|row| row.median.is_some() && row.status.starts_with("error"))
        .collect();
    for row in errors {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{}: some rounds failed: {}",
            row.name,
            escape(&row.status)
        );
    }
    let disturbed = result.rows.iter().any(|row| {
        row.rounds
            .iter()
            .filter_map(|round| round.measurement.as_ref())
            .any(Measurement::disturbed)
    });
    if disturbed {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "\\* other processes used more than {} cores during that round (a compiler, say): \
             its figure is less trustworthy.",
            crate::compare::DISTURBED_CORES
        );
    }
    if !result.prefill.is_empty() {
        let _ = writeln!(out);
        let filled: Vec<String> = result
            .prefill
            .iter()
            .map(|(system, measurement, error)| match (measurement, error) {
                (Some(m), _) => format!("{} {}/s", system_name(*system), format_rate(m.rate)),
                (None, Some(error)) => format!("{} failed ({error})", system_name(*system)),
                (None, None) => format!("{} -", system_name(*system)),
            })
            .collect();
        let _ = writeln!(
            out,
            "Filling the backlog (not a measured workload): {}.",
            filled.join(", ")
        );
    }
    // Rows with the same design (Herald's two) share one entry.
    let mut designs: Vec<(Vec<&str>, &str)> = Vec::new();
    for row in result
        .rows
        .iter()
        .filter(|row| !row.design.is_empty() && row.median.is_some())
    {
        match designs.iter_mut().find(|(_, design)| *design == row.design) {
            Some((names, _)) => names.push(&row.name),
            None => designs.push((vec![&row.name], &row.design)),
        }
    }
    let designs: Vec<String> = designs
        .into_iter()
        .map(|(names, design)| format!("{}: {design}", names.join(", ")))
        .collect();
    if !designs.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "How: {}.", escape(&designs.join("; ")));
    }
}

fn system_name(system: crate::compare::SystemId) -> &'static str {
    system.name()
}

/// The table of the goals.
pub(crate) fn write_goals(out: &mut String, goals: &[Goal]) {
    let _ = writeln!(out, "| goal | measured | met |");
    let _ = writeln!(out, "|---|---|---|");
    for goal in goals {
        let met = if goal.met { "yes" } else { "**no**" };
        let _ = writeln!(out, "| {} | {} | {met} |", goal.goal, goal.measured);
    }
}

/// The value at `fraction` of sorted microseconds, in milliseconds (nearest rank).
pub fn percentile_millis(sorted_micros: &[u32], fraction: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let rank =
        ((sorted_micros.len() as f64 * fraction).ceil() as usize).clamp(1, sorted_micros.len());
    f64::from(sorted_micros[rank - 1]) / 1e3
}

/// The lines every report starts with: commit, command, machine, load, bench directory.
pub(crate) fn write_context(
    out: &mut String,
    git_commit: &str,
    command: &str,
    machine: &MachineFacts,
    load_average_at_end: Option<f64>,
) {
    let filesystem = &machine.filesystem;
    let rotational = match filesystem.rotational {
        Some(true) => ", rotational",
        Some(false) => ", not rotational",
        None => "",
    };
    let _ = writeln!(out, "- commit: {git_commit}");
    let _ = writeln!(out, "- command: `{command}`");
    let _ = writeln!(
        out,
        "- machine: {} CPUs ({}), {:.1} GiB memory, Linux {}",
        machine.cpus, machine.cpu_model, machine.memory_gib, machine.kernel
    );
    let load =
        |load: Option<f64>| load.map_or_else(|| "unknown".to_owned(), |load| format!("{load:.2}"));
    let _ = writeln!(
        out,
        "- 1-minute load average: {} at the start, {} at the end",
        load(machine.load_average_at_start),
        load(load_average_at_end)
    );
    let _ = writeln!(
        out,
        "- bench directory: {} on {} ({}{rotational}, mounted at {})",
        machine.bench_directory.display(),
        filesystem.device,
        filesystem.kind,
        filesystem.mount_point
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let micros: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(percentile_millis(&micros, 0.50), 50.0);
        assert_eq!(percentile_millis(&micros, 0.99), 99.0);
        assert_eq!(percentile_millis(&[], 0.5), 0.0);
        assert_eq!(percentile_millis(&[1500], 0.99), 1.5);
    }

    #[test]
    fn rates_are_shown_to_three_significant_figures() {
        assert_eq!(format_rate(583.4), "583");
        assert_eq!(format_rate(5_123.0), "5.12 k");
        assert_eq!(format_rate(48_020.0), "48.0 k");
        assert_eq!(format_rate(1_234_567.0), "1.23 M");
    }

    #[test]
    fn ratios_keep_two_decimals_below_ten() {
        assert_eq!(format_ratio(0.984), "0.98x");
        assert_eq!(format_ratio(12.34), "12.3x");
    }
}
