//! Every limit of the log, at the limit and one past it.

use std::path::Path;
use std::sync::Arc;

use herald_log::sim::SimStorage;
use herald_log::{
    AppendError, BatchBuilder, BatchError, BatchLimits, LogConfig, OpenError, PartitionLog,
    ReadError, RecordInput, Storage,
};

use crate::support::{self, TestRecord};

fn record(payload: &[u8]) -> RecordInput<'_> {
    RecordInput {
        timestamp_ms: 1,
        key: None,
        headers: &[],
        payload,
    }
}

/// Fixed bytes of a record with no key and no headers.
const RECORD_OVERHEAD: usize = 24;

#[test]
fn record_bytes_max_admits_a_record_of_exactly_that_size() {
    let config = support::small_config();
    let log = support::open(&SimStorage::new().shared(), Path::new("/p"), config.clone());
    let mut builder = log.batch_builder();
    let at_limit = vec![1u8; config.record_bytes_max as usize - RECORD_OVERHEAD];
    builder.push(record(&at_limit)).unwrap();
    let over = vec![1u8; at_limit.len() + 1];
    let error = builder.push(record(&over)).unwrap_err();
    assert!(
        matches!(error, BatchError::RecordTooLarge { index: 1, .. }),
        "got {error:?}"
    );
    log.append(builder.finish().unwrap()).unwrap();
    assert_eq!(
        log.read(0, 4096).unwrap().records[0].payload.len(),
        at_limit.len()
    );
}

#[test]
fn a_batch_built_for_larger_limits_is_refused_by_the_log() {
    let config = support::small_config();
    let log = support::open(&SimStorage::new().shared(), Path::new("/p"), config.clone());
    let generous = BatchLimits {
        record_bytes_max: 1 << 20,
        batch_bytes_max: 1 << 20,
        batch_records_max: 1 << 20,
    };
    let mut builder = BatchBuilder::new(generous);
    let payload = vec![0u8; config.batch_bytes_max as usize];
    builder.push(record(&payload)).unwrap();
    let error = log.append(builder.finish().unwrap()).unwrap_err();
    assert!(
        matches!(error, AppendError::Batch(BatchError::BatchTooLarge { .. })),
        "got {error:?}"
    );
    let config = LogConfig {
        batch_records_max: 3,
        ..support::small_config()
    };
    let log = support::open(&SimStorage::new().shared(), Path::new("/q"), config);
    let mut builder = BatchBuilder::new(generous);
    for _ in 0..4 {
        builder.push(record(b"x")).unwrap();
    }
    let error = log.append(builder.finish().unwrap()).unwrap_err();
    assert!(matches!(
        error,
        AppendError::Batch(BatchError::TooManyRecords { records: 4, max: 3 })
    ));
    assert_eq!(log.end_offset(), 0, "nothing of a refused batch is stored");
}

#[test]
fn in_flight_appends_max_refuses_the_append_past_it() {
    let disk = SimStorage::new();
    let config = LogConfig {
        in_flight_appends_max: 2,
        ..support::small_config()
    };
    let log = support::open(&disk.shared(), Path::new("/p"), config);
    disk.hold_syncs();
    let appenders: Vec<_> = (0..2)
        .map(|seed| {
            let log = log.clone();
            std::thread::spawn(move || support::append(&log, &[TestRecord::from_seed(seed, 10)]))
        })
        .collect();
    while log.in_flight().0 < 2 {
        std::thread::yield_now();
    }
    let error = support::append(&log, &[TestRecord::from_seed(9, 10)]).unwrap_err();
    assert!(
        matches!(
            error,
            AppendError::Overloaded {
                limit: "in_flight_appends_max",
                in_flight: 2,
                max: 2
            }
        ),
        "got {error:?}"
    );
    disk.release_syncs();
    for appender in appenders {
        appender.join().unwrap().unwrap();
    }
    assert_eq!(log.end_offset(), 2);
    support::append(&log, &[TestRecord::from_seed(9, 10)]).expect("room again");
}

#[test]
fn in_flight_bytes_max_refuses_the_batch_that_would_pass_it() {
    let disk = SimStorage::new();
    let base = support::small_config();
    let config = LogConfig {
        in_flight_bytes_max: u64::from(base.batch_bytes_max),
        record_bytes_max: base.batch_bytes_max,
        ..base
    };
    let log = support::open(&disk.shared(), Path::new("/p"), config.clone());
    let batch = |bytes: usize| {
        let mut builder = log.batch_builder();
        builder
            .push(record(&vec![0u8; bytes - RECORD_OVERHEAD - 40]))
            .unwrap();
        builder.finish().unwrap()
    };
    disk.hold_writes();
    // The first append takes the writer role and waits in its write; the next ones queue.
    let first = {
        let (log, batch) = (log.clone(), batch(100));
        std::thread::spawn(move || log.append(batch))
    };
    while disk.writes_waiting() == 0 {
        std::thread::yield_now();
    }
    let queued_bytes = 1000;
    let second = {
        let (log, batch) = (log.clone(), batch(queued_bytes));
        std::thread::spawn(move || log.append(batch))
    };
    while log.in_flight().1 < queued_bytes as u64 {
        std::thread::yield_now();
    }
    let room = config.in_flight_bytes_max as usize - queued_bytes;
    let error = log.append(batch(room + 1)).unwrap_err();
    assert!(
        matches!(
            error,
            AppendError::Overloaded {
                limit: "in_flight_bytes_max",
                ..
            }
        ),
        "got {error:?}"
    );
    let exactly = {
        let (log, batch) = (log.clone(), batch(room));
        std::thread::spawn(move || log.append(batch))
    };
    while log.in_flight().1 < config.in_flight_bytes_max {
        std::thread::yield_now();
    }
    disk.release_writes();
    for appender in [first, second, exactly] {
        appender.join().unwrap().unwrap();
    }
    assert_eq!(log.end_offset(), 3);
}

#[test]
fn open_segments_max_bounds_the_open_sealed_files() {
    let disk = SimStorage::new();
    let shared: Arc<dyn Storage> = disk.shared();
    let config = LogConfig {
        open_segments_max: 2,
        ..support::small_config()
    };
    let log = support::open(&shared, Path::new("/p"), config.clone());
    let written: Vec<TestRecord> = (0..150)
        .map(|seed| TestRecord::from_seed(seed, 300))
        .collect();
    for record in &written {
        support::append(&log, std::slice::from_ref(record)).unwrap();
    }
    assert!(log.info().segments > 4);
    drop(log);
    let log = support::open(&shared, Path::new("/p"), config);
    assert_eq!(log.open_sealed_segments(), 0, "sealed segments open lazily");
    for (offset, record) in written.iter().enumerate() {
        let read = log.read(offset as u64, 1).unwrap();
        assert!(record.matches(&read.records[0]));
        assert!(log.open_sealed_segments() <= 2);
    }
    assert_eq!(log.open_sealed_segments(), 2);
}

#[test]
fn read_bytes_max_refuses_larger_reads() {
    let config = LogConfig {
        read_bytes_max: 4096,
        ..support::small_config()
    };
    let log = support::open(&SimStorage::new().shared(), Path::new("/p"), config);
    support::append(&log, &[TestRecord::from_seed(1, 10)]).unwrap();
    assert_eq!(log.read(0, 4096).unwrap().records.len(), 1);
    assert!(matches!(
        log.read(0, 4097),
        Err(ReadError::TooLarge {
            requested: 4097,
            max: 4096
        })
    ));
}

#[test]
fn impossible_settings_are_refused_when_opening() {
    let config = LogConfig {
        segment_bytes_max: u64::from(u32::MAX) + 1,
        ..LogConfig::default()
    };
    let error = PartitionLog::open(SimStorage::new().shared(), "/p", config).unwrap_err();
    assert!(
        matches!(error, OpenError::Config(ref config) if config.setting == "segment_bytes_max")
    );
    let config = LogConfig {
        batch_bytes_max: 1 << 20,
        segment_bytes_max: 1 << 19,
        ..LogConfig::default()
    };
    assert!(PartitionLog::open(SimStorage::new().shared(), "/p", config).is_err());
}

#[test]
fn reading_outside_the_retained_range_is_an_error() {
    let log = support::open(
        &SimStorage::new().shared(),
        Path::new("/p"),
        support::small_config(),
    );
    support::append(&log, &[TestRecord::from_seed(1, 10)]).unwrap();
    assert!(
        log.read(1, 4096).unwrap().records.is_empty(),
        "the end reads as empty"
    );
    let error = log.read(2, 4096).unwrap_err();
    assert!(matches!(
        error,
        ReadError::OffsetOutOfRange {
            offset: 2,
            start_offset: 0,
            end_offset: 1
        }
    ));
}
