//! Starts a real Herald server in this process and talks to it over HTTP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_http::{ServerConfig, serve};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Server {
    pub base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// A response: status, headers and the body parsed as JSON (or `Null`).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// Asserts a problem+json answer with this status, and returns its detail.
    #[track_caller]
    pub fn problem(&self, status: u16) -> String {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|value| value.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(
            self.body["type"]
                .as_str()
                .is_some_and(|kind| kind.starts_with("urn:herald:problem:"))
        );
        assert!(self.body["title"].is_string());
        let detail = self.body["detail"].as_str().expect("a detail").to_owned();
        assert!(!detail.is_empty());
        detail
    }
}

impl Server {
    pub async fn start() -> Server {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().to_owned();
        let mut server = Server::start_in(&path, |_| {}).await;
        server._temp = Some(temp);
        server
    }

    pub async fn start_with(configure: impl FnOnce(&mut ServerConfig)) -> Server {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().to_owned();
        let mut server = Server::start_in(&path, configure).await;
        server._temp = Some(temp);
        server
    }

    pub async fn start_in(data_dir: &Path, configure: impl FnOnce(&mut ServerConfig)) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut config = ServerConfig {
            data_dir: data_dir.to_owned(),
            http: address,
            ..ServerConfig::default()
        };
        configure(&mut config);
        let (shutdown, stop) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(config, listener, async move {
            let _ = stop.await;
        }));
        let server = Server {
            base: format!("http://{address}"),
            client: reqwest::Client::new(),
            shutdown: Some(shutdown),
            handle: Some(handle),
            data_dir: data_dir.to_owned(),
            _temp: None,
        };
        for _ in 0..500 {
            if server.get("/readyz").await.status == StatusCode::OK {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server did not become ready");
    }

    /// Shuts down gracefully and waits until it has stopped; the data directory stays.
    pub async fn stop(mut self) -> Option<tempfile::TempDir> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
        self._temp.take()
    }

    /// Stops and starts again on the same data directory.
    pub async fn restart(self) -> Server {
        let data_dir = self.data_dir.clone();
        let temp = self.stop().await;
        let mut server = Server::start_in(&data_dir, |_| {}).await;
        server._temp = temp;
        server
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, Vec::new(), &[]).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.send(Method::DELETE, path, None, Vec::new(), &[]).await
    }

    pub async fn put_json(&self, path: &str, body: Value) -> Answer {
        self.send(
            Method::PUT,
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
            &[],
        )
        .await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Answer {
        self.send(
            Method::POST,
            path,
            Some("application/json"),
            body.to_string().into_bytes(),
            &[],
        )
        .await
    }

    /// Publishes a batch of structured events.
    pub async fn publish_batch(&self, topic: &str, events: &[Value]) -> Answer {
        let body = serde_json::to_vec(events).unwrap();
        self.send(
            Method::POST,
            &format!("/v1/topics/{topic}/events"),
            Some("application/cloudevents-batch+json"),
            body,
            &[],
        )
        .await
    }

    /// Reads a partition from `offset` (up to 1000 events).
    pub async fn read(&self, topic: &str, partition: u32, offset: u64) -> Answer {
        self.get(&format!(
            "/v1/topics/{topic}/events?partition={partition}&offset={offset}&limit=1000"
        ))
        .await
    }
}

/// A structured CloudEvent.
pub fn event(id: &str, data: Value) -> Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "/tests", "type": "test.event", "data": data})
}

/// A structured CloudEvent with a partition key.
pub fn keyed_event(id: &str, key: &str) -> Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "/tests", "type": "test.event", "partitionkey": key, "data": {"id": id}})
}
