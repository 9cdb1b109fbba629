//! PostgreSQL in `herald-bench compare`, through `tokio-postgres`: the queue-in-a-table design
//! many teams run instead of a broker.
//!
//! With `fsync = on` and `synchronous_commit = on` (set on every connection of the bench, and the
//! server's own settings are reported), a commit returns after its WAL record is flushed to
//! disk: the "fsync before ack" class. The server's settings are read at the start; if `fsync`
//! is off, the rows say so.
//!
//! How each workload maps onto tables (`id bigserial primary key, payload bytea`):
//! - publish: each producer (own connection) inserts a batch in one statement
//!   (`INSERT … SELECT unnest($1::bytea[])`), one transaction per batch.
//! - queue: competing consumers (own connections), each in a transaction: `SELECT id, payload …
//!   ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED`, `DELETE … WHERE id = ANY($1)`, `COMMIT`.
//! - fan-out: a table of events and a table of positions, one row per subscriber: each
//!   subscriber reads `WHERE id > position ORDER BY id LIMIT 100` and stores its new position (a
//!   commit); a statement-level trigger sends `NOTIFY` on insert and idle subscribers `LISTEN`.
//!   (A queue table per subscriber would write every event ten times; this is the cheaper
//!   design.)
//! - latency: the queue table with the `NOTIFY` trigger; one consumer `LISTEN`s and takes what
//!   is there as in the queue workload.
//! - replay, request/reply: no counterpart (a queue table deletes what it delivers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, ensure};
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use super::load::{
    Budget, CpuProbe, Stop, TimedConsumer, TimedPublisher, Worker, run_latency, run_workers,
    sent_micros, timed_payload, unix_micros,
};
use super::{Durability, Outcome, Settings, Workload};

const BACKLOG_TABLE: &str = "herald_bench_backlog";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections of the latency workload's publisher.
const LATENCY_CONNECTIONS: usize = 16;
/// How long an idle subscriber waits for a `NOTIFY` before it looks again anyway.
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// A connection whose notifications wake `notified`.
struct Connection {
    client: Client,
    notified: Arc<Notify>,
}

async fn connect(config: &str) -> anyhow::Result<Connection> {
    let (client, mut connection) =
        tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(config, NoTls))
            .await
            .map_err(|_| anyhow!("no answer within {} s", CONNECT_TIMEOUT.as_secs()))?
            .with_context(|| format!("connecting to PostgreSQL ({config})"))?;
    let notified = Arc::new(Notify::new());
    let wake = notified.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    // Explicit, whatever the server's default: a commit waits for its WAL flush.
    client
        .batch_execute("SET synchronous_commit = on")
        .await
        .context("SET synchronous_commit = on")?;
    Ok(Connection { client, notified })
}

/// A connected PostgreSQL and what it said about its durability settings.
pub struct PostgresTarget {
    config: String,
    admin: Connection,
    version: String,
    fsync: String,
    synchronous_commit: String,
    wal_sync_method: String,
    payload: Arc<Vec<u8>>,
    backlog_filled: bool,
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PostgresTarget")
            .field("config", &self.config)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

async fn show(client: &Client, setting: &str) -> anyhow::Result<String> {
    let row = client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .with_context(|| format!("SHOW {setting}"))?;
    Ok(row.get(0))
}

impl PostgresTarget {
    /// Connects to `database`, or to `postgres` when that database does not exist.
    pub async fn connect(
        host_config: &str,
        database: &str,
        settings: &Settings,
    ) -> anyhow::Result<PostgresTarget> {
        let mut config = format!("{host_config} dbname={database}");
        let admin = match connect(&config).await {
            Ok(connection) => connection,
            Err(error)
                if database != "postgres" && format!("{error:#}").contains("does not exist") =>
            {
                config = format!("{host_config} dbname=postgres");
                connect(&config).await?
            }
            Err(error) => return Err(error),
        };
        let version = show(&admin.client, "server_version").await?;
        let fsync = show(&admin.client, "fsync").await?;
        let synchronous_commit = show(&admin.client, "synchronous_commit").await?;
        let wal_sync_method = show(&admin.client, "wal_sync_method").await?;
        admin
            .client
            .batch_execute(
                "CREATE OR REPLACE FUNCTION herald_bench_notify() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_notify(TG_TABLE_NAME, ''); \
                 RETURN NULL; END $$",
            )
            .await
            .context("creating the NOTIFY trigger function")?;
        Ok(PostgresTarget {
            config,
            admin,
            version,
            fsync,
            synchronous_commit,
            wal_sync_method,
            payload: Arc::new(super::load::payload(settings.event_bytes)),
            backlog_filled: false,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "PostgreSQL {} ({}); server settings: fsync = {}, synchronous_commit = {} (the bench \
             sets it on per connection), wal_sync_method = {}",
            self.version, self.config, self.fsync, self.synchronous_commit, self.wal_sync_method
        )
    }

    pub fn durability(&self, _workload: Workload) -> Durability {
        if self.fsync == "on" {
            Durability::FsyncBeforeAck
        } else {
            Durability::OsBuffered
        }
    }

    pub fn cpu_probe(&self) -> CpuProbe {
        CpuProbe::Command("postgres")
    }

    pub fn design(&self, workload: Workload) -> &'static str {
        match workload {
            Workload::Publish => "INSERT … SELECT unnest($1::bytea[]) per batch, autocommit",
            Workload::Queue => {
                "per batch: BEGIN; SELECT … FOR UPDATE SKIP LOCKED LIMIT n; DELETE … = ANY; COMMIT"
            }
            Workload::Fanout => {
                "events table + one position row per subscriber; NOTIFY trigger, LISTEN when idle"
            }
            Workload::Latency => {
                "queue table, NOTIFY trigger; one LISTENing consumer, SKIP LOCKED + DELETE"
            }
            Workload::Replay | Workload::RequestReply => "",
        }
    }

    async fn create_table(&self, table: &str, notify: bool) -> anyhow::Result<()> {
        let mut sql = format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (id bigserial PRIMARY KEY, payload bytea NOT NULL);"
        );
        if notify {
            sql.push_str(&format!(
                "CREATE TRIGGER {table}_notify AFTER INSERT ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION herald_bench_notify();"
            ));
        }
        self.admin
            .client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("creating table {table}"))
    }

    async fn drop_table(&self, table: &str) -> anyhow::Result<()> {
        self.admin
            .client
            .batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .await
            .with_context(|| format!("dropping table {table}"))
    }

    async fn producers(
        &self,
        table: &str,
        count: u32,
        batch: u32,
        budget: Option<Arc<Budget>>,
    ) -> anyhow::Result<Vec<Producer>> {
        let mut producers = Vec::new();
        for _ in 0..count {
            let connection = connect(&self.config).await?;
            let insert = connection
                .client
                .prepare(&format!(
                    "INSERT INTO {table} (payload) SELECT unnest($1::bytea[])"
                ))
                .await?;
            producers.push(Producer {
                connection,
                insert,
                rows: vec![self.payload.to_vec(); batch as usize],
                budget: budget.clone(),
            });
        }
        Ok(producers)
    }

    pub async fn publish(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let table = format!("herald_bench_publish_r{round}");
        self.create_table(&table, false).await?;
        let producers = self
            .producers(&table, settings.producers, settings.publish_batch, None)
            .await?;
        let run = run_workers(producers, settings.publish_stop(), &self.cpu_probe()).await;
        self.drop_table(&table).await?;
        Ok(Outcome::Measured(run?.into()))
    }

    pub async fn prefill(&mut self, settings: &Settings) -> anyhow::Result<Outcome> {
        self.create_table(BACKLOG_TABLE, false).await?;
        let budget = Budget::new(settings.backlog_events);
        let producers = self
            .producers(
                BACKLOG_TABLE,
                settings.producers,
                settings.prefill_batch,
                Some(budget),
            )
            .await?;
        let run = run_workers(
            producers,
            Stop::Count {
                target: settings.backlog_events,
            },
            &self.cpu_probe(),
        )
        .await?;
        self.admin
            .client
            .batch_execute(&format!("VACUUM ANALYZE {BACKLOG_TABLE}"))
            .await?;
        self.backlog_filled = true;
        Ok(Outcome::Measured(run.into()))
    }

    async fn queue_consumer(&self, table: &str, limit: u64) -> anyhow::Result<QueueConsumer> {
        let connection = connect(&self.config).await?;
        let select = connection
            .client
            .prepare(&format!(
                "SELECT id, payload FROM {table} ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
            ))
            .await?;
        let delete = connection
            .client
            .prepare(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
            .await?;
        connection
            .client
            .batch_execute(&format!("LISTEN {table}"))
            .await?;
        Ok(QueueConsumer {
            connection,
            select,
            delete,
            limit,
            budget: None,
        })
    }

    pub async fn drain(
        &mut self,
        settings: &Settings,
        events: u64,
        _round: u32,
    ) -> anyhow::Result<Outcome> {
        ensure!(self.backlog_filled, "the backlog was not filled");
        let budget = Budget::new(events);
        let mut consumers = Vec::new();
        for _ in 0..settings.consumers {
            let mut consumer = self
                .queue_consumer(BACKLOG_TABLE, u64::from(settings.pull_max))
                .await?;
            consumer.budget = Some(budget.clone());
            consumers.push(consumer);
        }
        let run = run_workers(consumers, Stop::Count { target: events }, &self.cpu_probe()).await?;
        Ok(Outcome::Measured(run.into()))
    }

    pub async fn fanout(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let table = format!("herald_bench_fanout_r{round}");
        let positions = format!("{table}_positions");
        self.create_table(&table, true).await?;
        self.admin
            .client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {positions}; \
                 CREATE TABLE {positions} (subscription int PRIMARY KEY, position bigint NOT NULL); \
                 INSERT INTO {positions} SELECT s, 0 FROM generate_series(0, {}) AS s;",
                settings.fanout_subscriptions.saturating_sub(1)
            ))
            .await?;
        let mut subscribers = Vec::new();
        for number in 0..settings.fanout_subscriptions {
            let connection = connect(&self.config).await?;
            let select = connection
                .client
                .prepare(&format!(
                    "SELECT id, payload FROM {table} WHERE id > $1 ORDER BY id LIMIT 100"
                ))
                .await?;
            let store = connection
                .client
                .prepare(&format!(
                    "UPDATE {positions} SET position = $1 WHERE subscription = $2"
                ))
                .await?;
            connection
                .client
                .batch_execute(&format!("LISTEN {table}"))
                .await?;
            subscribers.push(LogSubscriber {
                connection,
                select,
                store,
                subscription: i32::try_from(number)?,
                position: 0,
            });
        }
        let mut producers = self
            .producers(
                &table,
                1,
                settings.fanout_batch,
                Some(Budget::new(settings.fanout_events)),
            )
            .await?;
        let result = super::run_fanout(
            producers.remove(0),
            subscribers,
            settings.fanout_events,
            &self.cpu_probe(),
        )
        .await;
        self.drop_table(&positions).await?;
        self.drop_table(&table).await?;
        Ok(Outcome::Measured(result?))
    }

    pub async fn latency(&mut self, settings: &Settings, round: u32) -> anyhow::Result<Outcome> {
        let table = format!("herald_bench_latency_r{round}");
        self.create_table(&table, true).await?;
        let consumer = self.queue_consumer(&table, 100).await?;
        // A pool of connections, so that a publish never waits for another's commit on the
        // same connection (an HTTP client opens another connection in that case).
        let mut pool = Vec::new();
        for _ in 0..LATENCY_CONNECTIONS {
            let connection = connect(&self.config).await?;
            let insert = connection
                .client
                .prepare(&format!(
                    "INSERT INTO {table} (payload) SELECT unnest($1::bytea[])"
                ))
                .await?;
            pool.push((connection.client, insert));
        }
        let publisher = LatencyPublisher {
            free: Arc::new(Semaphore::new(pool.len())),
            pool: Arc::new(Mutex::new(pool)),
            template: self.payload.clone(),
        };
        let result = run_latency(
            publisher,
            consumer,
            settings.latency_rate,
            settings.latency_batch,
            settings.latency_duration(),
            &self.cpu_probe(),
        )
        .await;
        self.drop_table(&table).await?;
        Ok(Outcome::Measured(result?.into()))
    }

    pub async fn cleanup(&mut self) -> anyhow::Result<()> {
        if self.backlog_filled {
            self.drop_table(BACKLOG_TABLE).await?;
            self.backlog_filled = false;
        }
        Ok(())
    }
}

/// Inserts a batch in one statement (one transaction).
struct Producer {
    connection: Connection,
    insert: Statement,
    rows: Vec<Vec<u8>>,
    budget: Option<Arc<Budget>>,
}

impl Worker for Producer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let batch = self.rows.len() as u64;
        if let Some(budget) = &self.budget {
            let taken = budget.take(batch);
            if taken == 0 {
                return Ok(None);
            }
            ensure!(taken == batch, "the budget is not a multiple of the batch");
        }
        let inserted = self
            .connection
            .client
            .execute(&self.insert, &[&self.rows])
            .await?;
        ensure!(inserted == batch, "inserted {inserted} of {batch} rows");
        Ok(Some(batch))
    }
}

/// A competing consumer of a queue table.
struct QueueConsumer {
    connection: Connection,
    select: Statement,
    delete: Statement,
    limit: u64,
    /// Set for the queue workload; the latency consumer takes what is there.
    budget: Option<Arc<Budget>>,
}

impl QueueConsumer {
    /// One transaction: lock up to `limit` rows, delete them, commit. Returns each row's
    /// payload and the time the rows arrived.
    async fn take(&mut self, limit: u64) -> anyhow::Result<(u64, Vec<Vec<u8>>)> {
        let transaction = self.connection.client.transaction().await?;
        let rows = transaction
            .query(&self.select, &[&i64::try_from(limit)?])
            .await?;
        let arrived = unix_micros();
        let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
        let payloads: Vec<Vec<u8>> = rows.iter().map(|row| row.get(1)).collect();
        if !ids.is_empty() {
            let deleted = transaction.execute(&self.delete, &[&ids]).await?;
            ensure!(
                deleted == ids.len() as u64,
                "deleted {deleted} of {} locked rows",
                ids.len()
            );
        }
        transaction.commit().await?;
        Ok((arrived, payloads))
    }
}

impl Worker for QueueConsumer {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let budget = self
            .budget
            .clone()
            .context("a queue consumer without budget")?;
        let wanted = budget.take(self.limit);
        if wanted == 0 {
            return Ok(None);
        }
        let taken = match self.take(wanted).await {
            Ok((_, payloads)) => payloads.len() as u64,
            Err(error) => {
                budget.give_back(wanted);
                return Err(error);
            }
        };
        budget.give_back(wanted - taken);
        Ok(Some(taken))
    }
}

impl TimedConsumer for QueueConsumer {
    async fn receive(&mut self) -> anyhow::Result<(u64, Vec<u64>)> {
        loop {
            // A notification that arrives while we look is kept (one permit) for the wait.
            let (arrived, payloads) = self.take(self.limit).await?;
            if !payloads.is_empty() {
                let sent = payloads
                    .iter()
                    .map(|payload| sent_micros(payload))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                return Ok((arrived, sent));
            }
            let _ = tokio::time::timeout(IDLE_WAIT, self.connection.notified.notified()).await;
        }
    }
}

/// A subscriber of the fan-out workload: reads after its position, stores the new one.
struct LogSubscriber {
    connection: Connection,
    select: Statement,
    store: Statement,
    subscription: i32,
    position: i64,
}

impl Worker for LogSubscriber {
    async fn step(&mut self) -> anyhow::Result<Option<u64>> {
        let rows = self
            .connection
            .client
            .query(&self.select, &[&self.position])
            .await?;
        let Some(last) = rows.last() else {
            let _ = tokio::time::timeout(IDLE_WAIT, self.connection.notified.notified()).await;
            return Ok(Some(0));
        };
        self.position = last.get(0);
        self.connection
            .client
            .execute(&self.store, &[&self.position, &self.subscription])
            .await?;
        Ok(Some(rows.len() as u64))
    }
}

/// The latency workload's publisher: each batch on a free connection of a pool.
#[derive(Clone)]
struct LatencyPublisher {
    /// One permit per connection in `pool`.
    free: Arc<Semaphore>,
    /// Never locked across an `.await`: a connection is taken out, used, and put back.
    pool: Arc<Mutex<Vec<(Client, Statement)>>>,
    template: Arc<Vec<u8>>,
}

impl TimedPublisher for LatencyPublisher {
    async fn publish(&self, _number: u64, sent: u64, events: u32) -> anyhow::Result<()> {
        let _permit = self.free.acquire().await?;
        let (client, insert) = self
            .pool
            .lock()
            .expect("the pool's lock is never poisoned: nothing panics while holding it")
            .pop()
            .context("a permit without a free connection")?;
        let rows = vec![timed_payload(&self.template, sent); events as usize];
        let result = client.execute(&insert, &[&rows]).await;
        self.pool
            .lock()
            .expect("the pool's lock is never poisoned: nothing panics while holding it")
            .push((client, insert));
        result?;
        Ok(())
    }
}
