//! Slow and dead consumers must not grow Herald's memory with the backlog: a queue subscription
//! nobody reads, a stream subscription nobody reads, and a consumer that leases events and never
//! acks them, over a backlog of 200,000 events of 1 KiB (≈ 220 MB on disk). The server's resident
//! memory (VmRSS) must stay under `RSS_BOUND_MIB`, the bound docs/reliability.md states.

use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::real_server::RealServer;

/// The documented bound on the server's resident memory in this test.
const RSS_BOUND_MIB: u64 = 256;
const EVENTS: u64 = 200_000;

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib / 1024
}

#[test]
fn a_large_backlog_with_dead_and_slow_consumers_keeps_memory_bounded() {
    let directory = tempfile::tempdir().unwrap();
    let server = RealServer::start(&directory.path().join("data"));
    let pid = server.child.id();
    let client = Client::new();
    for (path, body) in [
        ("/v1/topics/backlog", json!({"partitions": 2})),
        (
            "/v1/subscriptions/nobody",
            json!({"topics": ["backlog"], "start": "earliest"}),
        ),
        (
            "/v1/subscriptions/slow",
            json!({"topics": ["backlog"], "start": "earliest", "ack_timeout": "1h"}),
        ),
        (
            "/v1/subscriptions/archive",
            json!({"topics": ["backlog"], "start": "earliest", "mode": "stream"}),
        ),
    ] {
        let answer = client
            .put(format!("{}{path}", server.url))
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(answer.status().as_u16(), 201, "{path}");
    }
    let pad = "x".repeat(950);
    let mut peak = 0;
    for chunk in 0..EVENTS / 1000 {
        let events: Vec<Value> = (0..1000)
            .map(|n| json!({"specversion": "1.0", "id": format!("{chunk}-{n}"), "source": "/memory", "type": "t", "data": {"pad": pad}}))
            .collect();
        let answer = client
            .post(format!("{}/v1/topics/backlog/events", server.url))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
            .unwrap();
        assert_eq!(answer.status().as_u16(), 201);
        peak = peak.max(rss_mib(pid));
    }
    // The slow consumer leases as much as the queue hands out, and never acks.
    let mut leased = 0;
    loop {
        let pulled: Value = client
            .post(format!("{}/v1/subscriptions/slow/pull", server.url))
            .json(&json!({"max": 1000, "consumer": "never-acks"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let count = pulled["deliveries"].as_array().unwrap().len();
        peak = peak.max(rss_mib(pid));
        if count == 0 {
            break;
        }
        leased += count;
        assert!(leased as u64 <= EVENTS, "more leased than stored");
    }
    // The queue's window bounds what one consumer can hold: 10,000 offsets per partition.
    assert_eq!(
        leased, 20_000,
        "the window of 2 partitions was leased, no more"
    );
    // The dead subscriptions report their backlog without reading it into memory.
    for name in ["nobody", "archive"] {
        let described: Value = client
            .get(format!("{}/v1/subscriptions/{name}", server.url))
            .send()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(described["stats"]["backlog"], EVENTS, "{name}");
    }
    peak = peak.max(rss_mib(pid));
    eprintln!(
        "memory: {EVENTS} events of 1 KiB backlogged, {leased} leased and never acked: peak RSS {peak} MiB (bound {RSS_BOUND_MIB} MiB)"
    );
    assert!(
        peak < RSS_BOUND_MIB,
        "peak RSS {peak} MiB is over the documented bound of {RSS_BOUND_MIB} MiB"
    );
    server.terminate();
}
