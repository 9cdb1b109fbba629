//! `GET /metrics`: Prometheus text format.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use herald_core::SubscriptionStats;
use herald_log::SYNC_BUCKETS_MICROS;

use crate::api::App;

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[utoipa::path(get, path = "/metrics", tag = "service", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let Some(broker) = app.broker.get() else {
        return crate::problem::Problem::not_ready().into_response();
    };
    let mut out = String::with_capacity(4096);
    let _ = writeln!(
        out,
        "# HELP herald_requests_pending Requests (action/response) waiting for a reply or their deadline."
    );
    let _ = writeln!(out, "# TYPE herald_requests_pending gauge");
    let _ = writeln!(out, "herald_requests_pending {}", broker.pending_requests());
    let topics = broker.list_topics();
    let _ = writeln!(
        out,
        "# HELP herald_topic_published_events_total Events stored by publishes since the server started."
    );
    let _ = writeln!(out, "# TYPE herald_topic_published_events_total counter");
    for topic in &topics {
        let _ = writeln!(
            out,
            "herald_topic_published_events_total{{topic=\"{}\"}} {}",
            label(&topic.record.name),
            topic.published_events
        );
    }
    let _ = writeln!(
        out,
        "# HELP herald_topic_published_bytes_total Bytes of events stored by publishes since the server started."
    );
    let _ = writeln!(out, "# TYPE herald_topic_published_bytes_total counter");
    for topic in &topics {
        let _ = writeln!(
            out,
            "herald_topic_published_bytes_total{{topic=\"{}\"}} {}",
            label(&topic.record.name),
            topic.published_bytes
        );
    }
    let _ = writeln!(
        out,
        "# HELP herald_partition_end_offset One past the last offset of a partition."
    );
    let _ = writeln!(out, "# TYPE herald_partition_end_offset gauge");
    for topic in &topics {
        for partition in &topic.partitions {
            let _ = writeln!(
                out,
                "herald_partition_end_offset{{topic=\"{}\",partition=\"{}\"}} {}",
                label(&topic.record.name),
                partition.partition,
                partition.end_offset
            );
        }
    }
    let subscriptions = broker.list_subscriptions();
    let gauges: [(&str, &str, &str); 6] = [
        (
            "backlog",
            "gauge",
            "Events after the subscription's committed positions.",
        ),
        (
            "in_flight",
            "gauge",
            "Events delivered and not yet acknowledged.",
        ),
        (
            "delivered_total",
            "counter",
            "Deliveries (kept across restarts).",
        ),
        (
            "acked_total",
            "counter",
            "Events acknowledged (kept across restarts).",
        ),
        (
            "redelivered_total",
            "counter",
            "Deliveries that were repeats.",
        ),
        (
            "dead_lettered_total",
            "counter",
            "Events moved to the dead-letter topic.",
        ),
    ];
    let mut stats = Vec::with_capacity(subscriptions.len());
    for subscription in &subscriptions {
        // (backlog, in flight, delivered, acked, redelivered, dead lettered)
        let numbers = match broker.subscription_stats(subscription).await {
            SubscriptionStats::Stream(stats) => (
                stats.backlog,
                stats.in_flight,
                stats.delivered,
                stats.acked,
                0,
                0,
            ),
            SubscriptionStats::Queue(stats) => (
                stats.backlog,
                stats.in_flight,
                stats.delivered,
                stats.acked,
                stats.redelivered,
                stats.dead_lettered,
            ),
        };
        stats.push((subscription.name.clone(), numbers));
    }
    for (name, kind, help) in gauges {
        let _ = writeln!(out, "# HELP herald_subscription_{name} {help}");
        let _ = writeln!(out, "# TYPE herald_subscription_{name} {kind}");
        for (subscription, stats) in &stats {
            let value = match name {
                "backlog" => stats.0,
                "in_flight" => stats.1,
                "delivered_total" => stats.2,
                "acked_total" => stats.3,
                "redelivered_total" => stats.4,
                _ => stats.5,
            };
            let _ = writeln!(
                out,
                "herald_subscription_{name}{{subscription=\"{}\"}} {value}",
                label(subscription)
            );
        }
    }
    write_push(&mut out, &app, &subscriptions);
    if let Some(histogram) = broker.store().sync_histogram() {
        let _ = writeln!(
            out,
            "# HELP herald_fsync_duration_seconds Time fdatasync took on partition logs."
        );
        let _ = writeln!(out, "# TYPE herald_fsync_duration_seconds histogram");
        let mut cumulative = 0;
        for (bound, count) in SYNC_BUCKETS_MICROS.iter().zip(&histogram.buckets) {
            cumulative += count;
            let _ = writeln!(
                out,
                "herald_fsync_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "herald_fsync_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            histogram.count
        );
        let _ = writeln!(
            out,
            "herald_fsync_duration_seconds_sum {}",
            histogram.sum_micros as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "herald_fsync_duration_seconds_count {}",
            histogram.count
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}

/// A per-subscription webhook gauge: its name, its help, and how to read it.
type PushGauge = (
    &'static str,
    &'static str,
    fn(&herald_push::PushStatus) -> u32,
);

/// Webhook delivery of every push subscription.
fn write_push(out: &mut String, app: &App, subscriptions: &[Arc<herald_core::Subscription>]) {
    let Some(dispatcher) = app.push.get() else {
        return;
    };
    let statuses: Vec<(String, herald_push::PushStatus)> = subscriptions
        .iter()
        .filter_map(|subscription| {
            dispatcher
                .status(subscription)
                .map(|status| (label(&subscription.name), status))
        })
        .collect();
    let _ = writeln!(
        out,
        "# HELP herald_push_attempts_total Webhook attempts by result (kept across restarts)."
    );
    let _ = writeln!(out, "# TYPE herald_push_attempts_total counter");
    for (name, status) in &statuses {
        for (result, count) in [("delivered", status.delivered), ("failed", status.failed)] {
            let _ = writeln!(
                out,
                "herald_push_attempts_total{{subscription=\"{name}\",result=\"{result}\"}} {count}"
            );
        }
    }
    let gauges: [PushGauge; 2] = [
        ("in_flight", "Webhook requests under way.", |status| {
            status.in_flight
        }),
        (
            "consecutive_failures",
            "Failed webhook attempts in a row.",
            |status| status.consecutive_failures,
        ),
    ];
    for (gauge, help, value) in gauges {
        let _ = writeln!(out, "# HELP herald_push_{gauge} {help}");
        let _ = writeln!(out, "# TYPE herald_push_{gauge} gauge");
        for (name, status) in &statuses {
            let _ = writeln!(
                out,
                "herald_push_{gauge}{{subscription=\"{name}\"}} {}",
                value(status)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP herald_push_state The state of a webhook subscription's endpoint: 1 for the current state."
    );
    let _ = writeln!(out, "# TYPE herald_push_state gauge");
    for (name, status) in &statuses {
        for state in [
            herald_push::PushState::Healthy,
            herald_push::PushState::Retrying,
            herald_push::PushState::OpenCircuit,
            herald_push::PushState::Disabled,
        ] {
            let _ = writeln!(
                out,
                "herald_push_state{{subscription=\"{name}\",state=\"{}\"}} {}",
                state.as_str(),
                u8::from(status.state == state)
            );
        }
    }
}
