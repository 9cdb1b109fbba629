//! Hostile input: a corpus of malformed and extreme requests sent to every endpoint. Each must
//! get a 4xx with problem+json (never a 5xx), the server must keep serving, and nothing stored may
//! change. Also oversize bodies and headers, slow (slowloris) requests and thousands of idle
//! connections.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::{Server, event};

/// Bodies no endpoint may accept (with the exceptions noted where they are sent).
fn bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "{",
        "}",
        "[",
        "]",
        "null",
        "true",
        "\"text\"",
        "-1",
        "1e999999",
        "18446744073709551616",
        "{\"max\": -1}",
        "{\"max\": 1e400}",
        "{\"max\": \"ten\"}",
        "{\"receipts\": 5}",
        "{\"receipts\": [1, 2]}",
        "{\"receipts\": [\"\"]}",
        "{\"partitions\": \"two\"}",
        "{\"partitions\": 99999999999}",
        "{\"partitions\": 0}",
        "{\"topics\": \"x\"}",
        "{\"topics\": []}",
        "{\"to\": {}}",
        "{\"to\": -5}",
        "{\"delay\": \"-1s\"}",
        "{\"by\": \"forever\"}",
        "{\"ack_timeout\": \"1000000h\"}",
        "[{}]",
        "[1, 2, 3]",
        "{\"specversion\": \"1.0\"}",
        "{\"a\": 1, \"a\": 2}",
        "{\"max\": 10} trailing",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect();
    bodies.push("[".repeat(100_000).into_bytes());
    bodies.push("{\"a\":".repeat(50_000).into_bytes());
    bodies.push(b"\xff\xfe\xfd".to_vec());
    bodies.push(b"{\"a\": \"\xff\"}".to_vec());
    bodies.push(b"\x00\x00\x00".to_vec());
    bodies.push(format!("[{}]", "1,".repeat(200_000) + "1").into_bytes());
    bodies
}

const CONTENT_TYPES: [Option<&str>; 7] = [
    Some("application/json"),
    Some("application/cloudevents+json"),
    Some("application/cloudevents-batch+json"),
    Some("text/plain"),
    None,
    Some("application/json; charset=utf-16"),
    Some("multipart/form-data; boundary=x"),
];

/// Every endpoint that takes a body, aimed at things that exist.
const ENDPOINTS: [(&str, &str); 15] = [
    ("PUT", "/v1/topics/kept"),
    ("POST", "/v1/topics/kept/events"),
    ("PUT", "/v1/subscriptions/idle"),
    ("POST", "/v1/subscriptions/idle/pull"),
    ("POST", "/v1/subscriptions/idle/ack"),
    ("POST", "/v1/subscriptions/idle/nack"),
    ("POST", "/v1/subscriptions/idle/extend"),
    ("POST", "/v1/subscriptions/idle/reject"),
    ("POST", "/v1/subscriptions/idle/seek"),
    ("POST", "/v1/subscriptions/idle/redrive"),
    ("POST", "/v1/subscriptions/kept-stream/pull"),
    ("POST", "/v1/subscriptions/kept-stream/seek"),
    ("PATCH", "/v1/subscriptions/hook"),
    ("POST", "/v1/topics/kept/requests"),
    ("POST", "/v1/requests/01JDZZZZZZZZZZZZZZZZZZZZZZ/reply"),
];

/// What must not change: topics with their partitions' offsets, subscriptions with their
/// settings and backlog, pending requests.
async fn snapshot(server: &Server) -> Value {
    let topics = server.get("/v1/topics").await.body;
    let mut subscriptions = server.get("/v1/subscriptions").await.body;
    for subscription in subscriptions["subscriptions"].as_array_mut().unwrap() {
        let stats = subscription["stats"].take();
        subscription["backlog"] = stats["backlog"].clone();
    }
    let metrics = server.get("/metrics").await.body;
    let pending = metrics
        .as_str()
        .unwrap()
        .lines()
        .find(|line| line.starts_with("herald_requests_pending "))
        .unwrap()
        .to_owned();
    json!({"topics": topics, "subscriptions": subscriptions, "pending": pending})
}

#[track_caller]
fn assert_refused(answer: &crate::harness::Answer, what: &str) {
    let status = answer.status.as_u16();
    assert!(
        (400..500).contains(&status),
        "{what}: answered {status}: {}",
        answer.body
    );
    assert_eq!(
        answer
            .headers
            .get("content-type")
            .and_then(|value| value.to_str().ok()),
        Some("application/problem+json"),
        "{what}: {status} without problem+json: {}",
        answer.body
    );
    assert!(
        answer.body["detail"]
            .as_str()
            .is_some_and(|detail| !detail.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_malformed_requests_gets_4xx_problems_and_changes_nothing() {
    let server = Server::start().await;
    server.put_json("/v1/topics/kept", json!({})).await;
    server
        .publish_batch("kept", &[event("1", json!(1)), event("2", json!(2))])
        .await;
    server.put_json("/v1/topics/empty", json!({})).await;
    let idle = server
        .put_json("/v1/subscriptions/idle", json!({"topics": ["empty"]}))
        .await;
    assert_eq!(idle.status, StatusCode::CREATED);
    server
        .put_json(
            "/v1/subscriptions/kept-stream",
            json!({"topics": ["empty"], "mode": "stream"}),
        )
        .await;
    // A webhook to a port nobody listens on (the topic stays empty: nothing is sent).
    let hook = server
        .put_json(
            "/v1/subscriptions/hook",
            json!({"topics": ["empty"], "push": {"url": "http://127.0.0.1:9/hooks"}}),
        )
        .await;
    assert_eq!(hook.status, StatusCode::CREATED);
    let before = snapshot(&server).await;

    let mut tried = 0;
    for (method, path) in ENDPOINTS {
        for content_type in CONTENT_TYPES {
            for body in bodies() {
                // A valid JSON value sent as application/json to the publish endpoint is a
                // legitimate event's data (a charset parameter does not change that: JSON is
                // UTF-8); everything else here must be refused.
                let is_json = serde_json::from_slice::<Value>(&body).is_ok();
                if path == "/v1/topics/kept/events"
                    && content_type.is_some_and(|value| value.starts_with("application/json"))
                    && is_json
                {
                    continue;
                }
                let answer = server
                    .send(
                        Method::from_bytes(method.as_bytes()).unwrap(),
                        path,
                        content_type,
                        body.clone(),
                        &[],
                    )
                    .await;
                let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
                // Receipts that name nothing are answered one by one as `unknown`.
                let settles = ["ack", "nack", "extend", "reject"]
                    .iter()
                    .any(|action| path.ends_with(action));
                if settles
                    && answer.status == StatusCode::OK
                    && answer.body["results"]
                        .as_array()
                        .is_some_and(|results| results.iter().all(|r| r["status"] == "unknown"))
                {
                    tried += 1;
                    continue;
                }
                assert_refused(
                    &answer,
                    &format!("{method} {path} ({content_type:?}) with {shown:?}"),
                );
                tried += 1;
            }
        }
    }

    // Hostile names and ids in paths.
    let long = "a".repeat(300);
    let names = [
        long.as_str(),
        "..",
        ".",
        "%2e%2e",
        "%00",
        "%ff",
        "caf%C3%A9",
        "a%20b",
        "_internal",
        "%7B%7D",
    ];
    for name in names {
        for (method, path) in [
            ("PUT", format!("/v1/topics/{name}")),
            ("POST", format!("/v1/topics/{name}/events")),
            ("GET", format!("/v1/topics/{name}/events")),
            ("PUT", format!("/v1/subscriptions/{name}")),
            ("POST", format!("/v1/subscriptions/{name}/pull")),
            ("PATCH", format!("/v1/subscriptions/{name}")),
            ("GET", format!("/v1/subscriptions/{name}/attempts")),
            ("POST", format!("/v1/topics/{name}/requests")),
            ("GET", format!("/v1/requests/{name}")),
            ("POST", format!("/v1/requests/{name}/reply")),
        ] {
            let body = if path.ends_with("/events") && method == "POST" {
                serde_json::to_vec(&event("x", json!(1))).unwrap()
            } else {
                br#"{"topics": ["kept"]}"#.to_vec()
            };
            let content_type = if path.ends_with("/events") {
                "application/cloudevents+json"
            } else {
                "application/json"
            };
            let answer = server
                .send(
                    Method::from_bytes(method.as_bytes()).unwrap(),
                    &path,
                    Some(content_type),
                    body,
                    &[],
                )
                .await;
            assert_refused(&answer, &format!("{method} {path}"));
            tried += 1;
        }
    }

    // Hostile query strings.
    for query in [
        "partition=-1",
        "partition=99999999999999999999",
        "offset=abc",
        "limit=0",
        "limit=1001",
        "wait=61s",
        "wait=-1s",
        "from_time=yesterday",
        "offset=1&from_time=2026-01-01T00:00:00Z",
        "unknown=1",
        "partition=7",
    ] {
        let answer = server.get(&format!("/v1/topics/kept/events?{query}")).await;
        assert_refused(&answer, &format!("read with {query}"));
        tried += 1;
    }
    for query in ["timeout=1y", "deadline=-1s", "timeout=abc", "deadline=8d"] {
        let answer = server
            .send(
                Method::POST,
                &format!("/v1/topics/kept/requests?{query}"),
                Some("application/json"),
                b"{}".to_vec(),
                &[("herald-service", "hostile")],
            )
            .await;
        assert_refused(&answer, &format!("request with {query}"));
        tried += 1;
    }

    // Hostile headers.
    let big = "x".repeat(60 * 1024);
    for (name, value) in [
        ("herald-service", big.as_str()),
        ("herald-service", "no spaces allowed"),
        ("herald-context", big.as_str()),
        ("ce-id", ""),
        ("ce-specversion", "0.1"),
        ("ce-BAD_NAME", "x"),
        ("ce-time", "not a time"),
    ] {
        let answer = server
            .send(
                Method::POST,
                "/v1/topics/kept/requests",
                Some("application/octet-stream"),
                b"data".to_vec(),
                &[
                    (name, value),
                    ("ce-source", "/s"),
                    ("ce-type", "t"),
                    ("herald-reply-group", "hostile"),
                ],
            )
            .await;
        assert_refused(&answer, &format!("header {name}"));
        tried += 1;
    }

    // An oversize body: refused before it is stored. The server answers 413 from the
    // Content-Length and closes the connection; a client still writing the body may see the
    // close (a broken pipe) before it reads the answer. Either way nothing is stored (checked
    // at the end).
    let oversize = vec![b'x'; 17 * 1024 * 1024];
    let sent = server
        .client
        .post(format!("{}/v1/topics/kept/events", server.base))
        .header("content-type", "application/json")
        .body(oversize)
        .send()
        .await;
    match sent {
        Ok(response) => {
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
            assert_eq!(
                response
                    .headers()
                    .get("content-type")
                    .and_then(|value| value.to_str().ok()),
                Some("application/problem+json")
            );
        }
        Err(error) => assert!(
            error.is_request() && format!("{error:?}").contains("BodyWrite"),
            "a 17 MiB body: {error:?}"
        ),
    }
    tried += 1;

    // An oversize header block is refused by the HTTP layer (431), and the server goes on.
    let huge = "y".repeat(1024 * 1024);
    let refused = server
        .client
        .get(format!("{}/v1/topics", server.base))
        .header("x-huge", huge)
        .send()
        .await;
    if let Ok(response) = refused {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    tried += 1;

    assert_eq!(snapshot(&server).await, before, "something stored changed");
    eprintln!("hostile inputs tried: {tried}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_and_thousands_of_connections_do_not_stop_the_server() {
    let server = Server::start().await;
    let address = server.base.trim_start_matches("http://").to_owned();
    // Slowloris: requests whose headers and bodies never finish.
    let mut slow = Vec::new();
    for number in 0..300 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let partial = if number % 2 == 0 {
            "POST /v1/topics/slow/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"a\":"
        } else {
            "GET /v1/topics HTTP/1.1\r\nHost: x\r\nX-Slow: "
        };
        stream.write_all(partial.as_bytes()).await.unwrap();
        slow.push(stream);
    }
    // Thousands of idle connections.
    let mut idle = Vec::new();
    for _ in 0..3000 {
        match TcpStream::connect(&address).await {
            Ok(stream) => idle.push(stream),
            Err(error) => panic!("connection {} refused: {error}", idle.len()),
        }
    }
    // The server still serves, reads and writes.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let health = client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let published = client
        .post(format!("{}/v1/topics/alive/events", server.base))
        .header("content-type", "application/cloudevents+json")
        .body(serde_json::to_vec(&event("1", json!(1))).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), StatusCode::CREATED);
    // The slow publish stored nothing.
    let topic = client
        .get(format!("{}/v1/topics/slow", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(topic.status(), StatusCode::NOT_FOUND);
    drop(slow);
    drop(idle);
    let after = client
        .get(format!("{}/v1/topics/alive/events", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::OK);
    server.stop().await;
}

/// The bounds the OpenAPI document states, at their edges over HTTP: the last value allowed is
/// accepted, the first one past it refused with a 400 that says why, and nothing is created.
#[tokio::test]
async fn bounds_stated_in_the_document_hold_at_their_edges() {
    let server = Server::start().await;
    // Subscription names: 240 characters, so `_redrive.{name}` is still a name.
    let longest = "s".repeat(240);
    let answer = server
        .put_json(
            &format!("/v1/subscriptions/{longest}"),
            json!({"topics": ["t"]}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    let too_long = "s".repeat(241);
    let detail = server
        .put_json(
            &format!("/v1/subscriptions/{too_long}"),
            json!({"topics": ["t"]}),
        )
        .await
        .problem(400);
    assert!(detail.contains("240"), "{detail}");
    server
        .get(&format!("/v1/subscriptions/{too_long}"))
        .await
        .problem(404);

    // Reply groups: 231 characters, from either header.
    for (header, length, accepted) in [
        ("herald-reply-group", 231, true),
        ("herald-reply-group", 232, false),
        ("herald-service", 231, true),
        ("herald-service", 232, false),
    ] {
        let group = "g".repeat(length);
        let answer = server
            .send(
                Method::POST,
                "/v1/topics/calls/requests?timeout=0s",
                Some("application/json"),
                b"{}".to_vec(),
                &[(header, group.as_str())],
            )
            .await;
        if accepted {
            assert_eq!(
                answer.status,
                StatusCode::ACCEPTED,
                "{header} {length}: {}",
                answer.body
            );
        } else {
            let detail = answer.problem(400);
            assert!(
                detail.contains(header) && detail.contains("231"),
                "{detail}"
            );
            server
                .get(&format!("/v1/subscriptions/_replies.{group}"))
                .await
                .problem(404);
        }
    }

    // Whole numbers written as floats are integers; fractions are not.
    let answer = server
        .put_json("/v1/topics/floats", json!({"partitions": 2.0}))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(answer.body["partitions"].as_array().unwrap().len(), 2);
    server
        .put_json("/v1/topics/fractions", json!({"partitions": 2.5}))
        .await
        .problem(400);
    server.get("/v1/topics/fractions").await.problem(404);

    // Receipts: 1,000 in one call, not 1,001.
    server
        .put_json("/v1/subscriptions/work", json!({"topics": ["t"]}))
        .await;
    let receipts = |count: usize| (0..count).map(|n| format!("r{n}")).collect::<Vec<_>>();
    let answer = server
        .post_json(
            "/v1/subscriptions/work/ack",
            json!({"receipts": receipts(1000)}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["results"].as_array().unwrap().len(), 1000);
    let detail = server
        .post_json(
            "/v1/subscriptions/work/ack",
            json!({"receipts": receipts(1001)}),
        )
        .await
        .problem(400);
    assert!(detail.contains("the limit is 1000"), "{detail}");

    // A reject reason: 1,024 characters (counted as characters, not bytes).
    let reason = |count: usize| "é".repeat(count);
    let answer = server
        .post_json(
            "/v1/subscriptions/work/reject",
            json!({"receipts": [], "reason": reason(1024)}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    server
        .post_json(
            "/v1/subscriptions/work/reject",
            json!({"receipts": [], "reason": reason(1025)}),
        )
        .await
        .problem(400);

    // Times before 1970 read as the epoch: the first retained event.
    server.publish_batch("old", &[event("o-1", json!(1))]).await;
    let answer = server
        .get("/v1/topics/old/events?from_time=1969-07-20T20:17:40Z")
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["events"][0]["offset"], 0);

    // Durations and the tail's list are taken exactly as written.
    server
        .get("/v1/topics/old/events?wait=%205s")
        .await
        .problem(400);
    for topics in ["old,", ",old", "old,%20old", "old,,old"] {
        server
            .get(&format!("/v1/tail?topics={topics}"))
            .await
            .problem(400);
    }
}
