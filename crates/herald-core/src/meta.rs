//! The metadata store: topics, subscriptions, group positions, services and the server's
//! secret, in one embedded database (redb). Every write is one transaction committed with an
//! fsync before it returns. The events themselves live in the partition logs, never here.

use std::path::Path;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const SUBSCRIPTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("subscriptions");
/// (subscription id, topic id, partition) → the next offset to deliver (the group's commit).
const POSITIONS: TableDefinition<(u64, u64, u32), u64> = TableDefinition::new("positions");
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// Queue subscriptions: (subscription, topic, partition, offset) of events done (acked or
/// dead-lettered) above the partition's floor (the floor itself is in `POSITIONS`).
const QUEUE_DONE: TableDefinition<(u64, u64, u32, u64), ()> = TableDefinition::new("queue_done");
/// Queue subscriptions: events waiting for a retry: → (attempts so far, not before, ms).
const QUEUE_RETRY: TableDefinition<(u64, u64, u32, u64), (u32, u64)> =
    TableDefinition::new("queue_retry");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");
/// Requests (action/response) by request id → `RequestRecord` as JSON.
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
/// (time the request's record may be forgotten, request id), so old records are found by a
/// range scan.
const REQUEST_PURGE: TableDefinition<(u64, &str), ()> = TableDefinition::new("request_purge");
/// Request id → (partition, offset) of its outcome's event in the reply topic, once appended
/// (a small row, so marking does not rewrite the record).
const REQUEST_APPENDED: TableDefinition<&str, (u32, u64)> =
    TableDefinition::new("request_appended");

/// An error of the metadata database. `Clone`, so that one failed group commit can answer
/// every change it carried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct MetaError {
    message: String,
    disk_full: bool,
    /// The database must be opened again before its next use (see [`needs_reopen`]).
    reopen: bool,
}

impl MetaError {
    /// An error that is not the database's (a record that does not decode, say).
    pub fn other(text: impl std::fmt::Display) -> Self {
        MetaError {
            message: format!("metadata store: {text}"),
            disk_full: false,
            reopen: false,
        }
    }

    /// True when the write failed because the disk (or the quota) is full: nothing was
    /// changed, and the same write can succeed once there is room.
    pub fn is_disk_full(&self) -> bool {
        self.disk_full
    }
}

fn meta_error(error: impl std::fmt::Display) -> MetaError {
    MetaError::other(error)
}

/// Classifies a redb error: a full disk is told apart (507, not 500), with the same words as
/// the partition logs use.
fn database_error(error: redb::Error) -> MetaError {
    let reopen = needs_reopen(&error);
    match &error {
        redb::Error::Io(io) if herald_log::io::is_disk_full(io) => MetaError {
            message: format!("no space left on the device: {io} (metadata store)"),
            disk_full: true,
            reopen,
        },
        _ => MetaError {
            reopen,
            ..MetaError::other(error)
        },
    }
}

impl From<redb::TableError> for MetaError {
    fn from(error: redb::TableError) -> Self {
        database_error(error.into())
    }
}

impl From<redb::StorageError> for MetaError {
    fn from(error: redb::StorageError) -> Self {
        database_error(error.into())
    }
}

impl From<redb::TransactionError> for MetaError {
    fn from(error: redb::TransactionError) -> Self {
        database_error(error.into())
    }
}

impl From<redb::CommitError> for MetaError {
    fn from(error: redb::CommitError) -> Self {
        database_error(error.into())
    }
}

impl From<redb::DatabaseError> for MetaError {
    fn from(error: redb::DatabaseError) -> Self {
        database_error(error.into())
    }
}

/// True when redb needs to be opened again before it can be used (it refuses every operation
/// after an I/O error, until it is reopened and has checked its file).
fn needs_reopen(error: &redb::Error) -> bool {
    matches!(error, redb::Error::Io(_) | redb::Error::PreviousIo)
}

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Unique for the life of the data directory; names the topic's directory, so a topic
    /// deleted and created again never sees the old files.
    pub id: u64,
    pub name: String,
    pub partitions: u32,
    pub retention_age_max_ms: Option<u64>,
    pub retention_bytes_max: Option<u64>,
    pub dedup_window_ms: u64,
    pub created_ms: u64,
}

/// A subscription as stored; `settings` is the subscription's specification, kept as the core
/// defines it (see `subscription::SubscriptionSpec`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    pub id: u64,
    pub name: String,
    pub settings: serde_json::Value,
    pub created_ms: u64,
}

/// What a service was seen doing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub name: String,
    pub publishes: Vec<String>,
    pub consumes: Vec<String>,
    pub last_seen_ms: u64,
}

/// A request of action/response as stored: written when it is made, and again when it is
/// answered or expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// A ULID; also the request event's `correlationid`.
    pub id: String,
    /// The topic the request event was published to.
    pub topic: String,
    /// The service whose instances may claim the reply (`_replies.{group}`).
    pub group: String,
    /// The request event's `source` and `id` (a retried publish of the same event finds this
    /// request again).
    pub event_source: String,
    pub event_id: String,
    /// `herald-context`: JSON text, handed back with the reply.
    pub context: Option<String>,
    pub created_ms: u64,
    pub deadline_ms: u64,
    /// When the record may be forgotten (its deadline plus a grace period).
    pub keep_until_ms: u64,
    /// The reply or the expiry, once there is one.
    pub outcome: Option<RequestOutcome>,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub expired: bool,
    /// The event appended to `_replies.{group}` (the reply with `correlationid`, or the
    /// `herald.request.expired` event), as JSON text.
    pub event: String,
    pub at_ms: u64,
    /// The end offset of `_replies.{group}` before the event was appended: after a crash, the
    /// event is looked for from here before it is appended again.
    pub scan_from: u64,
    /// Where the event was appended, once it is known to be.
    pub appended: Option<(u32, u64)>,
}

/// A change of the stored requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestWrite {
    Put(Box<RequestRecord>),
    /// The outcome's event is in the reply topic at (partition, offset).
    Appended {
        id: String,
        partition: u32,
        offset: u64,
    },
    Delete {
        id: String,
        keep_until_ms: u64,
    },
}

/// Durable changes of queue subscriptions, or their whole stored state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueChanges {
    /// (topic, partition, floor): every offset below the floor is done.
    pub floors: Vec<(u64, u32, u64)>,
    /// (topic, partition, offset) done above the floor.
    pub done: Vec<(u64, u32, u64)>,
    /// (topic, partition, offset, attempts so far, not before ms) waiting for a retry.
    pub retries: Vec<(u64, u32, u64, u32, u64)>,
    /// (topic, partition, floor) set exactly, forgetting every done and retry row of the
    /// partition (a seek). Applied before everything else.
    pub resets: Vec<(u64, u32, u64)>,
}

impl QueueChanges {
    pub fn is_empty(&self) -> bool {
        self.floors.is_empty()
            && self.done.is_empty()
            && self.retries.is_empty()
            && self.resets.is_empty()
    }
}

/// Fills in where a record's outcome was appended, from the small `request_appended` row.
fn with_appended(
    appended: &impl ReadableTable<&'static str, (u32, u64)>,
    record: &mut RequestRecord,
) -> Result<(), MetaError> {
    if let Some(outcome) = &mut record.outcome
        && outcome.appended.is_none()
        && let Some(position) = appended.get(record.id.as_str()).map_err(MetaError::from)?
    {
        outcome.appended = Some(position.value());
    }
    Ok(())
}

/// The metadata database.
#[derive(Debug)]
pub struct MetaStore {
    path: std::path::PathBuf,
    /// `None` after an I/O error (redb refuses every operation after one until it is opened
    /// again and has checked its file; the next operation reopens it), and once closed.
    database: std::sync::RwLock<Option<Database>>,
    /// Closed for good: the file lock is released, so the directory can be opened again.
    closed: std::sync::atomic::AtomicBool,
}

impl MetaStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, MetaError> {
        let database = Database::create(path).map_err(MetaError::from)?;
        let store = Self {
            path: path.to_owned(),
            database: std::sync::RwLock::new(Some(database)),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        store.write(|transaction| {
            transaction.open_table(TOPICS)?;
            transaction.open_table(SUBSCRIPTIONS)?;
            transaction.open_table(POSITIONS)?;
            transaction.open_table(SERVICES)?;
            transaction.open_table(SETTINGS)?;
            transaction.open_table(QUEUE_DONE)?;
            transaction.open_table(QUEUE_RETRY)?;
            transaction.open_table(REQUESTS)?;
            transaction.open_table(REQUEST_PURGE)?;
            transaction.open_table(REQUEST_APPENDED)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Closes the database; later operations fail.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.database
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
    }

    /// The open database, opened again first if an I/O error closed it.
    fn database(&self) -> Result<std::sync::RwLockReadGuard<'_, Option<Database>>, MetaError> {
        loop {
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(MetaError::other("the metadata store is closed"));
            }
            let guard = self
                .database
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if guard.is_some() {
                return Ok(guard);
            }
            drop(guard);
            let mut database = self
                .database
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if database.is_none() && !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                // Like a restart after a crash: redb checks the file and keeps every committed
                // transaction.
                *database = Some(Database::create(&self.path).map_err(MetaError::from)?);
                tracing::info!(path = %self.path.display(), "metadata store opened again after an I/O error");
            }
        }
    }

    /// After an error that leaves redb refusing work, drops the database so that the next
    /// operation opens it again.
    fn after<T>(&self, result: Result<T, MetaError>) -> Result<T, MetaError> {
        if let Err(error) = &result
            && error.reopen
        {
            tracing::warn!(%error, "metadata store: I/O error; it is opened again before its next use");
            self.database
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
        }
        result
    }

    fn read<T>(
        &self,
        work: impl FnOnce(&redb::ReadTransaction) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let result = (|| {
            let database = self.database()?;
            let transaction = database
                .as_ref()
                .expect("database() returns an open database")
                .begin_read()
                .map_err(MetaError::from)?;
            work(&transaction)
        })();
        self.after(result)
    }

    fn write<T>(
        &self,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<T, MetaError>,
    ) -> Result<T, MetaError> {
        let result = (|| {
            let database = self.database()?;
            let mut transaction = database
                .as_ref()
                .expect("database() returns an open database")
                .begin_write()
                .map_err(MetaError::from)?;
            transaction.set_durability(Durability::Immediate);
            let value = work(&transaction)?;
            transaction.commit().map_err(MetaError::from)?;
            Ok(value)
        })();
        self.after(result)
    }

    fn read_all<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, MetaError> {
        self.read(|transaction| {
            let table = transaction.open_table(table).map_err(MetaError::from)?;
            let mut values = Vec::new();
            for entry in table.iter().map_err(MetaError::from)? {
                let (_, value) = entry.map_err(MetaError::from)?;
                values.push(serde_json::from_slice(value.value()).map_err(meta_error)?);
            }
            Ok(values)
        })
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(value).map_err(meta_error)?;
        self.write(|transaction| {
            transaction
                .open_table(table)?
                .insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    pub fn topics(&self) -> Result<Vec<TopicRecord>, MetaError> {
        self.read_all(TOPICS)
    }

    pub fn put_topic(&self, topic: &TopicRecord) -> Result<(), MetaError> {
        self.put(TOPICS, &topic.name, topic)
    }

    /// Removes a topic and every group position on it.
    pub fn delete_topic(&self, topic: &TopicRecord) -> Result<(), MetaError> {
        self.write(|transaction| {
            transaction
                .open_table(TOPICS)?
                .remove(topic.name.as_str())?;
            let mut positions = transaction.open_table(POSITIONS)?;
            positions.retain(|(_, topic_id, _), _| topic_id != topic.id)?;
            Ok(())
        })
    }

    pub fn subscriptions(&self) -> Result<Vec<SubscriptionRecord>, MetaError> {
        self.read_all(SUBSCRIPTIONS)
    }

    /// Stores a subscription together with its initial positions, in one transaction.
    pub fn put_subscription(
        &self,
        subscription: &SubscriptionRecord,
        positions: &[(u64, u32, u64)],
    ) -> Result<(), MetaError> {
        let bytes = serde_json::to_vec(subscription).map_err(meta_error)?;
        self.write(|transaction| {
            transaction
                .open_table(SUBSCRIPTIONS)?
                .insert(subscription.name.as_str(), bytes.as_slice())?;
            let mut table = transaction.open_table(POSITIONS)?;
            for (topic_id, partition, offset) in positions {
                table.insert((subscription.id, *topic_id, *partition), *offset)?;
            }
            Ok(())
        })
    }

    /// Removes a subscription and its positions.
    pub fn delete_subscription(&self, subscription: &SubscriptionRecord) -> Result<(), MetaError> {
        self.write(|transaction| {
            transaction
                .open_table(SUBSCRIPTIONS)?
                .remove(subscription.name.as_str())?;
            let mut positions = transaction.open_table(POSITIONS)?;
            let id = subscription.id;
            positions.retain_in((id, 0, 0)..=(id, u64::MAX, u32::MAX), |_, _| false)?;
            let range = (id, 0, 0, 0)..=(id, u64::MAX, u32::MAX, u64::MAX);
            let mut done = transaction.open_table(QUEUE_DONE)?;
            done.retain_in(range.clone(), |_, _| false)?;
            let mut retry = transaction.open_table(QUEUE_RETRY)?;
            retry.retain_in(range, |_, _| false)?;
            Ok(())
        })
    }

    /// The stored positions of a subscription: (topic id, partition) → next offset.
    pub fn positions(&self, subscription_id: u64) -> Result<Vec<(u64, u32, u64)>, MetaError> {
        self.read(|transaction| {
            let table = transaction.open_table(POSITIONS).map_err(MetaError::from)?;
            let id = subscription_id;
            let mut positions = Vec::new();
            for entry in table
                .range((id, 0, 0)..=(id, u64::MAX, u32::MAX))
                .map_err(MetaError::from)?
            {
                let (key, value) = entry.map_err(MetaError::from)?;
                let (_, topic_id, partition) = key.value();
                positions.push((topic_id, partition, value.value()));
            }
            Ok(positions)
        })
    }

    /// Stores positions of one subscription, durably, in one transaction.
    pub fn commit_positions(
        &self,
        subscription_id: u64,
        positions: &[(u64, u32, u64)],
    ) -> Result<(), MetaError> {
        self.write(|transaction| {
            let mut table = transaction.open_table(POSITIONS)?;
            for (topic_id, partition, offset) in positions {
                table.insert((subscription_id, *topic_id, *partition), *offset)?;
            }
            Ok(())
        })
    }

    /// Applies the changes of many queue operations (of any subscriptions) in one transaction.
    pub fn apply_queue_changes(&self, batches: &[(u64, QueueChanges)]) -> Result<(), MetaError> {
        self.apply_changes(batches, &[])
    }

    /// Applies queue changes and request writes in one transaction (the group commit of
    /// `LocalStore`'s committer thread).
    pub fn apply_changes(
        &self,
        batches: &[(u64, QueueChanges)],
        requests: &[RequestWrite],
    ) -> Result<(), MetaError> {
        let encoded: Vec<Option<Vec<u8>>> = requests
            .iter()
            .map(|write| match write {
                RequestWrite::Put(record) => serde_json::to_vec(record).map(Some),
                RequestWrite::Delete { .. } | RequestWrite::Appended { .. } => Ok(None),
            })
            .collect::<Result<_, _>>()
            .map_err(meta_error)?;
        self.write(|transaction| {
            if !requests.is_empty() {
                let mut table = transaction.open_table(REQUESTS)?;
                let mut purge = transaction.open_table(REQUEST_PURGE)?;
                let mut appended = transaction.open_table(REQUEST_APPENDED)?;
                for (write, bytes) in requests.iter().zip(&encoded) {
                    match (write, bytes) {
                        (RequestWrite::Put(record), Some(bytes)) => {
                            table.insert(record.id.as_str(), bytes.as_slice())?;
                            purge.insert((record.keep_until_ms, record.id.as_str()), ())?;
                        }
                        (
                            RequestWrite::Appended {
                                id,
                                partition,
                                offset,
                            },
                            _,
                        ) => {
                            appended.insert(id.as_str(), (*partition, *offset))?;
                        }
                        (RequestWrite::Delete { id, keep_until_ms }, _) => {
                            table.remove(id.as_str())?;
                            purge.remove((*keep_until_ms, id.as_str()))?;
                            appended.remove(id.as_str())?;
                        }
                        (RequestWrite::Put(_), None) => unreachable!("encoded above"),
                    }
                }
            }
            let mut floors = transaction.open_table(POSITIONS)?;
            let mut done = transaction.open_table(QUEUE_DONE)?;
            let mut retry = transaction.open_table(QUEUE_RETRY)?;
            for (subscription, changes) in batches {
                let subscription = *subscription;
                for (topic, partition, floor) in &changes.resets {
                    floors.insert((subscription, *topic, *partition), *floor)?;
                    let all = (subscription, *topic, *partition, 0)
                        ..=(subscription, *topic, *partition, u64::MAX);
                    done.retain_in(all.clone(), |_, _| false)?;
                    retry.retain_in(all, |_, _| false)?;
                }
                // Floors only move forward here: concurrent acks may reach this transaction in
                // any order, and the highest floor is the true one.
                let mut effective: std::collections::HashMap<(u64, u32), u64> =
                    std::collections::HashMap::new();
                for (topic, partition, floor) in &changes.floors {
                    let stored = floors
                        .get((subscription, *topic, *partition))?
                        .map(|value| value.value())
                        .unwrap_or(0);
                    let floor = stored.max(*floor);
                    floors.insert((subscription, *topic, *partition), floor)?;
                    effective.insert((*topic, *partition), floor);
                    let below = (subscription, *topic, *partition, 0)
                        ..(subscription, *topic, *partition, floor);
                    done.retain_in(below.clone(), |_, _| false)?;
                    retry.retain_in(below, |_, _| false)?;
                }
                let below_floor = |topic: u64, partition: u32, offset: u64| {
                    effective
                        .get(&(topic, partition))
                        .is_some_and(|floor| offset < *floor)
                };
                for (topic, partition, offset) in &changes.done {
                    retry.remove((subscription, *topic, *partition, *offset))?;
                    if !below_floor(*topic, *partition, *offset) {
                        done.insert((subscription, *topic, *partition, *offset), ())?;
                    }
                }
                for (topic, partition, offset, attempts, not_before_ms) in &changes.retries {
                    if !below_floor(*topic, *partition, *offset) {
                        retry.insert(
                            (subscription, *topic, *partition, *offset),
                            (*attempts, *not_before_ms),
                        )?;
                    }
                }
            }
            Ok(())
        })
    }

    /// The stored state of a queue subscription: floors, done offsets and retries.
    pub fn queue_state(&self, subscription: u64) -> Result<QueueChanges, MetaError> {
        self.read(|transaction| {
            let mut state = QueueChanges::default();
            let floors = transaction.open_table(POSITIONS).map_err(MetaError::from)?;
            for entry in floors
                .range((subscription, 0, 0)..=(subscription, u64::MAX, u32::MAX))
                .map_err(MetaError::from)?
            {
                let (key, value) = entry.map_err(MetaError::from)?;
                let (_, topic, partition) = key.value();
                state.floors.push((topic, partition, value.value()));
            }
            let range = (subscription, 0, 0, 0)..=(subscription, u64::MAX, u32::MAX, u64::MAX);
            let done = transaction
                .open_table(QUEUE_DONE)
                .map_err(MetaError::from)?;
            for entry in done.range(range.clone()).map_err(MetaError::from)? {
                let (key, _) = entry.map_err(MetaError::from)?;
                let (_, topic, partition, offset) = key.value();
                state.done.push((topic, partition, offset));
            }
            let retry = transaction
                .open_table(QUEUE_RETRY)
                .map_err(MetaError::from)?;
            for entry in retry.range(range).map_err(MetaError::from)? {
                let (key, value) = entry.map_err(MetaError::from)?;
                let (_, topic, partition, offset) = key.value();
                let (attempts, not_before_ms) = value.value();
                state
                    .retries
                    .push((topic, partition, offset, attempts, not_before_ms));
            }
            Ok(state)
        })
    }

    /// Every stored request.
    pub fn requests(&self) -> Result<Vec<RequestRecord>, MetaError> {
        let mut records: Vec<RequestRecord> = self.read_all(REQUESTS)?;
        self.read(|transaction| {
            let appended = transaction
                .open_table(REQUEST_APPENDED)
                .map_err(MetaError::from)?;
            for record in &mut records {
                with_appended(&appended, record)?;
            }
            Ok(records)
        })
    }

    /// One stored request.
    pub fn request(&self, id: &str) -> Result<Option<RequestRecord>, MetaError> {
        self.read(|transaction| {
            let table = transaction.open_table(REQUESTS).map_err(MetaError::from)?;
            let Some(mut record) = table
                .get(id)
                .map_err(MetaError::from)?
                .map(|value| {
                    serde_json::from_slice::<RequestRecord>(value.value()).map_err(meta_error)
                })
                .transpose()?
            else {
                return Ok(None);
            };
            let appended = transaction
                .open_table(REQUEST_APPENDED)
                .map_err(MetaError::from)?;
            with_appended(&appended, &mut record)?;
            Ok(Some(record))
        })
    }

    /// Forgets the requests whose `keep_until_ms` is before `now_ms`; returns how many.
    pub fn purge_requests(&self, now_ms: u64) -> Result<u64, MetaError> {
        self.write(|transaction| {
            let mut purge = transaction.open_table(REQUEST_PURGE)?;
            let mut table = transaction.open_table(REQUESTS)?;
            let mut ids = Vec::new();
            for entry in purge.range((0, "")..(now_ms, ""))? {
                let (key, _) = entry?;
                let (_, id) = key.value();
                ids.push(id.to_owned());
            }
            let mut appended = transaction.open_table(REQUEST_APPENDED)?;
            for id in &ids {
                table.remove(id.as_str())?;
                appended.remove(id.as_str())?;
            }
            purge.retain_in((0, "")..(now_ms, ""), |_, _| false)?;
            Ok(ids.len() as u64)
        })
    }

    pub fn services(&self) -> Result<Vec<ServiceRecord>, MetaError> {
        self.read_all(SERVICES)
    }

    pub fn put_service(&self, service: &ServiceRecord) -> Result<(), MetaError> {
        self.put(SERVICES, &service.name, service)
    }

    /// A setting's value, if it was ever stored.
    pub fn setting(&self, key: &str) -> Result<Option<Vec<u8>>, MetaError> {
        self.read(|transaction| {
            let table = transaction.open_table(SETTINGS).map_err(MetaError::from)?;
            Ok(table
                .get(key)
                .map_err(MetaError::from)?
                .map(|value| value.value().to_vec()))
        })
    }

    pub fn put_setting(&self, key: &str, value: &[u8]) -> Result<(), MetaError> {
        self.write(|transaction| {
            transaction.open_table(SETTINGS)?.insert(key, value)?;
            Ok(())
        })
    }

    /// Stores (`Some`) and removes (`None`) settings in one transaction.
    pub fn put_settings(&self, settings: &[(String, Option<Vec<u8>>)]) -> Result<(), MetaError> {
        self.write(|transaction| {
            let mut table = transaction.open_table(SETTINGS)?;
            for (key, value) in settings {
                match value {
                    Some(value) => {
                        table.insert(key.as_str(), value.as_slice())?;
                    }
                    None => {
                        table.remove(key.as_str())?;
                    }
                }
            }
            Ok(())
        })
    }
}
