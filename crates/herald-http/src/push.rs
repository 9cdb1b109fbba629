//! Webhook (push) subscriptions on the wire: the `push` settings of `PUT`, `PATCH` to change
//! them (rotate the secret, enable again after a 410), `stats.push`, and the attempts.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use herald_core::subscription::{ContentMode, PushSpec, SubscriptionSpec};
use herald_core::{Broker, BrokerError, Subscription, duration};
use herald_push::{Dispatcher, PushStatus, signature};
use serde::Deserialize;

use crate::api::{App, body_bytes, json_body, json_response, parse_duration_field, query};
use crate::dto::{
    AttemptDto, AttemptList, PushPatch, PushRequest, PushStats, PushView, SubscriptionPatch,
};
use crate::problem::Problem;
use crate::time::format_rfc3339;

type Result<T> = std::result::Result<T, Problem>;

/// Default time for one attempt (shortened to fit a short `ack_timeout`, see
/// `push_timeout_max_ms`).
const PUSH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default requests at once per subscription.
const PUSH_IN_FLIGHT_DEFAULT: u32 = 16;
/// How long a rotated-out secret still signs, by default, and at most.
const SECRET_GRACE_DEFAULT: Duration = Duration::from_secs(24 * 3600);
const SECRET_GRACE_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn content_mode(text: &str) -> Result<ContentMode> {
    match text {
        "binary" => Ok(ContentMode::Binary),
        "structured" => Ok(ContentMode::Structured),
        other => Err(Problem::bad_request(format!(
            "push.content_mode {other:?} is not one of \"binary\", \"structured\""
        ))),
    }
}

fn check_secret(secret: &str) -> Result<()> {
    signature::secret_key(secret)
        .map(|_| ())
        .map_err(Problem::bad_request)
}

fn new_secret() -> Result<String> {
    signature::generate_secret().map_err(|error| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "random",
            "No randomness",
            format!("could not generate a secret: {error}"),
        )
    })
}

fn check_url(dispatcher: &Dispatcher, url: &str) -> Result<()> {
    dispatcher.check_url(url).map_err(Problem::bad_request)
}

/// The core's push settings for a `PUT`. Without a secret, the existing subscription's secret
/// is kept (so a repeated `PUT` is idempotent), or a new one is generated.
pub(crate) fn to_push_spec(
    dispatcher: &Dispatcher,
    request: PushRequest,
    spec: &SubscriptionSpec,
    existing: Option<&Subscription>,
) -> Result<PushSpec> {
    check_url(dispatcher, &request.url)?;
    let secret = match request.secret {
        Some(secret) => {
            check_secret(&secret)?;
            secret
        }
        None => match existing.and_then(|existing| existing.spec.push.as_ref()) {
            Some(push) => push.secret.clone(),
            None => new_secret()?,
        },
    };
    let timeout_ms = match request.timeout {
        Some(text) => millis(parse_duration_field("push.timeout", &text)?),
        None => {
            millis(PUSH_TIMEOUT_DEFAULT).min(herald_core::push_timeout_max_ms(spec.ack_timeout_ms))
        }
    };
    Ok(PushSpec {
        url: request.url,
        secret,
        previous_secret: None,
        previous_secret_until_ms: 0,
        timeout_ms,
        max_in_flight: request.max_in_flight.unwrap_or(PUSH_IN_FLIGHT_DEFAULT),
        content_mode: request
            .content_mode
            .as_deref()
            .map(content_mode)
            .transpose()?
            .unwrap_or(ContentMode::Structured),
        disabled: None,
    })
}

/// `push` as shown; the secret only when `reveal_secret` (the answer that set it).
pub(crate) fn push_view(push: &PushSpec, reveal_secret: bool, now_ms: u64) -> PushView {
    PushView {
        url: push.url.clone(),
        secret: reveal_secret.then(|| push.secret.clone()),
        timeout: duration::format_duration(Duration::from_millis(push.timeout_ms)),
        max_in_flight: push.max_in_flight,
        content_mode: match push.content_mode {
            ContentMode::Binary => "binary".into(),
            ContentMode::Structured => "structured".into(),
        },
        previous_secret_until: (push.previous_secret.is_some()
            && push.previous_secret_until_ms > now_ms)
            .then(|| format_rfc3339(push.previous_secret_until_ms)),
    }
}

/// `stats.push` of a push subscription.
pub(crate) fn push_stats(app: &App, subscription: &Subscription) -> Option<PushStats> {
    let status: PushStatus = app.push.get()?.status(subscription)?;
    Some(PushStats {
        state: status.state.as_str().into(),
        last_error: status.last_error,
        consecutive_failures: status.consecutive_failures,
        in_flight: status.in_flight,
        attempts_delivered: status.delivered,
        attempts_failed: status.failed,
        next_probe: status.next_probe_ms.map(format_rfc3339),
    })
}

fn dispatcher(app: &App) -> Result<&Dispatcher> {
    app.push.get().ok_or_else(Problem::not_ready)
}

/// Applies a PATCH to the push settings; returns whether the secret changed.
fn apply_patch(
    patch: PushPatch,
    new_secret: Option<String>,
    grace: Duration,
    now_ms: u64,
    push: &mut PushSpec,
) -> std::result::Result<bool, BrokerError> {
    if let Some(url) = patch.url {
        push.url = url;
    }
    if let Some(timeout_ms) = patch.timeout.as_deref().map(|text| {
        duration::parse_duration(text)
            .map(millis)
            .map_err(|error| BrokerError::Invalid(format!("push.timeout: {error}")))
    }) {
        push.timeout_ms = timeout_ms?;
    }
    if let Some(max_in_flight) = patch.max_in_flight {
        push.max_in_flight = max_in_flight;
    }
    if let Some(mode) = patch.content_mode.as_deref() {
        push.content_mode =
            content_mode(mode).map_err(|problem| BrokerError::Invalid(problem.detail))?;
    }
    // Every PATCH enables the subscription again.
    push.disabled = None;
    let rotated = match new_secret {
        Some(secret) if secret != push.secret => {
            push.previous_secret = Some(std::mem::replace(&mut push.secret, secret));
            push.previous_secret_until_ms = now_ms.saturating_add(millis(grace));
            true
        }
        _ => false,
    };
    Ok(rotated)
}

#[utoipa::path(patch, path = "/v1/subscriptions/{name}", tag = "subscriptions", params(("name" = String, Path)),
    request_body = SubscriptionPatch,
    responses((status = 200, body = crate::dto::SubscriptionDto), (status = 400, body = crate::dto::ProblemDto), (status = 404, body = crate::dto::ProblemDto), (status = 409, body = crate::dto::ProblemDto)))]
pub async fn patch_subscription(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker: &Arc<Broker> = app.broker()?;
    let dispatcher = dispatcher(&app)?;
    let body = body_bytes(body)?;
    let request: SubscriptionPatch = json_body(&headers, &body, false)?;
    let patch = request.push;
    if let Some(url) = &patch.url {
        check_url(dispatcher, url)?;
    }
    let new_secret = match (&patch.secret, patch.rotate_secret) {
        (Some(_), Some(true)) => {
            return Err(Problem::bad_request(
                "send either push.secret or push.rotate_secret, not both",
            ));
        }
        (Some(secret), _) => {
            check_secret(secret)?;
            Some(secret.clone())
        }
        (None, Some(true)) => Some(new_secret()?),
        (None, _) => None,
    };
    let grace = match &patch.secret_grace {
        Some(text) => {
            let grace = parse_duration_field("push.secret_grace", text)?;
            if grace > SECRET_GRACE_MAX {
                return Err(Problem::bad_request(format!(
                    "push.secret_grace is {text}; it may be at most 7d"
                )));
            }
            grace
        }
        None => SECRET_GRACE_DEFAULT,
    };
    let now_ms = broker.clock_ms();
    let (subscription, rotated) = broker
        .update_push(&name, None, move |push| {
            apply_patch(patch, new_secret, grace, now_ms, push)
        })
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &crate::api::subscription_dto(&app, broker, &subscription, rotated).await,
    ))
}

/// Query of `GET /v1/subscriptions/{name}/attempts`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttemptsQuery {
    /// Most attempts in the answer (1–10000, default 100); the server keeps the last
    /// `push.attempts_kept` (default 100) per subscription.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/subscriptions/{name}/attempts", tag = "subscriptions", params(("name" = String, Path), AttemptsQuery),
    responses((status = 200, body = AttemptList), (status = 400, body = crate::dto::ProblemDto), (status = 404, body = crate::dto::ProblemDto), (status = 409, body = crate::dto::ProblemDto)))]
pub async fn attempts(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    attempts_query: std::result::Result<Query<AttemptsQuery>, QueryRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let dispatcher = dispatcher(&app)?;
    let request = query(attempts_query)?;
    let limit = match request.limit {
        None => 100,
        Some(limit) if (1..=herald_push::dispatcher::ATTEMPTS_KEPT_MAX as u32).contains(&limit) => {
            limit as usize
        }
        Some(limit) => {
            return Err(Problem::bad_request(format!(
                "limit is {limit}; it must be between 1 and {}",
                herald_push::dispatcher::ATTEMPTS_KEPT_MAX
            )));
        }
    };
    let subscription = broker.subscription(&name)?;
    if subscription.spec.push.is_none() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "conflict",
            "Conflict",
            format!("{name:?} is not a push subscription; only webhooks have attempts"),
        ));
    }
    let attempts = dispatcher
        .attempts(&name, limit)
        .into_iter()
        .map(|attempt| AttemptDto {
            time: format_rfc3339(attempt.time_ms),
            webhook_id: attempt.webhook_id,
            topic: attempt.topic,
            partition: attempt.partition,
            offset: attempt.offset,
            attempt: attempt.attempt,
            status: attempt.status,
            latency_ms: attempt.latency_us as f64 / 1000.0,
            error: attempt.error,
            outcome: attempt.outcome.as_str().into(),
        })
        .collect();
    Ok(json_response(StatusCode::OK, &AttemptList { attempts }))
}
