//! kill -9 of a real server under load: every publish answered 201 is stored at its offset
//! with its bytes, and every commit answered `ok` holds, after restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{Value, json};

use crate::real_server::RealServer;

const ROUNDS: u32 = 6;

#[derive(Default)]
struct Acknowledged {
    /// (partition, offset, id, data) of every event answered 201.
    published: Vec<(u64, u64, String, u64)>,
    /// Per partition, the highest offset whose commit was answered `ok`.
    committed: std::collections::BTreeMap<u64, u64>,
}

fn publisher(
    url: String,
    writer: u64,
    round: u32,
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<Acknowledged>>,
) {
    let client = reqwest::blocking::Client::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let events: Vec<Value> = (0..10)
            .map(|n| {
                let id = format!("r{round}-w{writer}-{}", sequence + n);
                json!({"specversion": "1.0", "id": id, "source": "/kill-test", "type": "t", "data": sequence + n})
            })
            .collect();
        let Ok(response) = client
            .post(format!("{url}/v1/topics/ledger/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
        else {
            return; // the server died mid-request: that batch was never acknowledged
        };
        if response.status().as_u16() != 201 {
            return;
        }
        let Ok(answer) = response.json::<Value>() else {
            return;
        };
        let mut acknowledged = acknowledged.lock().unwrap();
        for (event, stored) in events.iter().zip(answer["events"].as_array().unwrap()) {
            assert_eq!(stored["duplicate"], false);
            acknowledged.published.push((
                stored["partition"].as_u64().unwrap(),
                stored["offset"].as_u64().unwrap(),
                event["id"].as_str().unwrap().to_owned(),
                event["data"].as_u64().unwrap(),
            ));
        }
        sequence += 10;
    }
}

fn consumer(url: String, stop: Arc<AtomicBool>, acknowledged: Arc<Mutex<Acknowledged>>) {
    let client = reqwest::blocking::Client::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = client
            .post(format!("{url}/v1/subscriptions/auditor/pull"))
            .json(&json!({"consumer": "c", "max": 50, "wait": "100ms"}))
            .send()
        else {
            return;
        };
        let Ok(pulled) = response.json::<Value>() else {
            return;
        };
        let Some(last) = pulled["deliveries"]
            .as_array()
            .and_then(|deliveries| deliveries.last())
            .cloned()
        else {
            continue;
        };
        let Ok(response) = client
            .post(format!("{url}/v1/subscriptions/auditor/ack"))
            .json(&json!({"receipts": [last["receipt"]]}))
            .send()
        else {
            return;
        };
        let Ok(answer) = response.json::<Value>() else {
            return;
        };
        if answer["results"][0]["status"] == "ok" {
            let (partition, offset) = (
                last["partition"].as_u64().unwrap(),
                last["offset"].as_u64().unwrap(),
            );
            let mut acknowledged = acknowledged.lock().unwrap();
            let committed = acknowledged.committed.entry(partition).or_insert(offset);
            *committed = (*committed).max(offset);
        }
    }
}

#[test]
fn acknowledged_publishes_and_commits_survive_kill_9() {
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let mut random = rand::rng();
    let mut commits_checked = 0;
    {
        let server = RealServer::start(&data_dir);
        let client = reqwest::blocking::Client::new();
        let created = client
            .put(format!("{}/v1/topics/ledger", server.url))
            .json(&json!({"partitions": 2}))
            .send()
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        let subscribed = client
            .put(format!("{}/v1/subscriptions/auditor", server.url))
            .json(&json!({"topics": ["ledger"], "mode": "stream", "start": "earliest"}))
            .send()
            .unwrap();
        assert_eq!(subscribed.status().as_u16(), 201);
        server.terminate();
    }
    for round in 0..ROUNDS {
        let server = RealServer::start(&data_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for writer in 0..3 {
            let (url, stop, acknowledged) =
                (server.url.clone(), stop.clone(), acknowledged.clone());
            threads.push(std::thread::spawn(move || {
                publisher(url, writer, round, stop, acknowledged)
            }));
        }
        {
            let (url, stop, acknowledged) =
                (server.url.clone(), stop.clone(), acknowledged.clone());
            threads.push(std::thread::spawn(move || {
                consumer(url, stop, acknowledged)
            }));
        }
        std::thread::sleep(Duration::from_millis(random.random_range(300..900)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }

        // Restart and check everything acknowledged so far, from every round.
        let server = RealServer::start(&data_dir);
        let client = reqwest::blocking::Client::new();
        let acknowledged = acknowledged.lock().unwrap();
        assert!(
            !acknowledged.published.is_empty(),
            "round {round} published something"
        );
        for partition in 0..2u64 {
            let mut stored = Vec::new();
            let mut offset = 0;
            loop {
                let read: Value = client
                    .get(format!("{}/v1/topics/ledger/events?partition={partition}&offset={offset}&limit=1000", server.url))
                    .send()
                    .unwrap()
                    .json()
                    .unwrap();
                let events = read["events"].as_array().unwrap();
                if events.is_empty() {
                    break;
                }
                stored.extend(events.iter().cloned());
                offset = read["next_offset"].as_u64().unwrap();
            }
            for (_, offset, id, data) in acknowledged
                .published
                .iter()
                .filter(|(stored_partition, ..)| *stored_partition == partition)
            {
                let event = stored.get(*offset as usize).unwrap_or_else(|| {
                    panic!("round {round}: acknowledged partition {partition} offset {offset} lost")
                });
                assert_eq!(event["offset"], *offset);
                assert_eq!(
                    event["event"]["id"],
                    id.as_str(),
                    "round {round}: another event at {partition}/{offset}"
                );
                assert_eq!(event["event"]["data"], *data);
            }
        }
        // The group resumes right after its last commit: never before an acknowledged one.
        let mut first_delivered = std::collections::BTreeMap::new();
        loop {
            let pulled: Value = client
                .post(format!("{}/v1/subscriptions/auditor/pull", server.url))
                .json(&json!({"consumer": "c", "max": 1000}))
                .send()
                .unwrap()
                .json()
                .unwrap();
            let deliveries = pulled["deliveries"].as_array().unwrap();
            if deliveries.is_empty() {
                break;
            }
            for delivery in deliveries {
                first_delivered
                    .entry(delivery["partition"].as_u64().unwrap())
                    .or_insert(delivery["offset"].as_u64().unwrap());
            }
        }
        for (partition, committed) in &acknowledged.committed {
            if let Some(first) = first_delivered.get(partition) {
                assert!(
                    first > committed,
                    "round {round}: partition {partition} redelivered {first} after commit {committed} was acknowledged"
                );
                commits_checked += 1;
            }
        }
        drop(acknowledged);
        server.terminate();
    }
    assert!(
        commits_checked > 0,
        "no acknowledged commit was ever checked against a redelivery"
    );
}

/// Queue subscriptions under kill -9: an event acked `ok` is never delivered again, and every
/// event not acked comes back. An ack cut off by the kill (sent, never answered) may or may not
/// have been stored: its events may come back or not, but at most once.
#[test]
fn acked_queue_events_never_return_after_kill_9_and_unacked_ones_all_do() {
    const EVENTS: u64 = 20_000;
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let acked = Arc::new(Mutex::new(std::collections::HashSet::new()));
    // Events whose ack was sent and never answered.
    let uncertain = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let mut random = rand::rng();
    {
        let server = RealServer::start(&data_dir);
        let client = reqwest::blocking::Client::new();
        client
            .put(format!("{}/v1/subscriptions/workers", server.url))
            .json(&json!({"topics": ["jobs"], "start": "earliest", "retry": {"initial": "10ms", "max": "10ms"}}))
            .send()
            .unwrap();
        for chunk in 0..EVENTS / 500 {
            let events: Vec<Value> = (0..500)
                .map(|n| json!({"specversion": "1.0", "id": format!("{}", chunk * 500 + n), "source": "/q", "type": "job", "data": chunk * 500 + n}))
                .collect();
            let answer = client
                .post(format!("{}/v1/topics/jobs/events", server.url))
                .header("content-type", "application/cloudevents-batch+json")
                .body(serde_json::to_vec(&events).unwrap())
                .send()
                .unwrap();
            assert_eq!(answer.status().as_u16(), 201);
        }
        server.terminate();
    }
    type Set = Arc<Mutex<std::collections::HashSet<u64>>>;
    let worker = |url: String, name: String, stop: Arc<AtomicBool>, acked: Set, uncertain: Set| {
        let client = reqwest::blocking::Client::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(response) = client
                .post(format!("{url}/v1/subscriptions/workers/pull"))
                .json(&json!({"max": 50, "consumer": name}))
                .send()
            else {
                return;
            };
            let Ok(pulled) = response.json::<Value>() else {
                return;
            };
            let Some(deliveries) = pulled["deliveries"].as_array().cloned() else {
                return;
            };
            for delivery in &deliveries {
                let data = delivery["event"]["data"].as_u64().unwrap();
                assert!(
                    !acked.lock().unwrap().contains(&data),
                    "event {data} was acked and is delivered again"
                );
            }
            let receipts: Vec<&Value> = deliveries
                .iter()
                .map(|delivery| &delivery["receipt"])
                .collect();
            let batch: Vec<u64> = deliveries
                .iter()
                .map(|delivery| delivery["event"]["data"].as_u64().unwrap())
                .collect();
            uncertain.lock().unwrap().extend(batch.iter().copied());
            let Ok(response) = client
                .post(format!("{url}/v1/subscriptions/workers/ack"))
                .json(&json!({"receipts": receipts}))
                .send()
            else {
                return;
            };
            let Ok(answer) = response.json::<Value>() else {
                return;
            };
            let mut acked = acked.lock().unwrap();
            let mut uncertain = uncertain.lock().unwrap();
            for (data, result) in batch.iter().zip(answer["results"].as_array().unwrap()) {
                uncertain.remove(data);
                if result["status"] == "ok" {
                    acked.insert(*data);
                }
            }
        }
    };
    for round in 0..4 {
        let server = RealServer::start(&data_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..2)
            .map(|number| {
                let (url, stop, acked, uncertain) = (
                    server.url.clone(),
                    stop.clone(),
                    acked.clone(),
                    uncertain.clone(),
                );
                std::thread::spawn(move || {
                    worker(url, format!("w{number}"), stop, acked, uncertain)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(random.random_range(100..400)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        eprintln!(
            "queue kill round {round}: {} acked so far",
            acked.lock().unwrap().len()
        );
    }
    // Drain after the last kill: exactly the events never acked come back, each once.
    let server = RealServer::start(&data_dir);
    let client = reqwest::blocking::Client::new();
    let mut redelivered = std::collections::HashSet::new();
    loop {
        let pulled: Value = client
            .post(format!("{}/v1/subscriptions/workers/pull", server.url))
            .json(&json!({"max": 1000, "consumer": "drain"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let deliveries = pulled["deliveries"].as_array().unwrap().clone();
        if deliveries.is_empty() {
            break;
        }
        let receipts: Vec<&Value> = deliveries
            .iter()
            .map(|delivery| &delivery["receipt"])
            .collect();
        client
            .post(format!("{}/v1/subscriptions/workers/ack", server.url))
            .json(&json!({"receipts": receipts}))
            .send()
            .unwrap();
        for delivery in &deliveries {
            let data = delivery["event"]["data"].as_u64().unwrap();
            assert!(redelivered.insert(data), "event {data} drained twice");
        }
    }
    let acked = acked.lock().unwrap();
    assert!(
        !acked.is_empty(),
        "the workers acked something before the kills"
    );
    assert!(acked.is_disjoint(&redelivered), "acked events came back");
    let uncertain = uncertain.lock().unwrap();
    for data in 0..EVENTS {
        assert!(
            acked.contains(&data) || uncertain.contains(&data) || redelivered.contains(&data),
            "event {data} was never acked and did not come back"
        );
    }
    eprintln!(
        "queue kill: {} acked, {} redelivered at the end, {} with an ack cut off by a kill",
        acked.len(),
        redelivered.len(),
        uncertain.len()
    );
    server.terminate();
}

/// Action/response under kill -9: every request answered 2xx is still known after the restart,
/// every reply answered 201 is the recorded one, and in the end each request has exactly one
/// event (its reply or its expiry) in the reply topic.
#[test]
fn requests_and_replies_survive_kill_9_and_end_with_exactly_one_reply_or_expiry() {
    #[derive(Default)]
    struct Seen {
        /// Request id → (request data, deadline is short).
        requests: std::collections::BTreeMap<String, (u64, bool)>,
        /// Request id → the data of the reply answered 201.
        replies: std::collections::BTreeMap<String, u64>,
    }
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut random = rand::rng();
    {
        let server = RealServer::start(&data_dir);
        let created = reqwest::blocking::Client::new()
            .put(format!("{}/v1/subscriptions/responders", server.url))
            .json(&json!({"topics": ["asks"], "start": "earliest", "ack_timeout": "1s"}))
            .send()
            .unwrap();
        assert_eq!(created.status().as_u16(), 201);
        server.terminate();
    }
    let requester = |url: String, number: u64, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>| {
        let client = reqwest::blocking::Client::new();
        let mut sequence = 0;
        while !stop.load(Ordering::Relaxed) {
            let data = number * 1_000_000 + sequence;
            let short = sequence % 2 == 0;
            let deadline = if short { "1500ms" } else { "10m" };
            sequence += 1;
            let Ok(response) = client
                .post(format!(
                    "{url}/v1/topics/asks/requests?timeout=0s&deadline={deadline}"
                ))
                .header("herald-service", "clients")
                .json(&json!({"n": data}))
                .send()
            else {
                return;
            };
            if response.status().as_u16() != 202 {
                return;
            }
            let Ok(answer) = response.json::<Value>() else {
                return;
            };
            let id = answer["request_id"].as_str().unwrap().to_owned();
            seen.lock().unwrap().requests.insert(id, (data, short));
        }
    };
    let responder = |url: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>| {
        let client = reqwest::blocking::Client::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(response) = client
                .post(format!("{url}/v1/subscriptions/responders/pull"))
                .json(&json!({"max": 20, "consumer": "r", "wait": "100ms"}))
                .send()
            else {
                return;
            };
            let Ok(pulled) = response.json::<Value>() else {
                return;
            };
            let Some(deliveries) = pulled["deliveries"].as_array().cloned() else {
                return;
            };
            for delivery in deliveries {
                let event = &delivery["event"];
                let id = event["correlationid"].as_str().unwrap().to_owned();
                let data = event["data"]["n"].as_u64().unwrap();
                // Answer two requests of three; the others are left to expire or to the end.
                if data % 3 != 0 {
                    let Ok(response) = client
                        .post(format!("{url}/v1/requests/{id}/reply"))
                        .json(&json!({"answer": data}))
                        .send()
                    else {
                        return;
                    };
                    match response.status().as_u16() {
                        201 => {
                            seen.lock().unwrap().replies.insert(id, data);
                        }
                        // Answered before a kill whose 201 never arrived, or expired.
                        409 | 410 => {}
                        other => panic!("reply answered {other}"),
                    }
                }
                let _ = client
                    .post(format!("{url}/v1/subscriptions/responders/ack"))
                    .json(&json!({"receipts": [delivery["receipt"]]}))
                    .send();
            }
        }
    };
    for round in 0..4 {
        let server = RealServer::start(&data_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for number in 0..2 {
            let (url, stop, seen) = (server.url.clone(), stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || {
                requester(url, number + 10 * round, stop, seen)
            }));
        }
        {
            let (url, stop, seen) = (server.url.clone(), stop.clone(), seen.clone());
            threads.push(std::thread::spawn(move || responder(url, stop, seen)));
        }
        std::thread::sleep(Duration::from_millis(random.random_range(300..800)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        // Right after the restart: every acknowledged request is known, every acknowledged
        // reply is the recorded one.
        let server = RealServer::start(&data_dir);
        let client = reqwest::blocking::Client::new();
        let seen = seen.lock().unwrap();
        assert!(!seen.requests.is_empty(), "round {round} made requests");
        for id in seen.requests.keys() {
            let status = client
                .get(format!("{}/v1/requests/{id}", server.url))
                .send()
                .unwrap();
            assert_eq!(
                status.status().as_u16(),
                200,
                "round {round}: request {id} lost"
            );
            let status: Value = status.json().unwrap();
            if let Some(data) = seen.replies.get(id) {
                assert_eq!(status["status"], "replied", "round {round}: {id}");
                assert_eq!(status["reply"]["data"]["answer"], *data);
            }
        }
        drop(seen);
        server.terminate();
    }
    // The end: answer what is still pending after a restart, let the short deadlines pass, and
    // check the reply topic.
    let server = RealServer::start(&data_dir);
    let client = reqwest::blocking::Client::new();
    let seen = seen.lock().unwrap();
    let mut answered_after_restart = 0;
    for (id, (data, short)) in &seen.requests {
        if *short {
            continue;
        }
        let response = client
            .post(format!("{}/v1/requests/{id}/reply", server.url))
            .json(&json!({"answer": data}))
            .send()
            .unwrap();
        match response.status().as_u16() {
            201 => answered_after_restart += 1,
            409 => {}
            other => panic!("a reply after the restart answered {other}"),
        }
    }
    assert!(
        answered_after_restart > 0,
        "some request was still pending after the kills, and could be answered"
    );
    let mut outcomes: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for _ in 0..100 {
        outcomes.clear();
        let mut offset = 0;
        loop {
            let read: Value = client
                .get(format!(
                    "{}/v1/topics/_replies.clients/events?offset={offset}&limit=1000",
                    server.url
                ))
                .send()
                .unwrap()
                .json()
                .unwrap();
            let events = read["events"].as_array().unwrap();
            if events.is_empty() {
                break;
            }
            for event in events {
                let id = event["event"]["correlationid"].as_str().unwrap().to_owned();
                outcomes.entry(id).or_default().push(event["event"].clone());
            }
            offset = read["next_offset"].as_u64().unwrap();
        }
        if seen.requests.keys().all(|id| outcomes.contains_key(id)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (id, (data, _)) in &seen.requests {
        let events = outcomes
            .get(id)
            .unwrap_or_else(|| panic!("request {id} has no reply and no expiry"));
        assert_eq!(events.len(), 1, "request {id}: {events:?}");
        if let Some(answer) = seen.replies.get(id) {
            assert_eq!(events[0]["data"]["answer"], *answer);
        } else if events[0]["type"] == "herald.request.expired" {
            assert_eq!(events[0]["data"]["request_id"], id.as_str());
        } else {
            assert_eq!(events[0]["data"]["answer"], *data);
        }
    }
    eprintln!(
        "requests under kill -9: {} requests, {} replies acknowledged, {} answered after the restart",
        seen.requests.len(),
        seen.replies.len(),
        answered_after_restart
    );
    server.terminate();
}
