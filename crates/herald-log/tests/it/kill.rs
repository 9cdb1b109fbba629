//! The process-level test: a child process appends under load and prints each completed append;
//! the test kills it with SIGKILL at a random moment, reopens the log, and checks that every
//! printed record is there, byte for byte. In a loop, on one growing log.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use herald_log::testing::{seeded_record, small_segment_config};
use herald_log::{OsStorage, PartitionLog};
use rand::Rng;

const WRITER: &str = env!("CARGO_BIN_EXE_herald-log-writer");
const SEGMENT_BYTES: u64 = 256 * 1024;

struct Reported {
    base_offset: u64,
    end_offset: u64,
    seeds: Vec<u64>,
}

fn parse(line: &str) -> Reported {
    let mut fields = line.split(' ');
    let mut next = || fields.next().unwrap_or_else(|| panic!("bad line {line:?}"));
    let base_offset = next().parse().unwrap();
    let end_offset = next().parse().unwrap();
    let seeds = next()
        .split(',')
        .map(|seed| seed.parse().unwrap())
        .collect();
    Reported {
        base_offset,
        end_offset,
        seeds,
    }
}

#[test]
fn every_append_reported_before_a_sigkill_survives_it() {
    let rounds: u32 = std::env::var("HERALD_KILL_ROUNDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20);
    let directory = tempfile::tempdir().unwrap();
    let mut random = rand::rng();
    let mut reported: Vec<Reported> = Vec::new();
    for round in 0..rounds {
        let mut child = Command::new(WRITER)
            .arg(directory.path())
            .arg((u64::from(round) * 1_000_000_000).to_string())
            .arg("4")
            .arg(SEGMENT_BYTES.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the writer");
        let stdout = child.stdout.take().unwrap();
        let (lines_sender, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_sender.send(line).is_err() {
                    break;
                }
            }
        });
        // Under load first, then a kill at a random moment.
        let first = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the writer appends");
        std::thread::sleep(Duration::from_millis(random.random_range(5..150)));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        reader.join().unwrap();
        let before = reported.len();
        reported.push(parse(&first));
        reported.extend(lines.try_iter().map(|line| parse(&line)));
        assert!(reported.len() > before, "round {round} appended something");

        let log = PartitionLog::open(
            OsStorage::shared(),
            directory.path(),
            small_segment_config(SEGMENT_BYTES),
        )
        .expect("recovery after SIGKILL");
        let mut offset = 0;
        let mut stored = Vec::new();
        loop {
            let result = log.read(offset, 1 << 20).expect("read after recovery");
            if result.records.is_empty() {
                break;
            }
            offset = result.next_offset;
            stored.extend(result.records);
        }
        let mut seeds_stored = HashSet::new();
        for record in &stored {
            let seed: u64 = std::str::from_utf8(record.headers.get(b"seed").unwrap())
                .unwrap()
                .parse()
                .unwrap();
            let expected = seeded_record(seed);
            assert_eq!(
                record.payload[..],
                expected.payload[..],
                "offset {}",
                record.offset
            );
            assert_eq!(record.key.as_deref(), expected.key.as_deref());
            assert_eq!(record.timestamp_ms, expected.timestamp_ms);
            assert!(seeds_stored.insert(seed), "seed {seed} stored twice");
        }
        for append in &reported {
            assert_eq!(
                append.end_offset - append.base_offset,
                append.seeds.len() as u64
            );
            for (offset, seed) in (append.base_offset..append.end_offset).zip(&append.seeds) {
                let record = stored.get(offset as usize).unwrap_or_else(|| {
                    panic!(
                        "round {round}: reported offset {offset} lost; {} stored",
                        stored.len()
                    )
                });
                let found: u64 = std::str::from_utf8(record.headers.get(b"seed").unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(
                    found, *seed,
                    "round {round}: offset {offset} holds another record"
                );
            }
        }
        eprintln!(
            "kill round {round}: {} appends reported in all, {} records stored, {} segments",
            reported.len(),
            stored.len(),
            log.info().segments
        );
    }
}
