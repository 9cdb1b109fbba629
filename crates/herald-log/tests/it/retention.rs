//! Retention deletes whole segments by age and by size, through the broker's veto hook.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_log::sim::SimStorage;
use herald_log::{PartitionLog, ReadError, RetentionPolicy, SegmentInfo, Storage};

use crate::support::{self, TestRecord};

/// Writes `count` records with timestamps 1000, 1001, ... and returns the log and its disk.
fn log_with_records(count: u64) -> (PartitionLog, Arc<dyn Storage>, Vec<TestRecord>) {
    let disk: Arc<dyn Storage> = SimStorage::new().shared();
    let log = support::open(&disk, Path::new("/p"), support::small_config());
    let written: Vec<TestRecord> = (0..count)
        .map(|seed| TestRecord {
            timestamp_ms: 1000 + seed,
            ..TestRecord::from_seed(seed, 200)
        })
        .collect();
    for record in &written {
        support::append(&log, std::slice::from_ref(record)).unwrap();
    }
    (log, disk, written)
}

fn segment_names(disk: &Arc<dyn Storage>) -> BTreeSet<String> {
    disk.list_dir(Path::new("/p"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn age_retention_deletes_only_segments_whose_every_record_is_too_old() {
    let (log, disk, written) = log_with_records(100);
    let segments_before = log.info().segments;
    let policy = RetentionPolicy {
        age_max: Some(Duration::from_millis(50)),
        bytes_max: None,
    };
    let now_ms = 1000 + 100;
    let outcome = log.apply_retention(&policy, now_ms, &mut |_| true).unwrap();
    assert!(outcome.deleted_segments > 0 && outcome.deleted_segments < segments_before);
    let start = log.start_offset();
    // Deleted: only records older than the limit. Kept: every record within it.
    assert!(
        written[..start as usize]
            .iter()
            .all(|record| record.timestamp_ms + 50 < now_ms)
    );
    assert!(
        start <= 50,
        "record 50 (timestamp 1050) is within the limit"
    );
    let kept = support::read_all(&log);
    assert_eq!(kept.first().unwrap().offset, start);
    assert!(matches!(
        log.read(start - 1, 4096),
        Err(ReadError::OffsetOutOfRange { .. })
    ));
    // The deleted segments' files are gone, and the new start survives a reopen.
    let names = segment_names(&disk);
    assert!(!names.contains("00000000000000000000.log"));
    assert!(!names.contains("00000000000000000000.index"));
    drop(log);
    // A retention pass cut short by a crash can leave an index file without its segment; the
    // next open removes it.
    disk.write_file(Path::new("/p/00000000000000000000.index"), b"leftover")
        .unwrap();
    let log = support::open(&disk, Path::new("/p"), support::small_config());
    assert_eq!(log.start_offset(), start);
    assert!(!segment_names(&disk).contains("00000000000000000000.index"));
}

#[test]
fn when_every_record_is_too_old_the_active_segment_is_rolled_and_deleted_too() {
    let (log, disk, _) = log_with_records(30);
    let policy = RetentionPolicy {
        age_max: Some(Duration::from_secs(1)),
        bytes_max: None,
    };
    log.apply_retention(&policy, 1_000_000, &mut |_| true)
        .unwrap();
    let info = log.info();
    assert_eq!(
        (info.start_offset, info.end_offset, info.segments),
        (30, 30, 1)
    );
    assert!(support::read_all(&log).is_empty());
    // Offsets go on from where they were, also after a reopen.
    drop(log);
    let log = support::open(&disk, Path::new("/p"), support::small_config());
    assert_eq!(
        support::append(&log, &[TestRecord::from_seed(1, 1)])
            .unwrap()
            .base_offset,
        30
    );
}

#[test]
fn size_retention_keeps_the_partition_under_its_byte_limit() {
    let (log, _, written) = log_with_records(100);
    let before = log.info();
    let bytes_max = before.bytes / 3;
    let policy = RetentionPolicy {
        age_max: None,
        bytes_max: Some(bytes_max),
    };
    let outcome = log.apply_retention(&policy, 0, &mut |_| true).unwrap();
    let after = log.info();
    assert!(after.bytes <= bytes_max, "{after:?}");
    assert_eq!(after.bytes + outcome.deleted_bytes, before.bytes);
    let kept = support::read_all(&log);
    for record in &kept {
        assert!(written[record.offset as usize].matches(record));
    }
}

#[test]
fn the_hook_can_keep_segments_that_a_consumer_still_needs() {
    let (log, _, _) = log_with_records(100);
    let policy = RetentionPolicy {
        age_max: None,
        bytes_max: Some(1),
    };
    // A consumer still needs offset 20: segments holding it (or later) must stay.
    let needed = 20;
    let mut asked = Vec::new();
    let outcome = log
        .apply_retention(&policy, 0, &mut |segment: &SegmentInfo| {
            asked.push(*segment);
            segment.end_offset <= needed
        })
        .unwrap();
    assert!(outcome.vetoed);
    let start = log.start_offset();
    assert!(start <= needed, "offset {needed} is still readable");
    assert!(log.read(needed, 4096).is_ok());
    let vetoed = asked.last().unwrap();
    assert_eq!(
        vetoed.base_offset, start,
        "deletion stopped at the first vetoed segment"
    );
    // Once the consumer moves on, the next pass deletes what the policy says.
    let outcome = log.apply_retention(&policy, 0, &mut |_| true).unwrap();
    assert!(!outcome.vetoed && outcome.deleted_segments > 0);
    assert_eq!(log.info().segments, 1);
}
