//! The `herald` binary as a user runs it: exit codes, the one-line errors, and what the client
//! commands send and print (against a scripted HTTP server, not a Herald server).

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::fake_server::{FakeServer, Reply};

/// How long any one run of the binary may take; a hang fails the test instead of the suite.
const RUN_TIME_MAX: Duration = Duration::from_secs(30);

/// Runs `herald` with `args`, in a fresh directory (so no `./herald.toml` is found), without
/// the caller's `HERALD_*` variables, and with `stdin` as its input.
fn herald_with_input(args: &[&str], stdin: &str) -> Output {
    let directory = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command
        .args(args)
        .current_dir(directory.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("HERALD_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("the herald binary runs");
    // The child may exit without reading its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > RUN_TIME_MAX {
            child.kill().unwrap();
            panic!("herald {args:?} ran longer than {RUN_TIME_MAX:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn herald(args: &[&str]) -> Output {
    herald_with_input(args, "")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A URL where nothing listens: a port the OS just handed out and took back.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

#[test]
fn help_documents_the_exit_codes() {
    let output = herald(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = stdout(&output);
    for line in [
        "Exit codes:",
        "0  success",
        "1  the server answered with an error",
        "2  usage error",
        "3  the server cannot be reached",
    ] {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
    for command in [
        "serve", "topic", "publish", "read", "sub", "pull", "ack", "nack", "extend", "reject",
        "dlq", "tail",
    ] {
        assert!(help.contains(&format!("  {command} ")), "{command}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for command in [
        &["serve", "--help"][..],
        &["topic", "create", "--help"],
        &["publish", "--help"],
        &["read", "--help"],
        &["sub", "create", "--help"],
        &["pull", "--help"],
        &["ack", "--help"],
        &["nack", "--help"],
        &["extend", "--help"],
        &["reject", "--help"],
        &["dlq", "redrive", "--help"],
        &["sub", "redrive", "--help"],
        &["tail", "--help"],
    ] {
        let output = herald(command);
        assert_eq!(output.status.code(), Some(0), "{command:?}");
    }
    let serve_help = stdout(&herald(&["serve", "--help"]));
    assert!(serve_help.contains("HERALD_FSYNC"), "{serve_help}");
}

#[test]
fn client_commands_exit_3_with_one_line_when_the_server_is_unreachable() {
    let url = closed_port_url();
    let commands: [&[&str]; 11] = [
        &["topic", "list"],
        &["topic", "create", "orders", "--partitions", "3"],
        &["publish", "orders", "{\"total\": 1}"],
        &["read", "orders", "--offset", "0"],
        &["sub", "describe", "worker"],
        &["pull", "worker", "--max", "5"],
        &["extend", "worker", "r1", "--by", "30s"],
        &["reject", "worker", "r1"],
        &["dlq", "redrive", "worker"],
        &["tail", "orders.*"],
        &["services"],
    ];
    for command in commands {
        let mut args = vec!["--server", url.as_str()];
        args.extend_from_slice(command);
        let output = herald(&args);
        assert_eq!(output.status.code(), Some(3), "{command:?}");
        assert_eq!(stdout(&output), "", "{command:?}");
        let message = stderr(&output);
        assert_eq!(message.lines().count(), 1, "{command:?}: {message}");
        assert!(
            message.starts_with(&format!("error: cannot reach the Herald server at {url}: ")),
            "{command:?}: {message}"
        );
    }
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["topic", "create"][..],
        &["pull", "worker", "--max", "0"],
        &["pull", "worker", "--wait", "soon"],
        &[
            "read",
            "orders",
            "--offset",
            "1",
            "--from-time",
            "2026-01-01T00:00:00Z",
        ],
        &["sub", "create", "worker"],
        &[
            "sub",
            "create",
            "worker",
            "--topic",
            "t",
            "--retry-initial",
            "soon",
        ],
        &[
            "sub",
            "create",
            "worker",
            "--topic",
            "t",
            "--retry-max",
            "-1s",
        ],
        &[
            "sub",
            "create",
            "worker",
            "--topic",
            "t",
            "--retry-multiplier",
            "fast",
        ],
        &[
            "sub",
            "create",
            "worker",
            "--topic",
            "t",
            "--retry-multiplier",
            "0",
        ],
        &["pull", "worker", "--ack", "--nack"],
        &["pull", "worker", "--ack", "--extend", "30s"],
        &["pull", "worker", "--nack", "--extend", "30s"],
        &["pull", "worker", "--delay", "5s"],
        &["pull", "worker", "--nack", "--delay", "soon"],
        &["pull", "worker", "--extend", "soon"],
        &["extend", "worker", "r1"],
        &["extend", "worker", "--by", "30s"],
        &["reject", "worker"],
        &["dlq", "redrive"],
        &["dlq", "redrive", "worker", "--max", "0"],
        &["publish", "orders"],
        &["--output", "yaml", "topic", "list"],
        &["frobnicate"],
    ] {
        let output = herald(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn bad_input_exits_2_before_contacting_the_server() {
    // With a closed port, a command that tried to connect would exit 3.
    let url = closed_port_url();
    let output = herald(&["--server", &url, "publish", "orders", "not json"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).starts_with("error: DATA is not JSON"),
        "{}",
        stderr(&output)
    );

    let output = herald(&[
        "--server",
        &url,
        "publish",
        "orders",
        "--batch-file",
        "missing.jsonl",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).starts_with("error: cannot read missing.jsonl"));

    let output = herald(&["--server", "localhost:7070", "topic", "list"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).starts_with("error: invalid server URL"));
}

#[test]
fn an_error_answer_exits_1_with_status_title_and_detail_on_one_line() {
    let problem = json!({
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no topic named nope;\ncreate it with PUT /v1/topics/nope"
    });
    let server = FakeServer::start(vec![
        Reply::new(404, "application/problem+json", &problem.to_string()),
        Reply::new(500, "text/plain", "disk on fire"),
    ]);

    let output = herald(&["--server", &server.url, "topic", "describe", "nope"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: 404 Not Found: no topic named nope; create it with PUT /v1/topics/nope\n"
    );

    let output = herald(&["--server", &server.url, "topic", "list"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: 500 Internal Server Error: disk on fire\n"
    );
    server.requests();
}

#[test]
fn publish_with_attributes_sends_a_structured_cloudevent() {
    let published = r#"{"events":[{"id":"order-1","partition":2,"offset":17,"duplicate":false}]}"#;
    let server = FakeServer::start(vec![Reply::json(201, published)]);
    let output = herald(&[
        "--server",
        &server.url,
        "--service",
        "shop",
        "publish",
        "orders",
        "{\"total\": 42}",
        "--type",
        "order.created",
        "--id",
        "order-1",
        "--key",
        "customer-7",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "ID       PARTITION  OFFSET  DUPLICATE\norder-1  2          17      no\n"
    );

    let request = &server.requests()[0];
    assert_eq!(request.target, "/v1/topics/orders/events");
    assert_eq!(request.header("herald-service"), Some("shop"));
    assert_eq!(
        request.header("content-type"),
        Some("application/cloudevents+json")
    );
    assert_eq!(
        request.json(),
        json!({
            "specversion": "1.0",
            "id": "order-1",
            "source": "/herald-cli",
            "type": "order.created",
            "partitionkey": "customer-7",
            "datacontenttype": "application/json",
            "data": {"total": 42},
        })
    );
}

#[test]
fn publish_reads_plain_data_from_stdin_and_batches_from_json_lines() {
    let published = r#"{"events":[{"id":"a","partition":0,"offset":0,"duplicate":false}]}"#;
    let batch = r#"{"events":[{"id":"a","partition":0,"offset":1,"duplicate":false},{"id":"b","partition":0,"offset":2,"duplicate":true}]}"#;
    let server = FakeServer::start(vec![Reply::json(201, published), Reply::json(201, batch)]);

    let output = herald_with_input(
        &["--server", &server.url, "publish", "orders", "-"],
        "{\"total\": 1}\n",
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));

    let output = herald_with_input(
        &[
            "--server",
            &server.url,
            "--output",
            "json",
            "publish",
            "orders",
            "--batch-file",
            "-",
        ],
        "{\"specversion\":\"1.0\",\"id\":\"a\"}\n\n{\"specversion\":\"1.0\",\"id\":\"b\"}\n",
    );
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed["events"][1]["duplicate"], true);

    let requests = server.requests();
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    assert_eq!(requests[0].json(), json!({"total": 1}));
    assert_eq!(
        requests[1].header("content-type"),
        Some("application/cloudevents-batch+json")
    );
    assert_eq!(
        requests[1].json(),
        json!([{"specversion": "1.0", "id": "a"}, {"specversion": "1.0", "id": "b"}])
    );
}

#[test]
fn topic_list_prints_an_aligned_table_or_the_json() {
    let topics = r#"{"topics":[{"name":"orders","partitions":[{"partition":0,"start_offset":2,"end_offset":42,"bytes":1234},{"partition":1,"start_offset":0,"end_offset":8,"bytes":100}],"retention":{"max_age":"7d","max_bytes":null},"dedup_window":"2m","created":"2026-11-01T00:00:00Z"}]}"#;
    let server = FakeServer::start(vec![Reply::json(200, topics), Reply::json(200, topics)]);

    let output = herald(&["--server", &server.url, "topic", "list"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "NAME    PARTITIONS  EVENTS  BYTES  MAX AGE  MAX BYTES  DEDUP WINDOW\n\
         orders  2           48      1334   7d       no limit   2m\n"
    );

    let output = herald(&["--server", &server.url, "--output", "json", "topic", "list"]);
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed, serde_json::from_str::<Value>(topics).unwrap());
    server.requests();
}

#[test]
fn sub_create_sends_the_settings_from_the_flags() {
    let subscription = r#"{"name":"worker","topics":["orders.*","payments.#"],"mode":"queue"}"#;
    let server = FakeServer::start(vec![Reply::json(201, subscription)]);
    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "create",
        "worker",
        "--topic",
        "orders.*,payments.#",
        "--start",
        "earliest",
        "--filter",
        r#"{"prefix": {"type": "order."}}"#,
        "--ack-timeout",
        "90s",
        "--max-deliveries",
        "3",
        "--ordering",
        "key",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "created subscription worker\n");
    let requests = server.requests();
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].target, "/v1/subscriptions/worker");
    assert_eq!(
        requests[0].json(),
        json!({
            "topics": ["orders.*", "payments.#"],
            "start": "earliest",
            "filter": {"prefix": {"type": "order."}},
            "ack_timeout": "90s",
            "max_deliveries": 3,
            "ordering": "key",
        })
    );
}

#[test]
fn pull_with_ack_acknowledges_what_it_printed() {
    let pulled = r#"{"deliveries":[{"receipt":"r1","attempt":1,"deadline":"2026-11-01T00:00:30Z","topic":"orders","partition":0,"offset":3,"event":{"id":"a","type":"order.created","data":{"total":1}}}]}"#;
    let acked = r#"{"results":[{"receipt":"r1","status":"ok"}]}"#;
    let server = FakeServer::start(vec![Reply::json(200, pulled), Reply::json(200, acked)]);
    let output = herald(&[
        "--server",
        &server.url,
        "pull",
        "worker",
        "--max",
        "5",
        "--wait",
        "2s",
        "--ack",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "RECEIPT  ATTEMPT  TOPIC   PARTITION  OFFSET  TYPE           ID  DATA\n\
         r1       1        orders  0          3       order.created  a   {\"total\":1}\n\
         acked 1 of 1\n"
    );
    let requests = server.requests();
    assert_eq!(requests[0].json(), json!({"max": 5, "wait": "2s"}));
    assert_eq!(requests[1].target, "/v1/subscriptions/worker/ack");
    assert_eq!(requests[1].json(), json!({"receipts": ["r1"]}));
}

/// An RFC 9457 problem answer with this status, title and detail.
fn problem(status: u16, title: &str, detail: &str) -> Reply {
    let body = json!({"type": "about:blank", "title": title, "status": status, "detail": detail});
    Reply::new(status, "application/problem+json", &body.to_string())
}

/// Two deliveries, as a pull answers them.
const TWO_DELIVERIES: &str = r#"{"deliveries":[{"receipt":"r1","attempt":1,"deadline":"2026-11-01T00:00:30Z","topic":"orders","partition":0,"offset":3,"event":{"id":"a","type":"t","data":1}},{"receipt":"r2","attempt":2,"deadline":"2026-11-01T00:00:30Z","topic":"orders","partition":0,"offset":4,"event":{"id":"b","type":"t","data":2}}]}"#;

const PULLED_TABLE: &str = "RECEIPT  ATTEMPT  TOPIC   PARTITION  OFFSET  TYPE  ID  DATA\n\
                            r1       1        orders  0          3       t     a   1\n\
                            r2       2        orders  0          4       t     b   2\n";

#[test]
fn pull_with_nack_nacks_what_it_printed_with_or_without_a_delay() {
    let one_stale =
        r#"{"results":[{"receipt":"r1","status":"ok"},{"receipt":"r2","status":"stale"}]}"#;
    let both_ok = r#"{"results":[{"receipt":"r1","status":"ok"},{"receipt":"r2","status":"ok"}]}"#;
    let server = FakeServer::start(vec![
        Reply::json(200, TWO_DELIVERIES),
        Reply::json(200, one_stale),
        Reply::json(200, TWO_DELIVERIES),
        Reply::json(200, both_ok),
    ]);

    let output = herald(&[
        "--server",
        &server.url,
        "pull",
        "worker",
        "--nack",
        "--delay",
        "1m30s",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{PULLED_TABLE}nacked 1 of 2\n"));
    assert_eq!(stderr(&output), "warning: receipt r2 is stale\n");

    let output = herald(&["--server", &server.url, "pull", "worker", "--nack"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{PULLED_TABLE}nacked 2 of 2\n"));

    let requests = server.requests();
    assert_eq!(requests[0].target, "/v1/subscriptions/worker/pull");
    assert_eq!(requests[1].method, "POST");
    assert_eq!(requests[1].target, "/v1/subscriptions/worker/nack");
    assert_eq!(
        requests[1].json(),
        json!({"receipts": ["r1", "r2"], "delay": "90s"})
    );
    assert_eq!(requests[3].target, "/v1/subscriptions/worker/nack");
    assert_eq!(requests[3].json(), json!({"receipts": ["r1", "r2"]}));
}

#[test]
fn pull_with_extend_extends_the_leases_of_what_it_printed() {
    let both_ok = r#"{"results":[{"receipt":"r1","status":"ok"},{"receipt":"r2","status":"ok"}]}"#;
    let server = FakeServer::start(vec![
        Reply::json(200, TWO_DELIVERIES),
        Reply::json(200, both_ok),
        Reply::json(200, TWO_DELIVERIES),
        Reply::json(200, both_ok),
    ]);

    let output = herald(&["--server", &server.url, "pull", "worker", "--extend", "2m"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), format!("{PULLED_TABLE}extended 2 of 2\n"));

    // With --output json only the pull's answer is printed, so the output stays one document.
    let output = herald(&[
        "--server",
        &server.url,
        "--output",
        "json",
        "pull",
        "worker",
        "--extend",
        "2m",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(
        printed,
        serde_json::from_str::<Value>(TWO_DELIVERIES).unwrap()
    );

    let requests = server.requests();
    for request in [&requests[1], &requests[3]] {
        assert_eq!(request.target, "/v1/subscriptions/worker/extend");
        assert_eq!(
            request.json(),
            json!({"receipts": ["r1", "r2"], "by": "2m"})
        );
    }
}

#[test]
fn pull_exits_1_when_the_server_refuses_the_nack() {
    let server = FakeServer::start(vec![
        Reply::json(200, TWO_DELIVERIES),
        problem(
            400,
            "Bad Request",
            "nack is for queue subscriptions; worker is a stream",
        ),
    ]);
    let output = herald(&["--server", &server.url, "pull", "worker", "--nack"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), PULLED_TABLE);
    assert_eq!(
        stderr(&output),
        "error: 400 Bad Request: nack is for queue subscriptions; worker is a stream\n"
    );
    server.requests();
}

#[test]
fn extend_and_reject_send_the_receipts_and_print_each_status() {
    let results =
        r#"{"results":[{"receipt":"r1","status":"ok"},{"receipt":"nope","status":"unknown"}]}"#;
    let server = FakeServer::start(vec![
        Reply::json(200, results),
        Reply::json(200, results),
        Reply::json(200, results),
        problem(404, "Not Found", "no subscription named ghost"),
        problem(400, "Bad Request", "reason is longer than 1024 bytes"),
    ]);
    let table = "RECEIPT  STATUS\nr1       ok\nnope     unknown\n";

    let output = herald(&[
        "--server",
        &server.url,
        "extend",
        "worker",
        "r1",
        "nope",
        "--by",
        "45s",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), table);

    let output = herald(&[
        "--server",
        &server.url,
        "reject",
        "worker",
        "r1",
        "nope",
        "--reason",
        "bad payload",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), table);

    let output = herald(&[
        "--server",
        &server.url,
        "--output",
        "json",
        "reject",
        "worker",
        "r1",
        "nope",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed, serde_json::from_str::<Value>(results).unwrap());

    let output = herald(&[
        "--server",
        &server.url,
        "extend",
        "ghost",
        "r1",
        "--by",
        "45s",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "error: 404 Not Found: no subscription named ghost\n"
    );

    let output = herald(&[
        "--server",
        &server.url,
        "reject",
        "worker",
        "r1",
        "--reason",
        "…",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "error: 400 Bad Request: reason is longer than 1024 bytes\n"
    );

    let requests = server.requests();
    let calls: Vec<_> = requests
        .iter()
        .map(|request| format!("{} {}", request.method, request.target))
        .collect();
    assert_eq!(
        calls,
        [
            "POST /v1/subscriptions/worker/extend",
            "POST /v1/subscriptions/worker/reject",
            "POST /v1/subscriptions/worker/reject",
            "POST /v1/subscriptions/ghost/extend",
            "POST /v1/subscriptions/worker/reject",
        ]
    );
    assert_eq!(
        requests[0].json(),
        json!({"receipts": ["r1", "nope"], "by": "45s"})
    );
    assert_eq!(
        requests[1].json(),
        json!({"receipts": ["r1", "nope"], "reason": "bad payload"})
    );
    // Without --reason none is sent; the server fills in its own.
    assert_eq!(requests[2].json(), json!({"receipts": ["r1", "nope"]}));
}

#[test]
fn dlq_redrive_prints_how_many_events_moved() {
    let server = FakeServer::start(vec![
        Reply::json(200, r#"{"redriven":7}"#),
        Reply::json(200, r#"{"redriven":0}"#),
        Reply::json(200, r#"{"redriven":3}"#),
        problem(404, "Not Found", "no subscription named ghost"),
    ]);

    let output = herald(&[
        "--server",
        &server.url,
        "dlq",
        "redrive",
        "worker",
        "--max",
        "50",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "redriven 7 events\n");

    let output = herald(&[
        "--server",
        &server.url,
        "--output",
        "json",
        "dlq",
        "redrive",
        "worker",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed, json!({"redriven": 0}));

    // `sub redrive` is the same command.
    let output = herald(&["--server", &server.url, "sub", "redrive", "worker"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "redriven 3 events\n");

    let output = herald(&["--server", &server.url, "dlq", "redrive", "ghost"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "error: 404 Not Found: no subscription named ghost\n"
    );

    let requests = server.requests();
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].target, "/v1/subscriptions/worker/redrive");
    assert_eq!(requests[0].json(), json!({"max": 50}));
    assert_eq!(requests[1].target, "/v1/subscriptions/worker/redrive");
    assert_eq!(requests[1].json(), json!({}));
    assert_eq!(requests[2].target, "/v1/subscriptions/worker/redrive");
    assert_eq!(requests[3].target, "/v1/subscriptions/ghost/redrive");
}

#[test]
fn sub_create_sends_the_retry_backoff_only_when_asked() {
    let subscription = r#"{"name":"worker","topics":["orders"],"mode":"queue"}"#;
    let server = FakeServer::start(vec![
        Reply::json(201, subscription),
        Reply::json(200, subscription),
        problem(
            409,
            "Conflict",
            "subscription worker exists with other settings",
        ),
    ]);

    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "create",
        "worker",
        "--topic",
        "orders",
        "--dead-letter-topic",
        "worker.poison",
        "--retry-initial",
        "500ms",
        "--retry-max",
        "300s",
        "--retry-multiplier",
        "1.5",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "created subscription worker\n");

    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "create",
        "worker",
        "--topic",
        "orders",
        "--retry-multiplier",
        "3",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "subscription worker already exists with these settings\n"
    );

    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "create",
        "worker",
        "--topic",
        "orders",
        "--mode",
        "stream",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "error: 409 Conflict: subscription worker exists with other settings\n"
    );

    let requests = server.requests();
    // No mode unless asked: the server's default applies.
    assert_eq!(
        requests[0].json(),
        json!({
            "topics": ["orders"],
            "dead_letter_topic": "worker.poison",
            "retry": {"initial": "500ms", "max": "5m", "multiplier": 1.5},
        })
    );
    assert_eq!(
        requests[1].json(),
        json!({"topics": ["orders"], "retry": {"multiplier": 3.0}})
    );
    assert_eq!(
        requests[2].json(),
        json!({"topics": ["orders"], "mode": "stream"})
    );
}

#[test]
fn sub_describe_shows_the_oldest_pending_age_of_a_queue() {
    let queue = r#"{"name":"worker","topics":["orders"],"mode":"queue","start":"latest","filter":null,"ack_timeout":"30s","max_deliveries":10,"dead_letter_topic":"worker.dlq","retry":{"initial":"1s","max":"5m","multiplier":2.0},"ordering":"none","push":null,"created":"2026-11-01T00:00:00Z","stats":{"backlog":5,"in_flight":2,"delivered":9,"acked":4,"redelivered":3,"dead_lettered":1,"oldest_pending_age":"42s","consumers":[],"push":null}}"#;
    let idle = queue.replace(
        r#""oldest_pending_age":"42s""#,
        r#""oldest_pending_age":null"#,
    );
    let server = FakeServer::start(vec![
        Reply::json(200, queue),
        Reply::json(200, &idle),
        Reply::json(200, queue),
    ]);

    let output = herald(&["--server", &server.url, "sub", "describe", "worker"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "name:                worker\n\
         mode:                queue\n\
         topics:              orders\n\
         start:               latest\n\
         filter:              -\n\
         ack timeout:         30s\n\
         max deliveries:      10\n\
         dead letter topic:   worker.dlq\n\
         retry:               initial 1s, max 5m, multiplier 2\n\
         ordering:            none\n\
         push:                -\n\
         backlog:             5\n\
         in flight:           2\n\
         delivered:           9\n\
         acked:               4\n\
         redelivered:         3\n\
         dead lettered:       1\n\
         oldest pending age:  42s\n\
         consumers:           0\n"
    );

    let output = herald(&["--server", &server.url, "sub", "describe", "worker"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("\noldest pending age:  -\n"),
        "{}",
        stdout(&output)
    );

    let output = herald(&[
        "--server",
        &server.url,
        "--output",
        "json",
        "sub",
        "describe",
        "worker",
    ]);
    let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(printed, serde_json::from_str::<Value>(queue).unwrap());
    assert_eq!(server.requests()[0].target, "/v1/subscriptions/worker");
}

#[test]
fn sub_describe_lists_a_streams_consumers_one_per_line() {
    let stream = r#"{"name":"audit","topics":["orders"],"mode":"stream","start":"earliest","ack_timeout":"30s","stats":{"backlog":0,"in_flight":0,"delivered":2,"acked":2,"redelivered":0,"dead_lettered":0,"oldest_pending_age":null,"consumers":[{"name":"worker-1","partitions":["orders/0","orders/1"],"last_seen":"2026-11-01T00:00:05Z"},{"name":"w2","partitions":[],"last_seen":"2026-11-01T00:00:06Z"}],"push":null}}"#;
    let server = FakeServer::start(vec![Reply::json(200, stream)]);
    let output = herald(&["--server", &server.url, "sub", "describe", "audit"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let printed = stdout(&output);
    assert!(!printed.contains("oldest pending age"), "{printed}");
    assert!(
        printed.ends_with(
            "dead lettered:      0\n\
             consumers:          2\n  \
             NAME      PARTITIONS         LAST SEEN\n  \
             worker-1  orders/0,orders/1  2026-11-01T00:00:05Z\n  \
             w2        -                  2026-11-01T00:00:06Z\n"
        ),
        "{printed}"
    );
    server.requests();
}

#[test]
fn read_follow_long_polls_from_the_next_offset() {
    let first = r#"{"events":[{"partition":0,"offset":0,"timestamp":"2026-11-01T00:00:00Z","event":{"id":"a","type":"t","data":{"n":0}}}],"next_offset":1}"#;
    let second = r#"{"events":[{"partition":0,"offset":1,"timestamp":"2026-11-01T00:00:01Z","event":{"id":"b","type":"t","data":{"n":1}}}],"next_offset":2}"#;
    // After two answers the scripted server stops listening, which ends the loop with exit 3.
    let server = FakeServer::start(vec![Reply::json(200, first), Reply::json(200, second)]);
    let output = herald(&["--server", &server.url, "read", "orders", "--follow"]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "0:0  2026-11-01T00:00:00Z  t  a  {\"n\":0}\n0:1  2026-11-01T00:00:01Z  t  b  {\"n\":1}\n"
    );
    let targets: Vec<_> = server
        .requests()
        .into_iter()
        .map(|request| request.target)
        .collect();
    assert_eq!(
        targets,
        [
            "/v1/topics/orders/events?partition=0&wait=20s",
            "/v1/topics/orders/events?partition=0&offset=1&wait=20s",
        ]
    );
}

#[test]
fn tail_prints_each_message_and_ends_with_the_stream() {
    let server = FakeServer::start(vec![Reply::stream(
        "text/event-stream",
        &[
            ": hello\n\n",
            "data: {\"topic\":\"orders.eu\",\"partition\":0,\"offset\":1,\"event\":{\"id\":\"a\",\"type\":\"t\",\"data\":1}}\n\n",
            "data: {\"topic\":\"orders.us\",\"partition\":1,\"offset\":2,\"event\":{\"id\":\"b\",\"type\":\"t\",\"data\":2}}\n\n",
        ],
    )]);
    let output = herald(&["--server", &server.url, "tail", "orders.*"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "orders.eu/0:1  t  a  1\norders.us/1:2  t  b  2\n"
    );
    assert_eq!(server.requests()[0].target, "/v1/tail?topics=orders.*");
}

#[test]
fn serve_refuses_an_unknown_configuration_key() {
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("herald.toml");
    std::fs::write(&file, "http = \"127.0.0.1:0\"\nfsycn = \"never\"\n").unwrap();
    let output = herald(&["serve", "--config", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(message.contains("unknown field `fsycn`"), "{message}");
}

#[test]
fn serve_exits_1_naming_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let directory = tempfile::tempdir().unwrap();
    let data = directory.path().join("data");
    let output = herald(&[
        "serve",
        "--http",
        &address,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("error: cannot listen on {address}: ")),
        "{message}"
    );
    drop(taken);
}

#[test]
fn webhook_commands_send_push_settings_print_the_secret_once_and_list_attempts() {
    let created = r#"{"name":"hook","topics":["orders"],"mode":"queue","push":{"url":"https://example.com/hook","secret":"whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0","timeout":"5s","max_in_flight":4,"content_mode":"binary","previous_secret_until":null}}"#;
    let attempts = r#"{"attempts":[{"time":"2026-11-01T00:00:01Z","webhook_id":"msg_1_2_0_7","topic":"orders","partition":0,"offset":7,"attempt":2,"status":null,"latency_ms":10000.4,"error":"no answer within the timeout (10000 ms)","outcome":"failed"},{"time":"2026-11-01T00:00:00Z","webhook_id":"msg_1_2_0_6","topic":"orders","partition":0,"offset":6,"attempt":1,"status":204,"latency_ms":1.25,"error":null,"outcome":"delivered"}]}"#;
    let rotated = created.replace(
        "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0",
        "bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3",
    );
    let server = FakeServer::start(vec![
        Reply::json(201, created),
        Reply::json(200, attempts),
        Reply::json(200, &rotated),
    ]);
    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "create",
        "hook",
        "--topic",
        "orders",
        "--push",
        "https://example.com/hook",
        "--push-timeout",
        "5s",
        "--push-max-in-flight",
        "4",
        "--push-content-mode",
        "binary",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "created subscription hook\n\
         webhook secret (shown only now; receivers verify webhook-signature with it): whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n"
    );
    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "attempts",
        "hook",
        "--limit",
        "2",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "TIME                  EVENT       ATTEMPT  STATUS  LATENCY    OUTCOME    ERROR\n\
         2026-11-01T00:00:01Z  orders/0/7  2        -       10000.4ms  failed     no answer within the timeout (10000 ms)\n\
         2026-11-01T00:00:00Z  orders/0/6  1        204     1.2ms      delivered  -\n"
    );
    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "webhook",
        "hook",
        "--rotate-secret",
        "--secret-grace",
        "1h",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("whsec_bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3"));
    // --push-secret needs --push.
    let output = herald(&[
        "--server",
        &server.url,
        "sub",
        "create",
        "plain",
        "--topic",
        "orders",
        "--push-secret",
        "whsec_x",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let requests = server.requests();
    assert_eq!(
        requests[0].json(),
        json!({"topics": ["orders"], "push": {"url": "https://example.com/hook", "timeout": "5s", "max_in_flight": 4, "content_mode": "binary"}})
    );
    assert_eq!(requests[1].method, "GET");
    assert_eq!(
        requests[1].target,
        "/v1/subscriptions/hook/attempts?limit=2"
    );
    assert_eq!(requests[2].method, "PATCH");
    assert_eq!(requests[2].target, "/v1/subscriptions/hook");
    assert_eq!(
        requests[2].json(),
        json!({"push": {"rotate_secret": true, "secret_grace": "1h"}})
    );
}
