//! Queue subscriptions: competing consumers, leases, per-event acks, retries with backoff, dead
//! letters, per-key ordering and filters, over the same partition logs as everything else.
//!
//! Per partition a queue keeps a *floor* (every offset below it is done: acked, dead-lettered
//! or filtered out) and a bounded *window* of the offsets read after it: each not-done offset has
//! a slot, either pending (deliverable from a time on), leased (to one pull, until a deadline) or
//! settling (a change of its state is being made durable). Payloads are never kept in memory; a
//! delivery reads its event from the log again (the page cache). Memory is bounded by
//! `WINDOW_EVENTS_MAX` slots per partition, whatever the backlog.
//!
//! Durable state (through the store, group-committed): the floor, offsets done above it, and the
//! attempt count and not-before time of events waiting for a retry. Leases are not durable: after
//! a restart every event that was leased is pending again (at-least-once).
//!
//! **Memory follows the store.** A change that must be durable (an ack, the retry of a nack or
//! of an expired lease, a dead letter) first marks its events settling, so that nothing else
//! changes them; then the dead letters are appended and the done marks, floors and retries
//! committed; only then does memory show the change, or, when the write failed, the events go
//! back to what they were. The broker runs each such change in a task of its own
//! (`broker::run_to_end`), so a caller that hangs up cannot stop it half-way.
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

use crate::broker::{
    Broker, BrokerError, Counters, EventToPublish, StoredEvent, Subscription, Topic, run_to_end,
};
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
    /// A change of its state (an ack, a retry, a dead letter) is being made durable: nothing
    /// else may change it until that change ends (see [`make_durable`]).
    Settling,
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
        // The floor only moves up (a seek replaces the partition instead), and never past the
        // read position: everything below it is done.
        debug_assert!(floor >= self.floor, "a queue floor moved back");
        debug_assert!(
            floor <= self.read_to,
            "a queue floor passed its read position"
        );
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

    /// Gives a lease back untried: pending again at once, its delivery not counted (events a
    /// pull leased but did not hand out, and `Settle::Release`). False when the slot is no
    /// longer under that lease.
    fn give_back(&mut self, key: PartitionKey, offset: u64, lease: u32) -> bool {
        let Some(slot) = self
            .partitions
            .get_mut(&key)
            .and_then(|entry| entry.slots.get_mut(&offset))
        else {
            return false;
        };
        if !matches!(slot.state, SlotState::Leased { lease: current, .. } if current == lease) {
            return false;
        }
        let was_redelivery = slot.attempts > 1;
        slot.attempts = slot.attempts.saturating_sub(1);
        slot.state = SlotState::Pending { not_before_ms: 0 };
        self.delivered = self.delivered.saturating_sub(1);
        if was_redelivery {
            self.redelivered = self.redelivered.saturating_sub(1);
        }
        true
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
    /// Held shared by every change of state from the moment it marks events settling until
    /// memory follows its commit, exclusively by a seek, so a seek's reset is never followed in
    /// the store by a change made before it.
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

    /// Delivered, acked, redelivered, dead-lettered.
    pub(crate) fn counters(&self) -> Counters {
        let state = lock(&self.state);
        [
            state.delivered,
            state.acked,
            state.redelivered,
            state.dead_lettered,
        ]
    }

    pub(crate) fn restore_counters(&self, counters: Counters) {
        let mut state = lock(&self.state);
        [
            state.delivered,
            state.acked,
            state.redelivered,
            state.dead_lettered,
        ] = counters;
    }

    fn epoch(&self, lease: u32) -> u64 {
        (u64::from(self.boot) << 32) | u64::from(lease)
    }
}

/// One event's change of state that must be durable before memory shows it.
#[derive(Debug)]
struct Transition {
    key: PartitionKey,
    offset: u64,
    /// What the slot was: it comes back if the change cannot be made durable.
    before: SlotState,
    after: After,
}

/// Where a settling event goes once its change is durable.
#[derive(Debug, Clone, PartialEq)]
enum After {
    /// Acked: done.
    Done,
    /// Pending again from this time (its attempts stay counted).
    Retry { not_before_ms: u64 },
    /// Appended to the dead-letter topic, then done.
    DeadLetter { reason: String },
}

/// Marks a slot settling and returns the transition that will end it.
fn begin(slot: &mut Slot, key: PartitionKey, offset: u64, after: After) -> Transition {
    Transition {
        key,
        offset,
        before: std::mem::replace(&mut slot.state, SlotState::Settling),
        after,
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

/// What follows a failed attempt (a nack, an expired lease): a retry after `delay_ms` or the
/// backoff, or, once `max_deliveries` attempts were made, a dead letter.
fn after_failure(
    spec: &SubscriptionSpec,
    attempts: u32,
    now_ms: u64,
    delay_ms: Option<u64>,
    jitter: u64,
    what: &str,
) -> After {
    if attempts >= spec.max_deliveries {
        return After::DeadLetter {
            reason: format!(
                "max_deliveries ({}) reached; last: {what}",
                spec.max_deliveries
            ),
        };
    }
    After::Retry {
        not_before_ms: now_ms
            .saturating_add(delay_ms.unwrap_or_else(|| backoff_ms(spec, attempts, jitter))),
    }
}

/// Leases past their deadline fail: each becomes a transition to a retry (after backoff) or a
/// dead letter. Called under the lock.
fn expire(
    spec: &SubscriptionSpec,
    state: &mut QueueState,
    now_ms: u64,
    transitions: &mut Vec<Transition>,
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
        let jitter = state.jitter();
        let after = after_failure(spec, attempts, now_ms, None, jitter, "lease expired");
        if let Some(slot) = state
            .partitions
            .get_mut(&key)
            .and_then(|entry| entry.slots.get_mut(&offset))
        {
            transitions.push(begin(slot, key, offset, after));
        }
    }
}

/// Settling events whose change has not ended: unless the change finishes (and takes them),
/// they go back to what they were when this is dropped (a failed write, or a panic).
struct Unsettled<'a> {
    group: &'a QueueGroup,
    transitions: Vec<Transition>,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.transitions.is_empty() {
            return;
        }
        {
            let mut state = lock(&self.group.state);
            for transition in self.transitions.drain(..) {
                if let SlotState::Leased { deadline_ms, .. } = transition.before {
                    // A lease whose deadline passed meanwhile expires at the next pull.
                    state.earliest_deadline_ms = state.earliest_deadline_ms.min(deadline_ms);
                }
                if let Some(slot) = state
                    .partitions
                    .get_mut(&transition.key)
                    .and_then(|entry| entry.slots.get_mut(&transition.offset))
                    && matches!(slot.state, SlotState::Settling)
                {
                    slot.state = transition.before;
                }
            }
        }
        self.group.changed.notify_waiters();
    }
}

/// Makes `transitions` durable, then lets memory follow: their dead letters are appended (in
/// one append), then their done marks, floors and retries committed in one group-committed
/// write; once that succeeded the events leave the window or become pending at their retry
/// time. If the commit fails, every event goes back to what it was (a nacked or acked lease is
/// leased again, an expired one expires at the next pull). A dead letter that could not be
/// appended (a full disk, say) becomes a retry after `retry.initial`, so no event is left
/// settling. The caller holds the seek gate (shared) since it marked the events settling.
async fn make_durable(
    broker: &Arc<Broker>,
    subscription: &Subscription,
    group: &QueueGroup,
    transitions: Vec<Transition>,
) -> Result<(), BrokerError> {
    if transitions.is_empty() {
        return Ok(());
    }
    let mut unsettled = Unsettled { group, transitions };
    let mut failure = None;
    let dead_letters = unsettled
        .transitions
        .iter()
        .any(|transition| matches!(transition.after, After::DeadLetter { .. }));
    if dead_letters
        && let Err(error) = dead_letter_all(broker, subscription, &unsettled.transitions).await
    {
        let retry_at = broker
            .clock_ms()
            .saturating_add(subscription.spec.retry.initial_ms);
        for transition in &mut unsettled.transitions {
            if matches!(transition.after, After::DeadLetter { .. }) {
                transition.after = After::Retry {
                    not_before_ms: retry_at,
                };
            }
        }
        failure = Some(error);
    }
    let changes = durable_changes(&lock(&group.state), &unsettled.transitions);
    broker
        .store
        .commit_queue_changes(subscription.id, changes)
        .await?;
    apply(
        &mut lock(&group.state),
        std::mem::take(&mut unsettled.transitions),
    );
    group.changed.notify_waiters();
    failure.map_or(Ok(()), Err)
}

/// The store's changes for `transitions`: done marks, retries, and the floor of each partition
/// as it will be once they are done (other events still settling count as not done).
fn durable_changes(state: &QueueState, transitions: &[Transition]) -> QueueChanges {
    let mut changes = QueueChanges::default();
    let mut finished: HashSet<(PartitionKey, u64)> = HashSet::new();
    let mut touched = BTreeSet::new();
    for transition in transitions {
        let (key, offset) = (transition.key, transition.offset);
        match &transition.after {
            After::Done | After::DeadLetter { .. } => {
                changes.done.push((key.0, key.1, offset));
                finished.insert((key, offset));
                touched.insert(key);
            }
            After::Retry { not_before_ms } => {
                let attempts = state
                    .partitions
                    .get(&key)
                    .and_then(|entry| entry.slots.get(&offset))
                    .map_or(0, |slot| slot.attempts);
                changes
                    .retries
                    .push((key.0, key.1, offset, attempts, *not_before_ms));
            }
        }
    }
    for key in touched {
        if let Some(entry) = state.partitions.get(&key) {
            let floor = entry
                .slots
                .keys()
                .copied()
                .find(|offset| !finished.contains(&(key, *offset)))
                .unwrap_or(entry.read_to);
            changes.floors.push((key.0, key.1, floor));
        }
    }
    changes
}

/// Memory follows committed transitions.
fn apply(state: &mut QueueState, transitions: Vec<Transition>) {
    let mut touched = BTreeSet::new();
    let (mut acked, mut dead_lettered) = (0, 0);
    for transition in transitions {
        let Some(entry) = state.partitions.get_mut(&transition.key) else {
            continue;
        };
        let settling = entry
            .slots
            .get(&transition.offset)
            .is_some_and(|slot| matches!(slot.state, SlotState::Settling));
        debug_assert!(settling, "a settling event changed while it settled");
        if !settling {
            continue;
        }
        match transition.after {
            After::Done | After::DeadLetter { .. } => {
                entry.slots.remove(&transition.offset);
                touched.insert(transition.key);
                if transition.after == After::Done {
                    acked += 1;
                } else {
                    dead_lettered += 1;
                }
            }
            After::Retry { not_before_ms } => {
                if let Some(slot) = entry.slots.get_mut(&transition.offset) {
                    slot.state = SlotState::Pending { not_before_ms };
                }
            }
        }
    }
    for key in touched {
        if let Some(entry) = state.partitions.get_mut(&key) {
            entry.recompute_floor();
        }
    }
    state.acked += acked;
    state.dead_lettered += dead_lettered;
}

/// Appends the dead letters among `transitions` to the subscription's dead-letter topic, in one
/// append, each with the extensions that say why and where it came from.
async fn dead_letter_all(
    broker: &Arc<Broker>,
    subscription: &Subscription,
    transitions: &[Transition],
) -> Result<(), BrokerError> {
    let mut events = Vec::new();
    for transition in transitions {
        if let After::DeadLetter { reason } = &transition.after
            && let Some(event) = dead_letter_event(
                broker,
                subscription,
                transition.key,
                transition.offset,
                reason,
            )
            .await?
        {
            events.push(event);
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    let to_publish: Vec<EventToPublish<'_>> = events.iter().map(OwnedEvent::as_event).collect();
    broker
        .append_internal(&subscription.spec.dead_letter_topic, &to_publish)
        .await?;
    Ok(())
}

/// The dead letter of the event at `offset`: the stored event with `deadletterreason`,
/// `deadlettersubscription` and its origin. `None` when the event is gone (its topic was
/// deleted meanwhile: nothing left to dead-letter).
async fn dead_letter_event(
    broker: &Broker,
    subscription: &Subscription,
    (topic_id, partition): PartitionKey,
    offset: u64,
    reason: &str,
) -> Result<Option<OwnedEvent>, BrokerError> {
    let Some(topic) = broker.topic_by_id(topic_id) else {
        return Ok(None);
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
        return Ok(None);
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
    Ok(Some(OwnedEvent::new(&event, record.key.as_ref())))
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

/// The subscription a redrive topic belongs to.
pub(crate) fn redrive_subscription(topic: &str) -> Option<&str> {
    topic.strip_prefix(REDRIVE_PREFIX)
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
pub(crate) fn covered(broker: &Broker, subscription: &Subscription) -> Vec<(Arc<Topic>, u32)> {
    let mut partitions = broker.partitions_of(&subscription.spec);
    if let Ok(redrive) = broker.topic(&redrive_topic(&subscription.name)) {
        partitions.push((redrive, 0));
    }
    partitions
}

/// Marks one event done without a delivery (a reply already handed to its requester): durably
/// first, then in memory, where an event not read into the window yet is skipped when it is and
/// a pending one leaves the window. A leased one is left to its consumer (also one leased while
/// the mark was being committed: it is delivered, at least once).
pub(crate) async fn mark_done(
    broker: &Broker,
    subscription_id: u64,
    group: &QueueGroup,
    (topic_id, partition): PartitionKey,
    offset: u64,
) -> Result<(), BrokerError> {
    let key = (topic_id, partition);
    let _gate = group.seek_gate.read().await;
    let wanted = match lock(&group.state).partitions.get(&key) {
        Some(entry) if offset < entry.floor => false,
        Some(entry) if offset < entry.read_to => matches!(
            entry.slots.get(&offset).map(|slot| &slot.state),
            Some(SlotState::Pending { .. })
        ),
        _ => true,
    };
    if !wanted {
        return Ok(());
    }
    let changes = QueueChanges {
        done: vec![(topic_id, partition, offset)],
        ..QueueChanges::default()
    };
    broker
        .store
        .commit_queue_changes(subscription_id, changes)
        .await?;
    let start_offset = broker
        .store
        .partition_info(topic_id, partition)?
        .start_offset;
    let mut state = lock(&group.state);
    let entry = partition_entry(&mut state, key, start_offset);
    if offset < entry.floor {
        return Ok(());
    }
    if offset >= entry.read_to {
        entry.done_ahead.insert(offset);
        entry.retries_ahead.remove(&offset);
    } else if let Some(SlotState::Pending { .. }) = entry.slots.get(&offset).map(|slot| &slot.state)
    {
        entry.slots.remove(&offset);
        entry.recompute_floor();
    }
    Ok(())
}

/// Expires the leases past their deadline: their retries and dead letters are made durable.
/// Runs in a task of its own (`run_to_end`), so a pull dropped meanwhile cannot leave them
/// half-done.
async fn expire_leases(
    broker: &Arc<Broker>,
    subscription: &Subscription,
) -> Result<(), BrokerError> {
    let Some(group) = subscription.queue_group() else {
        return Ok(());
    };
    let _gate = group.seek_gate.read().await;
    let mut transitions = Vec::new();
    expire(
        &subscription.spec,
        &mut lock(&group.state),
        broker.clock_ms(),
        &mut transitions,
    );
    make_durable(broker, subscription, group, transitions).await
}

/// Events a pull leased but has not handed out yet (in the order of its deliveries): given
/// back untried when the pull ends without handing them out, because its caller went away, a
/// read failed, or the answer was full.
struct Handout<'a> {
    group: &'a QueueGroup,
    leases: std::collections::VecDeque<(PartitionKey, u64, u32)>,
}

impl Drop for Handout<'_> {
    fn drop(&mut self) {
        if self.leases.is_empty() {
            return;
        }
        {
            let mut state = lock(&self.group.state);
            for (key, offset, lease) in self.leases.drain(..) {
                state.give_back(key, offset, lease);
            }
        }
        self.group.changed.notify_waiters();
    }
}

/// One event a pull leased: its topic, partition, offset, attempt, lease and deadline.
type Chosen = (Arc<Topic>, u32, u64, u32, u32, u64);

pub(crate) async fn pull(
    broker: &Arc<Broker>,
    subscription: &Arc<Subscription>,
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
        if now >= lock(&group.state).earliest_deadline_ms {
            // Leases ran out: their retries and dead letters become durable in a task of their
            // own, which a pull dropped meanwhile cannot stop half-way.
            let (broker, subscription) = (broker.clone(), subscription.clone());
            run_to_end(async move { expire_leases(&broker, &subscription).await }).await?;
        }
        fill_windows(broker, group, &partitions).await?;

        // Lease what is due, in offset order per partition, partitions in turn.
        let mut chosen: Vec<Chosen> = Vec::new();
        let mut handout = Handout {
            group,
            leases: std::collections::VecDeque::new(),
        };
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
                            // Its change ends soon and wakes the group.
                            SlotState::Settling => {}
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
                    handout.leases.push_back((key, offset, lease));
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
            return read_deliveries(broker, subscription, handout, chosen).await;
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
        // A lease due already would make this wait a 1 ms spin; `earliest_deadline_ms` bounds
        // every lease, so the expiry above took it.
        debug_assert!(
            next_due > now
                || next_due == u64::MAX
                || lock(&group.state).earliest_deadline_ms <= now,
            "a lease past its deadline escaped expiry"
        );
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

/// Reads the leased events back from the log and makes their deliveries. What it does not
/// hand out (the answer is full, a read failed, the caller went away) `handout` gives back.
async fn read_deliveries(
    broker: &Broker,
    subscription: &Subscription,
    mut handout: Handout<'_>,
    chosen: Vec<Chosen>,
) -> Result<Vec<Delivery>, BrokerError> {
    let group = handout.group;
    let mut deliveries = Vec::with_capacity(chosen.len());
    let mut cache: Vec<Record> = Vec::new();
    let mut cache_key = (0u64, u32::MAX);
    let mut bytes = 0usize;
    for (topic, partition, offset, attempts, lease, deadline_ms) in chosen {
        if bytes >= broker.config().response_bytes_max {
            // The answer is full: what was leased beyond it goes back, as if never handed out.
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
                    // Gone from the log (retention, or its topic deleted): nothing to deliver;
                    // its lease runs out and the event leaves with the window.
                    None => {
                        handout.leases.pop_front();
                        continue;
                    }
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
        // Handed out (in the answer being made): no longer to give back.
        let handed = handout.leases.pop_front();
        debug_assert_eq!(handed, Some((key, offset, lease)));
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
    broker: &Arc<Broker>,
    subscription: &Subscription,
    group: &QueueGroup,
    receipts: &[String],
    action: Settle,
) -> Result<Vec<AckStatus>, BrokerError> {
    let spec = &subscription.spec;
    let _gate = group.seek_gate.read().await;
    let now = broker.clock_ms();
    let mut statuses = Vec::with_capacity(receipts.len());
    let mut transitions = Vec::new();
    let mut released = false;
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
            let jitter = state.jitter();
            let QueueState {
                partitions,
                delivered,
                redelivered,
                ..
            } = &mut *state;
            let current = partitions
                .get_mut(&key)
                .and_then(|entry| entry.slots.get_mut(&receipt.offset))
                .filter(|slot| {
                    matches!(&slot.state, SlotState::Leased { deadline_ms, lease, .. }
                        if group.epoch(*lease) == receipt.epoch && *deadline_ms > now)
                });
            let Some(slot) = current else {
                statuses.push(AckStatus::Stale);
                continue;
            };
            statuses.push(AckStatus::Ok);
            let offset = receipt.offset;
            match &action {
                Settle::Ack => transitions.push(begin(slot, key, offset, After::Done)),
                Settle::Nack { delay } | Settle::Fail { delay, .. } => {
                    let delay_ms =
                        delay.map(|delay| u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
                    let what = match &action {
                        Settle::Fail { reason, .. } => reason.as_str(),
                        _ => "nacked",
                    };
                    let after = after_failure(spec, slot.attempts, now, delay_ms, jitter, what);
                    transitions.push(begin(slot, key, offset, after));
                }
                Settle::Reject { reason } => {
                    let after = After::DeadLetter {
                        reason: format!("rejected: {reason}"),
                    };
                    transitions.push(begin(slot, key, offset, after));
                }
                Settle::Extend { by } => {
                    // Leases are not durable: an extension is memory only.
                    let by_ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
                    let cap = now
                        .saturating_add(u64::try_from(LEASE_MAX.as_millis()).unwrap_or(u64::MAX));
                    if let SlotState::Leased { deadline_ms, .. } = &mut slot.state {
                        *deadline_ms = deadline_ms.saturating_add(by_ms).min(cap);
                    }
                }
                Settle::Release => {
                    // Undo what the lease counted: the next lease counts it again.
                    let was_redelivery = slot.attempts > 1;
                    slot.attempts = slot.attempts.saturating_sub(1);
                    slot.state = SlotState::Pending { not_before_ms: 0 };
                    *delivered = delivered.saturating_sub(1);
                    if was_redelivery {
                        *redelivered = redelivered.saturating_sub(1);
                    }
                    released = true;
                }
            }
        }
    }
    // Durable before answering, and before memory shows it: acks, retries and dead letters
    // in one group-committed write.
    let settled = !transitions.is_empty();
    make_durable(broker, subscription, group, transitions).await?;
    if released && !settled {
        group.changed.notify_waiters();
    }
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
    // With the gate held exclusively no event is settling; with the fill lock nothing is read
    // into the windows meanwhile.
    let _gate = group.seek_gate.write().await;
    let _fill = group.fill_lock.lock().await;
    let changes = QueueChanges {
        resets: targets.clone(),
        ..QueueChanges::default()
    };
    broker
        .store
        .commit_queue_changes(subscription.id, changes)
        .await?;
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
        }
    }
    group.changed.notify_waiters();
    Ok(())
}

/// The setting that keeps how far a subscription's redrives have read one partition of its
/// dead-letter topic. It is keyed by the subscription's name, like `deadlettersubscription`:
/// a subscription deleted and created again under the same name (to change its settings)
/// redrives what the old one had not, and never one dead letter twice.
fn redrive_cursor_key(subscription: &str, dead_letter_topic_id: u64, partition: u32) -> String {
    format!("redrive_cursor.{subscription}.{dead_letter_topic_id}.{partition}")
}

/// The key of the same cursor before it was keyed by name (by subscription id).
fn legacy_redrive_cursor_key(
    subscription_id: u64,
    dead_letter_topic_id: u64,
    partition: u32,
) -> String {
    format!("redrive_cursor:{subscription_id}:{dead_letter_topic_id}:{partition}")
}

/// Moves up to `max` events of this subscription from its dead-letter topic back into it (into
/// its own redrive topic, which only it reads). Returns how many.
pub(crate) async fn redrive(
    broker: &Arc<Broker>,
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
        let cursor_key = redrive_cursor_key(&subscription.name, dead_letters.record.id, partition);
        let legacy_key =
            legacy_redrive_cursor_key(subscription.id, dead_letters.record.id, partition);
        let stored = match broker.store.setting(&cursor_key).await? {
            Some(bytes) => Some(bytes),
            None => broker.store.setting(&legacy_key).await?,
        };
        let mut cursor = match stored {
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
            cursors.push((cursor_key, Some(cursor.to_le_bytes().to_vec())));
            cursors.push((legacy_key, None));
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
    // A crash between the append above and this write redrives those events again on the
    // next call (at-least-once).
    if !cursors.is_empty() {
        broker.store.put_settings(cursors).await?;
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
                    // Leased, or settling (an ack or a nack on its way to the store).
                    let leased = entry
                        .slots
                        .values()
                        .filter(|slot| !matches!(slot.state, SlotState::Pending { .. }))
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
