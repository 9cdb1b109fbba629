//! The log's recovery and record decoding on arbitrary segment contents: opening a partition
//! whose active segment holds the input (after a valid segment header) must never panic, every
//! read must answer records or a `Corrupt`/range error, and the log must take appends afterwards.
//!
//! With the first input byte odd, the rest is made into one frame with a correct length,
//! trailer and CRC-32C, so the fuzzer gets past the checksum into the record layout.

#![no_main]

use std::path::Path;

use herald_log::format::{
    FRAME_END_MAGIC, FRAME_FORMAT, FRAME_OVERHEAD_BYTES, encode_segment_header,
};
use herald_log::sim::SimStorage;
use herald_log::{BatchBuilder, LogConfig, PartitionLog, RecordInput, Storage};
use libfuzzer_sys::fuzz_target;

fn seal_frame(frame: &mut [u8]) {
    let length = frame.len() as u32;
    frame[0..8].copy_from_slice(&0u64.to_le_bytes());
    frame[8..12].copy_from_slice(&length.to_le_bytes());
    frame[16..20].copy_from_slice(&FRAME_FORMAT.to_le_bytes());
    let end = frame.len();
    frame[end - 8..end - 4].copy_from_slice(&length.to_le_bytes());
    frame[end - 4..end].copy_from_slice(&FRAME_END_MAGIC.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[8..12]), &frame[16..]);
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut body = rest.to_vec();
    if mode & 1 == 1 && body.len() >= FRAME_OVERHEAD_BYTES {
        seal_frame(&mut body);
    }
    let storage = SimStorage::new();
    let directory = Path::new("/fuzz/partition");
    storage.create_dir_all(directory).unwrap();
    let mut segment = encode_segment_header(0).to_vec();
    segment.extend_from_slice(&body);
    storage
        .write_file(&directory.join("00000000000000000000.log"), &segment)
        .unwrap();
    let Ok(log) = PartitionLog::open(storage.shared(), directory, LogConfig::default()) else {
        return;
    };
    let info = log.info();
    let mut offset = info.start_offset;
    while offset < info.end_offset {
        match log.read(offset, 64 * 1024) {
            Ok(read) if !read.records.is_empty() => offset = read.next_offset,
            _ => break,
        }
    }
    // Whatever recovery kept, the log goes on taking appends after it.
    let mut batch = BatchBuilder::new(LogConfig::default().batch_limits());
    batch
        .push(RecordInput {
            timestamp_ms: 1,
            key: None,
            headers: &[],
            payload: b"after",
        })
        .unwrap();
    let appended = log
        .append(batch.finish().unwrap())
        .expect("an append after recovery");
    let read = log
        .read(appended.base_offset, 64 * 1024)
        .expect("reading the append back");
    assert_eq!(read.records[0].payload.as_ref(), b"after");
});
