//! What a reader of a benchmark report needs to know about where it ran: the machine, the file
//! system of the bench directory, the commit. Every fact is best effort; one that cannot be
//! found is reported as unknown rather than failing the run.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The machine and the bench directory.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFacts {
    pub cpu_model: String,
    /// Threads the process may run at once (`nproc`).
    pub cpus: usize,
    pub memory_gib: f64,
    pub kernel: String,
    /// The 1-minute load average when the run started: above ~0.5 something else was running,
    /// and the figures are worth less.
    pub load_average_at_start: Option<f64>,
    pub bench_directory: PathBuf,
    pub filesystem: Filesystem,
}

/// The file system a directory lives on, as `df` tells it.
#[derive(Debug, Clone, Serialize)]
pub struct Filesystem {
    /// The device, e.g. `/dev/vda`.
    pub device: String,
    /// The type, e.g. `ext4` or `tmpfs`.
    pub kind: String,
    pub mount_point: String,
    /// From `/sys/block/*/queue/rotational`: true for a spinning disk.
    pub rotational: Option<bool>,
}

impl Filesystem {
    /// True when the directory lives in memory, where fsync costs nothing and every disk figure
    /// would be a lie.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.kind.as_str(), "tmpfs" | "ramfs" | "devtmpfs")
    }
}

impl MachineFacts {
    pub fn gather(bench_directory: &Path) -> MachineFacts {
        MachineFacts {
            cpu_model: cpu_model().unwrap_or_else(unknown),
            cpus: std::thread::available_parallelism().map_or(0, |count| count.get()),
            memory_gib: memory_bytes().map_or(0.0, |bytes| bytes as f64 / (1u64 << 30) as f64),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|release| release.trim().to_owned())
                .unwrap_or_else(|_| unknown()),
            load_average_at_start: load_average(),
            bench_directory: bench_directory.to_owned(),
            filesystem: filesystem_of(bench_directory),
        }
    }
}

fn unknown() -> String {
    "unknown".to_owned()
}

fn cpu_model() -> Option<String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

fn memory_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time that programs (not the kernel's own threads) have used so far on the whole machine:
/// the user, nice and system time of `/proc/stat`'s first line, minus what kernel threads
/// (children of `kthreadd`: writeback, the ext4 journal, ...) used. Interrupt time is left out.
/// It counts processes that started and ended in between, which summing processes would miss.
pub fn programs_cpu_seconds() -> Option<f64> {
    let busy = user_and_system_seconds_in(&fs::read_to_string("/proc/stat").ok()?)?;
    Some(busy - kernel_threads_cpu_seconds())
}

fn user_and_system_seconds_in(stat: &str) -> Option<f64> {
    let line = stat.lines().next()?;
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let ticks: Vec<u64> = fields
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy = [0, 1, 2]
        .iter()
        .map(|&index| ticks.get(index).copied().unwrap_or(0))
        .sum::<u64>();
    Some(busy as f64 / 100.0)
}

/// CPU time used so far by the kernel's threads (`kthreadd`, pid 2, and its children).
fn kernel_threads_cpu_seconds() -> f64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if (pid == 2 || parent == Some(2))
            && let Some(seconds) = cpu_seconds_in_stat(&stat)
        {
            total += seconds;
        }
    }
    total
}

/// CPU time (user and system) this process has used so far, all threads included.
pub fn process_cpu_seconds() -> Option<f64> {
    cpu_seconds_from_stat("/proc/self/stat")
}

/// CPU time (user and system) process `pid` has used so far, all threads included; `None` once
/// it has exited (or where there is no `/proc`).
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    cpu_seconds_from_stat(&format!("/proc/{pid}/stat"))
}

/// CPU time (user and system) used so far by every process whose command name (`comm`, e.g.
/// `postgres` or `beam.smp`) is `command`, summed; `None` when there is none (or no `/proc`).
/// For a server made of several processes (PostgreSQL's backends) this is the whole server; a
/// process that started and ended between two readings is missed.
pub fn cpu_seconds_of_command(command: &str) -> Option<f64> {
    let mut total = None;
    for (_, stat) in processes_named(command) {
        if let Some(seconds) = cpu_seconds_in_stat(&stat) {
            *total.get_or_insert(0.0) += seconds;
        }
    }
    total
}

/// The command line (arguments joined by spaces) of the first process whose command name is
/// `command`, e.g. to report how a peer server was started.
pub fn command_line_of(command: &str) -> Option<String> {
    let (pid, _) = processes_named(command)
        .into_iter()
        .min_by_key(|(pid, _)| *pid)?;
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let arguments: Vec<String> = raw
        .split(|&byte| byte == 0)
        .filter(|argument| !argument.is_empty())
        .map(|argument| String::from_utf8_lossy(argument).into_owned())
        .collect();
    Some(arguments.join(" "))
}

/// The pid and `/proc/PID/stat` line of every process whose command name is `command`.
fn processes_named(command: &str) -> Vec<(u32, String)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if command_name(&stat) == Some(command) {
            found.push((pid, stat));
        }
    }
    found
}

/// The command name of a `/proc/PID/stat` line: the text between the first `(` and the last `)`.
fn command_name(stat: &str) -> Option<&str> {
    let start = stat.find('(')?;
    let end = stat.rfind(')')?;
    stat.get(start + 1..end)
}

fn cpu_seconds_from_stat(path: &str) -> Option<f64> {
    cpu_seconds_in_stat(&fs::read_to_string(path).ok()?)
}

fn cpu_seconds_in_stat(stat: &str) -> Option<f64> {
    // The command name, in parentheses, may hold spaces: count fields after its closing one.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: u64 = fields.next()?.parse().ok()?;
    let system_ticks: u64 = fields.next()?.parse().ok()?;
    // USER_HZ is 100 on every Linux build that matters; asking would take libc.
    Some((user_ticks + system_ticks) as f64 / 100.0)
}

/// Wall-clock and CPU time from one moment on.
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch {
    wall: Instant,
    cpu_seconds: Option<f64>,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            cpu_seconds: process_cpu_seconds(),
            wall: Instant::now(),
        }
    }

    /// When the stopwatch started.
    pub fn started(&self) -> Instant {
        self.wall
    }

    /// Wall time since the start, and the CPU seconds the process used per second of it (2.0
    /// is both cores of a 2-core machine, busy).
    pub fn stop(&self) -> (Duration, Option<f64>) {
        let elapsed = self.wall.elapsed();
        let cpu_cores = self
            .cpu_seconds
            .zip(process_cpu_seconds())
            .map(|(before, after)| (after - before) / elapsed.as_secs_f64());
        (elapsed, cpu_cores)
    }
}

/// Asks `df` (POSIX output, so long device names do not wrap) about `directory`.
pub fn filesystem_of(directory: &Path) -> Filesystem {
    let output = Command::new("df")
        .arg("-P")
        .arg("-T")
        .arg(directory)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned());
    // Filesystem Type 1024-blocks Used Available Capacity Mounted-on
    let fields: Vec<String> = output
        .as_deref()
        .and_then(|text| text.lines().nth(1))
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let device = fields.first().cloned().unwrap_or_else(unknown);
    Filesystem {
        rotational: rotational(&device),
        kind: fields.get(1).cloned().unwrap_or_else(unknown),
        mount_point: fields.get(6).cloned().unwrap_or_else(unknown),
        device,
    }
}

/// Whether the block device behind `/dev/NAME` spins; a partition's answer is its disk's.
fn rotational(device: &str) -> Option<bool> {
    let name = device.strip_prefix("/dev/")?;
    let block = fs::canonicalize(Path::new("/sys/class/block").join(name)).ok()?;
    // A partition has no queue of its own; its disk is the parent directory.
    let flag = fs::read_to_string(block.join("queue/rotational"))
        .ok()
        .or_else(|| fs::read_to_string(block.parent()?.join("queue/rotational")).ok())?;
    Some(flag.trim() == "1")
}

/// The short hash of the checked-out commit, with `-dirty` when tracked files changed;
/// `unknown` outside a repository or before the first commit.
pub fn git_commit() -> String {
    let git = |arguments: &[&str]| {
        Command::new("git")
            .args(arguments)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|status| !status.is_empty());
            if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            }
        }
        _ => "unknown (no commit)".to_owned(),
    }
}

/// Where bench data goes unless told: the workspace's `target/` (on the real disk, and already
/// ignored by git), else the system temporary directory.
pub fn default_scratch_root() -> PathBuf {
    if let Some(target) = env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target);
    }
    if let Ok(current) = env::current_dir() {
        let target = current.join("target");
        if target.is_dir() {
            return target;
        }
    }
    let workspace_target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    if let Ok(target) = fs::canonicalize(workspace_target)
        && target.is_dir()
    {
        return target;
    }
    env::temp_dir()
}

/// A fresh directory (`{prefix}…`, removed when dropped) inside `root`, on the disk under test,
/// and the facts of the machine and of that directory's file system. Refuses a file system in
/// memory (tmpfs), where fsync costs nothing, unless `allow_in_memory`.
pub fn scratch_directory(
    root: &std::path::Path,
    prefix: &str,
    allow_in_memory: bool,
) -> anyhow::Result<(tempfile::TempDir, MachineFacts)> {
    use anyhow::Context as _;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(root)
        .with_context(|| format!("creating a directory in {}", root.display()))?;
    let machine = MachineFacts::gather(scratch.path());
    if machine.filesystem.is_in_memory() && !allow_in_memory {
        anyhow::bail!(
            "{} is on {} ({}), in memory: fsync would cost nothing and the figures would mean \
             nothing. Pass --dir with a directory on a disk (or --allow-tmpfs to run anyway).",
            scratch.path().display(),
            machine.filesystem.kind,
            machine.filesystem.device,
        );
    }
    Ok((scratch, machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_command_name_and_cpu_time() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
        let stat = "4242 (beam.smp (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        assert_eq!(command_name(stat), Some("beam.smp (x)"));
        assert_eq!(cpu_seconds_in_stat(stat), Some(3.0));
        assert_eq!(command_name("no parentheses"), None);
    }

    #[test]
    fn busy_time_is_user_nice_and_system() {
        let stat = "cpu  100 10 50 9000 400 5 5 30 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(user_and_system_seconds_in(stat), Some(1.6));
        assert_eq!(user_and_system_seconds_in("intr 1 2 3"), None);
        assert!(programs_cpu_seconds().is_some_and(|seconds| seconds > 0.0));
    }

    #[test]
    fn this_process_is_found_by_its_command_name() {
        let stat = fs::read_to_string("/proc/self/stat").expect("Linux has /proc");
        let name = command_name(&stat).expect("a command name").to_owned();
        assert!(cpu_seconds_of_command(&name).is_some());
        assert!(command_line_of(&name).is_some_and(|line| !line.is_empty()));
        assert_eq!(cpu_seconds_of_command("no-such-command-herald"), None);
        assert_eq!(command_line_of("no-such-command-herald"), None);
    }
}
