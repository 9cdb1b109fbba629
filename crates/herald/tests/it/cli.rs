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
    for command in ["serve", "topic", "publish", "read", "sub", "pull", "tail"] {
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
    let commands: [&[&str]; 8] = [
        &["topic", "list"],
        &["topic", "create", "orders", "--partitions", "3"],
        &["publish", "orders", "{\"total\": 1}"],
        &["read", "orders", "--offset", "0"],
        &["sub", "describe", "worker"],
        &["pull", "worker", "--max", "5"],
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
