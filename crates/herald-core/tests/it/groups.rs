//! Stream groups: membership by recent pulls, expiry after `ack_timeout`, commits through the
//! store.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use herald_core::stream::AckStatus;
use herald_core::subscription::{Mode, Start, SubscriptionSpec};
use herald_core::{
    Broker, BrokerConfig, EventToPublish, LocalStore, SubscriptionStats, TopicSettings,
};
use herald_log::{LogConfig, OsStorage};

async fn broker(directory: &std::path::Path) -> Arc<Broker> {
    let store = LocalStore::open(directory, LogConfig::default(), OsStorage::shared()).unwrap();
    Broker::open(Arc::new(store), BrokerConfig::default())
        .await
        .unwrap()
}

fn event(id: &str) -> (String, Vec<u8>) {
    let body = format!(r#"{{"specversion":"1.0","id":"{id}","source":"/t","type":"t"}}"#);
    (id.to_owned(), body.into_bytes())
}

async fn publish_to_each_partition(broker: &Arc<Broker>, topic: &str, partitions: u32) {
    for partition in 0..partitions {
        let (id, body) = event(&format!("e-{partition}"));
        let events = [EventToPublish {
            id: Cow::Borrowed(&id),
            source: Cow::Borrowed("/t"),
            event_type: Cow::Borrowed("t"),
            partition_key: None,
            body: &body,
        }];
        // Unkeyed publishes go to the partitions in turn.
        broker.publish(topic, &events, None).await.unwrap();
    }
}

fn stream_spec(topic: &str, ack_timeout_ms: u64) -> SubscriptionSpec {
    SubscriptionSpec {
        mode: Mode::Stream,
        start: Start::Earliest,
        ack_timeout_ms,
        ..SubscriptionSpec::with_defaults("group", vec![topic.to_owned()])
    }
}

async fn stream_stats(broker: &Arc<Broker>) -> herald_core::stream::StreamStats {
    match broker
        .subscription_stats(&broker.subscription("group").unwrap())
        .await
    {
        SubscriptionStats::Stream(stats) => stats,
        SubscriptionStats::Queue(_) => panic!("a stream subscription"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_consumer_silent_for_longer_than_ack_timeout_loses_its_partitions() {
    let directory = tempfile::tempdir().unwrap();
    let broker = broker(directory.path()).await;
    broker
        .create_topic(
            "work",
            TopicSettings {
                partitions: 4,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    publish_to_each_partition(&broker, "work", 4).await;
    broker
        .create_subscription("group", stream_spec("work", 30_000))
        .await
        .unwrap();
    tokio::time::pause();

    let a = broker
        .pull("group", "a", 100, Duration::ZERO, None)
        .await
        .unwrap();
    assert_eq!(a.len(), 4);
    let b = broker
        .pull("group", "b", 100, Duration::ZERO, None)
        .await
        .unwrap();
    let b_partitions: BTreeSet<u32> = b.iter().map(|delivery| delivery.event.partition).collect();
    assert_eq!(b_partitions.len(), 2, "b shares the group with a");
    let a_receipt_of_kept_partition = a
        .iter()
        .find(|delivery| !b_partitions.contains(&delivery.event.partition))
        .unwrap()
        .receipt
        .clone();

    // a stays silent past ack_timeout; b keeps pulling and takes everything.
    tokio::time::advance(Duration::from_secs(31)).await;
    let b_again = broker
        .pull("group", "b", 100, Duration::ZERO, None)
        .await
        .unwrap();
    let now_owned: BTreeSet<u32> = b_again
        .iter()
        .map(|delivery| delivery.event.partition)
        .collect();
    assert_eq!(
        now_owned.len(),
        4,
        "a's two partitions come to b from their committed positions, and b's own uncommitted \
         hand-outs, older than ack_timeout, count as lost and come again"
    );
    assert!(
        b_again.iter().all(|delivery| delivery.event.offset == 0),
        "everything from the committed positions (nothing was committed)"
    );
    let stats = stream_stats(&broker).await;
    assert_eq!(stats.consumers.len(), 1);
    assert_eq!(stats.consumers[0].partitions.len(), 4);
    // a's late ack is stale: its partition has moved.
    let statuses = broker
        .ack("group", &[a_receipt_of_kept_partition], None)
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Stale]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_consumer_within_ack_timeout_keeps_its_partitions() {
    let directory = tempfile::tempdir().unwrap();
    let broker = broker(directory.path()).await;
    broker
        .create_topic(
            "work",
            TopicSettings {
                partitions: 2,
                ..TopicSettings::default()
            },
        )
        .await
        .unwrap();
    publish_to_each_partition(&broker, "work", 2).await;
    broker
        .create_subscription("group", stream_spec("work", 30_000))
        .await
        .unwrap();
    tokio::time::pause();
    let a = broker
        .pull("group", "a", 100, Duration::ZERO, None)
        .await
        .unwrap();
    broker
        .pull("group", "b", 100, Duration::ZERO, None)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(29)).await;
    broker
        .pull("group", "b", 100, Duration::ZERO, None)
        .await
        .unwrap();
    let kept = a
        .iter()
        .find(|delivery| delivery.event.partition == 0)
        .map(|delivery| delivery.receipt.clone())
        .unwrap();
    let statuses = broker.ack("group", &[kept], None).await.unwrap();
    assert_eq!(statuses, [AckStatus::Ok], "a still owns partition 0");
    let stats = stream_stats(&broker).await;
    assert_eq!(stats.consumers.len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn deliveries_never_committed_are_handed_out_again_after_ack_timeout() {
    let directory = tempfile::tempdir().unwrap();
    let broker = broker(directory.path()).await;
    broker
        .create_topic("work", TopicSettings::default())
        .await
        .unwrap();
    publish_to_each_partition(&broker, "work", 1).await;
    broker
        .create_subscription("group", stream_spec("work", 30_000))
        .await
        .unwrap();
    tokio::time::pause();
    let first = broker
        .pull("group", "a", 100, Duration::ZERO, None)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    // The answer never reached the consumer; it pulls again at once, and again: nothing new.
    assert!(
        broker
            .pull("group", "a", 100, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty(),
        "a fetch moves on without a commit, as in Kafka"
    );
    // A long poll from then on: when the hand-out counts as lost (ack_timeout after it), the
    // event comes again, before the poll's own 60 s are over.
    let started = tokio::time::Instant::now();
    let again = broker
        .pull("group", "a", 100, Duration::from_secs(60), None)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "handed out again");
    assert_eq!(again[0].event.offset, first[0].event.offset);
    assert!(started.elapsed() < Duration::from_secs(31));
    // Committed: nothing is handed out again, however long the consumer waits.
    let statuses = broker
        .ack("group", &[again[0].receipt.clone()], None)
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Ok]);
    tokio::time::advance(Duration::from_secs(31)).await;
    assert!(
        broker
            .pull("group", "a", 100, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty()
    );
}
