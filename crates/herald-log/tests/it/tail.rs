//! Readers and the writer: tailing without polling, reads that never wait for a sync.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herald_log::sim::SimStorage;
use herald_log::{FsyncPolicy, LogConfig, OsStorage, Storage};

use crate::support::{self, TestRecord};

#[tokio::test(flavor = "current_thread")]
async fn a_tailing_reader_wakes_when_a_record_is_appended() {
    let directory = tempfile::tempdir().unwrap();
    let storage = OsStorage::shared();
    let log = support::open(&storage, directory.path(), LogConfig::default());
    let writer = log.clone();
    let waiter = tokio::spawn({
        let log = log.clone();
        async move { log.wait_for_offset(0).await }
    });
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished(), "nothing was appended yet");
    std::thread::spawn(move || support::append(&writer, &[TestRecord::from_seed(1, 10)]).unwrap())
        .join()
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken by the append")
        .unwrap();
    assert_eq!(end, 1);
    // Waiting for an offset that is already there returns at once.
    assert_eq!(log.wait_for_offset(0).await, 1);
}

#[test]
fn readers_do_not_wait_for_a_sync_in_progress_and_do_not_see_unsynced_records() {
    let storage = SimStorage::new();
    let shared: Arc<dyn Storage> = storage.shared();
    let directory = Path::new("/data/p");
    let log = support::open(&shared, directory, support::small_config());
    support::append(&log, &[TestRecord::from_seed(1, 100)]).unwrap();

    storage.hold_syncs();
    let writer = log.clone();
    let appender =
        std::thread::spawn(move || support::append(&writer, &[TestRecord::from_seed(2, 100)]));
    // Wait until the second batch is written and its sync is held.
    while storage.syncs_waiting() == 0 {
        std::thread::yield_now();
    }
    // The read answers while the sync is stuck, and shows only the synced record.
    let read = log.read(0, 64 * 1024).unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(log.end_offset(), 1);
    assert!(!appender.is_finished(), "the append waits for its sync");
    storage.release_syncs();
    let info = appender.join().unwrap().unwrap();
    assert_eq!(info.base_offset, 1);
    assert_eq!(log.read(0, 64 * 1024).unwrap().records.len(), 2);
}

#[test]
fn with_fsync_never_records_are_visible_at_once_and_survive_a_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let storage = OsStorage::shared();
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let log = support::open(&storage, directory.path(), config.clone());
    let records: Vec<_> = (0..50)
        .map(|seed| TestRecord::from_seed(seed, 64))
        .collect();
    support::append(&log, &records).unwrap();
    assert_eq!(log.end_offset(), 50);
    log.close().unwrap();
    drop(log);
    let log = support::open(&storage, directory.path(), config);
    let all = support::read_all(&log);
    assert!(
        all.iter()
            .zip(&records)
            .all(|(read, written)| written.matches(read))
    );
    assert_eq!(all.len(), 50);
}

#[test]
fn with_fsync_interval_the_flusher_syncs_in_the_background() {
    let storage = SimStorage::new();
    let shared: Arc<dyn Storage> = storage.shared();
    let directory = Path::new("/data/p");
    let config = LogConfig {
        fsync: FsyncPolicy::Interval(Duration::from_millis(20)),
        ..support::small_config()
    };
    let log = support::open(&shared, directory, config.clone());
    support::append(&log, &[TestRecord::from_seed(7, 100)]).unwrap();
    // Visible before any sync...
    assert_eq!(log.end_offset(), 1);
    // ...and durable within a few intervals, without another append: a crash then keeps it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let copy = storage.synced_snapshot();
        let reopened = support::open(&copy.shared(), directory, config.clone());
        if reopened.end_offset() == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flusher never synced"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
