//! Topics: create (idempotent), grow, list, describe, delete, and every malformed request.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_is_created_once_confirmed_after_and_conflicts_with_other_settings() {
    let server = Server::start().await;
    let created = server
        .put_json(
            "/v1/topics/orders",
            json!({"partitions": 3, "dedup_window": "5m"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["name"], "orders");
    assert_eq!(created.body["partitions"].as_array().unwrap().len(), 3);
    assert_eq!(
        created.body["retention"],
        json!({"max_age": "7d", "max_bytes": null})
    );
    assert_eq!(created.body["dedup_window"], "5m");
    let again = server
        .put_json(
            "/v1/topics/orders",
            json!({"partitions": 3, "dedup_window": "5m"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    let other = server
        .put_json(
            "/v1/topics/orders",
            json!({"partitions": 3, "dedup_window": "1m"}),
        )
        .await;
    assert!(other.problem(409).contains("other settings"));
    let fewer = server
        .put_json(
            "/v1/topics/orders",
            json!({"partitions": 2, "dedup_window": "5m"}),
        )
        .await;
    fewer.problem(409);
    let grown = server
        .put_json(
            "/v1/topics/orders",
            json!({"partitions": 4, "dedup_window": "5m"}),
        )
        .await;
    assert_eq!(grown.status, StatusCode::OK);
    assert_eq!(grown.body["partitions"].as_array().unwrap().len(), 4);
    // Defaults, with an empty body, and no retention at all.
    let plain = server
        .send(Method::PUT, "/v1/topics/plain", None, Vec::new(), &[])
        .await;
    assert_eq!(plain.status, StatusCode::CREATED);
    assert_eq!(plain.body["partitions"].as_array().unwrap().len(), 1);
    assert_eq!(plain.body["dedup_window"], "2m");
    let forever = server
        .put_json(
            "/v1/topics/forever",
            json!({"retention": {"max_age": null, "max_bytes": 1000000}}),
        )
        .await;
    assert_eq!(
        forever.body["retention"],
        json!({"max_age": null, "max_bytes": 1000000})
    );

    let list = server.get("/v1/topics").await;
    let names: Vec<&str> = list.body["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|topic| topic["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["forever", "orders", "plain"]);
    let described = server.get("/v1/topics/orders").await;
    assert_eq!(
        described.body["partitions"][3],
        json!({"partition": 3, "start_offset": 0, "end_offset": 0, "bytes": 24})
    );

    assert_eq!(
        server.delete("/v1/topics/plain").await.status,
        StatusCode::NO_CONTENT
    );
    server.delete("/v1/topics/plain").await.problem(404);
    server.get("/v1/topics/plain").await.problem(404);
    // Settings survive a restart.
    let server = server.restart().await;
    let again = server
        .put_json(
            "/v1/topics/orders",
            json!({"partitions": 4, "dedup_window": "5m"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_topic_requests_get_a_clear_4xx_and_change_nothing() {
    let server = Server::start().await;
    // "." and ".." cannot be sent through a URL (clients resolve them away); herald-core tests them.
    let long = "a".repeat(250);
    for (name, expected) in [
        ("a%20b", "only letters"),
        (long.as_str(), "longer than 249"),
        ("_internal", "belong to Herald"),
    ] {
        let answer = server
            .put_json(&format!("/v1/topics/{name}"), json!({}))
            .await;
        assert!(
            answer.problem(400).contains(expected),
            "{name}: {}",
            answer.body
        );
    }
    let cases = [
        (json!({"partitions": 0}), "between 1 and 1024"),
        (json!({"partitions": 5000}), "between 1 and 1024"),
        (json!({"partitions": -1}), "does not fit"),
        (json!({"partitions": "two"}), "does not fit"),
        (json!({"dedup_window": "-5s"}), "never negative"),
        (json!({"dedup_window": "soon"}), "invalid duration"),
        (
            json!({"retention": {"max_age": "7 days"}}),
            "invalid duration",
        ),
        (json!({"retention": {"max_bytes": 0}}), "at least 1"),
        (json!({"partitons": 2}), "unknown field"),
        (json!([1, 2]), "must be a JSON object"),
        (json!([2]), "must be a JSON object"),
    ];
    for (body, expected) in cases {
        let answer = server.put_json("/v1/topics/orders", body.clone()).await;
        assert!(
            answer.problem(400).contains(expected),
            "{body} → {}",
            answer.body
        );
    }
    let broken = server
        .send(
            Method::PUT,
            "/v1/topics/orders",
            Some("application/json"),
            b"{\"partitions\": ".to_vec(),
            &[],
        )
        .await;
    assert!(broken.problem(400).contains("not valid JSON"));
    let wrong_type = server
        .send(
            Method::PUT,
            "/v1/topics/orders",
            Some("text/plain"),
            b"{}".to_vec(),
            &[],
        )
        .await;
    wrong_type.problem(415);
    let not_utf8 = server
        .send(
            Method::PUT,
            "/v1/topics/orders",
            Some("application/json"),
            vec![b'{', 0xff, b'}'],
            &[],
        )
        .await;
    not_utf8.problem(400);
    assert_eq!(
        server.get("/v1/topics").await.body["topics"],
        json!([]),
        "nothing was created"
    );
    server.stop().await;
}
