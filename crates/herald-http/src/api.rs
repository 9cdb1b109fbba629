//! The handlers of the HTTP API, one per route of the contract (`../shared/design/HTTP-API.md`).

use std::convert::Infallible;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use herald_core::queue::Settle;
use herald_core::stream::{AckStatus, Delivery, SeekTarget};
use herald_core::subscription::{Mode, Ordering, Retry, Start, SubscriptionSpec};
use herald_core::{
    Broker, BrokerError, EventToPublish, ReadFrom, StoredEvent, SubscriptionStats as CoreStats,
    TopicSettings, duration, names,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::cloudevents::{self, EventLimits};
use crate::dto::*;
use crate::problem::Problem;
use crate::time::{format_rfc3339, parse_rfc3339};

/// Longest long poll (`wait`).
pub const WAIT_MAX: Duration = Duration::from_secs(60);
/// Bounds of `limit` and pull `max`.
pub const LIMIT_MAX: u32 = 1000;
/// Most receipts in one ack, nack, extend or reject.
pub const RECEIPTS_MAX: usize = 1000;
/// Longest reject `reason`, in characters.
pub const REASON_CHARS_MAX: usize = 1024;
/// Most patterns in one live tail.
pub const TAIL_PATTERNS_MAX: usize = 64;

/// What every handler shares.
#[derive(Debug)]
pub struct App {
    /// Set once recovery has finished; until then the API answers 503.
    pub broker: OnceLock<Arc<Broker>>,
    pub limits: EventLimits,
    /// Becomes true when the server starts shutting down: long polls and streams end early.
    pub shutdown: watch::Receiver<bool>,
    /// The webhook dispatcher, set together with the broker.
    pub push: OnceLock<herald_push::Dispatcher>,
}

type Result<T> = std::result::Result<T, Problem>;

impl App {
    pub(crate) fn broker(&self) -> Result<&Arc<Broker>> {
        self.broker.get().ok_or_else(Problem::not_ready)
    }

    /// Resolves when shutdown begins.
    pub(crate) async fn shutting_down(&self) {
        let mut shutdown = self.shutdown.clone();
        let _ = shutdown.wait_for(|stopping| *stopping).await;
    }
}

pub(crate) fn body_bytes(body: std::result::Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::too_large(format!(
                "{}; the limit (body_bytes_max) is set in the server's configuration",
                rejection.body_text()
            ))
        } else {
            Problem::bad_request(format!(
                "could not read the request body: {}",
                rejection.body_text()
            ))
        }
    })
}

pub(crate) fn query<T>(query: std::result::Result<Query<T>, QueryRejection>) -> Result<T> {
    query.map(|Query(value)| value).map_err(|rejection| {
        Problem::bad_request(format!("bad query parameters: {}", rejection.body_text()))
    })
}

fn media_type(headers: &HeaderMap) -> Result<Option<String>> {
    headers
        .get(header::CONTENT_TYPE)
        .map(|value| {
            value
                .to_str()
                .map(|text| {
                    text.split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase()
                })
                .map_err(|_| Problem::bad_request("the Content-Type header is not ASCII"))
        })
        .transpose()
}

/// Parses a JSON body. An empty body is `{}` when `empty_ok`; anything but `application/json`
/// is a 415.
pub(crate) fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    empty_ok: bool,
) -> Result<T> {
    if body.is_empty() && empty_ok {
        return serde_json::from_slice(b"{}")
            .map_err(|error| Problem::bad_request(error.to_string()));
    }
    match media_type(headers)?.as_deref() {
        Some("application/json") => {}
        Some(other) => {
            return Err(Problem::unsupported_media_type(format!(
                "the body must be application/json, not {other}"
            )));
        }
        None => {
            return Err(Problem::unsupported_media_type(
                "the body must be application/json; set Content-Type",
            ));
        }
    }
    if body.is_empty() {
        return Err(Problem::bad_request(
            "the body is empty; send a JSON object",
        ));
    }
    // serde would read a struct from an array of its fields in order (`[{}]` as `{"push": {}}`);
    // every body of this API is an object.
    if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Problem::bad_request(
            "the body must be a JSON object ({...})",
        ));
    }
    serde_json::from_slice(body).map_err(|error| {
        let reason = match error.classify() {
            serde_json::error::Category::Data => format!("the JSON does not fit: {error}"),
            _ => format!("the body is not valid JSON: {error}"),
        };
        Problem::bad_request(reason)
    })
}

fn parse_wait(wait: Option<&str>) -> Result<Duration> {
    let Some(text) = wait else {
        return Ok(Duration::ZERO);
    };
    let wait =
        duration::parse_duration(text).map_err(|error| Problem::bad_request(error.to_string()))?;
    if wait > WAIT_MAX {
        return Err(Problem::bad_request(format!(
            "wait is {text}; it may be at most 60s"
        )));
    }
    Ok(wait)
}

pub(crate) fn parse_duration_field(name: &str, text: &str) -> Result<Duration> {
    duration::parse_duration(text).map_err(|error| Problem::bad_request(format!("{name}: {error}")))
}

fn check_limit(name: &str, value: Option<u32>, default: u32) -> Result<u32> {
    match value {
        None => Ok(default),
        Some(value) if (1..=LIMIT_MAX).contains(&value) => Ok(value),
        Some(value) => Err(Problem::bad_request(format!(
            "{name} is {value}; it must be between 1 and {LIMIT_MAX}"
        ))),
    }
}

/// The caller's service name from the `herald-service` header.
pub(crate) fn service(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get("herald-service") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Problem::bad_request("the herald-service header is not ASCII"))?;
    names::check_topic_name(text)
        .map_err(|_| Problem::bad_request(format!("herald-service {text:?} is not a valid service name (letters, digits, '.', '_', '-', up to 249)")))?;
    Ok(Some(text.to_owned()))
}

pub(crate) fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(error) => Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding",
            "Encoding failure",
            error.to_string(),
        )
        .into_response(),
    }
}

fn raw_json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

// ---- service endpoints ----

#[utoipa::path(get, path = "/healthz", tag = "service", responses((status = 200, body = Health)))]
pub async fn healthz() -> Response {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    )
}

#[utoipa::path(get, path = "/readyz", tag = "service", responses((status = 200, body = Health), (status = 503, body = ProblemDto)))]
pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.broker() {
        Ok(_) => json_response(
            StatusCode::OK,
            &Health {
                status: "ready".into(),
            },
        ),
        Err(problem) => problem.into_response(),
    }
}

#[utoipa::path(get, path = "/v1/services", tag = "services", responses((status = 200, body = ServiceList)))]
pub async fn services(State(app): State<Arc<App>>) -> Result<Response> {
    let broker = app.broker()?;
    let services = broker
        .services()
        .into_iter()
        .map(|service| ServiceDto {
            name: service.name,
            publishes: service.publishes,
            consumes: service.consumes,
            last_seen: format_rfc3339(service.last_seen_ms),
        })
        .collect();
    Ok(json_response(StatusCode::OK, &ServiceList { services }))
}

// ---- topics ----

fn topic_dto(broker: &Broker, topic: &herald_core::Topic) -> TopicDto {
    let info = broker.topic_info(topic);
    let settings = topic.settings();
    TopicDto {
        name: info.record.name.clone(),
        partitions: info
            .partitions
            .iter()
            .map(|partition| PartitionDto {
                partition: partition.partition,
                start_offset: partition.start_offset,
                end_offset: partition.end_offset,
                bytes: partition.bytes,
            })
            .collect(),
        retention: RetentionView {
            max_age: settings.retention_age_max.map(duration::format_duration),
            max_bytes: settings.retention_bytes_max,
        },
        dedup_window: duration::format_duration(settings.dedup_window),
        created: format_rfc3339(info.record.created_ms),
    }
}

#[utoipa::path(put, path = "/v1/topics/{topic}", tag = "topics", request_body = TopicRequest,
    params(("topic" = String, Path)),
    responses((status = 201, body = TopicDto), (status = 200, body = TopicDto), (status = 400, body = ProblemDto), (status = 409, body = ProblemDto)))]
pub async fn put_topic(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let body = body_bytes(body)?;
    let request: TopicRequest = json_body(&headers, &body, true)?;
    let defaults = TopicSettings::default();
    let retention = request.retention.unwrap_or_default();
    let settings = TopicSettings {
        partitions: request.partitions.unwrap_or(defaults.partitions),
        retention_age_max: match retention.max_age {
            None => defaults.retention_age_max,
            Some(None) => None,
            Some(Some(text)) => Some(parse_duration_field("retention.max_age", &text)?),
        },
        retention_bytes_max: match retention.max_bytes {
            None => defaults.retention_bytes_max,
            Some(value) => value,
        },
        dedup_window: match request.dedup_window {
            None => defaults.dedup_window,
            Some(text) => parse_duration_field("dedup_window", &text)?,
        },
    };
    if settings.retention_bytes_max == Some(0) {
        return Err(Problem::bad_request(
            "retention.max_bytes must be at least 1, or null for no limit",
        ));
    }
    let (topic, created) = broker.create_topic(&name, settings).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &topic_dto(broker, &topic)))
}

#[utoipa::path(get, path = "/v1/topics", tag = "topics", responses((status = 200, body = TopicList)))]
pub async fn list_topics(State(app): State<Arc<App>>) -> Result<Response> {
    let broker = app.broker()?;
    let topics = broker
        .list_topics()
        .iter()
        .filter_map(|info| broker.topic(&info.record.name).ok())
        .map(|topic| topic_dto(broker, &topic))
        .collect();
    Ok(json_response(StatusCode::OK, &TopicList { topics }))
}

#[utoipa::path(get, path = "/v1/topics/{topic}", tag = "topics", params(("topic" = String, Path)),
    responses((status = 200, body = TopicDto), (status = 404, body = ProblemDto)))]
pub async fn get_topic(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<Response> {
    let broker = app.broker()?;
    let topic = broker.topic(&name)?;
    Ok(json_response(StatusCode::OK, &topic_dto(broker, &topic)))
}

#[utoipa::path(delete, path = "/v1/topics/{topic}", tag = "topics", params(("topic" = String, Path)),
    responses((status = 204), (status = 404, body = ProblemDto)))]
pub async fn delete_topic(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response> {
    app.broker()?.delete_topic(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- publishing ----

#[utoipa::path(post, path = "/v1/topics/{topic}/events", tag = "events", params(("topic" = String, Path)),
    request_body(content = Object, description = "A CloudEvent (application/cloudevents+json), a JSON array of them (application/cloudevents-batch+json), binary mode (ce-* headers, the body is data), or plain application/json data"),
    responses((status = 201, body = PublishResponse), (status = 400, body = ProblemDto), (status = 413, body = ProblemDto), (status = 415, body = ProblemDto), (status = 507, body = ProblemDto)))]
pub async fn publish(
    State(app): State<Arc<App>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let body = body_bytes(body)?;
    let service = service(&headers)?;
    names::check_topic_name(&topic).map_err(BrokerError::from)?;
    let mut built = None;
    let events = parse_events(
        &headers,
        &body,
        &topic,
        service.as_deref(),
        &app.limits,
        &mut built,
    )?;
    let published = broker.publish(&topic, &events, service.as_deref()).await?;
    // Written by hand: the shape of `PublishResponse`, without an allocation per event.
    let mut out = Vec::with_capacity(16 + events.len() * 96);
    out.extend_from_slice(b"{\"events\":[");
    for (number, (event, position)) in events.iter().zip(published).enumerate() {
        if number > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut out, event.id.as_ref()).expect("writing into a Vec never fails");
        let _ = write!(
            out,
            ",\"partition\":{},\"offset\":{},\"duplicate\":{}}}",
            position.partition, position.offset, position.duplicate
        );
    }
    out.extend_from_slice(b"]}");
    Ok(raw_json_response(StatusCode::CREATED, out))
}

/// The events of a body in any publish content mode: borrowed from `body` (structured, batch),
/// or built into `built` (binary, plain JSON, whose `type` is `default_type`).
pub(crate) fn parse_events<'a>(
    headers: &HeaderMap,
    body: &'a [u8],
    default_type: &str,
    service: Option<&str>,
    limits: &EventLimits,
    built: &'a mut Option<cloudevents::BuiltEvent>,
) -> Result<Vec<EventToPublish<'a>>> {
    let media = media_type(headers)?;
    Ok(match media.as_deref() {
        Some("application/cloudevents+json") => vec![cloudevents::parse_structured(body, limits)?],
        Some("application/cloudevents-batch+json") => cloudevents::parse_batch(body, limits)?,
        _ if cloudevents::has_binary_headers(headers) => {
            vec![
                built
                    .insert(cloudevents::parse_binary(headers, body, limits)?)
                    .as_event(),
            ]
        }
        Some("application/json") => {
            let now = format_rfc3339(herald_core::broker::now_ms());
            vec![
                built
                    .insert(cloudevents::build_from_json_data(
                        body,
                        default_type,
                        service,
                        &now,
                        limits,
                    )?)
                    .as_event(),
            ]
        }
        Some(other) => {
            return Err(Problem::unsupported_media_type(format!(
                "Content-Type {other} needs ce-id, ce-source and ce-type headers (binary mode); \
                 or send application/cloudevents+json, application/cloudevents-batch+json or application/json"
            )));
        }
        None => {
            return Err(Problem::unsupported_media_type(
                "set Content-Type: application/cloudevents+json, application/cloudevents-batch+json, application/json, \
                 or send a binary-mode event with ce-* headers",
            ));
        }
    })
}

// ---- reading ----

/// Writes `{"partition":…,"offset":…,"timestamp":…,"event":<stored JSON>}`; the stored JSON was
/// checked when it was published and by its checksum when it was read, so it goes out as is.
fn write_stored_event(out: &mut Vec<u8>, event: &StoredEvent, topic: bool) {
    out.push(b'{');
    if topic {
        out.extend_from_slice(b"\"topic\":");
        serde_json::to_writer(&mut *out, event.topic.name())
            .expect("writing into a Vec never fails");
        out.push(b',');
    }
    out.extend_from_slice(
        format!(
            "\"partition\":{},\"offset\":{},\"timestamp\":\"",
            event.partition, event.offset
        )
        .as_bytes(),
    );
    out.extend_from_slice(format_rfc3339(event.timestamp_ms).as_bytes());
    out.extend_from_slice(b"\",\"event\":");
    out.extend_from_slice(&event.event);
    out.push(b'}');
}

#[utoipa::path(get, path = "/v1/topics/{topic}/events", tag = "events", params(("topic" = String, Path), ReadQuery),
    responses((status = 200, body = ReadResponse), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 416, body = ProblemDto)))]
pub async fn read_events(
    State(app): State<Arc<App>>,
    Path(topic): Path<String>,
    read_query: std::result::Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let request = query(read_query)?;
    let limit = check_limit("limit", request.limit, 100)?;
    let wait = parse_wait(request.wait.as_deref())?;
    let partition = request.partition.unwrap_or(0);
    let from = match (request.offset, request.from_time) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request("give offset or from_time, not both"));
        }
        (Some(offset), None) => ReadFrom::Offset(offset),
        (None, Some(time)) => ReadFrom::Time(parse_rfc3339(&time).ok_or_else(|| {
            Problem::bad_request(format!("from_time {time:?} is not an RFC 3339 time"))
        })?),
        (None, None) => {
            let topic_record = broker.topic(&topic)?;
            let info = broker.topic_info(&topic_record);
            let start = info
                .partitions
                .get(partition as usize)
                .map_or(0, |partition| partition.start_offset);
            ReadFrom::Offset(start)
        }
    };
    let read = broker.read(&topic, partition, from, limit as usize, wait);
    let outcome = tokio::select! {
        outcome = read => outcome?,
        () = app.shutting_down() => return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "Shutting down", "the server is shutting down; retry against its successor")),
    };
    let mut body = Vec::with_capacity(
        outcome
            .events
            .iter()
            .map(|event| event.event.len() + 96)
            .sum::<usize>()
            + 32,
    );
    body.extend_from_slice(b"{\"events\":[");
    for (number, event) in outcome.events.iter().enumerate() {
        if number > 0 {
            body.push(b',');
        }
        write_stored_event(&mut body, event, false);
    }
    body.extend_from_slice(format!("],\"next_offset\":{}}}", outcome.next_offset).as_bytes());
    Ok(raw_json_response(StatusCode::OK, body))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TailQuery {
    /// Comma-separated topic names or patterns.
    pub topics: String,
}

#[utoipa::path(get, path = "/v1/tail", tag = "events", params(TailQuery),
    responses((status = 200, description = "Server-sent events; each message's data is a TailMessage", body = TailMessage, content_type = "text/event-stream"), (status = 400, body = ProblemDto)))]
pub async fn tail(
    State(app): State<Arc<App>>,
    tail_query: std::result::Result<Query<TailQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    let broker = app.broker()?;
    let request = query(tail_query)?;
    let patterns: Vec<String> = request.topics.split(',').map(str::to_owned).collect();
    if patterns.len() > TAIL_PATTERNS_MAX {
        return Err(Problem::bad_request(format!(
            "at most {TAIL_PATTERNS_MAX} patterns per tail"
        )));
    }
    let tail = broker.tail(patterns)?;
    let shutdown = app.shutdown.clone();
    let events = stream::unfold((tail, shutdown), |(mut tail, mut shutdown)| async move {
        let next = tokio::select! {
            next = tail.next() => next,
            _ = shutdown.wait_for(|stopping| *stopping) => None,
        };
        next.map(|events| (events, (tail, shutdown)))
    })
    .flat_map(|events| {
        stream::iter(events.into_iter().map(|event| {
            let mut data = Vec::with_capacity(event.event.len() + 96);
            write_stored_event(&mut data, &event, true);
            let data = String::from_utf8(data).unwrap_or_default();
            Ok(SseEvent::default().data(data))
        }))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

// ---- subscriptions ----

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Queue => "queue",
        Mode::Stream => "stream",
    }
}

/// A subscription as shown; `reveal_secret` shows a push secret (only in the answer that set it).
pub(crate) async fn subscription_dto(
    app: &App,
    broker: &Broker,
    subscription: &herald_core::Subscription,
    reveal_secret: bool,
) -> SubscriptionDto {
    let spec = &subscription.spec;
    let stats = match broker.subscription_stats(subscription).await {
        CoreStats::Stream(stats) => SubscriptionStats {
            backlog: stats.backlog,
            in_flight: stats.in_flight,
            delivered: stats.delivered,
            acked: stats.acked,
            redelivered: 0,
            dead_lettered: 0,
            oldest_pending_age: None,
            consumers: stats
                .consumers
                .into_iter()
                .map(|consumer| ConsumerDto {
                    name: consumer.name,
                    partitions: consumer
                        .partitions
                        .into_iter()
                        .map(|(topic, partition)| format!("{topic}/{partition}"))
                        .collect(),
                    last_seen: format_rfc3339(consumer.last_seen_ms),
                })
                .collect(),
            push: None,
        },
        CoreStats::Queue(stats) => SubscriptionStats {
            backlog: stats.backlog,
            in_flight: stats.in_flight,
            delivered: stats.delivered,
            acked: stats.acked,
            redelivered: stats.redelivered,
            dead_lettered: stats.dead_lettered,
            oldest_pending_age: stats
                .oldest_pending_age_ms
                .map(|age| duration::format_duration(Duration::from_millis(age))),
            consumers: Vec::new(),
            push: crate::push::push_stats(app, subscription),
        },
    };
    SubscriptionDto {
        name: subscription.name.clone(),
        topics: spec.topics.clone(),
        mode: mode_name(spec.mode).into(),
        start: match spec.start {
            Start::Latest => "latest".into(),
            Start::Earliest => "earliest".into(),
            Start::Time(millis) => format_rfc3339(millis),
        },
        filter: spec.filter.clone(),
        ack_timeout: duration::format_duration(Duration::from_millis(spec.ack_timeout_ms)),
        max_deliveries: spec.max_deliveries,
        dead_letter_topic: spec.dead_letter_topic.clone(),
        retry: RetryView {
            initial: duration::format_duration(Duration::from_millis(spec.retry.initial_ms)),
            max: duration::format_duration(Duration::from_millis(spec.retry.max_ms)),
            multiplier: spec.retry.multiplier,
        },
        ordering: match spec.ordering {
            Ordering::None => "none".into(),
            Ordering::Key => "key".into(),
        },
        push: spec
            .push
            .as_ref()
            .map(|push| crate::push::push_view(push, reveal_secret, broker.clock_ms())),
        created: format_rfc3339(subscription.created_ms),
        stats,
    }
}

fn to_spec(name: &str, request: SubscriptionRequest) -> Result<SubscriptionSpec> {
    let mut spec = SubscriptionSpec::with_defaults(name, request.topics);
    if let Some(mode) = request.mode {
        spec.mode = match mode.as_str() {
            "queue" => Mode::Queue,
            "stream" => Mode::Stream,
            other => {
                return Err(Problem::bad_request(format!(
                    "mode {other:?} is not one of \"queue\", \"stream\""
                )));
            }
        };
    }
    if let Some(start) = request.start {
        spec.start = match start.as_str() {
            "latest" => Start::Latest,
            "earliest" => Start::Earliest,
            time => Start::Time(parse_rfc3339(time).ok_or_else(|| {
                Problem::bad_request(format!(
                    "start {time:?} is not \"latest\", \"earliest\" or an RFC 3339 time"
                ))
            })?),
        };
    }
    spec.filter = request.filter;
    if let Some(text) = request.ack_timeout {
        let timeout = parse_duration_field("ack_timeout", &text)?;
        if timeout.is_zero() {
            return Err(Problem::bad_request("ack_timeout must be longer than 0s"));
        }
        spec.ack_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    }
    if let Some(max_deliveries) = request.max_deliveries {
        if max_deliveries == 0 {
            return Err(Problem::bad_request("max_deliveries must be at least 1"));
        }
        spec.max_deliveries = max_deliveries;
    }
    if let Some(topic) = request.dead_letter_topic {
        names::check_topic_name(&topic)
            .map_err(|error| Problem::bad_request(format!("dead_letter_topic: {error}")))?;
        spec.dead_letter_topic = topic;
    }
    if let Some(retry) = request.retry {
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let initial = retry
            .initial
            .map(|text| parse_duration_field("retry.initial", &text))
            .transpose()?;
        let max = retry
            .max
            .map(|text| parse_duration_field("retry.max", &text))
            .transpose()?;
        spec.retry = Retry {
            initial_ms: initial.map_or(spec.retry.initial_ms, millis),
            max_ms: max.map_or(spec.retry.max_ms, millis),
            multiplier: retry.multiplier.unwrap_or(spec.retry.multiplier),
        };
        if !(spec.retry.multiplier.is_finite() && (1.0..=100.0).contains(&spec.retry.multiplier)) {
            return Err(Problem::bad_request(
                "retry.multiplier must be between 1.0 and 100.0",
            ));
        }
        if spec.retry.max_ms < spec.retry.initial_ms {
            return Err(Problem::bad_request(
                "retry.max must not be shorter than retry.initial",
            ));
        }
    }
    if let Some(ordering) = request.ordering {
        spec.ordering = match ordering.as_str() {
            "none" => Ordering::None,
            "key" => Ordering::Key,
            other => {
                return Err(Problem::bad_request(format!(
                    "ordering {other:?} is not one of \"none\", \"key\""
                )));
            }
        };
    }
    Ok(spec)
}

#[utoipa::path(put, path = "/v1/subscriptions/{name}", tag = "subscriptions", params(("name" = String, Path)),
    request_body = SubscriptionRequest,
    responses((status = 201, body = SubscriptionDto), (status = 200, body = SubscriptionDto), (status = 400, body = ProblemDto), (status = 409, body = ProblemDto)))]
pub async fn put_subscription(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let body = body_bytes(body)?;
    let mut request: SubscriptionRequest = json_body(&headers, &body, false)?;
    let push = request.push.take();
    let mut spec = to_spec(&name, request)?;
    let secret_chosen = push.as_ref().is_some_and(|push| push.secret.is_some());
    if let Some(push) = push {
        let dispatcher = app.push.get().ok_or_else(Problem::not_ready)?;
        let existing = broker.subscription(&name).ok();
        spec.push = Some(crate::push::to_push_spec(
            dispatcher,
            push,
            &spec,
            existing.as_deref(),
        )?);
    }
    let (subscription, created) = match broker.create_subscription(&name, spec.clone()).await {
        Ok(answer) => answer,
        // Two identical PUTs without a secret at once: each generated its own, and the second
        // found the first's. Without a chosen secret, the secret is not a setting to compare.
        Err(BrokerError::Conflict(detail)) if spec.push.is_some() && !secret_chosen => {
            let existing = broker.subscription(&name)?;
            if let (Some(push), Some(existing_push)) = (&mut spec.push, &existing.spec.push) {
                push.secret = existing_push.secret.clone();
            }
            if !existing.spec.same_settings(&spec) {
                return Err(BrokerError::Conflict(detail).into());
            }
            (existing, false)
        }
        Err(error) => return Err(error.into()),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &subscription_dto(&app, broker, &subscription, created).await,
    ))
}

#[utoipa::path(get, path = "/v1/subscriptions", tag = "subscriptions", responses((status = 200, body = SubscriptionList)))]
pub async fn list_subscriptions(State(app): State<Arc<App>>) -> Result<Response> {
    let broker = app.broker()?;
    let mut subscriptions = Vec::new();
    for subscription in broker.list_subscriptions() {
        subscriptions.push(subscription_dto(&app, broker, &subscription, false).await);
    }
    Ok(json_response(
        StatusCode::OK,
        &SubscriptionList { subscriptions },
    ))
}

#[utoipa::path(get, path = "/v1/subscriptions/{name}", tag = "subscriptions", params(("name" = String, Path)),
    responses((status = 200, body = SubscriptionDto), (status = 404, body = ProblemDto)))]
pub async fn get_subscription(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response> {
    let broker = app.broker()?;
    let subscription = broker.subscription(&name)?;
    Ok(json_response(
        StatusCode::OK,
        &subscription_dto(&app, broker, &subscription, false).await,
    ))
}

#[utoipa::path(delete, path = "/v1/subscriptions/{name}", tag = "subscriptions", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ProblemDto)))]
pub async fn delete_subscription(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response> {
    app.broker()?.delete_subscription(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn write_delivery(out: &mut Vec<u8>, delivery: &Delivery) {
    out.extend_from_slice(b"{\"receipt\":");
    serde_json::to_writer(&mut *out, &delivery.receipt).expect("writing into a Vec never fails");
    out.extend_from_slice(
        format!(
            ",\"attempt\":{},\"deadline\":\"{}\",\"topic\":",
            delivery.attempt,
            format_rfc3339(delivery.deadline_ms)
        )
        .as_bytes(),
    );
    serde_json::to_writer(&mut *out, delivery.event.topic.name())
        .expect("writing into a Vec never fails");
    out.extend_from_slice(
        format!(
            ",\"partition\":{},\"offset\":{},\"event\":",
            delivery.event.partition, delivery.event.offset
        )
        .as_bytes(),
    );
    out.extend_from_slice(&delivery.event.event);
    out.push(b'}');
}

#[utoipa::path(post, path = "/v1/subscriptions/{name}/pull", tag = "subscriptions", params(("name" = String, Path)),
    request_body = PullRequest,
    responses((status = 200, body = PullResponse), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto)))]
pub async fn pull(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let body = body_bytes(body)?;
    let request: PullRequest = json_body(&headers, &body, true)?;
    let max = check_limit("max", request.max, 10)?;
    let wait = parse_wait(request.wait.as_deref())?;
    let service = service(&headers)?;
    let consumer = match request.consumer {
        Some(consumer) => {
            names::check_topic_name(&consumer)
                .map_err(|_| Problem::bad_request(format!("consumer {consumer:?} is not a valid name (letters, digits, '.', '_', '-', up to 249)")))?;
            consumer
        }
        // Pulls without a name share one: the caller's service, or "anonymous". A fresh name per
        // call would make every call a new group member holding partitions for ack_timeout.
        None => service.clone().unwrap_or_else(|| "anonymous".to_owned()),
    };
    let pulled = broker.pull(&name, &consumer, max as usize, wait, service.as_deref());
    let deliveries = tokio::select! {
        deliveries = pulled => deliveries?,
        () = app.shutting_down() => Vec::new(),
    };
    let mut out = Vec::with_capacity(
        deliveries
            .iter()
            .map(|delivery| delivery.event.event.len() + 256)
            .sum::<usize>()
            + 32,
    );
    out.extend_from_slice(b"{\"deliveries\":[");
    for (number, delivery) in deliveries.iter().enumerate() {
        if number > 0 {
            out.push(b',');
        }
        write_delivery(&mut out, delivery);
    }
    out.extend_from_slice(b"]}");
    Ok(raw_json_response(StatusCode::OK, out))
}

#[utoipa::path(post, path = "/v1/subscriptions/{name}/ack", tag = "subscriptions", params(("name" = String, Path)),
    request_body = AckRequest,
    responses((status = 200, body = ReceiptsResponse), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto)))]
pub async fn ack(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let request: AckRequest = json_body(&headers, &body_bytes(body)?, false)?;
    let service = service(&headers)?;
    let statuses = broker
        .ack(&name, &request.receipts, service.as_deref())
        .await?;
    Ok(statuses_response(request.receipts, statuses))
}

fn statuses_response(receipts: Vec<String>, statuses: Vec<AckStatus>) -> Response {
    let results = receipts
        .into_iter()
        .zip(statuses)
        .map(|(receipt, status)| ReceiptResult {
            receipt,
            status: match status {
                AckStatus::Ok => "ok",
                AckStatus::Stale => "stale",
                AckStatus::Unknown => "unknown",
            }
            .into(),
        })
        .collect();
    json_response(StatusCode::OK, &ReceiptsResponse { results })
}

/// nack, extend and reject: queue subscriptions only.
async fn settle(
    broker: &Arc<Broker>,
    name: &str,
    receipts: Vec<String>,
    action: Settle,
) -> Result<Response> {
    let statuses = broker.settle(name, &receipts, action).await?;
    Ok(statuses_response(receipts, statuses))
}

#[utoipa::path(post, path = "/v1/subscriptions/{name}/nack", tag = "subscriptions", params(("name" = String, Path)),
    request_body = NackRequest, responses((status = 200, body = ReceiptsResponse), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 409, body = ProblemDto)))]
pub async fn nack(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let request: NackRequest = json_body(&headers, &body_bytes(body)?, false)?;
    let delay = request
        .delay
        .as_deref()
        .map(|text| parse_duration_field("delay", text))
        .transpose()?;
    if delay.is_some_and(|delay| delay > herald_core::queue::LEASE_MAX) {
        return Err(Problem::bad_request("delay may be at most 12h"));
    }
    settle(broker, &name, request.receipts, Settle::Nack { delay }).await
}

#[utoipa::path(post, path = "/v1/subscriptions/{name}/extend", tag = "subscriptions", params(("name" = String, Path)),
    request_body = ExtendRequest, responses((status = 200, body = ReceiptsResponse), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 409, body = ProblemDto)))]
pub async fn extend(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let request: ExtendRequest = json_body(&headers, &body_bytes(body)?, false)?;
    let by = parse_duration_field("by", &request.by)?;
    settle(broker, &name, request.receipts, Settle::Extend { by }).await
}

#[utoipa::path(post, path = "/v1/subscriptions/{name}/reject", tag = "subscriptions", params(("name" = String, Path)),
    request_body = RejectRequest, responses((status = 200, body = ReceiptsResponse), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 409, body = ProblemDto)))]
pub async fn reject(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let request: RejectRequest = json_body(&headers, &body_bytes(body)?, false)?;
    let reason = request.reason.unwrap_or_else(|| "no reason given".into());
    if reason.chars().count() > REASON_CHARS_MAX {
        return Err(Problem::bad_request(format!(
            "reason is longer than {REASON_CHARS_MAX} characters"
        )));
    }
    settle(broker, &name, request.receipts, Settle::Reject { reason }).await
}

#[utoipa::path(post, path = "/v1/subscriptions/{name}/redrive", tag = "subscriptions", params(("name" = String, Path)),
    request_body = RedriveRequest, responses((status = 200, body = RedriveResponse), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 409, body = ProblemDto)))]
pub async fn redrive(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let body = body_bytes(body)?;
    let request: RedriveRequest = json_body(&headers, &body, true)?;
    let max = check_limit("max", request.max, 1000)?;
    let redriven = broker.redrive(&name, max as usize).await?;
    Ok(json_response(
        StatusCode::OK,
        &RedriveResponse {
            redriven: redriven as u64,
        },
    ))
}

fn seek_target(to: &serde_json::Value) -> Result<SeekTarget> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Position {
        topic: Option<String>,
        #[serde(deserialize_with = "crate::dto::required_whole")]
        partition: u32,
        #[serde(deserialize_with = "crate::dto::required_whole")]
        offset: u64,
    }
    match to {
        serde_json::Value::String(text) => match text.as_str() {
            "earliest" => Ok(SeekTarget::Earliest),
            "latest" => Ok(SeekTarget::Latest),
            time => parse_rfc3339(time).map(SeekTarget::Time).ok_or_else(|| {
                Problem::bad_request(format!(
                    "to {time:?} is not \"earliest\", \"latest\" or an RFC 3339 time"
                ))
            }),
        },
        serde_json::Value::Object(_) => {
            let position: Position = serde_json::from_value(to.clone()).map_err(|error| {
                Problem::bad_request(format!(
                    "to: expected {{\"partition\": N, \"offset\": N}}: {error}"
                ))
            })?;
            Ok(SeekTarget::Offset {
                topic: position.topic,
                partition: position.partition,
                offset: position.offset,
            })
        }
        _ => Err(Problem::bad_request(
            "to must be \"earliest\", \"latest\", an RFC 3339 time, or {\"partition\": N, \"offset\": N}",
        )),
    }
}

#[utoipa::path(post, path = "/v1/subscriptions/{name}/seek", tag = "subscriptions", params(("name" = String, Path)),
    request_body = SeekRequest,
    responses((status = 204), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 409, body = ProblemDto), (status = 416, body = ProblemDto)))]
pub async fn seek(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let body = body_bytes(body)?;
    let request: SeekRequest = json_body(&headers, &body, false)?;
    let target = seek_target(&request.to)?;
    broker.seek(&name, target).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Most unacknowledged deliveries on this stream at once (1–1000, default 100).
    pub max_in_flight: Option<u32>,
    /// The consumer name of this stream (a generated one if absent).
    pub consumer: Option<String>,
}

#[utoipa::path(get, path = "/v1/subscriptions/{name}/events", tag = "subscriptions", params(("name" = String, Path), EventsQuery),
    responses((status = 200, description = "text/event-stream; each message's id is the receipt, its data a delivery", body = DeliveryDto), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto)))]
pub async fn subscription_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    events_query: std::result::Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    let broker = app.broker()?.clone();
    let request = query(events_query)?;
    let max_in_flight = check_limit("max_in_flight", request.max_in_flight, 100)? as usize;
    let subscription = broker.subscription(&name)?;
    if broker.queue_leases(&subscription, "").is_none() {
        return Err(Problem::bad_request(format!(
            "{name:?} is a stream subscription; pushed deliveries (SSE) are for queue subscriptions, pull a stream"
        )));
    }
    let consumer = match request.consumer {
        Some(consumer) => {
            names::check_topic_name(&consumer).map_err(|_| {
                Problem::bad_request(format!("consumer {consumer:?} is not a valid name"))
            })?;
            consumer
        }
        None => format!("sse-{}", ulid::Ulid::new()),
    };
    let shutdown = app.shutdown.clone();
    let deliveries = stream::unfold((broker, name, consumer, shutdown), move |(broker, name, consumer, mut shutdown)| async move {
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let Ok(subscription) = broker.subscription(&name) else { return None };
            let leased = broker.queue_leases(&subscription, &consumer).unwrap_or(0);
            if leased >= max_in_flight {
                // Full: wait for an ack (or an expiry) to make room.
                tokio::select! {
                    () = broker.queue_changed(&subscription) => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait_for(|stopping| *stopping) => return None,
                }
                continue;
            }
            let pulled = tokio::select! {
                pulled = broker.pull(&name, &consumer, max_in_flight - leased, Duration::from_secs(20), None) => pulled,
                _ = shutdown.wait_for(|stopping| *stopping) => return None,
            };
            match pulled {
                Ok(deliveries) if deliveries.is_empty() => continue,
                Ok(deliveries) => return Some((deliveries, (broker, name, consumer, shutdown))),
                Err(_) => return None,
            }
        }
    })
    .flat_map(|deliveries| {
        stream::iter(deliveries.into_iter().map(|delivery| {
            let mut data = Vec::with_capacity(delivery.event.event.len() + 256);
            write_delivery(&mut data, &delivery);
            Ok(SseEvent::default().id(delivery.receipt.clone()).data(String::from_utf8(data).unwrap_or_default()))
        }))
    });
    Ok(Sse::new(deliveries).keep_alive(KeepAlive::default()))
}

/// The 404 for paths that are not part of the API.
pub async fn not_found() -> Problem {
    Problem::not_found("no such endpoint; see /openapi.json for the API")
}

/// The 405 for a known path with a method it does not take.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not take that method; see /openapi.json",
    )
}
