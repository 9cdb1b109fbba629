//! A simulated disk for crash and fault tests.
//!
//! [`SimStorage`] keeps every file in memory twice: the bytes written so far (what the page
//! cache holds) and the bytes as of the last `sync_data` (what the disk holds). Directory entries
//! are durable only after `sync_dir`. [`SimStorage::crash`] freezes the disk as a power cut
//! would, and [`SimStorage::after_crash`] returns the disk a restarted process would find: the
//! synced bytes plus any prefix of the unsynced tail, possibly with a damaged byte in it (a torn
//! write), since the kernel may write back dirty pages at any time and in any order.
//!
//! Faults: a capacity limit (writes past it fail with `StorageFull` after writing what fits, as a
//! full disk does), failing syncs, and a crash at the n-th mutating operation. Once crashed, every
//! operation on the old handles fails, as if the process had died.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::io::{Storage, StorageFile};

/// An in-memory disk with crash and fault injection. Cloning shares the same disk.
#[derive(Debug, Clone, Default)]
pub struct SimStorage {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Lock order: `namespace` before any file's state. Held only for short, non-blocking work.
    namespace: Mutex<Namespace>,
    crashed: AtomicBool,
    /// Mutating operations left before a crash; 0 means no crash is planned.
    crash_countdown: AtomicU64,
    /// Syncs left to fail with an I/O error.
    failing_syncs: AtomicU64,
    /// Total bytes all files may hold; `u64::MAX` means unlimited.
    capacity_bytes: AtomicU64,
    operations: AtomicU64,
    /// Which operations wait (to hold appends in flight in tests).
    holds: Mutex<Holds>,
    holds_released: Condvar,
    syncs_waiting: AtomicU64,
    writes_waiting: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Holds {
    syncs: bool,
    writes: bool,
}

#[derive(Debug, Default)]
struct Namespace {
    files: BTreeMap<PathBuf, Arc<Mutex<FileState>>>,
    /// Entries whose creation is not yet durable (their directory was not synced since).
    undurable_created: BTreeSet<PathBuf>,
    /// Entries removed whose removal is not yet durable: they come back after a crash.
    undurable_removed: BTreeMap<PathBuf, Arc<Mutex<FileState>>>,
    directories: BTreeSet<PathBuf>,
}

#[derive(Debug, Default, Clone)]
struct FileState {
    /// The bytes written so far, as the page cache holds them.
    data: Vec<u8>,
    /// The bytes as of the last sync, as the disk holds them.
    synced: Vec<u8>,
    /// The lowest position changed since the last sync; `usize::MAX` when clean. Lets a sync copy
    /// only what changed.
    dirty_from: usize,
}

impl FileState {
    fn new(data: Vec<u8>, synced: Vec<u8>) -> Self {
        let dirty_from = data
            .iter()
            .zip(&synced)
            .position(|(a, b)| a != b)
            .unwrap_or(data.len().min(synced.len()));
        let dirty_from = if data.len() == synced.len() && dirty_from == data.len() {
            usize::MAX
        } else {
            dirty_from
        };
        Self {
            data,
            synced,
            dirty_from,
        }
    }

    fn mark_dirty(&mut self, position: usize) {
        self.dirty_from = self.dirty_from.min(position);
    }

    fn sync(&mut self) {
        if self.dirty_from == usize::MAX {
            return;
        }
        self.synced.truncate(self.dirty_from.min(self.data.len()));
        let from = self.synced.len();
        self.synced.extend_from_slice(&self.data[from..]);
        self.dirty_from = usize::MAX;
    }

    /// The unsynced bytes that follow the synced ones, when the file only grew since the sync.
    fn unsynced_tail(&self) -> Option<&[u8]> {
        (self.dirty_from >= self.synced.len() && self.data.len() > self.synced.len())
            .then(|| &self.data[self.synced.len()..])
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<FileState>>,
    inner: Arc<Inner>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a test thread must not hide the disk from the other threads.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn crashed_error() -> io::Error {
    io::Error::other("simulated crash: the process that owned this handle is gone")
}

impl Inner {
    fn check_alive(&self) -> io::Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            return Err(crashed_error());
        }
        Ok(())
    }

    /// Called before every mutating operation: counts it and crashes when the plan says so.
    fn before_mutation(&self) -> io::Result<()> {
        self.check_alive()?;
        self.operations.fetch_add(1, Ordering::SeqCst);
        let countdown = self.crash_countdown.load(Ordering::SeqCst);
        if countdown > 0 && self.crash_countdown.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(crashed_error());
        }
        Ok(())
    }

    fn wait_while_held(&self, held: impl Fn(&Holds) -> bool, waiting: &AtomicU64) {
        let mut holds = lock(&self.holds);
        if !held(&holds) {
            return;
        }
        waiting.fetch_add(1, Ordering::SeqCst);
        while held(&holds) {
            holds = self
                .holds_released
                .wait(holds)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn used_bytes(&self) -> u64 {
        let namespace = lock(&self.namespace);
        namespace
            .files
            .values()
            .map(|file| lock(file).data.len() as u64)
            .sum()
    }
}

impl SimStorage {
    /// An empty disk with no faults planned.
    pub fn new() -> Self {
        let storage = Self::default();
        storage
            .inner
            .capacity_bytes
            .store(u64::MAX, Ordering::SeqCst);
        storage
    }

    /// The same disk as a shareable trait object.
    pub fn shared(&self) -> Arc<dyn Storage> {
        Arc::new(self.clone())
    }

    /// Limits the bytes all files together may hold (`u64::MAX` for no limit).
    pub fn set_capacity_bytes(&self, capacity_bytes: u64) {
        self.inner
            .capacity_bytes
            .store(capacity_bytes, Ordering::SeqCst);
    }

    /// Bytes all files hold now.
    pub fn used_bytes(&self) -> u64 {
        self.inner.used_bytes()
    }

    /// Makes the next `count` syncs fail with an I/O error.
    pub fn fail_next_syncs(&self, count: u64) {
        self.inner.failing_syncs.store(count, Ordering::SeqCst);
    }

    /// Makes every sync wait until [`SimStorage::release_syncs`], so tests can hold appends in
    /// flight.
    pub fn hold_syncs(&self) {
        lock(&self.inner.holds).syncs = true;
    }

    /// Makes every file write wait until [`SimStorage::release_writes`].
    pub fn hold_writes(&self) {
        lock(&self.inner.holds).writes = true;
    }

    /// Lets held and future writes go on.
    pub fn release_writes(&self) {
        lock(&self.inner.holds).writes = false;
        self.inner.holds_released.notify_all();
    }

    /// Writes waiting now because writes are held.
    pub fn writes_waiting(&self) -> u64 {
        self.inner.writes_waiting.load(Ordering::SeqCst)
    }

    /// Syncs waiting now because syncs are held.
    pub fn syncs_waiting(&self) -> u64 {
        self.inner.syncs_waiting.load(Ordering::SeqCst)
    }

    /// Lets held and future syncs go on.
    pub fn release_syncs(&self) {
        lock(&self.inner.holds).syncs = false;
        self.inner.holds_released.notify_all();
    }

    /// Crashes when the `count`-th mutating operation from now is attempted (it does not happen).
    pub fn crash_after_operations(&self, count: u64) {
        self.inner.crash_countdown.store(count, Ordering::SeqCst);
    }

    /// Mutating operations performed so far.
    pub fn operations(&self) -> u64 {
        self.inner.operations.load(Ordering::SeqCst)
    }

    /// Crashes now: every later operation through this disk's handles fails.
    pub fn crash(&self) {
        self.inner.crashed.store(true, Ordering::SeqCst);
    }

    /// True once crashed.
    pub fn is_crashed(&self) -> bool {
        self.inner.crashed.load(Ordering::SeqCst)
    }

    /// The disk a restarted process finds after a crash (crashing now if not crashed yet).
    ///
    /// Each file keeps its synced bytes followed by a prefix of its unsynced bytes; with
    /// `seed`-driven chance, one byte of that unsynced prefix is damaged. Creations and removals
    /// that were not made durable by `sync_dir` are undone.
    pub fn after_crash(&self, seed: u64) -> SimStorage {
        self.crash();
        self.snapshot_after_crash(seed)
    }

    /// The disk a power cut now would leave, as [`SimStorage::after_crash`] makes it, without
    /// crashing this one: the process goes on.
    pub fn snapshot_after_crash(&self, seed: u64) -> SimStorage {
        self.image(Some(seed))
    }

    /// The disk as the last syncs left it: no unsynced byte and no undurable directory entry.
    pub fn synced_snapshot(&self) -> SimStorage {
        self.image(None)
    }

    fn image(&self, seed: Option<u64>) -> SimStorage {
        let mut random = seed.map(SplitMix64);
        let namespace = lock(&self.inner.namespace);
        let mut files = BTreeMap::new();
        let survivors = namespace
            .files
            .iter()
            .filter(|(path, _)| !namespace.undurable_created.contains(*path))
            .chain(namespace.undurable_removed.iter());
        for (path, state) in survivors {
            let state = lock(state);
            let mut bytes = state.synced.clone();
            if let (Some(unsynced), Some(random)) = (state.unsynced_tail(), random.as_mut()) {
                let kept = (random.next() % (unsynced.len() as u64 + 1)) as usize;
                let start = bytes.len();
                bytes.extend_from_slice(&unsynced[..kept]);
                if kept > 0 && random.next().is_multiple_of(4) {
                    let victim = start + (random.next() % kept as u64) as usize;
                    bytes[victim] ^= 1 << (random.next() % 8);
                }
            }
            let file = FileState::new(bytes.clone(), bytes);
            files.insert(path.clone(), Arc::new(Mutex::new(file)));
        }
        let restarted = SimStorage::new();
        {
            let mut new_namespace = lock(&restarted.inner.namespace);
            new_namespace.files = files;
            new_namespace.directories = namespace.directories.clone();
        }
        restarted
    }

    /// A copy of a file's current bytes (written, not necessarily synced), for tests.
    pub fn file_bytes(&self, path: &Path) -> Option<Vec<u8>> {
        let namespace = lock(&self.inner.namespace);
        namespace
            .files
            .get(path)
            .map(|file| lock(file).data.clone())
    }

    /// Replaces a file's bytes as a disk fault would (both written and synced), for tests.
    pub fn corrupt_file(&self, path: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
        let namespace = lock(&self.inner.namespace);
        if let Some(file) = namespace.files.get(path) {
            let mut state = lock(file);
            let mut bytes = state.data.clone();
            edit(&mut bytes);
            *state = FileState::new(bytes.clone(), bytes);
        }
    }

    fn insert_file(&self, path: &Path, state: FileState) -> io::Result<Arc<dyn StorageFile>> {
        let mut namespace = lock(&self.inner.namespace);
        let parent = path.parent().unwrap_or(Path::new("")).to_owned();
        if !namespace.directories.contains(&parent) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", parent.display()),
            ));
        }
        let state = Arc::new(Mutex::new(state));
        let replaced = namespace.files.insert(path.to_owned(), state.clone());
        if replaced.is_none() {
            namespace.undurable_created.insert(path.to_owned());
        }
        Ok(Arc::new(SimFile {
            state,
            inner: self.inner.clone(),
        }))
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.check_alive()?;
        let mut namespace = lock(&self.inner.namespace);
        for ancestor in path.ancestors() {
            namespace.directories.insert(ancestor.to_owned());
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.inner.check_alive()?;
        let namespace = lock(&self.inner.namespace);
        match namespace.files.get(path) {
            Some(state) => Ok(Arc::new(SimFile {
                state: state.clone(),
                inner: self.inner.clone(),
            })),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", path.display()),
            )),
        }
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn StorageFile>> {
        self.inner.before_mutation()?;
        if lock(&self.inner.namespace).files.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        self.insert_file(path, FileState::new(Vec::new(), Vec::new()))
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<Arc<dyn StorageFile>> {
        self.inner.before_mutation()?;
        let used = self.inner.used_bytes();
        let old = lock(&self.inner.namespace)
            .files
            .get(path)
            .map(|file| lock(file).data.len() as u64)
            .unwrap_or(0);
        if used - old + bytes.len() as u64 > self.inner.capacity_bytes.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::StorageFull.into());
        }
        let synced = lock(&self.inner.namespace)
            .files
            .get(path)
            .map(|file| lock(file).synced.clone())
            .unwrap_or_default();
        self.insert_file(path, FileState::new(bytes.to_vec(), synced))
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.inner.check_alive()?;
        self.file_bytes(path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", path.display()),
            )
        })
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.before_mutation()?;
        let mut namespace = lock(&self.inner.namespace);
        let Some(state) = namespace.files.remove(path) else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no file {}", path.display()),
            ));
        };
        if !namespace.undurable_created.remove(path) {
            namespace.undurable_removed.insert(path.to_owned(), state);
        }
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.inner.before_mutation()?;
        let mut namespace = lock(&self.inner.namespace);
        // Removing a whole tree is treated as durable at once: the log only does it when a
        // partition is deleted for good, and the broker records that decision itself.
        namespace.files.retain(|file, _| !file.starts_with(path));
        namespace
            .undurable_created
            .retain(|file| !file.starts_with(path));
        namespace
            .undurable_removed
            .retain(|file, _| !file.starts_with(path));
        namespace
            .directories
            .retain(|directory| !directory.starts_with(path));
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.inner.check_alive()?;
        let namespace = lock(&self.inner.namespace);
        if !namespace.directories.contains(path) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no directory {}", path.display()),
            ));
        }
        let mut names: Vec<String> = namespace
            .files
            .keys()
            .filter(|file| file.parent() == Some(path))
            .filter_map(|file| file.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.extend(
            namespace
                .directories
                .iter()
                .filter(|directory| directory.parent() == Some(path))
                .filter_map(|directory| directory.file_name()?.to_str().map(str::to_owned)),
        );
        Ok(names)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.before_mutation()?;
        let mut namespace = lock(&self.inner.namespace);
        namespace
            .undurable_created
            .retain(|file| file.parent() != Some(path));
        namespace
            .undurable_removed
            .retain(|file, _| file.parent() != Some(path));
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], position: u64) -> io::Result<usize> {
        self.inner.check_alive()?;
        let state = lock(&self.state);
        let start = usize::try_from(position).unwrap_or(usize::MAX);
        if start >= state.data.len() {
            return Ok(0);
        }
        let count = buf.len().min(state.data.len() - start);
        buf[..count].copy_from_slice(&state.data[start..start + count]);
        Ok(count)
    }

    fn write_all_at(&self, buf: &[u8], position: u64) -> io::Result<()> {
        self.inner
            .wait_while_held(|holds| holds.writes, &self.inner.writes_waiting);
        self.inner.before_mutation()?;
        let used = self.inner.used_bytes();
        let capacity = self.inner.capacity_bytes.load(Ordering::SeqCst);
        let mut state = lock(&self.state);
        let start = usize::try_from(position).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start + buf.len();
        let growth = end.saturating_sub(state.data.len()) as u64;
        let room = capacity.saturating_sub(used);
        // A full disk writes what fits, then fails: callers must cope with a partial write.
        let (written, result) = if growth > room {
            let fits = buf.len() - usize::try_from(growth - room).unwrap_or(buf.len());
            (fits, Err(io::ErrorKind::StorageFull.into()))
        } else {
            (buf.len(), Ok(()))
        };
        if state.data.len() < start + written {
            state.data.resize(start + written, 0);
        }
        state.mark_dirty(start);
        state.data[start..start + written].copy_from_slice(&buf[..written]);
        result
    }

    fn sync_data(&self) -> io::Result<()> {
        self.inner
            .wait_while_held(|holds| holds.syncs, &self.inner.syncs_waiting);
        self.inner.before_mutation()?;
        let failing = self.inner.failing_syncs.load(Ordering::SeqCst);
        if failing > 0 {
            self.inner.failing_syncs.fetch_sub(1, Ordering::SeqCst);
            return Err(io::Error::other("simulated fsync failure"));
        }
        lock(&self.state).sync();
        Ok(())
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        self.inner.before_mutation()?;
        let mut state = lock(&self.state);
        let length = usize::try_from(length).map_err(|_| io::ErrorKind::InvalidInput)?;
        let old_length = state.data.len();
        state.data.resize(length, 0);
        state.mark_dirty(length.min(old_length));
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.inner.check_alive()?;
        Ok(lock(&self.state).data.len() as u64)
    }
}

/// A tiny deterministic generator, so the crate needs no randomness dependency.
#[derive(Debug)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
