//! Publishing in every content mode, batches, deduplication, partition keys and limits.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Server, event, keyed_event};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_content_modes_store_a_cloudevent() {
    let server = Server::start().await;
    let structured = serde_json::to_vec(&event("s-1", json!({"mode": "structured"}))).unwrap();
    let answer = server
        .send(
            Method::POST,
            "/v1/topics/modes/events",
            Some("application/cloudevents+json; charset=utf-8"),
            structured,
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"events": [{"id": "s-1", "partition": 0, "offset": 0, "duplicate": false}]})
    );

    let batch = server
        .publish_batch("modes", &[event("b-1", json!(1)), event("b-2", json!(2))])
        .await;
    assert_eq!(
        batch.body["events"][1],
        json!({"id": "b-2", "partition": 0, "offset": 2, "duplicate": false})
    );

    let binary = server
        .send(
            Method::POST,
            "/v1/topics/modes/events",
            Some("text/plain"),
            b"hello".to_vec(),
            &[
                ("ce-id", "x-1"),
                ("ce-source", "/bin"),
                ("ce-type", "greeting"),
                ("ce-subject", "w%C3%B6rld"),
            ],
        )
        .await;
    assert_eq!(binary.status, StatusCode::CREATED, "{}", binary.body);

    let plain = server
        .send(
            Method::POST,
            "/v1/topics/modes/events",
            Some("application/json"),
            b"{\"n\":5}".to_vec(),
            &[],
        )
        .await;
    assert_eq!(plain.status, StatusCode::CREATED);
    let generated_id = plain.body["events"][0]["id"].as_str().unwrap().to_owned();

    let read = server.read("modes", 0, 0).await;
    let events = read.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 5);
    assert_eq!(
        events[0]["event"],
        event("s-1", json!({"mode": "structured"})),
        "stored as sent"
    );
    assert_eq!(events[3]["event"]["data"], "hello");
    assert_eq!(events[3]["event"]["subject"], "wörld");
    assert_eq!(events[3]["event"]["datacontenttype"], "text/plain");
    let filled = &events[4]["event"];
    assert_eq!(filled["id"], generated_id.as_str());
    assert_eq!(filled["type"], "modes");
    assert_eq!(filled["source"], "/herald/anonymous");
    assert_eq!(filled["data"], json!({"n": 5}));
    assert!(filled["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(read.body["next_offset"], 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_event_is_refused_whole_and_names_it() {
    let server = Server::start().await;
    let bad = json!({"specversion": "1.0", "id": "2", "type": "t"});
    let answer = server
        .publish_batch("orders", &[event("1", json!(1)), bad, event("3", json!(3))])
        .await;
    let detail = answer.problem(400);
    assert!(
        detail.starts_with("event 1:") && detail.contains("\"source\""),
        "{detail}"
    );
    server.get("/v1/topics/orders").await.problem(404);
    server.put_json("/v1/topics/orders", json!({})).await;
    let answer = server
        .publish_batch("orders", &[event("1", json!(1)), json!("not an event")])
        .await;
    answer.problem(400);
    assert_eq!(
        server.get("/v1/topics/orders").await.body["partitions"][0]["end_offset"],
        0,
        "nothing stored"
    );
    let empty = server.publish_batch("orders", &[]).await;
    assert_eq!(empty.status, StatusCode::CREATED);
    assert_eq!(empty.body, json!({"events": []}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_source_and_id_is_stored_once_within_the_window_even_after_a_restart() {
    let server = Server::start().await;
    let first = server
        .publish_batch("orders", &[event("a", json!(1)), event("b", json!(2))])
        .await;
    assert_eq!(first.body["events"][1]["offset"], 1);
    let again = server
        .publish_batch(
            "orders",
            &[
                event("b", json!("changed")),
                event("c", json!(3)),
                event("c", json!(4)),
            ],
        )
        .await;
    assert_eq!(
        again.body["events"],
        json!([
            {"id": "b", "partition": 0, "offset": 1, "duplicate": true},
            {"id": "c", "partition": 0, "offset": 2, "duplicate": false},
            {"id": "c", "partition": 0, "offset": 2, "duplicate": true},
        ])
    );
    // Within one call, the first occurrence is the one stored, whatever the hashes.
    let repeated: Vec<Value> = (0..50)
        .map(|n| event(&format!("d-{n}"), json!({"copy": 1})))
        .chain((0..50).map(|n| event(&format!("d-{n}"), json!({"copy": 2}))))
        .collect();
    let answer = server.publish_batch("orders", &repeated).await;
    let results = answer.body["events"].as_array().unwrap();
    assert!(
        results[..50]
            .iter()
            .all(|result| result["duplicate"] == false)
    );
    assert!(
        results[50..]
            .iter()
            .all(|result| result["duplicate"] == true)
    );
    let stored = server.read("orders", 0, 3).await;
    assert!(
        stored.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|stored| stored["event"]["data"]["copy"] == 1)
    );
    // Same id from another source is another event.
    let other_source =
        json!({"specversion": "1.0", "id": "a", "source": "/elsewhere", "type": "t"});
    let answer = server.publish_batch("orders", &[other_source]).await;
    assert_eq!(answer.body["events"][0]["duplicate"], false);
    let server = server.restart().await;
    let after = server
        .publish_batch("orders", &[event("a", json!(1))])
        .await;
    assert_eq!(
        after.body["events"][0],
        json!({"id": "a", "partition": 0, "offset": 0, "duplicate": true})
    );
    assert_eq!(
        server.read("orders", 0, 0).await.body["events"]
            .as_array()
            .unwrap()
            .len(),
        54
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_of_one_event_store_it_once() {
    let server = Server::start().await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = server.client.clone();
        let url = format!("{}/v1/topics/race/events", server.base);
        tasks.push(tokio::spawn(async move {
            let body =
                serde_json::to_vec(&[event("same", json!(1)), event("other", json!(2))]).unwrap();
            let response = client
                .post(url)
                .header("content-type", "application/cloudevents-batch+json")
                .body(body)
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        }));
    }
    let mut originals = 0;
    for task in tasks {
        let answer = task.await.unwrap();
        assert_eq!(answer["events"][0]["offset"], answer["events"][0]["offset"]);
        originals += answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["duplicate"] == false)
            .count();
    }
    assert_eq!(originals, 2);
    assert_eq!(
        server.read("race", 0, 0).await.body["events"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_keys_pick_kafkas_murmur2_partition() {
    let server = Server::start().await;
    server
        .put_json("/v1/topics/keyed", json!({"partitions": 12}))
        .await;
    let answer = server
        .publish_batch(
            "keyed",
            &[
                keyed_event("1", "21"),
                keyed_event("2", "foobar"),
                keyed_event("3", "21"),
            ],
        )
        .await;
    // Kafka: toPositive(murmur2("21")) % 12 and the same for "foobar".
    let expected = |hash: i64| (hash & 0x7fff_ffff) % 12;
    assert_eq!(
        answer.body["events"][0]["partition"],
        expected(-973_932_308)
    );
    assert_eq!(
        answer.body["events"][1]["partition"],
        expected(-790_332_482)
    );
    assert_eq!(
        answer.body["events"][2]["partition"],
        answer.body["events"][0]["partition"]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_413_and_bad_bodies_400_or_415() {
    let server = Server::start_with(|config| {
        config.event_bytes_max = 1000;
        config.batch_events_max = 3;
        config.body_bytes_max = 8000;
    })
    .await;
    let big = event("big", json!("x".repeat(1000)));
    assert!(
        server
            .publish_batch("t", &[big])
            .await
            .problem(413)
            .contains("event_bytes_max")
    );
    let just_fits = event("fits", json!("x".repeat(880)));
    assert!(serde_json::to_vec(&just_fits).unwrap().len() <= 1000);
    assert_eq!(
        server.publish_batch("t", &[just_fits]).await.status,
        StatusCode::CREATED
    );
    let four: Vec<Value> = (0..4).map(|n| event(&n.to_string(), json!(n))).collect();
    assert!(
        server
            .publish_batch("t", &four)
            .await
            .problem(413)
            .contains("batch_events_max")
    );
    assert_eq!(
        server.publish_batch("t", &four[..3]).await.status,
        StatusCode::CREATED
    );
    let huge = vec![b' '; 9000];
    assert!(
        server
            .send(
                Method::POST,
                "/v1/topics/t/events",
                Some("application/json"),
                huge,
                &[]
            )
            .await
            .problem(413)
            .contains("body_bytes_max")
    );
    server
        .send(
            Method::POST,
            "/v1/topics/t/events",
            Some("application/xml"),
            b"<a/>".to_vec(),
            &[],
        )
        .await
        .problem(415);
    server
        .send(
            Method::POST,
            "/v1/topics/t/events",
            None,
            b"{}".to_vec(),
            &[],
        )
        .await
        .problem(415);
    let not_utf8 = server
        .send(
            Method::POST,
            "/v1/topics/t/events",
            Some("application/cloudevents+json"),
            vec![0xff, 0xfe],
            &[],
        )
        .await;
    assert!(not_utf8.problem(400).contains("UTF-8"));
    let not_json = server
        .send(
            Method::POST,
            "/v1/topics/t/events",
            Some("application/json"),
            b"{oops".to_vec(),
            &[],
        )
        .await;
    assert!(not_json.problem(400).contains("JSON"));
    let missing = server
        .send(
            Method::POST,
            "/v1/topics/t/events",
            Some("text/plain"),
            b"x".to_vec(),
            &[("ce-id", "1"), ("ce-type", "t")],
        )
        .await;
    assert!(missing.problem(400).contains("ce-source"));
    server.publish_batch("bad name", &[]).await.problem(400);
    assert_eq!(
        server.get("/v1/topics/t").await.body["partitions"][0]["end_offset"],
        4,
        "only the accepted events were stored"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_create_an_unknown_topic_is_a_404() {
    let server = Server::start_with(|config| config.auto_create_topics = false).await;
    server
        .publish_batch("nowhere", &[event("1", json!(1))])
        .await
        .problem(404);
    server.stop().await;
}
