//! Action/response over HTTP: `POST /v1/topics/{topic}/requests`, `POST
//! /v1/requests/{id}/reply`, `GET /v1/requests/{id}`. The semantics live in
//! `herald_core::requests`; this is the wire.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use herald_core::requests::{self, NewRequest, Outcome, RequestStatus};
use herald_core::{BrokerError, names};
use serde_json::value::RawValue;

use crate::api::{
    self, App, WAIT_MAX, body_bytes, json_response, parse_duration_field, parse_events, service,
};
use crate::dto::*;
use crate::problem::Problem;
use crate::time::format_rfc3339;

type Result<T> = std::result::Result<T, Problem>;

/// How long a request call waits for its reply when `timeout` is not given.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// The `type` of a reply sent as plain `application/json` data.
pub const REPLY_TYPE_DEFAULT: &str = "herald.reply";

/// JSON text that Herald stored (so known to be valid) as a raw value.
fn raw(text: Vec<u8>) -> Option<Box<RawValue>> {
    String::from_utf8(text)
        .ok()
        .and_then(|text| RawValue::from_string(text).ok())
}

/// The reply group: `herald-reply-group`, else the caller's service.
fn reply_group(headers: &HeaderMap, service: Option<&str>) -> Result<String> {
    let (group, from) = match headers.get("herald-reply-group") {
        Some(value) => (
            value
                .to_str()
                .map_err(|_| Problem::bad_request("the herald-reply-group header is not ASCII"))?,
            "herald-reply-group",
        ),
        None => (
            service.ok_or_else(|| {
                Problem::bad_request(
                    "a request needs a reply group: the service whose instances may claim the reply; \
                     send a herald-reply-group or herald-service header",
                )
            })?,
            "herald-service (the reply group)",
        ),
    };
    names::check_reply_group(group)
        .map_err(|error| Problem::bad_request(format!("{from}: {error}")))?;
    Ok(group.to_owned())
}

/// `herald-context`: any JSON value, up to 64 KiB.
fn context(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get("herald-context") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.len() > requests::CONTEXT_BYTES_MAX {
        return Err(Problem::too_large(format!(
            "herald-context is {} bytes; the limit (request_context_bytes_max) is {}",
            bytes.len(),
            requests::CONTEXT_BYTES_MAX
        )));
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Problem::bad_request("the herald-context header is not UTF-8"))?;
    serde_json::from_str::<&RawValue>(text).map_err(|error| {
        Problem::bad_request(format!("herald-context is not valid JSON: {error}"))
    })?;
    Ok(Some(text.trim().to_owned()))
}

/// The single event of a request or reply body (a batch is refused).
fn one_event<'a>(
    what: &str,
    mut events: Vec<herald_core::EventToPublish<'a>>,
) -> Result<herald_core::EventToPublish<'a>> {
    if events.len() != 1 {
        return Err(Problem::bad_request(format!(
            "{what} is one event: send it in structured, binary or plain JSON mode, not as a batch"
        )));
    }
    Ok(events.remove(0))
}

fn accepted(id: &str, status: &str) -> Response {
    let mut response = json_response(
        StatusCode::ACCEPTED,
        &RequestAccepted {
            request_id: id.to_owned(),
            status: status.to_owned(),
        },
    );
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/requests/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

#[utoipa::path(post, path = "/v1/topics/{topic}/requests", tag = "requests",
    params(("topic" = String, Path), RequestQuery,
        ("herald-reply-group" = Option<String>, Header, description = "The service whose instances may claim the reply (default: herald-service)"),
        ("herald-context" = Option<String>, Header, description = "JSON (up to 64 KiB) kept with the request and handed back with its reply")),
    request_body(content = Object, description = "The request event in any publish content mode except batch"),
    responses((status = 200, body = RequestReplied), (status = 202, body = RequestAccepted, description = "No reply within timeout; the request stays open until its deadline (Location: /v1/requests/{id})"),
        (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 409, body = ProblemDto), (status = 413, body = ProblemDto), (status = 415, body = ProblemDto), (status = 503, body = ProblemDto), (status = 507, body = ProblemDto)))]
pub async fn post_request(
    State(app): State<Arc<App>>,
    Path(topic): Path<String>,
    query: std::result::Result<Query<RequestQuery>, QueryRejection>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let query = api::query(query)?;
    let body = body_bytes(body)?;
    let service = service(&headers)?;
    names::check_topic_name(&topic).map_err(BrokerError::from)?;
    let timeout = match query.timeout.as_deref() {
        None => TIMEOUT_DEFAULT,
        Some(text) => {
            let timeout = parse_duration_field("timeout", text)?;
            if timeout > WAIT_MAX {
                return Err(Problem::bad_request(format!(
                    "timeout is {text}; it may be at most 60s (the request itself stays open until its deadline)"
                )));
            }
            timeout
        }
    };
    let deadline = match query.deadline.as_deref() {
        None => requests::DEADLINE_DEFAULT,
        Some(text) => parse_duration_field("deadline", text)?,
    };
    let group = reply_group(&headers, service.as_deref())?;
    let context = context(&headers)?;
    let mut built = None;
    let event = one_event(
        "a request",
        parse_events(
            &headers,
            &body,
            &topic,
            service.as_deref(),
            &app.limits,
            &mut built,
        )?,
    )?;
    let mut waiter = broker
        .request(NewRequest {
            topic: &topic,
            event,
            group: &group,
            context: context.clone(),
            deadline,
            service: service.as_deref(),
        })
        .await?;
    let outcome = tokio::select! {
        outcome = waiter.wait(timeout) => outcome,
        () = app.shutting_down() => None,
    };
    match outcome.as_deref() {
        Some(Outcome::Replied { event, position }) => {
            // A retried call waits on the first call's request: hand back that one's context.
            let context = if waiter.joined {
                broker.request_view(&waiter.id).await?.context
            } else {
                context
            };
            let response = json_response(
                StatusCode::OK,
                &RequestReplied {
                    request_id: waiter.id.clone(),
                    reply: raw(event.to_vec()).ok_or_else(|| {
                        Problem::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "storage-failure",
                            "Storage failure",
                            "the stored reply is not valid JSON",
                        )
                    })?,
                    context: context.and_then(|text| raw(text.into_bytes())),
                },
            );
            // The reply reaches its requester: the reply queue need not deliver it again.
            if let Err(error) = broker.reply_taken(&waiter.group, *position) {
                tracing::warn!(%error, "could not mark a reply taken in its reply queue; it will be delivered there too");
            }
            Ok(response)
        }
        Some(Outcome::Expired) => Ok(accepted(&waiter.id, "expired")),
        None => Ok(accepted(&waiter.id, "pending")),
    }
}

#[utoipa::path(post, path = "/v1/requests/{request_id}/reply", tag = "requests",
    params(("request_id" = String, Path)),
    request_body(content = Object, description = "The reply event in any publish content mode except batch; Herald adds correlationid"),
    responses((status = 201, body = ReplyDto), (status = 400, body = ProblemDto), (status = 404, body = ProblemDto), (status = 409, body = ProblemDto, description = "Another reply came first"),
        (status = 410, body = ProblemDto, description = "The request expired"), (status = 413, body = ProblemDto), (status = 415, body = ProblemDto), (status = 507, body = ProblemDto)))]
pub async fn post_reply(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let broker = app.broker()?;
    let body = body_bytes(body)?;
    let service = service(&headers)?;
    let mut built = None;
    let event = one_event(
        "a reply",
        parse_events(
            &headers,
            &body,
            REPLY_TYPE_DEFAULT,
            service.as_deref(),
            &app.limits,
            &mut built,
        )?,
    )?;
    broker.reply(&id, &event).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &ReplyDto {
            request_id: id,
            status: "replied".into(),
        },
    ))
}

#[utoipa::path(get, path = "/v1/requests/{request_id}", tag = "requests",
    params(("request_id" = String, Path)),
    responses((status = 200, body = RequestDto), (status = 404, body = ProblemDto)))]
pub async fn get_request(State(app): State<Arc<App>>, Path(id): Path<String>) -> Result<Response> {
    let broker = app.broker()?;
    let view = broker.request_view(&id).await?;
    let status = match view.status {
        RequestStatus::Pending => "pending",
        RequestStatus::Replied => "replied",
        RequestStatus::Expired => "expired",
    };
    Ok(json_response(
        StatusCode::OK,
        &RequestDto {
            request_id: view.id,
            status: status.into(),
            topic: view.topic,
            group: view.group,
            reply: view.reply.and_then(|reply| raw(reply.to_vec())),
            context: view.context.and_then(|text| raw(text.into_bytes())),
            deadline: format_rfc3339(view.deadline_ms),
        },
    ))
}
