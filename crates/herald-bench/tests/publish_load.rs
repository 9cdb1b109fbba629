//! The publish load generator against a real Herald server running in this process: it stores
//! every event it sends, and a run that repeats another's events fails instead of counting them.

use std::time::{Duration, Instant};

use herald_bench::publish_load::{self, LoadConfig};
use herald_http::{FsyncPolicy, ServerConfig};
use tokio::sync::oneshot;

#[test]
fn the_load_is_stored_and_repeated_events_fail_the_run() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let data = tempfile::tempdir().expect("a temporary directory");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port");
    let base_url = format!("http://{}", listener.local_addr().expect("an address"));
    let config = ServerConfig {
        data_dir: data.path().to_owned(),
        fsync: FsyncPolicy::Never,
        ..ServerConfig::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = runtime.spawn(herald_http::serve(config, listener, async move {
        let _ = stopped.await;
    }));

    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let answer = runtime.block_on(reqwest::get(format!("{base_url}/readyz")));
        if answer.is_ok_and(|answer| answer.status() == reqwest::StatusCode::OK) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready, "the server became ready");
    runtime
        .block_on(publish_load::create_topic(&base_url, "bench", 1))
        .expect("the topic is created");

    let load = LoadConfig {
        base_url: base_url.clone(),
        topic: "bench".to_owned(),
        connections: 2,
        events_per_batch: 5,
        event_bytes: 400,
        warmup: Duration::from_millis(50),
        duration: Duration::from_millis(300),
        run: publish_load::run_tag(),
    };
    let run = publish_load::run_load(&runtime, &load, &|| None).expect("the load runs");
    assert!(run.requests > 0);
    assert_eq!(run.events, run.requests * 5);
    assert_eq!(run.payload_bytes, run.events * 400);
    assert_eq!(run.latencies_micros.len() as u64, run.requests);
    assert!(run.events_total >= run.events);
    assert!(run.bench_cpu_cores.is_some());
    assert!(run.server_cpu_cores.is_none());

    // The topic holds every event answered, warm-up included.
    let topic: serde_json::Value = runtime
        .block_on(async {
            reqwest::get(format!("{base_url}/v1/topics/bench"))
                .await?
                .json()
                .await
        })
        .expect("the topic is described");
    assert_eq!(
        topic["partitions"][0]["end_offset"].as_u64(),
        Some(run.events_total),
        "{topic}"
    );

    // The same run tag sends the same sources and ids again: Herald answers duplicates.
    let error = publish_load::run_load(&runtime, &load, &|| None)
        .expect_err("repeated events fail the run");
    assert!(format!("{error:#}").contains("duplicates"), "{error:#}");

    let _ = stop.send(());
    runtime
        .block_on(server)
        .expect("the server task ends")
        .expect("the server stops cleanly");
}
