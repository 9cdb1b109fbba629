//! Herald's broker core: topics, publishing with deduplication, reading, live tail, stream
//! subscriptions (consumer groups), and the services registry. No sockets and no wire formats:
//! events arrive as bytes with their few routing attributes, and leave as stored bytes.
//!
//! The map:
//! - [`broker`]: [`Broker`], the one entry point the HTTP layer calls.
//! - [`queue`]: queue subscriptions: leases, acks, retries with backoff, dead letters, redrive,
//!   per-key ordering, filters ([`filter`]), all with bounded memory.
//! - [`stream`]: stream subscriptions: assignment of partitions to consumers, fetch and committed
//!   positions, acks as commits, seek, statistics.
//! - [`store`]: the storage boundary ([`Store`]) and Herald's own implementation on
//!   `herald-log` partitions plus an embedded metadata database ([`LocalStore`]).
//! - [`meta`]: that metadata database (topics, subscriptions, positions, services).
//! - [`dedup`]: the per-topic deduplication window by `source` + `id`.
//! - [`receipt`]: signed delivery receipts.
//! - [`requests`]: action/response: durable request/reply through `_replies.{group}`.
//! - [`subscription`]: subscription settings.
//! - [`names`], [`murmur2`], [`duration`], [`time`]: names and patterns, Kafka's key hash,
//!   duration strings, RFC 3339 times.

pub mod broker;
pub mod dedup;
pub mod duration;
pub mod filter;
pub mod meta;
pub mod murmur2;
pub mod names;
pub mod queue;
pub mod receipt;
pub mod requests;
pub mod store;
pub mod stream;
pub mod subscription;
pub mod time;

pub use broker::{
    ACK_TIMEOUT_MAX_MS, Broker, BrokerConfig, BrokerError, EventToPublish, PUSH_IN_FLIGHT_MAX,
    PUSH_URL_BYTES_MAX, Published, ReadFrom, ReadOutcome, StoredEvent, Subscription,
    SubscriptionStats, Tail, Topic, TopicInfo, TopicSettings, push_timeout_max_ms,
};
pub use store::{LocalStore, Store, StoreError};
