//! Helpers shared by the log's integration tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_log::{AppendInfo, LogConfig, PartitionLog, Record, RecordInput, Storage};

/// Small segments and indexes, so a few kilobytes exercise rolling and index lookups.
pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 8 * 1024,
        index_interval_bytes: 256,
        batch_bytes_max: 4 * 1024,
        record_bytes_max: 2 * 1024,
        segment_age_max: Duration::from_secs(3600),
        ..LogConfig::default()
    }
}

/// A record as the tests write it and expect it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRecord {
    pub timestamp_ms: u64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl TestRecord {
    /// A record whose bytes are derived from `seed`, so a test can rebuild it later.
    pub fn from_seed(seed: u64, payload_bytes: usize) -> Self {
        let mut payload = Vec::with_capacity(payload_bytes);
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        while payload.len() < payload_bytes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            payload.extend_from_slice(&state.to_le_bytes());
        }
        payload.truncate(payload_bytes);
        if payload_bytes >= 8 {
            payload[..8].copy_from_slice(&seed.to_le_bytes());
        }
        TestRecord {
            timestamp_ms: 1_000_000 + seed,
            key: (!seed.is_multiple_of(3)).then(|| format!("key-{}", seed % 7).into_bytes()),
            headers: vec![(b"seed".to_vec(), seed.to_string().into_bytes())],
            payload,
        }
    }

    pub fn matches(&self, record: &Record) -> bool {
        record.timestamp_ms == self.timestamp_ms
            && record.key.as_deref() == self.key.as_deref()
            && record.payload[..] == self.payload[..]
            && record
                .headers
                .iter()
                .map(|(name, value)| (name.to_vec(), value.to_vec()))
                .collect::<Vec<_>>()
                == self.headers
    }
}

pub fn append(
    log: &PartitionLog,
    records: &[TestRecord],
) -> Result<AppendInfo, herald_log::AppendError> {
    let mut builder = log.batch_builder();
    for record in records {
        let headers: Vec<(&[u8], &[u8])> = record
            .headers
            .iter()
            .map(|(name, value)| (&name[..], &value[..]))
            .collect();
        builder.push(RecordInput {
            timestamp_ms: record.timestamp_ms,
            key: record.key.as_deref(),
            headers: &headers,
            payload: &record.payload,
        })?;
    }
    log.append(builder.finish()?)
}

/// Every record from `offset` to the end, read in reads of `max_bytes`.
pub fn read_all_from(log: &PartitionLog, mut offset: u64, max_bytes: u32) -> Vec<Record> {
    let mut records = Vec::new();
    loop {
        let result = log.read(offset, max_bytes).expect("read");
        if result.records.is_empty() {
            return records;
        }
        for record in &result.records {
            assert_eq!(record.offset, offset, "offsets are dense and in order");
            offset += 1;
        }
        assert_eq!(result.next_offset, offset);
        records.extend(result.records);
    }
}

pub fn read_all(log: &PartitionLog) -> Vec<Record> {
    read_all_from(log, log.start_offset(), 64 * 1024)
}

pub fn open(storage: &Arc<dyn Storage>, directory: &Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(storage.clone(), directory, config).expect("open the log")
}

/// The payload size the crash tests use for a seed, so a record can be rebuilt from its seed.
pub fn seeded(seed: u64) -> TestRecord {
    TestRecord::from_seed(seed, (seed % 300) as usize)
}

/// Checks that a record read back is exactly the seeded record it names; returns its seed.
pub fn check_seeded(record: &Record) -> u64 {
    let seed: u64 = std::str::from_utf8(record.headers.get(b"seed").expect("a seed header"))
        .expect("utf-8 seed")
        .parse()
        .expect("numeric seed");
    assert!(
        seeded(seed).matches(record),
        "record {} is not what was written",
        record.offset
    );
    seed
}
