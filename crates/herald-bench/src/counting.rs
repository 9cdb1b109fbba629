//! A [`Storage`] that passes everything to another one and counts writes and syncs.
//!
//! The log's group commit is invisible from outside: an append just returns. Counting the
//! `pwrite` and `fdatasync` calls underneath shows how many appends shared each one, and the time
//! spent inside `fdatasync` shows how much of a run the disk was kept busy syncing. The cost is
//! a relaxed atomic add or two per call and, per sync, two clock reads: nothing next to the
//! system call.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use herald_log::{Storage, StorageFile};

/// Calls made through a [`CountingStorage`] and the files it opened.
#[derive(Debug, Default)]
pub struct IoCounters {
    writes: AtomicU64,
    syncs: AtomicU64,
    sync_nanos: AtomicU64,
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoCounts {
    pub writes: u64,
    /// `fdatasync` of segment and index files, and `fsync` of directories.
    pub syncs: u64,
    /// Time spent inside those syncs, summed over threads.
    pub sync_nanos: u64,
}

impl IoCounters {
    pub fn snapshot(&self) -> IoCounts {
        IoCounts {
            writes: self.writes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            sync_nanos: self.sync_nanos.load(Ordering::Relaxed),
        }
    }
}

impl IoCounters {
    fn timed_sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let start = Instant::now();
        let result = sync();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_nanos.fetch_add(nanos, Ordering::Relaxed);
        result
    }
}

impl IoCounts {
    /// The calls made between `earlier` and `self`.
    pub fn since(self, earlier: IoCounts) -> IoCounts {
        IoCounts {
            writes: self.writes - earlier.writes,
            syncs: self.syncs - earlier.syncs,
            sync_nanos: self.sync_nanos - earlier.sync_nanos,
        }
    }
}

/// Wraps `inner`, counting into the returned counters.
pub fn counting(inner: Arc<dyn Storage>) -> (Arc<dyn Storage>, Arc<IoCounters>) {
    let counters = Arc::new(IoCounters::default());
    let storage = Arc::new(CountingStorage {
        inner,
        counters: counters.clone(),
    });
    (storage, counters)
}

#[derive(Debug)]
struct CountingStorage {
    inner: Arc<dyn Storage>,
    counters: Arc<IoCounters>,
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn StorageFile>,
    counters: Arc<IoCounters>,
}

impl CountingStorage {
    fn wrap(&self, file: Arc<dyn StorageFile>) -> Arc<dyn StorageFile> {
        Arc::new(CountingFile {
            inner: file,
            counters: self.counters.clone(),
        })
    }
}

impl Storage for CountingStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir_all(path)
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.inner.open(path).map(|file| self.wrap(file))
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.inner.create_new(path).map(|file| self.wrap(file))
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<Arc<dyn StorageFile>> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.inner
            .write_file(path, bytes)
            .map(|file| self.wrap(file))
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.read_file(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_dir_all(path)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.list_dir(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.counters.timed_sync(|| self.inner.sync_dir(path))
    }
}

impl StorageFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.inner.read_at(buf, position)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write_all_at(buf, position)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.counters.timed_sync(|| self.inner.sync_data())
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        self.inner.set_len(length)
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], position: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, position)
    }
}

#[cfg(test)]
mod tests {
    use herald_log::{FsyncPolicy, LogConfig, OsStorage, PartitionLog};

    use super::*;
    use crate::workload::{encode_batch, payload};

    #[test]
    fn one_append_under_fsync_always_is_one_write_and_one_sync() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let (storage, counters) = counting(OsStorage::shared());
        let config = LogConfig {
            fsync: FsyncPolicy::Always,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(storage, directory.path().join("log"), config)
            .expect("the log opens");
        let before = counters.snapshot();
        let batch = encode_batch(log.config().batch_limits(), &payload(100, 1), 3, 0)
            .expect("the batch fits");
        log.append(batch).expect("the append succeeds");
        let counts = counters.snapshot().since(before);
        assert_eq!((counts.writes, counts.syncs), (1, 1));
    }
}
