//! A real server whose data directory is on a small file system of its own (a size-limited
//! tmpfs, mounted by the test as root and unmounted after): filled up, publishes fail with 507
//! and a clear detail, reads still work, nothing acknowledged is lost or damaged, and writes work
//! again once space is freed. Where the machine cannot mount, the test says so loudly (and fails
//! when `HERALD_REQUIRE_MOUNT` is set, as in CI); the log's simulated full disk covers the same
//! path through the I/O seam.

use std::io::Write;
use std::process::Command;

use reqwest::blocking::Client;
use serde_json::{Value, json};

use crate::real_server::RealServer;

struct SmallFileSystem {
    mount_point: tempfile::TempDir,
}

impl SmallFileSystem {
    fn mount(size: &str) -> Option<Self> {
        let mount_point = tempfile::tempdir().ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(mount_point.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(SmallFileSystem { mount_point })
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount_point.path()).status();
    }
}

fn batch(from: u64) -> Vec<Value> {
    (from..from + 50)
        .map(|n| json!({"specversion": "1.0", "id": format!("e-{n}"), "source": "/fill", "type": "t", "data": {"n": n, "pad": "x".repeat(1000)}}))
        .collect()
}

fn publish(client: &Client, url: &str, events: &[Value]) -> (u16, Value) {
    let response = client
        .post(format!("{url}/v1/topics/fill/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::to_vec(events).unwrap())
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap_or(Value::Null))
}

/// Every event of the topic, as (id, n).
fn stored(client: &Client, url: &str) -> Vec<(String, u64)> {
    let mut events = Vec::new();
    let mut offset = 0;
    loop {
        let read = client
            .get(format!(
                "{url}/v1/topics/fill/events?offset={offset}&limit=1000"
            ))
            .send()
            .unwrap();
        assert_eq!(read.status().as_u16(), 200, "reads work on a full disk");
        let read: Value = read.json().unwrap();
        let page = read["events"].as_array().unwrap();
        if page.is_empty() {
            return events;
        }
        for event in page {
            events.push((
                event["event"]["id"].as_str().unwrap().to_owned(),
                event["event"]["data"]["n"].as_u64().unwrap(),
            ));
        }
        offset = read["next_offset"].as_u64().unwrap();
    }
}

/// The stored events are exactly the acknowledged ones, in order.
#[track_caller]
fn same(stored: &[(String, u64)], acknowledged: &[(String, u64)]) {
    let first_difference = stored
        .iter()
        .zip(acknowledged)
        .position(|(stored, acknowledged)| stored != acknowledged);
    assert!(
        first_difference.is_none() && stored.len() == acknowledged.len(),
        "{} stored, {} acknowledged; first difference at {first_difference:?}",
        stored.len(),
        acknowledged.len()
    );
}

#[test]
fn a_full_disk_answers_507_keeps_reads_and_data_and_recovers_when_space_is_freed() {
    let Some(file_system) = SmallFileSystem::mount("24m") else {
        let message = "CANNOT MOUNT A SMALL TMPFS HERE: the HTTP full-disk test did not run \
                       (herald-log's simulated full disk covers the same path)";
        assert!(
            std::env::var_os("HERALD_REQUIRE_MOUNT").is_none(),
            "{message}"
        );
        eprintln!("WARNING: {message}");
        return;
    };
    let root = file_system.mount_point.path();
    let data_dir = root.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    let server = RealServer::start(&data_dir);
    let client = Client::new();
    let created = client
        .put(format!("{}/v1/topics/fill", server.url))
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);

    // Take all but about 2 MiB of the file system with a ballast file.
    let ballast_path = root.join("ballast");
    let mut ballast = std::fs::File::create(&ballast_path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    let mut written = 0u64;
    while ballast.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    ballast
        .set_len(written.saturating_sub(2 * 1024 * 1024))
        .unwrap();
    ballast.sync_all().unwrap();

    // Publish until the disk is full.
    let mut acknowledged: Vec<(String, u64)> = Vec::new();
    let mut next = 0;
    let detail = loop {
        let events = batch(next);
        let (status, answer) = publish(&client, &server.url, &events);
        match status {
            201 => {
                for event in &events {
                    acknowledged.push((
                        event["id"].as_str().unwrap().to_owned(),
                        event["data"]["n"].as_u64().unwrap(),
                    ));
                }
                next += 50;
                assert!(next < 100_000, "the disk never filled up");
            }
            507 => break answer["detail"].as_str().unwrap().to_owned(),
            other => panic!("a publish on a full disk answered {other}: {answer}"),
        }
    };
    assert!(
        detail.contains("no space left"),
        "the 507 says what is wrong: {detail}"
    );
    assert!(
        !acknowledged.is_empty(),
        "some events fit before the disk was full"
    );
    // Reads still work, and hold exactly what was acknowledged.
    same(&stored(&client, &server.url), &acknowledged);
    // Another write that needs the disk fails cleanly too, and the server keeps serving.
    let (status, _) = publish(&client, &server.url, &batch(next));
    assert_eq!(status, 507);
    // A metadata write (a subscription) either still fits or is refused with 507, never a 500.
    let subscription = client
        .put(format!("{}/v1/subscriptions/late", server.url))
        .json(&json!({"topics": ["fill"]}))
        .send()
        .unwrap();
    assert!(
        [201, 507].contains(&subscription.status().as_u16()),
        "a subscription on a full disk: {}",
        subscription.status()
    );
    // Metadata writes until they fill the disk too: requests whose records carry a 60 KiB
    // context (the metadata database grows by them). Each is 202 or 507 with the same words as
    // the log's, never a 500.
    let context = serde_json::to_string(&"c".repeat(60 * 1024)).unwrap();
    let mut requests_made = 0;
    let metadata_detail = loop {
        let answer = client
            .post(format!("{}/v1/topics/asks/requests?timeout=0s", server.url))
            .header("content-type", "application/json")
            .header("herald-reply-group", "fill")
            .header("herald-context", &context)
            .body(r#"{"ask": 1}"#)
            .send()
            .unwrap();
        let status = answer.status().as_u16();
        let body: Value = answer.json().unwrap_or(Value::Null);
        match status {
            202 => {
                requests_made += 1;
                assert!(requests_made < 1000, "the metadata never filled the disk");
            }
            507 => break body["detail"].as_str().unwrap_or_default().to_owned(),
            other => panic!("a request on a full disk answered {other}: {body}"),
        }
    };
    assert!(
        metadata_detail.contains("no space left"),
        "the metadata's 507 says what is wrong: {metadata_detail}"
    );
    let health = client
        .get(format!("{}/healthz", server.url))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);

    // Space comes back: writes work again, without a restart.
    drop(ballast);
    std::fs::remove_file(&ballast_path).unwrap();
    let answer = client
        .post(format!("{}/v1/topics/asks/requests?timeout=0s", server.url))
        .header("content-type", "application/json")
        .header("herald-reply-group", "fill")
        .body(r#"{"ask": 2}"#)
        .send()
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        202,
        "metadata writes work again once there is room"
    );
    let events = batch(next);
    let (status, answer) = publish(&client, &server.url, &events);
    assert_eq!(status, 201, "{answer}");
    for event in &events {
        acknowledged.push((
            event["id"].as_str().unwrap().to_owned(),
            event["data"]["n"].as_u64().unwrap(),
        ));
    }
    // After a restart everything acknowledged is there, undamaged.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let server = RealServer::start(&data_dir);
    same(&stored(&client, &server.url), &acknowledged);
    eprintln!(
        "full disk: {} events acknowledged before it filled, 507 said: {detail}; {requests_made} requests with a 60 KiB context fitted, then 507: {metadata_detail}",
        acknowledged.len() - 50
    );
    server.terminate();
}
