//! The partition log: Herald's crash-safe storage engine.
//!
//! A topic partition is an append-only sequence of records with dense `u64` offsets, stored as
//! segment files in one directory. This crate knows nothing of HTTP, JSON or CloudEvents: a
//! record is a timestamp, an optional key, a list of header byte pairs and a payload.
//!
//! The map:
//! - [`log`]: [`PartitionLog`], the public face: open and recover, append with group commit,
//!   read, find by time, roll, retention, waiting for new records.
//! - [`format`]: the byte layout of segments, batch frames, records and index files; pure
//!   encode and decode functions, documented for people in `docs/format.md`.
//! - [`segment`] (private): one segment file with its sparse offset and time indexes, and the
//!   frame scanner that recovery and index rebuilding share.
//! - [`config`]: [`LogConfig`] with every limit, [`FsyncPolicy`] and [`RetentionPolicy`].
//! - [`error`]: one error enum per operation.
//! - [`io`]: the I/O seam, [`Storage`] and [`StorageFile`], with the real [`OsStorage`].
//! - [`sim`]: [`sim::SimStorage`], a simulated disk that separates written from synced bytes,
//!   for crash and fault tests; [`testing`]: records derived from a seed, for tests and the
//!   `herald-log-writer` tool that the SIGKILL test kills.
//!
//! The invariants the rest of Herald relies on are listed in `ARCHITECTURE.md`.

pub mod config;
pub mod error;
pub mod format;
pub mod io;
pub mod log;
mod segment;
pub mod sim;
pub mod testing;

pub use config::{FsyncPolicy, LogConfig, RetentionPolicy};
pub use error::{AppendError, OpenError, ReadError, RetentionError};
pub use format::{
    BatchBuilder, BatchError, BatchLimits, EncodedBatch, Headers, Record, RecordInput,
};
pub use io::{OsStorage, Storage, StorageFile};
pub use log::{
    AppendInfo, LogInfo, PartitionLog, ReadResult, RetentionOutcome, SYNC_BUCKETS_MICROS,
    SegmentInfo, SyncHistogram,
};
