//! The records the benchmarks write, and the limits each case runs under.
//!
//! Every record is a 1 KiB payload with a timestamp and no key or headers, the size the
//! performance notes and the issue talk about. Payload bytes come from a xorshift generator so
//! that nothing on the way (a compressing file system, a clever disk) gets them for free.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_log::format::{FRAME_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES};
use herald_log::{BatchBuilder, BatchError, BatchLimits, EncodedBatch, RecordInput};

/// Payload bytes of every benchmark record.
pub const PAYLOAD_BYTES: usize = 1024;

/// Bytes one record with `payload_bytes` of payload (no key, no headers) takes in a frame.
pub const fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_OVERHEAD_BYTES + payload_bytes
}

/// Bytes of a batch frame holding `records` such records: what one append writes to disk.
pub const fn frame_bytes(records: u32, payload_bytes: usize) -> usize {
    FRAME_OVERHEAD_BYTES + records as usize * record_bytes(payload_bytes)
}

/// `length` bytes that do not compress, the same for the same `seed`.
pub fn payload(length: usize, seed: u64) -> Vec<u8> {
    // xorshift64 needs a state other than zero.
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Encodes a batch of `records` copies of `payload`, the way a producer would: into a buffer
/// sized for the whole frame, so that the builder never grows it.
pub fn encode_batch(
    limits: BatchLimits,
    payload: &[u8],
    records: u32,
    timestamp_ms: u64,
) -> Result<EncodedBatch, BatchError> {
    let mut builder = BatchBuilder::with_capacity(limits, frame_bytes(records, payload.len()));
    for _ in 0..records {
        builder.push(RecordInput {
            timestamp_ms,
            key: None,
            headers: &[],
            payload,
        })?;
    }
    builder.finish()
}

/// How long one case may run, and how much it may write, whichever comes first. The byte limit
/// keeps the `never` cases from filling the page cache (and the disk) on a fast machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub duration: Duration,
    pub bytes_max: u64,
}

#[cfg(test)]
mod tests {
    use herald_log::LogConfig;

    use super::*;

    #[test]
    fn frame_bytes_is_what_the_encoder_produces() {
        let limits = LogConfig::default().batch_limits();
        let payload = payload(PAYLOAD_BYTES, 1);
        for records in [1, 100, 1000] {
            let batch = encode_batch(limits, &payload, records, 0).expect("the batch fits");
            assert_eq!(batch.encoded_bytes(), frame_bytes(records, PAYLOAD_BYTES));
            assert_eq!(batch.record_count(), records);
        }
        assert_eq!(frame_bytes(1, PAYLOAD_BYTES), 1088);
    }

    #[test]
    fn payload_has_the_asked_length_and_depends_only_on_the_seed() {
        assert_eq!(payload(1021, 5).len(), 1021);
        assert_eq!(payload(64, 5), payload(64, 5));
        assert_ne!(payload(64, 5), payload(64, 6));
    }
}
