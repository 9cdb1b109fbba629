//! `herald-bench log`: the partition log against the raw disk, case by case.
//!
//! Every log case is compared with a baseline loop doing the same I/O with no log:
//!
//! | log case | baseline |
//! |---|---|
//! | append, `fsync always`, batch of 1, 1 writer | `write` + `fdatasync` of one 1-record frame |
//! | append, `fsync always`, batch of 1, N writers | the same: one fsync per append |
//! | append, `fsync always`, batch of 100 / 1,000 | `write` + `fdatasync` of one frame that size |
//! | append, `fsync never`, batch of 1 / 100 / 1,000 | `write` of one frame that size |
//! | sequential read from the page cache, 1 MiB at a time | `pread` of the segment files, 1 MiB at a time |
//!
//! A shared virtual disk drifts by tens of percent from one second to the next, so a case's
//! time is cut into rounds, and each round runs the baseline and then the log cases back to
//! back. A line of the report gives medians over the rounds, and the ratio to the raw disk is
//! the median of the per-round ratios: each of those compares figures taken seconds apart.
//!
//! Appenders encode every batch themselves (push + finish, with its checksum), as a producer
//! must; the baselines write ready-made bytes. Every run gets a fresh directory, deleted (and
//! the deletion synced, so that its journal commit and discards are paid for) before the next.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use herald_log::{FsyncPolicy, LogConfig, OsStorage, PartitionLog};

use crate::counting::{IoCounts, counting};
use crate::machine::{self, Stopwatch};
use crate::raw_disk::{self, RawRun};
use crate::report::{AppendFigures, CaseResult, Goal, RawResult, Report, Round};
use crate::workload::{Budget, PAYLOAD_BYTES, encode_batch, frame_bytes, now_ms, payload};

/// Bytes asked of one `read` in the read case.
pub const READ_BYTES: u32 = 1 << 20;

/// The read case's id.
const READ_CASE_ID: &str = "read-page-cache";

/// Records per batch when filling the log for the read case.
const READ_FILL_BATCH_RECORDS: u32 = 1000;

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// A fresh directory is made inside this one and removed at the end.
    pub scratch_root: PathBuf,
    /// How long each case runs in all, cut into `rounds` (a round also stops at its byte limit).
    pub case_duration: Duration,
    /// Rounds per case, each running the baseline and the log case back to back.
    pub rounds: u32,
    /// Small sizes: the whole run takes seconds, for checking that the bench works.
    pub quick: bool,
    /// Appender threads of the group commit case.
    pub writers: u32,
    /// Run even when the scratch directory is in memory (tmpfs), where the figures mean nothing.
    pub allow_in_memory: bool,
    /// Run only the cases whose id (e.g. `append-always-batch1-writers64`, `read-page-cache`)
    /// contains this.
    pub only: Option<String>,
    /// The command line, for the report.
    pub command: String,
}

impl Options {
    fn selects(&self, id: &str) -> bool {
        self.only.as_deref().is_none_or(|only| id.contains(only))
    }

    /// The most bytes one round may write: enough for a second of the fastest case, little
    /// enough to stay below the kernel's dirty-page limits on this machine's 24 GiB.
    fn round_bytes_max(&self) -> u64 {
        if self.quick { 64 << 20 } else { 2 << 30 }
    }

    /// Bytes of records the read case reads through.
    fn read_data_bytes(&self) -> u64 {
        if self.quick { 16 << 20 } else { 256 << 20 }
    }

    fn round_duration(&self) -> Duration {
        self.case_duration / self.rounds
    }

    fn budget(&self) -> Budget {
        Budget {
            duration: self.round_duration(),
            bytes_max: self.round_bytes_max(),
        }
    }
}

/// Runs every case and reports; `progress` hears a line per step.
pub fn run(options: &Options, progress: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    ensure!(options.writers >= 1, "--writers must be at least 1");
    ensure!(options.rounds >= 1, "--rounds must be at least 1");
    let (scratch, machine) = machine::scratch_directory(
        &options.scratch_root,
        "herald-bench-",
        options.allow_in_memory,
    )?;
    progress(&format!(
        "bench directory {} on {} ({}); {} round(s) of {:.2} s per case",
        scratch.path().display(),
        machine.filesystem.device,
        machine.filesystem.kind,
        options.rounds,
        options.round_duration().as_secs_f64()
    ));
    let mut bench = Bench {
        options,
        scratch: scratch.path(),
        next_directory: 0,
        progress,
    };
    let mut cases = Vec::new();
    let always = |records_per_batch, writers| AppendCase {
        fsync: FsyncPolicy::Always,
        records_per_batch,
        writers,
    };
    let never = |records_per_batch| AppendCase {
        fsync: FsyncPolicy::Never,
        records_per_batch,
        writers: 1,
    };
    let mut one_record_cases = vec![always(1, 1)];
    if options.writers > 1 {
        one_record_cases.push(always(1, options.writers));
    }
    cases.extend(bench.compare(1, true, &one_record_cases)?);
    cases.extend(bench.compare(100, true, &[always(100, 1)])?);
    cases.extend(bench.compare(1000, true, &[always(1000, 1)])?);
    for records in [1, 100, 1000] {
        cases.extend(bench.compare(records, false, &[never(records)])?);
    }
    if options.selects(READ_CASE_ID) {
        cases.push(bench.read_case()?);
    }
    ensure!(
        !cases.is_empty(),
        "no case id contains {:?}",
        options.only.as_deref().unwrap_or("")
    );

    let goals = goals(&cases, options.writers);
    scratch.close().context("removing the bench directory")?;
    Ok(Report {
        git_commit: machine::git_commit(),
        machine,
        load_average_at_end: machine::load_average(),
        command: options.command.clone(),
        seconds_per_case: options.case_duration.as_secs_f64(),
        rounds: options.rounds,
        quick: options.quick,
        payload_bytes: PAYLOAD_BYTES,
        cases,
        goals,
    })
}

/// One append case of the log.
#[derive(Debug, Clone, Copy)]
struct AppendCase {
    fsync: FsyncPolicy,
    records_per_batch: u32,
    writers: u32,
}

impl AppendCase {
    fn fsync_name(&self) -> &'static str {
        match self.fsync {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Never => "never",
            FsyncPolicy::Interval(_) => "interval",
        }
    }

    fn id(&self) -> String {
        format!(
            "append-{}-batch{}-writers{}",
            self.fsync_name(),
            self.records_per_batch,
            self.writers
        )
    }

    fn name(&self) -> String {
        let writers = if self.writers == 1 {
            "1 writer".to_owned()
        } else {
            format!("{} writers", self.writers)
        };
        format!(
            "append, fsync {}, batch {}, {writers}",
            self.fsync_name(),
            self.records_per_batch
        )
    }
}

struct Bench<'a> {
    options: &'a Options,
    scratch: &'a Path,
    next_directory: u32,
    progress: &'a mut dyn FnMut(&str),
}

impl Bench<'_> {
    /// A path for one run's data, not yet created.
    fn run_path(&mut self, name: &str) -> PathBuf {
        self.next_directory += 1;
        self.scratch
            .join(format!("{:03}-{name}", self.next_directory))
    }

    /// Makes the removal of the last run's files durable before the next run starts, so that
    /// the journal commit (and, on a file system mounted with `discard`, the discards) of a
    /// deletion are not paid for by whichever run comes next.
    fn settle(&self) -> anyhow::Result<()> {
        File::open(self.scratch)
            .and_then(|directory| directory.sync_all())
            .with_context(|| format!("syncing {}", self.scratch.display()))
    }

    /// Runs `cases` against the raw loop for batches of `records` (write, + fdatasync when
    /// `sync`), in rounds.
    fn compare(
        &mut self,
        records: u32,
        sync: bool,
        cases: &[AppendCase],
    ) -> anyhow::Result<Vec<CaseResult>> {
        let cases: Vec<AppendCase> = cases
            .iter()
            .copied()
            .filter(|case| self.options.selects(&case.id()))
            .collect();
        if cases.is_empty() {
            return Ok(Vec::new());
        }
        let chunk_bytes = frame_bytes(records, PAYLOAD_BYTES);
        let raw_name = if sync {
            format!("write+fdatasync {chunk_bytes} B")
        } else {
            format!("write {chunk_bytes} B")
        };
        let records_per_byte = f64::from(records) / chunk_bytes as f64;
        let mut raw_runs = Vec::new();
        let mut case_runs: Vec<Vec<AppendRun>> = vec![Vec::new(); cases.len()];
        for round in 1..=self.options.rounds {
            let path = self.run_path("raw.data");
            let budget = self.options.budget();
            let raw = raw_disk::write_loop(&path, chunk_bytes, sync, budget)
                .with_context(|| format!("raw {raw_name} in {}", path.display()))?;
            self.settle()?;
            (self.progress)(&format!(
                "round {round}: raw {raw_name:<28} {:>10.0} records/s {:>8.1} MB/s",
                raw.bytes as f64 * records_per_byte / raw.elapsed.as_secs_f64(),
                raw.bytes as f64 / raw.elapsed.as_secs_f64() / 1e6,
            ));
            raw_runs.push(raw);
            for (case, runs) in cases.iter().zip(&mut case_runs) {
                let directory = self.run_path(&case.id());
                let run = measure_appends(&directory, *case, budget)
                    .with_context(|| format!("{} in {}", case.name(), directory.display()))?;
                self.settle()?;
                (self.progress)(&format!(
                    "round {round}: log {:<44} {:>10.0} records/s {:>8.1} MB/s",
                    case.name(),
                    run.records as f64 / run.elapsed.as_secs_f64(),
                    run.bytes as f64 / run.elapsed.as_secs_f64() / 1e6,
                ));
                runs.push(run);
            }
        }
        let raw_rounds: Vec<(f64, f64)> = raw_runs
            .iter()
            .map(|raw| {
                let seconds = raw.elapsed.as_secs_f64();
                (
                    raw.bytes as f64 * records_per_byte / seconds,
                    raw.bytes as f64 / seconds / 1e6,
                )
            })
            .collect();
        let raw = raw_result(raw_name, &raw_runs, &raw_rounds);
        let results = cases
            .iter()
            .zip(case_runs)
            .map(|(case, runs)| {
                let rounds: Vec<Round> = runs
                    .iter()
                    .zip(&raw_rounds)
                    .map(|(run, (raw_records_per_second, _))| {
                        let seconds = run.elapsed.as_secs_f64();
                        let records_per_second = run.records as f64 / seconds;
                        Round {
                            records_per_second,
                            megabytes_per_second: run.bytes as f64 / seconds / 1e6,
                            raw_records_per_second: *raw_records_per_second,
                            ratio_to_raw: records_per_second / raw_records_per_second,
                            cpu_cores: run.cpu_cores,
                        }
                    })
                    .collect();
                let mut result = case_result(
                    case.id(),
                    case.name(),
                    runs.iter().map(|run| (run.records, run.bytes, run.elapsed)),
                    rounds,
                    raw.clone(),
                );
                result.appends = Some(append_figures(*case, runs));
                result
            })
            .collect();
        Ok(results)
    }

    /// Fills a log, then, round by round, reads it from offset 0, 1 MiB per read, and reads its
    /// segment files with plain `pread` for the baseline.
    fn read_case(&mut self) -> anyhow::Result<CaseResult> {
        let fill_bytes = self.options.read_data_bytes();
        let name = format!(
            "read from page cache, {} MiB per read, {} MiB log",
            READ_BYTES >> 20,
            fill_bytes >> 20
        );
        let id = READ_CASE_ID.to_owned();
        (self.progress)(&format!(
            "filling a {} MiB log to read ...",
            fill_bytes >> 20
        ));
        let directory = self.run_path(&id);
        let filled = fill_log(&directory, fill_bytes)
            .with_context(|| format!("filling a log in {}", directory.display()))?;
        let mut segment_files: Vec<PathBuf> = fs::read_dir(&directory)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?;
        segment_files.retain(|path| path.extension().is_some_and(|extension| extension == "log"));
        segment_files.sort();

        let duration = self.options.round_duration();
        let mut log_runs = Vec::new();
        let mut raw_runs = Vec::new();
        let mut rounds = Vec::new();
        let mut raw_rounds = Vec::new();
        for round in 1..=self.options.rounds {
            let raw = raw_disk::pread_loop(&segment_files, READ_BYTES as usize, duration)?;
            let raw_seconds = raw.elapsed.as_secs_f64();
            let raw_round = (
                raw.bytes as f64 / filled.bytes_per_record / raw_seconds,
                raw.bytes as f64 / raw_seconds / 1e6,
            );
            let run = read_passes(&filled, duration)?;
            let seconds = run.elapsed.as_secs_f64();
            let records_per_second = run.records as f64 / seconds;
            let megabytes_per_second = records_per_second * filled.bytes_per_record / 1e6;
            (self.progress)(&format!(
                "round {round}: raw pread {:>9.1} MB/s, log read {:>9.1} MB/s ({:.2} M records/s)",
                raw_round.1,
                megabytes_per_second,
                records_per_second / 1e6
            ));
            rounds.push(Round {
                records_per_second,
                megabytes_per_second,
                raw_records_per_second: raw_round.0,
                ratio_to_raw: records_per_second / raw_round.0,
                cpu_cores: run.cpu_cores,
            });
            raw_rounds.push(raw_round);
            raw_runs.push(raw);
            log_runs.push(run);
        }
        filled.log.close()?;
        drop(filled.log);
        fs::remove_dir_all(&directory)?;
        self.settle()?;

        let raw = raw_result(
            format!("pread {} MiB", READ_BYTES >> 20),
            &raw_runs,
            &raw_rounds,
        );
        Ok(case_result(
            id,
            name,
            log_runs.iter().map(|run| {
                let bytes = (run.records as f64 * filled.bytes_per_record) as u64;
                (run.records, bytes, run.elapsed)
            }),
            rounds,
            raw,
        ))
    }
}

pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        length if length % 2 == 1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

pub(crate) fn median_of<T>(items: &[T], value: impl Fn(&T) -> f64) -> f64 {
    median(items.iter().map(value).collect())
}

pub(crate) fn median_cpu(cores: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let cores: Vec<f64> = cores.flatten().collect();
    (!cores.is_empty()).then(|| median(cores))
}

/// A baseline's medians; `rounds` holds records/s and MB/s per round.
pub(crate) fn raw_result(name: String, runs: &[RawRun], rounds: &[(f64, f64)]) -> RawResult {
    RawResult {
        name,
        operations: runs.iter().map(|raw| raw.operations).sum(),
        bytes: runs.iter().map(|raw| raw.bytes).sum(),
        elapsed_seconds: runs.iter().map(|raw| raw.elapsed.as_secs_f64()).sum(),
        records_per_second: median_of(rounds, |round| round.0),
        megabytes_per_second: median_of(rounds, |round| round.1),
        cpu_cores: median_cpu(runs.iter().map(|raw| raw.cpu_cores)),
    }
}

fn case_result(
    id: String,
    name: String,
    totals: impl Iterator<Item = (u64, u64, Duration)>,
    rounds: Vec<Round>,
    raw: RawResult,
) -> CaseResult {
    let (records, bytes, elapsed) = totals.fold((0, 0, Duration::ZERO), |total, run| {
        (total.0 + run.0, total.1 + run.1, total.2 + run.2)
    });
    CaseResult {
        id,
        name,
        records,
        bytes,
        elapsed_seconds: elapsed.as_secs_f64(),
        records_per_second: median_of(&rounds, |round| round.records_per_second),
        megabytes_per_second: median_of(&rounds, |round| round.megabytes_per_second),
        appends: None,
        ratio_to_raw: median_of(&rounds, |round| round.ratio_to_raw),
        cpu_cores: median_cpu(rounds.iter().map(|round| round.cpu_cores)),
        raw,
        rounds,
    }
}

/// What the appends of a case's rounds did, all rounds together.
fn append_figures(case: AppendCase, runs: Vec<AppendRun>) -> AppendFigures {
    let appends: u64 = runs.iter().map(|run| run.appends).sum();
    let elapsed_nanos: u128 = runs.iter().map(|run| run.elapsed.as_nanos()).sum();
    let io = runs
        .iter()
        .fold(IoCounts::default(), |total, run| IoCounts {
            writes: total.writes + run.io.writes,
            syncs: total.syncs + run.io.syncs,
            sync_nanos: total.sync_nanos + run.io.sync_nanos,
        });
    let mut latencies: Vec<u64> = runs
        .into_iter()
        .flat_map(|run| run.latencies_nanos)
        .collect();
    latencies.sort_unstable();
    let percentile_micros = |fraction: f64| {
        let rank =
            ((latencies.len() as f64 * fraction).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies
            .get(rank - 1)
            .map_or(0.0, |nanos| *nanos as f64 / 1e3)
    };
    let per = |calls: u64| (calls > 0).then(|| appends as f64 / calls as f64);
    AppendFigures {
        appends,
        latency_p50_micros: percentile_micros(0.50),
        latency_p99_micros: percentile_micros(0.99),
        latency_max_micros: latencies.last().map_or(0.0, |nanos| *nanos as f64 / 1e3),
        appends_per_write: per(io.writes),
        // Under `never` the only syncs are those of segment rolls: a count per append says
        // nothing, but the time they take (below) does.
        appends_per_sync: if case.fsync == FsyncPolicy::Always {
            per(io.syncs)
        } else {
            None
        },
        syncing_fraction: io.sync_nanos as f64 / elapsed_nanos.max(1) as f64,
    }
}

/// What one append run did, while the clock ran.
#[derive(Debug, Clone)]
struct AppendRun {
    appends: u64,
    records: u64,
    bytes: u64,
    elapsed: Duration,
    cpu_cores: Option<f64>,
    io: IoCounts,
    /// How long each append took, from the call to its return.
    latencies_nanos: Vec<u64>,
}

/// Appends batches of 1 KiB records from `case.writers` threads until the budget is spent.
/// Every thread encodes its own batches.
fn measure_appends(
    directory: &Path,
    case: AppendCase,
    budget: Budget,
) -> anyhow::Result<AppendRun> {
    let (storage, counters) = counting(OsStorage::shared());
    let config = LogConfig {
        fsync: case.fsync,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(storage, directory, config)?;
    let limits = log.config().batch_limits();
    let payload = payload(PAYLOAD_BYTES, 1);
    let timestamp_ms = now_ms();
    let appends = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);

    let before = counters.snapshot();
    let stopwatch = Stopwatch::start();
    let deadline = stopwatch.started() + budget.duration;
    let appender = || -> anyhow::Result<Vec<u64>> {
        let mut latencies_nanos = Vec::new();
        loop {
            let batch = encode_batch(limits, &payload, case.records_per_batch, timestamp_ms)?;
            let batch_bytes = batch.encoded_bytes() as u64;
            let called = Instant::now();
            log.append(batch)?;
            let returned = Instant::now();
            latencies_nanos.push(u64::try_from((returned - called).as_nanos()).unwrap_or(u64::MAX));
            appends.fetch_add(1, Ordering::Relaxed);
            let total_bytes = bytes.fetch_add(batch_bytes, Ordering::Relaxed) + batch_bytes;
            if total_bytes >= budget.bytes_max || returned >= deadline {
                return Ok(latencies_nanos);
            }
        }
    };
    let latencies_nanos = if case.writers == 1 {
        appender()?
    } else {
        std::thread::scope(|scope| -> anyhow::Result<Vec<u64>> {
            let threads: Vec<_> = (0..case.writers).map(|_| scope.spawn(appender)).collect();
            let mut all = Vec::new();
            for thread in threads {
                let latencies = thread
                    .join()
                    .map_err(|_| anyhow!("an appender thread panicked"))??;
                all.extend(latencies);
            }
            Ok(all)
        })?
    };
    let (elapsed, cpu_cores) = stopwatch.stop();
    let io = counters.snapshot().since(before);

    let appends = appends.into_inner();
    let records = appends * u64::from(case.records_per_batch);
    ensure!(
        log.end_offset() == records,
        "the log ends at offset {} after {appends} appends of {}",
        log.end_offset(),
        case.records_per_batch
    );
    // Not timed: under `never` this is where the written bytes reach the disk.
    log.close()?;
    drop(log);
    fs::remove_dir_all(directory)?;
    Ok(AppendRun {
        appends,
        records,
        bytes: bytes.into_inner(),
        elapsed,
        cpu_cores,
        io,
        latencies_nanos,
    })
}

/// A log full of records, synced and in the page cache.
struct FilledLog {
    log: PartitionLog,
    end_offset: u64,
    /// Frame bytes per record, frame overhead included.
    bytes_per_record: f64,
    payload: Vec<u8>,
}

fn fill_log(directory: &Path, fill_bytes: u64) -> anyhow::Result<FilledLog> {
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let log = PartitionLog::open(OsStorage::shared(), directory, config)?;
    let limits = log.config().batch_limits();
    let payload = payload(PAYLOAD_BYTES, 2);
    let timestamp_ms = now_ms();
    let mut written_bytes = 0u64;
    while written_bytes < fill_bytes {
        let batch = encode_batch(limits, &payload, READ_FILL_BATCH_RECORDS, timestamp_ms)?;
        written_bytes += batch.encoded_bytes() as u64;
        log.append(batch)?;
    }
    // Synced so that write-back does not run under the reads; the pages stay cached.
    log.flush()?;
    let end_offset = log.end_offset();
    Ok(FilledLog {
        bytes_per_record: written_bytes as f64 / end_offset as f64,
        end_offset,
        log,
        payload,
    })
}

/// What one read run did, while the clock ran.
#[derive(Debug, Clone, Copy)]
struct ReadRun {
    records: u64,
    elapsed: Duration,
    cpu_cores: Option<f64>,
}

/// Reads the log from offset 0 to its end, again and again, until `duration` is over and at
/// least one whole pass is done. Checks the offsets and the first payload of every read.
fn read_passes(filled: &FilledLog, duration: Duration) -> anyhow::Result<ReadRun> {
    let end_offset = filled.end_offset;
    let mut records = 0u64;
    let mut offset = 0u64;
    let mut passes = 0u32;
    let stopwatch = Stopwatch::start();
    let deadline = stopwatch.started() + duration;
    loop {
        let result = filled.log.read(offset, READ_BYTES)?;
        let first = result.records.first().with_context(|| {
            format!("a read at {offset}, before the end {end_offset}, found nothing")
        })?;
        ensure!(
            first.offset == offset && first.payload[..] == filled.payload[..],
            "a read at {offset} returned offset {} or a wrong payload",
            first.offset
        );
        ensure!(
            result.next_offset == offset + result.records.len() as u64,
            "a read at {offset} returned {} records but next offset {}",
            result.records.len(),
            result.next_offset
        );
        records += result.records.len() as u64;
        offset = result.next_offset;
        if offset == end_offset {
            offset = 0;
            passes += 1;
        }
        if passes > 0 && Instant::now() >= deadline {
            break;
        }
    }
    let (elapsed, cpu_cores) = stopwatch.stop();
    Ok(ReadRun {
        records,
        elapsed,
        cpu_cores,
    })
}

/// The three goals, judged on the cases just measured.
fn goals(cases: &[CaseResult], writers: u32) -> Vec<Goal> {
    let find = |id: &str| cases.iter().find(|case| case.id == id);
    let mut goals = Vec::new();
    if let Some(large) = find("append-always-batch1000-writers1") {
        let medium = find("append-always-batch100-writers1")
            .map(|case| format!("; batch 100: {:.0} %", case.ratio_to_raw * 100.0))
            .unwrap_or_default();
        goals.push(Goal {
            goal: "large batches (1,000 x 1 KiB), fsync always: >= 70 % of raw write+fdatasync bandwidth"
                .to_owned(),
            measured: format!(
                "{:.0} % ({:.0} vs {:.0} MB/s){medium}",
                large.ratio_to_raw * 100.0,
                large.megabytes_per_second,
                large.raw.megabytes_per_second
            ),
            met: large.ratio_to_raw >= 0.70,
        });
    }
    if let Some(read) = find(READ_CASE_ID) {
        goals.push(Goal {
            goal: "sequential reads from the page cache: >= 1 GB/s".to_owned(),
            measured: format!(
                "{:.2} GB/s ({:.2} M records/s)",
                read.megabytes_per_second / 1e3,
                read.records_per_second / 1e6
            ),
            met: read.megabytes_per_second >= 1e3,
        });
    }
    if let Some(group) = find(&format!("append-always-batch1-writers{writers}")) {
        goals.push(Goal {
            goal: format!("batch of 1, fsync always, {writers} concurrent writers: >= 10x one fsync per append"),
            measured: format!(
                "{:.1}x ({:.0} vs {:.0} records/s; {:.1} appends per fdatasync)",
                group.ratio_to_raw,
                group.records_per_second,
                group.raw.records_per_second,
                group
                    .appends
                    .as_ref()
                    .and_then(|appends| appends.appends_per_sync)
                    .unwrap_or(0.0)
            ),
            met: group.ratio_to_raw >= 10.0,
        });
    }
    goals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }

    #[test]
    fn append_figures_sum_the_rounds_and_rank_latencies() {
        let case = AppendCase {
            fsync: FsyncPolicy::Always,
            records_per_batch: 1,
            writers: 2,
        };
        let run = |latencies: std::ops::RangeInclusive<u64>| AppendRun {
            appends: 50,
            records: 50,
            bytes: 50 * 1088,
            elapsed: Duration::from_secs(1),
            cpu_cores: Some(1.0),
            io: IoCounts {
                writes: 25,
                syncs: 10,
                sync_nanos: 500_000_000,
            },
            latencies_nanos: latencies.map(|micros| micros * 1000).collect(),
        };
        let figures = append_figures(case, vec![run(51..=100), run(1..=50)]);
        assert_eq!(figures.appends, 100);
        assert_eq!(figures.latency_p50_micros, 50.0);
        assert_eq!(figures.latency_p99_micros, 99.0);
        assert_eq!(figures.latency_max_micros, 100.0);
        assert_eq!(figures.appends_per_write, Some(2.0));
        assert_eq!(figures.appends_per_sync, Some(5.0));
        assert_eq!(figures.syncing_fraction, 0.5);
    }

    #[test]
    fn a_filter_selects_cases_by_id() {
        let options = Options {
            scratch_root: PathBuf::new(),
            case_duration: Duration::from_secs(1),
            rounds: 1,
            quick: true,
            writers: 64,
            allow_in_memory: false,
            only: Some("batch1-".to_owned()),
            command: String::new(),
        };
        let group = AppendCase {
            fsync: FsyncPolicy::Always,
            records_per_batch: 1,
            writers: 64,
        };
        assert_eq!(group.id(), "append-always-batch1-writers64");
        assert!(options.selects(&group.id()));
        assert!(!options.selects("append-always-batch100-writers1"));
        assert!(!options.selects(READ_CASE_ID));
    }
}
