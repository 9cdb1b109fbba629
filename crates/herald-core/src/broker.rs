//! The broker: topics, publishing with deduplication, reading, live tail, subscriptions and the
//! services registry, over a [`Store`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_log::{AppendError, BatchBuilder, EncodedBatch, ReadError, RetentionPolicy};
use tokio::sync::{Notify, broadcast, watch};

use crate::dedup::{DedupIndex, DedupKey, KeyHasher, Lookup};
use crate::meta::{ServiceRecord, TopicRecord};
use crate::murmur2;
use crate::names::{self, NameError};
use crate::queue::{self, QueueGroup, QueueStats, Settle};
use crate::receipt::ReceiptKey;
use crate::store::{Store, StoreError};
use crate::stream::{self, StreamGroup};
use crate::subscription::{Mode, PushSpec, Start, SubscriptionSpec};

/// Record header names the broker writes beside each event, so that deduplication and routing
/// need not parse the event's JSON.
pub const HEADER_ID: &[u8] = b"id";
pub const HEADER_SOURCE: &[u8] = b"source";
pub const HEADER_TYPE: &[u8] = b"type";

/// Why a broker operation failed. Each variant maps to one HTTP status in `herald-http`.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    #[error("subscription {0:?} does not exist")]
    SubscriptionNotFound(String),
    /// A partition the topic does not have.
    #[error("{0}")]
    PartitionNotFound(String),
    #[error("request {0:?} does not exist (or was forgotten, an hour after its deadline)")]
    RequestNotFound(String),
    /// It existed but is over (a request past its deadline).
    #[error("{0}")]
    Gone(String),
    /// A value is larger than its limit.
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// A request the caller must change.
    #[error("{0}")]
    Invalid(String),
    /// The thing exists with other settings.
    #[error("{0}")]
    Conflict(String),
    #[error(
        "offset {offset} is outside the retained range {start_offset}..{end_offset} of partition {partition}"
    )]
    OffsetOutOfRange {
        partition: u32,
        offset: u64,
        start_offset: u64,
        end_offset: u64,
    },
    /// Too much in flight; retry shortly.
    #[error("{0}")]
    Overloaded(String),
    #[error("{0}")]
    DiskFull(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("storage failure: {0}")]
    Storage(StoreError),
}

impl From<StoreError> for BrokerError {
    fn from(error: StoreError) -> Self {
        from_store(error)
    }
}

impl From<AppendError> for BrokerError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::DiskFull(_) => BrokerError::DiskFull(format!(
                "{error}; the events of the partition that failed were not acknowledged (retry them: deduplication keeps those stored in other partitions from doubling), and what was stored before is intact"
            )),
            AppendError::Overloaded { .. } => BrokerError::Overloaded(error.to_string()),
            AppendError::Batch(_) => BrokerError::Invalid(error.to_string()),
            other => BrokerError::Storage(StoreError::Append(other)),
        }
    }
}

fn from_store(error: StoreError) -> BrokerError {
    match error {
        // The topic was deleted while the request was in flight.
        StoreError::NoSuchPartition { .. } | StoreError::Append(AppendError::Closed) => {
            BrokerError::TopicNotFound("(deleted while the request was in flight)".into())
        }
        StoreError::Append(append) => append.into(),
        StoreError::Meta(meta) if meta.is_disk_full() => BrokerError::DiskFull(format!(
            "{meta}; the change was not made, and what was stored before is intact"
        )),
        other => BrokerError::Storage(other),
    }
}

/// Runs a state change to its end whether or not its caller still waits for it.
///
/// When a client hangs up, the HTTP layer drops the handler's future at its next `.await`. A
/// change that has begun (memory and the durable write it depends on) must not stop half-way,
/// so every such change runs in a task of its own and the caller awaits the task: dropping the
/// caller drops only the wait. (ARCHITECTURE.md, "Every state change finishes".)
pub(crate) async fn run_to_end<T, F>(work: F) -> Result<T, BrokerError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, BrokerError>> + Send + 'static,
{
    tokio::spawn(work)
        .await
        .unwrap_or_else(|error| Err(BrokerError::Storage(StoreError::Worker(error.to_string()))))
}

/// Settings of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    pub partitions: u32,
    pub retention_age_max: Option<Duration>,
    pub retention_bytes_max: Option<u64>,
    pub dedup_window: Duration,
}

impl Default for TopicSettings {
    /// The contract's defaults: 1 partition, 7 days, no byte limit, 2 minutes.
    fn default() -> Self {
        Self {
            partitions: 1,
            retention_age_max: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_bytes_max: None,
            dedup_window: Duration::from_secs(120),
        }
    }
}

/// Most topic names or patterns in one subscription.
pub const SUBSCRIPTION_TOPICS_MAX: usize = 100;
/// Longest `ack_timeout`.
pub const ACK_TIMEOUT_MAX_MS: u64 = 12 * 3600 * 1000;
/// Most concurrent webhook requests of one push subscription (`push.max_in_flight`).
pub const PUSH_IN_FLIGHT_MAX: u32 = 1000;
/// Longest webhook URL, in bytes.
pub const PUSH_URL_BYTES_MAX: usize = 2048;
/// Most services the registry remembers; later ones are not recorded.
pub const SERVICES_MAX: usize = 10_000;

/// Most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 1024;

/// Settings of the broker itself.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Publishing to an unknown topic creates it with `default_topic` settings.
    pub auto_create_topics: bool,
    pub default_topic: TopicSettings,
    /// Most keys one topic's deduplication window holds.
    pub dedup_entries_max: usize,
    /// Most requests (action/response) pending at once; more are refused with `Overloaded`
    /// until some are answered or expire.
    pub pending_requests_max: usize,
    /// Largest response a read or pull assembles.
    pub response_bytes_max: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            auto_create_topics: true,
            default_topic: TopicSettings::default(),
            dedup_entries_max: 1_000_000,
            pending_requests_max: 100_000,
            response_bytes_max: 16 * 1024 * 1024,
        }
    }
}

/// A topic as the broker holds it at run time.
#[derive(Debug)]
pub struct Topic {
    pub record: TopicRecord,
    /// Shared by every version of the topic (growing its partitions makes a new `Topic` with
    /// the same runtime), so deduplication and counters carry over.
    runtime: Arc<TopicRuntime>,
}

#[derive(Debug)]
struct TopicRuntime {
    dedup: Mutex<DedupIndex>,
    dedup_resolved: Notify,
    round_robin: AtomicU32,
    published_events: AtomicU64,
    published_bytes: AtomicU64,
}

impl Topic {
    fn new(record: TopicRecord, dedup_entries_max: usize) -> Self {
        Self {
            runtime: Arc::new(TopicRuntime {
                dedup: Mutex::new(DedupIndex::new(record.dedup_window_ms, dedup_entries_max)),
                dedup_resolved: Notify::new(),
                round_robin: AtomicU32::new(0),
                published_events: AtomicU64::new(0),
                published_bytes: AtomicU64::new(0),
            }),
            record,
        }
    }

    /// The same topic with more partitions.
    fn grown(&self, record: TopicRecord) -> Self {
        Self {
            record,
            runtime: self.runtime.clone(),
        }
    }

    fn next_partition(&self) -> u32 {
        self.runtime.round_robin.fetch_add(1, Ordering::Relaxed) % self.record.partitions
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn settings(&self) -> TopicSettings {
        settings_of(&self.record)
    }
}

fn settings_of(record: &TopicRecord) -> TopicSettings {
    TopicSettings {
        partitions: record.partitions,
        retention_age_max: record.retention_age_max_ms.map(Duration::from_millis),
        retention_bytes_max: record.retention_bytes_max,
        dedup_window: Duration::from_millis(record.dedup_window_ms),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Holders never leave the guarded data half-changed before a possible panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn random_u32() -> u32 {
    let mut bytes = [0u8; 4];
    // The OS always has randomness; should it not, a fixed value only weakens jitter and the
    // restart check of queue receipts, never correctness of stored data.
    let _ = getrandom::fill(&mut bytes);
    u32::from_le_bytes(bytes)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One event to publish. Everything is borrowed from the request; `body` is the CloudEvent as
/// the JSON object Herald stores and serves.
#[derive(Debug, Clone)]
pub struct EventToPublish<'a> {
    pub id: Cow<'a, str>,
    pub source: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    pub partition_key: Option<Cow<'a, str>>,
    pub body: &'a [u8],
}

/// Where a published event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub partition: u32,
    pub offset: u64,
    pub duplicate: bool,
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    Offset(u64),
    /// The first event at or after this time (ms since the Unix epoch).
    Time(u64),
}

/// An event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub topic: Arc<Topic>,
    pub partition: u32,
    pub offset: u64,
    /// When Herald stored it (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// The CloudEvent as JSON.
    pub event: Bytes,
}

/// The answer to a read.
#[derive(Debug, Clone)]
pub struct ReadOutcome {
    pub events: Vec<StoredEvent>,
    pub next_offset: u64,
}

/// A notice that records were appended (for live tail).
#[derive(Debug, Clone)]
pub struct Appended {
    pub topic: Arc<Topic>,
    pub partition: u32,
    pub base_offset: u64,
    pub end_offset: u64,
}

/// Summary of a topic for listings.
#[derive(Debug, Clone)]
pub struct TopicInfo {
    pub record: TopicRecord,
    pub partitions: Vec<PartitionInfo>,
    pub published_events: u64,
    pub published_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    pub bytes: u64,
}

/// A subscription at run time.
#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    pub name: String,
    pub spec: SubscriptionSpec,
    pub created_ms: u64,
    /// Shared with the snapshots that replace this one when the push settings change.
    pub(crate) group: Arc<Group>,
}

impl Subscription {
    pub(crate) fn queue_group(&self) -> Option<&QueueGroup> {
        match &*self.group {
            Group::Queue(group) => Some(group),
            Group::Stream(_) => None,
        }
    }
}

/// The consumer-side state of a subscription, by mode.
#[derive(Debug)]
pub(crate) enum Group {
    Stream(StreamGroup),
    Queue(QueueGroup),
}

impl Group {
    pub(crate) fn counters(&self) -> Counters {
        match self {
            Group::Stream(group) => group.counters(),
            Group::Queue(group) => group.counters(),
        }
    }

    fn restore_counters(&self, counters: Counters) {
        match self {
            Group::Stream(group) => group.restore_counters(counters),
            Group::Queue(group) => group.restore_counters(counters),
        }
    }
}

/// Saves changed subscription counters every [`COUNTERS_SAVE_INTERVAL`] until the broker shuts
/// down or is dropped (it never keeps the broker alive while it sleeps). A thread of its own
/// with the system's sleep, not a Tokio timer: a test's paused clock would otherwise jump to it
/// whenever the runtime waits for the disk.
fn start_counters_saver(broker: std::sync::Weak<Broker>) -> Result<(), BrokerError> {
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("herald-counters".into())
        .spawn(move || {
            loop {
                std::thread::sleep(COUNTERS_SAVE_INTERVAL);
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                if broker.requests.is_closed() {
                    return;
                }
                if let Err(error) = runtime.block_on(broker.save_counters()) {
                    tracing::warn!(%error, "could not save subscription counters; trying again");
                }
            }
        })
        .map(|_| ())
        .map_err(|error| BrokerError::Storage(StoreError::Io(error)))
}

/// Statistics of a subscription, by mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionStats {
    Stream(stream::StreamStats),
    Queue(QueueStats),
}

/// One partition's frame of a publish, with the indexes of its events in the request.
type PartitionBatch = (u32, EncodedBatch, Vec<usize>);

/// Dedup keys a publish holds; released if the publish is dropped before its append starts.
struct Reservation {
    topic: Arc<Topic>,
    keys: Vec<DedupKey>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        {
            let mut dedup = lock(&self.topic.runtime.dedup);
            for key in self.keys.drain(..) {
                dedup.release(key);
            }
        }
        self.topic.runtime.dedup_resolved.notify_waiters();
    }
}

/// Appends every batch concurrently; returns (event index, position) of each stored event, and
/// the first failure, if any (the other partitions' events are stored all the same).
async fn append_batches(
    store: Arc<dyn Store>,
    appended: broadcast::Sender<Appended>,
    topic: Arc<Topic>,
    batches: Vec<PartitionBatch>,
    bytes: u64,
) -> (Vec<(usize, Published)>, Option<BrokerError>) {
    let topic_id = topic.record.id;
    let pending = batches.into_iter().map(|(partition, batch, indexes)| {
        let store = store.clone();
        async move {
            (
                partition,
                indexes,
                store.append(topic_id, partition, batch).await,
            )
        }
    });
    let mut stored = Vec::new();
    let mut failure = None;
    for (partition, indexes, result) in futures_util::future::join_all(pending).await {
        match result {
            Ok(info) => {
                let _ = appended.send(Appended {
                    topic: topic.clone(),
                    partition,
                    base_offset: info.base_offset,
                    end_offset: info.end_offset,
                });
                for (number, index) in indexes.into_iter().enumerate() {
                    let offset = info.base_offset + number as u64;
                    stored.push((
                        index,
                        Published {
                            partition,
                            offset,
                            duplicate: false,
                        },
                    ));
                }
            }
            Err(error) => failure = Some(from_store(error)),
        }
    }
    topic
        .runtime
        .published_events
        .fetch_add(stored.len() as u64, Ordering::Relaxed);
    if failure.is_none() {
        topic
            .runtime
            .published_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }
    (stored, failure)
}

/// Bytes a record adds around an event's body and header values (record fields, header names).
const RECORD_BYTES_ESTIMATE: usize = 24 + 3 * 8 + 16;

/// Capacity of the live-tail notice channel; a tail that falls further behind skips notices
/// (live tail is at-most-once).
const TAIL_CHANNEL_CAPACITY: usize = 4096;

/// The broker.
#[derive(Debug)]
pub struct Broker {
    pub(crate) store: Arc<dyn Store>,
    config: BrokerConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    subscriptions: RwLock<BTreeMap<String, Arc<Subscription>>>,
    /// Serializes creating and deleting topics and subscriptions.
    admin: tokio::sync::Mutex<()>,
    appended: broadcast::Sender<Appended>,
    /// Bumped when the set of topics changes, so stream groups pick up new partitions.
    pub(crate) topics_changed: watch::Sender<u64>,
    /// Bumped when a subscription is created, deleted, or has its push settings changed.
    subscriptions_changed: watch::Sender<u64>,
    services: Mutex<BTreeMap<String, ServiceRecord>>,
    pub(crate) receipts: ReceiptKey,
    key_hasher: KeyHasher,
    /// The clock of leases and retries: wall time at open plus the (pausable) tokio clock since.
    clock_base: (u64, tokio::time::Instant),
    /// A random number of this process, in queue receipts: leases do not outlive a restart.
    boot: u32,
    /// Action/response: pending requests and their expiry.
    pub(crate) requests: Arc<crate::requests::Requests>,
    /// Each subscription's counters as last saved (see [`Broker::save_counters`]).
    counters_saved: Mutex<std::collections::HashMap<u64, Counters>>,
}

/// A subscription's counters: delivered, acked, redelivered, dead-lettered. They are kept
/// across restarts: saved every [`COUNTERS_SAVE_INTERVAL`] when they changed, and at shutdown
/// (a crash loses at most that interval's counts; the events' state itself is durable).
pub(crate) type Counters = [u64; 4];

/// How often changed subscription counters are saved.
pub const COUNTERS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// The setting that keeps a subscription's counters.
fn counters_key(subscription_id: u64) -> String {
    format!("subscription_counters.{subscription_id}")
}

fn decode_counters(bytes: &[u8]) -> Option<Counters> {
    if bytes.len() != 32 {
        return None;
    }
    let mut counters = [0u64; 4];
    for (counter, chunk) in counters.iter_mut().zip(bytes.chunks_exact(8)) {
        *counter = u64::from_le_bytes(chunk.try_into().expect("chunks of 8 bytes"));
    }
    Some(counters)
}

fn encode_counters(counters: &Counters) -> Vec<u8> {
    counters
        .iter()
        .flat_map(|counter| counter.to_le_bytes())
        .collect()
}

const RECEIPT_KEY_SETTING: &str = "receipt_key";
const NEXT_ID_SETTING: &str = "next_id";

impl Broker {
    /// Opens the broker over a store: loads topics and subscriptions, and rebuilds each topic's
    /// deduplication window from the events stored within it.
    pub async fn open(
        store: Arc<dyn Store>,
        config: BrokerConfig,
    ) -> Result<Arc<Broker>, BrokerError> {
        let receipts = match store.setting(RECEIPT_KEY_SETTING).await? {
            Some(bytes) if bytes.len() == 32 => {
                ReceiptKey::from_bytes(bytes.try_into().expect("checked to be 32 bytes"))
            }
            _ => {
                let key = ReceiptKey::generate()
                    .map_err(|error| BrokerError::Storage(StoreError::Worker(error.to_string())))?;
                store
                    .put_setting(RECEIPT_KEY_SETTING, key.bytes().to_vec())
                    .await?;
                key
            }
        };
        let topics: BTreeMap<String, Arc<Topic>> = store
            .topics()?
            .into_iter()
            .map(|record| {
                (
                    record.name.clone(),
                    Arc::new(Topic::new(record, config.dedup_entries_max)),
                )
            })
            .collect();
        let services = store
            .services()?
            .into_iter()
            .map(|service| (service.name.clone(), service))
            .collect();
        let broker = Arc::new(Broker {
            store: store.clone(),
            topics: RwLock::new(topics),
            subscriptions: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
            appended: broadcast::channel(TAIL_CHANNEL_CAPACITY).0,
            topics_changed: watch::Sender::new(0),
            subscriptions_changed: watch::Sender::new(0),
            services: Mutex::new(services),
            receipts,
            key_hasher: KeyHasher::default(),
            clock_base: (now_ms(), tokio::time::Instant::now()),
            boot: random_u32(),
            requests: Arc::default(),
            counters_saved: Mutex::default(),
            config,
        });
        for record in store.subscriptions()? {
            let spec: SubscriptionSpec =
                serde_json::from_value(record.settings.clone()).map_err(|error| {
                    BrokerError::Invalid(format!("stored subscription {}: {error}", record.name))
                })?;
            let group = broker.new_group(record.id, &spec)?;
            if let Some(counters) = store
                .setting(&counters_key(record.id))
                .await?
                .as_deref()
                .and_then(decode_counters)
            {
                group.restore_counters(counters);
                lock(&broker.counters_saved).insert(record.id, counters);
            }
            let group = Arc::new(group);
            let subscription = Arc::new(Subscription {
                id: record.id,
                group,
                name: record.name.clone(),
                spec,
                created_ms: record.created_ms,
            });
            broker
                .subscriptions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(record.name, subscription);
        }
        let all_topics: Vec<Arc<Topic>> = broker.topics_snapshot();
        for topic in all_topics {
            broker.rebuild_dedup(&topic).await?;
        }
        broker.remove_orphan_redrive_topics().await?;
        broker.requests.load(store.requests()?);
        tokio::spawn(crate::requests::run_expiry(
            Arc::downgrade(&broker),
            broker.requests.clone(),
        ));
        start_counters_saver(Arc::downgrade(&broker))?;
        Ok(broker)
    }

    /// Deletes redrive topics whose subscription is gone (its deletion was cut short by a
    /// crash, or happened before redrive topics went with their subscription): a new
    /// subscription of the same name must not read them.
    async fn remove_orphan_redrive_topics(&self) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        for topic in self.topics_snapshot() {
            let orphan = queue::redrive_subscription(topic.name())
                .is_some_and(|subscription| self.subscription(subscription).is_err());
            if orphan {
                tracing::info!(
                    topic = topic.name(),
                    "removing the redrive topic of a deleted subscription"
                );
                self.delete_topic_locked(topic.name()).await?;
            }
        }
        Ok(())
    }

    /// Saves the counters of every subscription whose counters changed since they were last
    /// saved, in one transaction.
    pub(crate) async fn save_counters(&self) -> Result<(), BrokerError> {
        // No subscription is created or deleted meanwhile, so no row outlives its subscription.
        let _admin = self.admin.lock().await;
        let changed: Vec<(u64, Counters)> = {
            let saved = lock(&self.counters_saved);
            self.subscriptions_snapshot()
                .iter()
                .map(|subscription| (subscription.id, subscription.group.counters()))
                .filter(|(id, counters)| saved.get(id) != Some(counters))
                .collect()
        };
        if changed.is_empty() {
            return Ok(());
        }
        let settings = changed
            .iter()
            .map(|(id, counters)| (counters_key(*id), Some(encode_counters(counters))))
            .collect();
        self.store.put_settings(settings).await?;
        lock(&self.counters_saved).extend(changed);
        Ok(())
    }

    /// Reads the events stored within a topic's window back into its deduplication index.
    async fn rebuild_dedup(&self, topic: &Arc<Topic>) -> Result<(), BrokerError> {
        let now = now_ms();
        let since = now.saturating_sub(topic.record.dedup_window_ms);
        let mut loaded = 0usize;
        for partition in 0..topic.record.partitions {
            let mut offset = self
                .store
                .offset_for_timestamp(topic.record.id, partition, since)
                .await?;
            loop {
                let read = self
                    .store
                    .read(topic.record.id, partition, offset, 4 * 1024 * 1024)
                    .await?;
                if read.records.is_empty() {
                    break;
                }
                let mut index = lock(&topic.runtime.dedup);
                for record in &read.records {
                    if let (Some(source), Some(id)) = (
                        record.headers.get(HEADER_SOURCE),
                        record.headers.get(HEADER_ID),
                    ) {
                        index.store(
                            self.key_hasher.key(source, id),
                            partition,
                            record.offset,
                            record.timestamp_ms,
                        );
                        loaded += 1;
                    }
                }
                index.prune(now);
                offset = read.next_offset;
            }
        }
        tracing::debug!(topic = topic.name(), loaded, "deduplication window rebuilt");
        Ok(())
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Milliseconds since the Unix epoch on the broker's clock (which tests can pause).
    pub fn clock_ms(&self) -> u64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.clock_base.1);
        self.clock_base.0 + u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    /// A subscription's group from its stored state.
    fn new_group(
        &self,
        subscription_id: u64,
        spec: &SubscriptionSpec,
    ) -> Result<Group, BrokerError> {
        Ok(match spec.mode {
            Mode::Stream => {
                Group::Stream(StreamGroup::new(&self.store.positions(subscription_id)?))
            }
            Mode::Queue => {
                let stored = self.store.queue_state(subscription_id)?;
                Group::Queue(QueueGroup::new(
                    &stored,
                    spec,
                    self.boot,
                    u64::from(random_u32()) << 1,
                )?)
            }
        })
    }

    /// The topic with this id, if it still exists.
    pub(crate) fn topic_by_id(&self, id: u64) -> Option<Arc<Topic>> {
        self.topics_snapshot()
            .into_iter()
            .find(|topic| topic.record.id == id)
    }

    /// Appends events without deduplication (dead letters, redrives), creating the topic with
    /// one partition if needed, whatever `auto_create_topics` says.
    pub(crate) async fn append_internal(
        self: &Arc<Self>,
        topic_name: &str,
        events: &[EventToPublish<'_>],
    ) -> Result<Vec<Published>, BrokerError> {
        let topic = match self.topic(topic_name) {
            Ok(topic) => topic,
            Err(_) => {
                let settings = TopicSettings {
                    partitions: 1,
                    ..self.config.default_topic
                };
                self.create_topic_unchecked(topic_name, settings).await?.0
            }
        };
        let (batches, bytes) =
            self.encode_batches(&topic, events, |_| true, topic.next_partition())?;
        let (stored, failure) = append_batches(
            self.store.clone(),
            self.appended.clone(),
            topic.clone(),
            batches,
            bytes,
        )
        .await;
        if let Some(error) = failure {
            return Err(error);
        }
        let mut positions = vec![
            Published {
                partition: 0,
                offset: 0,
                duplicate: false
            };
            events.len()
        ];
        for (index, position) in stored {
            positions[index] = position;
        }
        Ok(positions)
    }

    /// The store under the broker.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn topics_snapshot(&self) -> Vec<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        self.topics
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::TopicNotFound(name.to_owned()))
    }

    async fn next_id(&self) -> Result<u64, BrokerError> {
        // Called with `admin` held, so read-increment-write cannot race.
        let next = match self.store.setting(NEXT_ID_SETTING).await? {
            Some(bytes) if bytes.len() == 8 => {
                u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
            }
            _ => 1,
        };
        self.store
            .put_setting(NEXT_ID_SETTING, (next + 1).to_le_bytes().to_vec())
            .await?;
        Ok(next)
    }

    /// Creates a topic (`Ok(true)`), or confirms one that exists with the same settings
    /// (`Ok(false)`). More partitions than it has grow it; anything else different is a conflict.
    pub async fn create_topic(
        self: &Arc<Self>,
        name: &str,
        settings: TopicSettings,
    ) -> Result<(Arc<Topic>, bool), BrokerError> {
        names::check_topic_name(name)?;
        if names::is_internal(name) {
            return Err(BrokerError::Invalid(format!(
                "topic names starting with '_' belong to Herald itself; choose another name than {name:?}"
            )));
        }
        self.create_topic_unchecked(name, settings).await
    }

    pub(crate) async fn create_topic_unchecked(
        self: &Arc<Self>,
        name: &str,
        settings: TopicSettings,
    ) -> Result<(Arc<Topic>, bool), BrokerError> {
        if settings.partitions == 0 || settings.partitions > PARTITIONS_MAX {
            return Err(BrokerError::Invalid(format!(
                "partitions must be between 1 and {PARTITIONS_MAX}, not {}",
                settings.partitions
            )));
        }
        let broker = self.clone();
        let name = name.to_owned();
        run_to_end(async move { broker.create_topic_now(&name, settings).await }).await
    }

    /// Creates (or grows, or confirms) a topic: the store first, then memory.
    async fn create_topic_now(
        &self,
        name: &str,
        settings: TopicSettings,
    ) -> Result<(Arc<Topic>, bool), BrokerError> {
        let _admin = self.admin.lock().await;
        if let Ok(existing) = self.topic(name) {
            let current = existing.settings();
            if current == settings {
                return Ok((existing, false));
            }
            let only_grows = TopicSettings {
                partitions: current.partitions,
                ..settings
            } == current
                && settings.partitions > current.partitions;
            if !only_grows {
                return Err(BrokerError::Conflict(format!(
                    "topic {name:?} exists with other settings ({} partitions, retention {:?} / {:?} bytes, dedup window {:?}); \
                     only the partition count can change, and only upwards",
                    current.partitions,
                    current.retention_age_max,
                    current.retention_bytes_max,
                    current.dedup_window
                )));
            }
            let record = TopicRecord {
                partitions: settings.partitions,
                ..existing.record.clone()
            };
            self.store.put_topic(record.clone()).await?;
            let grown = Arc::new(existing.grown(record));
            self.topics
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(name.to_owned(), grown.clone());
            self.topics_changed
                .send_modify(|generation| *generation += 1);
            return Ok((grown, false));
        }
        let record = TopicRecord {
            id: self.next_id().await?,
            name: name.to_owned(),
            partitions: settings.partitions,
            retention_age_max_ms: settings
                .retention_age_max
                .map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            retention_bytes_max: settings.retention_bytes_max,
            dedup_window_ms: u64::try_from(settings.dedup_window.as_millis()).unwrap_or(u64::MAX),
            created_ms: now_ms(),
        };
        self.store.put_topic(record.clone()).await?;
        let topic = Arc::new(Topic::new(record, self.config.dedup_entries_max));
        self.topics
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(name.to_owned(), topic.clone());
        self.topics_changed
            .send_modify(|generation| *generation += 1);
        tracing::info!(
            topic = name,
            partitions = settings.partitions,
            "topic created"
        );
        Ok((topic, true))
    }

    /// Every topic, by name.
    pub fn list_topics(&self) -> Vec<TopicInfo> {
        self.topics_snapshot()
            .iter()
            .map(|topic| self.topic_info(topic))
            .collect()
    }

    /// A topic with its partitions' offsets.
    pub fn topic_info(&self, topic: &Topic) -> TopicInfo {
        let partitions = (0..topic.record.partitions)
            .map(|partition| {
                let info = self.store.partition_info(topic.record.id, partition).ok();
                PartitionInfo {
                    partition,
                    start_offset: info.map_or(0, |info| info.start_offset),
                    end_offset: info.map_or(0, |info| info.end_offset),
                    bytes: info.map_or(0, |info| info.bytes),
                }
            })
            .collect();
        TopicInfo {
            record: topic.record.clone(),
            partitions,
            published_events: topic.runtime.published_events.load(Ordering::Relaxed),
            published_bytes: topic.runtime.published_bytes.load(Ordering::Relaxed),
        }
    }

    /// Deletes a topic and its events. Herald's own topics (`_…`) go only with what owns them.
    pub async fn delete_topic(self: &Arc<Self>, name: &str) -> Result<(), BrokerError> {
        if names::is_internal(name) {
            self.topic(name)?;
            return Err(BrokerError::Invalid(format!(
                "topic {name:?} belongs to Herald itself (a reply queue or a redrive topic) and cannot be deleted; a redrive topic goes with its subscription"
            )));
        }
        let broker = self.clone();
        let name = name.to_owned();
        run_to_end(async move {
            let _admin = broker.admin.lock().await;
            broker.delete_topic_locked(&name).await
        })
        .await
    }

    /// Deletes a topic: the store first, then memory. The caller holds `admin`.
    async fn delete_topic_locked(&self, name: &str) -> Result<(), BrokerError> {
        let topic = self.topic(name)?;
        self.store.delete_topic(topic.record.clone()).await?;
        self.topics
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(name);
        self.topics_changed
            .send_modify(|generation| *generation += 1);
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// The topic to publish to: an existing one, or one created with defaults when allowed.
    async fn topic_for_publish(self: &Arc<Self>, name: &str) -> Result<Arc<Topic>, BrokerError> {
        if let Ok(topic) = self.topic(name) {
            return Ok(topic);
        }
        names::check_topic_name(name)?;
        if !self.config.auto_create_topics {
            return Err(BrokerError::TopicNotFound(name.to_owned()));
        }
        if names::is_internal(name) {
            return Err(BrokerError::Invalid(format!(
                "topic names starting with '_' belong to Herald itself; {name:?} cannot be created by publishing"
            )));
        }
        Ok(self
            .create_topic_unchecked(name, self.config.default_topic)
            .await?
            .0)
    }

    /// Publishes events to a topic; returns their positions in input order once all are durable.
    ///
    /// An event whose `source` + `id` was stored within the topic's window is not stored again:
    /// its first position comes back with `duplicate: true`. Events with a `partition_key` go to
    /// Kafka's murmur2 partition for it; the others of one call go together to the next partition
    /// in turn. A batch is validated as a whole before anything is written; if the disk fails
    /// while several partitions are written, some may hold their events (retrying the same
    /// events is safe: they come back as duplicates).
    pub async fn publish(
        self: &Arc<Self>,
        topic_name: &str,
        events: &[EventToPublish<'_>],
        service: Option<&str>,
    ) -> Result<Vec<Published>, BrokerError> {
        let topic = self.topic_for_publish(topic_name).await?;
        if let Some(service) = service {
            self.note_service(service, Some(topic_name), None);
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let unkeyed_partition = topic.next_partition();
        let keys: Vec<DedupKey> = events
            .iter()
            .map(|event| {
                self.key_hasher
                    .key(event.source.as_bytes(), event.id.as_bytes())
            })
            .collect();

        // Deduplicate: reserve every new key (in key order, see `dedup`; equal keys by input
        // order, so the first occurrence is the one stored), note the duplicates.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_unstable_by_key(|&index| (keys[index], index));
        let mut outcome: Vec<Option<Published>> = vec![None; events.len()];
        // For an event repeated within this call: the index of its first occurrence.
        let mut same_as: Vec<Option<usize>> = vec![None; events.len()];
        // Released again if this call is dropped (the client went away) before the append starts.
        let mut reservation = Reservation {
            topic: topic.clone(),
            keys: Vec::new(),
        };
        let mut at = 0;
        while at < order.len() {
            // Registered before looking, so a release between the look and the wait is not missed.
            let resolved = topic.runtime.dedup_resolved.notified();
            tokio::pin!(resolved);
            resolved.as_mut().enable();
            let blocked = {
                let mut dedup = lock(&topic.runtime.dedup);
                dedup.prune(now_ms());
                let mut blocked = false;
                while at < order.len() {
                    let index = order[at];
                    if at > 0 && keys[order[at - 1]] == keys[index] {
                        same_as[index] = Some(same_as[order[at - 1]].unwrap_or(order[at - 1]));
                        at += 1;
                        continue;
                    }
                    match dedup.lookup_or_reserve(keys[index]) {
                        Lookup::Reserved => reservation.keys.push(keys[index]),
                        Lookup::Duplicate { partition, offset } => {
                            outcome[index] = Some(Published {
                                partition,
                                offset,
                                duplicate: true,
                            });
                        }
                        Lookup::InFlight => {
                            blocked = true;
                            break;
                        }
                    }
                    at += 1;
                }
                blocked
            };
            if blocked {
                // Another publish holds this key: wait for it to store or release it, then look
                // again. Keys are taken in order, so the holder never waits on ours.
                resolved.await;
            }
        }

        let (batches, bytes) = self.encode_batches(
            &topic,
            events,
            |index| outcome[index].is_none() && same_as[index].is_none(),
            unkeyed_partition,
        )?;
        // The appends and the bookkeeping of their outcome run in their own task: once started
        // they finish, and every reserved key ends stored or released, even if this call is
        // dropped meanwhile.
        let store = self.store.clone();
        let appended = self.appended.clone();
        let task_topic = topic.clone();
        let task = tokio::spawn(async move {
            let (stored, failure) =
                append_batches(store, appended, task_topic.clone(), batches, bytes).await;
            {
                let now = now_ms();
                let mut dedup = lock(&task_topic.runtime.dedup);
                for (index, position) in &stored {
                    dedup.store(keys[*index], position.partition, position.offset, now);
                }
                // Keys of partitions that failed are free again; stored ones are not Pending.
                for key in reservation.keys.drain(..) {
                    dedup.release(key);
                }
            }
            task_topic.runtime.dedup_resolved.notify_waiters();
            (stored, failure)
        });
        let (stored, failure) = task
            .await
            .map_err(|error| BrokerError::Storage(StoreError::Worker(error.to_string())))?;
        if let Some(error) = failure {
            return Err(error);
        }
        for (index, position) in stored {
            outcome[index] = Some(position);
        }
        for index in 0..events.len() {
            if let Some(first) = same_as[index] {
                let position = outcome[first].expect("the first occurrence has a position");
                outcome[index] = Some(Published {
                    duplicate: true,
                    ..position
                });
            }
        }
        Ok(outcome
            .into_iter()
            .map(|position| position.expect("every event was stored or found to be a duplicate"))
            .collect())
    }

    /// Encodes the events `include` selects into one batch frame per partition: (partition,
    /// frame, indexes of its events in order), and their payload bytes.
    fn encode_batches(
        &self,
        topic: &Topic,
        events: &[EventToPublish<'_>],
        include: impl Fn(usize) -> bool,
        unkeyed_partition: u32,
    ) -> Result<(Vec<PartitionBatch>, u64), BrokerError> {
        let partitions = topic.record.partitions;
        let limits = self.store.batch_limits();
        let timestamp_ms = now_ms();
        let partition_of = |event: &EventToPublish<'_>| match &event.partition_key {
            Some(key) => murmur2::partition_for_key(key.as_bytes(), partitions),
            None => unkeyed_partition,
        };
        // Size each partition's frame up front, so encoding never reallocates.
        let mut sizes: BTreeMap<u32, usize> = BTreeMap::new();
        for (index, event) in events.iter().enumerate() {
            if include(index) {
                *sizes.entry(partition_of(event)).or_default() += event.body.len()
                    + event.id.len()
                    + event.source.len()
                    + event.event_type.len()
                    + event.partition_key.as_ref().map_or(0, |key| key.len())
                    + RECORD_BYTES_ESTIMATE;
            }
        }
        let mut builders: BTreeMap<u32, (BatchBuilder, Vec<usize>)> = BTreeMap::new();
        let mut bytes = 0u64;
        for (index, event) in events.iter().enumerate() {
            if !include(index) {
                continue;
            }
            let partition = partition_of(event);
            let (builder, indexes) = builders.entry(partition).or_insert_with(|| {
                let capacity = sizes.get(&partition).copied().unwrap_or(0) + 64;
                (BatchBuilder::with_capacity(limits, capacity), Vec::new())
            });
            let headers: [(&[u8], &[u8]); 3] = [
                (HEADER_ID, event.id.as_bytes()),
                (HEADER_SOURCE, event.source.as_bytes()),
                (HEADER_TYPE, event.event_type.as_bytes()),
            ];
            builder
                .push_with(
                    timestamp_ms,
                    event.partition_key.as_deref().map(str::as_bytes),
                    &headers,
                    |buffer| buffer.extend_from_slice(event.body),
                )
                .map_err(|error| BrokerError::Invalid(format!("event {index}: {error}")))?;
            bytes += event.body.len() as u64;
            indexes.push(index);
        }
        let mut batches = Vec::with_capacity(builders.len());
        for (partition, (builder, indexes)) in builders {
            let batch = builder
                .finish()
                .map_err(|error| BrokerError::Invalid(error.to_string()))?;
            batches.push((partition, batch, indexes));
        }
        Ok((batches, bytes))
    }

    fn check_partition(topic: &Topic, partition: u32) -> Result<(), BrokerError> {
        if partition >= topic.record.partitions {
            return Err(BrokerError::PartitionNotFound(format!(
                "partition {partition} does not exist: topic {:?} has partitions 0..{}",
                topic.record.name,
                topic.record.partitions - 1
            )));
        }
        Ok(())
    }

    /// Reads up to `limit` events of one partition, waiting up to `wait` for the first one.
    pub async fn read(
        &self,
        topic_name: &str,
        partition: u32,
        from: ReadFrom,
        limit: usize,
        wait: Duration,
    ) -> Result<ReadOutcome, BrokerError> {
        let topic = self.topic(topic_name)?;
        Self::check_partition(&topic, partition)?;
        let topic_id = topic.record.id;
        let offset = match from {
            ReadFrom::Offset(offset) => offset,
            ReadFrom::Time(timestamp_ms) => {
                self.store
                    .offset_for_timestamp(topic_id, partition, timestamp_ms)
                    .await?
            }
        };
        let info = self.store.partition_info(topic_id, partition)?;
        if offset < info.start_offset || offset > info.end_offset {
            return Err(BrokerError::OffsetOutOfRange {
                partition,
                offset,
                start_offset: info.start_offset,
                end_offset: info.end_offset,
            });
        }
        if offset == info.end_offset && !wait.is_zero() {
            let mut end = self.store.watch_end(topic_id, partition)?;
            let _ = tokio::time::timeout(wait, end.wait_for(|end| *end > offset)).await;
        }
        let mut events = Vec::new();
        let mut next_offset = offset;
        let mut bytes = 0usize;
        while events.len() < limit && bytes < self.config.response_bytes_max {
            let read = match self
                .store
                .read(topic_id, partition, next_offset, 1024 * 1024)
                .await
            {
                Ok(read) => read,
                Err(StoreError::Read(ReadError::OffsetOutOfRange {
                    start_offset,
                    end_offset,
                    ..
                })) => {
                    return Err(BrokerError::OffsetOutOfRange {
                        partition,
                        offset: next_offset,
                        start_offset,
                        end_offset,
                    });
                }
                Err(error) => return Err(error.into()),
            };
            if read.records.is_empty() {
                break;
            }
            for record in read.records {
                if events.len() >= limit || bytes >= self.config.response_bytes_max {
                    break;
                }
                bytes += record.payload.len();
                next_offset = record.offset + 1;
                events.push(StoredEvent {
                    topic: topic.clone(),
                    partition,
                    offset: record.offset,
                    timestamp_ms: record.timestamp_ms,
                    event: record.payload,
                });
            }
        }
        Ok(ReadOutcome {
            events,
            next_offset,
        })
    }

    /// Notices of appends to topics matching `patterns`, from now on.
    pub fn tail(&self, patterns: Vec<String>) -> Result<Tail, BrokerError> {
        for pattern in &patterns {
            names::check_pattern(pattern)?;
        }
        if patterns.is_empty() {
            return Err(BrokerError::Invalid(
                "name at least one topic or pattern in ?topics=".into(),
            ));
        }
        Ok(Tail {
            receiver: self.appended.subscribe(),
            patterns,
            store: self.store.clone(),
        })
    }

    /// Records what a service was seen doing (persisted when it publishes to or consumes from
    /// something new; `last_seen` is kept in memory and saved at shutdown).
    pub(crate) fn note_service(
        &self,
        service: &str,
        publishes: Option<&str>,
        consumes: Option<&str>,
    ) {
        if service.is_empty() || service.len() > 249 {
            return;
        }
        let changed = {
            let mut services = lock(&self.services);
            if services.len() >= SERVICES_MAX && !services.contains_key(service) {
                return;
            }
            let record = services
                .entry(service.to_owned())
                .or_insert_with(|| ServiceRecord {
                    name: service.to_owned(),
                    ..ServiceRecord::default()
                });
            record.last_seen_ms = now_ms();
            let mut changed = false;
            if let Some(topic) = publishes
                && !record.publishes.iter().any(|known| known == topic)
            {
                record.publishes.push(topic.to_owned());
                record.publishes.sort();
                changed = true;
            }
            if let Some(subscription) = consumes
                && !record.consumes.iter().any(|known| known == subscription)
            {
                record.consumes.push(subscription.to_owned());
                record.consumes.sort();
                changed = true;
            }
            changed.then(|| record.clone())
        };
        if let Some(record) = changed {
            let store = self.store.clone();
            tokio::spawn(async move {
                if let Err(error) = store.put_service(record).await {
                    tracing::warn!(%error, "could not record a service");
                }
            });
        }
    }

    /// Every service seen, by name.
    pub fn services(&self) -> Vec<ServiceRecord> {
        lock(&self.services).values().cloned().collect()
    }

    /// Applies every topic's retention policy once. Stream subscriptions do not hold segments
    /// back (like Kafka, a group behind retention resumes at the oldest retained event).
    pub async fn apply_retention(&self) -> Result<u32, BrokerError> {
        let now = now_ms();
        // A queue subscription keeps every segment that still holds an event it has not
        // finished with (acked, dead-lettered or filtered out): per partition, the lowest floor
        // of the queue subscriptions that cover it. One pass over the subscriptions' partitions.
        let mut needed_from: std::collections::HashMap<(u64, u32), u64> =
            std::collections::HashMap::new();
        for subscription in self.subscriptions_snapshot() {
            let Some(group) = subscription.queue_group() else {
                continue;
            };
            for (topic, partition) in queue::covered(self, &subscription) {
                let key = (topic.record.id, partition);
                let floor = group.floor(key).unwrap_or(0);
                needed_from
                    .entry(key)
                    .and_modify(|lowest| *lowest = (*lowest).min(floor))
                    .or_insert(floor);
            }
        }
        let mut deleted = 0;
        for topic in self.topics_snapshot() {
            let policy = RetentionPolicy {
                age_max: topic.record.retention_age_max_ms.map(Duration::from_millis),
                bytes_max: topic.record.retention_bytes_max,
            };
            if policy.age_max.is_none() && policy.bytes_max.is_none() {
                continue;
            }
            for partition in 0..topic.record.partitions {
                let needed = needed_from.get(&(topic.record.id, partition)).copied();
                let hook: crate::store::RetentionHook =
                    Box::new(move |segment| needed.is_none_or(|floor| segment.end_offset <= floor));
                let outcome = self
                    .store
                    .apply_retention(topic.record.id, partition, policy, now, hook)
                    .await?;
                deleted += outcome.deleted_segments;
            }
        }
        let forgotten = self.purge_requests().await?;
        if forgotten > 0 {
            tracing::debug!(forgotten, "request records past their keep time forgotten");
        }
        Ok(deleted)
    }

    /// Saves what is only in memory (services' last-seen times) and syncs the store.
    pub async fn shutdown(&self) -> Result<(), BrokerError> {
        self.requests.close();
        self.save_counters().await?;
        for service in self.services() {
            self.store.put_service(service).await?;
        }
        self.store.close()?;
        Ok(())
    }

    // ---- subscriptions ----

    pub(crate) fn subscriptions_snapshot(&self) -> Vec<Arc<Subscription>> {
        self.subscriptions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The subscription named `name`.
    pub fn subscription(&self, name: &str) -> Result<Arc<Subscription>, BrokerError> {
        self.subscriptions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| BrokerError::SubscriptionNotFound(name.to_owned()))
    }

    /// Every subscription, by name.
    pub fn list_subscriptions(&self) -> Vec<Arc<Subscription>> {
        self.subscriptions_snapshot()
    }

    /// The partitions a subscription covers now: every partition of every topic its names or
    /// patterns match. Internal topics (`_…`) match only patterns that start with `_`.
    pub(crate) fn partitions_of(&self, spec: &SubscriptionSpec) -> Vec<(Arc<Topic>, u32)> {
        let mut covered = Vec::new();
        for topic in self.topics_snapshot() {
            let matched = spec.topics.iter().any(|pattern| {
                (!names::is_internal(topic.name()) || names::is_internal(pattern))
                    && names::pattern_matches(pattern, topic.name())
            });
            if matched {
                for partition in 0..topic.record.partitions {
                    covered.push((topic.clone(), partition));
                }
            }
        }
        covered
    }

    /// Creates a subscription (`Ok(true)`), or confirms one with the same settings.
    pub async fn create_subscription(
        self: &Arc<Self>,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<(Arc<Subscription>, bool), BrokerError> {
        names::check_subscription_name(name)?;
        if names::is_internal(name) {
            return Err(BrokerError::Invalid(format!(
                "subscription names starting with '_' belong to Herald itself; choose another name than {name:?}"
            )));
        }
        if names::is_internal(&spec.dead_letter_topic) {
            return Err(BrokerError::Invalid(format!(
                "dead_letter_topic {:?} starts with '_': such topics belong to Herald itself (reply queues, redrive topics); choose another name",
                spec.dead_letter_topic
            )));
        }
        self.create_subscription_unchecked(name, spec).await
    }

    /// Creates a subscription, also one with a name of Herald's own (`_replies.{group}`).
    pub(crate) async fn create_subscription_unchecked(
        self: &Arc<Self>,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<(Arc<Subscription>, bool), BrokerError> {
        if spec.topics.len() > SUBSCRIPTION_TOPICS_MAX {
            return Err(BrokerError::Invalid(format!(
                "a subscription names at most {SUBSCRIPTION_TOPICS_MAX} topics or patterns, not {}",
                spec.topics.len()
            )));
        }
        if spec.ack_timeout_ms == 0 || spec.ack_timeout_ms > ACK_TIMEOUT_MAX_MS {
            return Err(BrokerError::Invalid(
                "ack_timeout must be between 1ms and 12h".into(),
            ));
        }
        if spec.topics.is_empty() {
            return Err(BrokerError::Invalid(
                "a subscription needs at least one topic name or pattern in \"topics\"".into(),
            ));
        }
        for pattern in &spec.topics {
            names::check_pattern(pattern)?;
        }
        if let Some(filter) = &spec.filter {
            crate::filter::Filter::parse(filter)
                .map_err(|error| BrokerError::Invalid(error.to_string()))?;
            if spec.mode == Mode::Stream {
                return Err(BrokerError::Invalid(
                    "filters are for queue subscriptions; a stream delivers every event of its partitions in order".into(),
                ));
            }
        }
        if let Some(push) = &spec.push {
            if spec.mode == Mode::Stream {
                return Err(BrokerError::Invalid(
                    "push (webhook) delivery is for queue subscriptions; use \"mode\": \"queue\""
                        .into(),
                ));
            }
            check_push(push, spec.ack_timeout_ms)?;
        }
        names::check_topic_name(&spec.dead_letter_topic)?;
        let broker = self.clone();
        let name = name.to_owned();
        run_to_end(async move { broker.create_subscription_now(&name, spec).await }).await
    }

    /// Creates (or confirms) a subscription: the store first, then memory.
    async fn create_subscription_now(
        &self,
        name: &str,
        spec: SubscriptionSpec,
    ) -> Result<(Arc<Subscription>, bool), BrokerError> {
        let _admin = self.admin.lock().await;
        if let Ok(existing) = self.subscription(name) {
            if existing.spec.same_settings(&spec) {
                return Ok((existing, false));
            }
            return Err(BrokerError::Conflict(format!(
                "subscription {name:?} exists with other settings; delete it first or use another name"
            )));
        }
        let id = self.next_id().await?;
        // The group's first positions on the topics that exist now; later topics start at their
        // first event.
        let mut positions = Vec::new();
        for (topic, partition) in self.partitions_of(&spec) {
            let info = self.store.partition_info(topic.record.id, partition)?;
            let offset = match spec.start {
                Start::Latest => info.end_offset,
                Start::Earliest => info.start_offset,
                Start::Time(timestamp_ms) => {
                    self.store
                        .offset_for_timestamp(topic.record.id, partition, timestamp_ms)
                        .await?
                }
            };
            positions.push((topic.record.id, partition, offset));
        }
        let record = crate::meta::SubscriptionRecord {
            id,
            name: name.to_owned(),
            settings: serde_json::to_value(&spec)
                .map_err(|error| BrokerError::Invalid(error.to_string()))?,
            created_ms: now_ms(),
        };
        self.store
            .put_subscription(record.clone(), positions.clone())
            .await?;
        let group = Arc::new(self.new_group(id, &spec)?);
        let subscription = Arc::new(Subscription {
            id,
            name: name.to_owned(),
            spec,
            created_ms: record.created_ms,
            group,
        });
        self.subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(name.to_owned(), subscription.clone());
        self.subscriptions_changed
            .send_modify(|generation| *generation += 1);
        tracing::info!(subscription = name, "subscription created");
        Ok((subscription, true))
    }

    /// Deletes a subscription and its positions.
    pub async fn delete_subscription(self: &Arc<Self>, name: &str) -> Result<(), BrokerError> {
        let broker = self.clone();
        let name = name.to_owned();
        run_to_end(async move { broker.delete_subscription_now(&name).await }).await
    }

    /// Deletes a subscription: its record, positions, queue state and counters, then its
    /// redrive topic (which only it read); memory after each durable step.
    async fn delete_subscription_now(&self, name: &str) -> Result<(), BrokerError> {
        let _admin = self.admin.lock().await;
        let subscription = self.subscription(name)?;
        let record = crate::meta::SubscriptionRecord {
            id: subscription.id,
            name: subscription.name.clone(),
            settings: serde_json::Value::Null,
            created_ms: subscription.created_ms,
        };
        self.store.delete_subscription(record).await?;
        self.subscriptions
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(name);
        match &*subscription.group {
            Group::Stream(group) => group.close(),
            Group::Queue(group) => group.close(),
        }
        self.subscriptions_changed
            .send_modify(|generation| *generation += 1);
        // What only this subscription used. A crash before these steps leaves them to the next
        // start, which removes redrive topics without a subscription; the counters' row is
        // keyed by an id never used again.
        if let Err(error) = self
            .store
            .put_settings(vec![(counters_key(subscription.id), None)])
            .await
        {
            tracing::warn!(%error, subscription = name, "could not remove a deleted subscription's counters");
        }
        lock(&self.counters_saved).remove(&subscription.id);
        let redrive = queue::redrive_topic(name);
        if self.topic(&redrive).is_ok() {
            self.delete_topic_locked(&redrive).await?;
        }
        tracing::info!(subscription = name, "subscription deleted");
        Ok(())
    }

    /// Watches the set of subscriptions: the value changes whenever one is created, deleted, or
    /// has its push settings changed (the webhook dispatcher follows it).
    pub fn subscriptions_changed(&self) -> watch::Receiver<u64> {
        self.subscriptions_changed.subscribe()
    }

    /// Changes a push subscription's settings (`change` edits a copy and returns what the
    /// caller wants to know of it), durably, and returns the subscription as it is now. Only
    /// `push` can change; everything else stays as created. With `expected_id`, only that very
    /// subscription is changed (not one created since with the same name).
    pub async fn update_push<R: Send + 'static>(
        self: &Arc<Self>,
        name: &str,
        expected_id: Option<u64>,
        change: impl FnOnce(&mut PushSpec) -> Result<R, BrokerError> + Send + 'static,
    ) -> Result<(Arc<Subscription>, R), BrokerError> {
        let broker = self.clone();
        let name = name.to_owned();
        run_to_end(async move {
            let _admin = broker.admin.lock().await;
            let existing = broker.subscription(&name)?;
            if expected_id.is_some_and(|id| id != existing.id) {
                return Err(BrokerError::SubscriptionNotFound(name));
            }
            let Some(mut push) = existing.spec.push.clone() else {
                return Err(BrokerError::Conflict(format!(
                    "{name:?} is not a push subscription; only a push subscription's \"push\" settings can be changed"
                )));
            };
            let answer = change(&mut push)?;
            check_push(&push, existing.spec.ack_timeout_ms)?;
            let mut spec = existing.spec.clone();
            spec.push = Some(push);
            let record = crate::meta::SubscriptionRecord {
                id: existing.id,
                name: name.clone(),
                settings: serde_json::to_value(&spec)
                    .map_err(|error| BrokerError::Invalid(error.to_string()))?,
                created_ms: existing.created_ms,
            };
            broker.store.put_subscription(record, Vec::new()).await?;
            let updated = Arc::new(Subscription {
                id: existing.id,
                name: existing.name.clone(),
                spec,
                created_ms: existing.created_ms,
                group: existing.group.clone(),
            });
            broker
                .subscriptions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(name, updated.clone());
            broker
                .subscriptions_changed
                .send_modify(|generation| *generation += 1);
            Ok((updated, answer))
        })
        .await
    }

    /// Pull: up to `max` deliveries. Stream: the consumer's partitions, in order. Queue: leased
    /// events until their deadline.
    pub async fn pull(
        self: &Arc<Self>,
        name: &str,
        consumer: &str,
        max: usize,
        wait: Duration,
        service: Option<&str>,
    ) -> Result<Vec<stream::Delivery>, BrokerError> {
        let subscription = self.subscription(name)?;
        if let Some(service) = service {
            self.note_service(service, None, Some(name));
        }
        self.pull_from(&subscription, consumer, max, wait).await
    }

    /// Pull from this very subscription (not whichever has its name by then): once it is
    /// deleted, `SubscriptionNotFound`, also when another one was created with the same name.
    ///
    /// Dropping the pull is safe: the expiry of leases it starts runs to its end, and events
    /// it leased but did not hand out are given back.
    pub async fn pull_from(
        self: &Arc<Self>,
        subscription: &Arc<Subscription>,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<stream::Delivery>, BrokerError> {
        match &*subscription.group {
            Group::Stream(group) => {
                stream::pull(self, subscription, group, consumer, max, wait).await
            }
            Group::Queue(group) => {
                queue::pull(self, subscription, group, consumer, max, wait).await
            }
        }
    }

    /// Ack. Stream: commits each receipt's partition up to and including its offset. Queue: done
    /// with these deliveries (durably). Runs to its end even if the caller goes away.
    pub async fn ack(
        self: &Arc<Self>,
        name: &str,
        receipts: &[String],
        service: Option<&str>,
    ) -> Result<Vec<stream::AckStatus>, BrokerError> {
        let subscription = self.subscription(name)?;
        if let Some(service) = service {
            self.note_service(service, None, Some(name));
        }
        let broker = self.clone();
        let receipts = receipts.to_vec();
        run_to_end(async move {
            match &*subscription.group {
                Group::Stream(group) => stream::ack(&broker, &subscription, group, &receipts).await,
                Group::Queue(group) => {
                    queue::settle(&broker, &subscription, group, &receipts, Settle::Ack).await
                }
            }
        })
        .await
    }

    /// Queue only: nack, extend or reject. Runs to its end even if the caller goes away.
    pub async fn settle(
        self: &Arc<Self>,
        name: &str,
        receipts: &[String],
        action: Settle,
    ) -> Result<Vec<stream::AckStatus>, BrokerError> {
        let subscription = self.subscription(name)?;
        if subscription.queue_group().is_none() {
            return Err(BrokerError::Conflict(format!(
                "{name:?} is a stream subscription: nack, extend and reject are for queue subscriptions (commit with ack, move with seek)"
            )));
        }
        let broker = self.clone();
        let receipts = receipts.to_vec();
        run_to_end(async move {
            let group = subscription
                .queue_group()
                .expect("checked to be a queue subscription");
            queue::settle(&broker, &subscription, group, &receipts, action).await
        })
        .await
    }

    /// Moves the group's position (stream), or acknowledges everything before the target and
    /// makes everything from it pending again (queue). Runs to its end even if the caller goes
    /// away.
    pub async fn seek(
        self: &Arc<Self>,
        name: &str,
        target: stream::SeekTarget,
    ) -> Result<(), BrokerError> {
        let subscription = self.subscription(name)?;
        let broker = self.clone();
        run_to_end(async move {
            match &*subscription.group {
                Group::Stream(group) => stream::seek(&broker, &subscription, group, target).await,
                Group::Queue(group) => queue::seek(&broker, &subscription, group, target).await,
            }
        })
        .await
    }

    /// Queue only: moves up to `max` of this subscription's dead letters back into it. Runs to
    /// its end even if the caller goes away.
    pub async fn redrive(self: &Arc<Self>, name: &str, max: usize) -> Result<usize, BrokerError> {
        let subscription = self.subscription(name)?;
        if subscription.queue_group().is_none() {
            return Err(BrokerError::Conflict(format!(
                "{name:?} is a stream subscription: redrive is for queue subscriptions and their dead-letter topics"
            )));
        }
        let broker = self.clone();
        run_to_end(async move {
            let group = subscription
                .queue_group()
                .expect("checked to be a queue subscription");
            queue::redrive(&broker, &subscription, group, max).await
        })
        .await
    }

    /// Statistics of a subscription.
    pub async fn subscription_stats(&self, subscription: &Subscription) -> SubscriptionStats {
        match &*subscription.group {
            Group::Stream(group) => {
                SubscriptionStats::Stream(stream::stats(self, subscription, group))
            }
            Group::Queue(group) => {
                SubscriptionStats::Queue(queue::stats(self, subscription, group).await)
            }
        }
    }

    /// Queue only: the live leases `consumer` holds now (`None` for a stream subscription).
    pub fn queue_leases(&self, subscription: &Subscription, consumer: &str) -> Option<usize> {
        match &*subscription.group {
            Group::Queue(group) => Some(queue::leased_by(group, consumer, self.clock_ms())),
            Group::Stream(_) => None,
        }
    }

    /// Resolves when a queue subscription's state changes (or at once for a stream).
    pub async fn queue_changed(&self, subscription: &Subscription) {
        if let Group::Queue(group) = &*subscription.group {
            queue::changed(group).await;
        }
    }
}

/// Checks what the core can of a push subscription's settings (the URL's form and destination
/// are the dispatcher's to check).
fn check_push(push: &PushSpec, ack_timeout_ms: u64) -> Result<(), BrokerError> {
    if push.url.len() > PUSH_URL_BYTES_MAX {
        return Err(BrokerError::Invalid(format!(
            "push.url is {} bytes; the longest accepted is {PUSH_URL_BYTES_MAX}",
            push.url.len()
        )));
    }
    if push.max_in_flight == 0 || push.max_in_flight > PUSH_IN_FLIGHT_MAX {
        return Err(BrokerError::Invalid(format!(
            "push.max_in_flight must be between 1 and {PUSH_IN_FLIGHT_MAX}, not {}",
            push.max_in_flight
        )));
    }
    let timeout_max_ms = push_timeout_max_ms(ack_timeout_ms);
    if push.timeout_ms == 0 || push.timeout_ms > timeout_max_ms {
        return Err(BrokerError::Invalid(format!(
            "push.timeout must be between 1ms and {timeout_max_ms}ms with ack_timeout {ack_timeout_ms}ms (a request and its ack must end before the lease does: the timeout leaves 1s or a tenth of ack_timeout, whichever is longer); it is {}ms",
            push.timeout_ms
        )));
    }
    Ok(())
}

/// The longest `push.timeout` for a lease of `ack_timeout_ms`: a request and the commit of its
/// ack must end before the lease does, or the event is sent again while the first is answered.
/// The margin is 1 s or a tenth of the lease, whichever is longer (0 when the lease is 1 s or
/// shorter: such a subscription cannot push).
pub fn push_timeout_max_ms(ack_timeout_ms: u64) -> u64 {
    ack_timeout_ms.saturating_sub((ack_timeout_ms / 10).max(1000))
}

/// A live tail: appends to matching topics, from the moment it was made.
#[derive(Debug)]
pub struct Tail {
    receiver: broadcast::Receiver<Appended>,
    patterns: Vec<String>,
    store: Arc<dyn Store>,
}

impl Tail {
    /// The next events appended to a matching topic. Notices the tail fell too far behind on are
    /// skipped (at-most-once). `None` when the broker is gone.
    pub async fn next(&mut self) -> Option<Vec<StoredEvent>> {
        loop {
            let appended = match self.receiver.recv().await {
                Ok(appended) => appended,
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "live tail fell behind; skipping");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let matched = self.patterns.iter().any(|pattern| {
                (!names::is_internal(appended.topic.name()) || names::is_internal(pattern))
                    && names::pattern_matches(pattern, appended.topic.name())
            });
            if !matched {
                continue;
            }
            let mut events = Vec::new();
            let mut offset = appended.base_offset;
            while offset < appended.end_offset {
                let Ok(read) = self
                    .store
                    .read(
                        appended.topic.record.id,
                        appended.partition,
                        offset,
                        4 * 1024 * 1024,
                    )
                    .await
                else {
                    break; // deleted or retained away meanwhile: at-most-once
                };
                if read.records.is_empty() {
                    break;
                }
                for record in read.records {
                    if record.offset >= appended.end_offset {
                        break;
                    }
                    offset = record.offset + 1;
                    events.push(StoredEvent {
                        topic: appended.topic.clone(),
                        partition: appended.partition,
                        offset: record.offset,
                        timestamp_ms: record.timestamp_ms,
                        event: record.payload,
                    });
                }
            }
            if !events.is_empty() {
                return Some(events);
            }
        }
    }
}
