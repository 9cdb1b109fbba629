//! Deterministic records for tests and test tools: a record's bytes follow from its seed, so a
//! test can check what a killed process wrote without having been told the bytes.

use crate::LogConfig;

/// The configuration the SIGKILL test's writer and checker share: small segments so a short run
/// rolls several times.
pub fn small_segment_config(segment_bytes_max: u64) -> LogConfig {
    let half = u32::try_from(segment_bytes_max / 2).unwrap_or(u32::MAX);
    LogConfig {
        segment_bytes_max,
        batch_bytes_max: half,
        record_bytes_max: half,
        ..LogConfig::default()
    }
}

/// A record made from a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededRecord {
    pub seed_text: String,
    pub timestamp_ms: u64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// The record for `seed`: up to ~1.5 KiB of pseudo-random bytes, a key for most seeds.
pub fn seeded_record(seed: u64) -> SeededRecord {
    let length = (seed.wrapping_mul(2_654_435_761) % 1500) as usize;
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut payload = Vec::with_capacity(length + 8);
    while payload.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        payload.extend_from_slice(&state.to_le_bytes());
    }
    payload.truncate(length);
    SeededRecord {
        seed_text: seed.to_string(),
        timestamp_ms: 1_700_000_000_000 + seed,
        key: (!seed.is_multiple_of(5)).then(|| format!("customer-{}", seed % 97).into_bytes()),
        payload,
    }
}
