//! The storage boundary: everything the broker keeps durably goes through [`Store`].
//!
//! The broker holds no durable state of its own: appends, reads, topic and subscription
//! definitions, and group positions are operations of the store. [`LocalStore`] implements them
//! with one `herald-log` partition log per topic partition and an embedded metadata database; a
//! shared backend (PostgreSQL, planned) can implement the same trait so that several Herald nodes
//! serve one set of topics.
//!
//! Appends take an [`EncodedBatch`]: the log's documented frame format (`docs/format.md`) is
//! also the unit a shared backend would store, so the publish path encodes each event once.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use herald_log::{
    AppendError, AppendInfo, BatchLimits, EncodedBatch, LogConfig, LogInfo, OpenError,
    PartitionLog, ReadError, ReadResult, RetentionError, RetentionOutcome, RetentionPolicy,
    SegmentInfo, Storage, SyncHistogram,
};
use tokio::sync::watch;

use crate::meta::{
    MetaError, MetaStore, QueueChanges, RequestRecord, RequestWrite, ServiceRecord,
    SubscriptionRecord, TopicRecord,
};

/// A boxed future, so that [`Store`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Retention(#[from] RetentionError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("partition {partition} of topic {topic_id} is not open")]
    NoSuchPartition { topic_id: u64, partition: u32 },
    #[error("the store's worker failed: {0}")]
    Worker(String),
}

/// The veto hook of retention: true when the segment may be deleted.
pub type RetentionHook = Box<dyn FnMut(&SegmentInfo) -> bool + Send>;

/// Durable state of the broker.
pub trait Store: Send + Sync + Debug + 'static {
    /// The limits a batch given to [`Store::append`] must fit.
    fn batch_limits(&self) -> BatchLimits;

    fn topics(&self) -> Result<Vec<TopicRecord>, StoreError>;
    /// Creates a topic's partitions and records it; also grows the partitions of an existing one.
    fn put_topic(&self, topic: TopicRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Forgets a topic and deletes its events and positions.
    fn delete_topic(&self, topic: TopicRecord) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Appends a batch to a partition; returns once it is durable.
    fn append(
        &self,
        topic_id: u64,
        partition: u32,
        batch: EncodedBatch,
    ) -> BoxFuture<'_, Result<AppendInfo, StoreError>>;
    /// Reads records from `offset`, about `max_bytes` worth.
    fn read(
        &self,
        topic_id: u64,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> BoxFuture<'_, Result<ReadResult, StoreError>>;
    /// The first offset with a timestamp at or after `timestamp_ms`.
    fn offset_for_timestamp(
        &self,
        topic_id: u64,
        partition: u32,
        timestamp_ms: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Start and end offsets and size of a partition.
    fn partition_info(&self, topic_id: u64, partition: u32) -> Result<LogInfo, StoreError>;
    /// The visible end offset of a partition, to wait on.
    fn watch_end(&self, topic_id: u64, partition: u32) -> Result<watch::Receiver<u64>, StoreError>;
    /// Applies a retention policy to a partition.
    fn apply_retention(
        &self,
        topic_id: u64,
        partition: u32,
        policy: RetentionPolicy,
        now_ms: u64,
        hook: RetentionHook,
    ) -> BoxFuture<'_, Result<RetentionOutcome, StoreError>>;

    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError>;
    /// Records a subscription with its initial group positions, atomically.
    fn put_subscription(
        &self,
        subscription: SubscriptionRecord,
        positions: Vec<(u64, u32, u64)>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn delete_subscription(
        &self,
        subscription: SubscriptionRecord,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A subscription's group positions: (topic id, partition, next offset).
    fn positions(&self, subscription_id: u64) -> Result<Vec<(u64, u32, u64)>, StoreError>;
    /// Stores group positions; returns once they are durable.
    fn commit_positions(
        &self,
        subscription_id: u64,
        positions: Vec<(u64, u32, u64)>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Stores changes of a queue subscription's state (done events, floors, retries); returns once
    /// they are durable. Concurrent calls share one transaction.
    fn commit_queue_changes(
        &self,
        subscription_id: u64,
        changes: QueueChanges,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The stored state of a queue subscription.
    fn queue_state(&self, subscription_id: u64) -> Result<QueueChanges, StoreError>;

    /// Every stored request (action/response), to resume them after a restart.
    fn requests(&self) -> Result<Vec<RequestRecord>, StoreError>;
    /// One stored request.
    fn request(&self, id: &str) -> BoxFuture<'_, Result<Option<RequestRecord>, StoreError>>;
    /// Stores or deletes requests; returns once durable. Concurrent calls share a transaction.
    fn write_requests(&self, writes: Vec<RequestWrite>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Forgets requests kept past their `keep_until_ms`; returns how many.
    fn purge_requests(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>>;

    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError>;
    fn put_service(&self, service: ServiceRecord) -> BoxFuture<'_, Result<(), StoreError>>;
    fn setting(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>>;
    /// Stores a setting durably (off the async threads).
    fn put_setting(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Stores (`Some`) and removes (`None`) settings, durably, in one transaction.
    fn put_settings(
        &self,
        settings: Vec<(String, Option<Vec<u8>>)>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// How long the store's syncs took, for metrics (`None` when it does not know).
    fn sync_histogram(&self) -> Option<SyncHistogram>;

    /// Makes everything durable and stops accepting appends.
    fn close(&self) -> Result<(), StoreError>;
}

/// Herald's own storage: a partition log per topic partition under `data_dir/topics/{id}/{n}`,
/// and metadata in `data_dir/meta.redb`.
#[derive(Debug, Clone)]
pub struct LocalStore {
    inner: Arc<LocalInner>,
}

#[derive(Debug)]
struct LocalInner {
    data_dir: PathBuf,
    storage: Arc<dyn Storage>,
    log_config: LogConfig,
    meta: Arc<MetaStore>,
    partitions: RwLock<HashMap<(u64, u32), PartitionLog>>,
    /// The queue-state committer: one thread that writes whatever has queued up in one
    /// transaction (group commit for acks). `None` once closed.
    queue_commits: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<QueueCommit>>>,
}

/// One change for the committer thread.
enum Change {
    Queue(u64, QueueChanges),
    Requests(Vec<RequestWrite>),
}

type QueueCommit = (Change, tokio::sync::oneshot::Sender<Result<(), MetaError>>);

/// Most queue-state changes waiting for the committer; more callers wait for room.
const QUEUE_COMMITS_QUEUED_MAX: usize = 4096;
/// Most changes the committer puts in one transaction.
const QUEUE_COMMITS_PER_TRANSACTION_MAX: usize = 512;

fn run_queue_committer(
    meta: Arc<MetaStore>,
    mut commits: tokio::sync::mpsc::Receiver<QueueCommit>,
) {
    while let Some(first) = commits.blocking_recv() {
        let mut group = vec![first];
        while group.len() < QUEUE_COMMITS_PER_TRANSACTION_MAX {
            match commits.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut batches: Vec<(u64, QueueChanges)> = Vec::new();
        let mut requests: Vec<RequestWrite> = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        for (change, reply) in group {
            match change {
                Change::Queue(subscription, changes) => batches.push((subscription, changes)),
                Change::Requests(writes) => requests.extend(writes),
            }
            replies.push(reply);
        }
        let result = meta.apply_changes(&batches, &requests);
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

fn topic_directory(data_dir: &Path, topic_id: u64) -> PathBuf {
    data_dir.join("topics").join(format!("{topic_id:016x}"))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Worker(error.to_string()))?
}

/// Hands a change to the committer thread and waits until it is durable.
async fn commit(
    sender: Option<tokio::sync::mpsc::Sender<QueueCommit>>,
    change: Change,
) -> Result<(), StoreError> {
    let sender = sender.ok_or_else(|| StoreError::Worker("the store is closed".into()))?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    sender
        .send((change, reply))
        .await
        .map_err(|_| StoreError::Worker("the metadata committer stopped".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Worker("the metadata committer stopped".into()))?
        .map_err(StoreError::Meta)
}

impl LocalStore {
    /// Opens the data directory: the metadata, then every partition (recovering each).
    pub fn open(
        data_dir: &Path,
        log_config: LogConfig,
        storage: Arc<dyn Storage>,
    ) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir.join("topics"))?;
        let meta = MetaStore::open(&data_dir.join("meta.redb"))?;
        let topics = meta.topics()?;
        let mut partitions = HashMap::new();
        for topic in &topics {
            for partition in 0..topic.partitions {
                let directory = topic_directory(data_dir, topic.id).join(partition.to_string());
                let log = PartitionLog::open(storage.clone(), directory, log_config.clone())?;
                partitions.insert((topic.id, partition), log);
            }
        }
        // Directories of topics that are no longer recorded: a deletion cut short by a crash.
        let known: Vec<String> = topics
            .iter()
            .map(|topic| format!("{:016x}", topic.id))
            .collect();
        for entry in std::fs::read_dir(data_dir.join("topics"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                tracing::info!(directory = %entry.path().display(), "removing the files of a deleted topic");
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        let meta = Arc::new(meta);
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUE_COMMITS_QUEUED_MAX);
        {
            let meta = meta.clone();
            std::thread::Builder::new()
                .name("herald-queue-commit".into())
                .spawn(move || run_queue_committer(meta, receiver))?;
        }
        Ok(Self {
            inner: Arc::new(LocalInner {
                data_dir: data_dir.to_owned(),
                storage,
                log_config,
                meta,
                partitions: RwLock::new(partitions),
                queue_commits: std::sync::Mutex::new(Some(sender)),
            }),
        })
    }

    fn committer(&self) -> Option<tokio::sync::mpsc::Sender<QueueCommit>> {
        self.inner
            .queue_commits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn log(&self, topic_id: u64, partition: u32) -> Result<PartitionLog, StoreError> {
        self.inner
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&(topic_id, partition))
            .cloned()
            .ok_or(StoreError::NoSuchPartition {
                topic_id,
                partition,
            })
    }

    /// The partition log itself, for metrics.
    pub fn partition_log(&self, topic_id: u64, partition: u32) -> Option<PartitionLog> {
        self.log(topic_id, partition).ok()
    }
}

impl Store for LocalStore {
    fn batch_limits(&self) -> BatchLimits {
        self.inner.log_config.batch_limits()
    }

    fn topics(&self) -> Result<Vec<TopicRecord>, StoreError> {
        Ok(self.inner.meta.topics()?)
    }

    fn put_topic(&self, topic: TopicRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            // Partitions first, then the record: a crash in between leaves only files, which the
            // next start removes because no topic names them.
            let mut opened = Vec::new();
            for partition in 0..topic.partitions {
                let exists = inner
                    .partitions
                    .read()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .contains_key(&(topic.id, partition));
                if !exists {
                    let directory =
                        topic_directory(&inner.data_dir, topic.id).join(partition.to_string());
                    let log = PartitionLog::open(
                        inner.storage.clone(),
                        directory,
                        inner.log_config.clone(),
                    )?;
                    opened.push((partition, log));
                }
            }
            // The new directories must be durable before the record that names them.
            let directory = topic_directory(&inner.data_dir, topic.id);
            if !opened.is_empty() {
                inner.storage.sync_dir(&directory)?;
                inner.storage.sync_dir(&inner.data_dir.join("topics"))?;
            }
            inner.meta.put_topic(&topic)?;
            let mut partitions = inner
                .partitions
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (partition, log) in opened {
                partitions.insert((topic.id, partition), log);
            }
            Ok(())
        }))
    }

    fn delete_topic(&self, topic: TopicRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            inner.meta.delete_topic(&topic)?;
            let logs: Vec<PartitionLog> = {
                let mut partitions = inner
                    .partitions
                    .write()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                (0..topic.partitions)
                    .filter_map(|partition| partitions.remove(&(topic.id, partition)))
                    .collect()
            };
            for log in logs {
                log.delete()?;
            }
            let directory = topic_directory(&inner.data_dir, topic.id);
            match std::fs::remove_dir_all(&directory) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(error.into()),
            }
        }))
    }

    fn append(
        &self,
        topic_id: u64,
        partition: u32,
        batch: EncodedBatch,
    ) -> BoxFuture<'_, Result<AppendInfo, StoreError>> {
        let log = self.log(topic_id, partition);
        Box::pin(async move {
            let log = log?;
            blocking(move || Ok(log.append(batch)?)).await
        })
    }

    fn read(
        &self,
        topic_id: u64,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> BoxFuture<'_, Result<ReadResult, StoreError>> {
        let log = self.log(topic_id, partition);
        Box::pin(async move {
            let log = log?;
            blocking(move || Ok(log.read(offset, max_bytes)?)).await
        })
    }

    fn offset_for_timestamp(
        &self,
        topic_id: u64,
        partition: u32,
        timestamp_ms: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        let log = self.log(topic_id, partition);
        Box::pin(async move {
            let log = log?;
            blocking(move || Ok(log.offset_for_timestamp(timestamp_ms)?)).await
        })
    }

    fn partition_info(&self, topic_id: u64, partition: u32) -> Result<LogInfo, StoreError> {
        Ok(self.log(topic_id, partition)?.info())
    }

    fn watch_end(&self, topic_id: u64, partition: u32) -> Result<watch::Receiver<u64>, StoreError> {
        Ok(self.log(topic_id, partition)?.subscribe_end_offset())
    }

    fn apply_retention(
        &self,
        topic_id: u64,
        partition: u32,
        policy: RetentionPolicy,
        now_ms: u64,
        mut hook: RetentionHook,
    ) -> BoxFuture<'_, Result<RetentionOutcome, StoreError>> {
        let log = self.log(topic_id, partition);
        Box::pin(async move {
            let log = log?;
            blocking(move || Ok(log.apply_retention(&policy, now_ms, &mut hook)?)).await
        })
    }

    fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, StoreError> {
        Ok(self.inner.meta.subscriptions()?)
    }

    fn put_subscription(
        &self,
        subscription: SubscriptionRecord,
        positions: Vec<(u64, u32, u64)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            Ok(inner.meta.put_subscription(&subscription, &positions)?)
        }))
    }

    fn delete_subscription(
        &self,
        subscription: SubscriptionRecord,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            Ok(inner.meta.delete_subscription(&subscription)?)
        }))
    }

    fn positions(&self, subscription_id: u64) -> Result<Vec<(u64, u32, u64)>, StoreError> {
        Ok(self.inner.meta.positions(subscription_id)?)
    }

    fn commit_positions(
        &self,
        subscription_id: u64,
        positions: Vec<(u64, u32, u64)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || {
            Ok(inner.meta.commit_positions(subscription_id, &positions)?)
        }))
    }

    fn commit_queue_changes(
        &self,
        subscription_id: u64,
        changes: QueueChanges,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let sender = self.committer();
        Box::pin(async move {
            if changes.is_empty() {
                return Ok(());
            }
            commit(sender, Change::Queue(subscription_id, changes)).await
        })
    }

    fn requests(&self) -> Result<Vec<RequestRecord>, StoreError> {
        Ok(self.inner.meta.requests()?)
    }

    fn request(&self, id: &str) -> BoxFuture<'_, Result<Option<RequestRecord>, StoreError>> {
        let meta = self.inner.meta.clone();
        let id = id.to_owned();
        Box::pin(blocking(move || Ok(meta.request(&id)?)))
    }

    fn write_requests(&self, writes: Vec<RequestWrite>) -> BoxFuture<'_, Result<(), StoreError>> {
        let sender = self.committer();
        Box::pin(async move {
            if writes.is_empty() {
                return Ok(());
            }
            commit(sender, Change::Requests(writes)).await
        })
    }

    fn purge_requests(&self, now_ms: u64) -> BoxFuture<'_, Result<u64, StoreError>> {
        let meta = self.inner.meta.clone();
        Box::pin(blocking(move || Ok(meta.purge_requests(now_ms)?)))
    }

    fn queue_state(&self, subscription_id: u64) -> Result<QueueChanges, StoreError> {
        Ok(self.inner.meta.queue_state(subscription_id)?)
    }

    fn services(&self) -> Result<Vec<ServiceRecord>, StoreError> {
        Ok(self.inner.meta.services()?)
    }

    fn put_service(&self, service: ServiceRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        Box::pin(blocking(move || Ok(inner.meta.put_service(&service)?)))
    }

    fn setting(&self, key: &str) -> BoxFuture<'_, Result<Option<Vec<u8>>, StoreError>> {
        let meta = self.inner.meta.clone();
        let key = key.to_owned();
        Box::pin(blocking(move || Ok(meta.setting(&key)?)))
    }

    fn put_settings(
        &self,
        settings: Vec<(String, Option<Vec<u8>>)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let meta = self.inner.meta.clone();
        Box::pin(blocking(move || Ok(meta.put_settings(&settings)?)))
    }

    fn put_setting(&self, key: &str, value: Vec<u8>) -> BoxFuture<'_, Result<(), StoreError>> {
        let inner = self.inner.clone();
        let key = key.to_owned();
        Box::pin(blocking(move || {
            Ok(inner.meta.put_setting(&key, &value)?)
        }))
    }

    fn sync_histogram(&self) -> Option<SyncHistogram> {
        let mut total = SyncHistogram::default();
        for log in self
            .inner
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
        {
            total.merge(&log.sync_histogram());
        }
        Some(total)
    }

    fn close(&self) -> Result<(), StoreError> {
        let logs: Vec<PartitionLog> = self
            .inner
            .partitions
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .cloned()
            .collect();
        for log in logs {
            log.close()?;
        }
        // Dropping the sender ends the committer thread once it has written what is queued.
        self.inner
            .queue_commits
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        self.inner.meta.close();
        Ok(())
    }
}
