//! A real `herald serve` process for end-to-end tests: started on a free port over a data
//! directory, stopped gracefully or killed with SIGKILL.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const HERALD: &str = env!("CARGO_BIN_EXE_herald");

pub struct RealServer {
    pub url: String,
    pub child: Child,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl RealServer {
    /// Starts `herald serve` on `data_dir` and waits until it is ready.
    pub fn start(data_dir: &Path) -> RealServer {
        let port = free_port();
        let mut command = Command::new(HERALD);
        command
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--http", &format!("127.0.0.1:{port}")])
            .current_dir(data_dir.parent().unwrap())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (name, _) in std::env::vars() {
            if name.starts_with("HERALD_") {
                command.env_remove(name);
            }
        }
        let child = command.spawn().expect("herald serve starts");
        let server = RealServer {
            url: format!("http://127.0.0.1:{port}"),
            child,
        };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(response) = reqwest::blocking::get(format!("{}/readyz", server.url))
                && response.status().is_success()
            {
                return server;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("herald serve did not become ready on {}", server.url);
    }

    /// SIGKILL: no shutdown, no final sync.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "herald did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs a CLI command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_at(&self.url, args)
    }
}

/// Runs a CLI command against the server at `url` (from any thread).
pub fn cli_at(url: &str, args: &[&str]) -> Output {
    Command::new(HERALD)
        .args(["--server", url])
        .args(args)
        .env_remove("HERALD_URL")
        .env_remove("HERALD_SERVICE")
        .stdin(Stdio::null())
        .output()
        .expect("the CLI runs")
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
