//! The OpenAPI 3.1 document, generated from the handlers' annotations and the DTOs.

use utoipa::OpenApi;

use crate::{api, dto, metrics, requests};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "A durable event broker for microservices. Errors are RFC 9457 application/problem+json."
    ),
    paths(
        api::healthz,
        api::readyz,
        metrics::metrics,
        api::services,
        api::put_topic,
        api::list_topics,
        api::get_topic,
        api::delete_topic,
        api::publish,
        api::read_events,
        api::tail,
        api::put_subscription,
        api::list_subscriptions,
        api::get_subscription,
        api::delete_subscription,
        api::pull,
        api::ack,
        api::nack,
        api::extend,
        api::reject,
        api::seek,
        api::redrive,
        requests::post_request,
        requests::post_reply,
        requests::get_request,
    ),
    components(schemas(
        dto::Health,
        dto::ProblemDto,
        dto::TopicRequest,
        dto::RetentionDto,
        dto::TopicDto,
        dto::TopicList,
        dto::PartitionDto,
        dto::RetentionView,
        dto::PublishResponse,
        dto::PublishedDto,
        dto::ReadResponse,
        dto::StoredEventDto,
        dto::TailMessage,
        dto::SubscriptionRequest,
        dto::RetryDto,
        dto::SubscriptionDto,
        dto::SubscriptionList,
        dto::SubscriptionStats,
        dto::ConsumerDto,
        dto::PushStats,
        dto::RetryView,
        dto::PullRequest,
        dto::PullResponse,
        dto::RequestQuery,
        dto::RequestReplied,
        dto::RequestAccepted,
        dto::RequestDto,
        dto::ReplyDto,
        dto::DeliveryDto,
        dto::ReceiptsRequest,
        dto::ReceiptsResponse,
        dto::ReceiptResult,
        dto::SeekRequest,
        dto::RedriveRequest,
        dto::ServiceList,
        dto::ServiceDto,
    ))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
}
