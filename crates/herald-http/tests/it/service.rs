//! Service endpoints, identity, and the errors every endpoint shares.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Server, event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_the_openapi_document_answer() {
    let server = Server::start().await;
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(server.get("/readyz").await.status, StatusCode::OK);
    server
        .publish_batch("orders", &[event("1", json!(1))])
        .await;
    let metrics = server.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.body.as_str().unwrap();
    assert!(
        text.contains("herald_topic_published_events_total{topic=\"orders\"} 1"),
        "{text}"
    );
    assert!(text.contains("herald_fsync_duration_seconds_count"));
    let document = server.get("/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    assert!(
        document.body["openapi"]
            .as_str()
            .unwrap()
            .starts_with("3.1")
    );
    for path in [
        "/v1/topics/{topic}/events",
        "/v1/subscriptions/{name}/pull",
        "/v1/tail",
        "/v1/services",
    ] {
        assert!(
            document.body["paths"][path].is_object(),
            "{path} is documented"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_answer_problems() {
    let server = Server::start().await;
    server.get("/v2/nothing").await.problem(404);
    server
        .send(Method::PATCH, "/v1/topics/x", None, Vec::new(), &[])
        .await
        .problem(405);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_recorded_from_the_herald_service_header() {
    let server = Server::start().await;
    let body = serde_json::to_vec(&json!({"n": 1})).unwrap();
    let answer = server
        .send(
            Method::POST,
            "/v1/topics/orders/events",
            Some("application/json"),
            body,
            &[("herald-service", "checkout")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    let read = server.read("orders", 0, 0).await;
    assert_eq!(
        read.body["events"][0]["event"]["source"],
        "/herald/checkout"
    );
    server
        .put_json(
            "/v1/subscriptions/audit",
            json!({"topics": ["orders"], "mode": "stream"}),
        )
        .await;
    server
        .send(
            Method::POST,
            "/v1/subscriptions/audit/pull",
            Some("application/json"),
            b"{}".to_vec(),
            &[("herald-service", "auditor")],
        )
        .await;
    let services = server.get("/v1/services").await;
    let list = services.body["services"].as_array().unwrap();
    let checkout = list
        .iter()
        .find(|service| service["name"] == "checkout")
        .unwrap();
    assert_eq!(checkout["publishes"], json!(["orders"]));
    let auditor = list
        .iter()
        .find(|service| service["name"] == "auditor")
        .unwrap();
    assert_eq!(auditor["consumes"], json!(["audit"]));
    assert!(auditor["last_seen"].as_str().unwrap().ends_with('Z'));
    let bad = server
        .send(
            Method::POST,
            "/v1/topics/orders/events",
            Some("application/json"),
            b"{}".to_vec(),
            &[("herald-service", "bad name")],
        )
        .await;
    assert!(bad.problem(400).contains("herald-service"));
    // Recorded durably: still there after a restart.
    let server = server.restart().await;
    let services = server.get("/v1/services").await;
    assert_eq!(services.body["services"].as_array().unwrap().len(), 2);
    server.stop().await;
}
