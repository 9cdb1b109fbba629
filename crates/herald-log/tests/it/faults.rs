//! Injected faults: a full disk and failing syncs, through the simulated disk and on a real
//! size-limited file system.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use herald_log::sim::SimStorage;
use herald_log::{AppendError, OsStorage, PartitionLog, Storage};

use crate::support::{self, TestRecord};

fn fill_until_full(log: &PartitionLog, first_seed: u64) -> (Vec<TestRecord>, AppendError) {
    let mut written = Vec::new();
    for seed in first_seed.. {
        let record = TestRecord::from_seed(seed, 700);
        match support::append(log, std::slice::from_ref(&record)) {
            Ok(info) => {
                assert_eq!(info.base_offset, written.len() as u64);
                written.push(record);
            }
            Err(error) => return (written, error),
        }
    }
    unreachable!("the disk fills up")
}

fn assert_reads_back(log: &PartitionLog, written: &[TestRecord]) {
    let records = support::read_all(log);
    assert_eq!(records.len(), written.len());
    for (record, expected) in records.iter().zip(written) {
        assert!(expected.matches(record), "record {} changed", record.offset);
    }
}

#[test]
fn a_full_disk_fails_the_append_keeps_everything_readable_and_recovers_when_space_returns() {
    let disk = SimStorage::new();
    let shared: Arc<dyn Storage> = disk.shared();
    let directory = Path::new("/data/p");
    let config = support::small_config();
    let log = support::open(&shared, directory, config.clone());
    disk.set_capacity_bytes(20 * 1024);
    let (mut written, error) = fill_until_full(&log, 0);
    assert!(matches!(error, AppendError::DiskFull(_)), "got {error:?}");
    assert!(written.len() > 10);
    // The failed append left nothing behind: same end, everything readable.
    assert_eq!(log.end_offset(), written.len() as u64);
    assert_reads_back(&log, &written);
    // Still full: still the same clear error, still nothing changed.
    let again = support::append(&log, &[TestRecord::from_seed(99, 700)]).unwrap_err();
    assert!(matches!(again, AppendError::DiskFull(_)));
    assert_eq!(log.end_offset(), written.len() as u64);
    // Space comes back: appends continue at the next offset.
    disk.set_capacity_bytes(u64::MAX);
    let record = TestRecord::from_seed(5000, 700);
    let info = support::append(&log, std::slice::from_ref(&record)).unwrap();
    assert_eq!(info.base_offset, written.len() as u64);
    written.push(record);
    assert_reads_back(&log, &written);
    drop(log);
    let log = support::open(&disk.synced_snapshot().shared(), directory, config);
    assert_reads_back(&log, &written);
}

#[test]
fn a_failed_fsync_fails_its_appends_and_the_log_goes_on_without_them() {
    let disk = SimStorage::new();
    let shared: Arc<dyn Storage> = disk.shared();
    let directory = Path::new("/data/p");
    let config = support::small_config();
    let log = support::open(&shared, directory, config.clone());
    let first = TestRecord::from_seed(1, 100);
    support::append(&log, std::slice::from_ref(&first)).unwrap();
    disk.fail_next_syncs(1);
    let error = support::append(&log, &[TestRecord::from_seed(2, 100)]).unwrap_err();
    assert!(matches!(error, AppendError::Io(_)), "got {error:?}");
    assert_eq!(log.end_offset(), 1, "the unsynced record is not visible");
    // The next append takes the offset the failed one would have had.
    let third = TestRecord::from_seed(3, 100);
    let info = support::append(&log, std::slice::from_ref(&third)).unwrap();
    assert_eq!(info.base_offset, 1);
    assert_reads_back(&log, &[first.clone(), third.clone()]);
    drop(log);
    // What the disk holds after a power cut is exactly what was acknowledged.
    let log = support::open(&disk.synced_snapshot().shared(), directory, config);
    assert_reads_back(&log, &[first, third]);
}

/// Mounts a small tmpfs for the real full-disk test; `None` when this machine cannot.
struct SmallFileSystem {
    mount_point: tempfile::TempDir,
}

impl SmallFileSystem {
    fn mount(size: &str) -> Option<Self> {
        let mount_point = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .status()
            .ok()?;
        status.success().then_some(SmallFileSystem { mount_point })
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount_point.path()).status();
    }
}

#[test]
fn a_real_full_file_system_fails_appends_with_disk_full_and_recovers() {
    let Some(file_system) = SmallFileSystem::mount("512k") else {
        let message = "CANNOT MOUNT A SMALL TMPFS HERE: the real full-disk test did not run \
                       (the simulated one above covers the same path)";
        assert!(
            std::env::var_os("HERALD_REQUIRE_MOUNT").is_none(),
            "{message}"
        );
        eprintln!("WARNING: {message}");
        return;
    };
    let root = file_system.mount_point.path();
    let ballast = root.join("ballast");
    std::fs::write(&ballast, vec![0u8; 128 * 1024]).unwrap();
    let storage = OsStorage::shared();
    let directory = root.join("p");
    let config = support::small_config();
    let log = support::open(&storage, &directory, config.clone());
    let (mut written, error) = fill_until_full(&log, 0);
    assert!(matches!(error, AppendError::DiskFull(_)), "got {error:?}");
    assert_eq!(log.end_offset(), written.len() as u64);
    assert_reads_back(&log, &written);
    std::fs::remove_file(&ballast).unwrap();
    let record = TestRecord::from_seed(77, 700);
    support::append(&log, std::slice::from_ref(&record)).expect("appends work once space is back");
    written.push(record);
    drop(log);
    let log = support::open(&storage, &directory, config);
    assert_reads_back(&log, &written);
}
