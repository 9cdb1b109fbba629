//! A small parser for `text/event-stream` (the WHATWG "server-sent events" format), enough for
//! Herald's live tail and subscription streams.
//!
//! Bytes go in as they arrive from the socket, in chunks of any size; complete messages come out.
//! Lines end with `\n`, `\r\n` or `\r`. `data:` lines are joined with `\n`, a blank line ends a
//! message, lines starting with `:` are comments (keep-alives), and a message without data is not
//! dispatched. The parser is pure: no I/O, no async.

/// Longest line, and longest message, the parser buffers, in bytes. Herald's events are at most
/// 1 MiB and a delivery wraps one, so this leaves ample room while bounding what a broken server
/// can make the client hold.
pub const MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field; `None` for the default type, `message`.
    pub event: Option<String>,
    /// The last `id:` field seen in the stream so far (it carries over between messages).
    pub id: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// The stream sent a line or message longer than [`MESSAGE_BYTES_MAX`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event-stream message is longer than {limit} bytes", limit = MESSAGE_BYTES_MAX)]
pub struct SseTooLong;

/// Incremental event-stream parser: feed it chunks with [`SseParser::push`].
#[derive(Debug, Default)]
pub struct SseParser {
    /// The bytes of the line being received.
    line: Vec<u8>,
    /// The previous chunk ended in `\r`, so a `\n` starting this one belongs to that line end.
    after_carriage_return: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    last_id: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes a chunk and appends the messages it completed to `messages`.
    pub fn push(&mut self, chunk: &[u8], messages: &mut Vec<SseMessage>) -> Result<(), SseTooLong> {
        let mut rest = chunk;
        if rest.is_empty() {
            return Ok(());
        }
        if self.after_carriage_return {
            self.after_carriage_return = false;
            if let Some(stripped) = rest.strip_prefix(b"\n") {
                rest = stripped;
            }
        }
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n' || byte == b'\r') {
            self.append_to_line(&rest[..end])?;
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, messages)?;
            let ended_by_carriage_return = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if ended_by_carriage_return {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_carriage_return = true,
                }
            }
        }
        self.append_to_line(rest)
    }

    fn append_to_line(&mut self, bytes: &[u8]) -> Result<(), SseTooLong> {
        if self.line.len() + bytes.len() > MESSAGE_BYTES_MAX {
            return Err(SseTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(
        &mut self,
        line: &[u8],
        messages: &mut Vec<SseMessage>,
    ) -> Result<(), SseTooLong> {
        if line.is_empty() {
            self.dispatch(messages);
            return Ok(());
        }
        if line.starts_with(b":") {
            return Ok(());
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > MESSAGE_BYTES_MAX {
                    return Err(SseTooLong);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.event = Some(value.to_owned()),
            // The standard ignores an id containing NUL.
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            // `retry` and unknown fields matter only to a browser's reconnection logic.
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, messages: &mut Vec<SseMessage>) {
        let event = self.event.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        messages.push(SseMessage {
            event: event.filter(|name| !name.is_empty() && name != "message"),
            id: self.last_id.clone(),
            data: std::mem::take(&mut self.data),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseMessage> {
        let mut parser = SseParser::new();
        let mut messages = Vec::new();
        for chunk in chunks {
            parser.push(chunk, &mut messages).unwrap();
        }
        messages
    }

    fn data(text: &str) -> SseMessage {
        SseMessage {
            data: text.to_owned(),
            ..SseMessage::default()
        }
    }

    #[test]
    fn a_blank_line_ends_a_message() {
        let messages = parse_chunks(&[b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\n"]);
        assert_eq!(messages, vec![data("{\"a\":1}"), data("{\"b\":2}")]);
    }

    #[test]
    fn data_lines_are_joined_with_newlines() {
        let messages = parse_chunks(&[b"data: first\ndata: second\ndata\n\n"]);
        assert_eq!(messages, vec![data("first\nsecond\n")]);
    }

    #[test]
    fn a_message_split_across_chunks_at_every_byte_is_the_same() {
        let stream =
            b"event: delivery\r\nid: r-1\r\ndata: {\"x\":\r\n\r\n: keep-alive\r\n\rdata:2\r\r";
        let whole = parse_chunks(&[stream]);
        assert_eq!(
            whole,
            vec![
                SseMessage {
                    event: Some("delivery".to_owned()),
                    id: Some("r-1".to_owned()),
                    data: "{\"x\":".to_owned(),
                },
                SseMessage {
                    event: None,
                    id: Some("r-1".to_owned()),
                    data: "2".to_owned(),
                },
            ]
        );
        for split in 0..stream.len() {
            let (head, tail) = stream.split_at(split);
            assert_eq!(parse_chunks(&[head, tail]), whole, "split at {split}");
        }
        let single_bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_chunks(&single_bytes), whole);
    }

    #[test]
    fn comments_and_messages_without_data_are_not_dispatched() {
        let messages = parse_chunks(&[b": ping\n\nevent: nothing\n\nretry: 10\nfoo: bar\n\n"]);
        assert!(messages.is_empty(), "{messages:?}");
    }

    #[test]
    fn only_one_space_after_the_colon_is_removed() {
        let messages = parse_chunks(&[b"data:  two spaces\n\ndata:none\n\n"]);
        assert_eq!(messages, vec![data(" two spaces"), data("none")]);
    }

    #[test]
    fn an_unfinished_message_is_not_dispatched() {
        let messages = parse_chunks(&[b"data: complete\n\ndata: cut off\n"]);
        assert_eq!(messages, vec![data("complete")]);
    }

    #[test]
    fn the_default_event_type_is_none() {
        let messages = parse_chunks(&[b"event: message\ndata: x\n\n"]);
        assert_eq!(messages, vec![data("x")]);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_an_error() {
        let mut parser = SseParser::new();
        let mut messages = Vec::new();
        let chunk = vec![b'a'; 1024 * 1024];
        let mut result = Ok(());
        for _ in 0..=MESSAGE_BYTES_MAX / chunk.len() {
            result = parser.push(&chunk, &mut messages);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseTooLong));
    }
}
