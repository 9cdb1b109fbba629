//! Action/response over HTTP: a responder worker, a requester answered in one call, a late
//! reply picked up by another instance of the group, first-reply-wins, expiry, restarts.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Answer, Server};

/// Sends a request as the service `checkout` with plain JSON data.
async fn request(server: &Server, query: &str, data: Value, context: Option<&str>) -> Answer {
    let mut headers = vec![("herald-service", "checkout")];
    if let Some(context) = context {
        headers.push(("herald-context", context));
    }
    server
        .send(
            Method::POST,
            &format!("/v1/topics/quotes/requests?{query}"),
            Some("application/json"),
            data.to_string().into_bytes(),
            &headers,
        )
        .await
}

async fn reply(server: &Server, id: &str, data: Value) -> Answer {
    server
        .send(
            Method::POST,
            &format!("/v1/requests/{id}/reply"),
            Some("application/json"),
            data.to_string().into_bytes(),
            &[("herald-service", "pricing")],
        )
        .await
}

async fn workers(server: &Server) {
    let created = server
        .put_json(
            "/v1/subscriptions/pricing",
            json!({"topics": ["quotes"], "start": "earliest"}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}

/// Pulls one delivery from `subscription` (waiting up to 5 s) and acks it.
async fn take_one(server: &Server, subscription: &str, consumer: &str) -> Value {
    let pulled = server
        .post_json(
            &format!("/v1/subscriptions/{subscription}/pull"),
            json!({"max": 1, "consumer": consumer, "wait": "5s"}),
        )
        .await;
    assert_eq!(pulled.status, StatusCode::OK, "{}", pulled.body);
    let delivery = pulled.body["deliveries"][0].clone();
    assert!(delivery.is_object(), "nothing delivered: {}", pulled.body);
    let acked = server
        .post_json(
            &format!("/v1/subscriptions/{subscription}/ack"),
            json!({"receipts": [delivery["receipt"]]}),
        )
        .await;
    assert_eq!(acked.body["results"][0]["status"], "ok", "{}", acked.body);
    delivery["event"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_answers_and_the_requester_gets_the_reply_and_its_context_in_one_call() {
    let server = Server::start().await;
    workers(&server).await;
    let (client, base) = (server.client.clone(), server.base.clone());
    let responder = tokio::spawn(async move {
        // A responder instance: pull the request, learn where to answer from its extensions.
        let pulled: Value = client
            .post(format!("{base}/v1/subscriptions/pricing/pull"))
            .json(&json!({"max": 1, "consumer": "pricing-1", "wait": "10s"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let delivery = &pulled["deliveries"][0];
        let event = &delivery["event"];
        assert_eq!(event["replyto"], "_replies.checkout");
        let id = event["correlationid"].as_str().unwrap().to_owned();
        let total = event["data"]["items"].as_u64().unwrap() * 10;
        let answered = client
            .post(format!("{base}/v1/requests/{id}/reply"))
            .json(&json!({"total": total}))
            .send()
            .await
            .unwrap();
        assert_eq!(answered.status(), StatusCode::CREATED);
        client
            .post(format!("{base}/v1/subscriptions/pricing/ack"))
            .json(&json!({"receipts": [delivery["receipt"]]}))
            .send()
            .await
            .unwrap();
        id
    });
    let answer = request(
        &server,
        "timeout=20s",
        json!({"items": 3}),
        Some(r#"{"cart": 7, "step": "quote"}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let id = responder.await.unwrap();
    assert_eq!(answer.body["request_id"], id);
    assert_eq!(answer.body["reply"]["data"], json!({"total": 30}));
    assert_eq!(answer.body["reply"]["correlationid"], id);
    assert_eq!(answer.body["reply"]["type"], "herald.reply");
    assert_eq!(answer.body["context"], json!({"cart": 7, "step": "quote"}));

    let status = server.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status.body["status"], "replied");
    assert_eq!(status.body["reply"]["data"], json!({"total": 30}));
    assert_eq!(status.body["group"], "checkout");
    // The reply is in the reply topic, but the queue does not hand it out again: the requester
    // has it.
    let stored = server.read("_replies.checkout", 0, 0).await;
    let events = stored.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"]["correlationid"], id);
    let pulled = server
        .post_json(
            "/v1/subscriptions/_replies.checkout/pull",
            json!({"max": 10, "consumer": "checkout-1"}),
        )
        .await;
    assert_eq!(pulled.status, StatusCode::OK, "{}", pulled.body);
    assert_eq!(pulled.body["deliveries"], json!([]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_pulled_by_another_instance_of_the_group_and_only_the_first_reply_counts() {
    let server = Server::start().await;
    workers(&server).await;
    let answer = request(&server, "timeout=50ms", json!({"items": 1}), Some("[1,2]")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["status"], "pending");
    let id = answer.body["request_id"].as_str().unwrap().to_owned();
    assert_eq!(
        answer.headers["location"].to_str().unwrap(),
        format!("/v1/requests/{id}")
    );
    let status = server.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status.body["status"], "pending");
    assert_eq!(status.body["context"], json!([1, 2]));
    let metrics = server.get("/metrics").await;
    assert!(
        metrics
            .body
            .as_str()
            .unwrap()
            .contains("herald_requests_pending 1\n"),
        "{}",
        metrics.body
    );
    assert_eq!(status.body["reply"], Value::Null);

    // The requesting instance is gone; the worker answers later.
    let request_event = take_one(&server, "pricing", "pricing-1").await;
    assert_eq!(request_event["correlationid"], id);
    assert_eq!(
        reply(&server, &id, json!({"total": 10})).await.status,
        StatusCode::CREATED
    );
    let second = reply(&server, &id, json!({"total": 11})).await;
    assert!(second.problem(409).contains("already been answered"));

    // Another instance of the requesting service picks the reply up from the group's queue.
    let picked = take_one(&server, "_replies.checkout", "checkout-2").await;
    assert_eq!(picked["correlationid"], id);
    assert_eq!(picked["data"], json!({"total": 10}));
    let status = server.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status.body["status"], "replied");
    assert_eq!(status.body["reply"]["data"], json!({"total": 10}));
    assert_eq!(status.body["context"], json!([1, 2]));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_request_expires_into_exactly_one_event_and_later_replies_are_gone() {
    let server = Server::start().await;
    let answer = request(
        &server,
        "timeout=0s&deadline=300ms",
        json!({"items": 2}),
        Some(r#"{"resume": "at-step-4"}"#),
    )
    .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    let id = answer.body["request_id"].as_str().unwrap().to_owned();
    let expired = take_one(&server, "_replies.checkout", "checkout-1").await;
    assert_eq!(expired["type"], "herald.request.expired");
    assert_eq!(expired["correlationid"], id);
    assert_eq!(expired["data"]["request_id"], id);
    assert_eq!(expired["data"]["topic"], "quotes");
    assert_eq!(expired["data"]["context"], json!({"resume": "at-step-4"}));

    let late = reply(&server, &id, json!({"total": 1})).await;
    assert!(late.problem(410).contains("expired"));
    let status = server.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status.body["status"], "expired");
    let stored = server.read("_replies.checkout", 0, 0).await;
    let for_this: Vec<&Value> = stored.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["event"]["correlationid"] == id)
        .collect();
    assert_eq!(for_this.len(), 1, "{}", stored.body);

    // A request whose deadline passes while its call waits ends the call with "expired".
    let answer = request(&server, "timeout=5s&deadline=100ms", json!({}), None).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
    assert_eq!(answer.body["status"], "expired");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_answer_404_and_replies_accept_every_content_mode() {
    let server = Server::start().await;
    let unknown = reply(&server, "01JDZZZZZZZZZZZZZZZZZZZZZZ", json!({})).await;
    unknown.problem(404);
    reply(&server, "not-a-request", json!({}))
        .await
        .problem(404);
    server.get("/v1/requests/not-a-request").await.problem(404);
    server
        .get("/v1/requests/01JDZZZZZZZZZZZZZZZZZZZZZZ")
        .await
        .problem(404);

    // Structured reply.
    let first = request(&server, "timeout=0s", json!({}), None).await;
    let id = first.body["request_id"].as_str().unwrap();
    let structured = json!({"specversion": "1.0", "id": "r-1", "source": "/pricing", "type": "quote.priced", "data": {"total": 5}});
    let answered = server
        .send(
            Method::POST,
            &format!("/v1/requests/{id}/reply"),
            Some("application/cloudevents+json"),
            structured.to_string().into_bytes(),
            &[],
        )
        .await;
    assert_eq!(answered.status, StatusCode::CREATED, "{}", answered.body);
    let status = server.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status.body["reply"]["type"], "quote.priced");
    assert_eq!(status.body["reply"]["id"], "r-1");
    assert_eq!(status.body["reply"]["correlationid"], id);

    // Binary reply.
    let second = request(&server, "timeout=0s", json!({}), None).await;
    let id = second.body["request_id"].as_str().unwrap();
    let answered = server
        .send(
            Method::POST,
            &format!("/v1/requests/{id}/reply"),
            Some("text/plain"),
            b"priced".to_vec(),
            &[
                ("ce-id", "r-2"),
                ("ce-source", "/pricing"),
                ("ce-type", "quote.priced"),
            ],
        )
        .await;
    assert_eq!(answered.status, StatusCode::CREATED, "{}", answered.body);
    let status = server.get(&format!("/v1/requests/{id}")).await;
    assert_eq!(status.body["reply"]["data"], "priced");
    assert_eq!(status.body["reply"]["correlationid"], id);

    // A reply that names another request is refused and changes nothing.
    let third = request(&server, "timeout=0s", json!({}), None).await;
    let id = third.body["request_id"].as_str().unwrap();
    let wrong = json!({"specversion": "1.0", "id": "r-3", "source": "/pricing", "type": "t", "correlationid": "someone-else"});
    let refused = server
        .send(
            Method::POST,
            &format!("/v1/requests/{id}/reply"),
            Some("application/cloudevents+json"),
            wrong.to_string().into_bytes(),
            &[],
        )
        .await;
    assert!(refused.problem(400).contains("correlationid"));
    assert_eq!(
        server.get(&format!("/v1/requests/{id}")).await.body["status"],
        "pending"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_with_a_reason_and_store_nothing() {
    let server = Server::start().await;
    let send = |query: &'static str,
                content_type: &'static str,
                body: Vec<u8>,
                headers: Vec<(&'static str, String)>| {
        let server = &server;
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (*name, value.as_str()))
                .collect();
            server
                .send(
                    Method::POST,
                    &format!("/v1/topics/refused/requests?{query}"),
                    Some(content_type),
                    body,
                    &headers,
                )
                .await
        }
    };
    let service = || vec![("herald-service", "checkout".to_owned())];
    let cases: Vec<(Answer, u16, &str)> = vec![
        (send("", "application/json", b"{}".to_vec(), vec![]).await, 400, "reply group"),
        (send("", "application/cloudevents-batch+json", b"[]".to_vec(), service()).await, 400, "one event"),
        (
            send("", "application/cloudevents+json", json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "correlationid": "x"}).to_string().into_bytes(), service()).await,
            400,
            "correlationid",
        ),
        (
            send("", "application/json", b"{}".to_vec(), vec![("herald-service", "checkout".into()), ("herald-context", "{not json".into())]).await,
            400,
            "herald-context is not valid JSON",
        ),
        (
            send("", "application/json", b"{}".to_vec(), vec![("herald-service", "checkout".into()), ("herald-context", format!("\"{}\"", "x".repeat(64 * 1024)))]).await,
            413,
            "request_context_bytes_max",
        ),
        (send("timeout=61s", "application/json", b"{}".to_vec(), service()).await, 400, "at most 60s"),
        (send("deadline=8d", "application/json", b"{}".to_vec(), service()).await, 400, "deadline"),
        (send("deadline=0s", "application/json", b"{}".to_vec(), service()).await, 400, "deadline"),
        (send("wait=1s", "application/json", b"{}".to_vec(), service()).await, 400, "query"),
        (send("", "application/json", b"{broken".to_vec(), service()).await, 400, "JSON"),
        (
            send("", "application/json", b"{}".to_vec(), vec![("herald-reply-group", "no/slash".into())]).await,
            400,
            "herald-reply-group",
        ),
    ];
    for (answer, status, needle) in cases {
        let detail = answer.problem(status);
        assert!(
            detail.contains(needle),
            "{detail:?} should mention {needle:?}"
        );
    }
    // Exactly 64 KiB of context is accepted.
    let at_limit = format!("\"{}\"", "x".repeat(64 * 1024 - 2));
    let accepted = send(
        "timeout=0s",
        "application/json",
        b"{}".to_vec(),
        vec![
            ("herald-service", "checkout".into()),
            ("herald-context", at_limit),
        ],
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    // The longest deadline and the longest timeout are accepted.
    let longest = send(
        "timeout=0s&deadline=7d",
        "application/json",
        b"{}".to_vec(),
        service(),
    )
    .await;
    assert_eq!(longest.status, StatusCode::ACCEPTED, "{}", longest.body);
    assert_eq!(longest.body["status"], "pending");
    let waited = send(
        "timeout=60s&deadline=1ms",
        "application/json",
        b"{}".to_vec(),
        service(),
    )
    .await;
    assert_eq!(waited.status, StatusCode::ACCEPTED, "{}", waited.body);
    assert_eq!(waited.body["status"], "expired");
    let internal = server
        .send(
            Method::POST,
            "/v1/topics/_internal/requests",
            Some("application/json"),
            b"{}".to_vec(),
            &[("herald-service", "checkout")],
        )
        .await;
    internal.problem(400);
    // Only the three accepted requests stored an event.
    let stored = server.read("refused", 0, 0).await;
    assert_eq!(stored.body["events"].as_array().unwrap().len(), 3);
    server.get("/v1/topics/_internal").await.problem(404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_event_waits_on_the_first_request_instead_of_making_a_second() {
    let server = Server::start().await;
    let event = json!({"specversion": "1.0", "id": "quote-42", "source": "/checkout", "type": "quote.requested"});
    let send = || {
        server.send(
            Method::POST,
            "/v1/topics/quotes/requests?timeout=0s",
            Some("application/cloudevents+json"),
            event.to_string().into_bytes(),
            &[("herald-service", "checkout")],
        )
    };
    let first = send().await;
    let again = send().await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(first.body["request_id"], again.body["request_id"]);
    assert_eq!(
        server.read("quotes", 0, 0).await.body["events"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_requests_survive_a_restart_can_be_answered_and_still_expire_once() {
    let server = Server::start().await;
    let answered_later = request(&server, "timeout=0s", json!({"n": 1}), Some("{\"k\":1}")).await;
    let expires_later = request(&server, "timeout=0s&deadline=1500ms", json!({"n": 2}), None).await;
    let answered_id = answered_later.body["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let expiring_id = expires_later.body["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let server = server.restart().await;

    assert_eq!(
        reply(&server, &answered_id, json!({"ok": true}))
            .await
            .status,
        StatusCode::CREATED
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        let event = take_one(&server, "_replies.checkout", "checkout-after-restart").await;
        seen.push((
            event["correlationid"].as_str().unwrap().to_owned(),
            event["type"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    let mut expected = vec![
        (answered_id.clone(), "herald.reply".to_owned()),
        (expiring_id.clone(), "herald.request.expired".to_owned()),
    ];
    expected.sort();
    assert_eq!(seen, expected);
    let status = server.get(&format!("/v1/requests/{answered_id}")).await;
    assert_eq!(status.body["context"], json!({"k": 1}));

    // Once more: the expiry is not repeated after another restart.
    let server = server.restart().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stored = server.read("_replies.checkout", 0, 0).await;
    assert_eq!(
        stored.body["events"].as_array().unwrap().len(),
        2,
        "{}",
        stored.body
    );
    server.stop().await;
}
