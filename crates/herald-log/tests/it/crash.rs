//! Crash consistency through the I/O seam: the simulated disk separates written from synced
//! bytes; after a crash at any point, every completed append is readable, byte for byte, and
//! nothing corrupt is served.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use herald_log::sim::SimStorage;
use herald_log::{AppendInfo, FsyncPolicy, LogConfig, PartitionLog, Storage};

use crate::support::{self, TestRecord};

const DIRECTORY: &str = "/data/orders-0";

/// Appends batches until the disk crashes; returns what completed and every seed attempted.
fn append_until_crash(
    log: &PartitionLog,
    first_seed: u64,
    batches: u64,
) -> (Vec<(AppendInfo, Vec<u64>)>, Vec<u64>) {
    let mut completed = Vec::new();
    let mut attempted = Vec::new();
    for batch in 0..batches {
        let size = 1 + (batch % 3);
        let seeds: Vec<u64> = (0..size).map(|n| first_seed + batch * 10 + n).collect();
        attempted.extend(&seeds);
        let records: Vec<TestRecord> = seeds.iter().map(|seed| support::seeded(*seed)).collect();
        match support::append(log, &records) {
            Ok(info) => completed.push((info, seeds)),
            Err(_) => break,
        }
    }
    (completed, attempted)
}

/// Reopens the crashed disk and checks every promise.
fn check_after_crash(
    disk: &SimStorage,
    seed: u64,
    config: &LogConfig,
    completed: &[(AppendInfo, Vec<u64>)],
    attempted: &HashSet<u64>,
) {
    let restarted = disk.after_crash(seed);
    let shared: Arc<dyn Storage> = restarted.shared();
    let log = PartitionLog::open(shared.clone(), Path::new(DIRECTORY), config.clone())
        .expect("recovery opens the log");
    let records = support::read_all(&log);
    // Nothing corrupt, nothing invented: every record served is one that was written.
    for record in &records {
        let written = support::check_seeded(record);
        assert!(
            attempted.contains(&written),
            "record {} was never appended",
            record.offset
        );
    }
    // Every completed append is there, at its offsets.
    for (info, seeds) in completed {
        for (offset, seed) in (info.base_offset..info.end_offset).zip(seeds) {
            let record = records.get(offset as usize).unwrap_or_else(|| {
                panic!("completed offset {offset} lost (have {})", records.len())
            });
            assert_eq!(
                support::check_seeded(record),
                *seed,
                "offset {offset} holds another record"
            );
        }
    }
    // The recovered log takes appends again, right after what survived.
    let end = log.end_offset();
    let info = support::append(&log, &[support::seeded(1)]).expect("append after recovery");
    assert_eq!(info.base_offset, end);
    drop(log);
    let log = PartitionLog::open(shared, Path::new(DIRECTORY), config.clone()).unwrap();
    assert_eq!(log.end_offset(), end + 1);
}

#[test]
fn a_crash_at_every_operation_of_a_single_writer_loses_no_completed_append() {
    let config = support::small_config();
    // Count the operations of a clean run, then crash at each one in turn.
    let clean = SimStorage::new();
    let log = support::open(&clean.shared(), Path::new(DIRECTORY), config.clone());
    append_until_crash(&log, 1000, 40);
    drop(log);
    let total_operations = clean.operations();
    assert!(
        total_operations > 40,
        "the run rolls segments and syncs: {total_operations} operations"
    );
    for crash_at in 1..=total_operations {
        let disk = SimStorage::new();
        disk.crash_after_operations(crash_at);
        let (completed, attempted) =
            match PartitionLog::open(disk.shared(), Path::new(DIRECTORY), config.clone()) {
                Ok(log) => append_until_crash(&log, 1000, 40),
                Err(_) => (Vec::new(), Vec::new()),
            };
        let attempted: HashSet<u64> = attempted.into_iter().collect();
        check_after_crash(&disk, crash_at, &config, &completed, &attempted);
    }
}

#[test]
fn a_crash_under_concurrent_appends_loses_no_completed_append() {
    for round in 0..150u64 {
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            ..support::small_config()
        };
        let disk = SimStorage::new();
        let log = support::open(&disk.shared(), Path::new(DIRECTORY), config.clone());
        disk.crash_after_operations(5 + (round * 7919) % 400);
        let completed = Arc::new(Mutex::new(Vec::new()));
        let attempted = Arc::new(Mutex::new(HashSet::new()));
        let writers: Vec<_> = (0..4u64)
            .map(|writer| {
                let log = log.clone();
                let completed = completed.clone();
                let attempted = attempted.clone();
                std::thread::spawn(move || {
                    let (done, tried) = append_until_crash(&log, 1_000_000 * (writer + 1), 1000);
                    completed.lock().unwrap().extend(done);
                    attempted.lock().unwrap().extend(tried);
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        assert!(
            disk.is_crashed(),
            "round {round}: the planned crash happened"
        );
        drop(log);
        let completed = completed.lock().unwrap().clone();
        let attempted = attempted.lock().unwrap().clone();
        check_after_crash(&disk, round, &config, &completed, &attempted);
    }
}
