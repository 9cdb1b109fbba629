//! Settings and limits of a partition log. Every limit has a name with its unit last, a default,
//! and an error that names it when it is reached.

use std::time::Duration;

use crate::format::BatchLimits;

/// When appended bytes are made durable, and so when an append completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// An append completes after its bytes are written and `fdatasync`ed. Concurrent appends
    /// share one write and one sync (group commit). A crash loses no completed append.
    #[default]
    Always,
    /// An append completes after its bytes are written to the OS; the log syncs at most this long
    /// after a write. A crash of the machine (not of the process) loses at most the appends of
    /// the last interval; a crash of the process alone loses nothing the OS accepted.
    Interval(Duration),
    /// An append completes after its bytes are written to the OS; syncs happen only when a
    /// segment rolls and when the log is closed. A machine crash loses whatever the OS had not
    /// yet written back (on Linux, typically up to ~30 s of appends).
    Never,
}

impl FsyncPolicy {
    /// True when readers may only see synced records.
    pub(crate) fn syncs_before_completion(self) -> bool {
        matches!(self, FsyncPolicy::Always)
    }
}

/// Configuration of one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub fsync: FsyncPolicy,
    /// A segment rolls when the next batch would take it past this size. At most 4 GiB, since
    /// positions in the indexes are `u32`.
    pub segment_bytes_max: u64,
    /// A segment rolls at the first append after it is this old.
    pub segment_age_max: Duration,
    /// One offset and time index entry per this many bytes of a segment.
    pub index_interval_bytes: u32,
    /// Largest encoded record.
    pub record_bytes_max: u32,
    /// Largest encoded batch frame.
    pub batch_bytes_max: u32,
    /// Most records in one batch.
    pub batch_records_max: u32,
    /// Most appends waiting to be written or synced at once; one more fails with
    /// `AppendError::Overloaded` instead of queueing without bound.
    pub in_flight_appends_max: u32,
    /// Most bytes waiting to be written at once; past it appends fail with `Overloaded`.
    pub in_flight_bytes_max: u64,
    /// Most bytes written by one `write` call of the group commit.
    pub write_group_bytes_max: u32,
    /// Most sealed segment files (with their indexes) kept open per partition; the least
    /// recently read ones are closed past it. The active segment is always open.
    pub open_segments_max: u32,
    /// Largest read, in bytes, one call may ask for.
    pub read_bytes_max: u32,
}

/// The largest segment a `u32` index position can address.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes_max: 128 * 1024 * 1024,
            segment_age_max: Duration::from_secs(24 * 60 * 60),
            index_interval_bytes: 4096,
            record_bytes_max: 4 * 1024 * 1024,
            batch_bytes_max: 64 * 1024 * 1024,
            batch_records_max: 100_000,
            in_flight_appends_max: 4096,
            in_flight_bytes_max: 256 * 1024 * 1024,
            write_group_bytes_max: 8 * 1024 * 1024,
            open_segments_max: 16,
            read_bytes_max: 64 * 1024 * 1024,
        }
    }
}

/// A setting that cannot work, found when a log is opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

impl LogConfig {
    /// The batch limits a [`crate::BatchBuilder`] for this log enforces.
    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            record_bytes_max: self.record_bytes_max,
            batch_bytes_max: self.batch_bytes_max,
            batch_records_max: self.batch_records_max,
        }
    }

    /// Checks that the settings fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |setting, reason: String| Err(ConfigError { setting, reason });
        if self.segment_bytes_max > SEGMENT_BYTES_LIMIT || self.segment_bytes_max < 4096 {
            return fail(
                "segment_bytes_max",
                format!(
                    "{} is outside 4096..={SEGMENT_BYTES_LIMIT}",
                    self.segment_bytes_max
                ),
            );
        }
        if u64::from(self.batch_bytes_max) > self.segment_bytes_max {
            return fail(
                "batch_bytes_max",
                "must not exceed segment_bytes_max, or a batch could never fit a segment".into(),
            );
        }
        if self.record_bytes_max > self.batch_bytes_max {
            return fail("record_bytes_max", "must not exceed batch_bytes_max".into());
        }
        if self.index_interval_bytes == 0 {
            return fail("index_interval_bytes", "must be at least 1".into());
        }
        if self.in_flight_appends_max == 0 || self.batch_records_max == 0 {
            return fail("in_flight_appends_max", "limits must be at least 1".into());
        }
        if u64::from(self.batch_bytes_max) > self.in_flight_bytes_max {
            return fail(
                "in_flight_bytes_max",
                "must be at least batch_bytes_max, or a full batch could never be accepted".into(),
            );
        }
        if let FsyncPolicy::Interval(interval) = self.fsync
            && interval.is_zero()
        {
            return fail("fsync", "an interval must be longer than zero".into());
        }
        if self.read_bytes_max == 0
            || self.open_segments_max == 0
            || self.write_group_bytes_max == 0
        {
            return fail("read_bytes_max", "limits must be at least 1".into());
        }
        Ok(())
    }
}

/// How much a partition may keep. Whole segments are deleted, oldest first, and never the
/// active one while it holds the newest records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    /// Delete a segment once its newest record is older than this.
    pub age_max: Option<Duration>,
    /// Delete the oldest segments while the partition holds more bytes than this.
    pub bytes_max: Option<u64>,
}
