//! Damage on real files: torn tails, flipped bits, missing and damaged indexes.

use std::fs;
use std::path::{Path, PathBuf};

use herald_log::{LogConfig, OsStorage, PartitionLog, ReadError};

use crate::support::{self, TestRecord};

fn segment_files(directory: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(directory)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|found| found == extension))
        .collect();
    files.sort();
    files
}

fn copy_directory(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Writes `batches` one-record batches and returns them with the active file's length before
/// the last one.
fn write_batches(directory: &Path, config: &LogConfig, batches: u64) -> (Vec<TestRecord>, u64) {
    let log = support::open(&OsStorage::shared(), directory, config.clone());
    let mut written = Vec::new();
    let mut length_before_last = 0;
    for seed in 0..batches {
        if seed + 1 == batches {
            let active = segment_files(directory, "log").pop().unwrap();
            length_before_last = fs::metadata(active).unwrap().len();
        }
        let record = TestRecord::from_seed(seed, 200 + (seed % 7) as usize * 50);
        support::append(&log, std::slice::from_ref(&record)).unwrap();
        written.push(record);
    }
    log.close().unwrap();
    (written, length_before_last)
}

fn assert_holds(log: &PartitionLog, expected: &[TestRecord]) {
    let records = support::read_all(log);
    assert_eq!(records.len(), expected.len());
    for (record, written) in records.iter().zip(expected) {
        assert!(written.matches(record), "record {} differs", record.offset);
    }
}

#[test]
fn a_torn_tail_is_cut_at_every_possible_length() {
    let original = tempfile::tempdir().unwrap();
    let config = LogConfig::default();
    let (written, last_start) = write_batches(original.path(), &config, 5);
    let active_name = segment_files(original.path(), "log").pop().unwrap();
    let full_length = fs::metadata(&active_name).unwrap().len();
    for cut in last_start..full_length {
        let copy = tempfile::tempdir().unwrap();
        copy_directory(original.path(), copy.path());
        let active = copy.path().join(active_name.file_name().unwrap());
        fs::OpenOptions::new()
            .write(true)
            .open(&active)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let log = support::open(&OsStorage::shared(), copy.path(), config.clone());
        assert_holds(&log, &written[..4]);
        assert_eq!(
            fs::metadata(&active).unwrap().len(),
            last_start,
            "the torn bytes are cut off"
        );
        // Appends continue where the valid data ends.
        assert_eq!(
            support::append(&log, &[TestRecord::from_seed(9, 9)])
                .unwrap()
                .base_offset,
            4
        );
    }
}

#[test]
fn garbage_or_zeros_after_the_last_frame_are_cut() {
    for tail in [
        vec![0u8; 4096],
        (0..=255u8).cycle().take(5000).collect::<Vec<u8>>(),
    ] {
        let directory = tempfile::tempdir().unwrap();
        let config = LogConfig::default();
        let (written, _) = write_batches(directory.path(), &config, 3);
        let active = segment_files(directory.path(), "log").pop().unwrap();
        let valid_length = fs::metadata(&active).unwrap().len();
        let mut bytes = fs::read(&active).unwrap();
        bytes.extend_from_slice(&tail);
        fs::write(&active, bytes).unwrap();
        let log = support::open(&OsStorage::shared(), directory.path(), config);
        assert_holds(&log, &written);
        assert_eq!(fs::metadata(&active).unwrap().len(), valid_length);
    }
}

#[test]
fn a_flipped_bit_in_the_active_tail_is_never_served() {
    let original = tempfile::tempdir().unwrap();
    let config = LogConfig::default();
    let (written, last_start) = write_batches(original.path(), &config, 4);
    let active_name = segment_files(original.path(), "log").pop().unwrap();
    let full_length = fs::metadata(&active_name).unwrap().len();
    // Every byte of the last frame except the base offset, which recovery checks by sequence
    // (covered by flipping byte 0 too: it breaks the sequence).
    for position in last_start..full_length {
        let copy = tempfile::tempdir().unwrap();
        copy_directory(original.path(), copy.path());
        let active = copy.path().join(active_name.file_name().unwrap());
        let mut bytes = fs::read(&active).unwrap();
        bytes[position as usize] ^= 0x04;
        fs::write(&active, bytes).unwrap();
        let log = support::open(&OsStorage::shared(), copy.path(), config.clone());
        assert_holds(&log, &written[..3]);
    }
}

fn sealed_log(directory: &Path) -> (LogConfig, Vec<TestRecord>) {
    let config = support::small_config();
    let (written, _) = write_batches(directory, &config, 120);
    assert!(
        segment_files(directory, "log").len() >= 3,
        "several segments were written"
    );
    (config, written)
}

#[test]
fn a_flipped_bit_in_a_sealed_segment_is_reported_not_served() {
    let directory = tempfile::tempdir().unwrap();
    let (config, written) = sealed_log(directory.path());
    let first = segment_files(directory.path(), "log").remove(0);
    let mut bytes = fs::read(&first).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x80;
    fs::write(&first, bytes).unwrap();
    let log = support::open(&OsStorage::shared(), directory.path(), config);
    // Reading through the damaged batch fails with Corrupt, never with wrong bytes.
    let mut offset = 0;
    let error = loop {
        match log.read(offset, 64 * 1024) {
            Ok(result) => {
                assert!(
                    !result.records.is_empty(),
                    "the damage is reached before the end"
                );
                for record in &result.records {
                    assert!(written[record.offset as usize].matches(record));
                }
                offset = result.next_offset;
            }
            Err(error) => break error,
        }
    };
    assert!(
        matches!(
            error,
            ReadError::Corrupt {
                segment_base_offset: 0,
                ..
            }
        ),
        "got {error:?}"
    );
    // The other segments read as written.
    let second_base: u64 = segment_files(directory.path(), "log")[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let rest = support::read_all_from(&log, second_base, 64 * 1024);
    for record in &rest {
        assert!(written[record.offset as usize].matches(record));
    }
    assert_eq!(rest.len() as u64, written.len() as u64 - second_base);
}

#[test]
fn missing_or_damaged_indexes_of_sealed_segments_are_rebuilt() {
    let directory = tempfile::tempdir().unwrap();
    let (config, written) = sealed_log(directory.path());
    let indexes = segment_files(directory.path(), "index");
    let time_indexes = segment_files(directory.path(), "timeindex");
    let sealed = segment_files(directory.path(), "log").len() - 1;
    assert_eq!(
        indexes.len(),
        sealed,
        "each sealed segment has an offset index"
    );
    assert_eq!(time_indexes.len(), sealed, "and a time index");
    let original = fs::read(&indexes[1]).unwrap();
    fs::remove_file(&indexes[0]).unwrap();
    fs::write(&indexes[1], b"not an index").unwrap();
    let mut damaged_time = fs::read(&time_indexes[2]).unwrap();
    damaged_time[0] ^= 1;
    fs::write(&time_indexes[2], damaged_time).unwrap();

    let log = support::open(&OsStorage::shared(), directory.path(), config);
    assert_holds(&log, &written);
    for (offset, record) in written.iter().enumerate() {
        let read = log.read(offset as u64, 1).unwrap();
        assert!(
            record.matches(&read.records[0]),
            "random access to {offset}"
        );
        assert_eq!(
            log.offset_for_timestamp(record.timestamp_ms).unwrap(),
            offset as u64
        );
    }
    assert!(indexes[0].exists(), "the missing index was written again");
    assert_eq!(
        fs::read(&indexes[1]).unwrap(),
        original,
        "the damaged index was rebuilt as it was"
    );
}

#[test]
fn segment_files_are_named_by_their_zero_padded_base_offset() {
    let directory = tempfile::tempdir().unwrap();
    sealed_log(directory.path());
    let names: Vec<String> = segment_files(directory.path(), "log")
        .iter()
        .map(|path| path.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(names[0], "00000000000000000000.log");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for name in &names {
        assert_eq!(name.len(), 24);
    }
}
