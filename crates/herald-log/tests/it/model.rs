//! The log against a model: a `Vec` of records. Random appends, reads, reopenings, rolls,
//! retention and time lookups; after every step the log must answer as the model does.

use std::path::Path;
use std::sync::Arc;

use herald_log::sim::SimStorage;
use herald_log::{PartitionLog, RetentionPolicy, Storage};
use proptest::prelude::*;

use crate::support::{self, TestRecord};

#[derive(Debug, Clone)]
enum Operation {
    Append(Vec<(u64, usize)>),
    Read { at_permille: u16, max_bytes: u32 },
    Reopen,
    Roll,
    RetainBytes(u64),
    RetainAge { age_ms: u64 },
    FindTime(u64),
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        6 => prop::collection::vec((0u64..5000, 0usize..700), 1..6).prop_map(Operation::Append),
        3 => (0u16..=1000, 1u32..12_000).prop_map(|(at_permille, max_bytes)| Operation::Read { at_permille, max_bytes }),
        1 => Just(Operation::Reopen),
        1 => Just(Operation::Roll),
        1 => (4_000u64..40_000).prop_map(Operation::RetainBytes),
        1 => (0u64..5000).prop_map(|age_ms| Operation::RetainAge { age_ms }),
        1 => (999_000u64..1_006_000).prop_map(Operation::FindTime),
    ]
}

struct Model {
    /// Records from offset `start`.
    records: Vec<TestRecord>,
    start: u64,
}

impl Model {
    fn end(&self) -> u64 {
        self.start + self.records.len() as u64
    }

    fn drop_before(&mut self, offset: u64) {
        assert!(offset >= self.start && offset <= self.end());
        self.records.drain(..(offset - self.start) as usize);
        self.start = offset;
    }
}

fn run(operations: Vec<Operation>) {
    let storage = SimStorage::new();
    let shared: Arc<dyn Storage> = storage.shared();
    let directory = Path::new("/data/topic-0");
    let config = support::small_config();
    let mut log = support::open(&shared, directory, config.clone());
    let mut model = Model {
        records: Vec::new(),
        start: 0,
    };
    for operation in operations {
        match operation {
            Operation::Append(specs) => {
                let records: Vec<TestRecord> = specs
                    .iter()
                    .map(|(seed, bytes)| TestRecord::from_seed(*seed, *bytes))
                    .collect();
                let info = support::append(&log, &records).expect("append");
                assert_eq!(info.base_offset, model.end());
                assert_eq!(info.end_offset, model.end() + records.len() as u64);
                model.records.extend(records);
            }
            Operation::Read {
                at_permille,
                max_bytes,
            } => {
                let span = model.end() - model.start;
                let offset = model.start + span * u64::from(at_permille) / 1000;
                let result = log.read(offset, max_bytes).expect("read");
                if offset == model.end() {
                    assert!(result.records.is_empty());
                } else {
                    assert!(
                        !result.records.is_empty(),
                        "a read before the end returns records"
                    );
                }
                for (number, record) in result.records.iter().enumerate() {
                    let expected_offset = offset + number as u64;
                    assert_eq!(record.offset, expected_offset);
                    let expected = &model.records[(expected_offset - model.start) as usize];
                    assert!(expected.matches(record), "record {expected_offset} differs");
                }
                if model.start > 0 {
                    assert!(
                        log.read(model.start - 1, max_bytes).is_err(),
                        "below the start is out of range"
                    );
                }
                assert!(
                    log.read(model.end() + 1, max_bytes).is_err(),
                    "past the end is out of range"
                );
            }
            Operation::Reopen => {
                drop(log);
                log = support::open(&shared, directory, config.clone());
            }
            Operation::Roll => log.roll().expect("roll"),
            Operation::RetainBytes(bytes_max) => {
                let policy = RetentionPolicy {
                    age_max: None,
                    bytes_max: Some(bytes_max),
                };
                log.apply_retention(&policy, 0, &mut |_| true)
                    .expect("retention");
                let info = log.info();
                assert!(
                    info.bytes <= bytes_max || info.segments == 1,
                    "{info:?} over {bytes_max}"
                );
                model.drop_before(info.start_offset);
            }
            Operation::RetainAge { age_ms } => {
                let now_ms = 1_002_500;
                let policy = RetentionPolicy {
                    age_max: Some(std::time::Duration::from_millis(age_ms)),
                    bytes_max: None,
                };
                log.apply_retention(&policy, now_ms, &mut |_| true)
                    .expect("retention");
                let start = log.start_offset();
                // Whatever was deleted was entirely older than the limit.
                for record in &model.records[..(start - model.start) as usize] {
                    assert!(
                        record.timestamp_ms + age_ms < now_ms,
                        "a record within the age limit was deleted"
                    );
                }
                model.drop_before(start);
            }
            Operation::FindTime(timestamp_ms) => {
                let expected = model
                    .records
                    .iter()
                    .position(|record| record.timestamp_ms >= timestamp_ms)
                    .map_or(model.end(), |position| model.start + position as u64);
                assert_eq!(
                    log.offset_for_timestamp(timestamp_ms).expect("find"),
                    expected
                );
            }
        }
        let info = log.info();
        assert_eq!(info.start_offset, model.start);
        assert_eq!(info.end_offset, model.end());
    }
    // Finally, everything the model holds reads back in one pass, after one more reopen.
    drop(log);
    let log: PartitionLog = support::open(&shared, directory, config);
    let all = support::read_all(&log);
    assert_eq!(all.len(), model.records.len());
    for (record, expected) in all.iter().zip(&model.records) {
        assert!(expected.matches(record));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_log_behaves_like_a_vec_of_records(operations in prop::collection::vec(operation(), 1..120)) {
        run(operations);
    }
}
