//! The README's five-minute tour, run against a real server as a newcomer would run it (the
//! curl steps are sent with an HTTP client, byte for byte the same requests).

use serde_json::{Value, json};

use crate::real_server::RealServer;

fn text(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_readme_tour_works_end_to_end() {
    let directory = tempfile::tempdir().unwrap();
    let server = RealServer::start(&directory.path().join("herald-data"));
    let client = reqwest::blocking::Client::new();

    // curl -X PUT localhost:7070/v1/topics/orders -H 'content-type: application/json' -d '{"partitions": 2}'
    let created = client
        .put(format!("{}/v1/topics/orders", server.url))
        .header("content-type", "application/json")
        .body(r#"{"partitions": 2}"#)
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    // curl -X POST localhost:7070/v1/topics/orders/events -H 'content-type: application/cloudevents+json' -d '…'
    let published: Value = client
        .post(format!("{}/v1/topics/orders/events", server.url))
        .header("content-type", "application/cloudevents+json")
        .body(r#"{"specversion":"1.0","id":"order-1","source":"/shop","type":"order.created","partitionkey":"customer-7","data":{"total":42}}"#)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        published,
        json!({"events": [{"id": "order-1", "partition": 1, "offset": 0, "duplicate": false}]})
    );

    // herald publish orders '{"total": 7}' --type order.created --source /shop --key customer-9
    let output = text(&server.cli(&[
        "publish",
        "orders",
        r#"{"total": 7}"#,
        "--type",
        "order.created",
        "--source",
        "/shop",
        "--key",
        "customer-9",
    ]));
    assert!(output.contains("DUPLICATE"), "{output}");
    // herald read orders --partition 1
    let output = text(&server.cli(&["read", "orders", "--partition", "1"]));
    assert!(
        output.contains("order-1")
            && output.contains(r#"{"total":42}"#)
            && output.contains(r#"{"total":7}"#),
        "{output}"
    );
    assert!(output.contains("next offset: 2"), "{output}");
    // curl 'localhost:7070/v1/topics/orders/events?partition=1&offset=0'
    let read: Value = client
        .get(format!(
            "{}/v1/topics/orders/events?partition=1&offset=0",
            server.url
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(read["events"][0]["event"]["data"], json!({"total": 42}));
    assert_eq!(read["next_offset"], 2);

    // herald sub create audit --topic orders --mode stream --start earliest
    let output = text(&server.cli(&[
        "sub", "create", "audit", "--topic", "orders", "--mode", "stream", "--start", "earliest",
    ]));
    assert!(output.contains("created subscription audit"), "{output}");
    // herald pull audit --consumer worker-1 --max 10 --ack
    let output = text(&server.cli(&[
        "pull",
        "audit",
        "--consumer",
        "worker-1",
        "--max",
        "10",
        "--ack",
    ]));
    assert!(output.contains("acked 2 of 2"), "{output}");
    // herald sub describe audit
    let output = text(&server.cli(&["--output", "json", "sub", "describe", "audit"]));
    let described: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(described["stats"]["backlog"], 0);
    assert_eq!(described["stats"]["acked"], 2);
    // The queue part: two workers and a dead-letter topic.
    let output = text(&server.cli(&[
        "sub",
        "create",
        "workers",
        "--topic",
        "orders",
        "--start",
        "earliest",
        "--max-deliveries",
        "3",
        "--dead-letter-topic",
        "orders.failed",
    ]));
    assert!(output.contains("created subscription workers"), "{output}");
    let output = text(&server.cli(&[
        "pull",
        "workers",
        "--consumer",
        "worker-1",
        "--max",
        "1",
        "--ack",
    ]));
    assert!(output.contains("acked 1 of 1"), "{output}");
    let output = text(&server.cli(&[
        "pull",
        "workers",
        "--consumer",
        "worker-2",
        "--max",
        "1",
        "--nack",
    ]));
    assert!(output.contains("nacked 1 of 1"), "{output}");
    let retried = loop {
        // The nacked order comes back after its backoff (0.5–1 s).
        let output = text(&server.cli(&[
            "--output",
            "json",
            "pull",
            "workers",
            "--consumer",
            "worker-2",
            "--max",
            "1",
            "--wait",
            "5s",
        ]));
        let pulled: Value = serde_json::from_str(&output).unwrap();
        if let Some(delivery) = pulled["deliveries"]
            .as_array()
            .and_then(|deliveries| deliveries.first())
        {
            break delivery.clone();
        }
    };
    assert_eq!(retried["attempt"], 2);
    let receipt = retried["receipt"].as_str().unwrap();
    let output = text(&server.cli(&["reject", "workers", receipt, "--reason", "bad address"]));
    assert!(output.contains(" ok"), "{output}");
    let output = text(&server.cli(&["--output", "json", "read", "orders.failed"]));
    let dead: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(
        dead["events"][0]["event"]["deadletterreason"],
        "rejected: bad address"
    );
    assert_eq!(dead["events"][0]["event"]["origintopic"], "orders");
    let output = text(&server.cli(&["dlq", "redrive", "workers"]));
    assert!(output.contains("redriven 1 events"), "{output}");
    let output = text(&server.cli(&["--output", "json", "sub", "describe", "workers"]));
    let described: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(
        (
            described["stats"]["acked"].clone(),
            described["stats"]["dead_lettered"].clone(),
            described["stats"]["backlog"].clone()
        ),
        (json!(1), json!(1), json!(1))
    );

    // Action/response: a worker answers a waiting request.
    let output = text(&server.cli(&[
        "sub", "create", "pricing", "--topic", "quotes", "--start", "earliest",
    ]));
    assert!(output.contains("created subscription pricing"), "{output}");
    let waiting = {
        let url = server.url.clone();
        std::thread::spawn(move || {
            crate::real_server::cli_at(
                &url,
                &[
                    "--service",
                    "checkout",
                    "request",
                    "quotes",
                    r#"{"items": 3}"#,
                    "--timeout",
                    "30s",
                    "--context",
                    r#"{"cart": 7}"#,
                ],
            )
        })
    };
    let request_id = pull_request_id(&server);
    let output = text(&server.cli(&["reply", &request_id, r#"{"total": 30}"#]));
    assert!(output.contains("replied"), "{output}");
    let output = text(&waiting.join().unwrap());
    assert!(
        output.contains("replied")
            && output.contains(r#"{"total":30}"#)
            && output.contains(r#"{"cart":7}"#),
        "{output}"
    );
    // Bad input is a usage error (exit 2) before anything is sent; a second reply is refused.
    let bad = server.cli(&["request", "quotes", "{}", "--context", "{not json"]);
    assert_eq!(bad.status.code(), Some(2));
    let again = server.cli(&["reply", &request_id, r#"{"total": 31}"#]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).starts_with("error: 409"));
    // A late reply, picked up by another instance of the service.
    let output = text(&server.cli(&[
        "--service",
        "checkout",
        "request",
        "quotes",
        r#"{"items": 1}"#,
        "--timeout",
        "1s",
    ]));
    assert!(output.contains("pending"), "{output}");
    let request_id = pull_request_id(&server);
    text(&server.cli(&["reply", &request_id, r#"{"total": 10}"#]));
    let output = text(&server.cli(&[
        "--output",
        "json",
        "pull",
        "_replies.checkout",
        "--consumer",
        "checkout-2",
        "--max",
        "1",
        "--ack",
    ]));
    let pulled: Value = serde_json::from_str(&output).unwrap();
    assert_eq!(
        pulled["deliveries"][0]["event"]["correlationid"],
        request_id.as_str()
    );
    assert_eq!(
        pulled["deliveries"][0]["event"]["data"],
        json!({"total": 10})
    );
    let status: Value = client
        .get(format!("{}/v1/requests/{request_id}", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(status["status"], "replied");

    webhook_part(&server);

    // After a restart the group resumes after its commit: nothing to pull.
    let status = server.terminate();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    let server = RealServer::start(&directory.path().join("herald-data"));
    let output = text(&server.cli(&[
        "--output",
        "json",
        "pull",
        "audit",
        "--consumer",
        "worker-1",
    ]));
    assert!(
        !output.contains("receipt"),
        "nothing is delivered again: {output}"
    );
    // An error is one line and exit code 1.
    let missing = server.cli(&["pull", "nosuch"]);
    assert_eq!(missing.status.code(), Some(1));
    let error = String::from_utf8(missing.stderr).unwrap();
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.starts_with("error: 404"), "{error}");
    server.terminate();
}

/// The webhook part: a subscription pushing to the README's receiver (examples/), which
/// verifies every signature; events sent before the receiver is up are retried.
fn webhook_part(server: &RealServer) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/hooks");
    // herald sub create billing --topic orders --start earliest --push http://127.0.0.1:9000/hooks
    let output = text(&server.cli(&[
        "sub", "create", "billing", "--topic", "orders", "--start", "earliest", "--push", &url,
    ]));
    let secret = output
        .split_whitespace()
        .find(|word| word.starts_with("whsec_"))
        .unwrap_or_else(|| panic!("the secret is printed: {output}"))
        .to_owned();
    // WEBHOOK_SECRET=whsec_… python3 examples/webhook-receiver.py 9000
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/webhook-receiver.py"
    );
    let mut receiver = std::process::Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .env("WEBHOOK_SECRET", &secret)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the example receiver");
    let mut lines =
        std::io::BufRead::lines(std::io::BufReader::new(receiver.stdout.take().unwrap()));
    let mut verified = std::collections::BTreeSet::new();
    // The tour's two orders: order-1 and the CLI's publish.
    while verified.len() < 2 {
        let line = lines
            .next()
            .expect("the receiver prints each verified event")
            .unwrap();
        assert!(line.starts_with("verified "), "{line}");
        verified.insert(line.split(' ').nth(1).unwrap().to_owned());
    }
    assert!(verified.contains("order-1"), "{verified:?}");
    // herald sub attempts billing
    let output = text(&server.cli(&["sub", "attempts", "billing"]));
    assert!(output.contains("delivered"), "{output}");
    let _ = receiver.kill();
    let _ = receiver.wait();
}

/// `herald pull pricing --consumer pricer-1 --max 1 --ack --output json`: the request id is the
/// event's `correlationid`.
fn pull_request_id(server: &RealServer) -> String {
    let output = text(&server.cli(&[
        "--output",
        "json",
        "pull",
        "pricing",
        "--consumer",
        "pricer-1",
        "--max",
        "1",
        "--wait",
        "10s",
        "--ack",
    ]));
    let pulled: Value = serde_json::from_str(&output).unwrap();
    let event = &pulled["deliveries"][0]["event"];
    assert_eq!(event["replyto"], "_replies.checkout", "{output}");
    event["correlationid"].as_str().unwrap().to_owned()
}
