//! The crash loop: a real `herald serve` under mixed load (publishers retrying batches, queue
//! workers acking, a stream consumer committing, requesters and a responder) is killed with
//! SIGKILL at random moments and restarted, `HERALD_CRASH_KILLS` times (default 25). After every
//! restart the clients' own records are checked against what the server has:
//! - every event answered 201 is stored at its offset with its bytes, and no `source` + `id` is
//!   stored twice (publishers re-send acknowledged batches, which must come back as duplicates);
//! - no queue event acked `ok` is delivered again, and at the end every event not acked comes back
//!   (an ack cut off by the kill may have been stored or not);
//! - no committed stream position goes backwards;
//! - every request answered 2xx is still known, and every reply answered 201 is the recorded one;
//!   at the end each request has exactly one reply or expiry in its reply topic.
//!
//! It prints one summary line: `kills=25 published=… lost=0 …`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::real_server::RealServer;

#[derive(Default)]
struct Records {
    /// (partition, offset) → (id, data) of every event answered 201.
    published: BTreeMap<(u64, u64), (String, u64)>,
    /// Batches answered 201, to re-send.
    batches: Vec<Batch>,
    duplicates_confirmed: u64,
    /// Queue events (by data) acked `ok`, and those whose ack was never answered.
    acked: HashSet<u64>,
    uncertain: HashSet<u64>,
    /// Stream partition → highest offset whose commit was answered `ok`.
    committed: BTreeMap<u64, u64>,
    commits_checked: u64,
    /// Request id → whether a reply to it was answered 201 (with its data).
    requests: BTreeMap<String, Option<u64>>,
}

type Shared = Arc<Mutex<Records>>;

/// A batch's events and the (partition, offset) each was stored at.
type Batch = (Vec<Value>, Vec<(u64, u64)>);

fn kills() -> u32 {
    std::env::var("HERALD_CRASH_KILLS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(25)
}

fn publisher(url: String, publisher: u32, stop: Arc<AtomicBool>, records: Shared) {
    let client = Client::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Every fourth call re-sends a batch acknowledged earlier: all duplicates, same places.
        let resend = sequence % 4 == 3;
        let old = if resend {
            let records = records.lock().unwrap();
            records.batches.last().cloned()
        } else {
            None
        };
        let events: Vec<Value> = match &old {
            Some((events, _)) => events.clone(),
            None => (0..10)
                .map(|n| {
                    let data = u64::from(publisher) * 10_000_000 + sequence * 10 + n;
                    json!({"specversion": "1.0", "id": format!("e-{data}"), "source": "/crash-loop", "type": "t", "data": data})
                })
                .collect(),
        };
        sequence += 1;
        let Ok(response) = client
            .post(format!("{url}/v1/topics/mixed/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
        else {
            return;
        };
        if response.status().as_u16() != 201 {
            return;
        }
        let Ok(answer) = response.json::<Value>() else {
            return;
        };
        let positions: Vec<(u64, u64)> = answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|stored| {
                (
                    stored["partition"].as_u64().unwrap(),
                    stored["offset"].as_u64().unwrap(),
                )
            })
            .collect();
        let mut records = records.lock().unwrap();
        match old {
            Some((_, first)) => {
                for stored in answer["events"].as_array().unwrap() {
                    assert_eq!(
                        stored["duplicate"], true,
                        "a re-sent event was stored again"
                    );
                }
                assert_eq!(positions, first, "a duplicate answered another position");
                records.duplicates_confirmed += 10;
            }
            None => {
                for (event, position) in events.iter().zip(&positions) {
                    records.published.insert(
                        *position,
                        (
                            event["id"].as_str().unwrap().to_owned(),
                            event["data"].as_u64().unwrap(),
                        ),
                    );
                }
                records.batches.push((events, positions));
            }
        }
    }
}

fn queue_worker(url: String, stop: Arc<AtomicBool>, records: Shared) {
    let client = Client::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = client
            .post(format!("{url}/v1/subscriptions/work/pull"))
            .json(&json!({"max": 20, "consumer": "worker", "wait": "100ms"}))
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
        if deliveries.is_empty() {
            continue;
        }
        let batch: Vec<u64> = deliveries
            .iter()
            .map(|delivery| delivery["event"]["data"].as_u64().unwrap())
            .collect();
        {
            let mut records = records.lock().unwrap();
            for data in &batch {
                assert!(
                    !records.acked.contains(data),
                    "queue event {data} was acked and is delivered again"
                );
            }
            records.uncertain.extend(batch.iter().copied());
        }
        let receipts: Vec<&Value> = deliveries
            .iter()
            .map(|delivery| &delivery["receipt"])
            .collect();
        let Ok(response) = client
            .post(format!("{url}/v1/subscriptions/work/ack"))
            .json(&json!({"receipts": receipts}))
            .send()
        else {
            return;
        };
        let Ok(answer) = response.json::<Value>() else {
            return;
        };
        let mut records = records.lock().unwrap();
        for (data, result) in batch.iter().zip(answer["results"].as_array().unwrap()) {
            records.uncertain.remove(data);
            if result["status"] == "ok" {
                records.acked.insert(*data);
            }
        }
    }
}

fn stream_consumer(url: String, stop: Arc<AtomicBool>, records: Shared) {
    let client = Client::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = client
            .post(format!("{url}/v1/subscriptions/audit/pull"))
            .json(&json!({"consumer": "auditor", "max": 50, "wait": "100ms"}))
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
            .post(format!("{url}/v1/subscriptions/audit/ack"))
            .json(&json!({"receipts": [last["receipt"]]}))
            .send()
        else {
            return;
        };
        let Ok(answer) = response.json::<Value>() else {
            return;
        };
        if answer["results"][0]["status"] == "ok" {
            let partition = last["partition"].as_u64().unwrap();
            let offset = last["offset"].as_u64().unwrap();
            let mut records = records.lock().unwrap();
            let committed = records.committed.entry(partition).or_insert(offset);
            *committed = (*committed).max(offset);
        }
    }
}

fn requester(url: String, stop: Arc<AtomicBool>, records: Shared) {
    let client = Client::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = client
            .post(format!(
                "{url}/v1/topics/asks/requests?timeout=0s&deadline=10m"
            ))
            .header("herald-service", "clients")
            .json(&json!({"ask": 1}))
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
        records.lock().unwrap().requests.insert(id, None);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn responder(url: String, stop: Arc<AtomicBool>, records: Shared) {
    let client = Client::new();
    let mut answer_number = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = client
            .post(format!("{url}/v1/subscriptions/answers/pull"))
            .json(&json!({"max": 10, "consumer": "responder", "wait": "100ms"}))
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
            let id = delivery["event"]["correlationid"]
                .as_str()
                .unwrap()
                .to_owned();
            answer_number += 1;
            let Ok(response) = client
                .post(format!("{url}/v1/requests/{id}/reply"))
                .json(&json!({"answer": answer_number}))
                .send()
            else {
                return;
            };
            match response.status().as_u16() {
                201 => {
                    records
                        .lock()
                        .unwrap()
                        .requests
                        .insert(id, Some(answer_number));
                }
                409 => {}
                other => panic!("a reply answered {other}"),
            }
            let _ = client
                .post(format!("{url}/v1/subscriptions/answers/ack"))
                .json(&json!({"receipts": [delivery["receipt"]]}))
                .send();
        }
    }
}

/// Every event of a partition, in offset order.
fn read_partition(client: &Client, url: &str, topic: &str, partition: u64) -> Vec<Value> {
    let mut stored = Vec::new();
    let mut offset = 0;
    loop {
        let read: Value = client
            .get(format!(
                "{url}/v1/topics/{topic}/events?partition={partition}&offset={offset}&limit=1000"
            ))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let events = read["events"].as_array().unwrap();
        if events.is_empty() {
            return stored;
        }
        stored.extend(events.iter().cloned());
        offset = read["next_offset"].as_u64().unwrap();
    }
}

/// The checks after a restart; returns how many stored events were compared.
fn check(server: &RealServer, records: &mut Records, kill: u32) -> u64 {
    let client = Client::new();
    let mut compared = 0;
    let mut ids = HashSet::new();
    for partition in 0..2u64 {
        let stored = read_partition(&client, &server.url, "mixed", partition);
        for event in &stored {
            let id = event["event"]["id"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "kill {kill}: {id} is stored twice");
        }
        for ((_, offset), (id, data)) in records.published.range((partition, 0)..(partition + 1, 0))
        {
            let event = stored.get(*offset as usize).unwrap_or_else(|| {
                panic!("kill {kill}: acknowledged {partition}/{offset} ({id}) is lost")
            });
            assert_eq!(event["offset"], *offset);
            assert_eq!(event["event"]["id"], id.as_str(), "kill {kill}");
            assert_eq!(event["event"]["data"], *data, "kill {kill}");
            compared += 1;
        }
    }
    // The stream group resumes after its last commit, never at or before it.
    let mut first_delivered = BTreeMap::new();
    loop {
        let pulled: Value = client
            .post(format!("{}/v1/subscriptions/audit/pull", server.url))
            .json(&json!({"consumer": "checker", "max": 1000}))
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
    for (partition, committed) in &records.committed {
        if let Some(first) = first_delivered.get(partition) {
            assert!(
                first > committed,
                "kill {kill}: stream partition {partition} went back to {first} after commit {committed}"
            );
            records.commits_checked += 1;
        }
    }
    for (id, reply) in &records.requests {
        let answer = client
            .get(format!("{}/v1/requests/{id}", server.url))
            .send()
            .unwrap();
        assert_eq!(
            answer.status().as_u16(),
            200,
            "kill {kill}: request {id} lost"
        );
        if let Some(data) = reply {
            let status: Value = answer.json().unwrap();
            assert_eq!(status["status"], "replied", "kill {kill}: {id}");
            assert_eq!(status["reply"]["data"]["answer"], *data);
        }
    }
    compared
}

#[test]
fn mixed_load_survives_repeated_kill_9() {
    let kills = kills();
    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let records: Shared = Arc::default();
    let mut random = rand::rng();
    {
        let server = RealServer::start(&data_dir);
        let client = Client::new();
        let setup = [
            ("/v1/topics/mixed", json!({"partitions": 2})),
            (
                "/v1/subscriptions/work",
                json!({"topics": ["mixed"], "start": "earliest", "retry": {"initial": "10ms", "max": "10ms"}}),
            ),
            (
                "/v1/subscriptions/audit",
                json!({"topics": ["mixed"], "mode": "stream", "start": "earliest"}),
            ),
            (
                "/v1/subscriptions/answers",
                json!({"topics": ["asks"], "start": "earliest", "ack_timeout": "2s"}),
            ),
        ];
        for (path, body) in setup {
            let answer = client
                .put(format!("{}{path}", server.url))
                .json(&body)
                .send()
                .unwrap();
            assert_eq!(answer.status().as_u16(), 201, "{path}");
        }
        server.terminate();
    }
    let mut compared = 0;
    for kill in 0..kills {
        let server = RealServer::start(&data_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let roles: [fn(String, Arc<AtomicBool>, Shared); 4] =
            [queue_worker, stream_consumer, requester, responder];
        let mut threads: Vec<_> = roles
            .into_iter()
            .map(|role| {
                let (url, stop, records) = (server.url.clone(), stop.clone(), records.clone());
                std::thread::spawn(move || role(url, stop, records))
            })
            .collect();
        for number in 0..2 {
            let (url, stop, records) = (server.url.clone(), stop.clone(), records.clone());
            threads.push(std::thread::spawn(move || {
                publisher(url, kill * 2 + number, stop, records)
            }));
        }
        std::thread::sleep(Duration::from_millis(random.random_range(150..700)));
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for thread in threads {
            thread.join().unwrap();
        }
        let server = RealServer::start(&data_dir);
        compared += check(&server, &mut records.lock().unwrap(), kill);
        server.terminate();
    }

    // The end: drain the queue, answer what is pending, and look at the reply topic.
    let server = RealServer::start(&data_dir);
    let client = Client::new();
    let records = records.lock().unwrap();
    let mut redelivered = HashSet::new();
    loop {
        let pulled: Value = client
            .post(format!("{}/v1/subscriptions/work/pull", server.url))
            .json(&json!({"max": 1000, "consumer": "drain"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let deliveries = pulled["deliveries"].as_array().unwrap().clone();
        if deliveries.is_empty() {
            break;
        }
        let receipts: Vec<&Value> = deliveries.iter().map(|d| &d["receipt"]).collect();
        client
            .post(format!("{}/v1/subscriptions/work/ack", server.url))
            .json(&json!({"receipts": receipts}))
            .send()
            .unwrap();
        for delivery in &deliveries {
            let data = delivery["event"]["data"].as_u64().unwrap();
            assert!(
                !records.acked.contains(&data),
                "queue event {data} was acked and came back"
            );
            assert!(redelivered.insert(data), "queue event {data} drained twice");
        }
    }
    let all: HashSet<u64> = records.published.values().map(|(_, data)| *data).collect();
    let lost: Vec<&u64> = all
        .iter()
        .filter(|data| {
            !records.acked.contains(data)
                && !records.uncertain.contains(data)
                && !redelivered.contains(data)
        })
        .collect();
    assert!(
        lost.is_empty(),
        "never acked and never delivered again: {lost:?}"
    );
    let pending: Vec<String> = records
        .requests
        .iter()
        .filter(|(_, reply)| reply.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    for id in &pending {
        let answer = client
            .post(format!("{}/v1/requests/{id}/reply", server.url))
            .json(&json!({"answer": 0}))
            .send()
            .unwrap();
        assert!(
            [201, 409].contains(&answer.status().as_u16()),
            "a late reply to {id} answered {}",
            answer.status()
        );
    }
    let mut outcomes: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..100 {
        outcomes.clear();
        for event in read_partition(&client, &server.url, "_replies.clients", 0) {
            *outcomes
                .entry(event["event"]["correlationid"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        if records.requests.keys().all(|id| outcomes.contains_key(id)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in records.requests.keys() {
        assert_eq!(
            outcomes.get(id).copied(),
            Some(1),
            "request {id}: not exactly one outcome"
        );
    }
    assert!(records.commits_checked > 0, "no stream commit was checked");
    println!(
        "kills={kills} published={} stored_checked={compared} lost=0 duplicates_stored=0 duplicates_confirmed={} \
         queue_acked={} queue_ack_cut_off={} redelivered_after_ack=0 unacked_redelivered={} \
         stream_commits_checked={} commits_backwards=0 requests={} replies={} outcomes_per_request=1",
        records.published.len(),
        records.duplicates_confirmed,
        records.acked.len(),
        records.uncertain.len(),
        redelivered.len(),
        records.commits_checked,
        records.requests.len(),
        records
            .requests
            .values()
            .filter(|reply| reply.is_some())
            .count(),
    );
    server.terminate();
}
