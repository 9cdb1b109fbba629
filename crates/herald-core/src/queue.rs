//! Queue subscriptions: competing consumers, leases, per-event acks, retries with backoff, dead
//! letters, per-key ordering and filters, over the same partition logs as everything else.
//!
//! Per partition a queue keeps a *floor* (every offset below it is done: acked, dead-lettered
//! or filtered out) and a bounded *window* of the offsets read after it: each not-done offset has
//! a slot, either pending (deliverable from a time on) or leased (to one pull, until a deadline).
//! Payloads are never kept in memory; a delivery reads its event from the log again (the page
//! cache). Memory is bounded by `window_events_max` slots per partition, whatever the backlog.
//!
//! Durable state (through the store, group-committed): the floor, offsets done above it, and the
//! attempt count and not-before time of events waiting for a retry. Leases are not durable: after
//! a restart every event that was leased is pending again (at-least-once).
//!
//! A receipt names one lease: its `epoch` is this process's boot number in the high 32 bits and
//! a lease number in the low 32, so a receipt from an earlier lease, an earlier seek or an
//! earlier process is `stale` and changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use herald_log::{ReadError, Record};
use serde_json::{Map, Value};
use tokio::sync::Notify;

use crate::broker::{Broker, BrokerError, EventToPublish, StoredEvent, Subscription, Topic};
use crate::filter::Filter;
use crate::meta::QueueChanges;
use crate::receipt::StreamReceipt;
use crate::store::StoreError;
use crate::stream::{AckStatus, Delivery, SeekTarget};
use crate::subscription::{Ordering as KeyOrdering, SubscriptionSpec};

type PartitionKey = (u64, u32);

/// Offsets read ahead of a partition's floor at most; past it a stuck event holds the partition
/// back instead of growing memory.
pub const WINDOW_EVENTS_MAX: u64 = 10_000;
/// Window fills one pull does before it waits, when what it reads yields nothing to deliver.
const REFILLS_PER_WAIT_MAX: u32 = 64;

/// Longest a lease may be extended to, from now.
pub const LEASE_MAX: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, Clone)]
enum SlotState {
    Pending {
        not_before_ms: u64,
    },
    Leased {
        deadline_ms: u64,
        lease: u32,
        consumer: Arc<str>,
    },
}

#[derive(Debug, Clone)]
struct Slot {
    /// Deliveries made so far.
    attempts: u32,
    state: SlotState,
    key: Option<Bytes>,
}

#[derive(Debug, Default)]
struct QueuePartition {
    floor: u64,
    /// The next offset to read into the window.
    read_to: u64,
    slots: BTreeMap<u64, Slot>,
    /// Offsets at or after `read_to` known to be done (from the store, after a restart).
    done_ahead: BTreeSet<u64>,
    /// Retries known from the store for offsets not read yet: offset → (attempts, not before).
    retries_ahead: BTreeMap<u64, (u32, u64)>,
}

impl QueuePartition {
    fn recompute_floor(&mut self) -> bool {
        let floor = self.slots.keys().next().copied().unwrap_or(self.read_to);
        let moved = floor != self.floor;
        self.floor = floor;
        moved
    }
}

#[derive(Debug, Default)]
struct QueueState {
    partitions: HashMap<PartitionKey, QueuePartition>,
    /// Partitions whose stored state was loaded (or that are new).
    next_lease: u32,
    /// No lease ends before this (a lower bound; `u64::MAX` when there are none).
    earliest_deadline_ms: u64,
    delivered: u64,
    acked: u64,
    redelivered: u64,
    dead_lettered: u64,
    random: u64,
}

impl QueueState {
    fn lease_number(&mut self) -> u32 {
        self.next_lease = self.next_lease.wrapping_add(1).max(1);
        self.next_lease
    }

    fn jitter(&mut self) -> u64 {
        // xorshift: jitter need not be strong, only spread.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        self.random
    }
}

/// Statistics of a queue subscription.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub backlog: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub acked: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
    /// Age of the oldest event not yet done, in ms.
    pub oldest_pending_age_ms: Option<u64>,
}

/// The run-time state of one queue subscription.
#[derive(Debug)]
pub(crate) struct QueueGroup {
    state: Mutex<QueueState>,
    /// Woken when events may have become deliverable (acks, nacks, expiries, seeks).
    changed: Notify,
    /// Serializes reading into the windows.
    fill_lock: tokio::sync::Mutex<()>,
    /// Held shared by every change of state until its commit is queued, exclusively by a seek,
    /// so a seek's reset is never followed in the store by a change made before it.
    seek_gate: tokio::sync::RwLock<()>,
    /// One redrive at a time.
    redrive_lock: tokio::sync::Mutex<()>,
    filter: Option<Filter>,
    boot: u32,
    closed: AtomicBool,
}

fn lock(state: &Mutex<QueueState>) -> MutexGuard<'_, QueueState> {
    // Holders never leave the state half-changed before a possible panic.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl QueueGroup {
    /// A group from its stored state (floors, done offsets, retries).
    pub(crate) fn new(
        stored: &QueueChanges,
        spec: &SubscriptionSpec,
        boot: u32,
        seed: u64,
    ) -> Result<Self, BrokerError> {
        let filter = match &spec.filter {
            Some(value) => Some(
                Filter::parse(value).map_err(|error| BrokerError::Invalid(error.to_string()))?,
            ),
            None => None,
        };
        let mut state = QueueState {
            random: seed | 1,
            earliest_deadline_ms: u64::MAX,
            ..QueueState::default()
        };
        for (topic, partition, floor) in &stored.floors {
            state.partitions.insert(
                (*topic, *partition),
                QueuePartition {
                    floor: *floor,
                    read_to: *floor,
                    ..QueuePartition::default()
                },
            );
        }
        for (topic, partition, offset) in &stored.done {
            let entry = state.partitions.entry((*topic, *partition)).or_default();
            if *offset >= entry.floor {
                entry.done_ahead.insert(*offset);
            }
        }
        for (topic, partition, offset, attempts, not_before_ms) in &stored.retries {
            let entry = state.partitions.entry((*topic, *partition)).or_default();
            if *offset >= entry.floor {
                entry
                    .retries_ahead
                    .insert(*offset, (*attempts, *not_before_ms));
            }
        }
        Ok(Self {
            state: Mutex::new(state),
            changed: Notify::new(),
            fill_lock: tokio::sync::Mutex::new(()),
            seek_gate: tokio::sync::RwLock::new(()),
            redrive_lock: tokio::sync::Mutex::new(()),
            filter,
            boot,
            closed: AtomicBool::new(false),
        })
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The floors of the partitions, for retention: segments below them may go.
    pub(crate) fn floor(&self, key: PartitionKey) -> Option<u64> {
        lock(&self.state)
            .partitions
            .get(&key)
            .map(|partition| partition.floor)
    }

    fn epoch(&self, lease: u32) -> u64 {
        (u64::from(self.boot) << 32) | u64::from(lease)
    }
}

/// What to do with an event whose attempt failed.
enum Failure {
    Retry {
        topic: u64,
        partition: u32,
        offset: u64,
        attempts: u32,
        not_before_ms: u64,
    },
    DeadLetter {
        topic: u64,
        partition: u32,
        offset: u64,
        reason: String,
    },
}

/// How long an event waits parked while its dead letter is being stored.
const PARK_MS: u64 = 60_000;

fn parked(now_ms: u64) -> SlotState {
    SlotState::Leased {
        deadline_ms: now_ms.saturating_add(PARK_MS),
        lease: 0,
        consumer: Arc::from(""),
    }
}

fn backoff_ms(spec: &SubscriptionSpec, attempts: u32, jitter: u64) -> u64 {
    let exponent = attempts.saturating_sub(1).min(64) as i32;
    let delay = (spec.retry.initial_ms as f64 * spec.retry.multiplier.powi(exponent))
        .min(spec.retry.max_ms as f64);
    let delay = delay.max(0.0) as u64;
    // Equal jitter: half the delay fixed, half spread, so retries of many events do not align.
    let half = delay / 2;
    half + if half == 0 { 0 } else { jitter % (half + 1) }
}

/// Leases past their deadline fail: retry (after backoff) or dead-letter. Called under the lock.
fn expire(
    spec: &SubscriptionSpec,
    state: &mut QueueState,
    now_ms: u64,
    failures: &mut Vec<Failure>,
) {
    // Most pulls find nothing due: skip the walk over every slot until the earliest deadline.
    if now_ms < state.earliest_deadline_ms {
        return;
    }
    let mut expired = Vec::new();
    let mut earliest = u64::MAX;
    for (key, partition) in &state.partitions {
        for (offset, slot) in &partition.slots {
            if let SlotState::Leased { deadline_ms, .. } = slot.state {
                if deadline_ms <= now_ms {
                    expired.push((*key, *offset, slot.attempts));
                } else {
                    earliest = earliest.min(deadline_ms);
                }
            }
        }
    }
    state.earliest_deadline_ms = earliest;
    for (key, offset, attempts) in expired {
        fail_attempt(
            spec,
            state,
            key,
            offset,
            attempts,
            now_ms,
            None,
            "lease expired",
            failures,
        );
    }
}

/// Turns a failed attempt into a retry or, at `max_deliveries`, a dead letter.
#[allow(clippy::too_many_arguments)]
fn fail_attempt(
    spec: &SubscriptionSpec,
    state: &mut QueueState,
    key: PartitionKey,
    offset: u64,
    attempts: u32,
    now_ms: u64,
    delay_ms: Option<u64>,
    what: &str,
    failures: &mut Vec<Failure>,
) {
    let jitter = state.jitter();
    let Some(partition) = state.partitions.get_mut(&key) else {
        return;
    };
    let Some(slot) = partition.slots.get_mut(&offset) else {
        return;
    };
    if attempts >= spec.max_deliveries {
        // Stays leased (to nobody) until the dead letter is stored, so it is not delivered again;
        // should the storing never finish (its request dropped), the parking lease runs out and
        // the event is taken up again.
        slot.state = parked(now_ms);
        failures.push(Failure::DeadLetter {
            topic: key.0,
            partition: key.1,
            offset,
            reason: format!(
                "max_deliveries ({}) reached; last: {what}",
                spec.max_deliveries
            ),
        });
        return;
    }
    let not_before_ms =
        now_ms.saturating_add(delay_ms.unwrap_or_else(|| backoff_ms(spec, attempts, jitter)));
    slot.state = SlotState::Pending { not_before_ms };
    failures.push(Failure::Retry {
        topic: key.0,
        partition: key.1,
        offset,
        attempts,
        not_before_ms,
    });
}

/// Persists retries and stores dead letters, then marks those done.
async fn settle_failures(
    broker: &Broker,
    subscription: &Subscription,
    group: &QueueGroup,
    failures: Vec<Failure>,
) -> Result<(), BrokerError> {
    if failures.is_empty() {
        return Ok(());
    }
    let mut changes = QueueChanges::default();
    let mut dead = Vec::new();
    for failure in failures {
        match failure {
            Failure::Retry {
                topic,
                partition,
                offset,
                attempts,
                not_before_ms,
            } => {
                changes
                    .retries
                    .push((topic, partition, offset, attempts, not_before_ms));
            }
            Failure::DeadLetter {
                topic,
                partition,
                offset,
                reason,
            } => dead.push((topic, partition, offset, reason)),
        }
    }
    let mut dead = dead.into_iter();
    while let Some((topic_id, partition, offset, reason)) = dead.next() {
        if let Err(error) =
            dead_letter(broker, subscription, topic_id, partition, offset, &reason).await
        {
            // The dead letter was not stored (a full disk, say): no event may stay parked on a
            // lease to nobody. This one and every one after it become pending again and are
            // retried like any failure.
            {
                let mut state = lock(&group.state);
                let retry_at = broker
                    .clock_ms()
                    .saturating_add(subscription.spec.retry.initial_ms);
                for (topic_id, partition, offset, _) in
                    std::iter::once((topic_id, partition, offset, reason)).chain(dead)
                {
                    if let Some(slot) = state
                        .partitions
                        .get_mut(&(topic_id, partition))
                        .and_then(|entry| entry.slots.get_mut(&offset))
                    {
                        slot.state = SlotState::Pending {
                            not_before_ms: retry_at,
                        };
                    }
                }
            }
            let _ = broker
                .store
                .commit_queue_changes(subscription.id, changes)
                .await;
            group.changed.notify_waiters();
            return Err(error);
        }
        let mut state = lock(&group.state);
        state.dead_lettered += 1;
        if let Some(entry) = state.partitions.get_mut(&(topic_id, partition)) {
            entry.slots.remove(&offset);
            entry.recompute_floor();
            changes.done.push((topic_id, partition, offset));
            changes.floors.push((topic_id, partition, entry.floor));
        }
    }
    broker
        .store
        .commit_queue_changes(subscription.id, changes)
        .await?;
    group.changed.notify_waiters();
    Ok(())
}

/// Appends the event at `offset` to the subscription's dead-letter topic, with the extensions
/// that say why and where it came from.
async fn dead_letter(
    broker: &Broker,
    subscription: &Subscription,
    topic_id: u64,
    partition: u32,
    offset: u64,
    reason: &str,
) -> Result<(), BrokerError> {
    let Some(topic) = broker.topic_by_id(topic_id) else {
        return Ok(()); // the topic was deleted meanwhile: nothing left to dead-letter
    };
    let read = broker
        .store
        .read(topic_id, partition, offset, 64 * 1024)
        .await?;
    let Some(record) = read
        .records
        .into_iter()
        .find(|record| record.offset == offset)
    else {
        return Ok(());
    };
    let mut event: Map<String, Value> =
        serde_json::from_slice(&record.payload).map_err(|error| {
            BrokerError::Storage(StoreError::Worker(format!(
                "stored event is not JSON: {error}"
            )))
        })?;
    // An event redriven (and failing again) keeps naming where it first came from; any other
    // event's origin is where it is now.
    if !is_redrive_topic(topic.name()) {
        event.insert("origintopic".into(), Value::String(topic.name().to_owned()));
        event.insert("originpartition".into(), Value::from(partition));
        event.insert("originoffset".into(), Value::from(offset));
    }
    event.insert("deadletterreason".into(), Value::String(reason.to_owned()));
    event.insert(
        "deadlettersubscription".into(),
        Value::String(subscription.name.clone()),
    );
    let owned = OwnedEvent::new(&event, record.key.as_ref());
    let to_publish = owned.as_event();
    broker
        .append_internal(
            &subscription.spec.dead_letter_topic,
            std::slice::from_ref(&to_publish),
        )
        .await?;
    Ok(())
}

/// An event Herald writes itself (dead letter, redrive): its JSON and routing attributes.
struct OwnedEvent {
    body: Vec<u8>,
    id: String,
    source: String,
    event_type: String,
    key: Option<String>,
}

impl OwnedEvent {
    fn new(event: &Map<String, Value>, key: Option<&Bytes>) -> Self {
        let text = |name: &str| {
            event
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        Self {
            // A map of JSON values always serializes.
            body: serde_json::to_vec(event).unwrap_or_default(),
            id: text("id"),
            source: text("source"),
            event_type: text("type"),
            key: key
                .and_then(|key| std::str::from_utf8(key).ok())
                .map(str::to_owned),
        }
    }

    fn as_event(&self) -> EventToPublish<'_> {
        EventToPublish {
            id: self.id.as_str().into(),
            source: self.source.as_str().into(),
            event_type: self.event_type.as_str().into(),
            partition_key: self.key.as_deref().map(Into::into),
            body: &self.body,
        }
    }
}

/// Prefix of the internal topics that carry redriven events back into one subscription.
const REDRIVE_PREFIX: &str = "_redrive.";

pub(crate) fn is_redrive_topic(topic: &str) -> bool {
    topic.starts_with(REDRIVE_PREFIX)
}

/// The topic that carries redriven events back into one subscription only.
pub(crate) fn redrive_topic(subscription: &str) -> String {
    format!("{REDRIVE_PREFIX}{subscription}")
}

/// Parses an event's top-level attributes, for filters.
fn attributes(payload: &[u8]) -> Map<String, Value> {
    serde_json::from_slice::<Map<String, Value>>(payload).unwrap_or_default()
}

/// Reads new events into the windows of `partitions` (as far as `WINDOW_EVENTS_MAX` allows),
/// applying the filter: events it refuses are done at once.
async fn fill_windows(
    broker: &Broker,
    group: &QueueGroup,
    partitions: &[(Arc<Topic>, u32)],
) -> Result<(), BrokerError> {
    let _fill = group.fill_lock.lock().await;
    for (topic, partition) in partitions {
        let key = (topic.record.id, *partition);
        let Ok(info) = broker.store.partition_info(key.0, key.1) else {
            continue;
        };
        let read_to = {
            let mut state = lock(&group.state);
            let entry = partition_entry(&mut state, key, info.start_offset);
            if entry.read_to < info.start_offset {
                // Retention passed the window (only possible for events already done).
                entry.read_to = info.start_offset;
                entry.slots.retain(|offset, _| *offset >= info.start_offset);
                entry.recompute_floor();
            }
            if entry.read_to >= info.end_offset || entry.read_to - entry.floor >= WINDOW_EVENTS_MAX
            {
                continue;
            }
            entry.read_to
        };
        let records = match broker.store.read(key.0, key.1, read_to, 1024 * 1024).await {
            Ok(read) => read.records,
            Err(StoreError::Read(ReadError::OffsetOutOfRange { .. })) => continue,
            Err(error) => return Err(error.into()),
        };
        let mut state = lock(&group.state);
        let Some(entry) = state.partitions.get_mut(&key) else {
            continue;
        };
        for record in records {
            if record.offset != entry.read_to || entry.read_to - entry.floor >= WINDOW_EVENTS_MAX {
                break;
            }
            entry.read_to += 1;
            if entry.done_ahead.remove(&record.offset) {
                continue;
            }
            let passes = group
                .filter
                .as_ref()
                .is_none_or(|filter| filter.matches(&attributes(&record.payload)));
            if !passes {
                entry.retries_ahead.remove(&record.offset);
                continue;
            }
            let (attempts, not_before_ms) =
                entry.retries_ahead.remove(&record.offset).unwrap_or((0, 0));
            entry.slots.insert(
                record.offset,
                Slot {
                    attempts,
                    state: SlotState::Pending { not_before_ms },
                    key: record.key,
                },
            );
        }
        entry.recompute_floor();
    }
    Ok(())
}

/// A partition's state; one the group never saw (a topic created later) starts at its first
/// retained event.
fn partition_entry(
    state: &mut QueueState,
    key: PartitionKey,
    start_offset: u64,
) -> &mut QueuePartition {
    state
        .partitions
        .entry(key)
        .or_insert_with(|| QueuePartition {
            floor: start_offset,
            read_to: start_offset,
            ..QueuePartition::default()
        })
}

/// The partitions a queue subscription covers: its topics' and its redrive topic's.
fn covered(broker: &Broker, subscription: &Subscription) -> Vec<(Arc<Topic>, u32)> {
    let mut partitions = broker.partitions_of(&subscription.spec);
    if let Ok(redrive) = broker.topic(&redrive_topic(&subscription.name)) {
        partitions.push((redrive, 0));
    }
    partitions
}

/// Marks one event done without a delivery (a reply already handed to its requester): an event
/// not read into the window yet is skipped when it is, a pending one leaves the window. A leased
/// one is left to its consumer. The change is made in memory at once; the caller makes it
/// durable with the returned changes (empty when there is nothing to store).
pub(crate) async fn mark_done(
    broker: &Broker,
    group: &QueueGroup,
    topic_id: u64,
    partition: u32,
    offset: u64,
) -> Result<QueueChanges, BrokerError> {
    let key = (topic_id, partition);
    let info = broker.store.partition_info(topic_id, partition)?;
    let _gate = group.seek_gate.read().await;
    let mut changes = QueueChanges::default();
    let mut state = lock(&group.state);
    let entry = partition_entry(&mut state, key, info.start_offset);
    if offset < entry.floor {
        return Ok(changes);
    }
    if offset >= entry.read_to {
        entry.done_ahead.insert(offset);
        entry.retries_ahead.remove(&offset);
        changes.done.push((topic_id, partition, offset));
    } else if let Some(SlotState::Pending { .. }) = entry.slots.get(&offset).map(|slot| &slot.state)
    {
        entry.slots.remove(&offset);
        changes.done.push((topic_id, partition, offset));
        entry.recompute_floor();
        changes.floors.push((topic_id, partition, entry.floor));
    }
    Ok(changes)
}

pub(crate) async fn pull(
    broker: &Broker,
    subscription: &Subscription,
    group: &QueueGroup,
    consumer: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, BrokerError> {
    let deadline = tokio::time::Instant::now() + wait;
    let consumer: Arc<str> = Arc::from(consumer);
    let spec = &subscription.spec;
    let mut refills = 0;
    loop {
        if group.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::SubscriptionNotFound(subscription.name.clone()));
        }
        let changed = group.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let mut topics_changed = broker.topics_changed.subscribe();

        let partitions = covered(broker, subscription);
        // The ends as seen now, before reading: an append from here on wakes the wait below.
        let ends: Vec<(tokio::sync::watch::Receiver<u64>, u64)> = partitions
            .iter()
            .filter_map(|(topic, partition)| {
                broker.store.watch_end(topic.record.id, *partition).ok()
            })
            .map(|mut end| {
                let seen = *end.borrow_and_update();
                (end, seen)
            })
            .collect();
        let now = broker.clock_ms();
        let mut failures = Vec::new();
        {
            let _gate = group.seek_gate.read().await;
            expire(spec, &mut lock(&group.state), now, &mut failures);
            settle_failures(broker, subscription, group, failures).await?;
        }
        fill_windows(broker, group, &partitions).await?;

        // Lease what is due, in offset order per partition, partitions in turn.
        let mut chosen: Vec<(Arc<Topic>, u32, u64, u32, u32, u64)> = Vec::new();
        let mut next_due = u64::MAX;
        {
            let mut state = lock(&group.state);
            let lease_deadline = now.saturating_add(spec.ack_timeout_ms);
            state.earliest_deadline_ms = state.earliest_deadline_ms.min(lease_deadline);
            let start = (state.delivered as usize) % partitions.len().max(1);
            for step in 0..partitions.len() {
                if chosen.len() >= max {
                    break;
                }
                let (topic, partition) = &partitions[(start + step) % partitions.len()];
                let key = (topic.record.id, *partition);
                let mut leases = Vec::new();
                if let Some(entry) = state.partitions.get_mut(&key) {
                    let mut blocked_keys: HashSet<Bytes> = HashSet::new();
                    for (offset, slot) in entry.slots.iter_mut() {
                        if chosen.len() + leases.len() >= max {
                            break;
                        }
                        let key_blocked = spec.ordering == KeyOrdering::Key
                            && slot
                                .key
                                .as_ref()
                                .is_some_and(|event_key| !blocked_keys.insert(event_key.clone()));
                        match slot.state {
                            SlotState::Pending { not_before_ms }
                                if not_before_ms <= now && !key_blocked =>
                            {
                                slot.attempts += 1;
                                leases.push((*offset, slot.attempts));
                            }
                            // A key-blocked event waits for its blocker, whose time counts.
                            SlotState::Pending { .. } if key_blocked => {}
                            SlotState::Pending { not_before_ms } => {
                                next_due = next_due.min(not_before_ms)
                            }
                            SlotState::Leased { deadline_ms, .. } => {
                                next_due = next_due.min(deadline_ms)
                            }
                        }
                    }
                }
                for (offset, attempts) in leases {
                    let lease = state.lease_number();
                    if let Some(slot) = state
                        .partitions
                        .get_mut(&key)
                        .and_then(|entry| entry.slots.get_mut(&offset))
                    {
                        slot.state = SlotState::Leased {
                            deadline_ms: lease_deadline,
                            lease,
                            consumer: consumer.clone(),
                        };
                    }
                    state.delivered += 1;
                    if attempts > 1 {
                        state.redelivered += 1;
                    }
                    chosen.push((
                        topic.clone(),
                        *partition,
                        offset,
                        attempts,
                        lease,
                        lease_deadline,
                    ));
                }
            }
        }
        if !chosen.is_empty() {
            return read_deliveries(broker, subscription, group, chosen).await;
        }
        // Events already stored but not read into the window yet (a chunk the filter refused,
        // or done before a restart): read on at once rather than wait for a new append.
        let unread = {
            let state = lock(&group.state);
            partitions.iter().any(|(topic, partition)| {
                let key = (topic.record.id, *partition);
                let end = broker
                    .store
                    .partition_info(key.0, key.1)
                    .map_or(0, |info| info.end_offset);
                state.partitions.get(&key).is_some_and(|entry| {
                    entry.read_to < end && entry.read_to - entry.floor < WINDOW_EVENTS_MAX
                })
            })
        };
        if unread && refills < REFILLS_PER_WAIT_MAX {
            refills += 1;
            continue;
        }
        refills = 0;
        let now_instant = tokio::time::Instant::now();
        if now_instant >= deadline {
            return Ok(Vec::new());
        }
        // Wait for an append, an ack/nack/expiry, a new topic, the next due time, or the end.
        let until_due = if next_due == u64::MAX {
            deadline
        } else {
            (now_instant + Duration::from_millis(next_due.saturating_sub(now).max(1))).min(deadline)
        };
        let mut waits = Vec::new();
        for (mut end, seen) in ends {
            waits.push(Box::pin(async move {
                let _ = end.wait_for(|end| *end > seen).await;
            })
                as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);
        }
        waits.push(Box::pin(async move {
            let _ = topics_changed.changed().await;
        }));
        tokio::select! {
            _ = futures_util::future::select_all(waits) => {}
            _ = changed => {}
            _ = tokio::time::sleep_until(until_due) => {}
        }
    }
}

/// Bytes read from the log per cache miss when making deliveries. Small: a pull leases a few
/// events, scattered among others (the log reads on to the end of the frame that holds the
/// offset, whatever this says); a 1 MiB read per pull cost most of a webhook delivery's CPU.
const DELIVERY_READ_BYTES: u32 = 64 * 1024;

/// Reads the leased events back from the log and makes their deliveries.
async fn read_deliveries(
    broker: &Broker,
    subscription: &Subscription,
    group: &QueueGroup,
    chosen: Vec<(Arc<Topic>, u32, u64, u32, u32, u64)>,
) -> Result<Vec<Delivery>, BrokerError> {
    let mut deliveries = Vec::with_capacity(chosen.len());
    let mut cache: Vec<Record> = Vec::new();
    let mut cache_key = (0u64, u32::MAX);
    let mut bytes = 0usize;
    let mut chosen = chosen.into_iter();
    while let Some((topic, partition, offset, attempts, lease, deadline_ms)) = chosen.next() {
        if bytes >= broker.config().response_bytes_max {
            // The answer is full: what was leased beyond it goes back, as if never handed out.
            let mut state = lock(&group.state);
            for (topic, partition, offset, _, lease, _) in
                std::iter::once((topic, partition, offset, attempts, lease, deadline_ms))
                    .chain(chosen)
            {
                let slot = state
                    .partitions
                    .get_mut(&(topic.record.id, partition))
                    .and_then(|entry| entry.slots.get_mut(&offset));
                if let Some(slot) = slot
                    && matches!(slot.state, SlotState::Leased { lease: current, .. } if current == lease)
                {
                    slot.attempts -= 1;
                    slot.state = SlotState::Pending { not_before_ms: 0 };
                }
                state.delivered -= 1;
            }
            break;
        }
        let key = (topic.record.id, partition);
        let cached = if cache_key == key {
            cache.iter().find(|record| record.offset == offset).cloned()
        } else {
            None
        };
        let record = match cached {
            Some(record) => record,
            None => {
                let read = broker
                    .store
                    .read(key.0, key.1, offset, DELIVERY_READ_BYTES)
                    .await?;
                cache = read.records;
                cache_key = key;
                match cache.iter().find(|record| record.offset == offset) {
                    Some(record) => record.clone(),
                    None => continue,
                }
            }
        };
        let receipt = broker.receipts.sign_queue(&StreamReceipt {
            subscription_id: subscription.id,
            topic_id: key.0,
            partition,
            offset,
            epoch: group.epoch(lease),
        });
        bytes += record.payload.len();
        deliveries.push(Delivery {
            receipt,
            attempt: attempts,
            deadline_ms,
            event: StoredEvent {
                topic,
                partition,
                offset,
                timestamp_ms: record.timestamp_ms,
                event: record.payload,
            },
        });
    }
    Ok(deliveries)
}

/// What an ack-like call does to each current lease.
#[derive(Debug, Clone)]
pub enum Settle {
    Ack,
    Nack {
        delay: Option<Duration>,
    },
    /// A nack by Herald's own consumer (a webhook attempt that failed), saying why: the reason
    /// goes into `deadletterreason` when it was the last attempt.
    Fail {
        delay: Option<Duration>,
        reason: String,
    },
    Extend {
        by: Duration,
    },
    Reject {
        reason: String,
    },
    /// Gives the lease back untried: pending again at once, its attempt not counted (deliveries
    /// that Herald's own consumer leased but decided not to send).
    Release,
}

pub(crate) async fn settle(
    broker: &Broker,
    subscription: &Subscription,
    group: &QueueGroup,
    receipts: &[String],
    action: Settle,
) -> Result<Vec<AckStatus>, BrokerError> {
    let spec = &subscription.spec;
    let _gate = group.seek_gate.read().await;
    let now = broker.clock_ms();
    let mut statuses = Vec::with_capacity(receipts.len());
    let mut changes = QueueChanges::default();
    let mut failures = Vec::new();
    let mut touched = BTreeSet::new();
    {
        let mut state = lock(&group.state);
        for text in receipts {
            let Some(receipt) = broker
                .receipts
                .verify_queue(text)
                .filter(|receipt| receipt.subscription_id == subscription.id)
            else {
                statuses.push(AckStatus::Unknown);
                continue;
            };
            let key = (receipt.topic_id, receipt.partition);
            let current = state
                .partitions
                .get(&key)
                .and_then(|entry| entry.slots.get(&receipt.offset))
                .and_then(|slot| match &slot.state {
                    SlotState::Leased {
                        deadline_ms, lease, ..
                    } if group.epoch(*lease) == receipt.epoch && *deadline_ms > now => {
                        Some((*deadline_ms, slot.attempts))
                    }
                    _ => None,
                });
            let Some((deadline_ms, attempts)) = current else {
                statuses.push(AckStatus::Stale);
                continue;
            };
            statuses.push(AckStatus::Ok);
            match &action {
                Settle::Ack => {
                    let entry = state.partitions.get_mut(&key).expect("found above");
                    entry.slots.remove(&receipt.offset);
                    changes.done.push((key.0, key.1, receipt.offset));
                    touched.insert(key);
                    state.acked += 1;
                }
                Settle::Nack { delay } | Settle::Fail { delay, .. } => {
                    let delay_ms =
                        delay.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    let what = match &action {
                        Settle::Fail { reason, .. } => reason.as_str(),
                        _ => "nacked",
                    };
                    fail_attempt(
                        spec,
                        &mut state,
                        key,
                        receipt.offset,
                        attempts,
                        now,
                        delay_ms,
                        what,
                        &mut failures,
                    );
                }
                Settle::Extend { by } => {
                    let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
                    let cap = now
                        .saturating_add(u64::try_from(LEASE_MAX.as_millis()).unwrap_or(u64::MAX));
                    let slot = state
                        .partitions
                        .get_mut(&key)
                        .and_then(|entry| entry.slots.get_mut(&receipt.offset))
                        .expect("found above");
                    if let SlotState::Leased {
                        deadline_ms: deadline,
                        ..
                    } = &mut slot.state
                    {
                        *deadline = deadline_ms.saturating_add(by_ms).min(cap);
                    }
                }
                Settle::Release => {
                    let slot = state
                        .partitions
                        .get_mut(&key)
                        .and_then(|entry| entry.slots.get_mut(&receipt.offset))
                        .expect("found above");
                    // Undo what the lease counted: the next lease counts it again.
                    let was_redelivery = slot.attempts > 1;
                    slot.attempts = slot.attempts.saturating_sub(1);
                    slot.state = SlotState::Pending { not_before_ms: 0 };
                    state.delivered = state.delivered.saturating_sub(1);
                    if was_redelivery {
                        state.redelivered = state.redelivered.saturating_sub(1);
                    }
                }
                Settle::Reject { reason } => {
                    let slot = state
                        .partitions
                        .get_mut(&key)
                        .and_then(|entry| entry.slots.get_mut(&receipt.offset))
                        .expect("found above");
                    slot.state = parked(now);
                    failures.push(Failure::DeadLetter {
                        topic: key.0,
                        partition: key.1,
                        offset: receipt.offset,
                        reason: format!("rejected: {reason}"),
                    });
                }
            }
        }
        for key in touched {
            if let Some(entry) = state.partitions.get_mut(&key) {
                entry.recompute_floor();
                changes.floors.push((key.0, key.1, entry.floor));
            }
        }
    }
    // Durable before answering: acks (and the retries of nacks) in one group-committed write.
    broker
        .store
        .commit_queue_changes(subscription.id, changes)
        .await?;
    settle_failures(broker, subscription, group, failures).await?;
    group.changed.notify_waiters();
    Ok(statuses)
}

pub(crate) async fn seek(
    broker: &Broker,
    subscription: &Subscription,
    group: &QueueGroup,
    target: SeekTarget,
) -> Result<(), BrokerError> {
    let partitions = covered(broker, subscription);
    let targets = crate::stream::seek_positions(broker, &partitions, &target).await?;
    let _gate = group.seek_gate.write().await;
    let _fill = group.fill_lock.lock().await;
    let mut changes = QueueChanges::default();
    {
        let mut state = lock(&group.state);
        for (topic, partition, offset) in &targets {
            // Everything before the target is done; everything from it is pending again, and
            // every lease on it is void.
            state.partitions.insert(
                (*topic, *partition),
                QueuePartition {
                    floor: *offset,
                    read_to: *offset,
                    ..QueuePartition::default()
                },
            );
            changes.resets.push((*topic, *partition, *offset));
        }
    }
    broker
        .store
        .commit_queue_changes(subscription.id, changes)
        .await?;
    group.changed.notify_waiters();
    Ok(())
}

/// Moves up to `max` events of this subscription from its dead-letter topic back into it (into
/// its own redrive topic, which only it reads). Returns how many.
pub(crate) async fn redrive(
    broker: &Broker,
    subscription: &Subscription,
    group: &QueueGroup,
    max: usize,
) -> Result<usize, BrokerError> {
    // One redrive at a time per subscription, so two calls never move the same dead letter.
    let _redriving = group.redrive_lock.lock().await;
    let Ok(dead_letters) = broker.topic(&subscription.spec.dead_letter_topic) else {
        return Ok(0);
    };
    let mut moved = Vec::new();
    let mut cursors = Vec::new();
    for partition in 0..dead_letters.record.partitions {
        let cursor_key = format!(
            "redrive_cursor:{}:{}:{partition}",
            subscription.id, dead_letters.record.id
        );
        let mut cursor = match broker.store.setting(&cursor_key)? {
            Some(bytes) if bytes.len() == 8 => {
                u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
            }
            _ => 0,
        };
        let info = broker
            .store
            .partition_info(dead_letters.record.id, partition)?;
        cursor = cursor.max(info.start_offset);
        let start = cursor;
        while moved.len() < max && cursor < info.end_offset {
            let read = broker
                .store
                .read(dead_letters.record.id, partition, cursor, 1024 * 1024)
                .await?;
            if read.records.is_empty() {
                break;
            }
            for record in read.records {
                if moved.len() >= max {
                    break;
                }
                cursor = record.offset + 1;
                let mut event: Map<String, Value> =
                    serde_json::from_slice(&record.payload).unwrap_or_default();
                if event.get("deadlettersubscription").and_then(Value::as_str)
                    != Some(subscription.name.as_str())
                {
                    continue;
                }
                event.remove("deadletterreason");
                event.remove("deadlettersubscription");
                // The origin stays, so a second dead-lettering still names where it came from.
                moved.push((event, record.key));
            }
        }
        if cursor != start {
            cursors.push((cursor_key, cursor));
        }
    }
    let owned: Vec<OwnedEvent> = moved
        .iter()
        .map(|(event, key)| OwnedEvent::new(event, key.as_ref()))
        .collect();
    let events: Vec<EventToPublish<'_>> = owned.iter().map(OwnedEvent::as_event).collect();
    if !events.is_empty() {
        broker
            .append_internal(&redrive_topic(&subscription.name), &events)
            .await?;
    }
    // A crash between the append above and these writes redrives those events again on the
    // next call (at-least-once).
    for (cursor_key, cursor) in cursors {
        broker
            .store
            .put_setting(&cursor_key, cursor.to_le_bytes().to_vec())
            .await?;
    }
    Ok(events.len())
}

pub(crate) async fn stats(
    broker: &Broker,
    subscription: &Subscription,
    group: &QueueGroup,
) -> QueueStats {
    let partitions = covered(broker, subscription);
    let now = broker.clock_ms();
    let mut floors = Vec::new();
    let mut stats = {
        let state = lock(&group.state);
        let mut stats = QueueStats {
            delivered: state.delivered,
            acked: state.acked,
            redelivered: state.redelivered,
            dead_lettered: state.dead_lettered,
            ..QueueStats::default()
        };
        for (topic, partition) in &partitions {
            let key = (topic.record.id, *partition);
            let Ok(info) = broker.store.partition_info(key.0, key.1) else {
                continue;
            };
            match state.partitions.get(&key) {
                Some(entry) => {
                    let unread = info
                        .end_offset
                        .saturating_sub(entry.read_to.max(info.start_offset));
                    let leased = entry
                        .slots
                        .values()
                        .filter(|slot| matches!(slot.state, SlotState::Leased { .. }))
                        .count() as u64;
                    let pending = entry.slots.len() as u64 - leased;
                    stats.backlog += unread + pending;
                    stats.in_flight += leased;
                    if entry.floor < info.end_offset {
                        floors.push((key, entry.floor.max(info.start_offset)));
                    }
                }
                None => {
                    stats.backlog += info.end_offset - info.start_offset;
                    if info.start_offset < info.end_offset {
                        floors.push((key, info.start_offset));
                    }
                }
            }
        }
        stats
    };
    for (key, floor) in floors {
        if let Ok(read) = broker.store.read(key.0, key.1, floor, 4096).await
            && let Some(record) = read.records.first()
        {
            let age = now.saturating_sub(record.timestamp_ms);
            stats.oldest_pending_age_ms = Some(
                stats
                    .oldest_pending_age_ms
                    .map_or(age, |oldest| oldest.max(age)),
            );
        }
    }
    stats
}

/// Leases a consumer holds now (for the SSE stream's `max_in_flight`).
pub(crate) fn leased_by(group: &QueueGroup, consumer: &str, now_ms: u64) -> usize {
    let state = lock(&group.state);
    state
        .partitions
        .values()
        .flat_map(|entry| entry.slots.values())
        .filter(|slot| {
            matches!(&slot.state, SlotState::Leased { consumer: holder, deadline_ms, .. }
                if holder.as_ref() == consumer && *deadline_ms > now_ms)
        })
        .count()
}

/// Resolves when the group's state changes (an ack, a nack, an expiry, a seek).
pub(crate) async fn changed(group: &QueueGroup) {
    group.changed.notified().await;
}
