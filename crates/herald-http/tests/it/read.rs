//! Reading a topic directly: offsets, limits, long polls, times, ranges, and the live tail.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Server, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_page_through_a_partition_with_next_offset() {
    let server = Server::start().await;
    let events: Vec<_> = (0..25).map(|n| event(&n.to_string(), json!(n))).collect();
    server.publish_batch("pages", &events).await;
    let first = server
        .get("/v1/topics/pages/events?offset=0&limit=10")
        .await;
    assert_eq!(first.body["events"].as_array().unwrap().len(), 10);
    assert_eq!(first.body["next_offset"], 10);
    let rest = server
        .get("/v1/topics/pages/events?offset=10&limit=100")
        .await;
    let rest_events = rest.body["events"].as_array().unwrap();
    assert_eq!(rest_events.len(), 15);
    assert_eq!(rest_events[0]["offset"], 10);
    assert_eq!(rest_events[0]["event"]["data"], 10);
    assert!(rest_events[0]["timestamp"].as_str().unwrap().ends_with('Z'));
    let end = server.get("/v1/topics/pages/events?offset=25").await;
    assert_eq!(end.body, json!({"events": [], "next_offset": 25}));
    let past = server.get("/v1/topics/pages/events?offset=26").await;
    assert!(past.problem(416).contains("outside the retained range"));
    assert_eq!(past.body["start_offset"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_returns_as_soon_as_an_event_arrives() {
    let server = Server::start().await;
    server.put_json("/v1/topics/waiting", json!({})).await;
    let url = format!("{}/v1/topics/waiting/events?offset=0&wait=30s", server.base);
    let client = server.client.clone();
    let poll = tokio::spawn(async move {
        client
            .get(url)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished());
    server
        .publish_batch("waiting", &[event("1", json!("hello"))])
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("woken by the publish")
        .unwrap();
    assert_eq!(answer["events"][0]["event"]["data"], "hello");
    // A wait that ends with nothing answers an empty list.
    let empty = server
        .get("/v1/topics/waiting/events?offset=1&wait=100ms")
        .await;
    assert_eq!(empty.body, json!({"events": [], "next_offset": 1}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_time_starts_at_the_first_event_stored_at_or_after_it() {
    let server = Server::start().await;
    server
        .publish_batch("timed", &[event("old", json!(1))])
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let between = herald_http::time::format_rfc3339(herald_core::broker::now_ms());
    tokio::time::sleep(Duration::from_millis(30)).await;
    server
        .publish_batch("timed", &[event("new", json!(2))])
        .await;
    let answer = server
        .get(&format!("/v1/topics/timed/events?from_time={between}"))
        .await;
    let events = answer.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["id"], "new");
    assert_eq!(events[0]["offset"], 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_read_parameters_are_400_and_unknown_topics_404() {
    let server = Server::start().await;
    server
        .put_json("/v1/topics/r", json!({"partitions": 2}))
        .await;
    let cases = [
        ("limit=0", "between 1 and 1000"),
        ("limit=1001", "between 1 and 1000"),
        ("wait=61s", "at most 60s"),
        ("wait=-1s", "never negative"),
        ("offset=-1", "bad query"),
        ("offset=abc", "bad query"),
        ("offset=1&from_time=2026-01-01T00:00:00Z", "not both"),
        ("from_time=yesterday", "RFC 3339"),
        ("color=blue", "bad query"),
    ];
    for (query, expected) in cases {
        let answer = server.get(&format!("/v1/topics/r/events?{query}")).await;
        assert!(
            answer.problem(400).contains(expected),
            "{query}: {}",
            answer.body
        );
    }
    // A well-formed read of a partition the topic does not have.
    let answer = server.get("/v1/topics/r/events?partition=2").await;
    assert!(
        answer.problem(404).contains("partition 2 does not exist"),
        "{}",
        answer.body
    );
    server.get("/v1/topics/missing/events").await.problem(404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_streams_new_events_of_matching_topics() {
    let server = Server::start().await;
    server
        .publish_batch("orders.created", &[event("before", json!(0))])
        .await;
    let response = server
        .client
        .get(format!(
            "{}/v1/tail?topics=orders.*,payments.%23",
            server.base
        ))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.bytes_stream();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server
        .publish_batch("orders.created", &[event("o-1", json!(1))])
        .await;
    server
        .publish_batch("shipping", &[event("s-1", json!(2))])
        .await;
    server
        .publish_batch("payments.card.captured", &[event("p-1", json!(3))])
        .await;
    let mut text = String::new();
    let messages = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let chunk = body.next().await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
            let messages: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|line| {
                    line.strip_prefix("data: ")
                        .or_else(|| line.strip_prefix("data:"))
                })
                .map(|data| serde_json::from_str(data).unwrap())
                .collect();
            if messages.len() >= 2 {
                return messages;
            }
        }
    })
    .await
    .expect("two tail messages");
    assert_eq!(messages[0]["topic"], "orders.created");
    assert_eq!(messages[0]["event"]["id"], "o-1");
    assert_eq!(messages[0]["offset"], 1, "from now on, not history");
    assert_eq!(messages[1]["topic"], "payments.card.captured");
    server.get("/v1/tail?topics=bad*pattern").await.problem(400);
    server.get("/v1/tail?topics=").await.problem(400);
    drop(body);
    server.stop().await;
}
