//! [`Client`]: one method per endpoint of Herald's HTTP API.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::{ClientError, decode_problem};
use crate::model::{
    AckResponse, Attempt, AttemptList, Delivery, PublishResult, PullRequest, PullResponse,
    ReadQuery, ReadResponse, RedriveResponse, RequestAnswer, RequestInfo, RequestOptions, Services,
    Subscription, SubscriptionList, TailEvent, Topic, TopicList,
};
use crate::sse::{SseMessage, SseParser};

/// The header that names the calling service.
pub const SERVICE_HEADER: &str = "herald-service";

/// How long to wait for a TCP connection before calling the server unreachable. Answers
/// themselves have no overall timeout, since long polls and event streams are meant to stay open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

const JSON: &str = "application/json";
const CLOUDEVENT: &str = "application/cloudevents+json";
const CLOUDEVENT_BATCH: &str = "application/cloudevents-batch+json";
const EVENT_STREAM: &str = "text/event-stream";

/// A client of one Herald server. Cloning is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The base URL as given (less a trailing `/`), for messages.
    base_url: String,
    /// The parsed base URL, or why it does not parse; the error surfaces at the first call so
    /// that constructing a client cannot fail.
    base: Result<Url, String>,
    service: Option<String>,
}

/// A request being built, with its method and path for messages.
struct Call {
    builder: RequestBuilder,
    label: String,
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

impl Client {
    /// A client of the server at `base_url`, e.g. `http://127.0.0.1:7070`. An invalid URL is
    /// reported by the first call.
    pub fn new(base_url: &str) -> Client {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            // Without TLS there is no backend to initialize, so building cannot fail.
            .expect("an HTTP client without TLS always builds");
        Client::with_http_client(base_url, http)
    }

    /// Like [`Client::new`], but an invalid URL is an error now rather than at the first call.
    pub fn try_new(base_url: &str) -> Result<Client, ClientError> {
        let client = Client::new(base_url);
        match &client.base {
            Ok(_) => Ok(client),
            Err(message) => Err(ClientError::other(message.clone())),
        }
    }

    /// Like [`Client::new`], with a `reqwest::Client` configured by the caller (pool size,
    /// timeouts), e.g. for benchmarks.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Client {
        let trimmed = base_url.trim_end_matches('/');
        let base = match Url::parse(trimmed) {
            Ok(url) if url.cannot_be_a_base() || !matches!(url.scheme(), "http" | "https") => Err(
                format!("invalid server URL {trimmed:?}: expected http://HOST:PORT"),
            ),
            Ok(url) => Ok(url),
            Err(error) => Err(format!(
                "invalid server URL {trimmed:?}: {error}; expected http://HOST:PORT"
            )),
        };
        Client {
            http,
            base_url: trimmed.to_owned(),
            base,
            service: None,
        }
    }

    /// Sends `herald-service: {name}` with every request, naming the calling service.
    pub fn with_service(mut self, name: impl Into<String>) -> Client {
        self.service = Some(name.into());
        self
    }

    /// The server's base URL, as given to [`Client::new`] less a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    // ---- topics ----

    /// `PUT /v1/topics/{name}`: creates the topic, or confirms it exists with these settings.
    /// `settings` is usually a [`crate::TopicSettings`]; any serializable body is sent as is.
    /// Returns the topic and whether it was created (201) rather than already there (200).
    pub async fn create_topic(
        &self,
        name: &str,
        settings: &(impl Serialize + ?Sized),
    ) -> Result<(Topic, bool), ClientError> {
        let call = self.call(Method::PUT, &["v1", "topics", name])?;
        let call = call.map(|builder| builder.json(settings));
        let (response, label) = self.send(call).await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((decode(response, &label).await?, created))
    }

    /// `GET /v1/topics`.
    pub async fn list_topics(&self) -> Result<Vec<Topic>, ClientError> {
        let list: TopicList = self.get(&["v1", "topics"]).await?;
        Ok(list.topics)
    }

    /// `GET /v1/topics/{name}`.
    pub async fn describe_topic(&self, name: &str) -> Result<Topic, ClientError> {
        self.get(&["v1", "topics", name]).await
    }

    /// `DELETE /v1/topics/{name}`.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let call = self.call(Method::DELETE, &["v1", "topics", name])?;
        self.send(call).await?;
        Ok(())
    }

    // ---- publishing ----

    /// Publishes `data` as the data of one event (`application/json`); the server fills in the
    /// CloudEvent attributes.
    pub async fn publish_json(
        &self,
        topic: &str,
        data: &Value,
    ) -> Result<PublishResult, ClientError> {
        self.publish_body(topic, JSON, encode(data)?, &[]).await
    }

    /// Publishes one structured CloudEvent (`application/cloudevents+json`).
    pub async fn publish_event(
        &self,
        topic: &str,
        event: &Value,
    ) -> Result<PublishResult, ClientError> {
        self.publish_body(topic, CLOUDEVENT, encode(event)?, &[])
            .await
    }

    /// Publishes CloudEvents as one batch (`application/cloudevents-batch+json`): stored all
    /// together or not at all.
    pub async fn publish_batch(
        &self,
        topic: &str,
        events: &[Value],
    ) -> Result<PublishResult, ClientError> {
        self.publish_body(topic, CLOUDEVENT_BATCH, encode(events)?, &[])
            .await
    }

    /// Publishes a batch body that is already serialized (a JSON array of CloudEvents), so a
    /// benchmark can encode once and send many times.
    pub async fn publish_batch_raw(
        &self,
        topic: &str,
        body: Bytes,
    ) -> Result<PublishResult, ClientError> {
        self.publish_body(topic, CLOUDEVENT_BATCH, body, &[]).await
    }

    /// Publishes one event in binary mode: `headers` carry the attributes (`ce-id`, `ce-source`,
    /// `ce-type`, ...), `body` is the data, of type `content_type`.
    pub async fn publish_binary(
        &self,
        topic: &str,
        headers: &[(String, String)],
        content_type: &str,
        body: impl Into<Bytes>,
    ) -> Result<PublishResult, ClientError> {
        self.publish_body(topic, content_type, body.into(), headers)
            .await
    }

    async fn publish_body(
        &self,
        topic: &str,
        content_type: &str,
        body: Bytes,
        headers: &[(String, String)],
    ) -> Result<PublishResult, ClientError> {
        let call = self.call(Method::POST, &["v1", "topics", topic, "events"])?;
        let call = call.map(|mut builder| {
            for (name, value) in headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            builder.header(CONTENT_TYPE, content_type).body(body)
        });
        let (response, label) = self.send(call).await?;
        decode(response, &label).await
    }

    // ---- action / response ----

    /// `POST /v1/topics/{topic}/requests`: publishes `data` as a request event and waits for
    /// the reply up to the options' timeout.
    pub async fn request_json(
        &self,
        topic: &str,
        data: &Value,
        options: &RequestOptions,
    ) -> Result<RequestAnswer, ClientError> {
        let mut url = self.url(&["v1", "topics", topic, "requests"])?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(timeout) = &options.timeout {
                query.append_pair("timeout", timeout);
            }
            if let Some(deadline) = &options.deadline {
                query.append_pair("deadline", deadline);
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let context = options.context.as_ref().map(encode).transpose()?;
        let body = encode(data)?;
        let call = self.call_url(Method::POST, url).map(|mut builder| {
            if let Some(group) = &options.reply_group {
                builder = builder.header("herald-reply-group", group.as_str());
            }
            if let Some(context) = context {
                builder = builder.header("herald-context", context.as_ref());
            }
            builder.header(CONTENT_TYPE, JSON).body(body)
        });
        let (response, label) = self.send(call).await?;
        let status = response.status();
        let answer: Value = decode(response, &label).await?;
        let text = |name: &str| answer[name].as_str().unwrap_or_default().to_owned();
        Ok(if status == StatusCode::OK {
            RequestAnswer::Replied {
                request_id: text("request_id"),
                reply: answer["reply"].clone(),
                context: answer["context"].clone(),
            }
        } else {
            RequestAnswer::Accepted {
                request_id: text("request_id"),
                status: text("status"),
            }
        })
    }

    /// `POST /v1/requests/{id}/reply` with `data` as the reply's data (`application/json`).
    pub async fn reply_json(&self, request_id: &str, data: &Value) -> Result<(), ClientError> {
        let call = self.call(Method::POST, &["v1", "requests", request_id, "reply"])?;
        let body = encode(data)?;
        let call = call.map(|builder| builder.header(CONTENT_TYPE, JSON).body(body));
        self.send(call).await?;
        Ok(())
    }

    /// `POST /v1/requests/{id}/reply` with a structured CloudEvent as the reply.
    pub async fn reply_event(&self, request_id: &str, event: &Value) -> Result<(), ClientError> {
        let call = self.call(Method::POST, &["v1", "requests", request_id, "reply"])?;
        let body = encode(event)?;
        let call = call.map(|builder| builder.header(CONTENT_TYPE, CLOUDEVENT).body(body));
        self.send(call).await?;
        Ok(())
    }

    /// `GET /v1/requests/{id}`.
    pub async fn request_info(&self, request_id: &str) -> Result<RequestInfo, ClientError> {
        self.get(&["v1", "requests", request_id]).await
    }

    // ---- reading ----

    /// `GET /v1/topics/{topic}/events`: reads one partition from an offset or a time.
    pub async fn read(&self, topic: &str, query: &ReadQuery) -> Result<ReadResponse, ClientError> {
        let mut url = self.url(&["v1", "topics", topic, "events"])?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("partition", &query.partition.to_string());
            if let Some(offset) = query.offset {
                pairs.append_pair("offset", &offset.to_string());
            }
            if let Some(from_time) = &query.from_time {
                pairs.append_pair("from_time", from_time);
            }
            if let Some(limit) = query.limit {
                pairs.append_pair("limit", &limit.to_string());
            }
            if let Some(wait) = &query.wait {
                pairs.append_pair("wait", wait);
            }
        }
        let call = self.call_url(Method::GET, url);
        let (response, label) = self.send(call).await?;
        decode(response, &label).await
    }

    /// `GET /v1/tail`: every event published from now on to a topic matching one of `patterns`,
    /// as it arrives. The stream ends when the server closes it; a message whose data is not a
    /// [`TailEvent`] is a [`ClientError::Decode`] item.
    pub async fn tail(
        &self,
        patterns: &[String],
    ) -> Result<impl Stream<Item = Result<TailEvent, ClientError>> + Send + 'static, ClientError>
    {
        let messages = self.tail_messages(patterns).await?;
        Ok(messages.map(|item| item.and_then(|message| decode_message(&message, "GET /v1/tail"))))
    }

    /// Like [`Client::tail`], yielding the raw server-sent messages.
    pub async fn tail_messages(
        &self,
        patterns: &[String],
    ) -> Result<impl Stream<Item = Result<SseMessage, ClientError>> + Send + 'static, ClientError>
    {
        let mut url = self.url(&["v1", "tail"])?;
        url.query_pairs_mut()
            .append_pair("topics", &patterns.join(","));
        self.event_stream(url).await
    }

    // ---- subscriptions ----

    /// `PUT /v1/subscriptions/{name}`: creates the subscription, or confirms it exists with
    /// these settings. `settings` is usually a [`crate::SubscriptionSettings`]; any serializable
    /// body is sent as is. Returns the subscription and whether it was created (201).
    pub async fn create_subscription(
        &self,
        name: &str,
        settings: &(impl Serialize + ?Sized),
    ) -> Result<(Subscription, bool), ClientError> {
        let call = self.call(Method::PUT, &["v1", "subscriptions", name])?;
        let call = call.map(|builder| builder.json(settings));
        let (response, label) = self.send(call).await?;
        let created = response.status() == StatusCode::CREATED;
        Ok((decode(response, &label).await?, created))
    }

    /// `GET /v1/subscriptions`.
    pub async fn list_subscriptions(&self) -> Result<Vec<Subscription>, ClientError> {
        let list: SubscriptionList = self.get(&["v1", "subscriptions"]).await?;
        Ok(list.subscriptions)
    }

    /// `GET /v1/subscriptions/{name}`: the settings and `stats`.
    pub async fn describe_subscription(&self, name: &str) -> Result<Subscription, ClientError> {
        self.get(&["v1", "subscriptions", name]).await
    }

    /// `DELETE /v1/subscriptions/{name}`.
    pub async fn delete_subscription(&self, name: &str) -> Result<(), ClientError> {
        let call = self.call(Method::DELETE, &["v1", "subscriptions", name])?;
        self.send(call).await?;
        Ok(())
    }

    /// `PATCH /v1/subscriptions/{name}`: changes a webhook subscription's `push` settings
    /// (`{"url", "secret", "rotate_secret", "secret_grace", "timeout", "max_in_flight",
    /// "content_mode"}`, each optional) and enables it again after a 410 Gone. A new secret is
    /// in the answer's `push.secret`, this once.
    pub async fn update_push(&self, name: &str, push: &Value) -> Result<Subscription, ClientError> {
        let call = self.call(Method::PATCH, &["v1", "subscriptions", name])?;
        let call = call.map(|builder| builder.json(&json!({ "push": push })));
        let (response, label) = self.send(call).await?;
        decode(response, &label).await
    }

    /// `GET /v1/subscriptions/{name}/attempts`: a webhook subscription's latest attempts,
    /// newest first (the server's default number when `limit` is `None`).
    pub async fn attempts(
        &self,
        name: &str,
        limit: Option<u32>,
    ) -> Result<Vec<Attempt>, ClientError> {
        let mut url = self.url(&["v1", "subscriptions", name, "attempts"])?;
        if let Some(limit) = limit {
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
        }
        let (response, label) = self.send(self.call_url(Method::GET, url)).await?;
        let list: AttemptList = decode(response, &label).await?;
        Ok(list.attempts)
    }

    /// `POST /v1/subscriptions/{name}/pull`.
    pub async fn pull(
        &self,
        name: &str,
        request: &PullRequest,
    ) -> Result<PullResponse, ClientError> {
        self.post(&["v1", "subscriptions", name, "pull"], request)
            .await
    }

    /// `POST /v1/subscriptions/{name}/ack`.
    pub async fn ack(&self, name: &str, receipts: &[String]) -> Result<AckResponse, ClientError> {
        self.post(
            &["v1", "subscriptions", name, "ack"],
            &json!({ "receipts": receipts }),
        )
        .await
    }

    /// `POST /v1/subscriptions/{name}/nack`: deliver again after `delay` (a duration string), or
    /// after the subscription's retry backoff when `None`.
    pub async fn nack(
        &self,
        name: &str,
        receipts: &[String],
        delay: Option<&str>,
    ) -> Result<AckResponse, ClientError> {
        let mut body = json!({ "receipts": receipts });
        if let Some(delay) = delay {
            body["delay"] = Value::from(delay);
        }
        self.post(&["v1", "subscriptions", name, "nack"], &body)
            .await
    }

    /// `POST /v1/subscriptions/{name}/extend`: lengthen the leases by `by` (a duration string).
    pub async fn extend(
        &self,
        name: &str,
        receipts: &[String],
        by: &str,
    ) -> Result<AckResponse, ClientError> {
        self.post(
            &["v1", "subscriptions", name, "extend"],
            &json!({ "receipts": receipts, "by": by }),
        )
        .await
    }

    /// `POST /v1/subscriptions/{name}/reject`: move to the dead-letter topic now. The `reason`
    /// is kept with the dead-lettered event (`deadletterreason: rejected: <reason>`); without one
    /// the server says none was given.
    pub async fn reject(
        &self,
        name: &str,
        receipts: &[String],
        reason: Option<&str>,
    ) -> Result<AckResponse, ClientError> {
        let mut body = json!({ "receipts": receipts });
        if let Some(reason) = reason {
            body["reason"] = Value::from(reason);
        }
        self.post(&["v1", "subscriptions", name, "reject"], &body)
            .await
    }

    /// `POST /v1/subscriptions/{name}/seek`; `to` is `"earliest"`, `"latest"`, an RFC 3339 time
    /// or `{"partition": 0, "offset": 5}`. Returns the server's answer (`null` when it has no
    /// body).
    pub async fn seek(&self, name: &str, to: &Value) -> Result<Value, ClientError> {
        self.post(&["v1", "subscriptions", name, "seek"], &json!({ "to": to }))
            .await
    }

    /// `POST /v1/subscriptions/{name}/redrive`: move up to `max` events from the dead-letter
    /// topic back into this subscription only (the server's default when `None`). Returns how
    /// many were moved.
    pub async fn redrive(
        &self,
        name: &str,
        max: Option<u32>,
    ) -> Result<RedriveResponse, ClientError> {
        let body = match max {
            Some(max) => json!({ "max": max }),
            None => json!({}),
        };
        self.post(&["v1", "subscriptions", name, "redrive"], &body)
            .await
    }

    /// `GET /v1/subscriptions/{name}/events`: deliveries pushed as they arrive, at most
    /// `max_in_flight` unacknowledged at once (the server's default when `None`). Acks go through
    /// [`Client::ack`].
    pub async fn subscription_events(
        &self,
        name: &str,
        max_in_flight: Option<u32>,
    ) -> Result<impl Stream<Item = Result<Delivery, ClientError>> + Send + 'static, ClientError>
    {
        let mut url = self.url(&["v1", "subscriptions", name, "events"])?;
        if let Some(max_in_flight) = max_in_flight {
            url.query_pairs_mut()
                .append_pair("max_in_flight", &max_in_flight.to_string());
        }
        let label = format!("GET {}", url.path());
        let messages = self.event_stream(url).await?;
        Ok(messages.map(move |item| item.and_then(|message| decode_message(&message, &label))))
    }

    // ---- service endpoints ----

    /// `GET /v1/services`.
    pub async fn services(&self) -> Result<Services, ClientError> {
        self.get(&["v1", "services"]).await
    }

    /// `GET /healthz`: `Ok` when the process is up.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        let call = self.call(Method::GET, &["healthz"])?;
        self.send(call).await?;
        Ok(())
    }

    /// `GET /readyz`: `Ok` once recovery has finished; a 503 [`ClientError::Problem`] before.
    pub async fn readyz(&self) -> Result<(), ClientError> {
        let call = self.call(Method::GET, &["readyz"])?;
        self.send(call).await?;
        Ok(())
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let call = self.call(Method::GET, &["metrics"])?;
        let (response, label) = self.send(call).await?;
        let body = body_bytes(response, &label).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// `GET /openapi.json`.
    pub async fn openapi(&self) -> Result<Value, ClientError> {
        self.get(&["openapi.json"]).await
    }

    // ---- plumbing ----

    fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone().map_err(ClientError::other)?;
        url.path_segments_mut()
            // `base` was checked to be a base URL in `with_http_client`.
            .expect("an http URL can be a base")
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn call(&self, method: Method, segments: &[&str]) -> Result<Call, ClientError> {
        Ok(self.call_url(method, self.url(segments)?))
    }

    fn call_url(&self, method: Method, url: Url) -> Call {
        let label = format!("{method} {}", url.path());
        let mut builder = self.http.request(method, url);
        if let Some(service) = &self.service {
            builder = builder.header(SERVICE_HEADER, service.as_str());
        }
        Call { builder, label }
    }

    /// Sends the request; an answer with a 4xx or 5xx status becomes [`ClientError::Problem`].
    async fn send(&self, call: Call) -> Result<(Response, String), ClientError> {
        let Call { builder, label } = call;
        let response = builder
            .send()
            .await
            .map_err(|error| ClientError::from_transport(&self.base_url, &label, error))?;
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = body_bytes(response, &label).await?;
            let problem = decode_problem(status.as_u16(), content_type.as_deref(), &body);
            return Err(ClientError::Problem {
                status: status.as_u16(),
                problem: Box::new(problem),
            });
        }
        Ok((response, label))
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, ClientError> {
        let call = self.call(Method::GET, segments)?;
        let (response, label) = self.send(call).await?;
        decode(response, &label).await
    }

    async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &(impl Serialize + ?Sized),
    ) -> Result<T, ClientError> {
        let call = self.call(Method::POST, segments)?;
        let call = call.map(|builder| builder.json(body));
        let (response, label) = self.send(call).await?;
        decode(response, &label).await
    }

    async fn event_stream(
        &self,
        url: Url,
    ) -> Result<impl Stream<Item = Result<SseMessage, ClientError>> + Send + 'static, ClientError>
    {
        let call = self
            .call_url(Method::GET, url)
            .map(|builder| builder.header(ACCEPT, EVENT_STREAM));
        let (response, label) = self.send(call).await?;
        let body: ByteStream = Box::pin(response.bytes_stream());
        Ok(sse_stream(body, label))
    }
}

impl Call {
    fn map(self, edit: impl FnOnce(RequestBuilder) -> RequestBuilder) -> Call {
        Call {
            builder: edit(self.builder),
            label: self.label,
        }
    }
}

fn encode(value: &(impl Serialize + ?Sized)) -> Result<Bytes, ClientError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|error| ClientError::Other {
            message: format!("cannot encode the request body: {error}"),
            source: Some(Box::new(error)),
        })
}

async fn body_bytes(response: Response, label: &str) -> Result<Bytes, ClientError> {
    response.bytes().await.map_err(|error| ClientError::Other {
        message: format!("{label}: the answer broke off: {error}"),
        source: Some(Box::new(error)),
    })
}

/// Decodes a JSON answer; an empty body decodes as `null`, so endpoints that answer without a
/// body can be read as [`Value`].
async fn decode<T: DeserializeOwned>(response: Response, label: &str) -> Result<T, ClientError> {
    let body = body_bytes(response, label).await?;
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        &body
    };
    serde_json::from_slice(body).map_err(|source| ClientError::Decode {
        request: label.to_owned(),
        source,
    })
}

fn decode_message<T: DeserializeOwned>(
    message: &SseMessage,
    label: &str,
) -> Result<T, ClientError> {
    serde_json::from_str(&message.data).map_err(|source| ClientError::Decode {
        request: label.to_owned(),
        source,
    })
}

/// Turns an answer's body into its server-sent messages. After an error the stream ends.
fn sse_stream(
    body: ByteStream,
    label: String,
) -> impl Stream<Item = Result<SseMessage, ClientError>> + Send + 'static {
    struct State {
        body: ByteStream,
        parser: SseParser,
        pending: VecDeque<SseMessage>,
        scratch: Vec<SseMessage>,
        label: String,
        finished: bool,
    }
    let state = State {
        body,
        parser: SseParser::new(),
        pending: VecDeque::new(),
        scratch: Vec::new(),
        label,
        finished: false,
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(message) = state.pending.pop_front() {
                return Some((Ok(message), state));
            }
            if state.finished {
                return None;
            }
            match state.body.next().await {
                Some(Ok(chunk)) => {
                    if let Err(error) = state.parser.push(&chunk, &mut state.scratch) {
                        state.finished = true;
                        let error = ClientError::Other {
                            message: format!("{}: {error}", state.label),
                            source: Some(Box::new(error)),
                        };
                        return Some((Err(error), state));
                    }
                    state.pending.extend(state.scratch.drain(..));
                }
                Some(Err(error)) => {
                    state.finished = true;
                    let error = ClientError::Other {
                        message: format!("{}: the event stream broke off: {error}", state.label),
                        source: Some(Box::new(error)),
                    };
                    return Some((Err(error), state));
                }
                None => return None,
            }
        }
    })
}
