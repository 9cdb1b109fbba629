//! The OpenAPI 3.1 document, generated from the handlers' annotations and the DTOs.

use utoipa::OpenApi;

use crate::{api, dto, metrics, push, requests};

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
        push::patch_subscription,
        push::attempts,
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
        dto::PushRequest,
        dto::PushPatch,
        dto::PushView,
        dto::SubscriptionPatch,
        dto::AttemptDto,
        dto::AttemptList,
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
    let mut document = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(document) => document,
        Err(error) => return format!("{{\"error\":\"{error}\"}}"),
    };
    describe_errors(&mut document);
    document.to_string()
}

/// Every error answer is `application/problem+json`, and any operation can answer an error
/// the annotations do not list (415 for a missing Content-Type, 404 for a missing subscription,
/// 503 before recovery has finished, ...): error responses get that media type, and every
/// operation a `default` response of it.
fn describe_errors(document: &mut serde_json::Value) {
    let problem = serde_json::json!({
        "description": "An RFC 9457 problem: what is wrong and how to fix it",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDto"}}}
    });
    let Some(paths) = document
        .get_mut("paths")
        .and_then(serde_json::Value::as_object_mut)
    else {
        return;
    };
    for operations in paths.values_mut() {
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let Some(responses) = operation
                .get_mut("responses")
                .and_then(serde_json::Value::as_object_mut)
            else {
                continue;
            };
            for (status, response) in responses.iter_mut() {
                let is_error = status.starts_with('4') || status.starts_with('5');
                if let Some(content) = response
                    .get_mut("content")
                    .and_then(serde_json::Value::as_object_mut)
                    && is_error
                    && let Some(json) = content.remove("application/json")
                {
                    content.insert("application/problem+json".into(), json);
                }
            }
            responses
                .entry("default")
                .or_insert_with(|| problem.clone());
        }
    }
}
