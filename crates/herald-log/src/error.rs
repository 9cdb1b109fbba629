//! Errors, one enum per operation. I/O errors are shared (`Arc`) because one failed write or
//! sync fails every append of its group.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::ConfigError;
use crate::format::BatchError;

/// Why a partition log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Damage that recovery must not repair on its own, because repairing it would drop data
    /// that was acknowledged (for example a damaged header in front of valid records).
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// Why an append failed. Nothing of a failed append is readable, and its offsets are reused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// The batch breaks one of this log's limits.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// Too much is already waiting to be written; try again shortly.
    #[error("the partition is overloaded: {in_flight} in flight, the limit ({limit}) is {max}")]
    Overloaded {
        limit: &'static str,
        in_flight: u64,
        max: u64,
    },
    /// The disk is full. Everything stored stays readable; appends work again once there is room.
    #[error("no space left on the device: {0}")]
    DiskFull(#[source] Arc<io::Error>),
    /// The write or the sync failed; the records were not stored.
    #[error("I/O error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// An earlier failure left the log unable to tell what is on disk; reopen it to recover.
    #[error("the log stopped after an I/O failure and must be reopened: {0}")]
    Failed(#[source] Arc<io::Error>),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
}

impl AppendError {
    pub(crate) fn from_io(error: io::Error) -> Self {
        if crate::io::is_disk_full(&error) {
            AppendError::DiskFull(Arc::new(error))
        } else {
            AppendError::Io(Arc::new(error))
        }
    }
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The offset is below the first retained record or past the end.
    #[error("offset {offset} is outside the retained range {start_offset}..{end_offset}")]
    OffsetOutOfRange {
        offset: u64,
        start_offset: u64,
        end_offset: u64,
    },
    #[error("a read of {requested} bytes was asked for; the limit (read_bytes_max) is {max}")]
    TooLarge { requested: u32, max: u32 },
    /// Stored bytes failed their checksum or layout checks; they are never served.
    #[error("corrupt data in segment {segment_base_offset} at byte {position}: {reason}")]
    Corrupt {
        segment_base_offset: u64,
        position: u64,
        reason: String,
    },
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
}

/// Why retention could not finish; what it deleted before the error stays deleted.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("I/O error while applying retention: {0}")]
    Io(#[from] io::Error),
    #[error("rolling the active segment failed: {0}")]
    Roll(#[source] AppendError),
}
