//! Queue subscriptions with a paused clock: leases, expiry, stale acks, backoff, dead letters,
//! redrive, key ordering, filters, durability across a reopen.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use herald_core::queue::Settle;
use herald_core::stream::{AckStatus, Delivery, SeekTarget};
use herald_core::subscription::{Mode, Ordering, Retry, Start, SubscriptionSpec};
use herald_core::{
    Broker, BrokerConfig, EventToPublish, LocalStore, ReadFrom, SubscriptionStats, TopicSettings,
};
use herald_log::{LogConfig, OsStorage};
use serde_json::{Value, json};

use crate::{eventually, hang_up_after};

async fn broker(directory: &std::path::Path) -> Arc<Broker> {
    let store = LocalStore::open(directory, LogConfig::default(), OsStorage::shared()).unwrap();
    Broker::open(Arc::new(store), BrokerConfig::default())
        .await
        .unwrap()
}

/// Publishes events `{"id": id, "type": type, "partitionkey": key}` to `topic`.
async fn publish(broker: &Arc<Broker>, topic: &str, events: &[(&str, &str, Option<&str>)]) {
    let bodies: Vec<Vec<u8>> = events
        .iter()
        .map(|(id, event_type, key)| {
            let mut event =
                json!({"specversion": "1.0", "id": id, "source": "/test", "type": event_type});
            if let Some(key) = key {
                event["partitionkey"] = json!(key);
            }
            serde_json::to_vec(&event).unwrap()
        })
        .collect();
    let to_publish: Vec<EventToPublish<'_>> = events
        .iter()
        .zip(&bodies)
        .map(|((id, event_type, key), body)| EventToPublish {
            id: Cow::Borrowed(id),
            source: Cow::Borrowed("/test"),
            event_type: Cow::Borrowed(event_type),
            partition_key: key.map(Cow::Borrowed),
            body,
        })
        .collect();
    broker.publish(topic, &to_publish, None).await.unwrap();
}

fn queue_spec(name: &str, topic: &str) -> SubscriptionSpec {
    SubscriptionSpec {
        mode: Mode::Queue,
        start: Start::Earliest,
        ack_timeout_ms: 30_000,
        max_deliveries: 3,
        retry: Retry {
            initial_ms: 1_000,
            max_ms: 60_000,
            multiplier: 2.0,
        },
        ..SubscriptionSpec::with_defaults(name, vec![topic.to_owned()])
    }
}

async fn pull(broker: &Arc<Broker>, name: &str, consumer: &str, max: usize) -> Vec<Delivery> {
    broker
        .pull(name, consumer, max, Duration::ZERO, None)
        .await
        .unwrap()
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| {
            let event: Value = serde_json::from_slice(&delivery.event.event).unwrap();
            event["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn receipts(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|delivery| delivery.receipt.clone())
        .collect()
}

async fn queue_stats(broker: &Arc<Broker>, name: &str) -> herald_core::queue::QueueStats {
    match broker
        .subscription_stats(&broker.subscription(name).unwrap())
        .await
    {
        SubscriptionStats::Queue(stats) => stats,
        SubscriptionStats::Stream(_) => panic!("a queue subscription"),
    }
}

async fn setup(directory: &std::path::Path, spec: SubscriptionSpec) -> Arc<Broker> {
    let broker = broker(directory).await;
    broker
        .create_topic("jobs", TopicSettings::default())
        .await
        .unwrap();
    broker.create_subscription("workers", spec).await.unwrap();
    tokio::time::pause();
    broker
}

#[tokio::test(flavor = "current_thread")]
async fn a_leased_event_goes_to_no_one_else_until_its_lease_expires_then_comes_back() {
    let directory = tempfile::tempdir().unwrap();
    let broker = setup(directory.path(), queue_spec("workers", "jobs")).await;
    publish(&broker, "jobs", &[("a", "job", None), ("b", "job", None)]).await;
    let first = pull(&broker, "workers", "w1", 10).await;
    assert_eq!(ids(&first), ["a", "b"]);
    assert!(first.iter().all(|delivery| delivery.attempt == 1));
    assert!(
        pull(&broker, "workers", "w2", 10).await.is_empty(),
        "leased: not handed out again"
    );
    assert_eq!(queue_stats(&broker, "workers").await.in_flight, 2);
    // Ack one; let the other's lease run out.
    assert_eq!(
        broker
            .ack(
                "workers",
                &first[..1]
                    .iter()
                    .map(|d| d.receipt.clone())
                    .collect::<Vec<_>>(),
                None
            )
            .await
            .unwrap(),
        [AckStatus::Ok]
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        pull(&broker, "workers", "w2", 10).await.is_empty(),
        "expired, but waits out its backoff (at least half of 1s)"
    );
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let again = pull(&broker, "workers", "w2", 10).await;
    assert_eq!(ids(&again), ["b"], "only the unacked one comes back");
    assert_eq!(again[0].attempt, 2);
    // The first lease's receipt is stale now; an unknown one is unknown.
    let statuses = broker
        .ack(
            "workers",
            &[
                first[1].receipt.clone(),
                "nonsense".into(),
                first[0].receipt.clone(),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        statuses,
        [AckStatus::Stale, AckStatus::Unknown, AckStatus::Stale]
    );
    assert_eq!(
        broker
            .ack("workers", &receipts(&again), None)
            .await
            .unwrap(),
        [AckStatus::Ok]
    );
    let stats = queue_stats(&broker, "workers").await;
    assert_eq!(
        (
            stats.backlog,
            stats.in_flight,
            stats.delivered,
            stats.acked,
            stats.redelivered
        ),
        (0, 0, 3, 2, 1)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn nack_with_a_delay_or_with_backoff_and_extend() {
    let directory = tempfile::tempdir().unwrap();
    let broker = setup(directory.path(), queue_spec("workers", "jobs")).await;
    publish(
        &broker,
        "jobs",
        &[("a", "job", None), ("b", "job", None), ("c", "job", None)],
    )
    .await;
    let leased = pull(&broker, "workers", "w", 10).await;
    let [a, b, c] = [&leased[0], &leased[1], &leased[2]];
    let nacked = broker
        .settle(
            "workers",
            std::slice::from_ref(&a.receipt),
            Settle::Nack {
                delay: Some(Duration::from_secs(10)),
            },
        )
        .await
        .unwrap();
    assert_eq!(nacked, [AckStatus::Ok]);
    broker
        .settle(
            "workers",
            std::slice::from_ref(&b.receipt),
            Settle::Nack { delay: None },
        )
        .await
        .unwrap();
    broker
        .settle(
            "workers",
            std::slice::from_ref(&c.receipt),
            Settle::Extend {
                by: Duration::from_secs(60),
            },
        )
        .await
        .unwrap();
    // Backoff after the first attempt: between 0.5s and 1s (initial 1s with equal jitter).
    tokio::time::advance(Duration::from_millis(499)).await;
    assert!(pull(&broker, "workers", "w", 10).await.is_empty());
    tokio::time::advance(Duration::from_millis(502)).await;
    assert_eq!(ids(&pull(&broker, "workers", "w", 10).await), ["b"]);
    tokio::time::advance(Duration::from_secs(9)).await;
    let after_delay = pull(&broker, "workers", "w", 10).await;
    assert_eq!(ids(&after_delay), ["a"]);
    assert_eq!(after_delay[0].attempt, 2);
    // c's lease was extended to 90s: still valid at 40s.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(
        broker
            .ack("workers", std::slice::from_ref(&c.receipt), None)
            .await
            .unwrap(),
        [AckStatus::Ok]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_max_deliveries_th_failure_and_a_reject_dead_letter_and_redrive_brings_them_back_here_only()
 {
    let directory = tempfile::tempdir().unwrap();
    let broker = setup(directory.path(), queue_spec("workers", "jobs")).await;
    broker
        .create_subscription("auditors", queue_spec("auditors", "jobs"))
        .await
        .unwrap();
    publish(
        &broker,
        "jobs",
        &[("poison", "job", None), ("bad", "job", None)],
    )
    .await;
    let first = pull(&broker, "workers", "w", 10).await;
    broker
        .settle(
            "workers",
            &[first[1].receipt.clone()],
            Settle::Reject {
                reason: "cannot parse".into(),
            },
        )
        .await
        .unwrap();
    let mut poison = first[0].clone();
    for attempt in 1..=3 {
        assert_eq!(poison.attempt, attempt);
        broker
            .settle(
                "workers",
                &[poison.receipt.clone()],
                Settle::Nack {
                    delay: Some(Duration::ZERO),
                },
            )
            .await
            .unwrap();
        let next = pull(&broker, "workers", "w", 10).await;
        if attempt < 3 {
            poison = next[0].clone();
        } else {
            assert!(
                next.is_empty(),
                "dead-lettered after its third failed attempt"
            );
        }
    }
    let stats = queue_stats(&broker, "workers").await;
    assert_eq!(
        (stats.dead_lettered, stats.backlog, stats.in_flight),
        (2, 0, 0)
    );
    let dead = broker
        .read("workers.dlq", 0, ReadFrom::Offset(0), 10, Duration::ZERO)
        .await
        .unwrap();
    let dead: Vec<Value> = dead
        .events
        .iter()
        .map(|event| serde_json::from_slice(&event.event).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["id"], "bad");
    assert_eq!(dead[0]["deadletterreason"], "rejected: cannot parse");
    assert_eq!(dead[0]["deadlettersubscription"], "workers");
    assert_eq!(
        (
            dead[0]["origintopic"].clone(),
            dead[0]["originpartition"].clone(),
            dead[0]["originoffset"].clone()
        ),
        (json!("jobs"), json!(0), json!(1))
    );
    assert!(
        dead[1]["deadletterreason"]
            .as_str()
            .unwrap()
            .starts_with("max_deliveries")
    );
    // Redrive: back into this subscription, not into the other one.
    // Two redrives at once move each dead letter once between them.
    let (first, second) =
        tokio::join!(broker.redrive("workers", 10), broker.redrive("workers", 10));
    assert_eq!(first.unwrap() + second.unwrap(), 2);
    assert_eq!(
        broker.redrive("workers", 10).await.unwrap(),
        0,
        "each dead letter is redriven once"
    );
    let redriven = pull(&broker, "workers", "w", 10).await;
    assert_eq!(ids(&redriven), ["bad", "poison"]);
    assert_eq!(redriven[0].attempt, 1);
    let auditors = pull(&broker, "auditors", "a", 10).await;
    assert_eq!(
        ids(&auditors),
        ["poison", "bad"],
        "the other subscription sees only the originals"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn with_key_ordering_one_event_per_key_is_out_at_a_time_in_offset_order() {
    let directory = tempfile::tempdir().unwrap();
    let spec = SubscriptionSpec {
        ordering: Ordering::Key,
        ..queue_spec("workers", "jobs")
    };
    let broker = setup(directory.path(), spec).await;
    publish(
        &broker,
        "jobs",
        &[
            ("k1-a", "job", Some("k1")),
            ("k2-a", "job", Some("k2")),
            ("k1-b", "job", Some("k1")),
            ("none", "job", None),
            ("k1-c", "job", Some("k1")),
        ],
    )
    .await;
    let first = pull(&broker, "workers", "w", 10).await;
    assert_eq!(
        ids(&first),
        ["k1-a", "k2-a", "none"],
        "different keys in parallel, one per key"
    );
    // A nacked k1-a keeps k1-b waiting (the next one waits for the previous one's ack).
    broker
        .settle(
            "workers",
            &[first[0].receipt.clone()],
            Settle::Nack {
                delay: Some(Duration::ZERO),
            },
        )
        .await
        .unwrap();
    let second = pull(&broker, "workers", "w", 10).await;
    assert_eq!(ids(&second), ["k1-a"]);
    broker
        .ack("workers", &receipts(&second), None)
        .await
        .unwrap();
    assert_eq!(ids(&pull(&broker, "workers", "w", 10).await), ["k1-b"]);
}

#[tokio::test(flavor = "current_thread")]
async fn events_the_filter_refuses_are_skipped() {
    let directory = tempfile::tempdir().unwrap();
    let spec = SubscriptionSpec {
        filter: Some(
            json!({"any": [{"prefix": {"type": "order."}}, {"exact": {"id": "special"}}]}),
        ),
        ..queue_spec("workers", "jobs")
    };
    let broker = setup(directory.path(), spec).await;
    publish(
        &broker,
        "jobs",
        &[
            ("1", "order.created", None),
            ("2", "payment.taken", None),
            ("special", "other", None),
            ("4", "order.paid", None),
        ],
    )
    .await;
    let delivered = pull(&broker, "workers", "w", 10).await;
    assert_eq!(ids(&delivered), ["1", "special", "4"]);
    broker
        .ack("workers", &receipts(&delivered), None)
        .await
        .unwrap();
    assert_eq!(queue_stats(&broker, "workers").await.backlog, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn acks_survive_a_reopen_and_unacked_events_come_back() {
    let directory = tempfile::tempdir().unwrap();
    {
        let broker = setup(directory.path(), queue_spec("workers", "jobs")).await;
        publish(
            &broker,
            "jobs",
            &[
                ("1", "t", None),
                ("2", "t", None),
                ("3", "t", None),
                ("4", "t", None),
            ],
        )
        .await;
        let delivered = pull(&broker, "workers", "w", 10).await;
        // Out of order: 2 and 4 acked, 1 nacked (a retry row), 3 left leased.
        broker
            .ack(
                "workers",
                &[delivered[1].receipt.clone(), delivered[3].receipt.clone()],
                None,
            )
            .await
            .unwrap();
        broker
            .settle(
                "workers",
                &[delivered[0].receipt.clone()],
                Settle::Nack {
                    delay: Some(Duration::ZERO),
                },
            )
            .await
            .unwrap();
        broker.shutdown().await.unwrap();
    }
    let broker = broker(directory.path()).await;
    let again = pull(&broker, "workers", "w", 10).await;
    assert_eq!(
        ids(&again),
        ["1", "3"],
        "acked events never again; the others all come back"
    );
    assert_eq!(again[0].attempt, 2, "a nack's attempt count is durable");
    broker
        .ack("workers", &receipts(&again), None)
        .await
        .unwrap();
    broker.shutdown().await.unwrap();
    let broker = self::broker(directory.path()).await;
    assert!(pull(&broker, "workers", "w", 10).await.is_empty());
    assert_eq!(queue_stats(&broker, "workers").await.backlog, 0);
}

#[tokio::test(flavor = "current_thread")]
async fn seek_acknowledges_before_the_target_and_makes_the_rest_pending_again() {
    let directory = tempfile::tempdir().unwrap();
    let broker = setup(directory.path(), queue_spec("workers", "jobs")).await;
    publish(
        &broker,
        "jobs",
        &[("1", "t", None), ("2", "t", None), ("3", "t", None)],
    )
    .await;
    let delivered = pull(&broker, "workers", "w", 10).await;
    broker
        .ack("workers", &receipts(&delivered), None)
        .await
        .unwrap();
    broker
        .seek(
            "workers",
            SeekTarget::Offset {
                topic: None,
                partition: 0,
                offset: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&pull(&broker, "workers", "w", 10).await), ["2", "3"]);
    broker.seek("workers", SeekTarget::Latest).await.unwrap();
    assert!(pull(&broker, "workers", "w", 10).await.is_empty());
    assert_eq!(
        queue_stats(&broker, "workers").await.in_flight,
        0,
        "leases before a seek are void"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_backlog_is_read_through_a_bounded_window() {
    let directory = tempfile::tempdir().unwrap();
    let broker = setup(directory.path(), queue_spec("workers", "jobs")).await;
    let count = herald_core::queue::WINDOW_EVENTS_MAX as usize + 500;
    let ids_owned: Vec<String> = (0..count).map(|n| n.to_string()).collect();
    for chunk in ids_owned.chunks(1000) {
        let events: Vec<(&str, &str, Option<&str>)> =
            chunk.iter().map(|id| (id.as_str(), "t", None)).collect();
        publish(&broker, "jobs", &events).await;
    }
    // The first event stays leased: the window stops growing at WINDOW_EVENTS_MAX past it.
    let stuck = pull(&broker, "workers", "stuck", 1).await;
    let mut delivered = 1;
    loop {
        let batch = pull(&broker, "workers", "w", 1000).await;
        if batch.is_empty() {
            break;
        }
        delivered += batch.len();
        broker
            .ack("workers", &receipts(&batch), None)
            .await
            .unwrap();
    }
    assert_eq!(
        delivered as u64,
        herald_core::queue::WINDOW_EVENTS_MAX,
        "held back by the stuck event"
    );
    broker
        .ack("workers", &receipts(&stuck), None)
        .await
        .unwrap();
    let rest = pull(&broker, "workers", "w", 1000).await;
    assert_eq!(rest.len(), 500, "the rest flows once the floor moves");
}

#[tokio::test(flavor = "current_thread")]
async fn retention_keeps_every_segment_a_queue_still_needs() {
    let directory = tempfile::tempdir().unwrap();
    let log_config = LogConfig {
        segment_bytes_max: 4096,
        batch_bytes_max: 4096,
        record_bytes_max: 4096,
        ..LogConfig::default()
    };
    let store = LocalStore::open(directory.path(), log_config, OsStorage::shared()).unwrap();
    let broker = Broker::open(Arc::new(store), BrokerConfig::default())
        .await
        .unwrap();
    let settings = TopicSettings {
        retention_bytes_max: Some(1),
        retention_age_max: None,
        ..TopicSettings::default()
    };
    broker.create_topic("jobs", settings).await.unwrap();
    broker
        .create_subscription("workers", queue_spec("workers", "jobs"))
        .await
        .unwrap();
    let ids: Vec<String> = (0..200).map(|n| n.to_string()).collect();
    for chunk in ids.chunks(10) {
        let events: Vec<(&str, &str, Option<&str>)> =
            chunk.iter().map(|id| (id.as_str(), "t", None)).collect();
        publish(&broker, "jobs", &events).await;
    }
    // The first event stays unfinished (leased); everything after it is acked.
    let first = pull(&broker, "workers", "slow", 1).await;
    loop {
        let batch = pull(&broker, "workers", "fast", 100).await;
        if batch.is_empty() {
            break;
        }
        broker
            .ack("workers", &receipts(&batch), None)
            .await
            .unwrap();
    }
    broker.apply_retention().await.unwrap();
    let start = broker.topic_info(&broker.topic("jobs").unwrap()).partitions[0].start_offset;
    assert_eq!(start, 0, "the segment holding the unfinished event stays");
    broker
        .ack("workers", &receipts(&first), None)
        .await
        .unwrap();
    let deleted = broker.apply_retention().await.unwrap();
    assert!(deleted > 0);
    let start = broker.topic_info(&broker.topic("jobs").unwrap()).partitions[0].start_offset;
    assert!(
        start > 0,
        "once done, the queue no longer holds the segments back"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_match_behind_a_long_run_of_filtered_events_is_found_by_one_pull() {
    let directory = tempfile::tempdir().unwrap();
    let spec = SubscriptionSpec {
        filter: Some(json!({"exact": {"type": "wanted"}})),
        ..queue_spec("workers", "jobs")
    };
    let broker = setup(directory.path(), spec).await;
    let names: Vec<String> = (0..30_000).map(|n| n.to_string()).collect();
    for chunk in names.chunks(1000) {
        let events: Vec<(&str, &str, Option<&str>)> = chunk
            .iter()
            .map(|id| (id.as_str(), "other", None))
            .collect();
        publish(&broker, "jobs", &events).await;
    }
    publish(&broker, "jobs", &[("needle", "wanted", None)]).await;
    // More than a window's worth of refused events (several reads of the log) lie before it.
    let found = pull(&broker, "workers", "w", 10).await;
    assert_eq!(ids(&found), ["needle"]);
}

/// Like `setup`, on the real clock: for callers that hang up, whose work goes on in tasks of its
/// own (a paused clock would jump ahead whenever they wait for the disk).
async fn setup_on_real_time(directory: &std::path::Path, spec: SubscriptionSpec) -> Arc<Broker> {
    let broker = broker(directory).await;
    broker
        .create_topic("jobs", TopicSettings::default())
        .await
        .unwrap();
    broker.create_subscription("workers", spec).await.unwrap();
    broker
}

/// The ids of the events in a topic (every partition 0 event), and whether each names its
/// origin offset.
async fn topic_ids(broker: &Arc<Broker>, topic: &str) -> Vec<String> {
    match broker
        .read(topic, 0, ReadFrom::Offset(0), 1000, Duration::ZERO)
        .await
    {
        Ok(read) => read
            .events
            .iter()
            .map(|stored| {
                let event: Value = serde_json::from_slice(&stored.event).unwrap();
                event["id"].as_str().unwrap().to_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_a_nack_or_a_reject_whose_caller_hangs_up_at_any_await_still_takes_effect_once() {
    let directory = tempfile::tempdir().unwrap();
    let spec = SubscriptionSpec {
        dead_letter_topic: "jobs.dlq".into(),
        ..queue_spec("workers", "jobs")
    };
    let broker = setup_on_real_time(directory.path(), spec).await;
    for pendings in 0..8 {
        for action in ["ack", "nack", "reject"] {
            let id = format!("{action}-{pendings}");
            publish(&broker, "jobs", &[(&id, "job", None)]).await;
            let delivered = pull(&broker, "workers", "w", 10).await;
            assert_eq!(ids(&delivered), [id.as_str()]);
            let receipt = receipts(&delivered);
            let settle = match action {
                "ack" => Settle::Ack,
                "nack" => Settle::Nack {
                    delay: Some(Duration::ZERO),
                },
                _ => Settle::Reject {
                    reason: "bad".into(),
                },
            };
            let call = {
                let broker = broker.clone();
                async move {
                    match settle {
                        Settle::Ack => broker.ack("workers", &receipt, None).await,
                        other => broker.settle("workers", &receipt, other).await,
                    }
                }
            };
            if let Some(answer) = hang_up_after(call, pendings).await {
                assert_eq!(answer.unwrap(), [AckStatus::Ok]);
            }
            match action {
                "ack" => {
                    eventually(&format!("{id} acked"), || async {
                        let stats = queue_stats(&broker, "workers").await;
                        (stats.in_flight == 0 && stats.backlog == 0).then_some(())
                    })
                    .await;
                }
                "nack" => {
                    // Comes back at once (delay 0), as its second attempt; then acked.
                    let again = eventually(&format!("{id} back after its nack"), || async {
                        let again = pull(&broker, "workers", "w", 10).await;
                        (!again.is_empty()).then_some(again)
                    })
                    .await;
                    assert_eq!(ids(&again), [id.as_str()]);
                    assert_eq!(again[0].attempt, 2);
                    broker
                        .ack("workers", &receipts(&again), None)
                        .await
                        .unwrap();
                }
                _ => {
                    eventually(&format!("{id} dead-lettered"), || async {
                        let stats = queue_stats(&broker, "workers").await;
                        (stats.in_flight == 0 && stats.backlog == 0).then_some(())
                    })
                    .await;
                    let dead = topic_ids(&broker, "jobs.dlq").await;
                    assert_eq!(
                        dead.iter().filter(|dead| **dead == id).count(),
                        1,
                        "{id}: one dead letter"
                    );
                }
            }
            assert!(
                pull(&broker, "workers", "w", 10).await.is_empty(),
                "{id}: nothing comes back that was settled"
            );
        }
    }
    assert_eq!(queue_stats(&broker, "workers").await.acked, 16);
    assert_eq!(queue_stats(&broker, "workers").await.dead_lettered, 8);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_whose_caller_hangs_up_before_the_answer_gives_its_leases_back() {
    let directory = tempfile::tempdir().unwrap();
    let broker = setup_on_real_time(directory.path(), queue_spec("workers", "jobs")).await;
    let mut given_back = 0;
    for pendings in 0..6 {
        // Fresh events each time, so the pull reads them into its window, leases them, then
        // reads them again for the answer: it can be dropped before or after it leased them.
        let (a, b) = (format!("a-{pendings}"), format!("b-{pendings}"));
        publish(&broker, "jobs", &[(&a, "job", None), (&b, "job", None)]).await;
        let call = broker.pull("workers", "gone", 10, Duration::ZERO, None);
        if let Some(answered) = hang_up_after(call, pendings).await {
            // Answered before the hang-up: handed out, so leased to the caller.
            let answered = answered.unwrap();
            assert_eq!(ids(&answered), [a.as_str(), b.as_str()]);
            assert!(pull(&broker, "workers", "w", 10).await.is_empty());
            broker
                .ack("workers", &receipts(&answered), None)
                .await
                .unwrap();
            continue;
        }
        // Dropped: whatever it leased is pending again at once, its attempt not counted.
        let next = pull(&broker, "workers", "w", 10).await;
        assert_eq!(
            ids(&next),
            [a.as_str(), b.as_str()],
            "given back after {pendings} awaits"
        );
        assert!(next.iter().all(|delivery| delivery.attempt == 1));
        broker.ack("workers", &receipts(&next), None).await.unwrap();
        given_back += 1;
    }
    assert!(given_back > 0, "some pull was dropped before it answered");
    assert_eq!(queue_stats(&broker, "workers").await.delivered, 12);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_dropped_while_it_dead_letters_an_expired_lease_still_dead_letters_it() {
    let directory = tempfile::tempdir().unwrap();
    let spec = SubscriptionSpec {
        ack_timeout_ms: 20,
        max_deliveries: 1,
        dead_letter_topic: "jobs.dlq".into(),
        ..queue_spec("workers", "jobs")
    };
    let broker = setup_on_real_time(directory.path(), spec).await;
    for pendings in 0..6 {
        let id = format!("e-{pendings}");
        publish(&broker, "jobs", &[(&id, "job", None)]).await;
        assert_eq!(ids(&pull(&broker, "workers", "w", 10).await), [id.as_str()]);
        tokio::time::sleep(Duration::from_millis(30)).await;
        // This pull finds the lease expired at its last attempt and dead-letters it.
        let call = broker.pull("workers", "w", 10, Duration::from_secs(1), None);
        hang_up_after(call, pendings).await;
        eventually(&format!("{id} dead-lettered"), || async {
            let stats = queue_stats(&broker, "workers").await;
            (stats.in_flight == 0 && stats.backlog == 0).then_some(())
        })
        .await;
        let dead = topic_ids(&broker, "jobs.dlq").await;
        assert_eq!(dead.iter().filter(|dead| **dead == id).count(), 1);
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_cannot_be_stored_changes_nothing_in_memory() {
    let directory = tempfile::tempdir().unwrap();
    let broker = setup_on_real_time(directory.path(), queue_spec("workers", "jobs")).await;
    publish(&broker, "jobs", &[("a", "job", None)]).await;
    let delivered = pull(&broker, "workers", "w", 10).await;
    // The metadata store goes away under the broker: every commit fails from here on.
    broker.store().close().unwrap();
    assert!(
        broker
            .ack("workers", &receipts(&delivered), None)
            .await
            .is_err()
    );
    let stats = queue_stats(&broker, "workers").await;
    assert_eq!(
        (stats.in_flight, stats.acked),
        (1, 0),
        "the ack was not stored, so the event is still leased, not done"
    );
    assert!(
        broker
            .settle(
                "workers",
                &receipts(&delivered),
                Settle::Reject {
                    reason: "bad".into()
                }
            )
            .await
            .is_err()
    );
    let stats = queue_stats(&broker, "workers").await;
    assert_eq!((stats.in_flight, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_subscription_deletes_its_redrive_topic_and_one_made_again_starts_clean() {
    let directory = tempfile::tempdir().unwrap();
    let spec = SubscriptionSpec {
        dead_letter_topic: "jobs.dlq".into(),
        ..queue_spec("workers", "jobs")
    };
    let broker = setup_on_real_time(directory.path(), spec.clone()).await;
    publish(&broker, "jobs", &[("a", "job", None)]).await;
    let delivered = pull(&broker, "workers", "w", 10).await;
    let reject = Settle::Reject {
        reason: "bad".into(),
    };
    broker
        .settle("workers", &receipts(&delivered), reject.clone())
        .await
        .unwrap();
    assert_eq!(broker.redrive("workers", 100).await.unwrap(), 1);
    let redriven = pull(&broker, "workers", "w", 10).await;
    assert_eq!(ids(&redriven), ["a"]);
    broker
        .ack("workers", &receipts(&redriven), None)
        .await
        .unwrap();
    assert!(broker.topic("_redrive.workers").is_ok());

    broker.delete_subscription("workers").await.unwrap();
    assert!(
        broker.topic("_redrive.workers").is_err(),
        "the redrive topic goes with its subscription"
    );
    let fresh = SubscriptionSpec {
        start: Start::Latest,
        ..spec
    };
    broker.create_subscription("workers", fresh).await.unwrap();
    assert!(
        pull(&broker, "workers", "w", 10).await.is_empty(),
        "a new subscription from latest gets nothing of the old one's"
    );
    assert_eq!(
        broker.redrive("workers", 100).await.unwrap(),
        0,
        "the old dead letter was redriven already: not a second time"
    );
    // Its own dead letters redrive as usual.
    publish(&broker, "jobs", &[("b", "job", None)]).await;
    let delivered = pull(&broker, "workers", "w", 10).await;
    assert_eq!(ids(&delivered), ["b"]);
    broker
        .settle("workers", &receipts(&delivered), reject)
        .await
        .unwrap();
    assert_eq!(broker.redrive("workers", 100).await.unwrap(), 1);
    assert_eq!(ids(&pull(&broker, "workers", "w", 10).await), ["b"]);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counters_of_a_subscription_survive_a_restart() {
    let directory = tempfile::tempdir().unwrap();
    let before = {
        let spec = SubscriptionSpec {
            dead_letter_topic: "jobs.dlq".into(),
            ..queue_spec("workers", "jobs")
        };
        let broker = setup_on_real_time(directory.path(), spec).await;
        publish(
            &broker,
            "jobs",
            &[("a", "job", None), ("b", "job", None), ("c", "job", None)],
        )
        .await;
        let delivered = pull(&broker, "workers", "w", 10).await;
        broker
            .ack("workers", &receipts(&delivered[..1]), None)
            .await
            .unwrap();
        broker
            .settle(
                "workers",
                &receipts(&delivered[1..2]),
                Settle::Nack {
                    delay: Some(Duration::ZERO),
                },
            )
            .await
            .unwrap();
        broker
            .settle(
                "workers",
                &receipts(&delivered[2..]),
                Settle::Reject {
                    reason: "bad".into(),
                },
            )
            .await
            .unwrap();
        let again = pull(&broker, "workers", "w", 10).await;
        assert_eq!(ids(&again), ["b"]);
        let stats = queue_stats(&broker, "workers").await;
        assert_eq!(
            (
                stats.delivered,
                stats.acked,
                stats.redelivered,
                stats.dead_lettered
            ),
            (4, 1, 1, 1)
        );
        broker.shutdown().await.unwrap();
        stats
    };
    let broker = broker(directory.path()).await;
    let after = queue_stats(&broker, "workers").await;
    assert_eq!(
        (
            after.delivered,
            after.acked,
            after.redelivered,
            after.dead_lettered
        ),
        (
            before.delivered,
            before.acked,
            before.redelivered,
            before.dead_lettered
        ),
        "the counters are the same after a restart"
    );
    broker.shutdown().await.unwrap();
}
