//! The partition log: appends with group commit, reads, recovery, rolling and retention.
//!
//! # Group commit without a writer thread
//! Appenders cooperate instead of handing work to a dedicated thread. Each `append` queues its
//! encoded batch and then, while its batch is not done, takes whichever role is free:
//! - the **writer** takes every queued batch (up to `write_group_bytes_max`), assigns offsets,
//!   and writes them with one `pwrite`;
//! - the **syncer** `fdatasync`s everything written so far and makes it visible to readers.
//!
//! The two roles are held by different threads at once, so the next group is written while the
//! previous one is being synced (pipelined group commit). An append under `FsyncPolicy::Always`
//! returns once the sync that covers its bytes has finished. The one mutex guards only
//! bookkeeping; no I/O happens while it is held.
//!
//! # Readers
//! Readers never take the writer's mutex. They find the segment in the segment list, look up
//! its index, and `pread` the file up to the segment's `visible_bytes`: under `Always` that is
//! the synced length, so a reader never sees a record that a crash could take back.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::config::{FsyncPolicy, LogConfig, RetentionPolicy};
use crate::error::{AppendError, OpenError, ReadError, RetentionError};
use crate::format::{
    self, BatchBuilder, BatchError, EncodedBatch, FrameError, Record, SEGMENT_HEADER_BYTES,
};
use crate::io::{Storage, StorageFile};
use crate::segment::{self, Scan, ScanStop, Segment, SegmentIndex, scan_frames};

/// Frames are bounded by the file they are in; garbage lengths past it are caught as torn.
const FRAME_SCAN_MAX: u32 = u32::MAX;

/// Where an append's records landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: u64,
    /// One past the offset of the last record.
    pub end_offset: u64,
}

/// The records of one read, and where to continue.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    pub records: Vec<Record>,
    /// The offset to read next: one past the last record returned, or the requested offset when
    /// nothing was returned.
    pub next_offset: u64,
}

/// A summary of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogInfo {
    /// The first retained offset.
    pub start_offset: u64,
    /// One past the last offset readers can see.
    pub end_offset: u64,
    /// Bytes of all segment files.
    pub bytes: u64,
    pub segments: u32,
}

/// What retention may delete, shown to the veto hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: u64,
    /// One past the segment's last offset.
    pub end_offset: u64,
    pub bytes: u64,
    pub max_timestamp_ms: u64,
}

/// What a retention pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionOutcome {
    pub deleted_segments: u32,
    pub deleted_bytes: u64,
    /// True when the hook kept a segment that the policy would have deleted.
    pub vetoed: bool,
}

/// Upper bounds, in microseconds, of the buckets of [`SyncHistogram`].
pub const SYNC_BUCKETS_MICROS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// How long `fdatasync` took, as cumulative-free bucket counts (the last count is for syncs
/// slower than every bound).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncHistogram {
    pub buckets: [u64; SYNC_BUCKETS_MICROS.len() + 1],
    pub count: u64,
    pub sum_micros: u64,
}

impl SyncHistogram {
    fn record(&mut self, micros: u64) {
        let bucket = SYNC_BUCKETS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(SYNC_BUCKETS_MICROS.len());
        self.buckets[bucket] += 1;
        self.count += 1;
        self.sum_micros += micros;
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &SyncHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_micros += other.sum_micros;
    }
}

/// A partition's log. Cheap to clone; all clones share one log.
#[derive(Debug, Clone)]
pub struct PartitionLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    directory: PathBuf,
    storage: Arc<dyn Storage>,
    config: LogConfig,
    /// Lock order: `writer` before `segments` before a segment's own locks. Never held across I/O
    /// by the writer path; `segments` is held only to look up or change the list.
    writer: Mutex<WriterState>,
    writer_changed: Condvar,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Sealed segments with an open file, least recently used first.
    open_sealed: Mutex<VecDeque<Arc<Segment>>>,
    /// One past the last offset readers may see; tailing readers wait on it.
    end_offset: watch::Sender<u64>,
    /// Tells the interval flusher thread to stop; shared so the thread need not keep the log alive.
    flusher: Arc<FlusherSignal>,
    sync_histogram: Mutex<SyncHistogram>,
}

#[derive(Debug, Default)]
struct FlusherSignal {
    stop: Mutex<bool>,
    wake: Condvar,
}

impl FlusherSignal {
    fn stop(&self) {
        *lock(&self.stop) = true;
        self.wake.notify_all();
    }
}

/// A batch of a group, once written: where it went, for the index and its owner.
#[derive(Debug)]
struct WrittenFrame {
    ticket: u64,
    position: u64,
    info: AppendInfo,
    max_timestamp_ms: u64,
}

#[derive(Debug)]
struct PendingAppend {
    ticket: u64,
    batch: EncodedBatch,
}

#[derive(Debug)]
struct WriterState {
    pending: VecDeque<PendingAppend>,
    pending_bytes: u64,
    /// Appends that have not returned yet (queued, written or being synced).
    in_flight: u64,
    next_ticket: u64,
    /// Results of written (or failed) appends, waiting for their owners.
    outcomes: HashMap<u64, Result<AppendInfo, AppendError>>,
    writing: bool,
    syncing: bool,
    active: Arc<Segment>,
    active_file: Arc<dyn StorageFile>,
    /// Bytes written to the active segment file.
    write_position: u64,
    /// One past the last written offset.
    written_end: u64,
    /// One past the last synced offset, and the synced length of the active segment.
    synced_end: u64,
    synced_position: u64,
    /// Timestamp of the active segment's first record, for rolling by age.
    active_first_timestamp_ms: Option<u64>,
    /// The write buffer, reused between groups.
    group_buffer: Vec<u8>,
    failed: Option<Arc<io::Error>>,
    closed: bool,
    /// Set by `delete`: the files are gone, so dropping the log must not sync them.
    deleted: bool,
    /// Waiters that are not appenders (see `Inner::wait_special`).
    special_waiters: u32,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder of these locks leaves the state consistent before anything can panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_owned(),
        source,
    }
}

impl PartitionLog {
    /// Opens the log in `directory` (creating it when empty), recovering the active segment.
    ///
    /// Recovery reads only the active segment: it checks every frame's checksum and offset
    /// sequence, cuts a torn or damaged tail, and rebuilds the active segment's index in memory.
    /// Sealed segments are opened lazily, and their indexes are rebuilt when first needed if
    /// missing or damaged.
    pub fn open(
        storage: Arc<dyn Storage>,
        directory: impl Into<PathBuf>,
        config: LogConfig,
    ) -> Result<PartitionLog, OpenError> {
        config.validate()?;
        let directory = directory.into();
        storage
            .create_dir_all(&directory)
            .map_err(io_at(&directory))?;
        let names = storage.list_dir(&directory).map_err(io_at(&directory))?;
        let mut bases: Vec<u64> = names
            .iter()
            .filter_map(|name| segment::parse_segment_file_name(name))
            .collect();
        bases.sort_unstable();
        // Index files whose segment is gone are leftovers of a retention pass cut short.
        for name in &names {
            let stray = segment::parse_index_file_name(name)
                .is_some_and(|base| bases.binary_search(&base).is_err());
            if stray {
                let path = directory.join(name);
                storage.remove_file(&path).map_err(io_at(&path))?;
            }
        }
        let active_base = match bases.pop() {
            Some(base) => base,
            None => {
                create_segment_file(storage.as_ref(), &directory, 0).map_err(io_at(&directory))?;
                0
            }
        };
        let mut segments = Vec::with_capacity(bases.len() + 1);
        for base in bases {
            let path = directory.join(segment::segment_file_name(base));
            let bytes = storage
                .open(&path)
                .and_then(|file| file.len())
                .map_err(io_at(&path))?;
            segments.push(Arc::new(Segment::sealed(&directory, base, bytes)));
        }
        let (active, recovered) =
            recover_active(storage.as_ref(), &directory, active_base, &config)?;
        let active_file = active
            .file(storage.as_ref())
            .map_err(io_at(&active.path))?
            .0;
        let active = Arc::new(active);
        segments.push(active.clone());
        let end = recovered.end_offset;
        let state = WriterState {
            pending: VecDeque::new(),
            pending_bytes: 0,
            in_flight: 0,
            next_ticket: 0,
            outcomes: HashMap::new(),
            writing: false,
            syncing: false,
            active,
            active_file,
            write_position: recovered.position,
            written_end: end,
            synced_end: end,
            synced_position: recovered.position,
            active_first_timestamp_ms: recovered.first_timestamp_ms,
            group_buffer: Vec::new(),
            failed: None,
            closed: false,
            deleted: false,
            special_waiters: 0,
        };
        let inner = Arc::new(Inner {
            directory,
            storage,
            writer: Mutex::new(state),
            writer_changed: Condvar::new(),
            segments: RwLock::new(segments),
            open_sealed: Mutex::new(VecDeque::new()),
            end_offset: watch::Sender::new(end),
            flusher: Arc::new(FlusherSignal::default()),
            sync_histogram: Mutex::new(SyncHistogram::default()),
            config,
        });
        if let FsyncPolicy::Interval(interval) = inner.config.fsync {
            let weak = Arc::downgrade(&inner);
            let signal = inner.flusher.clone();
            std::thread::Builder::new()
                .name("herald-log-flush".into())
                .spawn(move || run_flusher(weak, signal, interval))
                .map_err(io_at(&inner.directory))?;
        }
        Ok(PartitionLog { inner })
    }

    /// The directory holding this partition's files.
    pub fn directory(&self) -> &Path {
        &self.inner.directory
    }

    /// The configuration the log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.config
    }

    /// A builder for a batch that fits this log's limits.
    pub fn batch_builder(&self) -> BatchBuilder {
        BatchBuilder::new(self.inner.config.batch_limits())
    }

    /// Appends a batch and returns once it is durable under the fsync policy. Blocks the calling
    /// thread (async callers use `spawn_blocking`); concurrent callers share writes and syncs.
    pub fn append(&self, batch: EncodedBatch) -> Result<AppendInfo, AppendError> {
        self.inner.append(batch)
    }

    /// Makes everything written so far durable, whatever the policy.
    pub fn flush(&self) -> Result<(), AppendError> {
        self.inner.flush()
    }

    /// One past the last offset readers can see.
    pub fn end_offset(&self) -> u64 {
        *self.inner.end_offset.borrow()
    }

    /// The first retained offset.
    pub fn start_offset(&self) -> u64 {
        self.inner.segments_snapshot()[0].base_offset
    }

    /// Start, end, bytes and segment count.
    pub fn info(&self) -> LogInfo {
        let segments = self.inner.segments_snapshot();
        LogInfo {
            start_offset: segments[0].base_offset,
            end_offset: self.end_offset(),
            bytes: segments.iter().map(|segment| segment.visible_bytes()).sum(),
            segments: u32::try_from(segments.len()).unwrap_or(u32::MAX),
        }
    }

    /// Waits until a record at `offset` or later is visible (returns the new end offset), without
    /// polling. Resolves at once if one already is.
    pub async fn wait_for_offset(&self, offset: u64) -> u64 {
        let mut receiver = self.inner.end_offset.subscribe();
        // The sender lives as long as `self`, so the channel cannot close while we wait.
        let end = receiver.wait_for(|end| *end > offset).await;
        end.map(|end| *end).unwrap_or(offset)
    }

    /// A receiver of the visible end offset, for callers that watch several partitions.
    pub fn subscribe_end_offset(&self) -> watch::Receiver<u64> {
        self.inner.end_offset.subscribe()
    }

    /// Reads records from `offset`, about `max_bytes` of frames (at least one whole batch, even a
    /// larger one). Returns no records when `offset` is the end. Records are checksummed before
    /// they are returned; damaged data is an error, never served.
    pub fn read(&self, offset: u64, max_bytes: u32) -> Result<ReadResult, ReadError> {
        self.inner.read(offset, max_bytes)
    }

    /// The first offset whose record has a timestamp at or after `timestamp_ms`; the end offset
    /// when there is none.
    pub fn offset_for_timestamp(&self, timestamp_ms: u64) -> Result<u64, ReadError> {
        self.inner.offset_for_timestamp(timestamp_ms)
    }

    /// Seals the active segment and starts a new one (when the active one holds records).
    pub fn roll(&self) -> Result<(), AppendError> {
        self.inner.roll_now(|_| true)
    }

    /// Deletes whole segments, oldest first, that the policy no longer keeps and that `may_delete`
    /// allows. Stops at the first segment the policy keeps or the hook refuses, so the log stays
    /// contiguous. When every record of the active segment is past `age_max`, the active segment
    /// is sealed first so it can go too.
    pub fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ms: u64,
        may_delete: &mut dyn FnMut(&SegmentInfo) -> bool,
    ) -> Result<RetentionOutcome, RetentionError> {
        self.inner.apply_retention(policy, now_ms, may_delete)
    }

    /// Stops accepting appends, waits for those in flight, and syncs. Reads keep working.
    pub fn close(&self) -> Result<(), AppendError> {
        {
            let mut state = lock(&self.inner.writer);
            state.closed = true;
            while state.in_flight > 0 {
                state = self.wait(state);
            }
        }
        self.inner.flusher.stop();
        self.inner.flush()
    }

    fn wait<'a>(&'a self, state: MutexGuard<'a, WriterState>) -> MutexGuard<'a, WriterState> {
        self.inner.wait_special(state)
    }

    /// Deletes the partition's files. The log must not be used afterwards.
    pub fn delete(self) -> io::Result<()> {
        {
            let mut state = lock(&self.inner.writer);
            state.closed = true;
            state.deleted = true;
        }
        self.inner.flusher.stop();
        self.inner.storage.remove_dir_all(&self.inner.directory)
    }

    /// How long this log's syncs took so far.
    pub fn sync_histogram(&self) -> SyncHistogram {
        lock(&self.inner.sync_histogram).clone()
    }

    /// Appends that have not returned yet, and bytes queued but not yet written.
    pub fn in_flight(&self) -> (u64, u64) {
        let state = lock(&self.inner.writer);
        (state.in_flight, state.pending_bytes)
    }

    /// Sealed segments whose file is open now (for tests of the open-file limit).
    pub fn open_sealed_segments(&self) -> usize {
        self.inner
            .segments_snapshot()
            .iter()
            .rev()
            .skip(1)
            .filter(|segment| segment.is_open())
            .count()
    }
}

/// What recovery found in the active segment.
struct Recovered {
    end_offset: u64,
    position: u64,
    first_timestamp_ms: Option<u64>,
}

fn create_segment_file(
    storage: &dyn Storage,
    directory: &Path,
    base: u64,
) -> io::Result<Arc<dyn StorageFile>> {
    let path = directory.join(segment::segment_file_name(base));
    // Create or truncate: a file of this name can only be the leftover of an earlier failed
    // attempt (its base is past every record), never data.
    let created = storage
        .write_file(&path, &format::encode_segment_header(base))
        .and_then(|file| file.sync_data().map(|()| file))
        .and_then(|file| storage.sync_dir(directory).map(|()| file));
    if created.is_err() {
        // Best effort: a leftover would be harmless (recovery treats an empty last segment as
        // the active one) but is clutter.
        let _ = storage.remove_file(&path);
    }
    created
}

fn recover_active(
    storage: &dyn Storage,
    directory: &Path,
    base: u64,
    config: &LogConfig,
) -> Result<(Segment, Recovered), OpenError> {
    let path = directory.join(segment::segment_file_name(base));
    let file = storage.open(&path).map_err(io_at(&path))?;
    let length = file.len().map_err(io_at(&path))?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES as usize];
    let header_read = if length >= SEGMENT_HEADER_BYTES {
        file.read_exact_at(&mut header, 0).map_err(io_at(&path))?;
        format::decode_segment_header(&header)
    } else {
        None
    };
    match header_read {
        Some(found) if found != base => {
            return Err(OpenError::Corrupt {
                path,
                reason: format!("header names base offset {found}, the file name {base}"),
            });
        }
        Some(_) => {}
        None if length <= SEGMENT_HEADER_BYTES => {
            // A crash while the segment was being created: nothing was ever appended to it.
            file.set_len(0).map_err(io_at(&path))?;
            file.write_all_at(&format::encode_segment_header(base), 0)
                .map_err(io_at(&path))?;
            file.sync_data().map_err(io_at(&path))?;
        }
        None => {
            return Err(OpenError::Corrupt {
                path,
                reason: "the segment header is damaged but records follow it".into(),
            });
        }
    }
    let length = length.max(SEGMENT_HEADER_BYTES);
    let mut index = SegmentIndex::default();
    let mut first_timestamp_ms = None;
    let mut end_offset = base;
    let Scan { position, stop } = scan_frames(
        file.as_ref(),
        SEGMENT_HEADER_BYTES,
        length,
        Some(base),
        FRAME_SCAN_MAX,
        |position, frame, bytes| {
            if first_timestamp_ms.is_none() {
                first_timestamp_ms = format::record_timestamps(bytes).next();
            }
            index.note_frame(
                base,
                position,
                frame.base_offset,
                frame.max_timestamp_ms,
                config.index_interval_bytes,
            );
            end_offset = frame.end_offset();
            ControlFlow::Continue(())
        },
    )
    .map_err(io_at(&path))?;
    if let ScanStop::Invalid { reason, .. } = stop {
        tracing::warn!(
            segment = %path.display(),
            valid_bytes = position,
            cut_bytes = length - position,
            %reason,
            "cutting the active segment's tail"
        );
        file.set_len(position).map_err(io_at(&path))?;
        file.sync_data().map_err(io_at(&path))?;
    }
    // Index files of the active segment are stale by definition: its index lives in memory and
    // is written when the segment is sealed.
    for index_path in segment::index_file_names(base).map(|name| directory.join(name)) {
        match storage.remove_file(&index_path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_at(&index_path)(error)),
        }
    }
    let segment = Segment::active(directory, base, file, index, position);
    Ok((
        segment,
        Recovered {
            end_offset,
            position,
            first_timestamp_ms,
        },
    ))
}

impl Inner {
    fn segments_snapshot(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn wait<'a>(&'a self, state: MutexGuard<'a, WriterState>) -> MutexGuard<'a, WriterState> {
        self.writer_changed
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits as something other than an appender (close, flush, roll, recovery). While such a
    /// waiter exists, every wake-up goes to all waiters, so a `notify_one` meant for an
    /// appender can never strand it.
    fn wait_special<'a>(
        &'a self,
        mut state: MutexGuard<'a, WriterState>,
    ) -> MutexGuard<'a, WriterState> {
        state.special_waiters += 1;
        let mut state = self.wait(state);
        state.special_waiters -= 1;
        state
    }

    fn check_batch(&self, batch: &EncodedBatch) -> Result<(), AppendError> {
        let config = &self.config;
        if batch.encoded_bytes() as u64 > u64::from(config.batch_bytes_max) {
            return Err(BatchError::BatchTooLarge {
                bytes: batch.encoded_bytes() as u64,
                max: config.batch_bytes_max,
            }
            .into());
        }
        if batch.record_count() > config.batch_records_max {
            return Err(BatchError::TooManyRecords {
                records: u64::from(batch.record_count()),
                max: config.batch_records_max,
            }
            .into());
        }
        Ok(())
    }

    fn append(&self, batch: EncodedBatch) -> Result<AppendInfo, AppendError> {
        self.check_batch(&batch)?;
        let always = self.config.fsync.syncs_before_completion();
        let bytes = batch.encoded_bytes() as u64;
        let mut state = lock(&self.writer);
        if state.closed {
            return Err(AppendError::Closed);
        }
        if let Some(error) = &state.failed {
            return Err(AppendError::Failed(error.clone()));
        }
        if state.in_flight >= u64::from(self.config.in_flight_appends_max) {
            return Err(AppendError::Overloaded {
                limit: "in_flight_appends_max",
                in_flight: state.in_flight,
                max: u64::from(self.config.in_flight_appends_max),
            });
        }
        if state.pending_bytes + bytes > self.config.in_flight_bytes_max {
            return Err(AppendError::Overloaded {
                limit: "in_flight_bytes_max",
                in_flight: state.pending_bytes + bytes,
                max: self.config.in_flight_bytes_max,
            });
        }
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.in_flight += 1;
        state.pending_bytes += bytes;
        state.pending.push_back(PendingAppend { ticket, batch });
        loop {
            let done = match state.outcomes.get(&ticket) {
                Some(Ok(info)) => !always || info.end_offset <= state.synced_end,
                Some(Err(_)) => true,
                None => false,
            };
            if done {
                let outcome = state
                    .outcomes
                    .remove(&ticket)
                    .expect("the outcome was found just above");
                state.in_flight -= 1;
                if state.in_flight == 0 {
                    // `close` waits for this.
                    self.writer_changed.notify_all();
                }
                return outcome;
            }
            if !state.writing && !state.pending.is_empty() {
                state = self.write_group(state);
            } else if always && !state.syncing && state.written_end > state.synced_end {
                state = self.sync_written(state);
            } else {
                state = self.wait(state);
            }
        }
    }

    /// Takes the writer role: rolls if due, then writes the queued batches as one group.
    fn write_group<'a>(
        &'a self,
        mut state: MutexGuard<'a, WriterState>,
    ) -> MutexGuard<'a, WriterState> {
        state.writing = true;
        let first = state.pending.front().expect("called with pending appends");
        let first_bytes = first.batch.encoded_bytes() as u64;
        let first_timestamp = first.batch.max_timestamp_ms();
        let segment_has_records = state.write_position > SEGMENT_HEADER_BYTES;
        let too_big = state.write_position + first_bytes > self.config.segment_bytes_max;
        let age_max_ms = u64::try_from(self.config.segment_age_max.as_millis()).unwrap_or(u64::MAX);
        let too_old = state
            .active_first_timestamp_ms
            .is_some_and(|first_ms| first_timestamp.saturating_sub(first_ms) >= age_max_ms);
        if segment_has_records && (too_big || too_old) {
            if state.syncing {
                // Rolling needs the syncer role too. Never wait for it while holding the writer
                // role: the recovery of a failed sync holds the syncer role and waits for the
                // writer, so both would wait forever. Give the writer role back and wait instead.
                state.writing = false;
                self.writer_changed.notify_all();
                return self.wait_special(state);
            }
            let (new_state, rolled) = self.roll_locked(state);
            state = new_state;
            if let Err(error) = rolled {
                // Fail the batch that needed the new segment, so its caller hears of it; later
                // batches try again.
                // (After a failed sync the log has failed every queued append already.)
                if let Some(failed) = state.pending.pop_front() {
                    state.pending_bytes -= failed.batch.encoded_bytes() as u64;
                    state.outcomes.insert(failed.ticket, Err(error));
                }
                state.writing = false;
                self.writer_changed.notify_all();
                return state;
            }
        }
        let mut group = Vec::new();
        let mut group_bytes = 0u64;
        while let Some(next) = state.pending.front() {
            let next_bytes = next.batch.encoded_bytes() as u64;
            let fits_group =
                group_bytes + next_bytes <= u64::from(self.config.write_group_bytes_max);
            let fits_segment =
                state.write_position + group_bytes + next_bytes <= self.config.segment_bytes_max;
            if !(group.is_empty() || fits_group && fits_segment) {
                break;
            }
            let next = state.pending.pop_front().expect("front exists");
            group_bytes += next_bytes;
            group.push(next);
        }
        state.pending_bytes -= group_bytes;
        let base_position = state.write_position;
        let base_offset = state.written_end;
        let segment = state.active.clone();
        let file = state.active_file.clone();
        let mut buffer = std::mem::take(&mut state.group_buffer);
        drop(state);

        // Outside the lock: assign offsets, copy into one buffer, one write.
        buffer.clear();
        let mut next_offset = base_offset;
        let mut written = Vec::with_capacity(group.len());
        for mut append in group {
            format::set_base_offset(&mut append.batch.bytes, next_offset);
            let info = AppendInfo {
                base_offset: next_offset,
                end_offset: next_offset + u64::from(append.batch.record_count()),
            };
            written.push(WrittenFrame {
                ticket: append.ticket,
                position: base_position + buffer.len() as u64,
                info,
                max_timestamp_ms: append.batch.max_timestamp_ms(),
            });
            buffer.extend_from_slice(&append.batch.bytes);
            next_offset = info.end_offset;
        }
        let result = file.write_all_at(&buffer, base_position);
        let cut = match &result {
            // A failed write may have written part of the group: cut it off again.
            Err(_) => file.set_len(base_position),
            Ok(()) => Ok(()),
        };

        let mut state = lock(&self.writer);
        state.group_buffer = buffer;
        let wrote = result.is_ok();
        match (result, cut) {
            (Ok(()), _) => {
                let max_timestamp_ms = segment.with_loaded_index(|index| {
                    for frame in &written {
                        index.note_frame(
                            segment.base_offset,
                            frame.position,
                            frame.info.base_offset,
                            frame.max_timestamp_ms,
                            self.config.index_interval_bytes,
                        );
                    }
                    index.max_timestamp_ms
                });
                segment.set_max_timestamp_ms(max_timestamp_ms);
                if state.active_first_timestamp_ms.is_none() {
                    state.active_first_timestamp_ms =
                        written.first().map(|frame| frame.max_timestamp_ms);
                }
                state.write_position = base_position + group_bytes;
                state.written_end = next_offset;
                for frame in &written {
                    state.outcomes.insert(frame.ticket, Ok(frame.info));
                }
                if !self.config.fsync.syncs_before_completion() {
                    self.publish(&segment, state.write_position, next_offset);
                }
            }
            (Err(error), cut) => {
                let error = AppendError::from_io(error);
                tracing::warn!(%error, "append failed; the partial write was cut off");
                for frame in &written {
                    state.outcomes.insert(frame.ticket, Err(error.clone()));
                }
                if let Err(cut_error) = cut {
                    // The file may now end in a partial frame we could not remove: stop until a
                    // reopen lets recovery cut it.
                    tracing::error!(%cut_error, "could not cut a failed write; the log stops");
                    self.fail_everything(&mut state, Arc::new(cut_error));
                }
            }
        }
        state.writing = false;
        // Under `Always` a finished write completes no append (the sync does), and this thread
        // goes on to take a role itself; one other waiter is enough to take the other role.
        // Waking every appender here cost a fifth of the group-commit throughput with 64
        // writers (docs/performance.md).
        let completes_nothing = self.config.fsync.syncs_before_completion() && wrote;
        if completes_nothing && state.special_waiters == 0 {
            self.writer_changed.notify_one();
        } else {
            self.writer_changed.notify_all();
        }
        state
    }

    /// Takes the syncer role: syncs what is written and makes it visible.
    fn sync_written<'a>(
        &'a self,
        mut state: MutexGuard<'a, WriterState>,
    ) -> MutexGuard<'a, WriterState> {
        state.syncing = true;
        let target_end = state.written_end;
        let target_position = state.write_position;
        let segment = state.active.clone();
        let file = state.active_file.clone();
        drop(state);
        let started = std::time::Instant::now();
        let result = file.sync_data();
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        lock(&self.sync_histogram).record(micros);
        let mut state = lock(&self.writer);
        match result {
            Ok(()) => {
                if target_end > state.synced_end {
                    state.synced_end = target_end;
                    if Arc::ptr_eq(&segment, &state.active) {
                        state.synced_position = target_position;
                    }
                    self.publish(&segment, target_position, target_end);
                }
            }
            Err(error) => {
                tracing::error!(%error, "fsync failed");
                state = self.recover_from_sync_failure(state, error);
            }
        }
        state.syncing = false;
        self.writer_changed.notify_all();
        state
    }

    /// After a failed fsync the kernel may have dropped the dirty pages (and a second fsync may
    /// wrongly succeed), so nothing written since the last good sync can be trusted. Under
    /// `Always` nobody has seen those records: cut them off, sync the cut, and fail their
    /// appends; the log goes on. Under the other policies readers may have seen them, so the log
    /// stops and a reopen must recover. Called holding the syncer role, which it keeps, so no
    /// other sync can run in between.
    fn recover_from_sync_failure<'a>(
        &'a self,
        mut state: MutexGuard<'a, WriterState>,
        error: io::Error,
    ) -> MutexGuard<'a, WriterState> {
        let error = Arc::new(error);
        if !self.config.fsync.syncs_before_completion() {
            self.fail_everything(&mut state, error);
            return state;
        }
        while state.writing {
            state = self.wait_special(state);
        }
        state.writing = true;
        let synced_position = state.synced_position;
        let synced_end = state.synced_end;
        let file = state.active_file.clone();
        drop(state);
        let cut = file
            .set_len(synced_position)
            .and_then(|()| file.sync_data());
        let mut state = lock(&self.writer);
        state.writing = false;
        if let Err(cut_error) = cut {
            tracing::error!(%cut_error, "could not cut unsynced data after a failed fsync; the log stops");
            self.fail_everything(&mut state, error);
            return state;
        }
        let segment = state.active.clone();
        // The cut frames' timestamps stay in the maximum; a slightly high maximum only makes a
        // time lookup scan a little more.
        segment.with_loaded_index(|index| {
            let max_timestamp_ms = index.max_timestamp_ms;
            index.truncate(synced_position, max_timestamp_ms);
        });
        state.write_position = synced_position;
        state.written_end = synced_end;
        let failure = AppendError::Io(error);
        for outcome in state.outcomes.values_mut() {
            if matches!(outcome, Ok(info) if info.end_offset > synced_end) {
                *outcome = Err(failure.clone());
            }
        }
        state
    }

    /// Fails every waiting append and refuses new ones until the log is reopened.
    fn fail_everything(&self, state: &mut WriterState, error: Arc<io::Error>) {
        let failure = AppendError::Failed(error.clone());
        let synced_end = state.synced_end;
        let always = self.config.fsync.syncs_before_completion();
        for outcome in state.outcomes.values_mut() {
            let durable = matches!(outcome, Ok(info) if !always || info.end_offset <= synced_end);
            if !durable {
                *outcome = Err(failure.clone());
            }
        }
        while let Some(pending) = state.pending.pop_front() {
            state.outcomes.insert(pending.ticket, Err(failure.clone()));
        }
        state.pending_bytes = 0;
        state.failed = Some(error);
    }

    /// Makes bytes up to `position` of `segment`, and offsets below `end`, visible to readers.
    fn publish(&self, segment: &Segment, position: u64, end: u64) {
        segment.visible_bytes.fetch_max(position, Ordering::AcqRel);
        self.end_offset.send_if_modified(|current| {
            if end > *current {
                *current = end;
                true
            } else {
                false
            }
        });
    }

    fn flush(&self) -> Result<(), AppendError> {
        let mut state = lock(&self.writer);
        let target = state.written_end;
        loop {
            if let Some(error) = &state.failed {
                return Err(AppendError::Failed(error.clone()));
            }
            if state.synced_end >= target {
                return Ok(());
            }
            if state.written_end < target {
                return Err(AppendError::Io(Arc::new(io::Error::other(
                    "fsync failed; the records written since the last good sync were discarded",
                ))));
            }
            if state.syncing {
                state = self.wait_special(state);
            } else {
                state = self.sync_written(state);
            }
        }
    }

    /// Seals the active segment and opens the next one. Called with the writer role held and
    /// returns with it held. Takes the syncer role too while it works, so that its own sync of
    /// the old segment can never follow a failed sync unnoticed.
    fn roll_locked<'a>(
        &'a self,
        mut state: MutexGuard<'a, WriterState>,
    ) -> (MutexGuard<'a, WriterState>, Result<(), AppendError>) {
        // Callers take the writer role only once the syncer role is free (see `write_group`
        // and `roll_now`), under the same lock hold.
        assert!(!state.syncing, "roll_locked needs the syncer role free");
        state.syncing = true;
        let old = state.active.clone();
        let old_file = state.active_file.clone();
        let next_base = state.written_end;
        let old_length = state.write_position;
        drop(state);
        if let Err(error) = old_file.sync_data() {
            // A failed fsync cannot be retried and trusted (see `recover_from_sync_failure`); the
            // old segment's unsynced tail is in doubt, so the log stops until a reopen recovers.
            tracing::error!(%error, "fsync while rolling failed; the log stops");
            let mut state = lock(&self.writer);
            state.syncing = false;
            let error = Arc::new(error);
            self.fail_everything(&mut state, error.clone());
            self.writer_changed.notify_all();
            return (state, Err(AppendError::Failed(error)));
        }
        let result = (|| -> io::Result<Arc<dyn StorageFile>> {
            let index = old.with_loaded_index(|index| index.clone());
            for file in segment::write_index_files(self.storage.as_ref(), &old, &index)? {
                file.sync_data()?;
            }
            create_segment_file(self.storage.as_ref(), &self.directory, next_base)
        })();
        let mut state = lock(&self.writer);
        state.syncing = false;
        self.writer_changed.notify_all();
        match result {
            Ok(file) => {
                let new = Arc::new(Segment::active(
                    &self.directory,
                    next_base,
                    file.clone(),
                    SegmentIndex::default(),
                    SEGMENT_HEADER_BYTES,
                ));
                self.segments
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(new.clone());
                // Everything in the old segment is synced now.
                state.synced_end = state.synced_end.max(next_base);
                self.publish(&old, old_length, next_base);
                state.active = new;
                state.active_file = file;
                state.write_position = SEGMENT_HEADER_BYTES;
                state.synced_position = SEGMENT_HEADER_BYTES;
                state.active_first_timestamp_ms = None;
                self.track_open_sealed(&old);
                (state, Ok(()))
            }
            Err(error) => {
                tracing::warn!(%error, "rolling to a new segment failed");
                (state, Err(AppendError::from_io(error)))
            }
        }
    }

    /// Rolls the active segment if it holds records and `should_roll` agrees, waiting for the
    /// writer role first.
    fn roll_now(&self, should_roll: impl FnOnce(&WriterState) -> bool) -> Result<(), AppendError> {
        let mut state = lock(&self.writer);
        // Both roles must be free: waiting for one while holding the other could deadlock.
        while state.writing || state.syncing {
            state = self.wait_special(state);
        }
        if let Some(error) = &state.failed {
            return Err(AppendError::Failed(error.clone()));
        }
        if state.write_position <= SEGMENT_HEADER_BYTES || !should_roll(&state) {
            return Ok(());
        }
        state.writing = true;
        let (mut state, result) = self.roll_locked(state);
        state.writing = false;
        self.writer_changed.notify_all();
        result
    }

    /// Remembers that a sealed segment's file is open, closing the least recently used beyond
    /// `open_segments_max`.
    fn track_open_sealed(&self, segment: &Arc<Segment>) {
        let mut open = lock(&self.open_sealed);
        if let Some(at) = open
            .iter()
            .position(|candidate| Arc::ptr_eq(candidate, segment))
        {
            open.remove(at);
        }
        open.push_back(segment.clone());
        while open.len() > self.config.open_segments_max as usize {
            if let Some(evicted) = open.pop_front() {
                evicted.evict();
            }
        }
    }

    fn segment_for_offset(&self, offset: u64) -> Option<(Arc<Segment>, bool)> {
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let after = segments.partition_point(|segment| segment.base_offset <= offset);
        let index = after.checked_sub(1)?;
        Some((segments[index].clone(), index + 1 == segments.len()))
    }

    fn open_file(
        &self,
        segment: &Arc<Segment>,
        is_active: bool,
    ) -> io::Result<Arc<dyn StorageFile>> {
        let (file, _) = segment.file(self.storage.as_ref())?;
        if !is_active {
            self.track_open_sealed(segment);
        }
        Ok(file)
    }

    fn read(&self, offset: u64, max_bytes: u32) -> Result<ReadResult, ReadError> {
        if max_bytes > self.config.read_bytes_max {
            return Err(ReadError::TooLarge {
                requested: max_bytes,
                max: self.config.read_bytes_max,
            });
        }
        let end_offset = *self.end_offset.borrow();
        let start_offset = self.segments_snapshot()[0].base_offset;
        if offset < start_offset || offset > end_offset {
            return Err(ReadError::OffsetOutOfRange {
                offset,
                start_offset,
                end_offset,
            });
        }
        let empty = ReadResult {
            records: Vec::new(),
            next_offset: offset,
        };
        if offset == end_offset {
            return Ok(empty);
        }
        let Some((segment, is_active)) = self.segment_for_offset(offset) else {
            // Retention deleted the segment between the range check and now.
            let start_offset = self.segments_snapshot()[0].base_offset;
            return Err(ReadError::OffsetOutOfRange {
                offset,
                start_offset,
                end_offset,
            });
        };
        let file = self.open_file(&segment, is_active)?;
        let position = segment.with_index(
            self.storage.as_ref(),
            FRAME_SCAN_MAX,
            self.config.index_interval_bytes,
            |index| index.position_for_offset(offset - segment.base_offset),
        )?;
        let visible = segment.visible_bytes();
        let corrupt = |position: u64, reason: String| ReadError::Corrupt {
            segment_base_offset: segment.base_offset,
            position,
            reason,
        };
        if position >= visible {
            return Err(corrupt(
                position,
                format!("offset {offset} is not in its segment"),
            ));
        }
        // Read about max_bytes from the indexed frame; skip the frames before `offset`, and read
        // on past them (or grow the read) until the batch holding `offset` is in the buffer.
        let mut position = position;
        let mut want = u64::from(max_bytes).max(format::FRAME_HEADER_BYTES as u64);
        let mut expected_base: Option<u64> = None;
        loop {
            if position >= visible {
                return Err(corrupt(
                    position,
                    format!("offset {offset} should be in this segment but is not"),
                ));
            }
            let length =
                usize::try_from(want.min(visible - position)).expect("reads are bounded by a u32");
            let mut buffer = vec![0u8; length];
            file.read_exact_at(&mut buffer, position)?;
            let buffer = Bytes::from(buffer);
            let mut records = Vec::new();
            let mut at = 0usize;
            let mut incomplete_need = None;
            while at < buffer.len() {
                match format::check_frame(&buffer[at..], FRAME_SCAN_MAX) {
                    Ok(frame) => {
                        let in_sequence = match expected_base {
                            Some(expected) => frame.base_offset == expected,
                            None => frame.base_offset <= offset,
                        };
                        if !in_sequence {
                            return Err(corrupt(
                                position + at as u64,
                                "offset sequence broken".into(),
                            ));
                        }
                        expected_base = Some(frame.end_offset());
                        let frame_length = frame.frame_bytes as usize;
                        if frame.end_offset() > offset {
                            let bytes = buffer.slice(at..at + frame_length);
                            format::decode_records(&bytes, &frame, &mut records, offset);
                        }
                        at += frame_length;
                    }
                    Err(FrameError::Incomplete { need, .. }) => {
                        incomplete_need = Some(need);
                        break;
                    }
                    Err(FrameError::Corrupt { reason }) => {
                        if records.is_empty() {
                            return Err(corrupt(position + at as u64, reason.into()));
                        }
                        // Serve the valid records before the damage; the next read reports it.
                        break;
                    }
                }
            }
            if !records.is_empty() {
                let next_offset = records.last().map_or(offset, |record| record.offset + 1);
                return Ok(ReadResult {
                    records,
                    next_offset,
                });
            }
            position += at as u64;
            if let Some(need) = incomplete_need {
                if need > visible - position {
                    return Err(corrupt(
                        position,
                        format!("a batch of {need} bytes runs past the data"),
                    ));
                }
                want = want.max(need);
            }
        }
    }

    fn offset_for_timestamp(&self, timestamp_ms: u64) -> Result<u64, ReadError> {
        let storage = self.storage.as_ref();
        let interval = self.config.index_interval_bytes;
        let segments = self.segments_snapshot();
        let active_count = segments.len();
        for (number, segment) in segments.iter().enumerate() {
            let is_active = number + 1 == active_count;
            if segment.max_timestamp_ms(storage, FRAME_SCAN_MAX, interval)? < timestamp_ms {
                continue;
            }
            let file = self.open_file(segment, is_active)?;
            let start = segment.with_index(storage, FRAME_SCAN_MAX, interval, |index| {
                index.position_for_time(timestamp_ms)
            })?;
            let mut found = None;
            let scan = scan_frames(
                file.as_ref(),
                start,
                segment.visible_bytes(),
                None,
                FRAME_SCAN_MAX,
                |_, frame, bytes| {
                    if frame.max_timestamp_ms < timestamp_ms {
                        return ControlFlow::Continue(());
                    }
                    let position =
                        format::record_timestamps(bytes).position(|time| time >= timestamp_ms);
                    found = position.map(|position| frame.base_offset + position as u64);
                    ControlFlow::Break(())
                },
            )?;
            if let Some(offset) = found {
                return Ok(offset);
            }
            if let ScanStop::Invalid { position, reason } = scan.stop {
                return Err(ReadError::Corrupt {
                    segment_base_offset: segment.base_offset,
                    position,
                    reason,
                });
            }
        }
        Ok(*self.end_offset.borrow())
    }

    fn apply_retention(
        &self,
        policy: &RetentionPolicy,
        now_ms: u64,
        may_delete: &mut dyn FnMut(&SegmentInfo) -> bool,
    ) -> Result<RetentionOutcome, RetentionError> {
        let storage = self.storage.as_ref();
        let interval = self.config.index_interval_bytes;
        let expired = |max_timestamp_ms: u64| {
            policy.age_max.is_some_and(|age| {
                max_timestamp_ms.saturating_add(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
                    < now_ms
            })
        };
        if policy.age_max.is_some() {
            let active = self
                .segments_snapshot()
                .last()
                .cloned()
                .expect("a log has an active segment");
            let max_timestamp = active.max_timestamp_ms(storage, FRAME_SCAN_MAX, interval)?;
            if expired(max_timestamp) {
                self.roll_now(|state| Arc::ptr_eq(&state.active, &active))
                    .map_err(RetentionError::Roll)?;
            }
        }
        let mut outcome = RetentionOutcome::default();
        loop {
            let segments = self.segments_snapshot();
            let total_bytes: u64 = segments.iter().map(|segment| segment.visible_bytes()).sum();
            let [oldest, next, ..] = &segments[..] else {
                break; // only the active segment is left
            };
            let info = SegmentInfo {
                base_offset: oldest.base_offset,
                end_offset: next.base_offset,
                bytes: oldest.visible_bytes(),
                max_timestamp_ms: oldest.max_timestamp_ms(storage, FRAME_SCAN_MAX, interval)?,
            };
            let over_bytes = policy.bytes_max.is_some_and(|max| total_bytes > max);
            if !(expired(info.max_timestamp_ms) || over_bytes) {
                break;
            }
            if !may_delete(&info) {
                outcome.vetoed = true;
                break;
            }
            self.delete_oldest(oldest)?;
            outcome.deleted_segments += 1;
            outcome.deleted_bytes += info.bytes;
        }
        Ok(outcome)
    }

    /// Removes the oldest segment from the list (readers holding it finish their reads), then
    /// deletes its files durably.
    fn delete_oldest(&self, oldest: &Arc<Segment>) -> io::Result<()> {
        {
            let mut segments = self
                .segments
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if segments.len() < 2 || !Arc::ptr_eq(&segments[0], oldest) {
                return Ok(());
            }
            segments.remove(0);
        }
        {
            let mut open = lock(&self.open_sealed);
            open.retain(|segment| !Arc::ptr_eq(segment, oldest));
        }
        oldest.evict();
        // The data file goes first: a crash after it leaves only stray index files, which the
        // next open ignores; the reverse could leave a segment without its index and a gap.
        self.storage.remove_file(&oldest.path)?;
        for path in oldest.index_paths() {
            match self.storage.remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        self.storage.sync_dir(&self.directory)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.stop();
        let state = self
            .writer
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.failed.is_none()
            && !state.deleted
            && state.written_end > state.synced_end
            && let Err(error) = state.active_file.sync_data()
        {
            tracing::error!(%error, "final sync of a dropped log failed");
        }
    }
}

/// Under `FsyncPolicy::Interval`, syncs what was written at least every `interval`. Holds the log
/// only while it syncs, so dropping the last handle ends the thread.
fn run_flusher(log: Weak<Inner>, signal: Arc<FlusherSignal>, interval: Duration) {
    let mut stop = lock(&signal.stop);
    loop {
        if *stop {
            return;
        }
        stop = signal
            .wake
            .wait_timeout(stop, interval)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0;
        if *stop {
            return;
        }
        drop(stop);
        let Some(inner) = log.upgrade() else { return };
        if let Err(error) = inner.flush() {
            tracing::error!(%error, "periodic fsync failed");
        }
        drop(inner);
        stop = lock(&signal.stop);
    }
}
