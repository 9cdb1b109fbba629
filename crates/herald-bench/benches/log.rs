//! Criterion micro-benchmarks of the partition log: `cargo bench -p herald-bench --bench log`.
//!
//! - `append/batch_100x1KiB/fsync_never` and `.../fsync_always`: encode and append one batch of
//!   100 records of 1 KiB, from one thread (so no group commit).
//! - `read/1MiB_page_cache`: one `read(offset, 1 MiB)` of a log held in the page cache.
//! - `encode/batch_100x1KiB`: `BatchBuilder` push x 100 + finish, no I/O.
//!
//! Data goes to a directory under the workspace's `target/`, removed afterwards. Measurement
//! times are short so that the whole run takes about a minute; for figures to publish, use the
//! `herald-bench log` binary, which also measures the raw disk next to each case.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herald_bench::machine::default_scratch_root;
use herald_bench::workload::{PAYLOAD_BYTES, encode_batch, frame_bytes, now_ms, payload};
use herald_log::{FsyncPolicy, LogConfig, OsStorage, PartitionLog};
use tempfile::TempDir;

const READ_BYTES: u32 = 1 << 20;
const READ_LOG_BYTES: u64 = 64 << 20;

fn scratch() -> TempDir {
    let root = default_scratch_root();
    std::fs::create_dir_all(&root).expect("the scratch root can be created");
    tempfile::Builder::new()
        .prefix("herald-criterion-")
        .tempdir_in(root)
        .expect("a scratch directory can be created")
}

fn open(directory: &Path, fsync: FsyncPolicy) -> PartitionLog {
    let config = LogConfig {
        fsync,
        ..LogConfig::default()
    };
    PartitionLog::open(OsStorage::shared(), directory, config).expect("the log opens")
}

fn append(criterion: &mut Criterion) {
    let scratch = scratch();
    let payload = payload(PAYLOAD_BYTES, 1);
    let timestamp_ms = now_ms();
    let mut group = criterion.benchmark_group("append");
    group.throughput(Throughput::Elements(100));
    for (name, fsync) in [
        ("fsync_never", FsyncPolicy::Never),
        ("fsync_always", FsyncPolicy::Always),
    ] {
        let mut run = 0u32;
        group.bench_function(format!("batch_100x1KiB/{name}"), |bencher| {
            // A fresh log per sample keeps the disk use of one sample bounded; opening and
            // deleting it is not timed.
            bencher.iter_custom(|iterations| {
                run += 1;
                let directory = scratch.path().join(format!("{name}-{run}"));
                let log = open(&directory, fsync);
                let limits = log.config().batch_limits();
                let start = Instant::now();
                for _ in 0..iterations {
                    let batch =
                        encode_batch(limits, &payload, 100, timestamp_ms).expect("the batch fits");
                    black_box(log.append(batch).expect("the append succeeds"));
                }
                let elapsed = start.elapsed();
                drop(log);
                std::fs::remove_dir_all(&directory).expect("the log directory can be removed");
                elapsed
            });
        });
    }
    group.finish();
}

fn read(criterion: &mut Criterion) {
    let scratch = scratch();
    let log = open(&scratch.path().join("log"), FsyncPolicy::Never);
    let limits = log.config().batch_limits();
    let payload = payload(PAYLOAD_BYTES, 2);
    let timestamp_ms = now_ms();
    let mut written = 0u64;
    while written < READ_LOG_BYTES {
        let batch = encode_batch(limits, &payload, 1000, timestamp_ms).expect("the batch fits");
        written += batch.encoded_bytes() as u64;
        log.append(batch).expect("the append succeeds");
    }
    log.flush().expect("the log syncs");
    let end_offset = log.end_offset();

    let mut group = criterion.benchmark_group("read");
    // Each read returns the one whole 1,000-record frame that fits in 1 MiB.
    group.throughput(Throughput::Bytes(frame_bytes(1000, PAYLOAD_BYTES) as u64));
    let mut offset = 0u64;
    group.bench_function("1MiB_page_cache", |bencher| {
        bencher.iter(|| {
            let result = log.read(offset, READ_BYTES).expect("the read succeeds");
            offset = if result.next_offset >= end_offset {
                0
            } else {
                result.next_offset
            };
            black_box(result)
        });
    });
    group.finish();
}

fn encode(criterion: &mut Criterion) {
    let payload = payload(PAYLOAD_BYTES, 3);
    let limits = LogConfig::default().batch_limits();
    let timestamp_ms = now_ms();
    let mut group = criterion.benchmark_group("encode");
    group.throughput(Throughput::Bytes(frame_bytes(100, PAYLOAD_BYTES) as u64));
    group.bench_function("batch_100x1KiB", |bencher| {
        bencher.iter(|| {
            encode_batch(limits, black_box(&payload), 100, timestamp_ms).expect("the batch fits")
        });
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = append, read, encode
}
criterion_main!(benches);
