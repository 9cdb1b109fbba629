//! RFC 9457 problem details: every error Herald answers is `application/problem+json` with a
//! `detail` that says what to fix.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::BrokerError;
use serde_json::{Map, Value, json};

use crate::cloudevents::EventError;

/// The media type of every error answer.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem to answer with.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// A short, stable name of the kind of problem (`topic-not-found`); the `type` member is
    /// `urn:herald:problem:{slug}`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// Extra members, such as `start_offset` for a 416.
    pub extra: Vec<(&'static str, Value)>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_seconds: Option<u32>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            extra: Vec::new(),
            retry_after_seconds: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "Content too large",
            detail,
        )
    }

    pub fn not_ready() -> Self {
        let mut problem = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            "Herald is starting: recovery of the stored data is still running; retry shortly",
        );
        problem.retry_after_seconds = Some(1);
        problem
    }

    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.extra.push((key, value));
        self
    }
}

impl From<BrokerError> for Problem {
    fn from(error: BrokerError) -> Self {
        let detail = error.to_string();
        match error {
            BrokerError::TopicNotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "topic-not-found",
                "Topic not found",
                detail,
            ),
            BrokerError::SubscriptionNotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "subscription-not-found",
                "Subscription not found",
                detail,
            ),
            BrokerError::PartitionNotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "partition-not-found",
                "Partition not found",
                detail,
            ),
            BrokerError::RequestNotFound(_) => Problem::new(
                StatusCode::NOT_FOUND,
                "request-not-found",
                "Request not found",
                detail,
            ),
            BrokerError::Gone(_) => Problem::new(StatusCode::GONE, "gone", "Gone", detail),
            BrokerError::TooLarge(_) => Problem::too_large(detail),
            BrokerError::InvalidName(_) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-name",
                "Invalid name",
                detail,
            ),
            BrokerError::Invalid(_) => Problem::bad_request(detail),
            BrokerError::Conflict(_) => {
                Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
            }
            BrokerError::OffsetOutOfRange {
                partition,
                start_offset,
                end_offset,
                ..
            } => Problem::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "offset-out-of-range",
                "Offset out of range",
                detail,
            )
            .with("partition", json!(partition))
            .with("start_offset", json!(start_offset))
            .with("end_offset", json!(end_offset)),
            BrokerError::Overloaded(_) => {
                let mut problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "Overloaded",
                    detail,
                );
                problem.retry_after_seconds = Some(1);
                problem
            }
            BrokerError::DiskFull(_) => Problem::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk-full",
                "Insufficient storage",
                detail,
            ),
            BrokerError::NotImplemented(_) => Problem::new(
                StatusCode::NOT_IMPLEMENTED,
                "not-implemented",
                "Not implemented",
                detail,
            ),
            BrokerError::Storage(_) => {
                tracing::error!(%detail, "storage failure");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage-failure",
                    "Storage failure",
                    detail,
                )
            }
        }
    }
}

impl From<EventError> for Problem {
    fn from(error: EventError) -> Self {
        match error {
            EventError::Invalid(detail) => Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-event",
                "Invalid event",
                detail,
            ),
            EventError::TooLarge(detail) => Problem::too_large(detail),
            EventError::UnsupportedMediaType(detail) => Problem::unsupported_media_type(detail),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            json!(format!("urn:herald:problem:{}", self.slug)),
        );
        body.insert("title".into(), json!(self.title));
        body.insert("status".into(), json!(self.status.as_u16()));
        body.insert("detail".into(), json!(self.detail));
        body.extend(
            self.extra
                .into_iter()
                .map(|(key, value)| (key.to_owned(), value)),
        );
        let mut response = (self.status, Value::Object(body).to_string()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Turns an error answer that is not problem+json (an extractor's rejection, such as a path
/// segment that is not UTF-8) into one, keeping its status and using its text as the detail.
pub async fn plain_errors_as_problems(
    response: axum::response::Response,
) -> axum::response::Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    let title = status.canonical_reason().unwrap_or("Error");
    let detail = if detail.is_empty() {
        title.to_owned()
    } else {
        detail
    };
    Problem::new(status, "invalid-request", title, detail).into_response()
}
