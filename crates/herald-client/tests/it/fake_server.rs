//! A scripted HTTP/1.1 server on `127.0.0.1:0`: it answers each connection with the next
//! canned reply and records what it was sent. Enough to check what the client puts on the wire
//! and how it reads answers, without a Herald server.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

/// One canned answer. `chunks` are written one after the other with a pause between them,
/// without a length, and the connection is closed at the end (how an event stream ends).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub chunks: Vec<String>,
}

impl Reply {
    pub fn new(status: u16, content_type: &'static str, body: &str) -> Reply {
        Reply {
            status,
            content_type,
            chunks: vec![body.to_owned()],
        }
    }

    pub fn json(status: u16, body: &str) -> Reply {
        Reply::new(status, "application/json", body)
    }

    pub fn stream(content_type: &'static str, chunks: &[&str]) -> Reply {
        Reply {
            status: 200,
            content_type,
            chunks: chunks.iter().map(|chunk| (*chunk).to_owned()).collect(),
        }
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the request body is JSON")
    }
}

#[derive(Debug)]
pub struct FakeServer {
    pub url: String,
    thread: JoinHandle<Vec<Recorded>>,
}

impl FakeServer {
    /// Answers one connection per reply, in order, then stops listening.
    pub fn start(replies: Vec<Reply>) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free local port");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let thread = std::thread::spawn(move || {
            let mut recorded = Vec::new();
            for reply in replies {
                let (stream, _) = listener.accept().expect("a connection");
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                recorded.push(read_request(&mut reader));
                write_reply(stream, &reply);
            }
            recorded
        });
        FakeServer { url, thread }
    }

    /// Waits until every reply was sent and returns the requests.
    pub fn requests(self) -> Vec<Recorded> {
        self.thread.join().expect("the fake server does not panic")
    }
}

fn read_request(reader: &mut impl BufRead) -> Recorded {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header line");
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    Recorded {
        method,
        target,
        headers,
        body,
    }
}

fn write_reply(mut stream: std::net::TcpStream, reply: &Reply) {
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-type: {}\r\nconnection: close\r\n",
        reply.status, reply.content_type
    );
    if let [body] = reply.chunks.as_slice() {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    // The client may hang up early (e.g. a CLI that exits); that is not the server's failure.
    let _ = stream.write_all(head.as_bytes());
    for chunk in &reply.chunks {
        let _ = stream.write_all(chunk.as_bytes());
        let _ = stream.flush();
        if reply.chunks.len() > 1 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
