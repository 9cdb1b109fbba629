//! kill -9 of a real server while webhooks are in flight: every event answered 201 reaches the
//! endpoint at least once after the restarts, none is lost.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use crate::real_server::RealServer;

const KILLS: u32 = 4;

/// A minimal HTTP/1.1 endpoint on its own threads (keep-alive, one thread per connection) that
/// counts the CloudEvent ids it receives and answers 200 after a short pause, so deliveries are
/// in flight when the server is killed.
fn start_receiver(received: Arc<Mutex<BTreeMap<String, u32>>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let received = received.clone();
            std::thread::spawn(move || serve_connection(stream, received));
        }
    });
    format!("http://{address}/hooks")
}

fn serve_connection(stream: TcpStream, received: Arc<Mutex<BTreeMap<String, u32>>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        // The request line, then headers up to the empty line.
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let event: Value = serde_json::from_slice(&body).unwrap();
        let id = event["id"].as_str().unwrap().to_owned();
        std::thread::sleep(Duration::from_millis(2));
        *received.lock().unwrap().entry(id).or_default() += 1;
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

fn publisher(url: String, round: u32, stop: Arc<AtomicBool>, published: Arc<Mutex<Vec<String>>>) {
    let client = reqwest::blocking::Client::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let events: Vec<Value> = (0..20)
            .map(|n| {
                let id = format!("r{round}-{}", sequence + n);
                json!({"specversion": "1.0", "id": id, "source": "/push-kill", "type": "t", "data": n})
            })
            .collect();
        let Ok(response) = client
            .post(format!("{url}/v1/topics/orders/events"))
            .header("content-type", "application/cloudevents-batch+json")
            .body(serde_json::to_vec(&events).unwrap())
            .send()
        else {
            return; // killed mid-request: this batch was never acknowledged
        };
        if response.status().as_u16() != 201 {
            return;
        }
        let mut published = published.lock().unwrap();
        published.extend(
            events
                .iter()
                .map(|event| event["id"].as_str().unwrap().to_owned()),
        );
        sequence += 20;
    }
}

#[test]
fn every_published_event_reaches_the_webhook_at_least_once_across_kill_9() {
    let temp = tempfile::tempdir().unwrap();
    let data_dir = temp.path().join("data");
    let received = Arc::new(Mutex::new(BTreeMap::new()));
    let endpoint = start_receiver(received.clone());
    let published = Arc::new(Mutex::new(Vec::new()));
    let mut rng = rand::rng();

    let server = RealServer::start(&data_dir);
    let created = reqwest::blocking::Client::new()
        .put(format!("{}/v1/subscriptions/hook", server.url))
        .json(
            &json!({"topics": ["orders"], "start": "earliest", "ack_timeout": "5s",
                      "push": {"url": endpoint, "max_in_flight": 16}}),
        )
        .send()
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let mut server = Some(server);
    let mut delivered_before = 0;
    for round in 0..KILLS {
        let running = server
            .take()
            .unwrap_or_else(|| RealServer::start(&data_dir));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (url, stop, published) = (running.url.clone(), stop.clone(), published.clone());
            std::thread::spawn(move || publisher(url, round, stop, published))
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1200)));
        let delivered_before_kill = received.lock().unwrap().len();
        running.kill();
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert!(
            delivered_before_kill > delivered_before,
            "round {round}: deliveries were under way"
        );
        delivered_before = delivered_before_kill;
    }

    // After the last kill, a server that runs to the end delivers what is left.
    let last = RealServer::start(&data_dir);
    let published: BTreeSet<String> = published.lock().unwrap().iter().cloned().collect();
    let started = Instant::now();
    let missing = loop {
        let received = received.lock().unwrap();
        let missing: Vec<&String> = published
            .iter()
            .filter(|id| !received.contains_key(*id))
            .collect();
        if missing.is_empty() || started.elapsed() > Duration::from_secs(60) {
            break missing.len();
        }
        drop(received);
        std::thread::sleep(Duration::from_millis(50));
    };
    let received = received.lock().unwrap();
    let duplicates: u32 = received.values().map(|count| count - 1).sum();
    eprintln!(
        "kills={KILLS} published={} delivered_distinct={} redelivered={duplicates} missing={missing}",
        published.len(),
        received.len()
    );
    assert_eq!(missing, 0, "every acknowledged event reached the endpoint");
    last.kill();
}
