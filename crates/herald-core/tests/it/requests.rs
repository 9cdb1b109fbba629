//! Action/response in the core: first reply wins under concurrency, expiry with a paused clock,
//! and the crash windows between recording an outcome and appending it to the reply topic.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use herald_core::meta::RequestWrite;
use herald_core::requests::{NewRequest, Outcome, RequestStatus};
use herald_core::{Broker, BrokerConfig, BrokerError, EventToPublish, LocalStore, ReadFrom, Store};
use herald_log::{LogConfig, OsStorage};
use serde_json::{Value, json};

use crate::{eventually, hang_up_after};

async fn broker(directory: &std::path::Path) -> Arc<Broker> {
    let store = LocalStore::open(directory, LogConfig::default(), OsStorage::shared()).unwrap();
    Broker::open(Arc::new(store), BrokerConfig::default())
        .await
        .unwrap()
}

fn body(id: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"specversion": "1.0", "id": id, "source": "/checkout", "type": "quote.requested"}),
    )
    .unwrap()
}

fn event<'a>(id: &'a str, body: &'a [u8]) -> EventToPublish<'a> {
    EventToPublish {
        id: Cow::Borrowed(id),
        source: Cow::Borrowed("/checkout"),
        event_type: Cow::Borrowed("quote.requested"),
        partition_key: None,
        body,
    }
}

/// Makes a request in group `checkout` and returns its id.
async fn make_request(broker: &Arc<Broker>, event_id: &str, deadline: Duration) -> String {
    let body = body(event_id);
    let waiter = broker
        .request(NewRequest {
            topic: "quotes",
            event: event(event_id, &body),
            group: "checkout",
            context: Some(r#"{"step":2}"#.into()),
            deadline,
            service: None,
        })
        .await
        .unwrap();
    waiter.id
}

/// Every event in `_replies.checkout`, parsed.
async fn replies(broker: &Arc<Broker>) -> Vec<Value> {
    broker
        .read(
            "_replies.checkout",
            0,
            ReadFrom::Offset(0),
            1000,
            Duration::ZERO,
        )
        .await
        .unwrap()
        .events
        .iter()
        .map(|stored| serde_json::from_slice(&stored.event).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_replies_exactly_one_is_recorded_and_appended() {
    let directory = tempfile::tempdir().unwrap();
    let broker = broker(directory.path()).await;
    let id = make_request(&broker, "q-1", Duration::from_secs(60)).await;
    let mut tasks = Vec::new();
    for responder in 0..16 {
        let (broker, id) = (broker.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let event_id = format!("reply-{responder}");
            let body = body(&event_id);
            broker.reply(&id, &event(&event_id, &body)).await
        }));
    }
    let mut accepted = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => accepted += 1,
            Err(BrokerError::Conflict(_)) => {}
            Err(other) => panic!("unexpected error {other}"),
        }
    }
    assert_eq!(accepted, 1);
    let stored = replies(&broker).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["correlationid"], id.as_str());
    let view = broker.request_view(&id).await.unwrap();
    assert_eq!(view.status, RequestStatus::Replied);
    let recorded: Value = serde_json::from_slice(&view.reply.unwrap()).unwrap();
    assert_eq!(
        recorded, stored[0],
        "the recorded reply is the appended one"
    );
    broker.shutdown().await.unwrap();
}

// Real time: the store's committer is a thread of its own, so a paused tokio clock would jump
// ahead while a write waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_expires_exactly_once_at_its_deadline_and_a_waiter_learns_it() {
    let directory = tempfile::tempdir().unwrap();
    let broker = broker(directory.path()).await;
    let body = body("q-1");
    let mut waiter = broker
        .request(NewRequest {
            topic: "quotes",
            event: event("q-1", &body),
            group: "checkout",
            context: None,
            deadline: Duration::from_millis(400),
            service: None,
        })
        .await
        .unwrap();
    assert!(
        waiter.wait(Duration::from_millis(100)).await.is_none(),
        "nothing before the deadline"
    );
    assert_eq!(replies(&broker).await.len(), 0);
    let outcome = waiter.wait(Duration::from_secs(5)).await;
    assert!(matches!(outcome.as_deref(), Some(Outcome::Expired)));
    // The expiry task has nothing left to do for this request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stored = replies(&broker).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["type"], "herald.request.expired");
    assert_eq!(stored[0]["correlationid"], waiter.id.as_str());
    let late_body = body.clone();
    assert!(matches!(
        broker.reply(&waiter.id, &event("late", &late_body)).await,
        Err(BrokerError::Gone(_))
    ));
    assert_eq!(broker.pending_requests(), 0);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_recorded_before_a_crash_is_appended_once_after_the_restart() {
    let directory = tempfile::tempdir().unwrap();
    let (appended_id, recorded_id) = {
        let broker = broker(directory.path()).await;
        let appended_id = make_request(&broker, "q-1", Duration::from_secs(60)).await;
        let recorded_id = make_request(&broker, "q-2", Duration::from_secs(60)).await;
        let reply_body = body("r-1");
        broker
            .reply(&appended_id, &event("r-1", &reply_body))
            .await
            .unwrap();
        assert_eq!(replies(&broker).await.len(), 1);
        broker.shutdown().await.unwrap();
        (appended_id, recorded_id)
    };
    {
        // Two crash windows, written into the store as a crash would leave them:
        // - the reply of `appended_id` reached the reply topic but its mark did not;
        // - the reply of `recorded_id` was recorded, and the crash came before the append.
        let store =
            LocalStore::open(directory.path(), LogConfig::default(), OsStorage::shared()).unwrap();
        let mut appended = store.request(&appended_id).await.unwrap().unwrap();
        appended.outcome.as_mut().unwrap().appended = None;
        let mut recorded = store.request(&recorded_id).await.unwrap().unwrap();
        let mut outcome = appended.outcome.clone().unwrap();
        outcome.event = serde_json::to_string(&json!({"specversion": "1.0", "id": "r-2", "source": "/pricing", "type": "quote.priced", "correlationid": recorded_id})).unwrap();
        outcome.scan_from = 1;
        recorded.outcome = Some(outcome);
        // Deleting first also forgets the mark of the append.
        store
            .write_requests(vec![
                RequestWrite::Delete {
                    id: appended.id.clone(),
                    keep_until_ms: appended.keep_until_ms,
                },
                RequestWrite::Put(Box::new(appended)),
                RequestWrite::Put(Box::new(recorded)),
            ])
            .await
            .unwrap();
        store.close().unwrap();
    }
    let broker = broker(directory.path()).await;
    let mut stored = Vec::new();
    for _ in 0..500 {
        stored = replies(&broker).await;
        let marked = broker.store().request(&recorded_id).await.unwrap().unwrap();
        if marked.outcome.unwrap().appended.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let correlations: Vec<&str> = stored
        .iter()
        .map(|event| event["correlationid"].as_str().unwrap())
        .collect();
    assert_eq!(correlations, [appended_id.as_str(), recorded_id.as_str()]);
    for id in [&appended_id, &recorded_id] {
        let record = broker.store().request(id).await.unwrap().unwrap();
        assert!(record.outcome.unwrap().appended.is_some(), "{id} marked");
    }
    assert_eq!(broker.pending_requests(), 0);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_pending_requests_max_a_request_is_refused_until_one_ends() {
    let directory = tempfile::tempdir().unwrap();
    let store =
        LocalStore::open(directory.path(), LogConfig::default(), OsStorage::shared()).unwrap();
    let config = BrokerConfig {
        pending_requests_max: 2,
        ..BrokerConfig::default()
    };
    let broker = Broker::open(Arc::new(store), config).await.unwrap();
    let first = make_request(&broker, "q-1", Duration::from_secs(60)).await;
    make_request(&broker, "q-2", Duration::from_secs(60)).await;
    assert_eq!(broker.pending_requests(), 2, "at the limit");
    let body = body("q-3");
    let refused = broker
        .request(NewRequest {
            topic: "quotes",
            event: event("q-3", &body),
            group: "checkout",
            context: None,
            deadline: Duration::from_secs(60),
            service: None,
        })
        .await;
    match refused {
        Err(BrokerError::Overloaded(detail)) => assert!(detail.contains("pending_requests_max")),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert_eq!(replies(&broker).await.len(), 0);
    let reply_body = body.clone();
    broker
        .reply(&first, &event("r-1", &reply_body))
        .await
        .unwrap();
    make_request(&broker, "q-3", Duration::from_secs(60)).await;
    assert_eq!(broker.pending_requests(), 2);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_caller_hangs_up_at_any_await_still_ends_its_request_with_one_event() {
    let directory = tempfile::tempdir().unwrap();
    let broker = broker(directory.path()).await;
    for pendings in 0..10 {
        let id = make_request(&broker, &format!("q-{pendings}"), Duration::from_secs(600)).await;
        let reply_id = format!("reply-{pendings}");
        let reply_body = body(&reply_id);
        let reply_event = event(&reply_id, &reply_body);
        let reply = broker.reply(&id, &reply_event);
        if let Some(answer) = hang_up_after(reply, pendings).await {
            answer.unwrap();
        }
        eventually(&format!("request {id} answered"), || async {
            (broker.pending_requests() == 0).then_some(())
        })
        .await;
        let view = broker.request_view(&id).await.unwrap();
        assert_eq!(view.status, RequestStatus::Replied);
        let in_reply_topic = eventually("the reply in _replies.checkout", || async {
            let found = replies(&broker)
                .await
                .into_iter()
                .filter(|reply| reply["correlationid"] == id.as_str())
                .count();
            (found > 0).then_some(found)
        })
        .await;
        assert_eq!(in_reply_topic, 1, "exactly one event for {id}");
        let late = body("late");
        assert!(matches!(
            broker.reply(&id, &event("late", &late)).await,
            Err(BrokerError::Conflict(_))
        ));
    }
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_caller_hangs_up_at_any_await_is_made_whole_and_its_retry_joins_it() {
    let directory = tempfile::tempdir().unwrap();
    let broker = broker(directory.path()).await;
    for pendings in 0..12 {
        let event_id = format!("q-{pendings}");
        let request_body = body(&event_id);
        let new = || NewRequest {
            topic: "quotes",
            event: event(&event_id, &request_body),
            group: "checkout",
            context: None,
            deadline: Duration::from_secs(600),
            service: None,
        };
        hang_up_after(broker.request(new()), pendings).await;
        // The documented retry: the same source and id.
        let mut waiter = broker.request(new()).await.unwrap();
        let stored: Vec<Value> = broker
            .read("quotes", 0, ReadFrom::Offset(0), 1000, Duration::ZERO)
            .await
            .unwrap()
            .events
            .iter()
            .map(|stored| serde_json::from_slice(&stored.event).unwrap())
            .filter(|stored: &Value| stored["id"] == event_id.as_str())
            .collect();
        assert_eq!(
            stored.len(),
            1,
            "{event_id}: the request event is stored once"
        );
        assert_eq!(
            stored[0]["correlationid"],
            waiter.id.as_str(),
            "{event_id}: the retry waits on the request whose event was published"
        );
        let reply = body("r");
        broker.reply(&waiter.id, &event("r", &reply)).await.unwrap();
        assert!(matches!(
            waiter.wait(Duration::from_secs(5)).await.as_deref(),
            Some(Outcome::Replied { .. })
        ));
    }
    eventually("no request left pending", || async {
        (broker.pending_requests() == 0).then_some(())
    })
    .await;
    broker.shutdown().await.unwrap();
}
