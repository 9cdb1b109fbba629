//! Clients that hang up mid-call. Every mutating endpoint is driven over raw sockets that close
//! 0–10 ms after the request was sent (hundreds of times per endpoint, eight connections at
//! once), against a real `herald serve`. Then a well-behaved client checks what a user can see
//! against the contract: each publish stored at most once and a retry agreeing with it; each
//! request made whole (its retry joins it) and ended with exactly one outcome and one event in
//! `_replies.{group}`; no queue event stuck (every unacked one back within `ack_timeout` plus a
//! margin, every rejected one dead-lettered once, no acked one back); the stream group handing
//! out again what it lost; no gauge leaking; topics, subscriptions and webhook settings the same
//! after a restart as before; no 5xx; and the server idle once no work is left.
//!
//! `HERALD_DISCONNECT_SEED` fixes the random hang-up points (the seed is printed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::real_server::RealServer;

/// Connections open at once while hanging up.
const CONNECTIONS: usize = 8;
/// The queue's lease: every unacked event must come back within it plus a margin.
const ACK_TIMEOUT: Duration = Duration::from_secs(4);

/// One raw HTTP/1.1 request, and what it is for (to check it afterwards).
struct Call {
    tag: String,
    bytes: Vec<u8>,
    hang_up_after: Duration,
}

fn http_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("{method} {path} HTTP/1.1\r\nhost: herald\r\n").into_bytes();
    for (name, value) in headers {
        bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    bytes.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn json_call(method: &str, path: &str, body: &Value) -> Vec<u8> {
    http_request(
        method,
        path,
        &[("content-type", "application/json")],
        &serde_json::to_vec(body).unwrap(),
    )
}

/// An answer that came before the client hung up: its status and body.
type Answer = (u16, String);

/// The status and body of a whole answer in `bytes`, if it is all there.
fn complete_answer(bytes: &[u8]) -> Option<Answer> {
    let end = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (bytes.len() >= end + 4 + length).then(|| {
        (
            status,
            String::from_utf8_lossy(&bytes[end + 4..]).into_owned(),
        )
    })
}

/// Sends `call` on a new connection, reads the answer until its time is up, then closes the
/// connection: the answer if all of it came in time, `None` when the client hung up.
fn send_and_hang_up(address: &str, call: &Call) -> Option<Answer> {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    if stream.write_all(&call.bytes).is_err() {
        return None;
    }
    let deadline = Instant::now() + call.hang_up_after;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return complete_answer(&answer),
            Ok(read) => {
                answer.extend_from_slice(&buffer[..read]);
                if let Some(complete) = complete_answer(&answer) {
                    return Some(complete);
                }
            }
        }
    }
}

/// Sends every call (eight connections at once, in random order) and hangs up on each at its
/// point; returns each tag's answer (`None`: hung up first). No answer may be a 5xx.
fn hang_up_on(address: &str, calls: Vec<Call>) -> HashMap<String, Option<Answer>> {
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(HashMap::new());
    std::thread::scope(|scope| {
        for _ in 0..CONNECTIONS {
            scope.spawn(|| {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(call) = calls.get(index) else {
                        return;
                    };
                    let answer = send_and_hang_up(address, call);
                    if let Some((status, body)) = &answer {
                        assert!(*status < 500, "{} answered {status}: {body}", call.tag);
                    }
                    outcomes.lock().unwrap().insert(call.tag.clone(), answer);
                }
            });
        }
    });
    outcomes.into_inner().unwrap()
}

/// A well-behaved client.
struct Api {
    client: Client,
    url: String,
}

impl Api {
    fn send(&self, request: reqwest::blocking::RequestBuilder) -> (u16, Value) {
        let response = request.send().unwrap();
        let status = response.status().as_u16();
        let body = response.json().unwrap_or(Value::Null);
        assert!(status < 500, "{status}: {body}");
        (status, body)
    }

    fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(self.client.get(format!("{}{path}", self.url)));
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.put(format!("{}{path}", self.url)).json(body))
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.client.post(format!("{}{path}", self.url)).json(body))
    }

    fn publish(&self, topic: &str, event: &Value) -> (u16, Value) {
        self.send(
            self.client
                .post(format!("{}/v1/topics/{topic}/events", self.url))
                .header("content-type", "application/cloudevents+json")
                .body(serde_json::to_vec(event).unwrap()),
        )
    }

    /// Every event of a topic's partitions, in order.
    fn events(&self, topic: &str, partitions: u32) -> Vec<Value> {
        let mut events = Vec::new();
        for partition in 0..partitions {
            let mut offset = 0;
            loop {
                let read = self.get(&format!(
                    "/v1/topics/{topic}/events?partition={partition}&offset={offset}&limit=1000"
                ));
                let page = read["events"].as_array().unwrap();
                if page.is_empty() {
                    break;
                }
                events.extend(page.iter().map(|stored| stored["event"].clone()));
                offset = read["next_offset"].as_u64().unwrap();
            }
        }
        events
    }

    fn pull(&self, subscription: &str, consumer: &str, max: u32, wait: &str) -> Vec<Value> {
        let (status, body) = self.post(
            &format!("/v1/subscriptions/{subscription}/pull"),
            &json!({"max": max, "wait": wait, "consumer": consumer}),
        );
        assert_eq!(status, 200, "{body}");
        body["deliveries"].as_array().unwrap().clone()
    }

    fn ack(&self, subscription: &str, receipts: Vec<String>) {
        for chunk in receipts.chunks(1000) {
            let (status, body) = self.post(
                &format!("/v1/subscriptions/{subscription}/ack"),
                &json!({"receipts": chunk}),
            );
            assert_eq!(status, 200, "{body}");
        }
    }

    fn stats(&self, subscription: &str) -> Value {
        self.get(&format!("/v1/subscriptions/{subscription}"))["stats"].clone()
    }

    fn metric(&self, name: &str) -> u64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }
}

fn id_of(event: &Value) -> String {
    event["id"].as_str().unwrap_or_default().to_owned()
}

fn count_by_id(events: &[Value]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for event in events {
        *counts.entry(id_of(event)).or_insert(0) += 1;
    }
    counts
}

/// CPU seconds the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is the 14th, stime 15th.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Drains a queue subscription: pulls and acks until it stayed empty past `ack_timeout` after
/// `quiet_since` (so every lost lease has come back); returns the ids it got.
fn drain_queue(api: &Api, subscription: &str, quiet_since: Instant) -> Vec<String> {
    let mut drained = Vec::new();
    let started = Instant::now();
    loop {
        let deliveries = api.pull(subscription, "drainer", 1000, "1s");
        if deliveries.is_empty() && quiet_since.elapsed() > ACK_TIMEOUT + Duration::from_secs(2) {
            return drained;
        }
        assert!(
            started.elapsed() < ACK_TIMEOUT + Duration::from_secs(30),
            "{subscription} never drained"
        );
        drained.extend(deliveries.iter().map(|delivery| id_of(&delivery["event"])));
        api.ack(
            subscription,
            deliveries
                .iter()
                .map(|delivery| delivery["receipt"].as_str().unwrap().to_owned())
                .collect(),
        );
    }
}

#[test]
fn every_state_change_finishes_when_clients_hang_up_at_random_points() {
    let seed: u64 = std::env::var("HERALD_DISCONNECT_SEED")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("disconnect test: HERALD_DISCONNECT_SEED={seed}");
    let mut random = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hang_up = move || Duration::from_micros(random.random_range(0..=10_000));

    let directory = tempfile::tempdir().unwrap();
    let data_dir = directory.path().join("data");
    let server = RealServer::start(&data_dir);
    let address = server.url.trim_start_matches("http://").to_owned();
    let api = Api {
        client: Client::new(),
        url: server.url.clone(),
    };
    let ack_timeout = format!("{}s", ACK_TIMEOUT.as_secs());
    assert_eq!(
        api.put("/v1/topics/orders", &json!({"partitions": 2})).0,
        201
    );
    assert_eq!(api.put("/v1/topics/jobs", &json!({"partitions": 2})).0, 201);
    assert_eq!(api.put("/v1/topics/quotes", &json!({})).0, 201);
    assert_eq!(api.put("/v1/topics/hooks", &json!({})).0, 201);
    let work = json!({"topics": ["jobs"], "start": "earliest", "ack_timeout": ack_timeout,
        "max_deliveries": 50, "retry": {"initial": "100ms", "max": "500ms"},
        "dead_letter_topic": "work.dlq"});
    assert_eq!(api.put("/v1/subscriptions/work", &work).0, 201);
    let audit = json!({"topics": ["orders"], "mode": "stream", "start": "earliest", "ack_timeout": ack_timeout});
    assert_eq!(api.put("/v1/subscriptions/audit", &audit).0, 201);
    let hook = json!({"topics": ["hooks"], "push": {"url": "http://127.0.0.1:9/hook"}});
    assert_eq!(api.put("/v1/subscriptions/hook", &hook).0, 201);

    // ---- Round 1: publishes in all four modes, requests, topics and subscriptions made and
    // deleted, webhook PATCHes, stream pulls: all at once. ----
    let mut calls = Vec::new();
    for n in 0..60 {
        let structured = json!({"specversion": "1.0", "id": format!("s-{n}"), "source": "/dc",
            "type": "t", "partitionkey": format!("k{}", n % 7), "data": {"n": n}});
        calls.push(Call {
            tag: format!("s-{n}"),
            bytes: http_request(
                "POST",
                "/v1/topics/orders/events",
                &[("content-type", "application/cloudevents+json")],
                &serde_json::to_vec(&structured).unwrap(),
            ),
            hang_up_after: hang_up(),
        });
        let batch: Vec<Value> = (0..3)
            .map(|k| json!({"specversion": "1.0", "id": format!("b-{n}-{k}"), "source": "/dc", "type": "t", "data": {"n": n}}))
            .collect();
        calls.push(Call {
            tag: format!("b-{n}"),
            bytes: http_request(
                "POST",
                "/v1/topics/orders/events",
                &[("content-type", "application/cloudevents-batch+json")],
                &serde_json::to_vec(&batch).unwrap(),
            ),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("binary-{n}"),
            bytes: http_request(
                "POST",
                "/v1/topics/orders/events",
                &[
                    ("content-type", "application/json"),
                    ("ce-specversion", "1.0"),
                    ("ce-id", &format!("binary-{n}")),
                    ("ce-source", "/dc"),
                    ("ce-type", "t"),
                ],
                format!("{{\"n\": {n}}}").as_bytes(),
            ),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("plain-{n}"),
            bytes: json_call(
                "POST",
                "/v1/topics/orders/events",
                &json!({"marker": format!("plain-{n}")}),
            ),
            hang_up_after: hang_up(),
        });
    }
    for n in 0..150 {
        let event =
            json!({"specversion": "1.0", "id": format!("r-{n}"), "source": "/dc", "type": "quote"});
        calls.push(Call {
            tag: format!("r-{n}"),
            bytes: http_request(
                "POST",
                "/v1/topics/quotes/requests?timeout=0s",
                &[
                    ("content-type", "application/cloudevents+json"),
                    ("herald-reply-group", "clients"),
                ],
                &serde_json::to_vec(&event).unwrap(),
            ),
            hang_up_after: hang_up(),
        });
    }
    for n in 0..120 {
        let which = n % 12;
        calls.push(Call {
            tag: format!("topic-put-{n}"),
            bytes: json_call(
                "PUT",
                &format!("/v1/topics/churn-{which}"),
                &json!({"partitions": 1 + n % 3}),
            ),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("topic-delete-{n}"),
            bytes: http_request("DELETE", &format!("/v1/topics/churn-{which}"), &[], b""),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("subscription-put-{n}"),
            bytes: json_call(
                "PUT",
                &format!("/v1/subscriptions/churn-{which}"),
                &json!({"topics": ["orders"], "mode": if n % 2 == 0 { "queue" } else { "stream" }}),
            ),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("subscription-delete-{n}"),
            bytes: http_request(
                "DELETE",
                &format!("/v1/subscriptions/churn-{which}"),
                &[],
                b"",
            ),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("patch-{n}"),
            bytes: json_call(
                "PATCH",
                "/v1/subscriptions/hook",
                &json!({"push": {"max_in_flight": 1 + n, "timeout": format!("{}ms", 100 + n)}}),
            ),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("stream-pull-{n}"),
            bytes: json_call(
                "POST",
                "/v1/subscriptions/audit/pull",
                &json!({"max": 50, "consumer": format!("lost-{}", n % 3), "wait": "1s"}),
            ),
            hang_up_after: hang_up(),
        });
    }
    let round_one_calls = calls.len();
    let round_one = hang_up_on(&address, calls);
    let answered_one = round_one.values().filter(|status| status.is_some()).count();

    // Publishes: each event is stored at most once; a retry of the same event agrees with what
    // was stored (201, `duplicate` exactly when it was there), and then it is there once.
    let stored = count_by_id(&api.events("orders", 2));
    assert!(
        stored.values().all(|count| *count == 1),
        "an event stored twice"
    );
    let mut retried_publishes = 0;
    for n in 0..60 {
        let mut ids = vec![format!("s-{n}"), format!("binary-{n}")];
        ids.extend((0..3).map(|k| format!("b-{n}-{k}")));
        for id in ids {
            let event = json!({"specversion": "1.0", "id": id, "source": "/dc", "type": "t", "data": {"n": n}});
            let (status, answer) = api.publish("orders", &event);
            assert_eq!(status, 201, "{answer}");
            assert_eq!(
                answer["events"][0]["duplicate"].as_bool().unwrap(),
                stored.contains_key(&id),
                "{id}: the retry agrees with what was stored"
            );
            retried_publishes += 1;
        }
    }
    let orders = api.events("orders", 2);
    let stored = count_by_id(&orders);
    assert!(stored.values().all(|count| *count == 1));
    let plain: Vec<&Value> = orders
        .iter()
        .filter(|event| event["data"]["marker"].is_string())
        .collect();
    let markers: BTreeSet<&str> = plain
        .iter()
        .map(|event| event["data"]["marker"].as_str().unwrap())
        .collect();
    assert_eq!(markers.len(), plain.len(), "a plain publish stored twice");

    // Requests: the documented retry (same source and id) answers with a request whose event was
    // published, once.
    let mut request_ids = BTreeMap::new();
    for n in 0..150 {
        let event =
            json!({"specversion": "1.0", "id": format!("r-{n}"), "source": "/dc", "type": "quote"});
        let (status, answer) = api.send(
            api.client
                .post(format!("{}/v1/topics/quotes/requests?timeout=0s", api.url))
                .header("content-type", "application/cloudevents+json")
                .header("herald-reply-group", "clients")
                .body(serde_json::to_vec(&event).unwrap()),
        );
        assert_eq!(status, 202, "r-{n}: {answer}");
        request_ids.insert(
            format!("r-{n}"),
            answer["request_id"].as_str().unwrap().to_owned(),
        );
    }
    let quotes = api.events("quotes", 1);
    for (event_id, request_id) in &request_ids {
        let published: Vec<&Value> = quotes
            .iter()
            .filter(|event| id_of(event) == *event_id)
            .collect();
        assert_eq!(published.len(), 1, "{event_id}: its request event once");
        assert_eq!(
            published[0]["correlationid"],
            request_id.as_str(),
            "{event_id}: the retry joined the request whose event was published"
        );
    }

    // The stream group: what the hung-up pulls took is handed out again (their consumers are
    // gone: the partitions come to this one), nothing is lost.
    let mut audit_ids = BTreeSet::new();
    let started = Instant::now();
    while audit_ids.len() < stored.len() || api.stats("audit")["backlog"] != 0 {
        assert!(
            started.elapsed() < ACK_TIMEOUT * 3 + Duration::from_secs(10),
            "the stream group handed out {} of {} events",
            audit_ids.len(),
            stored.len()
        );
        let deliveries = api.pull("audit", "reader", 1000, "1s");
        audit_ids.extend(deliveries.iter().map(|delivery| id_of(&delivery["event"])));
        let last: Vec<String> = deliveries
            .iter()
            .map(|delivery| delivery["receipt"].as_str().unwrap().to_owned())
            .collect();
        api.ack("audit", last);
    }
    assert_eq!(api.stats("audit")["backlog"], 0);

    // ---- Round 2: the queue. Receipts of a normal pull, then acks, nacks, extends and rejects
    // hung up on, with more pulls hung up on at the same time. ----
    for n in 0..600 {
        let event = json!({"specversion": "1.0", "id": format!("w-{n}"), "source": "/dc", "type": "job", "data": {"n": n}});
        assert_eq!(api.publish("jobs", &event).0, 201);
    }
    let leased = api.pull("work", "leaser", 1000, "0s");
    assert_eq!(leased.len(), 600);
    let receipt_of: Vec<(String, String)> = leased
        .iter()
        .map(|delivery| {
            (
                id_of(&delivery["event"]),
                delivery["receipt"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut calls = Vec::new();
    for (index, (id, receipt)) in receipt_of.iter().enumerate() {
        let (action, body) = match index % 4 {
            0 => ("ack", json!({"receipts": [receipt]})),
            1 => ("nack", json!({"receipts": [receipt], "delay": "0s"})),
            2 => ("extend", json!({"receipts": [receipt], "by": "1s"})),
            _ => (
                "reject",
                json!({"receipts": [receipt], "reason": "hung up"}),
            ),
        };
        calls.push(Call {
            tag: format!("{action} {id}"),
            bytes: json_call("POST", &format!("/v1/subscriptions/work/{action}"), &body),
            hang_up_after: hang_up(),
        });
    }
    for n in 0..150 {
        calls.push(Call {
            tag: format!("queue-pull-{n}"),
            bytes: json_call(
                "POST",
                "/v1/subscriptions/work/pull",
                &json!({"max": 5, "consumer": "lost", "wait": "1s"}),
            ),
            hang_up_after: hang_up(),
        });
        calls.push(Call {
            tag: format!("seek-{n}"),
            bytes: json_call(
                "POST",
                "/v1/subscriptions/audit/seek",
                &json!({"to": if n % 2 == 0 { "earliest" } else { "latest" }}),
            ),
            hang_up_after: hang_up(),
        });
    }
    let round_two_calls = calls.len();
    let round_two = hang_up_on(&address, calls);
    let quiet_since = Instant::now();
    // Answered, and the receipt was current ("ok", not "stale").
    let answered_ok = |action: &str, id: &str| {
        round_two
            .get(&format!("{action} {id}"))
            .and_then(Option::as_ref)
            .is_some_and(|(status, body)| *status == 200 && body.contains(r#""status":"ok""#))
    };
    // The stream group sought to earliest or to latest, every partition together.
    let backlog = api.stats("audit")["backlog"].as_u64().unwrap();
    assert!(
        backlog == 0 || backlog == stored.len() as u64,
        "a seek moved the group to one target: backlog {backlog} of {}",
        stored.len()
    );
    let drained = drain_queue(&api, "work", quiet_since);
    let drained_counts: BTreeMap<&str, usize> =
        drained.iter().fold(BTreeMap::new(), |mut counts, id| {
            *counts.entry(id.as_str()).or_insert(0) += 1;
            counts
        });
    let dead = count_by_id(&api.events("work.dlq", 1));
    for (index, (id, _)) in receipt_of.iter().enumerate() {
        let drained = drained_counts.get(id.as_str()).copied().unwrap_or(0);
        let dead = dead.get(id).copied().unwrap_or(0);
        assert!(dead <= 1, "{id} dead-lettered {dead} times");
        assert!(drained <= 1, "{id} drained {drained} times");
        match index % 4 {
            0 if answered_ok("ack", id) => assert_eq!(drained, 0, "{id}: acked, yet back"),
            3 if answered_ok("reject", id) => {
                assert_eq!((dead, drained), (1, 0), "{id}: rejected")
            }
            // Hung up on (or nacked, or extended): done exactly one way.
            3 => assert_eq!(dead + drained, 1, "{id}: one outcome"),
            _ => assert!(dead == 0, "{id} dead-lettered but never rejected"),
        }
        // Acked by the hung-up call, or back to the drainer: never lost.
        if index % 4 != 0 && index % 4 != 3 {
            assert_eq!(drained, 1, "{id}: nacked or extended, so it came back");
        }
    }
    let stats = api.stats("work");
    assert_eq!(
        (stats["backlog"].as_u64(), stats["in_flight"].as_u64()),
        (Some(0), Some(0))
    );

    // ---- Round 3: replies and redrives hung up on. ----
    let mut calls = Vec::new();
    for (event_id, request_id) in &request_ids {
        let reply = json!({"specversion": "1.0", "id": format!("reply-{event_id}"), "source": "/pricing", "type": "quote.made"});
        calls.push(Call {
            tag: format!("reply {request_id}"),
            bytes: http_request(
                "POST",
                &format!("/v1/requests/{request_id}/reply"),
                &[("content-type", "application/cloudevents+json")],
                &serde_json::to_vec(&reply).unwrap(),
            ),
            hang_up_after: hang_up(),
        });
    }
    for n in 0..60 {
        calls.push(Call {
            tag: format!("redrive-{n}"),
            bytes: json_call("POST", "/v1/subscriptions/work/redrive", &json!({"max": 7})),
            hang_up_after: hang_up(),
        });
    }
    let round_three_calls = calls.len();
    let round_three = hang_up_on(&address, calls);
    let quiet_since = Instant::now();
    for (event_id, request_id) in &request_ids {
        let reply = json!({"specversion": "1.0", "id": format!("again-{event_id}"), "source": "/pricing", "type": "quote.made"});
        let (status, answer) = api.send(
            api.client
                .post(format!("{}/v1/requests/{request_id}/reply", api.url))
                .header("content-type", "application/cloudevents+json")
                .body(serde_json::to_vec(&reply).unwrap()),
        );
        let first_answered = round_three
            .get(&format!("reply {request_id}"))
            .and_then(Option::as_ref)
            .is_some_and(|(status, _)| *status == 201);
        if first_answered {
            assert_eq!(status, 409, "{request_id}: answered once already: {answer}");
        } else {
            assert!([201, 409].contains(&status), "{request_id}: {answer}");
        }
        let view = api.get(&format!("/v1/requests/{request_id}"));
        assert_eq!(view["status"], "replied", "{request_id}");
    }
    let replies = api.events("_replies.clients", 1);
    for request_id in request_ids.values() {
        let count = replies
            .iter()
            .filter(|reply| reply["correlationid"] == request_id.as_str())
            .count();
        assert_eq!(
            count, 1,
            "{request_id}: exactly one event in _replies.clients"
        );
    }
    assert_eq!(
        api.metric("herald_requests_pending"),
        0,
        "no request left pending"
    );
    // Redriven dead letters come back once each, and the queue drains again.
    let redriven = drain_queue(&api, "work", quiet_since);
    let redriven_counts = count_by_id(&api.events("_redrive.work", 1));
    assert!(
        redriven_counts.values().all(|count| *count == 1),
        "a dead letter redriven twice"
    );
    assert_eq!(redriven.len(), redriven_counts.len());
    let stats = api.stats("work");
    assert_eq!(
        (stats["backlog"].as_u64(), stats["in_flight"].as_u64()),
        (Some(0), Some(0))
    );

    // ---- With no work left, the server is idle. ----
    let pid = server.child.id();
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let busy = cpu_seconds(pid) - before;
    assert!(
        busy < 0.2,
        "the server used {busy:.2} s of CPU in 2 s with nothing to do"
    );

    // ---- What memory showed is what the store kept: the same after a restart. ----
    let shape = |api: &Api| {
        let topics: BTreeSet<String> = api.get("/v1/topics")["topics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|topic| {
                format!(
                    "{} {}",
                    topic["name"],
                    topic["partitions"].as_array().unwrap().len()
                )
            })
            .collect();
        let subscriptions: BTreeSet<String> = api.get("/v1/subscriptions")["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|subscription| {
                let mut settings = subscription.clone();
                settings.as_object_mut().unwrap().remove("stats");
                settings.to_string()
            })
            .collect();
        (topics, subscriptions)
    };
    let before_restart = shape(&api);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let server = RealServer::start(&data_dir);
    let api = Api {
        client: Client::new(),
        url: server.url.clone(),
    };
    assert_eq!(
        shape(&api),
        before_restart,
        "topics and subscriptions survive as shown"
    );
    eprintln!(
        "disconnect test: {} calls hung up on ({} answered first); {retried_publishes} publishes retried; {} requests; {} queue events settled; {} redriven; {busy:.2} s CPU in 2 s idle",
        round_one_calls + round_two_calls + round_three_calls,
        answered_one
            + round_two.values().filter(|status| status.is_some()).count()
            + round_three
                .values()
                .filter(|status| status.is_some())
                .count(),
        request_ids.len(),
        receipt_of.len(),
        redriven.len()
    );
    server.terminate();
}
