//! Action/response: a request event whose reply is durable and addressed to a *service* (the
//! reply group), not to one connection.
//!
//! A request is a record in the metadata store (written before the request event is published,
//! so a responder can always reply) plus, while it is pending, a small entry in memory (no
//! context, no payload). The first reply wins: it is recorded in the request's record, appended
//! to `_replies.{group}` with the extension `correlationid`, and handed to every caller waiting
//! on the request. At the deadline an unanswered request gets exactly one
//! `herald.request.expired` event instead.
//!
//! Crash safety rests on one order: the outcome is recorded first, then appended to the reply
//! topic, then marked as appended. A record with an outcome but no mark is finished after a
//! restart: the reply topic is searched from the offset noted in the outcome (`scan_from`) for
//! an event with the request's `correlationid`, and the event is appended only if none is found.
//! So every request ends with one outcome and one event in its reply topic.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};

use crate::broker::{Broker, BrokerError, EventToPublish, Published, run_to_end};
use crate::meta::{RequestOutcome, RequestRecord, RequestWrite};
use crate::names;
use crate::subscription::{Start, SubscriptionSpec};

/// Prefix of the reply topics and of their queue subscriptions: `_replies.{group}`.
pub const REPLY_TOPIC_PREFIX: &str = "_replies.";
/// Largest `herald-context`, in bytes of JSON.
pub const CONTEXT_BYTES_MAX: usize = 64 * 1024;
/// The deadline of a request when the caller names none.
pub const DEADLINE_DEFAULT: Duration = Duration::from_secs(3600);
/// Longest deadline a request may have.
pub const DEADLINE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a request's record is kept after its deadline, so `GET` still answers and a late
/// reply gets 409 or 410 rather than 404.
pub const KEEP_AFTER_DEADLINE: Duration = Duration::from_secs(3600);
/// The type of the event that marks a request that reached its deadline unanswered.
pub const EXPIRED_TYPE: &str = "herald.request.expired";
/// The `source` of Herald's expiry events.
pub const EXPIRED_SOURCE: &str = "/herald/requests";
/// How often an outcome that could not be appended (a full disk, say) is tried again.
const APPEND_RETRY: Duration = Duration::from_secs(1);

/// The reply topic (and queue subscription) of a group.
pub fn reply_topic(group: &str) -> String {
    format!("{REPLY_TOPIC_PREFIX}{group}")
}

/// A request to make.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub topic: &'a str,
    /// The request event as the caller sent it (without `correlationid` and `replyto`).
    pub event: EventToPublish<'a>,
    /// The service whose instances may claim the reply.
    pub group: &'a str,
    /// `herald-context`, JSON text.
    pub context: Option<String>,
    pub deadline: Duration,
    /// The caller's service, for the services registry.
    pub service: Option<&'a str>,
}

/// How a request ended, as handed to the callers waiting on it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The reply event (with `correlationid`) and where it is in `_replies.{group}` (`None`
    /// while its append is still being retried).
    Replied {
        event: Bytes,
        position: Option<Published>,
    },
    Expired,
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    Pending,
    Replied,
    Expired,
}

/// A request as `GET /v1/requests/{id}` shows it.
#[derive(Debug, Clone)]
pub struct RequestView {
    pub id: String,
    pub topic: String,
    pub group: String,
    pub status: RequestStatus,
    /// The reply event (JSON), once replied.
    pub reply: Option<Bytes>,
    pub context: Option<String>,
    pub deadline_ms: u64,
}

/// A caller's handle on a request it made: wait for the outcome.
#[derive(Debug)]
pub struct Waiter {
    pub id: String,
    pub group: String,
    /// True when the call found a pending request made earlier with the same event (a retry):
    /// it waits on that request instead of making a second one.
    pub joined: bool,
    outcome: watch::Receiver<Option<Arc<Outcome>>>,
}

impl Waiter {
    /// The outcome, once there is one within `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> Option<Arc<Outcome>> {
        let outcome = tokio::time::timeout(timeout, self.outcome.wait_for(Option::is_some)).await;
        match outcome {
            Ok(Ok(value)) => value.clone(),
            // The sender is gone: the request ended without this waiter seeing how (the broker
            // shut down). The caller answers "pending".
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

#[derive(Debug)]
struct Pending {
    group: String,
    deadline_ms: u64,
    /// (topic, event source, event id) of the request event.
    event_key: (String, String, String),
    /// A reply or the expiry is being recorded: a second one is refused.
    claimed: bool,
    /// True once the request's record is stored and its event published. Until then a retry of
    /// the same event waits for the call that is making it; if that fails, the request is
    /// removed (the sender dropped) and the retry makes it anew.
    made: watch::Sender<bool>,
    outcome: watch::Sender<Option<Arc<Outcome>>>,
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<String, Pending>,
    by_event: HashMap<(String, String, String), String>,
    /// (deadline, id) of every pending request.
    deadlines: BTreeSet<(u64, String)>,
    /// Outcomes recorded but not yet appended to their reply topic.
    unappended: BTreeSet<String>,
    /// Outcomes appended, to mark as such in the store.
    marks: Vec<RequestWrite>,
    closed: bool,
}

/// The run-time state of action/response.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    state: Mutex<State>,
    /// Wakes the expiry task (an earlier deadline, an outcome to append, shutdown).
    wake: Notify,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Inserts `"name":"value"` members at the start of a JSON object.
fn with_extensions(body: &[u8], members: &[(&str, &str)]) -> Vec<u8> {
    let start = body
        .iter()
        .position(|byte| *byte == b'{')
        .map_or(0, |at| at + 1);
    let mut out = Vec::with_capacity(body.len() + 96);
    out.extend_from_slice(&body[..start]);
    for (name, value) in members {
        serde_json::to_writer(&mut out, name).expect("writing into a Vec never fails");
        out.push(b':');
        serde_json::to_writer(&mut out, value).expect("writing into a Vec never fails");
        out.push(b',');
    }
    out.extend_from_slice(&body[start..]);
    out
}

fn attributes(body: &[u8]) -> Result<Map<String, Value>, BrokerError> {
    serde_json::from_slice(body)
        .map_err(|error| BrokerError::Invalid(format!("the event is not a JSON object: {error}")))
}

/// Checks a request id's shape (a ULID); anything else is unknown.
fn check_id(id: &str) -> Result<(), BrokerError> {
    if ulid::Ulid::from_string(id).is_ok() {
        Ok(())
    } else {
        Err(BrokerError::RequestNotFound(id.chars().take(64).collect()))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Requests {
    /// Resumes the stored requests after a restart: pending ones wait for their reply or
    /// deadline again; recorded outcomes not yet appended are appended.
    pub(crate) fn load(&self, records: Vec<RequestRecord>) {
        let mut state = lock(&self.state);
        for record in records {
            match &record.outcome {
                None => {
                    let key = (
                        record.topic.clone(),
                        record.event_source.clone(),
                        record.event_id.clone(),
                    );
                    state.by_event.insert(key.clone(), record.id.clone());
                    state
                        .deadlines
                        .insert((record.deadline_ms, record.id.clone()));
                    state.pending.insert(
                        record.id.clone(),
                        Pending {
                            group: record.group.clone(),
                            deadline_ms: record.deadline_ms,
                            event_key: key,
                            claimed: false,
                            made: watch::Sender::new(true),
                            outcome: watch::Sender::new(None),
                        },
                    );
                }
                Some(outcome) if outcome.appended.is_none() => {
                    state.unappended.insert(record.id.clone());
                }
                Some(_) => {}
            }
        }
    }

    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.wake.notify_one();
    }

    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// Requests pending now.
    pub(crate) fn pending_count(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// Removes a pending request and hands its outcome to its waiters.
    fn finish(&self, id: &str, outcome: Option<Outcome>) {
        let mut state = lock(&self.state);
        if let Some(pending) = state.pending.remove(id) {
            state.by_event.remove(&pending.event_key);
            state
                .deadlines
                .remove(&(pending.deadline_ms, id.to_owned()));
            if let Some(outcome) = outcome {
                pending.outcome.send_replace(Some(Arc::new(outcome)));
            }
        }
    }

    /// Gives up a claim (recording the outcome failed), so another reply or the expiry may try.
    fn unclaim(&self, id: &str) {
        if let Some(pending) = lock(&self.state).pending.get_mut(id) {
            pending.claimed = false;
        }
    }
}

/// A request as the task that makes it owns it.
#[derive(Debug)]
struct RequestToMake {
    id: String,
    topic: String,
    /// The request event's id, source, type and partition key.
    event_id: String,
    event_source: String,
    event_type: String,
    partition_key: Option<String>,
    /// The request event with `correlationid` and `replyto`.
    body: Vec<u8>,
    group: String,
    context: Option<String>,
    deadline: Duration,
    service: Option<String>,
}

impl Broker {
    /// Makes a request: records it, publishes the request event with `correlationid` and
    /// `replyto`, and returns a handle to wait on. The reply group's topic and queue
    /// subscription exist before the event is visible, so no reply can be missed. Once the
    /// request is checked, making it runs to its end even if the caller goes away; a retry of the
    /// same event meanwhile waits for it and joins it.
    pub async fn request(self: &Arc<Self>, new: NewRequest<'_>) -> Result<Waiter, BrokerError> {
        names::check_topic_name(new.topic)?;
        if names::is_internal(new.topic) {
            return Err(BrokerError::Invalid(format!(
                "topic names starting with '_' belong to Herald itself; send requests to another topic than {:?}",
                new.topic
            )));
        }
        let reply_topic = reply_topic(new.group);
        names::check_topic_name(&reply_topic).map_err(|error| {
            BrokerError::Invalid(format!(
                "reply group {:?} does not make a valid topic name {reply_topic:?}: {error}",
                new.group
            ))
        })?;
        if let Some(context) = &new.context
            && context.len() > CONTEXT_BYTES_MAX
        {
            return Err(BrokerError::TooLarge(format!(
                "herald-context is {} bytes; the limit (request_context_bytes_max) is {CONTEXT_BYTES_MAX}",
                context.len()
            )));
        }
        if new.deadline.is_zero() || new.deadline > DEADLINE_MAX {
            return Err(BrokerError::Invalid(
                "deadline must be between 1ms and 7d".into(),
            ));
        }
        let present = attributes(new.event.body)?;
        for name in ["correlationid", "replyto"] {
            if present.contains_key(name) {
                return Err(BrokerError::Invalid(format!(
                    "the request event carries the extension {name:?}; Herald sets it (correlationid is the request id, replyto the reply topic), so leave it out"
                )));
            }
        }
        let id = ulid::Ulid::new().to_string();
        let request = RequestToMake {
            body: with_extensions(
                new.event.body,
                &[("correlationid", &id), ("replyto", &reply_topic)],
            ),
            id,
            topic: new.topic.to_owned(),
            event_id: new.event.id.clone().into_owned(),
            event_source: new.event.source.clone().into_owned(),
            event_type: new.event.event_type.clone().into_owned(),
            partition_key: new.event.partition_key.clone().map(Cow::into_owned),
            group: new.group.to_owned(),
            context: new.context,
            deadline: new.deadline,
            service: new.service.map(str::to_owned),
        };
        let broker = self.clone();
        run_to_end(async move { broker.make_request(request).await }).await
    }

    async fn make_request(self: &Arc<Self>, new: RequestToMake) -> Result<Waiter, BrokerError> {
        self.ensure_reply_group(&new.group).await?;
        let event_key = (
            new.topic.clone(),
            new.event_source.clone(),
            new.event_id.clone(),
        );
        let now = self.clock_ms();
        let deadline_ms = now.saturating_add(millis(new.deadline));
        let id = new.id.clone();
        // Join a request made earlier with the same event, or take its place.
        let waiter = loop {
            let (existing, group, mut being_made, outcome) = {
                let mut state = lock(&self.requests.state);
                if state.closed {
                    return Err(BrokerError::Overloaded(
                        "the server is shutting down".into(),
                    ));
                }
                if let Some(existing) = state.by_event.get(&event_key).cloned() {
                    let pending = &state.pending[&existing];
                    if *pending.made.borrow() {
                        return Ok(Waiter {
                            id: existing,
                            group: pending.group.clone(),
                            joined: true,
                            outcome: pending.outcome.subscribe(),
                        });
                    }
                    (
                        existing,
                        pending.group.clone(),
                        pending.made.subscribe(),
                        pending.outcome.subscribe(),
                    )
                } else {
                    let limit = self.config().pending_requests_max;
                    if state.pending.len() >= limit {
                        return Err(BrokerError::Overloaded(format!(
                            "{limit} requests are pending (the limit, pending_requests_max); retry when some are answered or expire"
                        )));
                    }
                    state.by_event.insert(event_key.clone(), id.clone());
                    let outcome = watch::Sender::new(None);
                    let waiter = Waiter {
                        id: id.clone(),
                        group: new.group.clone(),
                        joined: false,
                        outcome: outcome.subscribe(),
                    };
                    state.pending.insert(
                        id.clone(),
                        Pending {
                            group: new.group.clone(),
                            deadline_ms,
                            event_key: event_key.clone(),
                            claimed: false,
                            made: watch::Sender::new(false),
                            outcome,
                        },
                    );
                    break waiter;
                }
            };
            // Another call is making a request with this event: wait until it is made (then
            // join it), or has ended (answered at once: join its outcome; failed: make it here).
            let _ = being_made.wait_for(|made| *made).await;
            if outcome.borrow().is_some() {
                return Ok(Waiter {
                    id: existing,
                    group,
                    joined: true,
                    outcome,
                });
            }
        };
        let record = RequestRecord {
            id: id.clone(),
            topic: new.topic.clone(),
            group: new.group.clone(),
            event_source: new.event_source.clone(),
            event_id: new.event_id.clone(),
            context: new.context.clone(),
            created_ms: now,
            deadline_ms,
            keep_until_ms: deadline_ms.saturating_add(millis(KEEP_AFTER_DEADLINE)),
            outcome: None,
        };
        let keep_until_ms = record.keep_until_ms;
        if let Err(error) = self
            .store
            .write_requests(vec![RequestWrite::Put(Box::new(record))])
            .await
        {
            self.requests.finish(&id, None);
            return Err(error.into());
        }
        let event = EventToPublish {
            id: Cow::Borrowed(&new.event_id),
            source: Cow::Borrowed(&new.event_source),
            event_type: Cow::Borrowed(&new.event_type),
            partition_key: new.partition_key.as_deref().map(Cow::Borrowed),
            body: &new.body,
        };
        let published = self
            .publish(&new.topic, &[event], new.service.as_deref())
            .await;
        let refused = match published {
            Ok(positions)
                if positions
                    .first()
                    .is_some_and(|position| !position.duplicate) =>
            {
                // Made: from now on its deadline counts, and retries join it.
                let mut state = lock(&self.requests.state);
                if let Some(pending) = state.pending.get(&id) {
                    pending.made.send_replace(true);
                    let earliest = state
                        .deadlines
                        .first()
                        .is_none_or(|(first, _)| deadline_ms < *first);
                    state.deadlines.insert((deadline_ms, id.clone()));
                    if earliest {
                        self.requests.wake.notify_one();
                    }
                }
                return Ok(waiter);
            }
            Ok(_) => BrokerError::Conflict(format!(
                "an event with source {:?} and id {:?} was already published to {:?} within its dedup window, and it is not a pending request; give the request event a new id",
                event_key.1, event_key.2, new.topic
            )),
            Err(error) => error,
        };
        // The request event is not stored: forget the request.
        self.requests.finish(&id, None);
        if let Err(error) = self
            .store
            .write_requests(vec![RequestWrite::Delete { id, keep_until_ms }])
            .await
        {
            tracing::warn!(%error, "could not delete the record of a request that was not published; it will expire");
        }
        Err(refused)
    }

    /// Creates `_replies.{group}` and its queue subscription if they do not exist.
    async fn ensure_reply_group(self: &Arc<Self>, group: &str) -> Result<(), BrokerError> {
        let name = reply_topic(group);
        if self.subscription(&name).is_ok() {
            return Ok(());
        }
        if self.topic(&name).is_err() {
            let settings = crate::broker::TopicSettings {
                partitions: 1,
                ..self.config().default_topic
            };
            match self.create_topic_unchecked(&name, settings).await {
                Ok(_) | Err(BrokerError::Conflict(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let mut spec = SubscriptionSpec::with_defaults(&name, vec![name.clone()]);
        spec.start = Start::Earliest;
        self.create_subscription_unchecked(&name, spec).await?;
        Ok(())
    }

    /// Records the first reply to a request and hands it to the waiting callers. A second reply
    /// is a `Conflict`; a reply after the deadline is `Gone`; an unknown id `RequestNotFound`.
    /// Once checked, the reply runs to its end (claimed, recorded, appended, handed over) even
    /// if the caller goes away.
    pub async fn reply(
        self: &Arc<Self>,
        id: &str,
        event: &EventToPublish<'_>,
    ) -> Result<(), BrokerError> {
        check_id(id)?;
        let present = attributes(event.body)?;
        match present.get("correlationid") {
            None => {}
            Some(Value::String(value)) if value == id => {}
            Some(other) => {
                return Err(BrokerError::Invalid(format!(
                    "the reply carries correlationid {other}, but it answers request {id:?}; leave correlationid out (Herald sets it) or set it to the request id"
                )));
            }
        }
        let body = if present.contains_key("correlationid") {
            event.body.to_vec()
        } else {
            with_extensions(event.body, &[("correlationid", id)])
        };
        let broker = self.clone();
        let id = id.to_owned();
        run_to_end(async move { broker.record_reply(&id, body).await }).await
    }

    /// Claims a request for its reply, records the reply, appends it and hands it over.
    async fn record_reply(self: &Arc<Self>, id: &str, body: Vec<u8>) -> Result<(), BrokerError> {
        let group = {
            let mut state = lock(&self.requests.state);
            match state.pending.get_mut(id) {
                Some(pending) if !pending.claimed => {
                    pending.claimed = true;
                    Some(pending.group.clone())
                }
                Some(_) => {
                    return Err(BrokerError::Conflict(format!(
                        "request {id} has already been answered (or has just expired); only the first reply counts"
                    )));
                }
                None => None,
            }
        };
        let Some(group) = group else {
            return Err(match self.store.request(id).await? {
                None => BrokerError::RequestNotFound(id.to_owned()),
                Some(record) => match record.outcome {
                    Some(outcome) if outcome.expired => BrokerError::Gone(format!(
                        "request {id} expired at its deadline without a reply; a reply is no longer accepted"
                    )),
                    Some(_) => BrokerError::Conflict(format!(
                        "request {id} has already been answered; only the first reply counts"
                    )),
                    // Stored but not loaded: only while the server is starting.
                    None => {
                        BrokerError::Overloaded(format!("request {id} is not loaded yet; retry"))
                    }
                },
            });
        };
        let recorded = self.record_outcome(id, &group, false, &body).await;
        let (record, position) = match recorded {
            Ok(recorded) => recorded,
            Err(error) => {
                self.requests.unclaim(id);
                return Err(error);
            }
        };
        self.after_recorded(record, position, body).await;
        Ok(())
    }

    /// Records an outcome (the reply or the expiry event) and appends it to the reply topic.
    /// Returns the updated record and where the event was appended (`None` when the append
    /// failed: it is retried in the background, the outcome itself is durable).
    async fn record_outcome(
        self: &Arc<Self>,
        id: &str,
        group: &str,
        expired: bool,
        event: &[u8],
    ) -> Result<(RequestRecord, Option<Published>), BrokerError> {
        let mut record = self
            .store
            .request(id)
            .await?
            .ok_or_else(|| BrokerError::RequestNotFound(id.to_owned()))?;
        let reply_topic = reply_topic(group);
        let scan_from = match self.topic(&reply_topic) {
            Ok(topic) => self.store.partition_info(topic.record.id, 0)?.end_offset,
            Err(_) => 0,
        };
        record.outcome = Some(RequestOutcome {
            expired,
            event: String::from_utf8_lossy(event).into_owned(),
            at_ms: self.clock_ms(),
            scan_from,
            appended: None,
        });
        self.store
            .write_requests(vec![RequestWrite::Put(Box::new(record.clone()))])
            .await?;
        // From here on the outcome is durable: whatever fails below is finished later.
        // Live: the claim excludes every other outcome, so nothing to look for first.
        let position = match self.append_outcome(&record, false).await {
            Ok(position) => Some(position),
            Err(error) => {
                tracing::warn!(request = id, %error, "could not append a request's outcome to its reply topic; retrying in the background");
                lock(&self.requests.state).unappended.insert(id.to_owned());
                self.requests.wake.notify_one();
                None
            }
        };
        Ok((record, position))
    }

    /// Hands a recorded outcome to the waiters and marks it as appended.
    async fn after_recorded(
        &self,
        record: RequestRecord,
        position: Option<Published>,
        event: Vec<u8>,
    ) {
        let expired = record
            .outcome
            .as_ref()
            .is_some_and(|outcome| outcome.expired);
        let outcome = if expired {
            Outcome::Expired
        } else {
            Outcome::Replied {
                event: Bytes::from(event),
                position,
            }
        };
        self.requests.finish(&record.id, Some(outcome));
        if let Some(position) = position {
            // Written by the expiry task, many in one transaction: nothing waits for it.
            lock(&self.requests.state)
                .marks
                .push(RequestWrite::Appended {
                    id: record.id,
                    partition: position.partition,
                    offset: position.offset,
                });
            self.requests.wake.notify_one();
        }
    }

    async fn mark_appended(&self, record: &RequestRecord, position: Published) {
        let mark = RequestWrite::Appended {
            id: record.id.clone(),
            partition: position.partition,
            offset: position.offset,
        };
        if let Err(error) = self.store.write_requests(vec![mark]).await {
            // Harmless: after a restart the event is found in the reply topic, not appended again.
            tracing::warn!(request = record.id, %error, "could not mark a request's outcome as appended");
        }
    }

    /// Appends a recorded outcome's event to the reply topic; with `search`, only if it is not
    /// there already (after a restart between the append and its mark).
    async fn append_outcome(
        self: &Arc<Self>,
        record: &RequestRecord,
        search: bool,
    ) -> Result<Published, BrokerError> {
        let outcome = record
            .outcome
            .as_ref()
            .expect("only recorded outcomes are appended");
        let reply_topic = reply_topic(&record.group);
        if let Ok(topic) = self.topic(&reply_topic)
            && search
        {
            let mut offset = outcome.scan_from;
            loop {
                let read = match self
                    .store
                    .read(topic.record.id, 0, offset, 1024 * 1024)
                    .await
                {
                    Ok(read) => read,
                    Err(_) => break,
                };
                if read.records.is_empty() {
                    break;
                }
                for stored in &read.records {
                    let found = serde_json::from_slice::<Map<String, Value>>(&stored.payload)
                        .ok()
                        .and_then(|event| {
                            event
                                .get("correlationid")
                                .and_then(Value::as_str)
                                .map(|value| value == record.id)
                        })
                        .unwrap_or(false);
                    if found {
                        return Ok(Published {
                            partition: 0,
                            offset: stored.offset,
                            duplicate: true,
                        });
                    }
                }
                offset = read.next_offset;
            }
        }
        let body = outcome.event.as_bytes();
        let attributes = attributes(body)?;
        let text = |name: &str| {
            attributes
                .get(name)
                .and_then(Value::as_str)
                .map(|value| Cow::Owned(value.to_owned()))
                .unwrap_or(Cow::Borrowed(""))
        };
        let event = EventToPublish {
            id: text("id"),
            source: text("source"),
            event_type: text("type"),
            partition_key: attributes
                .get("partitionkey")
                .and_then(Value::as_str)
                .map(|value| Cow::Owned(value.to_owned())),
            body,
        };
        let positions = self.append_internal(&reply_topic, &[event]).await?;
        Ok(positions[0])
    }

    /// Ends a request that reached its deadline unanswered: records the expiry and appends one
    /// `herald.request.expired` event to the reply topic.
    async fn expire_request(self: &Arc<Self>, id: &str) {
        let group = {
            let mut state = lock(&self.requests.state);
            match state.pending.get_mut(id) {
                Some(pending) if !pending.claimed => {
                    pending.claimed = true;
                    pending.group.clone()
                }
                // A reply is being recorded; if it fails, the deadline is looked at again (it
                // stays in `deadlines` until the request ends).
                Some(_) | None => return,
            }
        };
        let record = match self.store.request(id).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                // Forgotten (its publish failed): nothing to announce.
                self.requests.finish(id, None);
                return;
            }
            Err(error) => {
                tracing::warn!(request = id, %error, "could not read a request to expire it");
                self.requests.unclaim(id);
                return;
            }
        };
        let event = expired_event(&record);
        match self.record_outcome(id, &group, true, &event).await {
            Ok((record, position)) => self.after_recorded(record, position, event).await,
            Err(error) => {
                tracing::warn!(request = id, %error, "could not record a request's expiry");
                self.requests.unclaim(id);
            }
        }
    }

    /// One round of the expiry task: expires what is due, appends outcomes left unappended.
    /// Returns how long to sleep before the next round (`None`: until woken, so an idle broker
    /// holds no timer).
    async fn requests_round(self: &Arc<Self>) -> Option<Duration> {
        let now = self.clock_ms();
        let marks = std::mem::take(&mut lock(&self.requests.state).marks);
        if !marks.is_empty()
            && let Err(error) = self.store.write_requests(marks).await
        {
            // Harmless: after a restart those outcomes are found in the reply topic.
            tracing::warn!(%error, "could not mark request outcomes as appended");
        }
        let (due, unappended): (Vec<String>, Vec<String>) = {
            let mut state = lock(&self.requests.state);
            let due: Vec<String> = state
                .deadlines
                .iter()
                .take_while(|(deadline, _)| *deadline <= now)
                .take(1000)
                .map(|(_, id)| id.clone())
                .collect();
            let unappended = std::mem::take(&mut state.unappended).into_iter().collect();
            (due, unappended)
        };
        for id in &due {
            self.expire_request(id).await;
        }
        for id in unappended {
            let record = match self.store.request(&id).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(_) => {
                    lock(&self.requests.state).unappended.insert(id);
                    continue;
                }
            };
            match self.append_outcome(&record, true).await {
                Ok(position) => self.mark_appended(&record, position).await,
                Err(_) => {
                    lock(&self.requests.state).unappended.insert(id);
                }
            }
        }
        let state = lock(&self.requests.state);
        if !state.unappended.is_empty() {
            return Some(APPEND_RETRY);
        }
        state.deadlines.first().map(|(deadline, _)| {
            // Claimed requests (a reply in flight) stay in `deadlines` until they end: look
            // again shortly rather than spin on them.
            Duration::from_millis(deadline.saturating_sub(now).max(10))
        })
    }

    /// The request's state for `GET /v1/requests/{id}`.
    pub async fn request_view(&self, id: &str) -> Result<RequestView, BrokerError> {
        check_id(id)?;
        let record = self
            .store
            .request(id)
            .await?
            .ok_or_else(|| BrokerError::RequestNotFound(id.to_owned()))?;
        let (status, reply) = match &record.outcome {
            None => (RequestStatus::Pending, None),
            Some(outcome) if outcome.expired => (RequestStatus::Expired, None),
            Some(outcome) => (
                RequestStatus::Replied,
                Some(Bytes::from(outcome.event.clone().into_bytes())),
            ),
        };
        Ok(RequestView {
            id: record.id,
            topic: record.topic,
            group: record.group,
            status,
            reply,
            context: record.context,
            deadline_ms: record.deadline_ms,
        })
    }

    /// The reply a waiting caller was answered with need not be delivered again: marks it done in
    /// the group's reply queue (unless a consumer has already leased it).
    /// A reply without a position (its append is still being retried) has nothing to mark.
    pub fn reply_taken(
        self: &Arc<Self>,
        group: &str,
        position: Option<Published>,
    ) -> Result<(), BrokerError> {
        let Some(position) = position else {
            return Ok(());
        };
        let name = reply_topic(group);
        let topic = self.topic(&name)?;
        let subscription = self.subscription(&name)?;
        if subscription.queue_group().is_none() {
            return Ok(());
        }
        // In the background, durably and then in memory: the requester has its reply now, and
        // a crash before the mark is stored only means the reply queue delivers the reply too.
        let broker = self.clone();
        tokio::spawn(async move {
            let Some(queue) = subscription.queue_group() else {
                return;
            };
            let marked = crate::queue::mark_done(
                &broker,
                subscription.id,
                queue,
                (topic.record.id, position.partition),
                position.offset,
            )
            .await;
            if let Err(error) = marked {
                tracing::warn!(%error, "could not store a reply as taken; the reply queue delivers it too");
            }
        });
        Ok(())
    }

    /// Forgets requests kept past their deadline plus [`KEEP_AFTER_DEADLINE`].
    pub(crate) async fn purge_requests(&self) -> Result<u64, BrokerError> {
        Ok(self.store.purge_requests(self.clock_ms()).await?)
    }

    /// Requests pending now.
    pub fn pending_requests(&self) -> usize {
        self.requests.pending_count()
    }
}

/// The `herald.request.expired` event of a request.
fn expired_event(record: &RequestRecord) -> Vec<u8> {
    let time = crate::time::format_rfc3339(record.deadline_ms);
    let context: Value = record
        .context
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null);
    let event = serde_json::json!({
        "specversion": "1.0",
        "id": format!("{}.expired", record.id),
        "source": EXPIRED_SOURCE,
        "type": EXPIRED_TYPE,
        "correlationid": record.id,
        "time": time,
        "datacontenttype": "application/json",
        "data": {
            "request_id": record.id,
            "topic": record.topic,
            "deadline": time,
            "context": context,
        },
    });
    serde_json::to_vec(&event).expect("a JSON value always encodes")
}

/// The expiry task: one per broker; it ends when the broker shuts down or is dropped (it never
/// keeps the broker alive while it sleeps).
pub(crate) async fn run_expiry(broker: Weak<Broker>, requests: Arc<Requests>) {
    loop {
        let woken = requests.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if lock(&requests.state).closed {
            return;
        }
        let sleep = {
            let Some(broker) = broker.upgrade() else {
                return;
            };
            broker.requests_round().await
        };
        match sleep {
            Some(sleep) => {
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(sleep) => {}
                }
            }
            None => woken.await,
        }
    }
}
