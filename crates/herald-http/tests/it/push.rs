//! Webhook (push) subscriptions end to end: a real server delivering to receivers in this
//! process that verify every signature with the Standard Webhooks algorithm (written here
//! independently of Herald's own signing code).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::harness::{Server, event, keyed_event};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
    }

    fn webhook_id(&self) -> &str {
        self.header("webhook-id")
    }

    /// The CloudEvent's id (structured mode).
    fn event_id(&self) -> String {
        let event: Value = serde_json::from_slice(&self.body).expect("a structured event");
        event["id"].as_str().unwrap().to_owned()
    }
}

/// What the receiver answers.
#[derive(Debug, Clone)]
struct Reply {
    status: u16,
    retry_after: Option<&'static str>,
    delay: Duration,
}

impl Reply {
    fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

type Behaviour = Arc<dyn Fn(&Received, &[Received]) -> Reply + Send + Sync>;

/// A webhook endpoint in this process: records every request and answers as `behaviour` says
/// (given the request and those before it).
struct Receiver {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    concurrent_max: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(
        behaviour: impl Fn(&Received, &[Received]) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::start_on(listener, Arc::new(behaviour))
    }

    fn start_on(listener: tokio::net::TcpListener, behaviour: Behaviour) -> Receiver {
        let address: SocketAddr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let concurrent = Arc::new(AtomicUsize::new(0));
        let concurrent_max = Arc::new(AtomicUsize::new(0));
        let app = {
            let received = received.clone();
            let concurrent_max = concurrent_max.clone();
            axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
                let received = received.clone();
                let behaviour = behaviour.clone();
                let concurrent = concurrent.clone();
                let concurrent_max = concurrent_max.clone();
                async move {
                    let now = concurrent.fetch_add(1, Ordering::SeqCst) + 1;
                    concurrent_max.fetch_max(now, Ordering::SeqCst);
                    let request = Received {
                        at: Instant::now(),
                        headers,
                        body,
                    };
                    let reply = {
                        let mut log = received.lock().unwrap();
                        let reply = behaviour(&request, &log);
                        log.push(request);
                        reply
                    };
                    tokio::time::sleep(reply.delay).await;
                    concurrent.fetch_sub(1, Ordering::SeqCst);
                    let mut response: Response =
                        (AxumStatus::from_u16(reply.status).unwrap(), "answer").into_response();
                    if let Some(retry_after) = reply.retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", retry_after.parse().unwrap());
                    }
                    response
                }
            })
        };
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url: format!("http://{address}/hooks"),
            received,
            concurrent_max,
            task,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the requests received (at most 30 s).
    async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let started = Instant::now();
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "waited 30 s for {what}; received {} requests",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Verifies a request's `webhook-signature` as the Standard Webhooks specification says:
/// HMAC-SHA256 with the base64-decoded part of the secret after `whsec_`, over
/// `{webhook-id}.{webhook-timestamp}.{body}`; one of the space-separated `v1,` signatures must
/// match, and the timestamp must be within five minutes of now.
fn verify(secret: &str, request: &Received) -> Result<(), String> {
    let key = BASE64
        .decode(secret.strip_prefix("whsec_").ok_or("no whsec_ prefix")?)
        .map_err(|error| error.to_string())?;
    let id = request.header("webhook-id");
    let timestamp = request.header("webhook-timestamp");
    if id.is_empty() || timestamp.is_empty() {
        return Err("webhook-id or webhook-timestamp is missing".into());
    }
    let sent: u64 = timestamp.parse().map_err(|_| "timestamp is not a number")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(sent) > 300 {
        return Err(format!("timestamp {sent} is not within 5 minutes of {now}"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = BASE64.encode(mac.finalize().into_bytes());
    let signatures = request.header("webhook-signature");
    if signatures
        .split(' ')
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .any(|signature| signature == expected)
    {
        Ok(())
    } else {
        Err(format!("no signature in {signatures:?} matches"))
    }
}

async fn create(server: &Server, name: &str, settings: Value) -> Value {
    let answer = server
        .put_json(&format!("/v1/subscriptions/{name}"), settings)
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    answer.body
}

async fn patch(server: &Server, name: &str, body: Value) -> crate::harness::Answer {
    server
        .send(
            Method::PATCH,
            &format!("/v1/subscriptions/{name}"),
            Some("application/json"),
            body.to_string().into_bytes(),
            &[],
        )
        .await
}

async fn publish(server: &Server, topic: &str, events: &[Value]) {
    let answer = server.publish_batch(topic, events).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
}

async fn attempts(server: &Server, name: &str) -> Vec<Value> {
    let answer = server
        .get(&format!("/v1/subscriptions/{name}/attempts?limit=1000"))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["attempts"].as_array().unwrap().clone()
}

/// Waits until the subscription's stats satisfy `done` (at most 30 s); returns them.
async fn wait_for_stats(
    server: &Server,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let started = Instant::now();
    loop {
        let answer = server.get(&format!("/v1/subscriptions/{name}")).await;
        if done(&answer.body["stats"]) {
            return answer.body["stats"].clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited 30 s for {what}; stats {}",
            answer.body["stats"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_webhook_is_signed_and_carries_the_event_in_either_content_mode() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, _| Reply::status(204)).await;
    let structured = create(
        &server,
        "hook",
        json!({"topics": ["orders"], "push": {"url": receiver.url}}),
    )
    .await;
    let secret = structured["push"]["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(structured["push"]["content_mode"], "structured");
    assert_eq!(structured["stats"]["push"]["state"], "healthy");
    let binary_receiver = Receiver::start(|_, _| Reply::status(200)).await;
    let binary_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let binary = create(
        &server,
        "binary-hook",
        json!({"topics": ["orders"], "push": {"url": binary_receiver.url, "secret": binary_secret, "content_mode": "binary"}}),
    )
    .await;
    assert_eq!(
        binary["push"]["secret"], binary_secret,
        "shown once, as given"
    );

    let events: Vec<Value> = (0..20)
        .map(|n| event(&format!("order-{n}"), json!({"total": n})))
        .collect();
    publish(&server, "orders", &events).await;

    let received = receiver
        .wait_for("20 structured webhooks", |received| received.len() >= 20)
        .await;
    let mut ids = Vec::new();
    for request in &received {
        verify(&secret, request).unwrap();
        assert!(
            verify(binary_secret, request).is_err(),
            "signed with its own secret only"
        );
        assert!(
            request
                .header("content-type")
                .starts_with("application/cloudevents+json")
        );
        let event: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(event["type"], "test.event");
        ids.push(event["id"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..20).map(|n| format!("order-{n}")).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(sorted, expected_sorted, "each event once");
    let webhook_ids: std::collections::BTreeSet<&str> =
        received.iter().map(Received::webhook_id).collect();
    assert_eq!(webhook_ids.len(), 20, "a webhook-id per event");

    let received = binary_receiver
        .wait_for("20 binary webhooks", |received| received.len() >= 20)
        .await;
    for request in &received {
        verify(binary_secret, request).unwrap();
        assert_eq!(request.header("ce-type"), "test.event");
        assert_eq!(request.header("ce-source"), "%2Ftests".replace("%2F", "/"));
        let id = request.header("ce-id");
        let n: u64 = id.strip_prefix("order-").unwrap().parse().unwrap();
        assert_eq!(request.body, Bytes::from(json!({"total": n}).to_string()));
        assert_eq!(request.header("content-type"), "application/json");
    }
    // Acknowledged: nothing left, and the attempts say so.
    let stats = wait_for_stats(&server, "hook", "20 acks", |stats| stats["acked"] == 20).await;
    assert_eq!(stats["backlog"], 0);
    assert_eq!(stats["push"]["attempts_delivered"], 20);
    let recorded = attempts(&server, "hook").await;
    assert_eq!(recorded.len(), 20);
    assert!(
        recorded
            .iter()
            .all(|attempt| attempt["outcome"] == "delivered"
                && attempt["status"] == 204
                && attempt["attempt"] == 1)
    );
    let metrics = server.get("/metrics").await.body;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics
            .contains("herald_push_attempts_total{subscription=\"hook\",result=\"delivered\"} 20"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_push_state{subscription=\"hook\",state=\"healthy\"} 1"));
    // Later reads never show the secret.
    let read = server.get("/v1/subscriptions/hook").await;
    assert_eq!(read.body["push"]["secret"], Value::Null);
    let listed = server.get("/v1/subscriptions").await;
    assert!(
        listed.body["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|subscription| subscription["push"]["secret"].is_null())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_attempt_is_retried_with_the_same_webhook_id_and_recorded() {
    let server = Server::start().await;
    // 500 to the first attempt of each event, 200 to the next.
    let receiver = Receiver::start(|request, before| {
        let seen = before
            .iter()
            .any(|earlier| earlier.webhook_id() == request.webhook_id());
        Reply::status(if seen { 200 } else { 500 })
    })
    .await;
    let created = create(
        &server,
        "hook",
        json!({"topics": ["orders"], "retry": {"initial": "50ms", "max": "100ms"}, "push": {"url": receiver.url}}),
    )
    .await;
    let secret = created["push"]["secret"].as_str().unwrap().to_owned();
    publish(
        &server,
        "orders",
        &[event("a", json!(1)), event("b", json!(2))],
    )
    .await;
    let received = receiver
        .wait_for("two attempts of each event", |received| received.len() >= 4)
        .await;
    let mut by_id: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for request in &received {
        verify(&secret, request).unwrap();
        by_id.entry(request.event_id()).or_default().push(request);
    }
    for (id, requests) in &by_id {
        assert_eq!(requests.len(), 2, "{id}: one failure, one success");
        assert_eq!(
            requests[0].webhook_id(),
            requests[1].webhook_id(),
            "stable across retries"
        );
        assert_eq!(requests[0].header("herald-attempt"), "1");
        assert_eq!(requests[1].header("herald-attempt"), "2");
    }
    wait_for_stats(&server, "hook", "both acked", |stats| stats["acked"] == 2).await;
    let recorded = attempts(&server, "hook").await;
    assert_eq!(recorded.len(), 4);
    let failed: Vec<&Value> = recorded
        .iter()
        .filter(|attempt| attempt["outcome"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2);
    for attempt in failed {
        assert_eq!(attempt["status"], 500);
        assert!(attempt["error"].as_str().unwrap().contains("500"));
        assert!(attempt["latency_ms"].as_f64().unwrap() >= 0.0);
    }
    // Newest first: the last recorded attempts are the successes.
    assert_eq!(recorded[0]["outcome"], "delivered");
    let metrics = server.get("/metrics").await.body;
    let metrics = metrics.as_str().unwrap();
    for line in [
        "herald_push_attempts_total{subscription=\"hook\",result=\"failed\"} 2",
        "herald_push_consecutive_failures{subscription=\"hook\"} 0",
        "herald_push_in_flight{subscription=\"hook\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_after_the_timeout_is_a_failed_attempt() {
    let server = Server::start().await;
    let receiver = Receiver::start(|request, before| {
        let seen = before
            .iter()
            .any(|earlier| earlier.webhook_id() == request.webhook_id());
        Reply {
            status: 200,
            retry_after: None,
            delay: if seen {
                Duration::ZERO
            } else {
                Duration::from_secs(2)
            },
        }
    })
    .await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "retry": {"initial": "50ms", "max": "100ms"}, "push": {"url": receiver.url, "timeout": "200ms"}}),
    )
    .await;
    publish(&server, "orders", &[event("slow", json!(1))]).await;
    receiver
        .wait_for("the retry after the timeout", |received| {
            received.len() >= 2
        })
        .await;
    wait_for_stats(&server, "hook", "the ack", |stats| stats["acked"] == 1).await;
    let recorded = attempts(&server, "hook").await;
    let first = recorded.last().unwrap();
    assert_eq!(first["outcome"], "failed");
    assert_eq!(first["status"], Value::Null);
    assert!(
        first["error"].as_str().unwrap().contains("timeout"),
        "{first}"
    );
    assert_eq!(recorded[0]["outcome"], "delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, before| {
        if before.is_empty() {
            Reply {
                status: 503,
                retry_after: Some("2"),
                delay: Duration::ZERO,
            }
        } else {
            Reply::status(200)
        }
    })
    .await;
    // Without Retry-After the retry would come after 20 ms.
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "retry": {"initial": "20ms", "max": "20ms"}, "push": {"url": receiver.url}}),
    )
    .await;
    publish(&server, "orders", &[event("later", json!(1))]).await;
    let received = receiver
        .wait_for("the retry", |received| received.len() >= 2)
        .await;
    let gap = received[1].at - received[0].at;
    assert!(gap >= Duration::from_millis(1900), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_max_deliveries_failed_attempts_the_event_is_dead_lettered() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, _| Reply::status(500)).await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "max_deliveries": 3, "retry": {"initial": "10ms", "max": "10ms"}, "push": {"url": receiver.url}}),
    )
    .await;
    publish(&server, "orders", &[event("doomed", json!(1))]).await;
    wait_for_stats(&server, "hook", "the dead letter", |stats| {
        stats["dead_lettered"] == 1
    })
    .await;
    // Exactly max_deliveries attempts, and no more later.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 3);
    let dead = server.read("hook.dlq", 0, 0).await;
    let dead = &dead.body["events"][0]["event"];
    assert_eq!(dead["id"], "doomed");
    assert_eq!(
        dead["deadletterreason"],
        "max_deliveries (3) reached; last: the endpoint answered 500: answer"
    );
    assert_eq!(dead["deadlettersubscription"], "hook");
    let recorded = attempts(&server, "hook").await;
    assert_eq!(recorded[0]["outcome"], "dead_lettered");
    assert_eq!(recorded[0]["attempt"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscription_across_a_restart_until_it_is_patched() {
    let server = Server::start().await;
    let gone = Arc::new(AtomicBool::new(true));
    let receiver = {
        let gone = gone.clone();
        Receiver::start(move |_, _| {
            Reply::status(if gone.load(Ordering::SeqCst) {
                410
            } else {
                200
            })
        })
        .await
    };
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "retry": {"initial": "10ms", "max": "10ms"}, "push": {"url": receiver.url, "max_in_flight": 1}}),
    )
    .await;
    publish(&server, "orders", &[event("first", json!(1))]).await;
    let stats = wait_for_stats(&server, "hook", "disabled", |stats| {
        stats["push"]["state"] == "disabled"
    })
    .await;
    assert!(
        stats["push"]["last_error"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{stats}"
    );
    publish(&server, "orders", &[event("second", json!(2))]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing is sent while disabled"
    );

    let server = server.restart().await;
    let stats = server.get("/v1/subscriptions/hook").await.body["stats"].clone();
    assert_eq!(
        stats["push"]["state"], "disabled",
        "still disabled after a restart"
    );
    let metrics = server.get("/metrics").await.body;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("herald_push_state{subscription=\"hook\",state=\"disabled\"} 1"),
        "{metrics}"
    );
    // The record of attempts survives the restart too.
    let recorded = attempts(&server, "hook").await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0]["status"], 410);
    assert_eq!(recorded[0]["outcome"], "disabled");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);

    gone.store(false, Ordering::SeqCst);
    let enabled = patch(&server, "hook", json!({"push": {}})).await;
    assert_eq!(enabled.status, StatusCode::OK, "{}", enabled.body);
    assert_eq!(
        enabled.body["push"]["secret"],
        Value::Null,
        "no rotation, no secret"
    );
    wait_for_stats(&server, "hook", "both delivered", |stats| {
        stats["acked"] == 2
    })
    .await;
    let stats = server.get("/v1/subscriptions/hook").await.body["stats"].clone();
    assert_eq!(stats["push"]["state"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_endpoint_opens_the_circuit_and_is_probed_until_it_comes_back() {
    let server = Server::start().await;
    // A port with nothing listening on it, for now.
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "max_deliveries": 1000, "ack_timeout": "5m", "retry": {"initial": "10ms", "max": "10ms"},
               "push": {"url": format!("http://{address}/hooks")}}),
    )
    .await;
    let events: Vec<Value> = (0..10).map(|n| event(&n.to_string(), json!(n))).collect();
    publish(&server, "orders", &events).await;
    let stats = wait_for_stats(&server, "hook", "an open circuit", |stats| {
        stats["push"]["state"] == "open_circuit"
    })
    .await;
    assert!(
        stats["push"]["last_error"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{stats}"
    );
    assert!(stats["push"]["next_probe"].is_string());
    // Open: probes only, one at a time at growing intervals, not a flood of retries. (The
    // attempts under way when it opened end first.)
    wait_for_stats(&server, "hook", "the attempts under way to end", |stats| {
        stats["push"]["in_flight"] == 0
    })
    .await;
    let failed_when_opened = attempts(&server, "hook").await.len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed_later = attempts(&server, "hook").await.len();
    assert!(
        failed_later - failed_when_opened <= 3,
        "{} attempts in 3 s while open",
        failed_later - failed_when_opened
    );

    // The endpoint comes back on the same address.
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let back = Instant::now();
    let receiver = Receiver::start_on(listener, Arc::new(|_, _| Reply::status(200)));
    receiver
        .wait_for("all ten events after the endpoint is back", |received| {
            let ids: std::collections::BTreeSet<String> =
                received.iter().map(Received::event_id).collect();
            ids.len() == 10
        })
        .await;
    // The contract: probes at most 30 s apart, so a recovered endpoint is back within 30 s
    // (leases last 5 minutes here, so their expiry cannot be what brought it back).
    let recovered = receiver.received()[0].at - back;
    assert!(
        recovered <= Duration::from_secs(31),
        "back after {recovered:?}"
    );
    let stats = wait_for_stats(&server, "hook", "all acked", |stats| stats["acked"] == 10).await;
    assert_eq!(stats["push"]["state"], "healthy");
    assert_eq!(stats["dead_lettered"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_in_flight_requests_at_once() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, _| Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_millis(50),
    })
    .await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "push": {"url": receiver.url, "max_in_flight": 4}}),
    )
    .await;
    let events: Vec<Value> = (0..40).map(|n| event(&n.to_string(), json!(n))).collect();
    publish(&server, "orders", &events).await;
    wait_for_stats(&server, "hook", "all acked", |stats| stats["acked"] == 40).await;
    assert_eq!(receiver.concurrent_max.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_key_arrive_in_order_even_when_attempts_fail() {
    let server = Server::start().await;
    // Every third event fails its first attempt.
    let receiver = Receiver::start(|request, before| {
        let id: u64 = request.event_id().parse().unwrap();
        let seen = before
            .iter()
            .any(|earlier| earlier.webhook_id() == request.webhook_id());
        Reply {
            status: if id.is_multiple_of(3) && !seen {
                500
            } else {
                200
            },
            retry_after: None,
            delay: Duration::from_millis(2),
        }
    })
    .await;
    server
        .put_json("/v1/topics/accounts", json!({"partitions": 2}))
        .await;
    create(
        &server,
        "hook",
        json!({"topics": ["accounts"], "ordering": "key", "retry": {"initial": "20ms", "max": "20ms"},
               "push": {"url": receiver.url, "max_in_flight": 16}}),
    )
    .await;
    let keys = ["alice", "bob", "carol", "dave"];
    let events: Vec<Value> = (0..80)
        .map(|n| {
            let mut event = keyed_event(&n.to_string(), keys[n % keys.len()]);
            event["data"] = json!({"key": keys[n % keys.len()]});
            event
        })
        .collect();
    publish(&server, "accounts", &events).await;
    wait_for_stats(&server, "hook", "all acked", |stats| stats["acked"] == 80).await;
    let received = receiver.received();
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for request in &received {
        let event: Value = serde_json::from_slice(&request.body).unwrap();
        let key = event["partitionkey"].as_str().unwrap().to_owned();
        per_key
            .entry(key)
            .or_default()
            .push(event["id"].as_str().unwrap().parse().unwrap());
    }
    for (key, ids) in per_key {
        // Requests of one key never go back to an earlier event: a failed one is retried
        // before the next is sent.
        assert!(
            ids.windows(2).all(|pair| pair[0] <= pair[1]),
            "{key}: {ids:?}"
        );
        let mut distinct = ids.clone();
        distinct.dedup();
        assert_eq!(distinct.len(), 20, "{key}");
    }
    assert!(received.len() > 80, "some attempts failed and were retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_destinations_are_refused_unless_allowed() {
    let server =
        Server::start_with(|config| config.push_allow_private_networks = Some(false)).await;
    let receiver = Receiver::start(|_, _| Reply::status(200)).await;
    for url in [
        receiver.url.clone(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://10.0.0.8/hooks".to_owned(),
        "http://[::1]:8080/hooks".to_owned(),
        // Other spellings of private addresses.
        "http://2130706433/hooks".to_owned(),
        "http://0x7f.1/hooks".to_owned(),
        "http://[::ffff:7f00:1]/hooks".to_owned(),
        "http://[64:ff9b::a00:8]/hooks".to_owned(),
    ] {
        let refused = server
            .put_json(
                "/v1/subscriptions/hook",
                json!({"topics": ["orders"], "push": {"url": url}}),
            )
            .await;
        let detail = refused.problem(400);
        assert!(detail.contains("private networks"), "{url}: {detail}");
    }
    assert_eq!(
        server.get("/v1/subscriptions/hook").await.status,
        StatusCode::NOT_FOUND
    );

    // A name is checked on the address it resolves to, when connecting.
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "max_deliveries": 2, "retry": {"initial": "10ms", "max": "10ms"}, "push": {"url": by_name}}),
    )
    .await;
    publish(&server, "orders", &[event("secret-stuff", json!(1))]).await;
    wait_for_stats(&server, "hook", "the dead letter", |stats| {
        stats["dead_lettered"] == 1
    })
    .await;
    let recorded = attempts(&server, "hook").await;
    assert!(
        recorded[0]["error"].as_str().unwrap().contains("loopback"),
        "{}",
        recorded[0]
    );
    assert!(
        receiver.received().is_empty(),
        "nothing reached the loopback receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_alongside_the_old_one_during_its_grace_period() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, _| Reply::status(200)).await;
    let created = create(
        &server,
        "hook",
        json!({"topics": ["orders"], "push": {"url": receiver.url}}),
    )
    .await;
    let old = created["push"]["secret"].as_str().unwrap().to_owned();
    let rotated = patch(&server, "hook", json!({"push": {"rotate_secret": true}})).await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let new = rotated.body["push"]["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(rotated.body["push"]["previous_secret_until"].is_string());
    publish(&server, "orders", &[event("during", json!(1))]).await;
    let received = receiver
        .wait_for("one webhook", |received| received.len() == 1)
        .await;
    assert_eq!(
        received[0].header("webhook-signature").split(' ').count(),
        2
    );
    verify(&old, &received[0]).unwrap();
    verify(&new, &received[0]).unwrap();

    // A chosen secret with no grace: only the new one signs.
    let chosen = format!("whsec_{}", BASE64.encode([42u8; 32]));
    let replaced = patch(
        &server,
        "hook",
        json!({"push": {"secret": chosen, "secret_grace": "0s"}}),
    )
    .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    publish(&server, "orders", &[event("after", json!(2))]).await;
    let received = receiver
        .wait_for("two webhooks", |received| received.len() == 2)
        .await;
    assert_eq!(
        received[1].header("webhook-signature").split(' ').count(),
        1
    );
    verify(&chosen, &received[1]).unwrap();
    assert!(verify(&new, &received[1]).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_settings_are_checked_and_bad_ones_change_nothing() {
    let server = Server::start().await;
    let url = "http://127.0.0.1:9/hooks";
    let long_url = format!("http://127.0.0.1:9/{}", "a".repeat(2048 - 19));
    assert_eq!(long_url.len(), 2048);
    let short_key = format!("whsec_{}", BASE64.encode([1u8; 23]));
    let long_key = format!("whsec_{}", BASE64.encode([1u8; 65]));
    let cases = [
        (
            json!({"topics": ["a"], "mode": "stream", "push": {"url": url}}),
            "queue subscriptions",
        ),
        (
            json!({"topics": ["a"], "push": {"url": "ftp://example.com/"}}),
            "http://",
        ),
        (
            json!({"topics": ["a"], "push": {"url": "nonsense"}}),
            "not a URL",
        ),
        (
            json!({"topics": ["a"], "push": {"url": format!("{long_url}b")}}),
            "2048",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "max_in_flight": 0}}),
            "max_in_flight",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "max_in_flight": 1001}}),
            "max_in_flight",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "timeout": "27001ms"}}),
            "between 1ms and 27000ms",
        ),
        (
            json!({"topics": ["a"], "ack_timeout": "1s", "push": {"url": url}}),
            "between 1ms and 0ms",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "timeout": "0s"}}),
            "timeout",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "secret": "hunter2"}}),
            "whsec_",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "secret": short_key}}),
            "24 to 64 bytes",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "secret": long_key}}),
            "24 to 64 bytes",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "content_mode": "xml"}}),
            "content_mode",
        ),
        (
            json!({"topics": ["a"], "push": {"url": url, "retries": 3}}),
            "unknown field",
        ),
        (json!({"topics": ["a"], "push": {}}), "url"),
    ];
    for (body, expected) in cases {
        let answer = server
            .put_json("/v1/subscriptions/hook", body.clone())
            .await;
        let detail = answer.problem(400);
        assert!(detail.contains(expected), "{body}: {detail}");
    }
    assert_eq!(
        server.get("/v1/subscriptions/hook").await.status,
        StatusCode::NOT_FOUND
    );

    // At the limits.
    let edge = create(
        &server,
        "edge",
        json!({"topics": ["a"], "ack_timeout": "2s", "push": {"url": long_url, "max_in_flight": 1000, "timeout": "1s",
               "secret": format!("whsec_{}", BASE64.encode([1u8; 64]))}}),
    )
    .await;
    assert_eq!(edge["push"]["max_in_flight"], 1000);
    assert_eq!(edge["push"]["timeout"], "1s");
    // The default timeout fits a short lease.
    let short = create(
        &server,
        "short",
        json!({"topics": ["a"], "ack_timeout": "4s", "push": {"url": url, "secret": format!("whsec_{}", BASE64.encode([1u8; 24]))}}),
    )
    .await;
    assert_eq!(short["push"]["timeout"], "3s");

    // PUT again: the same settings are 200 (the secret not shown), others 409.
    let again = server
        .put_json(
            "/v1/subscriptions/short",
            json!({"topics": ["a"], "ack_timeout": "4s", "push": {"url": url}}),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["push"]["secret"], Value::Null);
    let other = server
        .put_json(
            "/v1/subscriptions/short",
            json!({"topics": ["a"], "ack_timeout": "4s", "push": {"url": "http://127.0.0.1:10/"}}),
        )
        .await;
    other.problem(409);

    // PATCH and attempts.
    server
        .put_json("/v1/subscriptions/plain", json!({"topics": ["a"]}))
        .await;
    let patches = [
        ("plain", json!({"push": {}}), 409, "not a push subscription"),
        ("missing", json!({"push": {}}), 404, "missing"),
        (
            "short",
            json!({"push": {"secret": "x", "rotate_secret": true}}),
            400,
            "not both",
        ),
        (
            "short",
            json!({"push": {"secret": "whsec_x"}}),
            400,
            "base64",
        ),
        (
            "short",
            json!({"push": {"rotate_secret": true, "secret_grace": "8d"}}),
            400,
            "7d",
        ),
        (
            "short",
            json!({"push": {"timeout": "3001ms"}}),
            400,
            "between 1ms and 3000ms",
        ),
        (
            "short",
            json!({"push": {"max_in_flight": 1001}}),
            400,
            "max_in_flight",
        ),
        (
            "short",
            json!({"push": {"url": "gopher://x"}}),
            400,
            "http://",
        ),
        (
            "short",
            json!({"ack_timeout": "1s", "push": {}}),
            400,
            "unknown field",
        ),
        (
            "short",
            json!({"push": {"surprise": 1}}),
            400,
            "unknown field",
        ),
    ];
    for (name, body, status, expected) in patches {
        let answer = patch(&server, name, body.clone()).await;
        let detail = answer.problem(status);
        assert!(detail.contains(expected), "{name} {body}: {detail}");
    }
    let unchanged = server.get("/v1/subscriptions/short").await;
    assert_eq!(unchanged.body["push"]["timeout"], "3s");
    assert_eq!(unchanged.body["push"]["previous_secret_until"], Value::Null);
    let grace_edge = patch(
        &server,
        "short",
        json!({"push": {"rotate_secret": true, "secret_grace": "7d"}}),
    )
    .await;
    assert_eq!(grace_edge.status, StatusCode::OK, "{}", grace_edge.body);

    server
        .get("/v1/subscriptions/plain/attempts")
        .await
        .problem(409);
    server
        .get("/v1/subscriptions/missing/attempts")
        .await
        .problem(404);
    for limit in ["0", "10001", "x"] {
        server
            .get(&format!("/v1/subscriptions/short/attempts?limit={limit}"))
            .await
            .problem(400);
    }
    let empty = server
        .get("/v1/subscriptions/short/attempts?limit=10000")
        .await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body["attempts"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_lets_requests_under_way_finish_and_acks_them() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, _| Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_millis(500),
    })
    .await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "push": {"url": receiver.url}}),
    )
    .await;
    let events: Vec<Value> = (0..5).map(|n| event(&n.to_string(), json!(n))).collect();
    publish(&server, "orders", &events).await;
    receiver
        .wait_for("five requests under way", |received| received.len() == 5)
        .await;
    // Stop while all five wait for their answers, then start again.
    let server = server.restart().await;
    // All five were acked before the stop: nothing is pending after the restart.
    let stats = server.get("/v1/subscriptions/hook").await.body["stats"].clone();
    assert_eq!(stats["backlog"], 0, "{stats}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 5, "nothing is sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_from_the_old_url_does_not_disable_the_url_a_patch_just_set() {
    let server = Server::start().await;
    let old = Receiver::start(|_, _| Reply {
        status: 410,
        retry_after: None,
        delay: Duration::from_millis(300),
    })
    .await;
    let new = Receiver::start(|_, _| Reply::status(200)).await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "retry": {"initial": "10ms", "max": "10ms"}, "push": {"url": old.url}}),
    )
    .await;
    publish(&server, "orders", &[event("moved", json!(1))]).await;
    old.wait_for("the request to the old URL", |received| received.len() == 1)
        .await;
    let moved = patch(&server, "hook", json!({"push": {"url": new.url}})).await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.body);
    new.wait_for("the event at the new URL", |received| received.len() == 1)
        .await;
    let stats = wait_for_stats(&server, "hook", "the ack", |stats| stats["acked"] == 1).await;
    assert_eq!(stats["push"]["state"], "healthy", "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_herald_cannot_send_is_dead_lettered_at_once_without_blaming_the_endpoint() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, _| Reply::status(200)).await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "push": {"url": receiver.url, "content_mode": "binary"}}),
    )
    .await;
    // A content type no HTTP header can carry.
    let mut unsendable = event("unsendable", json!("x"));
    unsendable["datacontenttype"] = json!("text/plain\u{1}");
    // (The event itself is valid: attributes are strings.)
    publish(&server, "orders", &[unsendable]).await;
    publish(&server, "orders", &[event("fine", json!(1))]).await;
    let stats = wait_for_stats(&server, "hook", "one dead letter and one ack", |stats| {
        stats["dead_lettered"] == 1 && stats["acked"] == 1
    })
    .await;
    assert_eq!(stats["push"]["state"], "healthy", "{stats}");
    let dead = server.read("hook.dlq", 0, 0).await;
    let reason = dead.body["events"][0]["event"]["deadletterreason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        reason.contains("could not make the webhook request"),
        "{reason}"
    );
    let recorded = attempts(&server, "hook").await;
    let failed = recorded
        .iter()
        .find(|attempt| attempt["outcome"] == "dead_lettered")
        .unwrap();
    assert_eq!(failed["attempt"], 1);
    assert_eq!(
        receiver.received().len(),
        1,
        "only the sendable event arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_leased_ahead_whose_lease_runs_short_is_given_back_untried() {
    let server = Server::start().await;
    // A lease is 10 s and an attempt needs 8 s + 1 s of margin: 1 s of room, so deliveries
    // are leased ahead. Each request takes 7 s, so the delivery waiting behind the first has 3 s
    // of lease left: sent then, its lease would run out mid-request and it would be sent
    // again. It must be given back and leased afresh instead.
    let receiver = Receiver::start(|_, _| Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_secs(7),
    })
    .await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "ack_timeout": "10s", "push": {"url": receiver.url, "max_in_flight": 1, "timeout": "8s"}}),
    )
    .await;
    let events: Vec<Value> = (0..2).map(|n| event(&n.to_string(), json!(n))).collect();
    publish(&server, "orders", &events).await;
    wait_for_stats(&server, "hook", "two acks", |stats| stats["acked"] == 2).await;
    let received = receiver.received();
    assert_eq!(received.len(), 2, "each event sent once");
    for request in &received {
        assert_eq!(
            request.header("herald-attempt"),
            "1",
            "a lease given back is no attempt"
        );
    }
    assert_eq!(receiver.concurrent_max.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_last_attempts_kept_are_listed_newest_first() {
    let server = Server::start_with(|config| config.push_attempts_kept = 3).await;
    let receiver = Receiver::start(|_, _| Reply::status(200)).await;
    create(
        &server,
        "hook",
        json!({"topics": ["orders"], "push": {"url": receiver.url, "max_in_flight": 1}}),
    )
    .await;
    let events: Vec<Value> = (0..5).map(|n| event(&n.to_string(), json!(n))).collect();
    publish(&server, "orders", &events).await;
    wait_for_stats(&server, "hook", "five acks", |stats| stats["acked"] == 5).await;
    let recorded = attempts(&server, "hook").await;
    let offsets: Vec<u64> = recorded
        .iter()
        .map(|attempt| attempt["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [4, 3, 2], "the three newest, newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_puts_at_once_without_a_secret_make_one_subscription_and_no_conflict() {
    let server = Arc::new(Server::start().await);
    let body = json!({"topics": ["orders"], "push": {"url": "http://127.0.0.1:9/hooks"}});
    let puts: Vec<_> = (0..8)
        .map(|_| {
            let (server, body) = (server.clone(), body.clone());
            tokio::spawn(async move { server.put_json("/v1/subscriptions/hook", body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for put in puts {
        statuses.push(put.await.unwrap().status.as_u16());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 201]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lease_with_the_longest_timeout_delivers_without_leasing_ahead() {
    let server = Server::start().await;
    let receiver = Receiver::start(|_, _| Reply {
        status: 200,
        retry_after: None,
        delay: Duration::from_millis(20),
    })
    .await;
    // ack_timeout 3 s: the default timeout is the longest allowed (2 s), which leaves no room
    // to hold leased deliveries.
    let created = create(
        &server,
        "hook",
        json!({"topics": ["orders"], "ack_timeout": "3s", "push": {"url": receiver.url, "max_in_flight": 4}}),
    )
    .await;
    assert_eq!(created["push"]["timeout"], "2s");
    let events: Vec<Value> = (0..40).map(|n| event(&n.to_string(), json!(n))).collect();
    publish(&server, "orders", &events).await;
    wait_for_stats(&server, "hook", "forty acks", |stats| stats["acked"] == 40).await;
    let received = receiver.received();
    assert_eq!(received.len(), 40, "each event sent once");
    assert!(
        received
            .iter()
            .all(|request| request.header("herald-attempt") == "1")
    );
    assert_eq!(receiver.concurrent_max.load(Ordering::SeqCst), 4);
}
