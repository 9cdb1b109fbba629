//! Queue subscriptions over HTTP: competing consumers, a crashed one, acks exactly once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Server, event};

const EVENTS: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_share_a_queue_one_crashes_and_every_event_is_acked_exactly_once() {
    let server = Server::start().await;
    server
        .put_json("/v1/topics/work", json!({"partitions": 4}))
        .await;
    let created = server
        .put_json("/v1/subscriptions/workers", json!({"topics": ["work"], "start": "earliest", "ack_timeout": "2s", "retry": {"initial": "10ms", "max": "100ms"}}))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["mode"], "queue", "queue is the default mode");
    for chunk in 0..EVENTS / 1000 {
        let events: Vec<Value> = (0..1000)
            .map(|n| event(&(chunk * 1000 + n).to_string(), json!(chunk * 1000 + n)))
            .collect();
        let answer = server.publish_batch("work", &events).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    // The crashing consumer takes a few hundred events and never acks them.
    let crashed = server
        .post_json(
            "/v1/subscriptions/workers/pull",
            json!({"max": 300, "consumer": "crasher"}),
        )
        .await;
    let taken_by_crasher = crashed.body["deliveries"].as_array().unwrap().len();
    assert_eq!(taken_by_crasher, 300);

    let acked: Arc<Mutex<HashMap<u64, u32>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut workers = Vec::new();
    for worker in 0..2 {
        let (client, base, acked) = (server.client.clone(), server.base.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let pulled: Value = client
                    .post(format!("{base}/v1/subscriptions/workers/pull"))
                    .json(
                        &json!({"max": 100, "consumer": format!("worker-{worker}"), "wait": "3s"}),
                    )
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let deliveries = pulled["deliveries"].as_array().unwrap().clone();
                if deliveries.is_empty() {
                    return;
                }
                let receipts: Vec<&Value> = deliveries
                    .iter()
                    .map(|delivery| &delivery["receipt"])
                    .collect();
                let answer: Value = client
                    .post(format!("{base}/v1/subscriptions/workers/ack"))
                    .json(&json!({"receipts": receipts}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let mut acked = acked.lock().unwrap();
                for (delivery, result) in
                    deliveries.iter().zip(answer["results"].as_array().unwrap())
                {
                    assert_eq!(result["status"], "ok", "a current lease acks");
                    let data = delivery["event"]["data"].as_u64().unwrap();
                    *acked.entry(data).or_default() += 1;
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        EVENTS,
        "every event acked, including the crashed consumer's"
    );
    assert!(acked.values().all(|count| *count == 1), "none acked twice");
    let stats = server.get("/v1/subscriptions/workers").await.body["stats"].clone();
    assert_eq!(stats["backlog"], 0);
    assert_eq!(stats["in_flight"], 0);
    assert_eq!(stats["acked"], EVENTS);
    assert_eq!(stats["redelivered"], taken_by_crasher);
    // The crashed consumer's late acks change nothing.
    let late: Vec<&Value> = crashed.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|delivery| &delivery["receipt"])
        .collect();
    let answer = server
        .post_json("/v1/subscriptions/workers/ack", json!({"receipts": late}))
        .await;
    assert!(
        answer.body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|result| result["status"] == "stale")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_reject_extend_and_redrive_over_http_and_the_sse_stream() {
    let server = Server::start().await;
    server
        .put_json(
            "/v1/subscriptions/jobs",
            json!({"topics": ["tasks"], "max_deliveries": 2, "retry": {"initial": "10ms"}}),
        )
        .await;
    server
        .publish_batch("tasks", &[event("a", json!(1)), event("b", json!(2))])
        .await;
    let pulled = server
        .post_json("/v1/subscriptions/jobs/pull", json!({"max": 2}))
        .await;
    let receipts: Vec<String> = pulled.body["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["receipt"].as_str().unwrap().to_owned())
        .collect();
    let extended = server
        .post_json(
            "/v1/subscriptions/jobs/extend",
            json!({"receipts": [receipts[0]], "by": "30s"}),
        )
        .await;
    assert_eq!(extended.body["results"][0]["status"], "ok");
    let rejected = server
        .post_json(
            "/v1/subscriptions/jobs/reject",
            json!({"receipts": [receipts[1]], "reason": "malformed"}),
        )
        .await;
    assert_eq!(rejected.body["results"][0]["status"], "ok");
    let nacked = server
        .post_json(
            "/v1/subscriptions/jobs/nack",
            json!({"receipts": [receipts[0]], "delay": "0s"}),
        )
        .await;
    assert_eq!(nacked.body["results"][0]["status"], "ok");
    server
        .post_json(
            "/v1/subscriptions/jobs/nack",
            json!({"receipts": [receipts[0]], "delay": "-1s"}),
        )
        .await
        .problem(400);
    server
        .post_json(
            "/v1/subscriptions/jobs/extend",
            json!({"receipts": [receipts[0]]}),
        )
        .await
        .problem(400);
    // The SSE stream delivers the retried event as soon as it is due.
    let response = server
        .client
        .get(format!(
            "{}/v1/subscriptions/jobs/events?max_in_flight=5",
            server.base
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let delivery: Value = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            text.push_str(&String::from_utf8_lossy(
                &body.next().await.unwrap().unwrap(),
            ));
            if let Some(data) = text.lines().find_map(|line| line.strip_prefix("data:")) {
                return serde_json::from_str(data.trim()).unwrap();
            }
        }
    })
    .await
    .expect("a pushed delivery");
    assert_eq!(delivery["event"]["id"], "a");
    assert_eq!(delivery["attempt"], 2);
    assert!(
        text.contains(&format!("id: {}", delivery["receipt"].as_str().unwrap()))
            || text.contains(&format!("id:{}", delivery["receipt"].as_str().unwrap()))
    );
    drop(body);
    // Its second failure dead-letters it (max_deliveries 2).
    server
        .post_json(
            "/v1/subscriptions/jobs/nack",
            json!({"receipts": [delivery["receipt"]]}),
        )
        .await;
    let stats = server.get("/v1/subscriptions/jobs").await.body["stats"].clone();
    assert_eq!(stats["dead_lettered"], 2);
    let dead = server.read("jobs.dlq", 0, 0).await;
    assert_eq!(dead.body["events"].as_array().unwrap().len(), 2);
    let redriven = server
        .post_json("/v1/subscriptions/jobs/redrive", json!({"max": 10}))
        .await;
    assert_eq!(redriven.body, json!({"redriven": 2}));
    let again = server
        .post_json(
            "/v1/subscriptions/jobs/pull",
            json!({"max": 10, "wait": "5s"}),
        )
        .await;
    assert_eq!(again.body["deliveries"].as_array().unwrap().len(), 2);
    server.stop().await;
}
