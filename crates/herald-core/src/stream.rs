//! Stream subscriptions: a consumer group reading partitions in order and committing offsets.
//!
//! The partitions a subscription covers are spread over the consumers that pulled within the
//! last `ack_timeout` (sorted partitions dealt round-robin to sorted consumers). Each partition's
//! assignment has an *epoch* that changes whenever its owner changes or the group seeks; a
//! receipt carries the epoch it was delivered in, so an ack from a consumer that lost the
//! partition is `stale` and changes nothing. Commits are durable (through the store) before an
//! ack answers, and never move a position backwards; a seek may.
//!
//! In memory per group: the members, the assignment, each partition's fetch position (how far
//! its owner has been given events, like a Kafka consumer's position) and the committed
//! positions (a mirror of the store's).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_log::ReadError;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{Broker, BrokerError, Counters, StoredEvent, Subscription, Topic, now_ms};
use crate::receipt::StreamReceipt;
use crate::store::StoreError;

type PartitionKey = (u64, u32);

/// One event handed to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub receipt: String,
    /// Always 1 in stream mode: redelivery after a rebalance starts a new delivery.
    pub attempt: u32,
    /// The consumer keeps its partitions while it pulls again before this time (ms since epoch).
    pub deadline_ms: u64,
    pub event: StoredEvent,
}

/// The answer for one receipt of an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    Ok,
    /// Issued by Herald, but its partition has since moved to another consumer or the group
    /// sought elsewhere; nothing changed.
    Stale,
    /// Not a receipt of this subscription.
    Unknown,
}

/// Where a seek moves the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeekTarget {
    Earliest,
    Latest,
    /// The first event at or after this time (ms since the Unix epoch), on every partition.
    Time(u64),
    /// One partition to one offset; `topic` may be left out when the subscription covers one topic.
    Offset {
        topic: Option<String>,
        partition: u32,
        offset: u64,
    },
}

/// A member of the group, for statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    pub name: String,
    /// (topic, partition) pairs it owns.
    pub partitions: Vec<(String, u32)>,
    pub last_seen_ms: u64,
}

/// Statistics of a stream subscription.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Events after the committed positions.
    pub backlog: u64,
    /// Events delivered but not committed.
    pub in_flight: u64,
    /// Events delivered since the server started.
    pub delivered: u64,
    /// Events committed since the server started.
    pub acked: u64,
    pub consumers: Vec<ConsumerStats>,
}

#[derive(Debug)]
struct Member {
    last_seen: Instant,
    last_seen_ms: u64,
    /// Pulls in progress: a consumer that is waiting in a long poll never expires.
    pulling: u32,
}

#[derive(Debug, Clone)]
struct Owner {
    consumer: String,
    epoch: u64,
}

#[derive(Debug, Default)]
struct GroupState {
    members: BTreeMap<String, Member>,
    assignment: BTreeMap<PartitionKey, Owner>,
    committed: HashMap<PartitionKey, u64>,
    fetch: HashMap<PartitionKey, u64>,
    next_epoch: u64,
    delivered: u64,
    acked: u64,
    /// When a partition's uncommitted deliveries were last handed out; removed once a commit
    /// reaches the fetch position. Past `ack_timeout` they count as lost and are handed out
    /// again.
    handed_out: HashMap<PartitionKey, Instant>,
    /// Rotates which partition a pull reads first, so one busy partition cannot starve others.
    rotation: usize,
}

/// The run-time state of one subscription's consumer group.
#[derive(Debug)]
pub(crate) struct StreamGroup {
    state: Mutex<GroupState>,
    /// Woken when the assignment changes or the group seeks, so long polls re-plan.
    changed: Notify,
    /// Serializes pulls (they move fetch positions) and seeks.
    pull_lock: tokio::sync::Mutex<()>,
    /// Serializes commits, so positions are stored in order and never go backwards.
    commit_lock: tokio::sync::Mutex<()>,
    closed: AtomicBool,
}

fn lock(state: &Mutex<GroupState>) -> MutexGuard<'_, GroupState> {
    // Every holder leaves the state whole before anything could panic.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StreamGroup {
    pub(crate) fn new(committed: &[(u64, u32, u64)]) -> Self {
        let state = GroupState {
            committed: committed
                .iter()
                .map(|(topic_id, partition, offset)| ((*topic_id, *partition), *offset))
                .collect(),
            next_epoch: 1,
            ..GroupState::default()
        };
        Self {
            state: Mutex::new(state),
            changed: Notify::new(),
            pull_lock: tokio::sync::Mutex::new(()),
            commit_lock: tokio::sync::Mutex::new(()),
            closed: AtomicBool::new(false),
        }
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Delivered and acked (a stream has no redeliveries or dead letters of its own).
    pub(crate) fn counters(&self) -> Counters {
        let state = lock(&self.state);
        [state.delivered, state.acked, 0, 0]
    }

    pub(crate) fn restore_counters(&self, [delivered, acked, _, _]: Counters) {
        let mut state = lock(&self.state);
        state.delivered = delivered;
        state.acked = acked;
    }
}

impl GroupState {
    /// Drops members silent for longer than `timeout` and deals the partitions anew when the
    /// members or partitions changed. Partitions that change owner get a new epoch and restart
    /// at the committed position.
    fn rebalance(&mut self, partitions: &[PartitionKey], now: Instant, timeout: Duration) -> bool {
        self.members.retain(|_, member| {
            member.pulling > 0 || now.saturating_duration_since(member.last_seen) <= timeout
        });
        let consumers: Vec<String> = self.members.keys().cloned().collect();
        let mut changed = false;
        let mut assignment = BTreeMap::new();
        if !consumers.is_empty() {
            for (number, partition) in partitions.iter().enumerate() {
                let consumer = &consumers[number % consumers.len()];
                let owner = match self.assignment.get(partition) {
                    Some(owner) if &owner.consumer == consumer => owner.clone(),
                    _ => {
                        changed = true;
                        self.fetch.remove(partition);
                        self.handed_out.remove(partition);
                        let epoch = self.next_epoch;
                        self.next_epoch += 1;
                        Owner {
                            consumer: consumer.clone(),
                            epoch,
                        }
                    }
                };
                assignment.insert(*partition, owner);
            }
        }
        if assignment.len() != self.assignment.len() {
            changed = true;
        }
        for partition in self.assignment.keys() {
            if !assignment.contains_key(partition) {
                self.fetch.remove(partition);
                self.handed_out.remove(partition);
            }
        }
        self.assignment = assignment;
        changed
    }
}

fn partition_start(broker: &Broker, key: PartitionKey) -> u64 {
    broker
        .store
        .partition_info(key.0, key.1)
        .map(|info| info.start_offset)
        .unwrap_or(0)
}

/// The committed position of a partition: stored, or the partition's first retained event for
/// partitions of topics created after the subscription.
fn committed_of(broker: &Broker, state: &GroupState, key: PartitionKey) -> u64 {
    match state.committed.get(&key) {
        Some(offset) => *offset,
        None => partition_start(broker, key),
    }
}

struct Plan {
    topic: Arc<Topic>,
    partition: u32,
    fetch: u64,
    epoch: u64,
}

pub(crate) async fn pull(
    broker: &Broker,
    subscription: &Subscription,
    group: &StreamGroup,
    consumer: &str,
    max: usize,
    wait: Duration,
) -> Result<Vec<Delivery>, BrokerError> {
    let timeout = Duration::from_millis(subscription.spec.ack_timeout_ms);
    let deadline = Instant::now() + wait;
    {
        let mut state = lock(&group.state);
        if !state.members.contains_key(consumer) && state.members.len() >= GROUP_MEMBERS_MAX {
            return Err(BrokerError::Overloaded(format!(
                "the group already has {GROUP_MEMBERS_MAX} consumers; reuse consumer names"
            )));
        }
        let member = state.members.entry(consumer.to_owned()).or_insert(Member {
            last_seen: Instant::now(),
            last_seen_ms: now_ms(),
            pulling: 0,
        });
        member.pulling += 1;
    }
    // Ends the pull in the group's eyes also when the request is dropped (the client went away).
    let _pulling = Pulling { group, consumer };
    pull_until_deadline(
        broker,
        subscription,
        group,
        consumer,
        max,
        deadline,
        timeout,
    )
    .await
}

/// Most consumers one stream group tracks at once.
pub const GROUP_MEMBERS_MAX: usize = 1000;

struct Pulling<'a> {
    group: &'a StreamGroup,
    consumer: &'a str,
}

impl Drop for Pulling<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.group.state);
        if let Some(member) = state.members.get_mut(self.consumer) {
            member.pulling = member.pulling.saturating_sub(1);
            member.last_seen = Instant::now();
            member.last_seen_ms = now_ms();
        }
    }
}

async fn pull_until_deadline(
    broker: &Broker,
    subscription: &Subscription,
    group: &StreamGroup,
    consumer: &str,
    max: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<Delivery>, BrokerError> {
    loop {
        if group.closed.load(Ordering::SeqCst) {
            return Err(BrokerError::SubscriptionNotFound(subscription.name.clone()));
        }
        // Registered before planning, so a change while we read or wait is not missed.
        let changed = group.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let mut topics_changed = broker.topics_changed.subscribe();

        let guard = group.pull_lock.lock().await;
        let covered = broker.partitions_of(&subscription.spec);
        let keys: Vec<PartitionKey> = covered
            .iter()
            .map(|(topic, partition)| (topic.record.id, *partition))
            .collect();
        let mut plans: Vec<Plan> = {
            let mut state = lock(&group.state);
            let now = Instant::now();
            if let Some(member) = state.members.get_mut(consumer) {
                member.last_seen = now;
                member.last_seen_ms = now_ms();
            }
            if state.rebalance(&keys, now, timeout) {
                group.changed.notify_waiters();
            }
            let mut plans = Vec::new();
            for (topic, partition) in &covered {
                let key = (topic.record.id, *partition);
                let Some(owner) = state.assignment.get(&key) else {
                    continue;
                };
                if owner.consumer != consumer {
                    continue;
                }
                let epoch = owner.epoch;
                let committed = committed_of(broker, &state, key);
                // Deliveries not committed within ack_timeout of being handed out count as lost
                // (a response that never reached the consumer): hand them out again.
                let expired = state
                    .handed_out
                    .get(&key)
                    .is_some_and(|handed_out| now.saturating_duration_since(*handed_out) > timeout);
                if expired {
                    state.fetch.remove(&key);
                    state.handed_out.remove(&key);
                }
                let fetch = match state.fetch.get(&key) {
                    Some(fetch) => *fetch,
                    None => committed,
                };
                plans.push(Plan {
                    topic: topic.clone(),
                    partition: *partition,
                    fetch,
                    epoch,
                });
            }
            if !plans.is_empty() {
                let rotation = state.rotation % plans.len();
                plans.rotate_left(rotation);
                state.rotation = state.rotation.wrapping_add(1);
            }
            plans
        };

        let mut deliveries = Vec::new();
        let mut advanced: Vec<(PartitionKey, u64, u64)> = Vec::new();
        let deadline_ms = now_ms().saturating_add(subscription.spec.ack_timeout_ms);
        let mut bytes = 0usize;
        for plan in &mut plans {
            if deliveries.len() >= max || bytes >= broker.config().response_bytes_max {
                break;
            }
            let key = (plan.topic.record.id, plan.partition);
            let read = match broker
                .store
                .read(key.0, key.1, plan.fetch, 1024 * 1024)
                .await
            {
                Ok(read) => read,
                Err(StoreError::Read(ReadError::OffsetOutOfRange {
                    start_offset,
                    end_offset,
                    ..
                })) => {
                    // Retention passed the group's position: resume at the oldest retained event.
                    // A position past the end (a crash under fsync never/interval lost the log's
                    // tail but not the commit): resume at the end.
                    plan.fetch = plan.fetch.clamp(start_offset, end_offset);
                    broker
                        .store
                        .read(key.0, key.1, plan.fetch, 1024 * 1024)
                        .await?
                }
                Err(error) => return Err(error.into()),
            };
            let mut next = plan.fetch;
            for record in read.records {
                if deliveries.len() >= max || bytes >= broker.config().response_bytes_max {
                    break;
                }
                bytes += record.payload.len();
                next = record.offset + 1;
                let receipt = broker.receipts.sign_stream(&StreamReceipt {
                    subscription_id: subscription.id,
                    topic_id: key.0,
                    partition: key.1,
                    offset: record.offset,
                    epoch: plan.epoch,
                });
                deliveries.push(Delivery {
                    receipt,
                    attempt: 1,
                    deadline_ms,
                    event: StoredEvent {
                        topic: plan.topic.clone(),
                        partition: key.1,
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                        event: record.payload,
                    },
                });
            }
            if next != plan.fetch {
                advanced.push((key, plan.epoch, next));
            }
        }
        let redeliver_at = {
            let mut state = lock(&group.state);
            let now = Instant::now();
            for (key, epoch, next) in &advanced {
                // The pull lock keeps the assignment as planned; check anyway.
                if state
                    .assignment
                    .get(key)
                    .is_some_and(|owner| owner.epoch == *epoch)
                {
                    let previous = state.fetch.insert(*key, *next);
                    debug_assert!(
                        previous.is_none_or(|previous| previous <= *next),
                        "a fetch position moved back"
                    );
                    state.handed_out.insert(*key, now);
                }
            }
            state.delivered += deliveries.len() as u64;
            // When the earliest of this consumer's uncommitted hand-outs counts as lost.
            plans
                .iter()
                .filter_map(|plan| {
                    state
                        .handed_out
                        .get(&(plan.topic.record.id, plan.partition))
                })
                .min()
                .map(|handed_out| *handed_out + timeout)
        };
        drop(guard);
        if !deliveries.is_empty() || Instant::now() >= deadline {
            return Ok(deliveries);
        }

        // Nothing yet: wait for an append to one of our partitions, a change of the group or
        // of the topics, or the deadline.
        let mut waits = Vec::new();
        for plan in &plans {
            if let Ok(mut end) = broker.store.watch_end(plan.topic.record.id, plan.partition) {
                let fetch = plan.fetch;
                waits.push(Box::pin(async move {
                    let _ = end.wait_for(|end| *end > fetch).await;
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);
            }
        }
        waits.push(Box::pin(async move {
            let _ = topics_changed.changed().await;
        }));
        let any_append = futures_util::future::select_all(waits);
        // Also wake when uncommitted hand-outs count as lost, to hand them out again.
        let wake_at =
            redeliver_at.map_or(deadline, |at| (at + Duration::from_millis(1)).min(deadline));
        tokio::select! {
            _ = any_append => {}
            _ = changed => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

pub(crate) async fn ack(
    broker: &Broker,
    subscription: &Subscription,
    group: &StreamGroup,
    receipts: &[String],
) -> Result<Vec<AckStatus>, BrokerError> {
    let _commit = group.commit_lock.lock().await;
    let mut statuses = Vec::with_capacity(receipts.len());
    let mut commits: BTreeMap<PartitionKey, (u64, u64)> = BTreeMap::new();
    {
        let state = lock(&group.state);
        for text in receipts {
            let Some(receipt) = broker.receipts.verify_stream(text) else {
                statuses.push(AckStatus::Unknown);
                continue;
            };
            if receipt.subscription_id != subscription.id {
                statuses.push(AckStatus::Unknown);
                continue;
            }
            let key = (receipt.topic_id, receipt.partition);
            let current = state
                .assignment
                .get(&key)
                .is_some_and(|owner| owner.epoch == receipt.epoch);
            if !current {
                statuses.push(AckStatus::Stale);
                continue;
            }
            statuses.push(AckStatus::Ok);
            let committed = committed_of(broker, &state, key);
            let target = receipt.offset + 1;
            if target > committed {
                let entry = commits.entry(key).or_insert((committed, target));
                entry.1 = entry.1.max(target);
            }
        }
    }
    if !commits.is_empty() {
        let positions = commits
            .iter()
            .map(|((topic_id, partition), (_, target))| (*topic_id, *partition, *target))
            .collect();
        broker
            .store
            .commit_positions(subscription.id, positions)
            .await?;
        let mut state = lock(&group.state);
        for (key, (before, target)) in commits {
            let previous = *state.committed.get(&key).unwrap_or(&before);
            let committed = previous.max(target);
            state.acked += committed - previous;
            state.committed.insert(key, committed);
            let fetch = state.fetch.entry(key).or_insert(committed);
            *fetch = (*fetch).max(committed);
            if *fetch <= committed {
                // Everything handed out is committed: nothing left to count as lost.
                state.handed_out.remove(&key);
            }
        }
    }
    Ok(statuses)
}

/// The position `target` names on each of `covered`'s partitions (one, for an offset target).
pub(crate) async fn seek_positions(
    broker: &Broker,
    covered: &[(Arc<Topic>, u32)],
    target: &SeekTarget,
) -> Result<Vec<(u64, u32, u64)>, BrokerError> {
    let mut positions = Vec::new();
    match target {
        SeekTarget::Offset {
            topic,
            partition,
            offset,
        } => {
            let candidates: Vec<&(Arc<Topic>, u32)> = covered
                .iter()
                .filter(|(candidate, number)| {
                    *number == *partition
                        && topic.as_ref().is_none_or(|name| name == candidate.name())
                })
                .collect();
            // A queue's own redrive topic is not one of "its topics" for this rule.
            let topics: std::collections::BTreeSet<&str> = covered
                .iter()
                .map(|(topic, _)| topic.name())
                .filter(|name| !crate::queue::is_redrive_topic(name))
                .collect();
            if topic.is_none() && topics.len() > 1 {
                return Err(BrokerError::Invalid(format!(
                    "this subscription covers {} topics; name one with \"topic\" beside \"partition\" and \"offset\"",
                    topics.len()
                )));
            }
            let Some((found, number)) = candidates.first() else {
                return Err(BrokerError::Conflict(format!(
                    "partition {partition}{} is not covered by this subscription",
                    topic
                        .as_ref()
                        .map(|name| format!(" of topic {name:?}"))
                        .unwrap_or_default()
                )));
            };
            let info = broker.store.partition_info(found.record.id, *number)?;
            if *offset < info.start_offset || *offset > info.end_offset {
                return Err(BrokerError::OffsetOutOfRange {
                    partition: *number,
                    offset: *offset,
                    start_offset: info.start_offset,
                    end_offset: info.end_offset,
                });
            }
            positions.push((found.record.id, *number, *offset));
        }
        SeekTarget::Earliest | SeekTarget::Latest | SeekTarget::Time(_) => {
            for (topic, partition) in covered {
                let info = broker.store.partition_info(topic.record.id, *partition)?;
                let offset = match target {
                    SeekTarget::Earliest => info.start_offset,
                    SeekTarget::Latest => info.end_offset,
                    SeekTarget::Time(timestamp_ms) => {
                        broker
                            .store
                            .offset_for_timestamp(topic.record.id, *partition, *timestamp_ms)
                            .await?
                    }
                    SeekTarget::Offset { .. } => unreachable!("handled above"),
                };
                positions.push((topic.record.id, *partition, offset));
            }
        }
    }
    Ok(positions)
}

pub(crate) async fn seek(
    broker: &Broker,
    subscription: &Subscription,
    group: &StreamGroup,
    target: SeekTarget,
) -> Result<(), BrokerError> {
    let _pull = group.pull_lock.lock().await;
    let _commit = group.commit_lock.lock().await;
    let covered = broker.partitions_of(&subscription.spec);
    let positions = seek_positions(broker, &covered, &target).await?;
    broker
        .store
        .commit_positions(subscription.id, positions.clone())
        .await?;
    let mut state = lock(&group.state);
    for (topic_id, partition, offset) in positions {
        let key = (topic_id, partition);
        state.committed.insert(key, offset);
        state.fetch.remove(&key);
        state.handed_out.remove(&key);
        // Deliveries made before the seek must not commit after it.
        let epoch = state.next_epoch;
        if let Some(owner) = state.assignment.get_mut(&key) {
            owner.epoch = epoch;
        }
        state.next_epoch += 1;
    }
    drop(state);
    group.changed.notify_waiters();
    Ok(())
}

pub(crate) fn stats(
    broker: &Broker,
    subscription: &Subscription,
    group: &StreamGroup,
) -> StreamStats {
    let covered = broker.partitions_of(&subscription.spec);
    let state = lock(&group.state);
    let mut stats = StreamStats {
        delivered: state.delivered,
        acked: state.acked,
        ..StreamStats::default()
    };
    let mut owned: BTreeMap<&str, Vec<(String, u32)>> = BTreeMap::new();
    for (topic, partition) in &covered {
        let key = (topic.record.id, *partition);
        let Ok(info) = broker.store.partition_info(key.0, key.1) else {
            continue;
        };
        let committed = committed_of(broker, &state, key).max(info.start_offset);
        stats.backlog += info.end_offset.saturating_sub(committed);
        if let Some(fetch) = state.fetch.get(&key) {
            stats.in_flight += fetch.saturating_sub(committed);
        }
        if let Some(owner) = state.assignment.get(&key) {
            owned
                .entry(owner.consumer.as_str())
                .or_default()
                .push((topic.name().to_owned(), *partition));
        }
    }
    stats.consumers = state
        .members
        .iter()
        .map(|(name, member)| ConsumerStats {
            name: name.clone(),
            partitions: owned.remove(name.as_str()).unwrap_or_default(),
            last_seen_ms: member.last_seen_ms,
        })
        .collect();
    stats
}
