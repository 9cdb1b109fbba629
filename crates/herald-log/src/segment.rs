//! One segment: a file of batch frames and its sparse offset and time indexes.
//!
//! A segment is *active* (the last one, appended to, its index kept in memory) or *sealed*
//! (immutable, its index in `.index` and `.timeindex` files written when it was sealed and
//! loaded when first needed). Readers only look at the first `visible_bytes` of a segment.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::format::{
    self, FrameError, FrameInfo, OffsetIndexEntry, SEGMENT_HEADER_BYTES, TimeIndexEntry,
};
use crate::io::{Storage, StorageFile};

/// Width of the zero-padded base offset in file names; sorts like the numbers.
const NAME_DIGITS: usize = 20;
/// Bytes read at a time while scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1024 * 1024;

pub(crate) fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:0NAME_DIGITS$}.log")
}

/// The base offset named by a segment file name, if it is one.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The base offset named by an index file name, if it is one.
pub(crate) fn parse_index_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_suffix(".index")
        .or_else(|| name.strip_suffix(".timeindex"))?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Index files that go with a segment file name's stem.
pub(crate) fn index_file_names(base_offset: u64) -> [String; 2] {
    [
        format!("{base_offset:0NAME_DIGITS$}.index"),
        format!("{base_offset:0NAME_DIGITS$}.timeindex"),
    ]
}

/// The sparse indexes of one segment.
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentIndex {
    pub offsets: Vec<OffsetIndexEntry>,
    pub times: Vec<TimeIndexEntry>,
    /// The largest record timestamp in the segment (0 when empty).
    pub max_timestamp_ms: u64,
    /// Position just past the last indexed frame's start; decides when the next entry is due.
    last_entry_position: Option<u32>,
}

impl SegmentIndex {
    /// Records the frame written at `position`, adding index entries every `interval_bytes`.
    pub fn note_frame(
        &mut self,
        segment_base_offset: u64,
        position: u64,
        frame_base_offset: u64,
        frame_max_timestamp_ms: u64,
        interval_bytes: u32,
    ) {
        // Segments are at most 4 GiB (checked by LogConfig::validate) and offsets within one
        // are fewer than its bytes, so both fit a u32.
        let position = u32::try_from(position).expect("segment positions fit a u32");
        let relative_offset = u32::try_from(frame_base_offset - segment_base_offset)
            .expect("relative offsets fit a u32");
        let due = match self.last_entry_position {
            None => true,
            Some(last) => position - last >= interval_bytes,
        };
        if due {
            self.offsets.push(OffsetIndexEntry {
                relative_offset,
                position,
            });
            self.times.push(TimeIndexEntry {
                max_timestamp_before_ms: self.max_timestamp_ms,
                relative_offset,
                position,
            });
            self.last_entry_position = Some(position);
        }
        self.max_timestamp_ms = self.max_timestamp_ms.max(frame_max_timestamp_ms);
    }

    /// Forgets entries at or past `position` (after the tail was cut).
    pub fn truncate(&mut self, position: u64, max_timestamp_ms: u64) {
        self.offsets
            .retain(|entry| u64::from(entry.position) < position);
        self.times
            .retain(|entry| u64::from(entry.position) < position);
        self.last_entry_position = self.offsets.last().map(|entry| entry.position);
        self.max_timestamp_ms = max_timestamp_ms;
    }

    /// The position of the last indexed frame that starts at or before `relative_offset`.
    pub fn position_for_offset(&self, relative_offset: u64) -> u64 {
        let after = self
            .offsets
            .partition_point(|entry| u64::from(entry.relative_offset) <= relative_offset);
        match after {
            0 => SEGMENT_HEADER_BYTES,
            n => u64::from(self.offsets[n - 1].position),
        }
    }

    /// A position from which scanning finds the first record with a timestamp ≥ `timestamp_ms`.
    pub fn position_for_time(&self, timestamp_ms: u64) -> u64 {
        let after = self
            .times
            .partition_point(|entry| entry.max_timestamp_before_ms < timestamp_ms);
        match after {
            0 => SEGMENT_HEADER_BYTES,
            n => u64::from(self.times[n - 1].position),
        }
    }

    /// Checks the entries against the segment they index.
    fn is_consistent_with(&self, segment_bytes: u64) -> bool {
        let increasing_offsets = self.offsets.windows(2).all(|pair| {
            pair[0].relative_offset < pair[1].relative_offset && pair[0].position < pair[1].position
        });
        let increasing_times = self
            .times
            .windows(2)
            .all(|pair| pair[0].position < pair[1].position);
        let in_bounds = self.offsets.iter().all(|entry| {
            u64::from(entry.position) >= SEGMENT_HEADER_BYTES
                && u64::from(entry.position) < segment_bytes
        }) && self
            .times
            .iter()
            .all(|entry| u64::from(entry.position) < segment_bytes);
        increasing_offsets && increasing_times && in_bounds
    }
}

/// State of a segment's index in memory.
#[derive(Debug)]
pub(crate) enum IndexSlot {
    /// Sealed and not loaded (or evicted).
    Unloaded,
    Loaded(SegmentIndex),
}

/// One segment of a partition.
#[derive(Debug)]
pub(crate) struct Segment {
    pub base_offset: u64,
    pub path: PathBuf,
    /// The open file; `None` for a sealed segment that was not read lately.
    file: Mutex<Option<Arc<dyn StorageFile>>>,
    index: Mutex<IndexSlot>,
    /// Readers never look past this many bytes of the file.
    pub visible_bytes: AtomicU64,
    /// Largest record timestamp, once known (`UNKNOWN` until a sealed index was loaded).
    max_timestamp_ms: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // These locks guard plain data that every holder leaves consistent before it could panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Segment {
    pub fn sealed(directory: &Path, base_offset: u64, bytes: u64) -> Self {
        Self {
            base_offset,
            path: directory.join(segment_file_name(base_offset)),
            file: Mutex::new(None),
            index: Mutex::new(IndexSlot::Unloaded),
            visible_bytes: AtomicU64::new(bytes),
            max_timestamp_ms: AtomicU64::new(UNKNOWN),
        }
    }

    pub fn active(
        directory: &Path,
        base_offset: u64,
        file: Arc<dyn StorageFile>,
        index: SegmentIndex,
        visible_bytes: u64,
    ) -> Self {
        Self {
            base_offset,
            path: directory.join(segment_file_name(base_offset)),
            max_timestamp_ms: AtomicU64::new(index.max_timestamp_ms),
            file: Mutex::new(Some(file)),
            index: Mutex::new(IndexSlot::Loaded(index)),
            visible_bytes: AtomicU64::new(visible_bytes),
        }
    }

    pub fn index_paths(&self) -> [PathBuf; 2] {
        let directory = self.path.parent().unwrap_or(Path::new(""));
        index_file_names(self.base_offset).map(|name| directory.join(name))
    }

    pub fn visible_bytes(&self) -> u64 {
        self.visible_bytes.load(Ordering::Acquire)
    }

    /// The open file, opening it if needed. Returns whether it was opened by this call.
    pub fn file(&self, storage: &dyn Storage) -> io::Result<(Arc<dyn StorageFile>, bool)> {
        let mut slot = lock(&self.file);
        if let Some(file) = slot.as_ref() {
            return Ok((file.clone(), false));
        }
        let file = storage.open(&self.path)?;
        *slot = Some(file.clone());
        Ok((file, true))
    }

    /// Closes the file and drops the loaded index (a sealed segment evicted from the cache).
    pub fn evict(&self) {
        *lock(&self.file) = None;
        *lock(&self.index) = IndexSlot::Unloaded;
    }

    pub fn is_open(&self) -> bool {
        lock(&self.file).is_some()
    }

    /// Runs `f` on the loaded index, loading (or rebuilding) a sealed segment's index first.
    pub fn with_index<T>(
        &self,
        storage: &dyn Storage,
        frame_bytes_max: u32,
        interval_bytes: u32,
        f: impl FnOnce(&mut SegmentIndex) -> T,
    ) -> io::Result<T> {
        let mut slot = lock(&self.index);
        if let IndexSlot::Unloaded = *slot {
            let index = self.load_index(storage, frame_bytes_max, interval_bytes)?;
            self.max_timestamp_ms
                .store(index.max_timestamp_ms, Ordering::Release);
            *slot = IndexSlot::Loaded(index);
        }
        match &mut *slot {
            IndexSlot::Loaded(index) => Ok(f(index)),
            IndexSlot::Unloaded => unreachable!("the index was loaded above"),
        }
    }

    /// Runs `f` on an index that is loaded: the active segment's, or a sealed one's held open.
    pub fn with_loaded_index<T>(&self, f: impl FnOnce(&mut SegmentIndex) -> T) -> T {
        match &mut *lock(&self.index) {
            IndexSlot::Loaded(index) => f(index),
            // The active segment's index is created loaded and only sealed segments are evicted;
            // the writer holds the segment it writes (or seals) as the active one.
            IndexSlot::Unloaded => unreachable!("the active segment's index is always loaded"),
        }
    }

    /// The largest record timestamp, loading the index if it is not known yet.
    pub fn max_timestamp_ms(
        &self,
        storage: &dyn Storage,
        frame_bytes_max: u32,
        interval_bytes: u32,
    ) -> io::Result<u64> {
        match self.max_timestamp_ms.load(Ordering::Acquire) {
            UNKNOWN => self.with_index(storage, frame_bytes_max, interval_bytes, |index| {
                index.max_timestamp_ms
            }),
            known => Ok(known),
        }
    }

    pub fn set_max_timestamp_ms(&self, max_timestamp_ms: u64) {
        self.max_timestamp_ms
            .store(max_timestamp_ms, Ordering::Release);
    }

    /// Reads a sealed segment's index files, or rebuilds them by scanning when they are missing
    /// or damaged (the rebuilt files are written back; they need no sync, a torn one is simply
    /// rebuilt again).
    fn load_index(
        &self,
        storage: &dyn Storage,
        frame_bytes_max: u32,
        interval_bytes: u32,
    ) -> io::Result<SegmentIndex> {
        let [offset_path, time_path] = self.index_paths();
        let bytes = self.visible_bytes();
        let offsets = storage
            .read_file(&offset_path)
            .ok()
            .and_then(|file| format::decode_offset_index(&file));
        let times = storage
            .read_file(&time_path)
            .ok()
            .and_then(|file| format::decode_time_index(&file));
        if let (Some((offsets, max_timestamp_ms)), Some((times, time_max))) = (offsets, times) {
            let index = SegmentIndex {
                last_entry_position: offsets.last().map(|entry| entry.position),
                offsets,
                times,
                max_timestamp_ms,
            };
            if time_max == max_timestamp_ms && index.is_consistent_with(bytes) {
                return Ok(index);
            }
        }
        tracing::warn!(segment = %self.path.display(), "index missing or damaged; rebuilding it");
        let (file, _) = self.file(storage)?;
        let mut index = SegmentIndex::default();
        let scan = scan_frames(
            file.as_ref(),
            SEGMENT_HEADER_BYTES,
            bytes,
            Some(self.base_offset),
            frame_bytes_max,
            |position, frame, _| {
                index.note_frame(
                    self.base_offset,
                    position,
                    frame.base_offset,
                    frame.max_timestamp_ms,
                    interval_bytes,
                );
                ControlFlow::Continue(())
            },
        )?;
        if let ScanStop::Invalid { position, reason } = scan.stop {
            // A sealed segment is immutable and was synced before it was sealed: damage here is
            // not a torn write. Index what is valid; reads past it report the corruption.
            tracing::error!(segment = %self.path.display(), position, %reason, "sealed segment is damaged");
        }
        write_index_files(storage, self, &index)?;
        Ok(index)
    }
}

/// Writes a segment's two index files (not synced).
pub(crate) fn write_index_files(
    storage: &dyn Storage,
    segment: &Segment,
    index: &SegmentIndex,
) -> io::Result<[Arc<dyn StorageFile>; 2]> {
    let [offset_path, time_path] = segment.index_paths();
    let offsets = storage.write_file(
        &offset_path,
        &format::encode_offset_index(&index.offsets, index.max_timestamp_ms),
    )?;
    let times = storage.write_file(
        &time_path,
        &format::encode_time_index(&index.times, index.max_timestamp_ms),
    )?;
    Ok([offsets, times])
}

/// Why a scan stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanStop {
    /// Reached the end position exactly at a frame boundary.
    End,
    /// The visitor asked to stop.
    Visitor,
    /// The bytes at `position` are not a valid frame (torn or damaged).
    Invalid { position: u64, reason: String },
}

/// Where a scan ended: the position after the last valid frame visited, and why it stopped.
#[derive(Debug, Clone)]
pub(crate) struct Scan {
    pub position: u64,
    pub stop: ScanStop,
}

/// Visits the valid frames of `file` from `start` up to `end`, in order, in chunks. A frame must
/// also continue the offset sequence: each one's base offset is the previous one's end, and the
/// first one's is `first_base_offset` when that is given.
pub(crate) fn scan_frames(
    file: &dyn StorageFile,
    start: u64,
    end: u64,
    first_base_offset: Option<u64>,
    frame_bytes_max: u32,
    mut visit: impl FnMut(u64, &FrameInfo, &[u8]) -> ControlFlow<()>,
) -> io::Result<Scan> {
    let mut buffer: Vec<u8> = Vec::new();
    // `buffer` holds the file's bytes from `buffer_start`; `used` of them were consumed.
    let mut buffer_start = start;
    let mut used = 0usize;
    let mut expected_base = first_base_offset;
    loop {
        let position = buffer_start + used as u64;
        if position >= end {
            return Ok(Scan {
                position,
                stop: ScanStop::End,
            });
        }
        match format::check_frame(&buffer[used..], frame_bytes_max) {
            Ok(frame) => {
                if expected_base.is_some_and(|expected| expected != frame.base_offset) {
                    return Ok(Scan {
                        position,
                        stop: ScanStop::Invalid {
                            position,
                            reason: format!(
                                "base offset {} breaks the sequence (expected {})",
                                frame.base_offset,
                                expected_base.unwrap_or_default()
                            ),
                        },
                    });
                }
                let length = frame.frame_bytes as usize;
                let bytes = &buffer[used..used + length];
                expected_base = Some(frame.end_offset());
                used += length;
                if visit(position, &frame, bytes).is_break() {
                    return Ok(Scan {
                        position: position + length as u64,
                        stop: ScanStop::Visitor,
                    });
                }
            }
            Err(FrameError::Incomplete { need, .. }) => {
                let available = end - position;
                let have = (buffer.len() - used) as u64;
                if have >= available || need > available {
                    // The frame claims to run past the end: a torn write.
                    return Ok(Scan {
                        position,
                        stop: ScanStop::Invalid {
                            position,
                            reason: format!(
                                "frame needs {need} bytes but {available} remain: torn write"
                            ),
                        },
                    });
                }
                // Refill: keep the unconsumed bytes and read at least the frame's remainder.
                buffer.drain(..used);
                buffer_start = position;
                used = 0;
                let want = (need.max(SCAN_CHUNK_BYTES as u64)).min(available);
                let old_length = buffer.len();
                // `want` ≤ `available`, which is below the 4 GiB segment limit.
                buffer.resize(usize::try_from(want).expect("scan chunk fits usize"), 0);
                file.read_exact_at(&mut buffer[old_length..], position + old_length as u64)?;
            }
            Err(FrameError::Corrupt { reason }) => {
                return Ok(Scan {
                    position,
                    stop: ScanStop::Invalid {
                        position,
                        reason: reason.to_owned(),
                    },
                });
            }
        }
    }
}
