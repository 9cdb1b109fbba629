//! [`ClientError`], the one error type of every client call, and the decoding of problem bodies.

use crate::model::Problem;

/// Longest error body, in bytes, copied into a synthesized problem's `detail`, so a proxy's HTML
/// page does not flood a terminal.
pub const SYNTHESIZED_DETAIL_BYTES_MAX: usize = 1024;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached: nothing listens at `url`, the connection was refused or
    /// timed out, or the name does not resolve.
    #[error("cannot reach the Herald server at {url}: {reason}")]
    Connect {
        url: String,
        /// The innermost cause, e.g. "Connection refused (os error 111)".
        reason: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a 4xx or 5xx status. When the body was not `problem+json` the
    /// problem is synthesized from the status and the body text.
    #[error("{status} {}", problem_summary(problem))]
    Problem { status: u16, problem: Box<Problem> },
    /// The server answered 2xx with a body this client could not decode.
    #[error("cannot decode the answer to {request}: {source}")]
    Decode {
        /// Method and path, e.g. `GET /v1/topics`.
        request: String,
        #[source]
        source: serde_json::Error,
    },
    /// Anything else: an invalid URL or header, a connection that broke in the middle of an
    /// answer, a malformed event stream.
    #[error("{message}")]
    Other {
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

fn problem_summary(problem: &Problem) -> String {
    match (problem.title.is_empty(), problem.detail.is_empty()) {
        (false, false) => format!("{}: {}", problem.title, problem.detail),
        (false, true) => problem.title.clone(),
        (true, false) => problem.detail.clone(),
        (true, true) => String::new(),
    }
}

impl ClientError {
    /// The HTTP status of a [`ClientError::Problem`].
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Problem { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problem body of a [`ClientError::Problem`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem { problem, .. } => Some(problem),
            _ => None,
        }
    }

    pub(crate) fn other(message: impl Into<String>) -> Self {
        ClientError::Other {
            message: message.into(),
            source: None,
        }
    }

    /// Classifies a transport error of a request to `url` (the server's base URL, which is what
    /// a user can act on).
    pub(crate) fn from_transport(url: &str, request: &str, error: reqwest::Error) -> Self {
        if error.is_connect() {
            let reason = innermost_cause(&error);
            ClientError::Connect {
                url: url.to_owned(),
                reason,
                source: error,
            }
        } else {
            ClientError::Other {
                message: format!("{request} failed: {}", innermost_cause(&error)),
                source: Some(Box::new(error)),
            }
        }
    }
}

/// The message of the last error in `error`'s source chain: for a refused connection that is
/// "Connection refused (os error 111)" rather than reqwest's "error sending request".
fn innermost_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Builds the problem of an error answer. A body that is an RFC 9457 problem is taken as is
/// (its `status` filled from the answer when missing); anything else becomes a problem whose
/// `title` is the status's reason phrase and whose `detail` is the body text.
pub fn decode_problem(status: u16, content_type: Option<&str>, body: &[u8]) -> Problem {
    let looks_like_json = content_type.is_some_and(|value| {
        let essence = value.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/problem+json")
            || essence.eq_ignore_ascii_case("application/json")
    });
    if looks_like_json
        && let Ok(mut problem) = serde_json::from_slice::<Problem>(body)
        && (!problem.title.is_empty() || !problem.detail.is_empty())
    {
        if problem.status == 0 {
            problem.status = status;
        }
        if problem.title.is_empty() {
            problem.title = reason_phrase(status).to_owned();
        }
        return problem;
    }

    let text = String::from_utf8_lossy(body);
    let mut detail = text.trim().to_owned();
    if detail.len() > SYNTHESIZED_DETAIL_BYTES_MAX {
        let mut end = SYNTHESIZED_DETAIL_BYTES_MAX;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    Problem {
        problem_type: "about:blank".to_owned(),
        title: reason_phrase(status).to_owned(),
        status,
        detail,
        extra: serde_json::Map::new(),
    }
}

fn reason_phrase(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_body_is_taken_as_sent_with_its_extra_fields() {
        let body = br#"{"type":"https://herald.dev/problems/offset-out-of-range","title":"Offset out of range","status":416,"detail":"offset 3 is before the start 10","start_offset":10}"#;
        let problem = decode_problem(416, Some("application/problem+json"), body);
        assert_eq!(
            problem.problem_type,
            "https://herald.dev/problems/offset-out-of-range"
        );
        assert_eq!(problem.title, "Offset out of range");
        assert_eq!(problem.status, 416);
        assert_eq!(problem.detail, "offset 3 is before the start 10");
        assert_eq!(problem.extra_u64("start_offset"), Some(10));
    }

    #[test]
    fn missing_problem_fields_are_filled_from_the_answer() {
        let problem = decode_problem(
            404,
            Some("application/problem+json; charset=utf-8"),
            br#"{"detail":"no topic named x"}"#,
        );
        assert_eq!(problem.problem_type, "about:blank");
        assert_eq!(problem.title, "Not Found");
        assert_eq!(problem.status, 404);
        assert_eq!(problem.detail, "no topic named x");
    }

    #[test]
    fn a_plain_text_body_becomes_the_detail() {
        let problem = decode_problem(502, Some("text/plain"), b"upstream went away\n");
        assert_eq!(problem.title, "Bad Gateway");
        assert_eq!(problem.status, 502);
        assert_eq!(problem.detail, "upstream went away");
        assert!(problem.extra.is_empty());
    }

    #[test]
    fn json_that_is_not_a_problem_becomes_the_detail() {
        let problem = decode_problem(400, Some("application/json"), br#"{"error":"bad"}"#);
        assert_eq!(problem.title, "Bad Request");
        assert_eq!(problem.detail, r#"{"error":"bad"}"#);
    }

    #[test]
    fn an_empty_body_gives_the_reason_phrase_alone() {
        let problem = decode_problem(503, None, b"");
        assert_eq!(problem.title, "Service Unavailable");
        assert_eq!(problem.detail, "");
        let error = ClientError::Problem {
            status: 503,
            problem: Box::new(problem),
        };
        assert_eq!(error.to_string(), "503 Service Unavailable");
    }

    #[test]
    fn a_long_body_is_cut_at_a_character_boundary() {
        let body = "é".repeat(SYNTHESIZED_DETAIL_BYTES_MAX);
        let problem = decode_problem(500, Some("text/html"), body.as_bytes());
        assert!(problem.detail.len() <= SYNTHESIZED_DETAIL_BYTES_MAX + '…'.len_utf8());
        assert!(problem.detail.ends_with('…'));
    }

    #[test]
    fn the_error_message_is_status_title_and_detail() {
        let problem = decode_problem(
            409,
            Some("application/problem+json"),
            br#"{"type":"about:blank","title":"Conflict","status":409,"detail":"topic t exists with 2 partitions"}"#,
        );
        let error = ClientError::Problem {
            status: 409,
            problem: Box::new(problem),
        };
        assert_eq!(
            error.to_string(),
            "409 Conflict: topic t exists with 2 partitions"
        );
        assert_eq!(error.status(), Some(409));
    }
}
