//! A `herald serve` process that `herald-bench publish` starts for one round and stops after it:
//! the real binary, on a fresh data directory, on a free port of 127.0.0.1.
//!
//! The binary is the one built next to `herald-bench` (`target/release/herald` for a release
//! build), so the two always come from the same checkout and profile. The process runs in its
//! own scratch directory with every `HERALD_*` variable removed, so that no `herald.toml` or
//! environment of the caller changes its settings; its log goes to a file in that directory and
//! is shown when it fails. [`HeraldProcess::stop`] sends SIGTERM (a graceful shutdown, which
//! syncs), waits, and deletes the data; dropping it without `stop` kills it and deletes the data
//! too.

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::machine;

/// How long the server may take to answer `GET /readyz` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a graceful shutdown may take before the process is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `herald` should be: next to the running `herald-bench`.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe().context("finding the herald-bench executable")?;
    let directory = bench
        .parent()
        .context("the herald-bench executable has no directory")?;
    Ok(directory.join(format!("herald{}", std::env::consts::EXE_SUFFIX)))
}

/// Checks that `binary` exists, with a message that says how to build it.
pub fn check_binary(binary: &Path) -> anyhow::Result<()> {
    if binary.is_file() {
        return Ok(());
    }
    let profile = binary
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or("release");
    let flag = if profile == "release" {
        "--release "
    } else {
        ""
    };
    bail!(
        "{} does not exist: herald-bench publish runs the real server, built next to herald-bench. \
         Build both first: `cargo build {flag}-p herald -p herald-bench` (or pass --server URL to \
         measure a server that is already running)",
        binary.display()
    )
}

/// A free TCP port on 127.0.0.1, as the kernel hands one out. Another process could take it
/// before the server binds it; the server then fails to start and says so.
pub fn free_local_address() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    listener.local_addr()
}

/// What every bench that loads a real server starts with: the binary checked, a fresh
/// directory on the disk under test, the load generator's runtime, and `herald serve` started
/// in that directory and ready.
#[derive(Debug)]
pub struct BenchServer {
    pub scratch: tempfile::TempDir,
    pub machine: machine::MachineFacts,
    pub runtime: tokio::runtime::Runtime,
    pub process: HeraldProcess,
}

impl BenchServer {
    pub fn start(
        binary: &Path,
        scratch_root: &Path,
        prefix: &str,
        allow_in_memory: bool,
        client_threads: usize,
        fsync: &str,
    ) -> anyhow::Result<BenchServer> {
        check_binary(binary)?;
        let (scratch, machine) = machine::scratch_directory(scratch_root, prefix, allow_in_memory)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(client_threads)
            .enable_all()
            .build()
            .context("starting the load generator's runtime")?;
        let mut process = HeraldProcess::start(binary, &scratch.path().join("herald"), fsync)?;
        process.wait_ready(&runtime)?;
        Ok(BenchServer {
            scratch,
            machine,
            runtime,
            process,
        })
    }
}

/// A running `herald serve`.
#[derive(Debug)]
pub struct HeraldProcess {
    child: Option<Child>,
    address: SocketAddr,
    /// The process's working directory, holding `data/` and `herald.log`; removed at the end.
    directory: PathBuf,
}

impl HeraldProcess {
    /// Starts `binary serve` with its data in `directory/data` (`directory` must not exist yet).
    /// Returns once the process runs; call [`HeraldProcess::wait_ready`] before using it.
    pub fn start(binary: &Path, directory: &Path, fsync: &str) -> anyhow::Result<HeraldProcess> {
        check_binary(binary)?;
        fs::create_dir(directory).with_context(|| format!("creating {}", directory.display()))?;
        let address = free_local_address().context("finding a free port")?;
        let log_path = directory.join("herald.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(directory.join("data"))
            .arg("--http")
            .arg(address.to_string())
            .arg("--fsync")
            .arg(fsync)
            .current_dir(directory)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("HERALD_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(HeraldProcess {
            child: Some(child),
            address,
            directory: directory.to_owned(),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The process id, to read its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where the server keeps its data.
    pub fn data_directory(&self) -> PathBuf {
        self.directory.join("data")
    }

    /// The server's log so far (the last lines), for error messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.directory.join("herald.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails, with the server's log, if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        let status = match self.child.as_mut() {
            Some(child) => child.try_wait()?,
            None => bail!("the server was stopped"),
        };
        if let Some(status) = status {
            self.child = None;
            bail!(
                "herald serve exited ({status}); its log:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Polls `GET /readyz` until it answers 200 (recovery done), the process exits, or
    /// [`READY_TIMEOUT`] passes.
    pub fn wait_ready(&mut self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.url());
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .context("building an HTTP client")?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            let ready = runtime.block_on(async {
                match client.get(&url).send().await {
                    Ok(response) => response.status() == reqwest::StatusCode::OK,
                    Err(_) => false,
                }
            });
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "herald serve did not answer {url} with 200 within {} s; its log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU seconds the server has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        machine::cpu_seconds_of(self.pid()?)
    }

    /// SIGTERM, wait for the graceful shutdown (SIGKILL after [`STOP_TIMEOUT`]), then delete the
    /// directory. Returns how the process ended and how long the shutdown took.
    pub fn stop(mut self) -> anyhow::Result<(ExitStatus, Duration)> {
        let result = self.terminate();
        let removed = fs::remove_dir_all(&self.directory)
            .with_context(|| format!("removing {}", self.directory.display()));
        let outcome = result?;
        removed?;
        Ok(outcome)
    }

    fn terminate(&mut self) -> anyhow::Result<(ExitStatus, Duration)> {
        let Some(mut child) = self.child.take() else {
            bail!("the server was already stopped");
        };
        let started = Instant::now();
        let signalled = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !signalled.is_ok_and(|status| status.success()) {
            child.kill().ok();
        }
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "herald serve ended with {status} after SIGTERM; its log:\n{}",
                        self.log_tail()
                    );
                }
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() >= STOP_TIMEOUT {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "herald serve did not stop within {} s of SIGTERM and was killed",
                    STOP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        // The directory may already be gone (after `stop`).
        let _ = fs::remove_dir_all(&self.directory);
    }
}

/// Bytes of the partition logs' segment files (`*.log`) under `data_directory`: what the
/// server wrote for the events, frames and segment headers included.
pub fn segment_bytes(data_directory: &Path) -> io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![data_directory.to_owned()];
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let path = entry.path();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && path.extension().is_some_and(|extension| extension == "log")
            {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let error = check_binary(Path::new("/nonexistent/target/release/herald"))
            .expect_err("the binary is missing");
        let message = error.to_string();
        assert!(
            message.contains("cargo build --release -p herald -p herald-bench"),
            "{message}"
        );
        let error = check_binary(Path::new("/nonexistent/target/debug/herald"))
            .expect_err("the binary is missing");
        assert!(
            error.to_string().contains("cargo build -p herald"),
            "{error}"
        );
    }

    #[test]
    fn segment_bytes_counts_log_files_only() {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let partition = directory.path().join("topics/0001/0");
        fs::create_dir_all(&partition).expect("directories");
        fs::write(partition.join("00000000000000000000.log"), vec![0u8; 1000]).expect("write");
        fs::write(partition.join("00000000000000000000.index"), vec![0u8; 80]).expect("write");
        fs::write(directory.path().join("meta.redb"), vec![0u8; 4096]).expect("write");
        assert_eq!(segment_bytes(directory.path()).expect("readable"), 1000);
    }
}
