//! A test tool: appends to a partition log from several threads as fast as it can and prints
//! every completed append, one line each (`base_offset end_offset seed,seed,...`), flushed
//! before the next. The SIGKILL test (`tests/it/kill.rs`) kills it at a random moment and checks
//! that every printed append survived. Each record's bytes are derived from its seed by
//! [`herald_log::testing::seeded_record`], so the test can rebuild them.
//!
//! Usage: `herald-log-writer DIRECTORY FIRST_SEED WRITERS SEGMENT_BYTES`

use std::io::Write;
use std::sync::{Arc, Mutex};

use herald_log::testing::{seeded_record, small_segment_config};
use herald_log::{OsStorage, PartitionLog, RecordInput};

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let [_, directory, first_seed, writers, segment_bytes] = &arguments[..] else {
        eprintln!("usage: herald-log-writer DIRECTORY FIRST_SEED WRITERS SEGMENT_BYTES");
        std::process::exit(2);
    };
    let parse = |text: &str| -> u64 {
        text.parse().unwrap_or_else(|_| {
            eprintln!("not a number: {text}");
            std::process::exit(2)
        })
    };
    let (first_seed, writers, segment_bytes) =
        (parse(first_seed), parse(writers), parse(segment_bytes));
    let config = small_segment_config(segment_bytes);
    let log = PartitionLog::open(OsStorage::shared(), directory, config).unwrap_or_else(|error| {
        eprintln!("cannot open the log: {error}");
        std::process::exit(1)
    });
    let output = Arc::new(Mutex::new(std::io::stdout()));
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let log = log.clone();
            let output = output.clone();
            std::thread::spawn(move || {
                let mut seed = first_seed + writer * 100_000_000;
                loop {
                    let count = 1 + (seed.wrapping_mul(0x9E37_79B9) >> 7) % 4;
                    let seeds: Vec<u64> = (seed..seed + count).collect();
                    seed += count;
                    let records: Vec<_> = seeds.iter().map(|seed| seeded_record(*seed)).collect();
                    let mut builder = log.batch_builder();
                    for record in &records {
                        builder
                            .push(RecordInput {
                                timestamp_ms: record.timestamp_ms,
                                key: record.key.as_deref(),
                                headers: &[(b"seed", record.seed_text.as_bytes())],
                                payload: &record.payload,
                            })
                            .expect("seeded records fit the limits");
                    }
                    let info = match log.append(builder.finish().expect("not empty")) {
                        Ok(info) => info,
                        Err(error) => {
                            eprintln!("append failed: {error}");
                            std::process::exit(1);
                        }
                    };
                    let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
                    let mut output = output
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let line = format!(
                        "{} {} {}\n",
                        info.base_offset,
                        info.end_offset,
                        seeds.join(",")
                    );
                    if output
                        .write_all(line.as_bytes())
                        .and_then(|()| output.flush())
                        .is_err()
                    {
                        std::process::exit(0);
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}
