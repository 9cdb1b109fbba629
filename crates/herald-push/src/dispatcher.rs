//! The dispatcher: one task per push subscription pulls leased deliveries from the broker (as
//! the consumer `herald-push`), POSTs each to the endpoint, and acks or nacks it. Retries, dead
//! letters and key ordering are the queue's own; the dispatcher adds the in-flight limit, the
//! circuit breaker, the 410 switch-off and the record of attempts.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herald_core::queue::{LEASE_MAX, Settle};
use herald_core::stream::Delivery;
use herald_core::subscription::PushSpec;
use herald_core::{Broker, BrokerError, Subscription};
use tokio::sync::{mpsc, watch};

use crate::breaker::{Breaker, Gate, PushState};
use crate::destination;
use crate::message;
use crate::signature;

/// Attempts kept per subscription by default (`push.attempts_kept`).
pub const ATTEMPTS_KEPT_DEFAULT: usize = 100;
/// Most attempts kept per subscription.
pub const ATTEMPTS_KEPT_MAX: usize = 10_000;
/// Default time allowed to open a connection (`push.connect_timeout`).
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The consumer name the dispatcher pulls as (visible in the subscription's stats).
pub const CONSUMER: &str = "herald-push";
/// How long one pull waits for events; settings changes are seen at least this often.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// Most receipts in one ack.
const ACK_BATCH_MAX: usize = 1024;
/// Most successful deliveries waiting for their ack (beyond it, deliveries wait).
const ACK_QUEUE_MAX: usize = 4096;
/// Bytes of a response body read so the connection can be reused; a longer body is dropped.
const RESPONSE_BYTES_READ_MAX: usize = 64 * 1024;
/// Bytes of a failed response's body kept in its attempt's error.
const RESPONSE_EXCERPT_BYTES_MAX: usize = 256;
/// Room a lease must leave beyond an attempt and its ack margin for deliveries to be leased
/// ahead (with the defaults, a 30 s lease and a 10 s timeout, it is 17 s).
const LEASE_AHEAD_ROOM_MIN_MS: u64 = 1000;

/// How often the recent attempts of subscriptions that made new ones are written to the
/// metadata store (so they survive a restart; a crash loses at most this much of them).
const ATTEMPTS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Idle connections kept per endpoint host: room for every request that may be under way to
/// one host (many subscriptions often share a receiver), so connections are reused instead of
/// opened and closed (a closed one lingers in TIME_WAIT and uses up local ports).
const IDLE_CONNECTIONS_PER_HOST_MAX: usize = 1024;

/// The dispatcher's settings (`[push]` in the server's configuration).
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Send to private, loopback, link-local and multicast addresses.
    pub allow_private_networks: bool,
    /// Attempts kept per subscription for `GET /v1/subscriptions/{name}/attempts`.
    pub attempts_kept: usize,
    pub connect_timeout: Duration,
}

impl PushConfig {
    /// The defaults for a server listening on `listen`: private networks are allowed only
    /// when it listens on loopback (a developer's machine).
    pub fn for_listener(listen: SocketAddr) -> Self {
        Self {
            allow_private_networks: listen.ip().is_loopback(),
            attempts_kept: ATTEMPTS_KEPT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx within the timeout: acknowledged.
    Delivered,
    /// Failed; the event is retried with backoff.
    Failed,
    /// Failed for the `max_deliveries`-th time: the event went to the dead-letter topic.
    DeadLettered,
    /// 410 Gone: the subscription is disabled.
    Disabled,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::DeadLettered => "dead_lettered",
            AttemptOutcome::Disabled => "disabled",
        }
    }
}

/// One HTTP attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When it started (ms since the Unix epoch).
    pub time_ms: u64,
    pub webhook_id: String,
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    /// 1 for the first attempt of this event.
    pub attempt: u32,
    /// The response's status, if one came.
    pub status: Option<u16>,
    pub latency_us: u64,
    pub error: Option<String>,
    pub outcome: AttemptOutcome,
}

/// A push subscription's delivery state, for `stats.push`.
#[derive(Debug, Clone)]
pub struct PushStatus {
    pub state: PushState,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub in_flight: u32,
    /// Attempts since the server started, by result.
    pub delivered: u64,
    pub failed: u64,
    /// While the circuit is open: when the next probe is sent (ms since the Unix epoch).
    pub next_probe_ms: Option<u64>,
}

/// The webhook dispatcher; cloning shares it.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    broker: Arc<Broker>,
    client: reqwest::Client,
    config: PushConfig,
    /// By subscription name. A std mutex: never held across an `.await`.
    endpoints: Mutex<BTreeMap<String, Arc<Endpoint>>>,
    stop: watch::Sender<bool>,
}

/// The run-time state of one push subscription.
#[derive(Debug)]
struct Endpoint {
    subscription: watch::Sender<Arc<Subscription>>,
    /// A std mutex: never held across an `.await`.
    status: Mutex<EndpointStatus>,
    /// Requests under way; the endpoint's task waits on it for room.
    in_flight: watch::Sender<u32>,
    stop: watch::Sender<bool>,
    /// The task that acks successful deliveries; it ends once the last attempt has handed in
    /// its receipt, which is what a graceful stop waits for.
    acker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug, Default)]
struct EndpointStatus {
    breaker: Breaker,
    last_error: Option<String>,
    delivered: u64,
    failed: u64,
    attempts: VecDeque<Attempt>,
    /// Attempts were recorded since they were last saved.
    attempts_unsaved: bool,
}

/// The metadata store's key for a subscription's recent attempts.
fn attempts_key(subscription_id: u64) -> String {
    format!("push_attempts.{subscription_id}")
}

impl Attempt {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "time_ms": self.time_ms,
            "webhook_id": self.webhook_id,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "attempt": self.attempt,
            "status": self.status,
            "latency_us": self.latency_us,
            "error": self.error,
            "outcome": self.outcome.as_str(),
        })
    }

    fn from_json(value: &serde_json::Value) -> Option<Attempt> {
        let text = |name: &str| value[name].as_str().map(str::to_owned);
        let number = |name: &str| value[name].as_u64();
        Some(Attempt {
            time_ms: number("time_ms")?,
            webhook_id: text("webhook_id")?,
            topic: text("topic")?,
            partition: u32::try_from(number("partition")?).ok()?,
            offset: number("offset")?,
            attempt: u32::try_from(number("attempt")?).ok()?,
            status: number("status").and_then(|status| u16::try_from(status).ok()),
            latency_us: number("latency_us")?,
            error: text("error"),
            outcome: match value["outcome"].as_str()? {
                "delivered" => AttemptOutcome::Delivered,
                "failed" => AttemptOutcome::Failed,
                "dead_lettered" => AttemptOutcome::DeadLettered,
                "disabled" => AttemptOutcome::Disabled,
                _ => return None,
            },
        })
    }
}

/// What was saved of a subscription's attempts: the recent ones and the counters.
#[derive(Debug, Default)]
struct SavedAttempts {
    attempts: VecDeque<Attempt>,
    delivered: u64,
    failed: u64,
}

/// The attempts and counters saved for a subscription (none if nothing was saved or it cannot
/// be read: they are a record for people, not state the delivery depends on). The saved form
/// is `{"attempts": [...], "delivered": n, "failed": n}`; an older form, the bare array, is
/// read too.
async fn load_attempts(broker: &Broker, subscription_id: u64, kept: usize) -> SavedAttempts {
    let saved = broker
        .store()
        .setting(&attempts_key(subscription_id))
        .await
        .ok()
        .flatten()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .unwrap_or_default();
    let (list, delivered, failed) = match &saved {
        serde_json::Value::Array(list) => (list.as_slice(), 0, 0),
        serde_json::Value::Object(object) => (
            object
                .get("attempts")
                .and_then(serde_json::Value::as_array)
                .map_or(&[][..], Vec::as_slice),
            object
                .get("delivered")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
            object
                .get("failed")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0),
        ),
        _ => (&[][..], 0, 0),
    };
    let mut attempts: VecDeque<Attempt> = list.iter().filter_map(Attempt::from_json).collect();
    while attempts.len() > kept {
        attempts.pop_front();
    }
    SavedAttempts {
        attempts,
        delivered,
        failed,
    }
}

/// Writes the recent attempts (and the counters) of every subscription that made new ones.
async fn save_attempts(inner: &Inner) {
    let endpoints: Vec<Arc<Endpoint>> = lock(&inner.endpoints).values().cloned().collect();
    for endpoint in endpoints {
        let id = endpoint.subscription.borrow().id;
        let bytes = {
            let mut state = lock(&endpoint.status);
            if !state.attempts_unsaved {
                continue;
            }
            state.attempts_unsaved = false;
            let attempts: Vec<serde_json::Value> =
                state.attempts.iter().map(Attempt::to_json).collect();
            serde_json::to_vec(&serde_json::json!({
                "attempts": attempts,
                "delivered": state.delivered,
                "failed": state.failed,
            }))
            .unwrap_or_default()
        };
        if let Err(error) = inner
            .broker
            .store()
            .put_setting(&attempts_key(id), bytes)
            .await
        {
            tracing::warn!(%error, "push: could not save the recent attempts; trying again");
            lock(&endpoint.status).attempts_unsaved = true;
        }
    }
}

/// Saves attempts every `ATTEMPTS_SAVE_INTERVAL` until the dispatcher stops.
async fn run_attempts_saver(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ATTEMPTS_SAVE_INTERVAL) => {}
            _ = stop.changed() => {}
        }
        // (A graceful stop saves them once more when the last attempt has ended.)
        if *stop.borrow_and_update() {
            break;
        }
        save_attempts(&inner).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves counters and a ring of records: still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Dispatcher {
    /// Starts delivering every push subscription of `broker`, and follows subscriptions as they
    /// are created, changed and deleted. Must be called within a Tokio runtime.
    pub fn start(broker: Arc<Broker>, config: PushConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy from the environment would make the address check meaningless.
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST_MAX)
            .tcp_nodelay(true)
            .user_agent(concat!("Herald-Webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(destination::resolver(config.allow_private_networks))
            .build()?;
        let inner = Arc::new(Inner {
            broker,
            client,
            config: PushConfig {
                attempts_kept: config.attempts_kept.clamp(1, ATTEMPTS_KEPT_MAX),
                ..config
            },
            endpoints: Mutex::new(BTreeMap::new()),
            stop: watch::Sender::new(false),
        });
        tokio::spawn(follow_subscriptions(inner.clone()));
        tokio::spawn(run_attempts_saver(inner.clone()));
        Ok(Self { inner })
    }

    pub fn config(&self) -> &PushConfig {
        &self.inner.config
    }

    /// Checks a webhook URL against this dispatcher's settings (form, and a literal address).
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        destination::check_url(url, self.inner.config.allow_private_networks).map(|_| ())
    }

    /// The delivery state of push subscription `subscription`.
    pub fn status(&self, subscription: &Subscription) -> Option<PushStatus> {
        let push = subscription.spec.push.as_ref()?;
        let endpoint = lock(&self.inner.endpoints).get(&subscription.name).cloned();
        let mut status = match endpoint {
            Some(endpoint) => {
                let state = lock(&endpoint.status);
                PushStatus {
                    state: state.breaker.state(),
                    last_error: state.last_error.clone(),
                    consecutive_failures: state.breaker.consecutive_failures(),
                    in_flight: *endpoint.in_flight.borrow(),
                    delivered: state.delivered,
                    failed: state.failed,
                    next_probe_ms: state.breaker.next_probe_ms(),
                }
            }
            // Created a moment ago: its task has not started yet.
            None => PushStatus {
                state: PushState::Healthy,
                last_error: None,
                consecutive_failures: 0,
                in_flight: 0,
                delivered: 0,
                failed: 0,
                next_probe_ms: None,
            },
        };
        if let Some(reason) = &push.disabled {
            status.state = PushState::Disabled;
            status.last_error = Some(reason.clone());
            status.next_probe_ms = None;
        }
        Some(status)
    }

    /// The latest attempts of a push subscription, newest first.
    pub fn attempts(&self, name: &str, limit: usize) -> Vec<Attempt> {
        let endpoint = lock(&self.inner.endpoints).get(name).cloned();
        endpoint.map_or_else(Vec::new, |endpoint| {
            lock(&endpoint.status)
                .attempts
                .iter()
                .rev()
                .take(limit)
                .cloned()
                .collect()
        })
    }

    /// Stops pulling new deliveries; attempts under way go on (see [`Dispatcher::stopped`]).
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        for endpoint in lock(&self.inner.endpoints).values() {
            endpoint.stop.send_replace(true);
        }
    }

    /// Stops, and waits up to `within` for the attempts under way to end and their acks to be
    /// committed. What is still unacknowledged after that is delivered again after the restart
    /// (at least once).
    pub async fn stopped(&self, within: Duration) {
        self.shutdown();
        let ackers: Vec<_> = lock(&self.inner.endpoints)
            .values()
            .filter_map(|endpoint| lock(&endpoint.acker).take())
            .collect();
        let all = futures_util::future::join_all(ackers);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(
                "push: attempts still under way at shutdown; their events will be delivered again"
            );
        }
        save_attempts(&self.inner).await;
    }
}

/// Keeps one endpoint task per push subscription.
async fn follow_subscriptions(inner: Arc<Inner>) {
    let mut changed = inner.broker.subscriptions_changed();
    let mut stop = inner.stop.subscribe();
    loop {
        changed.borrow_and_update();
        reconcile(&inner);
        tokio::select! {
            result = changed.changed() => if result.is_err() { break },
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    // The endpoints stay in the map: a graceful stop waits for their attempts.
    for endpoint in lock(&inner.endpoints).values() {
        endpoint.stop.send_replace(true);
    }
}

fn reconcile(inner: &Arc<Inner>) {
    let subscriptions: BTreeMap<String, Arc<Subscription>> = inner
        .broker
        .list_subscriptions()
        .into_iter()
        .filter(|subscription| subscription.spec.push.is_some())
        .map(|subscription| (subscription.name.clone(), subscription))
        .collect();
    let mut endpoints = lock(&inner.endpoints);
    endpoints.retain(|name, endpoint| {
        let current = endpoint.subscription.borrow().id;
        let keep = subscriptions
            .get(name)
            .is_some_and(|subscription| subscription.id == current);
        if !keep {
            endpoint.stop.send_replace(true);
            // The subscription is gone: so is its record of attempts.
            let broker = inner.broker.clone();
            tokio::spawn(async move {
                let _ = broker
                    .store()
                    .put_settings(vec![(attempts_key(current), None)])
                    .await;
            });
        }
        keep
    });
    for (name, subscription) in subscriptions {
        match endpoints.get(&name) {
            Some(endpoint) => {
                endpoint.subscription.send_if_modified(|current| {
                    if Arc::ptr_eq(current, &subscription) {
                        return false;
                    }
                    // Changed settings (a PATCH: re-enabled, another URL, a new secret)
                    // start with a closed circuit: the old failures may not apply.
                    lock(&endpoint.status).breaker = Breaker::default();
                    *current = subscription.clone();
                    true
                });
            }
            None => {
                // Its saved attempts are loaded by its task (no store read under this lock).
                let endpoint = Arc::new(Endpoint {
                    subscription: watch::Sender::new(subscription),
                    status: Mutex::new(EndpointStatus::default()),
                    in_flight: watch::Sender::new(0),
                    acker: Mutex::new(None),
                    stop: watch::Sender::new(false),
                });
                endpoints.insert(name, endpoint.clone());
                tokio::spawn(run_endpoint(inner.clone(), endpoint));
            }
        }
    }
}

/// Delivers one push subscription until it is deleted or the dispatcher stops.
///
/// Deliveries are leased ahead into a small buffer (at most `max_in_flight` of them), so a
/// request that ends is followed by the next one at once instead of after a pull; the buffer is
/// refilled when half empty. A buffered delivery whose lease has become too short for a whole
/// attempt is given back untried.
async fn run_endpoint(inner: Arc<Inner>, endpoint: Arc<Endpoint>) {
    let (acks, ack_queue) = mpsc::channel(ACK_QUEUE_MAX);
    let (name, id) = {
        let subscription = endpoint.subscription.borrow();
        (subscription.name.clone(), subscription.id)
    };
    let saved = load_attempts(&inner.broker, id, inner.config.attempts_kept).await;
    {
        // Before anything is sent, so the saved attempts come first.
        let mut status = lock(&endpoint.status);
        let recorded = std::mem::take(&mut status.attempts);
        status.attempts = saved.attempts;
        status.attempts.extend(recorded);
        while status.attempts.len() > inner.config.attempts_kept {
            status.attempts.pop_front();
        }
        status.delivered += saved.delivered;
        status.failed += saved.failed;
    }
    let acker = tokio::spawn(run_acks(inner.broker.clone(), name.clone(), ack_queue));
    *lock(&endpoint.acker) = Some(acker);
    let mut subscription_changes = endpoint.subscription.subscribe();
    let mut stop = endpoint.stop.subscribe();
    let mut in_flight_changes = endpoint.in_flight.subscribe();
    let mut buffered: VecDeque<Delivery> = VecDeque::new();
    loop {
        if *stop.borrow_and_update() {
            release(&inner.broker, &name, buffered.drain(..)).await;
            break;
        }
        let subscription = subscription_changes.borrow_and_update().clone();
        let Some(push) = subscription.spec.push.clone() else {
            break;
        };
        if push.disabled.is_some() {
            release(&inner.broker, &name, buffered.drain(..)).await;
            tokio::select! {
                _ = subscription_changes.changed() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let in_flight = *in_flight_changes.borrow_and_update();
        let gate = lock(&endpoint.status).breaker.gate(inner.broker.clock_ms());
        tracing::trace!(subscription = %name, ?gate, in_flight, buffered = buffered.len(), "push: next step");
        let start = |delivery: Delivery, probe: bool| {
            tokio::spawn(attempt(
                inner.clone(),
                endpoint.clone(),
                subscription.clone(),
                delivery,
                acks.clone(),
                probe,
                InFlight::start(&endpoint),
            ))
        };
        match gate {
            Gate::WaitUntil(next_probe_ms) => {
                // Open: nothing goes out but the probe, so nothing is held leased either.
                release(&inner.broker, &name, buffered.drain(..)).await;
                let wait = next_probe_ms.saturating_sub(inner.broker.clock_ms());
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
                    _ = subscription_changes.changed() => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            Gate::Probe => {
                // A probe goes out alone, on a fresh lease, and the next step waits for its
                // result.
                release(&inner.broker, &name, buffered.drain(..)).await;
                if in_flight > 0 {
                    tokio::select! {
                        _ = in_flight_changes.changed() => {}
                        _ = subscription_changes.changed() => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
                let Some(mut deliveries) = pull(&inner, &subscription, 1, PULL_WAIT).await else {
                    break;
                };
                if let Some(delivery) = deliveries.pop() {
                    let _ = start(delivery, true).await;
                }
                continue;
            }
            Gate::Closed => {}
        }
        // Fill the free requests from the buffer. A delivery may wait in the buffer only as
        // long as its lease has room beyond an attempt and the ack margin; when the settings
        // leave (almost) no such room, nothing is leased ahead.
        let now_ms = inner.broker.clock_ms();
        let ack_timeout_ms = subscription.spec.ack_timeout_ms;
        let margin_ms = ack_timeout_ms - herald_core::push_timeout_max_ms(ack_timeout_ms);
        let needed_ms = push.timeout_ms + margin_ms;
        let lease_ahead = ack_timeout_ms.saturating_sub(needed_ms) >= LEASE_AHEAD_ROOM_MIN_MS;
        let mut started = 0;
        let mut expiring = Vec::new();
        while in_flight + started < push.max_in_flight {
            let Some(delivery) = buffered.pop_front() else {
                break;
            };
            if lease_ahead && delivery.deadline_ms.saturating_sub(now_ms) < needed_ms {
                expiring.push(delivery);
                continue;
            }
            drop(start(delivery, false));
            started += 1;
        }
        release(&inner.broker, &name, expiring.into_iter()).await;
        // Refill the buffer when half empty: a blocking pull when there is nothing else to
        // send (it returns as soon as events come), a quick one otherwise. Without leasing
        // ahead, pull exactly the free requests once the buffer is empty.
        let free = push.max_in_flight.saturating_sub(in_flight + started) as usize;
        let (capacity, refill) = if lease_ahead {
            let capacity = push.max_in_flight as usize;
            (capacity, buffered.len() <= capacity / 2)
        } else {
            (free, buffered.is_empty() && free > 0)
        };
        if refill {
            let wait = if buffered.is_empty() {
                PULL_WAIT
            } else {
                Duration::ZERO
            };
            let Some(deliveries) =
                pull(&inner, &subscription, capacity - buffered.len(), wait).await
            else {
                break;
            };
            // The circuit may have opened while the pull waited.
            if lock(&endpoint.status).breaker.gate(inner.broker.clock_ms()) != Gate::Closed {
                release(&inner.broker, &name, deliveries.into_iter()).await;
                continue;
            }
            let pulled = deliveries.len();
            buffered.extend(deliveries);
            if pulled > 0 || started > 0 {
                continue;
            }
            if buffered.is_empty() {
                // Nothing came within the wait: look again (stop and changes are seen at the top).
                continue;
            }
        } else if started > 0 {
            continue;
        }
        // Everything is busy: wait for a request to end.
        tokio::select! {
            _ = in_flight_changes.changed() => {}
            _ = subscription_changes.changed() => {}
            _ = stop.changed() => {}
        }
    }
}

/// One pull for the dispatcher; `None` once the subscription is gone.
async fn pull(
    inner: &Inner,
    subscription: &Arc<Subscription>,
    max: usize,
    wait: Duration,
) -> Option<Vec<Delivery>> {
    match inner
        .broker
        .pull_from(subscription, CONSUMER, max, wait)
        .await
    {
        Ok(deliveries) => Some(deliveries),
        Err(BrokerError::SubscriptionNotFound(_)) => None,
        Err(error) => {
            tracing::warn!(subscription = %subscription.name, %error, "push: pull failed; trying again in a second");
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some(Vec::new())
        }
    }
}

/// Gives leased deliveries back untried (their attempt is not counted).
async fn release(broker: &Arc<Broker>, name: &str, deliveries: impl Iterator<Item = Delivery>) {
    let receipts: Vec<String> = deliveries.map(|delivery| delivery.receipt).collect();
    if receipts.is_empty() {
        return;
    }
    if let Err(error) = broker.settle(name, &receipts, Settle::Release).await {
        tracing::warn!(subscription = %name, %error, "push: could not give back deliveries; their leases expire instead");
    }
}

/// Counts one request under way for as long as it lives (also if its task panics).
struct InFlight(Arc<Endpoint>);

impl InFlight {
    fn start(endpoint: &Arc<Endpoint>) -> Self {
        endpoint.in_flight.send_modify(|count| *count += 1);
        InFlight(endpoint.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .send_modify(|count| *count = count.saturating_sub(1));
    }
}

/// Acknowledges successful deliveries in batches (every ack is one durable commit). Ends when
/// every sender is gone, after acknowledging what they sent.
async fn run_acks(broker: Arc<Broker>, name: String, mut queue: mpsc::Receiver<String>) {
    let mut receipts = Vec::with_capacity(ACK_BATCH_MAX);
    while queue.recv_many(&mut receipts, ACK_BATCH_MAX).await > 0 {
        // A failed or late ack leaves the event to come back: it is delivered again (at
        // least once), never lost.
        match broker.ack(&name, &receipts, None).await {
            Ok(statuses) => {
                let stale = statuses
                    .iter()
                    .filter(|status| **status != herald_core::stream::AckStatus::Ok)
                    .count();
                if stale > 0 {
                    tracing::warn!(subscription = %name, stale, "push: acks came after their lease ended; those events will be delivered again");
                }
            }
            Err(error) => {
                tracing::warn!(subscription = %name, %error, "push: ack failed; the events will be delivered again");
            }
        }
        receipts.clear();
    }
}

/// The answer of an endpoint.
struct Response {
    status: u16,
    retry_after: Option<Duration>,
    excerpt: String,
}

/// Why an attempt got no answer.
enum SendError {
    /// Herald could not make the request from the event: no use retrying.
    Local(String),
    /// The endpoint (or the way to it) failed.
    Remote(String),
}

/// One HTTP attempt of one delivery, and what follows from its result.
async fn attempt(
    inner: Arc<Inner>,
    endpoint: Arc<Endpoint>,
    subscription: Arc<Subscription>,
    delivery: Delivery,
    acks: mpsc::Sender<String>,
    probe: bool,
    _in_flight: InFlight,
) {
    let broker = &inner.broker;
    // The settings as they are now: a PATCH during the pull (a new secret) already counts.
    let current = endpoint.subscription.borrow().clone();
    let Some(push) = current
        .spec
        .push
        .clone()
        .filter(|_| current.id == subscription.id)
        .or_else(|| subscription.spec.push.clone())
    else {
        return;
    };
    let time_ms = broker.clock_ms();
    let started = Instant::now();
    let webhook_id = format!(
        "msg_{:x}_{:x}_{}_{}",
        subscription.id,
        delivery.event.topic.record.id,
        delivery.event.partition,
        delivery.event.offset
    );
    let result = send(&inner, &push, &webhook_id, &delivery, time_ms).await;
    let latency_us = started.elapsed().as_micros() as u64;
    let mut local = false;
    let (status, error, retry_after) = match result {
        Ok(response) if (200..300).contains(&response.status) => {
            (Some(response.status), None, None)
        }
        Ok(response) => {
            let mut error = format!("the endpoint answered {}", response.status);
            if !response.excerpt.is_empty() {
                error.push_str(": ");
                error.push_str(&response.excerpt);
            }
            (Some(response.status), Some(error), response.retry_after)
        }
        Err(SendError::Remote(error)) => (None, Some(error), None),
        Err(SendError::Local(error)) => {
            local = true;
            (None, Some(error), None)
        }
    };
    let gone = status == Some(410);
    let outcome = if error.is_none() {
        if acks.send(delivery.receipt.clone()).await.is_err() {
            tracing::warn!(subscription = %subscription.name, "push: stopped before the ack; the event will be delivered again");
        }
        AttemptOutcome::Delivered
    } else if local || delivery.attempt >= subscription.spec.max_deliveries {
        AttemptOutcome::DeadLettered
    } else if gone {
        AttemptOutcome::Disabled
    } else {
        AttemptOutcome::Failed
    };
    {
        let mut state = lock(&endpoint.status);
        if outcome == AttemptOutcome::Delivered {
            state.breaker.succeeded();
            state.delivered += 1;
        } else {
            // An event Herald cannot send says nothing about the endpoint.
            if !local {
                let not_before_ms = retry_after.map(|delay| time_ms.saturating_add(millis(delay)));
                state
                    .breaker
                    .failed(broker.clock_ms(), not_before_ms, probe);
            }
            state.failed += 1;
            state.last_error = error.clone();
        }
        state.attempts.push_back(Attempt {
            time_ms,
            webhook_id,
            topic: delivery.event.topic.name().to_owned(),
            partition: delivery.event.partition,
            offset: delivery.event.offset,
            attempt: delivery.attempt,
            status,
            latency_us,
            error: error.clone(),
            outcome,
        });
        while state.attempts.len() > inner.config.attempts_kept {
            state.attempts.pop_front();
        }
        state.attempts_unsaved = true;
    }
    if gone {
        let reason = format!(
            "the endpoint answered 410 Gone at {}; PATCH the subscription to enable it again",
            herald_core::time::format_rfc3339(time_ms)
        );
        // Only if the subscription still sends where this attempt went: a 410 from an old URL
        // must not disable the one a PATCH just set.
        let url = push.url.clone();
        let disabled = broker
            .update_push(&subscription.name, Some(subscription.id), move |current| {
                if current.disabled.is_none() && current.url == url {
                    current.disabled = Some(reason);
                }
                Ok(())
            })
            .await;
        if let Err(error) = disabled {
            tracing::warn!(subscription = %subscription.name, %error, "push: could not disable after 410 Gone");
        }
    }
    if let Some(error) = error {
        let action = if local {
            Settle::Reject {
                reason: format!("Herald could not make the webhook request: {error}"),
            }
        } else {
            Settle::Fail {
                delay: retry_after.map(|delay| delay.min(LEASE_MAX)),
                reason: error,
            }
        };
        let settled = broker
            .settle(
                &subscription.name,
                std::slice::from_ref(&delivery.receipt),
                action,
            )
            .await;
        if let Err(error) = settled {
            tracing::warn!(subscription = %subscription.name, %error, "push: nack failed; the lease expires instead");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Sends one signed request.
async fn send(
    inner: &Inner,
    push: &PushSpec,
    webhook_id: &str,
    delivery: &Delivery,
    now_ms: u64,
) -> Result<Response, SendError> {
    let url = destination::check_url(&push.url, inner.config.allow_private_networks)
        .map_err(SendError::Remote)?;
    let message = message::build(&delivery.event.event, push.content_mode)
        .map_err(|error| SendError::Local(error.0))?;
    let keys: Vec<Vec<u8>> = push
        .signing_secrets(now_ms)
        .filter_map(|secret| signature::secret_key(secret).ok())
        .collect();
    let timestamp_s = now_ms / 1000;
    let signature = signature::signature_header(
        keys.iter().map(Vec::as_slice),
        webhook_id,
        timestamp_s,
        &message.body,
    );
    let timeout = Duration::from_millis(push.timeout_ms);
    let mut request = inner
        .client
        .post(url)
        .timeout(timeout)
        .header("webhook-id", webhook_id)
        .header("webhook-timestamp", timestamp_s.to_string())
        .header("webhook-signature", signature)
        .header("herald-attempt", delivery.attempt.to_string());
    if let Some(content_type) = &message.content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, content_type.as_str());
    }
    for (name, value) in &message.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let mut response = request.body(message.body).send().await.map_err(|error| {
        if error.is_builder() {
            SendError::Local(describe(&error, timeout))
        } else {
            SendError::Remote(describe(&error, timeout))
        }
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);
    // Read the body (up to a bound) so the connection can be used again.
    let mut excerpt = Vec::new();
    let mut read = 0usize;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                let room = RESPONSE_EXCERPT_BYTES_MAX.saturating_sub(excerpt.len());
                excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if read > RESPONSE_BYTES_READ_MAX {
                    break;
                }
            }
            Ok(None) => break,
            // The status is what counts; a body cut short only costs the connection.
            Err(error) if (200..300).contains(&status) => {
                tracing::debug!(%error, "push: response body cut short");
                break;
            }
            Err(error) => return Err(SendError::Remote(describe(&error, timeout))),
        }
    }
    Ok(Response {
        status,
        retry_after,
        excerpt: String::from_utf8_lossy(&excerpt).trim().to_owned(),
    })
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An error with its causes, in one line.
fn describe(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!("no answer within the timeout ({} ms)", timeout.as_millis());
    }
    let mut text = if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "the request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let in_a_minute = std::time::SystemTime::now() + Duration::from_secs(61);
        let parsed = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        assert!(parsed <= Duration::from_secs(61) && parsed >= Duration::from_secs(58));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        // An absurd value is capped where it is used, never an overflow.
        let huge = parse_retry_after("18446744073709551615").unwrap();
        assert_eq!(millis(huge), u64::MAX);
        assert_eq!(huge.min(LEASE_MAX), LEASE_MAX);
    }
}
