//! Herald's HTTP API: the routes of the contract (`../shared/design/HTTP-API.md`), their DTOs,
//! problem+json errors, SSE, Prometheus metrics and the OpenAPI document. The binary calls
//! [`serve`] with a [`ServerConfig`].
//!
//! The map:
//! - [`api`]: the handlers and the shared [`api::App`] state.
//! - [`requests`]: the handlers of action/response (request, reply, status).
//! - [`push`]: webhook subscriptions' settings, `PATCH`, stats and attempts (the delivering is
//!   `herald-push`'s).
//! - [`cloudevents`]: the four publish content modes, parsed into the core's events.
//! - [`dto`]: request and response shapes (the core's types never go on the wire).
//! - [`problem`]: RFC 9457 errors, and how each core error maps to a status.
//! - [`metrics`], [`openapi`], [`time`]: `/metrics`, `/openapi.json`, RFC 3339 times.

pub mod api;
pub mod cloudevents;
pub mod dto;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod push;
pub mod requests;
pub use herald_core::time;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use herald_core::{Broker, BrokerConfig, LocalStore};
use herald_log::{LogConfig, OsStorage};
use tokio::sync::watch;

use crate::api::App;
use crate::cloudevents::EventLimits;
pub use herald_log::FsyncPolicy;

/// Everything `herald serve` needs to run. The binary fills it from `herald.toml`, `HERALD_*`
/// environment variables and flags (in rising precedence); [`ServerConfig::default`] holds the
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Where topics, subscriptions and positions are stored. Default `./herald-data`.
    pub data_dir: PathBuf,
    /// The HTTP listen address. Default `127.0.0.1:7070`.
    pub http: SocketAddr,
    /// When appends are durable. Default `always`.
    pub fsync: FsyncPolicy,
    /// Publishing to an unknown topic creates it with defaults. Default `true`; switch it off in
    /// production.
    pub auto_create_topics: bool,
    /// Largest event (its JSON in structured mode, or its body in binary mode). Default 1 MiB.
    pub event_bytes_max: u32,
    /// Most events in one batch. Default 10,000.
    pub batch_events_max: u32,
    /// Largest request body. Default 16 MiB.
    pub body_bytes_max: u32,
    /// Size at which a partition's segment file rolls. Default 128 MiB.
    pub segment_bytes_max: u64,
    /// Webhooks may go to private, loopback, link-local and multicast addresses. Default
    /// (`None`): only when `http` is a loopback address.
    pub push_allow_private_networks: Option<bool>,
    /// Webhook attempts kept per subscription for `GET .../attempts`. Default 100.
    pub push_attempts_kept: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./herald-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 7070)),
            fsync: FsyncPolicy::Always,
            auto_create_topics: true,
            event_bytes_max: 1024 * 1024,
            batch_events_max: 10_000,
            body_bytes_max: 16 * 1024 * 1024,
            segment_bytes_max: 128 * 1024 * 1024,
            push_allow_private_networks: None,
            push_attempts_kept: herald_push::dispatcher::ATTEMPTS_KEPT_DEFAULT,
        }
    }
}

/// How long a shutdown waits for webhook requests under way (and their acks).
const PUSH_DRAIN_MAX: Duration = Duration::from_secs(30);

/// How often retention runs.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// The router of the whole API over `app`.
pub fn router(app: Arc<App>, body_bytes_max: usize) -> Router {
    let document = openapi::document();
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(metrics::metrics))
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            HeaderValue::from_static("application/json"),
                        )],
                        document,
                    )
                        .into_response()
                }
            }),
        )
        .route("/v1/services", get(api::services))
        .route("/v1/topics/{topic}/requests", post(requests::post_request))
        .route("/v1/requests/{id}", get(requests::get_request))
        .route("/v1/requests/{id}/reply", post(requests::post_reply))
        .route("/v1/topics", get(api::list_topics))
        .route(
            "/v1/topics/{topic}",
            put(api::put_topic)
                .get(api::get_topic)
                .delete(api::delete_topic),
        )
        .route(
            "/v1/topics/{topic}/events",
            post(api::publish).get(api::read_events),
        )
        .route("/v1/tail", get(api::tail))
        .route("/v1/subscriptions", get(api::list_subscriptions))
        .route(
            "/v1/subscriptions/{name}",
            put(api::put_subscription)
                .get(api::get_subscription)
                .patch(push::patch_subscription)
                .delete(api::delete_subscription),
        )
        .route("/v1/subscriptions/{name}/attempts", get(push::attempts))
        .route("/v1/subscriptions/{name}/pull", post(api::pull))
        .route(
            "/v1/subscriptions/{name}/events",
            get(api::subscription_events),
        )
        .route("/v1/subscriptions/{name}/ack", post(api::ack))
        .route("/v1/subscriptions/{name}/nack", post(api::nack))
        .route("/v1/subscriptions/{name}/extend", post(api::extend))
        .route("/v1/subscriptions/{name}/reject", post(api::reject))
        .route("/v1/subscriptions/{name}/seek", post(api::seek))
        .route("/v1/subscriptions/{name}/redrive", post(api::redrive))
        .fallback(api::not_found)
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(axum::middleware::map_response(
            problem::plain_errors_as_problems,
        ))
        .with_state(app)
}

/// The partition logs' settings for a server configuration: its record and batch limits leave
/// room for the largest event the API accepts (base64 in binary mode grows it by a third, and
/// each record carries its id, source and type), so a size problem is always the API's 413.
pub fn log_config(config: &ServerConfig) -> anyhow::Result<LogConfig> {
    let defaults = LogConfig::default();
    let record_bytes_max = config
        .event_bytes_max
        .saturating_mul(2)
        .saturating_add(64 * 1024)
        .max(defaults.record_bytes_max);
    let batch_bytes_max = config
        .body_bytes_max
        .saturating_mul(2)
        .saturating_add(1024 * 1024)
        .max(record_bytes_max)
        .min(u32::try_from(config.segment_bytes_max).unwrap_or(u32::MAX));
    let log_config = LogConfig {
        fsync: config.fsync,
        segment_bytes_max: config.segment_bytes_max,
        record_bytes_max: record_bytes_max.min(batch_bytes_max),
        batch_bytes_max,
        in_flight_bytes_max: defaults.in_flight_bytes_max.max(u64::from(batch_bytes_max)),
        read_bytes_max: defaults.read_bytes_max.max(batch_bytes_max),
        ..defaults
    };
    log_config.validate().map_err(|error| {
        anyhow::anyhow!(
            "{error} (from segment_bytes_max {}, event_bytes_max {}, body_bytes_max {})",
            config.segment_bytes_max,
            config.event_bytes_max,
            config.body_bytes_max
        )
    })?;
    Ok(log_config)
}

/// Opens the broker on `config.data_dir` (recovering every partition).
pub async fn open_broker(config: &ServerConfig) -> anyhow::Result<Arc<Broker>> {
    let log_config = log_config(config)?;
    let data_dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || {
        LocalStore::open(&data_dir, log_config, OsStorage::shared())
    })
    .await??;
    let broker_config = BrokerConfig {
        auto_create_topics: config.auto_create_topics,
        ..BrokerConfig::default()
    };
    Ok(Broker::open(Arc::new(store), broker_config).await?)
}

/// Runs the broker on `listener` until `shutdown` resolves, then stops accepting, finishes the
/// requests in flight (long polls and live tails end early), syncs and returns.
///
/// The listener answers at once: `/healthz` is 200 and the API 503 (`/readyz` too) until
/// recovery has finished.
pub async fn serve(
    config: ServerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stopping, stopping_receiver) = watch::channel(false);
    let app = Arc::new(App {
        broker: OnceLock::new(),
        limits: EventLimits {
            event_bytes_max: config.event_bytes_max,
            batch_events_max: config.batch_events_max,
        },
        shutdown: stopping_receiver,
        push: OnceLock::new(),
    });
    let router = router(app.clone(), config.body_bytes_max as usize);
    let local_address = listener.local_addr()?;
    tracing::info!(address = %local_address, data_dir = %config.data_dir.display(), fsync = ?config.fsync, "Herald is listening");
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing the requests in flight");
        let _ = stopping.send(true);
    });
    let server = tokio::spawn(async move { server.await });

    let started = std::time::Instant::now();
    let broker = open_broker(&config).await?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovery finished; ready"
    );
    let mut push_config = herald_push::PushConfig::for_listener(local_address);
    if let Some(allow) = config.push_allow_private_networks {
        push_config.allow_private_networks = allow;
    }
    push_config.attempts_kept = config.push_attempts_kept;
    if push_config.allow_private_networks {
        tracing::info!(
            "webhooks may go to private, loopback and link-local addresses (push.allow_private_networks; the default for a server on loopback: behind a proxy, set it to false)"
        );
    }
    let dispatcher = herald_push::Dispatcher::start(broker.clone(), push_config)?;
    let _ = app.push.set(dispatcher.clone());
    {
        // No new webhook requests once shutdown begins.
        let (app, dispatcher) = (app.clone(), dispatcher.clone());
        tokio::spawn(async move {
            app.shutting_down().await;
            dispatcher.shutdown();
        });
    }
    let _ = app.broker.set(broker.clone());
    let retention = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(RETENTION_INTERVAL);
            loop {
                interval.tick().await;
                if let Err(error) = broker.apply_retention().await {
                    tracing::warn!(%error, "retention failed");
                }
            }
        })
    };
    let served = server.await;
    dispatcher.stopped(PUSH_DRAIN_MAX).await;
    retention.abort();
    let _ = retention.await;
    broker.shutdown().await?;
    tracing::info!("stopped");
    served??;
    Ok(())
}
