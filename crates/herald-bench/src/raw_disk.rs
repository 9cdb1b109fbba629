//! The baselines: the same bytes as the log writes, through the plainest loops std offers.
//!
//! - [`write_loop`]: `write` of one chunk, then `fdatasync` (or not), again and again, to one
//!   growing file. With the chunk the size of one batch frame this is "what the disk gives one
//!   appender that syncs every batch itself": the ceiling of a single-writer log.
//! - [`pread_loop`]: `pread` of fixed-size chunks into one reused buffer: what copying from the
//!   page cache costs with no checksums, decoding or allocation.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::machine::Stopwatch;
use crate::workload::{Budget, payload};

/// What a raw loop did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawRun {
    /// `write` (+ `fdatasync`) pairs, or `pread` calls.
    pub operations: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// CPU seconds per second of the loop.
    pub cpu_cores: Option<f64>,
}

/// Writes `chunk_bytes` at a time to a new file at `path` until the budget is spent, syncing
/// after every write when `sync` is set. Removes the file afterwards.
pub fn write_loop(
    path: &Path,
    chunk_bytes: usize,
    sync: bool,
    budget: Budget,
) -> io::Result<RawRun> {
    let chunk = payload(chunk_bytes, 0x5eed_0000 + chunk_bytes as u64);
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    let mut operations = 0u64;
    let mut bytes = 0u64;
    let stopwatch = Stopwatch::start();
    let deadline = stopwatch.started() + budget.duration;
    let result = (|| -> io::Result<()> {
        while bytes < budget.bytes_max {
            file.write_all(&chunk)?;
            if sync {
                file.sync_data()?;
            }
            operations += 1;
            bytes += chunk_bytes as u64;
            if Instant::now() >= deadline {
                break;
            }
        }
        Ok(())
    })();
    let (elapsed, cpu_cores) = stopwatch.stop();
    drop(file);
    std::fs::remove_file(path)?;
    result?;
    Ok(RawRun {
        operations,
        bytes,
        elapsed,
        cpu_cores,
    })
}

/// Reads `files` front to back in chunks of `read_bytes`, pass after pass, until `duration` is
/// over and at least one whole pass is done.
pub fn pread_loop(files: &[PathBuf], read_bytes: usize, duration: Duration) -> io::Result<RawRun> {
    let files = files
        .iter()
        .map(File::open)
        .collect::<io::Result<Vec<_>>>()?;
    let mut buffer = vec![0u8; read_bytes];
    let mut operations = 0u64;
    let mut bytes = 0u64;
    let stopwatch = Stopwatch::start();
    let deadline = stopwatch.started() + duration;
    loop {
        for file in &files {
            let mut position = 0u64;
            loop {
                let read = file.read_at(&mut buffer, position)?;
                if read == 0 {
                    break;
                }
                std::hint::black_box(&buffer[..read]);
                operations += 1;
                bytes += read as u64;
                position += read as u64;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let (elapsed, cpu_cores) = stopwatch.stop();
    Ok(RawRun {
        operations,
        bytes,
        elapsed,
        cpu_cores,
    })
}
