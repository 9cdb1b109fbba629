//! The client against a scripted HTTP server: what it sends for each call, and how it reads the
//! answers. The end-to-end tests against a real Herald server live with the server.

mod fake_server;

use futures_util::StreamExt;
use herald_client::{
    Client, ClientError, PullRequest, ReadQuery, Retention, SubscriptionSettings, TopicSettings,
};
use serde_json::json;

use fake_server::{FakeServer, Reply};

const TOPIC: &str = r#"{"name":"orders","partitions":[{"partition":0,"start_offset":0,"end_offset":42,"bytes":1234}],"retention":{"max_age":"7d","max_bytes":null},"dedup_window":"2m","created":"2026-11-01T00:00:00Z"}"#;

#[tokio::test]
async fn create_topic_puts_the_settings_and_tells_created_from_existing() {
    let server = FakeServer::start(vec![Reply::json(201, TOPIC), Reply::json(200, TOPIC)]);
    let client = Client::new(&server.url).with_service("billing");
    let settings = TopicSettings {
        partitions: Some(3),
        retention: Some(Retention {
            max_age: Some("1d".into()),
            max_bytes: None,
        }),
        dedup_window: None,
    };

    let (topic, created) = client.create_topic("orders", &settings).await.unwrap();
    assert!(created);
    assert_eq!(topic.name, "orders");
    assert_eq!(topic.partitions[0].end_offset, 42);
    assert_eq!(topic.retention.max_age.as_deref(), Some("7d"));
    let (_, created) = client.create_topic("orders", &settings).await.unwrap();
    assert!(!created);

    let requests = server.requests();
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].target, "/v1/topics/orders");
    assert_eq!(requests[0].header("herald-service"), Some("billing"));
    assert_eq!(
        requests[0].json(),
        json!({"partitions": 3, "retention": {"max_age": "1d", "max_bytes": null}})
    );
}

#[tokio::test]
async fn each_publish_mode_sends_its_content_type() {
    let published = r#"{"events":[{"id":"a","partition":0,"offset":7,"duplicate":false}]}"#;
    let server = FakeServer::start(vec![Reply::json(201, published); 4]);
    let client = Client::new(&format!("{}/", server.url));

    let result = client
        .publish_json("orders", &json!({"total": 1}))
        .await
        .unwrap();
    assert_eq!(result.events[0].offset, 7);
    client
        .publish_event("orders", &json!({"specversion": "1.0", "id": "a"}))
        .await
        .unwrap();
    client
        .publish_batch("orders", &[json!({"id": "a"}), json!({"id": "b"})])
        .await
        .unwrap();
    client
        .publish_binary(
            "orders",
            &[("ce-id".to_owned(), "a".to_owned())],
            "text/plain",
            "hello",
        )
        .await
        .unwrap();

    let requests = server.requests();
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, "/v1/topics/orders/events");
        assert_eq!(request.header("herald-service"), None);
    }
    let content_types: Vec<_> = requests
        .iter()
        .map(|request| request.header("content-type").unwrap())
        .collect();
    assert_eq!(
        content_types,
        [
            "application/json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "text/plain"
        ]
    );
    assert_eq!(requests[0].json(), json!({"total": 1}));
    assert_eq!(requests[2].json(), json!([{"id": "a"}, {"id": "b"}]));
    assert_eq!(requests[3].header("ce-id"), Some("a"));
    assert_eq!(requests[3].body, b"hello");
}

#[tokio::test]
async fn read_sends_its_query() {
    let answer = r#"{"events":[{"partition":1,"offset":5,"timestamp":"2026-11-01T00:00:00Z","event":{"id":"x"}}],"next_offset":6}"#;
    let server = FakeServer::start(vec![Reply::json(200, answer)]);
    let client = Client::new(&server.url);
    let query = ReadQuery {
        partition: 1,
        offset: Some(5),
        from_time: None,
        limit: Some(10),
        wait: Some("5s".into()),
    };
    let read = client.read("orders.eu", &query).await.unwrap();
    assert_eq!(read.next_offset, 6);
    assert_eq!(read.events[0].event["id"], "x");
    let requests = server.requests();
    assert_eq!(
        requests[0].target,
        "/v1/topics/orders.eu/events?partition=1&offset=5&limit=10&wait=5s"
    );
}

#[tokio::test]
async fn an_error_answer_is_a_problem_with_its_extra_fields() {
    let problem = r#"{"type":"about:blank","title":"Range Not Satisfiable","status":416,"detail":"offset 0 is before the start 10","start_offset":10}"#;
    let server = FakeServer::start(vec![
        Reply::new(416, "application/problem+json", problem),
        Reply::new(502, "text/html", "<h1>bad gateway</h1>"),
    ]);
    let client = Client::new(&server.url);

    let error = client
        .read("orders", &ReadQuery::default())
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(416));
    assert_eq!(error.problem().unwrap().extra_u64("start_offset"), Some(10));
    assert_eq!(
        error.to_string(),
        "416 Range Not Satisfiable: offset 0 is before the start 10"
    );

    let error = client.list_topics().await.unwrap_err();
    assert_eq!(error.to_string(), "502 Bad Gateway: <h1>bad gateway</h1>");
    server.requests();
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_naming_the_url() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let error = Client::new(&url).list_topics().await.unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot reach the Herald server at {url}: ")),
        "{message}"
    );
}

#[tokio::test]
async fn an_invalid_url_is_reported() {
    assert!(Client::try_new("localhost:7070").is_err());
    let error = Client::new("nonsense").healthz().await.unwrap_err();
    assert!(error.to_string().contains("invalid server URL"), "{error}");
}

#[tokio::test]
async fn tail_yields_events_as_they_arrive_and_ends_with_the_stream() {
    let server = FakeServer::start(vec![Reply::stream(
        "text/event-stream",
        &[
            ": connected\n\n",
            "data: {\"topic\":\"orders.eu\",\"partition\":0,",
            "\"offset\":1,\"event\":{\"id\":\"a\"}}\n\n",
            "data: {\"topic\":\"orders.us\",\"partition\":2,\"offset\":9,\"event\":{\"id\":\"b\"}}\n\n",
        ],
    )]);
    let client = Client::new(&server.url);
    let stream = client
        .tail(&["orders.*".to_owned(), "payments.#".to_owned()])
        .await
        .unwrap();
    let events: Vec<_> = stream.map(Result::unwrap).collect().await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].topic, "orders.eu");
    assert_eq!(events[0].event["id"], "a");
    assert_eq!(events[1].offset, 9);

    let requests = server.requests();
    assert_eq!(
        requests[0].target,
        "/v1/tail?topics=orders.*%2Cpayments.%23"
    );
    assert_eq!(requests[0].header("accept"), Some("text/event-stream"));
}

#[tokio::test]
async fn subscription_calls_send_the_contract_bodies() {
    let subscription = r#"{"name":"worker","topics":["orders.*"],"mode":"queue","start":"latest","ack_timeout":"30s","max_deliveries":10,"dead_letter_topic":"worker.dlq","ordering":"none","push":null,"stats":{"backlog":3,"in_flight":1,"delivered":4,"acked":3,"redelivered":0,"dead_lettered":0,"consumers":[]},"created":"2026-11-01T00:00:00Z"}"#;
    let pulled = r#"{"deliveries":[{"receipt":"r1","attempt":1,"deadline":"2026-11-01T00:00:30Z","topic":"orders.eu","partition":0,"offset":3,"event":{"id":"a"}}]}"#;
    let results = r#"{"results":[{"receipt":"r1","status":"ok"}]}"#;
    let server = FakeServer::start(vec![
        Reply::json(201, subscription),
        Reply::json(200, subscription),
        Reply::json(200, pulled),
        Reply::json(200, results),
        Reply::json(200, results),
        Reply::json(200, results),
        Reply::json(200, results),
        Reply::new(204, "application/json", ""),
        Reply::new(204, "application/json", ""),
    ]);
    let client = Client::new(&server.url);
    let settings = SubscriptionSettings {
        topics: vec!["orders.*".into()],
        mode: Some("queue".into()),
        ..SubscriptionSettings::default()
    };
    let (created, was_created) = client
        .create_subscription("worker", &settings)
        .await
        .unwrap();
    assert!(was_created);
    assert_eq!(created.stats.as_ref().unwrap().backlog, 3);
    assert_eq!(created.extra["created"], "2026-11-01T00:00:00Z");
    client.describe_subscription("worker").await.unwrap();
    let request = PullRequest {
        max: Some(5),
        wait: Some("1s".into()),
        consumer: None,
    };
    let pulled = client.pull("worker", &request).await.unwrap();
    let receipts = vec![pulled.deliveries[0].receipt.clone()];
    assert_eq!(
        client.ack("worker", &receipts).await.unwrap().results[0].status,
        "ok"
    );
    client.nack("worker", &receipts, Some("10s")).await.unwrap();
    client.extend("worker", &receipts, "30s").await.unwrap();
    client
        .reject("worker", &receipts, Some("bad"))
        .await
        .unwrap();
    assert_eq!(
        client
            .seek("worker", &json!({"partition": 0, "offset": 5}))
            .await
            .unwrap(),
        serde_json::Value::Null
    );
    client.delete_subscription("worker").await.unwrap();

    let requests = server.requests();
    let calls: Vec<_> = requests
        .iter()
        .map(|request| format!("{} {}", request.method, request.target))
        .collect();
    assert_eq!(
        calls,
        [
            "PUT /v1/subscriptions/worker",
            "GET /v1/subscriptions/worker",
            "POST /v1/subscriptions/worker/pull",
            "POST /v1/subscriptions/worker/ack",
            "POST /v1/subscriptions/worker/nack",
            "POST /v1/subscriptions/worker/extend",
            "POST /v1/subscriptions/worker/reject",
            "POST /v1/subscriptions/worker/seek",
            "DELETE /v1/subscriptions/worker",
        ]
    );
    assert_eq!(
        requests[0].json(),
        json!({"topics": ["orders.*"], "mode": "queue"})
    );
    assert_eq!(requests[2].json(), json!({"max": 5, "wait": "1s"}));
    assert_eq!(requests[3].json(), json!({"receipts": ["r1"]}));
    assert_eq!(
        requests[4].json(),
        json!({"receipts": ["r1"], "delay": "10s"})
    );
    assert_eq!(requests[5].json(), json!({"receipts": ["r1"], "by": "30s"}));
    assert_eq!(
        requests[6].json(),
        json!({"receipts": ["r1"], "reason": "bad"})
    );
    assert_eq!(
        requests[7].json(),
        json!({"to": {"partition": 0, "offset": 5}})
    );
}

#[tokio::test]
async fn reject_without_a_reason_redrive_and_queue_stats() {
    let subscription = r#"{"name":"worker","topics":["orders"],"mode":"stream","stats":{"backlog":0,"in_flight":0,"delivered":0,"acked":0,"redelivered":0,"dead_lettered":0,"oldest_pending_age":"12s","consumers":[{"name":"w1","partitions":["orders/0","orders/1"],"last_seen":"2026-11-01T00:00:00Z","lag":3}],"push":null}}"#;
    let server = FakeServer::start(vec![
        Reply::json(200, r#"{"results":[{"receipt":"r1","status":"ok"}]}"#),
        Reply::json(200, r#"{"redriven":7}"#),
        Reply::json(200, subscription),
    ]);
    let client = Client::new(&server.url);
    client
        .reject("worker", &["r1".to_owned()], None)
        .await
        .unwrap();
    assert_eq!(
        client.redrive("worker", Some(50)).await.unwrap().redriven,
        7
    );
    let described = client.describe_subscription("worker").await.unwrap();
    let stats = described.stats.unwrap();
    assert_eq!(stats.oldest_pending_age.as_deref(), Some("12s"));
    assert_eq!(stats.consumers[0].name, "w1");
    assert_eq!(stats.consumers[0].partitions, ["orders/0", "orders/1"]);
    assert_eq!(
        stats.consumers[0].last_seen.as_deref(),
        Some("2026-11-01T00:00:00Z")
    );
    assert_eq!(stats.consumers[0].extra["lag"], 3);

    let requests = server.requests();
    assert_eq!(requests[0].target, "/v1/subscriptions/worker/reject");
    assert_eq!(requests[0].json(), json!({"receipts": ["r1"]}));
    assert_eq!(requests[1].target, "/v1/subscriptions/worker/redrive");
    assert_eq!(requests[1].json(), json!({"max": 50}));
}
