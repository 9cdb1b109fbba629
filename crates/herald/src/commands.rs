//! The client commands: each turns its flags into [`herald_client::Client`] calls and prints the
//! answers, as tables or as the server's JSON.
//!
//! Output goes to a `&mut dyn Write` so a broken pipe (`herald read t | head`) ends the command
//! quietly instead of panicking, and messages that are not the answer (warnings, "the stream
//! ended") go to stderr so `--output json` stays parseable.

use std::io::{self, Read, Write};
use std::path::Path;

use futures_util::StreamExt;
use herald_client::{
    AckResponse, Client, Consumer, Delivery, PublishResult, PullRequest, ReadQuery, RequestAnswer,
    RequestOptions, Retention, RetrySettings, StoredEvent, Subscription, SubscriptionSettings,
    TailEvent, Topic, TopicSettings,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::CommandError;
use crate::cli::{
    AttemptsArgs, Command, DlqCommand, ExtendArgs, GlobalArgs, NackArgs, Output, PublishArgs,
    PullArgs, ReadArgs, ReceiptArgs, RedriveArgs, RejectArgs, ReplyArgs, RequestArgs, SeekArgs,
    SubCommand, SubCreateArgs, TailArgs, TopicCommand, TopicCreateArgs, WebhookArgs,
};
use crate::event::{EventAttributes, parse_batch, parse_data};
use crate::table::{Table, write_fields};

/// The long-poll of `--follow` when `--wait` is not given.
pub const FOLLOW_WAIT: &str = "20s";

/// Runs a client command against the server named in `global`, printing to stdout.
pub fn main(global: &GlobalArgs, command: Command) -> Result<(), CommandError> {
    let mut client =
        Client::try_new(&global.server).map_err(|error| CommandError::Usage(error.to_string()))?;
    if let Some(service) = &global.service {
        client = client.with_service(service.as_str());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| CommandError::Failed(format!("cannot start the runtime: {error}")))?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = runtime.block_on(execute(&client, global.output, command, &mut out));
    let result = result.and_then(|()| out.flush().map_err(CommandError::from));
    match result {
        // The reader went away (`| head`): what it wanted was printed.
        Err(CommandError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Runs one client command, writing its output to `out`.
pub async fn execute(
    client: &Client,
    output: Output,
    command: Command,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let printer = Printer { output };
    match command {
        Command::Serve(_) => Err(CommandError::Failed(
            "`herald serve` is not a client command".to_owned(),
        )),
        Command::Bench(_) => Err(CommandError::Failed(
            "`herald bench` is not a client command".to_owned(),
        )),
        Command::Topic(command) => topic(client, printer, command, out).await,
        Command::Publish(args) => publish(client, printer, args, out).await,
        Command::Read(args) => read(client, printer, args, out).await,
        Command::Sub(command) => subscription(client, printer, command, out).await,
        Command::Pull(args) => pull(client, printer, args, out).await,
        Command::Ack(args) => ack(client, printer, args, out).await,
        Command::Nack(args) => nack(client, printer, args, out).await,
        Command::Extend(args) => extend(client, printer, args, out).await,
        Command::Reject(args) => reject(client, printer, args, out).await,
        Command::Dlq(DlqCommand::Redrive(args)) => redrive(client, printer, args, out).await,
        Command::Tail(args) => tail(client, printer, args, out).await,
        Command::Services => services(client, printer, out).await,
        Command::Request(args) => request(client, printer, args, out).await,
        Command::Reply(args) => reply(client, printer, args, out).await,
    }
}

#[derive(Debug, Clone, Copy)]
struct Printer {
    output: Output,
}

impl Printer {
    fn json(self) -> bool {
        self.output == Output::Json
    }
}

/// Prints an answer as indented JSON.
fn write_json(out: &mut dyn Write, value: &impl Serialize) -> Result<(), CommandError> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Prints one item of a stream as one line of JSON.
fn write_json_line(out: &mut dyn Write, value: &impl Serialize) -> Result<(), CommandError> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

// ---- topics ----

async fn topic(
    client: &Client,
    printer: Printer,
    command: TopicCommand,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    match command {
        TopicCommand::Create(args) => topic_create(client, printer, args, out).await,
        TopicCommand::List => {
            let topics = client.list_topics().await?;
            if printer.json() {
                return write_json(out, &json!({ "topics": topics }));
            }
            let mut table = Table::new(&[
                "NAME",
                "PARTITIONS",
                "EVENTS",
                "BYTES",
                "MAX AGE",
                "MAX BYTES",
                "DEDUP WINDOW",
            ]);
            for topic in &topics {
                table.row(vec![
                    topic.name.clone(),
                    topic.partitions.len().to_string(),
                    retained_events(topic).to_string(),
                    topic
                        .partitions
                        .iter()
                        .map(|partition| partition.bytes)
                        .sum::<u64>()
                        .to_string(),
                    or_dash(topic.retention.max_age.as_deref()),
                    max_bytes_text(&topic.retention),
                    or_dash(topic.dedup_window.as_deref()),
                ]);
            }
            table.write(out)?;
            Ok(())
        }
        TopicCommand::Describe { name } => {
            let topic = client.describe_topic(&name).await?;
            if printer.json() {
                return write_json(out, &topic);
            }
            write_topic(out, &topic)
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            if !printer.json() {
                writeln!(out, "deleted topic {name}")?;
            }
            Ok(())
        }
    }
}

async fn topic_create(
    client: &Client,
    printer: Printer,
    args: TopicCreateArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let retention = (args.max_age.is_some() || args.max_bytes.is_some()).then_some(Retention {
        max_age: args.max_age,
        max_bytes: args.max_bytes,
    });
    let settings = TopicSettings {
        partitions: args.partitions,
        retention,
        dedup_window: args.dedup_window,
    };
    let (topic, created) = client.create_topic(&args.name, &settings).await?;
    if printer.json() {
        return write_json(out, &topic);
    }
    if created {
        writeln!(out, "created topic {}", topic.name)?;
    } else {
        writeln!(
            out,
            "topic {} already exists with these settings",
            topic.name
        )?;
    }
    Ok(())
}

fn write_topic(out: &mut dyn Write, topic: &Topic) -> Result<(), CommandError> {
    write_fields(
        out,
        &[
            ("name", topic.name.clone()),
            ("created", or_dash(topic.created.as_deref())),
            ("max age", or_dash(topic.retention.max_age.as_deref())),
            ("max bytes", max_bytes_text(&topic.retention)),
            ("dedup window", or_dash(topic.dedup_window.as_deref())),
            ("events", retained_events(topic).to_string()),
        ],
    )?;
    writeln!(out)?;
    let mut table = Table::new(&["PARTITION", "START", "END", "EVENTS", "BYTES"]);
    for partition in &topic.partitions {
        table.row(vec![
            partition.partition.to_string(),
            partition.start_offset.to_string(),
            partition.end_offset.to_string(),
            partition
                .end_offset
                .saturating_sub(partition.start_offset)
                .to_string(),
            partition.bytes.to_string(),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// The events a topic holds now, over all partitions.
fn retained_events(topic: &Topic) -> u64 {
    topic
        .partitions
        .iter()
        .map(|partition| partition.end_offset.saturating_sub(partition.start_offset))
        .sum()
}

fn max_bytes_text(retention: &Retention) -> String {
    retention
        .max_bytes
        .map_or_else(|| "no limit".to_owned(), |bytes| bytes.to_string())
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

// ---- publishing ----

async fn publish(
    client: &Client,
    printer: Printer,
    args: PublishArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let attributes = EventAttributes {
        event_type: args.event_type,
        source: args.source,
        id: args.id,
        partition_key: args.key,
    };
    let result = if let Some(file) = &args.batch_file {
        let name = file.display().to_string();
        let text = read_input(file)?;
        let mut events = parse_batch(&name, &text).map_err(CommandError::Usage)?;
        if attributes.any() {
            events = events
                .into_iter()
                .map(|data| attributes.build(&args.topic, data))
                .collect();
        }
        client.publish_batch(&args.topic, &events).await?
    } else {
        // clap requires DATA when there is no --batch-file.
        let data = args.data.unwrap_or_default();
        let text = if data == "-" {
            read_input(Path::new("-"))?
        } else {
            data
        };
        let data = parse_data(&text).map_err(CommandError::Usage)?;
        if attributes.any() {
            let event = attributes.build(&args.topic, data);
            client.publish_event(&args.topic, &event).await?
        } else {
            client.publish_json(&args.topic, &data).await?
        }
    };
    write_publish_result(out, printer, &result)
}

fn write_publish_result(
    out: &mut dyn Write,
    printer: Printer,
    result: &PublishResult,
) -> Result<(), CommandError> {
    if printer.json() {
        return write_json(out, result);
    }
    let mut table = Table::new(&["ID", "PARTITION", "OFFSET", "DUPLICATE"]);
    for event in &result.events {
        table.row(vec![
            event.id.clone(),
            event.partition.to_string(),
            event.offset.to_string(),
            if event.duplicate { "yes" } else { "no" }.to_owned(),
        ]);
    }
    table.write(out)?;
    Ok(())
}

/// Reads a file, or stdin for `-`; a failure is the user's to fix, so a usage error.
fn read_input(path: &Path) -> Result<String, CommandError> {
    if path == Path::new("-") {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| CommandError::Usage(format!("cannot read stdin: {error}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .map_err(|error| CommandError::Usage(format!("cannot read {}: {error}", path.display())))
}

// ---- reading ----

async fn read(
    client: &Client,
    printer: Printer,
    args: ReadArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut query = ReadQuery {
        partition: args.partition,
        offset: args.offset,
        from_time: args.from_time,
        limit: args.limit,
        wait: args.wait,
    };
    if !args.follow {
        let answer = client.read(&args.topic, &query).await?;
        if printer.json() {
            return write_json(out, &answer);
        }
        if !answer.events.is_empty() {
            let mut table = Table::new(&["OFFSET", "TIMESTAMP", "TYPE", "ID", "DATA"]);
            for stored in &answer.events {
                table.row(vec![
                    stored.offset.to_string(),
                    stored.timestamp.clone(),
                    attribute(&stored.event, "type"),
                    attribute(&stored.event, "id"),
                    data_text(&stored.event),
                ]);
            }
            table.write(out)?;
        } else {
            writeln!(out, "no events")?;
        }
        writeln!(out, "next offset: {}", answer.next_offset)?;
        return Ok(());
    }

    if query.wait.is_none() {
        query.wait = Some(FOLLOW_WAIT.to_owned());
    }
    loop {
        let answer = client.read(&args.topic, &query).await?;
        for stored in &answer.events {
            write_stored_event(out, printer, stored)?;
        }
        out.flush()?;
        query.offset = Some(answer.next_offset);
        query.from_time = None;
    }
}

fn write_stored_event(
    out: &mut dyn Write,
    printer: Printer,
    stored: &StoredEvent,
) -> Result<(), CommandError> {
    if printer.json() {
        return write_json_line(out, stored);
    }
    writeln!(
        out,
        "{}:{}  {}  {}  {}  {}",
        stored.partition,
        stored.offset,
        stored.timestamp,
        attribute(&stored.event, "type"),
        attribute(&stored.event, "id"),
        data_text(&stored.event)
    )?;
    Ok(())
}

/// A string attribute of a CloudEvent, or `-`.
fn attribute(event: &Value, name: &str) -> String {
    match event.get(name) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// A CloudEvent's data on one line: compact JSON, or `base64:...` for binary data.
fn data_text(event: &Value) -> String {
    if let Some(data) = event.get("data") {
        return data.to_string();
    }
    match event.get("data_base64") {
        Some(Value::String(encoded)) => format!("base64:{encoded}"),
        _ => String::new(),
    }
}

async fn tail(
    client: &Client,
    printer: Printer,
    args: TailArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let messages = client.tail_messages(&args.patterns).await?;
    let mut messages = std::pin::pin!(messages);
    while let Some(message) = messages.next().await {
        let message = message?;
        let parsed: Option<TailEvent> = serde_json::from_str(&message.data).ok();
        match (printer.json(), parsed) {
            (true, _) => match serde_json::from_str::<Value>(&message.data) {
                Ok(value) => write_json_line(out, &value)?,
                Err(_) => writeln!(out, "{}", message.data.replace('\n', " "))?,
            },
            (false, Some(tailed)) => writeln!(
                out,
                "{}/{}:{}  {}  {}  {}",
                tailed.topic,
                tailed.partition,
                tailed.offset,
                attribute(&tailed.event, "type"),
                attribute(&tailed.event, "id"),
                data_text(&tailed.event)
            )?,
            (false, None) => {
                let name = message.event.as_deref().unwrap_or("message");
                writeln!(out, "{name}: {}", message.data.replace('\n', " "))?;
            }
        }
        out.flush()?;
    }
    eprintln!("the server closed the stream");
    Ok(())
}

// ---- subscriptions ----

async fn subscription(
    client: &Client,
    printer: Printer,
    command: SubCommand,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    match command {
        SubCommand::Create(args) => subscription_create(client, printer, *args, out).await,
        SubCommand::List => {
            let subscriptions = client.list_subscriptions().await?;
            if printer.json() {
                return write_json(out, &json!({ "subscriptions": subscriptions }));
            }
            let mut table = Table::new(&[
                "NAME",
                "MODE",
                "TOPICS",
                "START",
                "ACK TIMEOUT",
                "MAX DELIVERIES",
                "DEAD LETTER TOPIC",
            ]);
            for subscription in &subscriptions {
                table.row(vec![
                    subscription.name.clone(),
                    or_dash(subscription.mode.as_deref()),
                    subscription.topics.join(","),
                    value_text(subscription.start.as_ref()),
                    or_dash(subscription.ack_timeout.as_deref()),
                    subscription
                        .max_deliveries
                        .map_or_else(|| "-".to_owned(), |count| count.to_string()),
                    or_dash(subscription.dead_letter_topic.as_deref()),
                ]);
            }
            table.write(out)?;
            Ok(())
        }
        SubCommand::Describe { name } => {
            let subscription = client.describe_subscription(&name).await?;
            if printer.json() {
                return write_json(out, &subscription);
            }
            write_subscription(out, &subscription)
        }
        SubCommand::Delete { name } => {
            client.delete_subscription(&name).await?;
            if !printer.json() {
                writeln!(out, "deleted subscription {name}")?;
            }
            Ok(())
        }
        SubCommand::Seek(args) => seek(client, printer, args, out).await,
        SubCommand::Redrive(args) => redrive(client, printer, args, out).await,
        SubCommand::Attempts(args) => attempts(client, printer, args, out).await,
        SubCommand::Webhook(args) => webhook(client, printer, args, out).await,
    }
}

async fn attempts(
    client: &Client,
    printer: Printer,
    args: AttemptsArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let attempts = client.attempts(&args.name, args.limit).await?;
    if printer.json() {
        return write_json(out, &json!({ "attempts": attempts }));
    }
    let mut table = Table::new(&[
        "TIME", "EVENT", "ATTEMPT", "STATUS", "LATENCY", "OUTCOME", "ERROR",
    ]);
    for attempt in &attempts {
        table.row(vec![
            attempt.time.clone(),
            format!("{}/{}/{}", attempt.topic, attempt.partition, attempt.offset),
            attempt.attempt.to_string(),
            attempt
                .status
                .map_or_else(|| "-".to_owned(), |status| status.to_string()),
            format!("{:.1}ms", attempt.latency_ms),
            attempt.outcome.clone(),
            or_dash(attempt.error.as_deref()),
        ]);
    }
    table.write(out)?;
    Ok(())
}

async fn webhook(
    client: &Client,
    printer: Printer,
    args: WebhookArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut push = serde_json::Map::new();
    let fields = [
        ("url", args.url.map(Value::from)),
        ("secret", args.secret.map(Value::from)),
        (
            "rotate_secret",
            args.rotate_secret.then_some(Value::Bool(true)),
        ),
        ("secret_grace", args.secret_grace.map(Value::from)),
        ("timeout", args.timeout.map(Value::from)),
        ("max_in_flight", args.max_in_flight.map(Value::from)),
        ("content_mode", args.content_mode.map(Value::from)),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            push.insert(key.to_owned(), value);
        }
    }
    let subscription = client.update_push(&args.name, &Value::Object(push)).await?;
    if printer.json() {
        return write_json(out, &subscription);
    }
    writeln!(out, "updated webhook subscription {}", subscription.name)?;
    write_new_secret(out, &subscription)?;
    Ok(())
}

/// Prints a push secret the server shows this once.
fn write_new_secret(out: &mut dyn Write, subscription: &Subscription) -> Result<(), CommandError> {
    if let Some(secret) = subscription
        .push
        .as_ref()
        .and_then(|push| push.get("secret"))
        .and_then(Value::as_str)
    {
        writeln!(
            out,
            "webhook secret (shown only now; receivers verify webhook-signature with it): {secret}"
        )?;
    }
    Ok(())
}

async fn subscription_create(
    client: &Client,
    printer: Printer,
    args: SubCreateArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let retry = (args.retry_initial.is_some()
        || args.retry_max.is_some()
        || args.retry_multiplier.is_some())
    .then_some(RetrySettings {
        initial: args.retry_initial,
        max: args.retry_max,
        multiplier: args.retry_multiplier,
    });
    let settings = SubscriptionSettings {
        topics: args.topics,
        mode: args.mode,
        start: args.start,
        filter: args.filter,
        ack_timeout: args.ack_timeout,
        max_deliveries: args.max_deliveries,
        dead_letter_topic: args.dead_letter_topic,
        retry,
        ordering: args.ordering,
        push: args.push.map(|url| {
            let mut push = serde_json::Map::new();
            push.insert("url".into(), Value::from(url));
            let optional = [
                ("secret", args.push_secret.map(Value::from)),
                ("timeout", args.push_timeout.map(Value::from)),
                ("max_in_flight", args.push_max_in_flight.map(Value::from)),
                ("content_mode", args.push_content_mode.map(Value::from)),
            ];
            for (key, value) in optional {
                if let Some(value) = value {
                    push.insert(key.to_owned(), value);
                }
            }
            Value::Object(push)
        }),
    };
    let (subscription, created) = client.create_subscription(&args.name, &settings).await?;
    if printer.json() {
        return write_json(out, &subscription);
    }
    if created {
        writeln!(out, "created subscription {}", subscription.name)?;
        write_new_secret(out, &subscription)?;
    } else {
        writeln!(
            out,
            "subscription {} already exists with these settings",
            subscription.name
        )?;
    }
    Ok(())
}

fn write_subscription(
    out: &mut dyn Write,
    subscription: &Subscription,
) -> Result<(), CommandError> {
    let retry = subscription.retry.as_ref().map(|retry| {
        format!(
            "initial {}, max {}, multiplier {}",
            retry.initial.as_deref().unwrap_or("-"),
            retry.max.as_deref().unwrap_or("-"),
            retry
                .multiplier
                .map_or_else(|| "-".to_owned(), |multiplier| multiplier.to_string())
        )
    });
    let mut fields = vec![
        ("name", subscription.name.clone()),
        ("mode", or_dash(subscription.mode.as_deref())),
        ("topics", subscription.topics.join(", ")),
        ("start", value_text(subscription.start.as_ref())),
        ("filter", value_text(subscription.filter.as_ref())),
        ("ack timeout", or_dash(subscription.ack_timeout.as_deref())),
        (
            "max deliveries",
            subscription
                .max_deliveries
                .map_or_else(|| "-".to_owned(), |count| count.to_string()),
        ),
        (
            "dead letter topic",
            or_dash(subscription.dead_letter_topic.as_deref()),
        ),
        ("retry", or_dash(retry.as_deref())),
        ("ordering", or_dash(subscription.ordering.as_deref())),
        ("push", value_text(subscription.push.as_ref())),
    ];
    if let Some(stats) = &subscription.stats {
        fields.extend([
            ("backlog", stats.backlog.to_string()),
            ("in flight", stats.in_flight.to_string()),
            ("delivered", stats.delivered.to_string()),
            ("acked", stats.acked.to_string()),
            ("redelivered", stats.redelivered.to_string()),
            ("dead lettered", stats.dead_lettered.to_string()),
        ]);
        if subscription.mode.as_deref() == Some("queue") || stats.oldest_pending_age.is_some() {
            fields.push((
                "oldest pending age",
                or_dash(stats.oldest_pending_age.as_deref()),
            ));
        }
        if let Some(push) = &stats.push {
            let field = |name: &str| value_text(push.get(name));
            fields.push(("webhook state", field("state")));
            fields.push(("webhook last error", field("last_error")));
            fields.push((
                "webhook attempts",
                format!(
                    "{} delivered, {} failed since the server started",
                    field("attempts_delivered"),
                    field("attempts_failed")
                ),
            ));
        }
        fields.push(("consumers", stats.consumers.len().to_string()));
    }
    write_fields(out, &fields)?;
    if let Some(stats) = &subscription.stats
        && !stats.consumers.is_empty()
    {
        write_consumers(out, &stats.consumers)?;
    }
    Ok(())
}

/// The members of a consumer group under the `consumers:` field, one indented line each.
fn write_consumers(out: &mut dyn Write, consumers: &[Consumer]) -> Result<(), CommandError> {
    let mut table = Table::new(&["NAME", "PARTITIONS", "LAST SEEN"]);
    for consumer in consumers {
        let partitions = if consumer.partitions.is_empty() {
            "-".to_owned()
        } else {
            consumer.partitions.join(",")
        };
        table.row(vec![
            consumer.name.clone(),
            partitions,
            or_dash(consumer.last_seen.as_deref()),
        ]);
    }
    for line in table.render().lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// A JSON value on one line: strings bare, `null` as `-`.
fn value_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

async fn seek(
    client: &Client,
    printer: Printer,
    args: SeekArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let target = seek_target(&args.to);
    let answer = client.seek(&args.name, &target).await?;
    if printer.json() {
        if !answer.is_null() {
            write_json(out, &answer)?;
        }
        return Ok(());
    }
    writeln!(out, "moved subscription {} to {}", args.name, args.to)?;
    Ok(())
}

/// `PARTITION:OFFSET` (both whole numbers) becomes `{"partition", "offset"}`; anything else
/// (`earliest`, `latest`, a time) is sent as a string.
pub fn seek_target(text: &str) -> Value {
    if let Some((partition, offset)) = text.split_once(':')
        && let (Ok(partition), Ok(offset)) = (partition.parse::<u32>(), offset.parse::<u64>())
    {
        return json!({ "partition": partition, "offset": offset });
    }
    Value::from(text)
}

async fn redrive(
    client: &Client,
    printer: Printer,
    args: RedriveArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client.redrive(&args.name, args.max).await?;
    if printer.json() {
        return write_json(out, &answer);
    }
    writeln!(out, "redriven {} events", answer.redriven)?;
    Ok(())
}

// ---- consuming ----

async fn pull(
    client: &Client,
    printer: Printer,
    args: PullArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    // clap makes --ack, --nack and --extend exclusive.
    let settle = if args.ack {
        Some(Settle::Ack)
    } else if args.nack {
        Some(Settle::Nack { delay: args.delay })
    } else {
        args.extend.map(|by| Settle::Extend { by })
    };
    let mut request = PullRequest {
        max: args.max,
        wait: args.wait,
        consumer: args.consumer,
    };
    if !args.follow {
        let answer = client.pull(&args.subscription, &request).await?;
        if printer.json() {
            write_json(out, &answer)?;
        } else if answer.deliveries.is_empty() {
            writeln!(out, "no deliveries")?;
        } else {
            let mut table = Table::new(&[
                "RECEIPT",
                "ATTEMPT",
                "TOPIC",
                "PARTITION",
                "OFFSET",
                "TYPE",
                "ID",
                "DATA",
            ]);
            for delivery in &answer.deliveries {
                table.row(vec![
                    delivery.receipt.clone(),
                    delivery.attempt.to_string(),
                    delivery.topic.clone(),
                    delivery.partition.to_string(),
                    delivery.offset.to_string(),
                    attribute(&delivery.event, "type"),
                    attribute(&delivery.event, "id"),
                    data_text(&delivery.event),
                ]);
            }
            table.write(out)?;
        }
        if let Some(settle) = &settle
            && !answer.deliveries.is_empty()
        {
            let done =
                settle_deliveries(client, &args.subscription, settle, &answer.deliveries).await?;
            if !printer.json() {
                writeln!(
                    out,
                    "{} {done} of {}",
                    settle.past_tense(),
                    answer.deliveries.len()
                )?;
            }
        }
        return Ok(());
    }

    if request.wait.is_none() {
        request.wait = Some(FOLLOW_WAIT.to_owned());
    }
    loop {
        let answer = client.pull(&args.subscription, &request).await?;
        for delivery in &answer.deliveries {
            write_delivery_line(out, printer, delivery)?;
        }
        out.flush()?;
        if let Some(settle) = &settle
            && !answer.deliveries.is_empty()
        {
            settle_deliveries(client, &args.subscription, settle, &answer.deliveries).await?;
        }
    }
}

fn write_delivery_line(
    out: &mut dyn Write,
    printer: Printer,
    delivery: &Delivery,
) -> Result<(), CommandError> {
    if printer.json() {
        return write_json_line(out, delivery);
    }
    writeln!(
        out,
        "{}  attempt {}  {}/{}:{}  {}  {}  {}",
        delivery.receipt,
        delivery.attempt,
        delivery.topic,
        delivery.partition,
        delivery.offset,
        attribute(&delivery.event, "type"),
        attribute(&delivery.event, "id"),
        data_text(&delivery.event)
    )?;
    Ok(())
}

/// What `pull` does with the deliveries it printed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Settle {
    Ack,
    /// Deliver again after `delay`, or after the subscription's retry backoff.
    Nack {
        delay: Option<String>,
    },
    /// Lengthen the leases by `by`.
    Extend {
        by: String,
    },
}

impl Settle {
    fn past_tense(&self) -> &'static str {
        match self {
            Settle::Ack => "acked",
            Settle::Nack { .. } => "nacked",
            Settle::Extend { .. } => "extended",
        }
    }
}

/// Acks, nacks or extends the deliveries; returns for how many it worked, and warns on stderr
/// about the others.
async fn settle_deliveries(
    client: &Client,
    subscription: &str,
    settle: &Settle,
    deliveries: &[Delivery],
) -> Result<usize, CommandError> {
    let receipts: Vec<String> = deliveries
        .iter()
        .map(|delivery| delivery.receipt.clone())
        .collect();
    let answer = match settle {
        Settle::Ack => client.ack(subscription, &receipts).await?,
        Settle::Nack { delay } => {
            client
                .nack(subscription, &receipts, delay.as_deref())
                .await?
        }
        Settle::Extend { by } => client.extend(subscription, &receipts, by).await?,
    };
    warn_about_receipts(&answer);
    Ok(answer
        .results
        .iter()
        .filter(|result| result.status == "ok")
        .count())
}

fn warn_about_receipts(answer: &AckResponse) {
    for result in &answer.results {
        if result.status != "ok" {
            eprintln!("warning: receipt {} is {}", result.receipt, result.status);
        }
    }
}

async fn ack(
    client: &Client,
    printer: Printer,
    args: ReceiptArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client.ack(&args.subscription, &args.receipts).await?;
    write_receipt_results(out, printer, &answer)
}

async fn nack(
    client: &Client,
    printer: Printer,
    args: NackArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client
        .nack(&args.subscription, &args.receipts, args.delay.as_deref())
        .await?;
    write_receipt_results(out, printer, &answer)
}

async fn extend(
    client: &Client,
    printer: Printer,
    args: ExtendArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client
        .extend(&args.subscription, &args.receipts, &args.by)
        .await?;
    write_receipt_results(out, printer, &answer)
}

async fn reject(
    client: &Client,
    printer: Printer,
    args: RejectArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client
        .reject(&args.subscription, &args.receipts, args.reason.as_deref())
        .await?;
    write_receipt_results(out, printer, &answer)
}

fn write_receipt_results(
    out: &mut dyn Write,
    printer: Printer,
    answer: &AckResponse,
) -> Result<(), CommandError> {
    if printer.json() {
        return write_json(out, answer);
    }
    let mut table = Table::new(&["RECEIPT", "STATUS"]);
    for result in &answer.results {
        table.row(vec![result.receipt.clone(), result.status.clone()]);
    }
    table.write(out)?;
    Ok(())
}

// ---- services ----

async fn services(
    client: &Client,
    printer: Printer,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let answer = client.services().await?;
    if printer.json() {
        return write_json(out, &answer);
    }
    let mut table = Table::new(&["NAME", "PUBLISHES", "CONSUMES", "LAST SEEN"]);
    for service in &answer.services {
        table.row(vec![
            service.name.clone(),
            service.publishes.join(","),
            service.consumes.join(","),
            or_dash(service.last_seen.as_deref()),
        ]);
    }
    table.write(out)?;
    Ok(())
}

// ---- action / response ----

/// DATA as JSON, or stdin's for `-`.
fn data_argument(data: String) -> Result<Value, CommandError> {
    let text = if data == "-" {
        read_input(Path::new("-"))?
    } else {
        data
    };
    parse_data(&text).map_err(CommandError::Usage)
}

async fn request(
    client: &Client,
    printer: Printer,
    args: RequestArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let data = data_argument(args.data)?;
    let options = RequestOptions {
        timeout: args.timeout,
        deadline: args.deadline,
        reply_group: args.reply_group,
        context: args.context,
    };
    let answer = client.request_json(&args.topic, &data, &options).await?;
    match &answer {
        RequestAnswer::Replied {
            request_id,
            reply,
            context,
        } => {
            if printer.json() {
                return write_json(
                    out,
                    &json!({"request_id": request_id, "reply": reply, "context": context}),
                );
            }
            write_fields(
                out,
                &[
                    ("request", request_id.clone()),
                    ("status", "replied".to_owned()),
                    ("reply type", attribute(reply, "type")),
                    ("reply data", data_text(reply)),
                    ("context", value_text(Some(context))),
                ],
            )?;
        }
        RequestAnswer::Accepted { request_id, status } => {
            if printer.json() {
                return write_json(out, &json!({"request_id": request_id, "status": status}));
            }
            write_fields(
                out,
                &[("request", request_id.clone()), ("status", status.clone())],
            )?;
            if status == "pending" {
                eprintln!(
                    "no reply yet: any instance of the reply group can pull it from _replies.<group>, or see `curl {}/v1/requests/{request_id}`",
                    client.base_url()
                );
            }
        }
    }
    Ok(())
}

async fn reply(
    client: &Client,
    printer: Printer,
    args: ReplyArgs,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let data = data_argument(args.data)?;
    client.reply_json(&args.request_id, &data).await?;
    if printer.json() {
        return write_json(
            out,
            &json!({"request_id": args.request_id, "status": "replied"}),
        );
    }
    write_fields(
        out,
        &[
            ("request", args.request_id),
            ("status", "replied".to_owned()),
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seek_target_is_a_position_or_a_string() {
        assert_eq!(seek_target("0:5"), json!({"partition": 0, "offset": 5}));
        assert_eq!(seek_target("earliest"), json!("earliest"));
        assert_eq!(
            seek_target("2026-11-01T00:00:00Z"),
            json!("2026-11-01T00:00:00Z")
        );
        assert_eq!(seek_target("a:5"), json!("a:5"));
    }

    #[test]
    fn data_is_shown_on_one_line() {
        assert_eq!(data_text(&json!({"data": {"a": [1, 2]}})), r#"{"a":[1,2]}"#);
        assert_eq!(data_text(&json!({"data_base64": "AAE="})), "base64:AAE=");
        assert_eq!(data_text(&json!({"id": "x"})), "");
    }
}
