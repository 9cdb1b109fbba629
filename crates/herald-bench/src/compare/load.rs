//! The load generator every system of `herald-bench compare` shares: the same clock, the same
//! counting, the same payloads, whatever the client library underneath.
//!
//! A [`Worker`] is one client (a producer, a consumer, a requester) that does one unit of work
//! per [`Worker::step`]: publish a batch and wait for its confirms, pull a batch and ack it, make
//! one round trip. [`run_workers`] spawns the workers on the load generator's runtime and stops
//! them either at the end of a time window ([`Stop::Window`]: only steps that end inside the
//! window count) or once they have done a number of events together ([`Stop::Count`]). It
//! measures the elapsed time, the latency of every step, and the CPU time of the load generator
//! and of the server (a [`CpuProbe`]) over the same interval.
//!
//! Consumers of a backlog that is drained in parts take their events from a [`Budget`], so that
//! no consumer takes (and leases) events beyond the part being measured.
//!
//! [`run_latency`] publishes at a fixed rate and has one consumer report each event's send time.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use tokio::sync::Notify;

use crate::machine;
use crate::report::percentile_millis;

/// How long a count-stopped run may go without any progress before it fails.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of the send time (µs since the epoch, little-endian) at the start of a timed payload.
pub const SENT_MICROS_BYTES: usize = 8;

/// One client of a workload.
pub trait Worker: Send + 'static {
    /// Does one unit of work and says how many events (or round trips) it completed: `Some(0)`
    /// when it waited and found nothing, `None` when this worker has nothing more to do (its
    /// budget is spent), after which it is not called again.
    fn step(&mut self) -> impl Future<Output = anyhow::Result<Option<u64>>> + Send;
}

/// When a run of workers ends.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// Steps run from the start; those that end inside `[start + warmup, start + warmup +
    /// duration)` count.
    Window {
        warmup: Duration,
        duration: Duration,
    },
    /// The run ends once the workers have completed `target` events together.
    Count { target: u64 },
}

/// Where the server's CPU time is read.
#[derive(Debug, Clone)]
pub enum CpuProbe {
    /// One process (a `herald serve` the bench started).
    Pid(u32),
    /// Every process with this command name (`postgres`, `beam.smp`, ...).
    Command(&'static str),
    /// Not known.
    None,
}

impl CpuProbe {
    pub fn seconds(&self) -> Option<f64> {
        match self {
            CpuProbe::Pid(pid) => machine::cpu_seconds_of(*pid),
            CpuProbe::Command(command) => machine::cpu_seconds_of_command(command),
            CpuProbe::None => None,
        }
    }
}

/// CPU seconds of the load generator, of the server and of the whole machine at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    bench: Option<f64>,
    server: Option<f64>,
    machine: Option<f64>,
}

/// CPU cores (CPU seconds per second) used between two marks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuCores {
    pub bench: Option<f64>,
    pub server: Option<f64>,
    /// Every other program on the machine (a compiler, say; also the systems not being
    /// measured, idle). The kernel's threads (writeback, the journal) are not counted: they
    /// work for the system being measured. More than a few tenths of a core means the figures
    /// were disturbed.
    pub other: Option<f64>,
}

impl CpuMark {
    pub fn now(probe: &CpuProbe) -> CpuMark {
        CpuMark {
            bench: machine::process_cpu_seconds(),
            server: probe.seconds(),
            machine: machine::programs_cpu_seconds(),
            at: Instant::now(),
        }
    }

    /// When the mark was taken.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// What was used from `self` to `end`.
    pub fn cores_until(&self, end: &CpuMark) -> CpuCores {
        let seconds = (end.at - self.at).as_secs_f64();
        let per_second = |before: Option<f64>, after: Option<f64>| {
            Some((after? - before?) / seconds).filter(|_| seconds > 0.0)
        };
        let bench = per_second(self.bench, end.bench);
        let server = per_second(self.server, end.server);
        let other = per_second(self.machine, end.machine)
            .map(|all| (all - bench.unwrap_or(0.0) - server.unwrap_or(0.0)).max(0.0));
        CpuCores {
            bench,
            server,
            other,
        }
    }
}

/// What a run of workers measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    /// Events (or round trips) completed inside the window, or in all for a count.
    pub events: u64,
    pub seconds: f64,
    /// Steps that completed something, and the latency of each (µs, sorted).
    pub steps: u64,
    #[serde(skip)]
    pub step_micros: Vec<u32>,
    /// CPU seconds per second over the measured interval: 2.0 is both cores of a 2-core machine.
    pub bench_cpu_cores: Option<f64>,
    pub server_cpu_cores: Option<f64>,
    pub other_cpu_cores: Option<f64>,
}

impl Run {
    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            0.0
        }
    }

    pub fn step_percentile_millis(&self, fraction: f64) -> f64 {
        percentile_millis(&self.step_micros, fraction)
    }

    fn set_cpu(&mut self, start: &CpuMark, end: &CpuMark) {
        let cores = start.cores_until(end);
        self.bench_cpu_cores = cores.bench;
        self.server_cpu_cores = cores.server;
        self.other_cpu_cores = cores.other;
    }
}

/// What one worker did.
#[derive(Debug, Default)]
struct WorkerRun {
    events: u64,
    step_micros: Vec<u32>,
}

fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

/// Runs `workers` until `stop`, each on its own task of the current runtime.
pub async fn run_workers<W: Worker>(
    workers: Vec<W>,
    stop: Stop,
    server: &CpuProbe,
) -> anyhow::Result<Run> {
    let (run, workers) = run_workers_keeping(workers, stop, server).await?;
    drop(workers);
    Ok(run)
}

/// [`run_workers`], handing the workers back: until they are dropped, their connections stay
/// open. That matters for the CPU reading: a PostgreSQL backend exits with its connection, and
/// its CPU time would vanish from the server's sum if it exited before the last reading.
pub async fn run_workers_keeping<W: Worker>(
    workers: Vec<W>,
    stop: Stop,
    server: &CpuProbe,
) -> anyhow::Result<(Run, Vec<W>)> {
    ensure!(!workers.is_empty(), "a run needs at least one worker");
    let failed = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let progress = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let (window_start, window_end) = match stop {
        Stop::Window { warmup, duration } => {
            (Some(started + warmup), Some(started + warmup + duration))
        }
        Stop::Count { .. } => (None, None),
    };
    let target = match stop {
        Stop::Count { target } => target,
        Stop::Window { .. } => u64::MAX,
    };
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let failed = failed.clone();
        let completed = completed.clone();
        let done = done.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(async move {
            let mut run = WorkerRun::default();
            let result = async {
                loop {
                    if completed.load(Ordering::Relaxed) >= target || failed.load(Ordering::Relaxed)
                    {
                        return anyhow::Ok(());
                    }
                    let sent = Instant::now();
                    let Some(events) = worker.step().await? else {
                        return Ok(());
                    };
                    let answered = Instant::now();
                    progress.fetch_add(1, Ordering::Relaxed);
                    if let (Some(start), Some(end)) = (window_start, window_end) {
                        if answered >= start && answered < end {
                            run.events += events;
                            if events > 0 {
                                run.step_micros.push(micros(answered - sent));
                            }
                        }
                        if answered >= end {
                            return Ok(());
                        }
                    } else if events > 0 {
                        run.events += events;
                        run.step_micros.push(micros(answered - sent));
                        let before = completed.fetch_add(events, Ordering::Relaxed);
                        if before < target && before + events >= target {
                            done.notify_one();
                        }
                    }
                }
            }
            .await;
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
                done.notify_one();
            }
            result.map(|()| (run, worker))
        }));
    }
    let (start_mark, end_mark) = match (window_start, window_end) {
        (Some(start), Some(end)) => {
            sleep_until_or_failed(start, &failed).await;
            let start_mark = CpuMark::now(server);
            sleep_until_or_failed(end, &failed).await;
            (start_mark, CpuMark::now(server))
        }
        _ => {
            let start_mark = CpuMark {
                at: started,
                ..CpuMark::now(server)
            };
            // Wait for the count, failing when nothing moves for too long.
            let mut last_progress = 0;
            loop {
                let notified = done.notified();
                if completed.load(Ordering::Relaxed) >= target || failed.load(Ordering::Relaxed) {
                    break;
                }
                if tokio::time::timeout(STALL_TIMEOUT, notified).await.is_err() {
                    let now = progress.load(Ordering::Relaxed);
                    if now == last_progress {
                        failed.store(true, Ordering::Relaxed);
                        for task in &tasks {
                            task.abort();
                        }
                        bail!(
                            "no progress for {} s: {} of {target} events done",
                            STALL_TIMEOUT.as_secs(),
                            completed.load(Ordering::Relaxed)
                        );
                    }
                    last_progress = now;
                }
            }
            (start_mark, CpuMark::now(server))
        }
    };
    let mut run = Run::default();
    let mut errors = Vec::new();
    let mut finished = Vec::new();
    for (number, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok((worker_run, worker))) => {
                run.events += worker_run.events;
                run.step_micros.extend(worker_run.step_micros);
                finished.push(worker);
            }
            Ok(Err(error)) => errors.push(format!("worker {number}: {error:#}")),
            Err(error) => errors.push(format!("worker {number} panicked: {error}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    if let Stop::Count { target } = stop {
        ensure!(
            run.events >= target,
            "the workers stopped after {} of {target} events",
            run.events
        );
    }
    run.steps = run.step_micros.len() as u64;
    run.step_micros.sort_unstable();
    run.seconds = (end_mark.at - start_mark.at).as_secs_f64();
    run.set_cpu(&start_mark, &end_mark);
    Ok((run, finished))
}

async fn sleep_until_or_failed(deadline: Instant, failed: &AtomicBool) {
    while !failed.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(20))).await;
    }
}

/// Events that consumers may still take, shared by the consumers of one measured part of a
/// backlog, so that together they take exactly that many.
#[derive(Debug)]
pub struct Budget {
    remaining: AtomicU64,
}

impl Budget {
    pub fn new(events: u64) -> Arc<Budget> {
        Arc::new(Budget {
            remaining: AtomicU64::new(events),
        })
    }

    /// Takes up to `max` events; 0 once the budget is spent.
    pub fn take(&self, max: u64) -> u64 {
        let mut current = self.remaining.load(Ordering::Relaxed);
        loop {
            let taken = current.min(max);
            if taken == 0 {
                return 0;
            }
            match self.remaining.compare_exchange_weak(
                current,
                current - taken,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return taken,
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back events taken but not received (a pull answered fewer).
    pub fn give_back(&self, events: u64) {
        self.remaining.fetch_add(events, Ordering::Relaxed);
    }

    pub fn remaining(&self) -> u64 {
        self.remaining.load(Ordering::Relaxed)
    }
}

/// Microseconds since the Unix epoch.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

/// A payload of `bytes` bytes for the peers: printable letters that do not compress, the same
/// for every event (the peers store opaque bytes, so their content does not matter to them).
pub fn payload(bytes: usize) -> Vec<u8> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state: u64 = 0x5eed_0001;
    (0..bytes)
        .map(|_| {
            // xorshift64, as the Herald events' filler.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state % 62) as usize]
        })
        .collect()
}

/// A payload of `bytes` bytes that starts with its send time (see [`sent_micros`]).
pub fn timed_payload(template: &[u8], sent_micros: u64) -> Vec<u8> {
    let mut payload = template.to_vec();
    payload[..SENT_MICROS_BYTES].copy_from_slice(&sent_micros.to_le_bytes());
    payload
}

/// The send time at the start of a timed payload.
pub fn sent_micros(payload: &[u8]) -> anyhow::Result<u64> {
    let bytes: [u8; SENT_MICROS_BYTES] = payload
        .get(..SENT_MICROS_BYTES)
        .and_then(|bytes| bytes.try_into().ok())
        .context("a timed payload shorter than its timestamp")?;
    Ok(u64::from_le_bytes(bytes))
}

/// Publishes the latency workload's batches.
pub trait TimedPublisher: Clone + Send + Sync + 'static {
    /// Publishes `events` events, batch `number` of the run, each carrying `sent_micros`, and
    /// returns once they are confirmed.
    fn publish(
        &self,
        number: u64,
        sent_micros: u64,
        events: u32,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The latency workload's one consumer.
pub trait TimedConsumer: Send + 'static {
    /// Waits for the next events (acking those of the previous call) and returns the send time
    /// of each, read as soon as they arrived, with that arrival time (µs since the epoch).
    fn receive(&mut self) -> impl Future<Output = anyhow::Result<(u64, Vec<u64>)>> + Send;
}

/// What the latency workload measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyRun {
    pub published: u64,
    pub received: u64,
    pub seconds: f64,
    pub p50_millis: f64,
    pub p99_millis: f64,
    pub p999_millis: f64,
    pub max_millis: f64,
    /// From sending a batch to its confirm.
    pub publish_p99_millis: f64,
    pub bench_cpu_cores: Option<f64>,
    pub server_cpu_cores: Option<f64>,
    pub other_cpu_cores: Option<f64>,
}

/// Publishes `rate` events per second for `duration`, in batches of `batch` (one every
/// `batch / rate` seconds, paced by a timer, each batch on its own task so that a slow confirm
/// does not delay the next), while `consumer` receives them; the latency of an event is its
/// arrival minus its send time.
pub async fn run_latency<P: TimedPublisher, C: TimedConsumer>(
    publisher: P,
    mut consumer: C,
    rate: u32,
    batch: u32,
    duration: Duration,
    server: &CpuProbe,
) -> anyhow::Result<LatencyRun> {
    ensure!(
        batch >= 1 && rate >= batch,
        "the latency rate must be at least the batch, which must be at least 1"
    );
    let period = Duration::from_secs_f64(f64::from(batch) / f64::from(rate));
    let batches = (duration.as_secs_f64() / period.as_secs_f64()).round() as u64;
    ensure!(batches >= 1, "the latency run is too short for one batch");
    let expected = batches * u64::from(batch);
    let start_mark = CpuMark::now(server);
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(expected as usize);
        while (latencies.len() as u64) < expected {
            let (arrived, sent) = consumer.receive().await?;
            latencies.extend(
                sent.iter()
                    .map(|&sent| u32::try_from(arrived.saturating_sub(sent)).unwrap_or(u32::MAX)),
            );
        }
        anyhow::Ok(latencies)
    });
    let sender = tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut requests = Vec::with_capacity(batches as usize);
        for number in 0..batches {
            interval.tick().await;
            let publisher = publisher.clone();
            requests.push(tokio::spawn(async move {
                let sent = Instant::now();
                publisher.publish(number, unix_micros(), batch).await?;
                anyhow::Ok(micros(sent.elapsed()))
            }));
        }
        let mut latencies = Vec::with_capacity(requests.len());
        for request in requests {
            latencies.push(request.await.context("a publish panicked")??);
        }
        anyhow::Ok(latencies)
    });
    let mut publish_micros = sender.await.context("the publisher panicked")??;
    let deadline = Duration::from_secs(30);
    let mut latencies = tokio::time::timeout(deadline, receiver)
        .await
        .with_context(|| {
            format!(
                "the consumer did not receive all {expected} events within {} s of the last publish",
                deadline.as_secs()
            )
        })?
        .context("the consumer panicked")??;
    let end_mark = CpuMark::now(server);
    latencies.sort_unstable();
    publish_micros.sort_unstable();
    let mut run = LatencyRun {
        published: expected,
        received: latencies.len() as u64,
        seconds: (end_mark.at - start_mark.at).as_secs_f64(),
        p50_millis: percentile_millis(&latencies, 0.50),
        p99_millis: percentile_millis(&latencies, 0.99),
        p999_millis: percentile_millis(&latencies, 0.999),
        max_millis: latencies.last().map_or(0.0, |&max| f64::from(max) / 1e3),
        publish_p99_millis: percentile_millis(&publish_micros, 0.99),
        ..LatencyRun::default()
    };
    let cores = start_mark.cores_until(&end_mark);
    run.bench_cpu_cores = cores.bench;
    run.server_cpu_cores = cores.server;
    run.other_cpu_cores = cores.other;
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter {
        budget: Arc<Budget>,
    }

    impl Worker for Counter {
        async fn step(&mut self) -> anyhow::Result<Option<u64>> {
            let taken = self.budget.take(7);
            if taken == 0 {
                return Ok(None);
            }
            tokio::task::yield_now().await;
            Ok(Some(taken))
        }
    }

    #[test]
    fn a_budget_hands_out_exactly_its_events() {
        let budget = Budget::new(10);
        assert_eq!(budget.take(4), 4);
        assert_eq!(budget.take(100), 6);
        assert_eq!(budget.take(1), 0);
        budget.give_back(3);
        assert_eq!(budget.remaining(), 3);
        assert_eq!(budget.take(5), 3);
    }

    #[test]
    fn workers_on_a_budget_complete_exactly_the_count() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let budget = Budget::new(1000);
        let workers = (0..4)
            .map(|_| Counter {
                budget: budget.clone(),
            })
            .collect();
        let run = runtime
            .block_on(run_workers(
                workers,
                Stop::Count { target: 1000 },
                &CpuProbe::None,
            ))
            .expect("the run completes");
        assert_eq!(run.events, 1000);
        assert_eq!(budget.remaining(), 0);
        assert_eq!(run.server_cpu_cores, None);
    }

    #[test]
    fn a_timed_payload_carries_its_send_time() {
        let template = payload(1024);
        assert_eq!(template.len(), 1024);
        assert!(template.iter().all(u8::is_ascii_alphanumeric));
        let timed = timed_payload(&template, 1_795_651_200_000_000);
        assert_eq!(timed.len(), 1024);
        assert_eq!(
            sent_micros(&timed).expect("a timestamp"),
            1_795_651_200_000_000
        );
        assert!(sent_micros(&[1, 2]).is_err());
    }
}
