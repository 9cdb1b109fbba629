//! Stream subscriptions: consumer groups, commits, restarts, replay, patterns, receipts.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Answer, Server, event};

async fn pull(server: &Server, subscription: &str, consumer: &str, max: u32) -> Vec<Value> {
    let answer = server
        .post_json(
            &format!("/v1/subscriptions/{subscription}/pull"),
            json!({"max": max, "consumer": consumer}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["deliveries"].as_array().unwrap().clone()
}

async fn ack(server: &Server, subscription: &str, receipts: &[&str]) -> Answer {
    server
        .post_json(
            &format!("/v1/subscriptions/{subscription}/ack"),
            json!({"receipts": receipts}),
        )
        .await
}

fn statuses(answer: &Answer) -> Vec<String> {
    answer.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|result| result["status"].as_str().unwrap().to_owned())
        .collect()
}

fn partitions_of(deliveries: &[Value]) -> BTreeSet<u64> {
    deliveries
        .iter()
        .map(|delivery| delivery["partition"].as_u64().unwrap())
        .collect()
}

/// A topic with `partitions` partitions and `per_partition` events in each (unkeyed batches go
/// to the partitions in turn).
async fn filled_topic(server: &Server, topic: &str, partitions: u32, per_partition: u32) {
    server
        .put_json(
            &format!("/v1/topics/{topic}"),
            json!({"partitions": partitions}),
        )
        .await;
    for batch in 0..partitions {
        let events: Vec<Value> = (0..per_partition)
            .map(|n| event(&format!("{batch}-{n}"), json!(n)))
            .collect();
        server.publish_batch(topic, &events).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_split_the_partitions_and_a_third_joining_rebalances() {
    let server = Server::start().await;
    filled_topic(&server, "work", 4, 5).await;
    let created = server
        .put_json(
            "/v1/subscriptions/group",
            json!({"topics": ["work"], "mode": "stream", "start": "earliest"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["stats"]["backlog"], 20);

    let alone = pull(&server, "group", "a", 1000).await;
    assert_eq!(alone.len(), 20, "the only consumer reads every partition");
    let moved_receipt = alone
        .iter()
        .find(|delivery| delivery["partition"] == 1)
        .unwrap()["receipt"]
        .as_str()
        .unwrap()
        .to_owned();

    let b = pull(&server, "group", "b", 1000).await;
    let a = pull(&server, "group", "a", 1000).await;
    assert_eq!(
        partitions_of(&b),
        BTreeSet::from([1, 3]),
        "b takes half, from the committed position"
    );
    assert_eq!(b.len(), 10);
    assert!(a.is_empty(), "a already had its partitions' events");
    // In order within each partition.
    let offsets: Vec<u64> = b
        .iter()
        .filter(|delivery| delivery["partition"] == 1)
        .map(|delivery| delivery["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);
    // a's receipt for a partition it lost is stale and commits nothing.
    assert_eq!(
        statuses(&ack(&server, "group", &[&moved_receipt]).await),
        ["stale"]
    );

    let c = pull(&server, "group", "c", 1000).await;
    let described = server.get("/v1/subscriptions/group").await;
    let consumers = described.body["stats"]["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 3);
    let owned: Vec<usize> = consumers
        .iter()
        .map(|consumer| consumer["partitions"].as_array().unwrap().len())
        .collect();
    assert_eq!(owned, [2, 1, 1]);
    assert_eq!(partitions_of(&c), BTreeSet::from([2]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_commit_and_a_restart_delivery_resumes_right_after_the_commit() {
    let server = Server::start().await;
    filled_topic(&server, "ledger", 1, 20).await;
    server
        .put_json(
            "/v1/subscriptions/books",
            json!({"topics": ["ledger"], "mode": "stream", "start": "earliest"}),
        )
        .await;
    let first = pull(&server, "books", "w", 10).await;
    assert_eq!(first.len(), 10);
    // Successive pulls move on without a commit.
    let second = pull(&server, "books", "w", 3).await;
    assert_eq!(second[0]["offset"], 10);
    let receipt = first[6]["receipt"].as_str().unwrap();
    let answer = ack(&server, "books", &[receipt, "garbage"]).await;
    assert_eq!(statuses(&answer), ["ok", "unknown"]);
    assert_eq!(answer.body["results"][1]["receipt"], "garbage");
    // An older receipt does not move the commit back.
    assert_eq!(
        statuses(&ack(&server, "books", &[first[2]["receipt"].as_str().unwrap()]).await),
        ["ok"]
    );
    let stats = server.get("/v1/subscriptions/books").await.body["stats"].clone();
    assert_eq!(stats["backlog"], 13);
    assert_eq!(stats["acked"], 7);

    let server = server.restart().await;
    let resumed = pull(&server, "books", "w", 100).await;
    assert_eq!(
        resumed.first().unwrap()["offset"],
        7,
        "right after the committed offset 6"
    );
    assert_eq!(resumed.len(), 13);
    // Receipts from before the restart still commit (the key is kept), but only forward.
    assert_eq!(
        statuses(
            &ack(
                &server,
                "books",
                &[resumed[12]["receipt"].as_str().unwrap()]
            )
            .await
        ),
        ["ok"]
    );
    assert_eq!(
        server.get("/v1/subscriptions/books").await.body["stats"]["backlog"],
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_earliest_from_a_time_and_by_seeking() {
    let server = Server::start().await;
    server
        .publish_batch("history", &[event("1", json!(1)), event("2", json!(2))])
        .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let between = herald_http::time::format_rfc3339(herald_core::broker::now_ms());
    tokio::time::sleep(Duration::from_millis(30)).await;
    server
        .publish_batch("history", &[event("3", json!(3))])
        .await;

    server
        .put_json(
            "/v1/subscriptions/latest",
            json!({"topics": ["history"], "mode": "stream"}),
        )
        .await;
    assert!(
        pull(&server, "latest", "r", 10).await.is_empty(),
        "latest: only what comes next"
    );
    server
        .put_json(
            "/v1/subscriptions/all",
            json!({"topics": ["history"], "mode": "stream", "start": "earliest"}),
        )
        .await;
    assert_eq!(pull(&server, "all", "r", 10).await.len(), 3);
    server
        .put_json(
            "/v1/subscriptions/since",
            json!({"topics": ["history"], "mode": "stream", "start": between}),
        )
        .await;
    let since = pull(&server, "since", "r", 10).await;
    assert_eq!(since.len(), 1);
    assert_eq!(since[0]["event"]["id"], "3");

    let seek = |to: Value| server.post_json("/v1/subscriptions/all/seek", json!({"to": to}));
    assert_eq!(seek(json!("earliest")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        pull(&server, "all", "r", 10).await.len(),
        3,
        "replayed from the start"
    );
    seek(json!({"partition": 0, "offset": 1})).await;
    assert_eq!(pull(&server, "all", "r", 10).await[0]["offset"], 1);
    seek(json!(between)).await;
    assert_eq!(pull(&server, "all", "r", 10).await[0]["offset"], 2);
    seek(json!("latest")).await;
    assert!(pull(&server, "all", "r", 10).await.is_empty());
    seek(json!({"partition": 0, "offset": 99}))
        .await
        .problem(416);
    seek(json!({"partition": 5, "offset": 0}))
        .await
        .problem(409);
    seek(json!(42)).await.problem(400);
    seek(json!("tomorrow")).await.problem(400);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_picks_up_topics_created_after_it() {
    let server = Server::start().await;
    server
        .put_json(
            "/v1/subscriptions/orders-audit",
            json!({"topics": ["orders.*"], "mode": "stream"}),
        )
        .await;
    let url = format!("{}/v1/subscriptions/orders-audit/pull", server.base);
    let client = server.client.clone();
    let waiting = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"consumer": "auditor", "wait": "20s", "max": 10}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server
        .publish_batch(
            "orders.created",
            &[event("1", json!(1)), event("2", json!(2))],
        )
        .await;
    server
        .publish_batch("payments.captured", &[event("3", json!(3))])
        .await;
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long poll wakes")
        .unwrap();
    let deliveries = answer["deliveries"].as_array().unwrap();
    assert_eq!(
        deliveries.len(),
        2,
        "from the new topic's first event: {answer}"
    );
    assert_eq!(deliveries[0]["topic"], "orders.created");
    server
        .publish_batch("orders.shipped", &[event("4", json!(4))])
        .await;
    let next = pull(&server, "orders-audit", "auditor", 10).await;
    assert_eq!(next.len(), 1);
    assert_eq!(next[0]["topic"], "orders.shipped");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_requests_are_idempotent_and_malformed_ones_are_refused() {
    let server = Server::start().await;
    let body = json!({"topics": ["a"], "mode": "stream", "ack_timeout": "10s"});
    assert_eq!(
        server
            .put_json("/v1/subscriptions/s", body.clone())
            .await
            .status,
        StatusCode::CREATED
    );
    let again = server.put_json("/v1/subscriptions/s", body).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["ack_timeout"], "10s");
    assert_eq!(again.body["dead_letter_topic"], "s.dlq");
    server
        .put_json(
            "/v1/subscriptions/s",
            json!({"topics": ["b"], "mode": "stream"}),
        )
        .await
        .problem(409);
    let cases = [
        (json!({"mode": "stream"}), "topics"),
        (
            json!({"topics": [], "mode": "stream"}),
            "at least one topic",
        ),
        (json!({"topics": ["a b"], "mode": "stream"}), "invalid"),
        (json!({"topics": ["a"], "mode": "fanout"}), "not one of"),
        (
            json!({"topics": ["a"], "mode": "stream", "start": "now"}),
            "RFC 3339",
        ),
        (
            json!({"topics": ["a"], "mode": "stream", "ack_timeout": "-1s"}),
            "never negative",
        ),
        (
            json!({"topics": ["a"], "mode": "stream", "max_deliveries": 0}),
            "at least 1",
        ),
        (
            json!({"topics": ["a"], "mode": "stream", "retry": {"multiplier": 0.5}}),
            "multiplier",
        ),
        (
            json!({"topics": ["a"], "mode": "stream", "surprise": true}),
            "unknown field",
        ),
    ];
    for (body, expected) in cases {
        let answer = server.put_json("/v1/subscriptions/t", body.clone()).await;
        assert!(
            answer.problem(400).contains(expected),
            "{body}: {}",
            answer.body
        );
    }
    let push = server
        .put_json(
            "/v1/subscriptions/q",
            json!({"topics": ["a"], "mode": "stream", "push": {"url": "http://127.0.0.1:1/"}}),
        )
        .await;
    assert!(push.problem(400).contains("queue subscriptions"));
    let stream_filter = server
        .put_json(
            "/v1/subscriptions/q",
            json!({"topics": ["a"], "mode": "stream", "filter": {"exact": {"type": "x"}}}),
        )
        .await;
    assert!(stream_filter.problem(400).contains("queue subscriptions"));
    let bad_filter = server
        .put_json(
            "/v1/subscriptions/q",
            json!({"topics": ["a"], "filter": {"sql": "1"}}),
        )
        .await;
    assert!(bad_filter.problem(400).contains("invalid filter"));

    for (path, body) in [
        ("pull", json!({"max": 0})),
        ("pull", json!({"max": 1001})),
        ("pull", json!({"wait": "2m"})),
        ("pull", json!({"consumer": "a b"})),
        ("ack", json!({"receipts": "x"})),
        ("ack", json!({})),
        ("nack", json!({"receipts": [], "delay": "-1s"})),
        ("seek", json!({})),
    ] {
        server
            .post_json(&format!("/v1/subscriptions/s/{path}"), body.clone())
            .await
            .problem(400);
    }
    // Well-formed, but a stream subscription takes no nack: a conflict with its kind.
    server
        .post_json("/v1/subscriptions/s/nack", json!({"receipts": []}))
        .await
        .problem(409);
    let many: Vec<String> = (0..1001).map(|n| n.to_string()).collect();
    assert!(
        server
            .post_json("/v1/subscriptions/s/ack", json!({"receipts": many}))
            .await
            .problem(400)
            .contains("1000")
    );
    server
        .post_json("/v1/subscriptions/missing/pull", json!({}))
        .await
        .problem(404);
    server
        .post_json("/v1/subscriptions/missing/ack", json!({"receipts": []}))
        .await
        .problem(404);
    assert_eq!(
        server.delete("/v1/subscriptions/s").await.status,
        StatusCode::NO_CONTENT
    );
    server.get("/v1/subscriptions/s").await.problem(404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_of_another_subscription_are_unknown() {
    let server = Server::start().await;
    server
        .publish_batch("shared", &[event("1", json!(1))])
        .await;
    for name in ["one", "two"] {
        server
            .put_json(
                &format!("/v1/subscriptions/{name}"),
                json!({"topics": ["shared"], "mode": "stream", "start": "earliest"}),
            )
            .await;
    }
    let delivered = pull(&server, "one", "x", 1).await;
    let receipt = delivered[0]["receipt"].as_str().unwrap();
    assert_eq!(
        statuses(&ack(&server, "two", &[receipt]).await),
        ["unknown"]
    );
    assert_eq!(statuses(&ack(&server, "one", &[receipt]).await), ["ok"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_hangs_up_during_a_long_poll_expires_like_any_other() {
    let server = Server::start().await;
    filled_topic(&server, "hangup", 1, 3).await;
    server
        .put_json("/v1/subscriptions/g", json!({"topics": ["hangup"], "mode": "stream", "start": "earliest", "ack_timeout": "1s"}))
        .await;
    // Consumer a takes the partition, then long-polls and goes away mid-poll.
    assert_eq!(pull(&server, "g", "a", 100).await.len(), 3);
    let gone = server
        .client
        .post(format!("{}/v1/subscriptions/g/pull", server.base))
        .json(&json!({"consumer": "a", "wait": "2s"}))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    // Whether the server notices the hang-up at once or only when the poll's wait ends, a is
    // silent past ack_timeout after that: b gets the partition and its uncommitted events.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let got = pull(&server, "g", "b", 100).await.len();
    let described = server.get("/v1/subscriptions/g").await;
    assert_eq!(got, 3, "{}", described.body);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_without_a_consumer_name_share_one_member() {
    let server = Server::start().await;
    filled_topic(&server, "anon", 1, 5).await;
    server
        .put_json(
            "/v1/subscriptions/g",
            json!({"topics": ["anon"], "mode": "stream", "start": "earliest"}),
        )
        .await;
    let mut received = 0;
    for _ in 0..3 {
        let answer = server
            .post_json("/v1/subscriptions/g/pull", json!({"max": 2}))
            .await;
        received += answer.body["deliveries"].as_array().unwrap().len();
    }
    assert_eq!(received, 5);
    let described = server.get("/v1/subscriptions/g").await;
    assert_eq!(described.body["stats"]["consumers"][0]["name"], "anonymous");
    server.stop().await;
}
