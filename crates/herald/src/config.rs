//! The configuration of `herald serve`, gathered from four sources in rising precedence:
//! defaults ([`ServerConfig::default`]) < the TOML file < `HERALD_*` environment variables <
//! flags.
//!
//! Each source is read into a [`Layer`] in which every setting is optional; a bad value is
//! reported with its source (`--fsync`, `HERALD_FSYNC`, `fsync in herald.toml`) so the user
//! knows what to fix. The environment is passed in as a lookup function, so tests need not touch
//! the process's environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use herald_client::duration;
use herald_http::{FsyncPolicy, ServerConfig};
use serde::Deserialize;

/// The file read when neither `--config` nor `HERALD_CONFIG` names one, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "herald.toml";

/// The flags of `herald serve`. Each one overrides its environment variable, which overrides its
/// key in the configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct ServeArgs {
    /// The TOML configuration file [env: HERALD_CONFIG] [default: ./herald.toml when it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where topics, subscriptions and positions are stored [env: HERALD_DATA_DIR] [key:
    /// data_dir] [default: ./herald-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The HTTP listen address [env: HERALD_HTTP] [key: http] [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// When a publish is durable: always, interval:DURATION (e.g. interval:10ms) or never [env:
    /// HERALD_FSYNC] [key: fsync] [default: always].
    #[arg(long, value_name = "POLICY")]
    pub fsync: Option<String>,
    /// Publishing to an unknown topic creates it; switch off in production [env:
    /// HERALD_AUTO_CREATE_TOPICS] [key: auto_create_topics] [default: true].
    #[arg(long, value_name = "true|false")]
    pub auto_create_topics: Option<String>,
    /// Largest event, in bytes [env: HERALD_EVENT_BYTES_MAX] [key: event_bytes_max] [default:
    /// 1048576].
    #[arg(long, value_name = "BYTES")]
    pub event_bytes_max: Option<String>,
    /// Most events in one batch [env: HERALD_BATCH_EVENTS_MAX] [key: batch_events_max]
    /// [default: 10000].
    #[arg(long, value_name = "COUNT")]
    pub batch_events_max: Option<String>,
    /// Largest request body, in bytes [env: HERALD_BODY_BYTES_MAX] [key: body_bytes_max]
    /// [default: 16777216].
    #[arg(long, value_name = "BYTES")]
    pub body_bytes_max: Option<String>,
    /// Size at which a partition's segment file rolls, in bytes [env: HERALD_SEGMENT_BYTES_MAX]
    /// [key: segment_bytes_max] [default: 134217728].
    #[arg(long, value_name = "BYTES")]
    pub segment_bytes_max: Option<String>,
    /// Webhooks may go to private, loopback, link-local and multicast addresses [env:
    /// HERALD_PUSH_ALLOW_PRIVATE_NETWORKS] [key: push.allow_private_networks] [default: true
    /// only when --http is a loopback address].
    #[arg(long, value_name = "true|false")]
    pub push_allow_private_networks: Option<String>,
    /// Webhook attempts kept per subscription for `herald sub attempts` [env:
    /// HERALD_PUSH_ATTEMPTS_KEPT] [key: push.attempts_kept] [default: 100, at most 10000].
    #[arg(long, value_name = "COUNT")]
    pub push_attempts_kept: Option<String>,
}

/// Why the configuration could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, has a key Herald does not know, or a value of the wrong type. The
    /// message (from the TOML parser) names the key and its line.
    #[error("invalid configuration file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A value that does not parse; `origin` names where it came from.
    #[error("invalid {origin}: {reason}")]
    Value { origin: String, reason: String },
}

/// The settings one source gives; `None` leaves the setting to a source of lower precedence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layer {
    pub data_dir: Option<PathBuf>,
    pub http: Option<SocketAddr>,
    pub fsync: Option<FsyncPolicy>,
    pub auto_create_topics: Option<bool>,
    pub event_bytes_max: Option<u32>,
    pub batch_events_max: Option<u32>,
    pub body_bytes_max: Option<u32>,
    pub segment_bytes_max: Option<u64>,
    pub push_allow_private_networks: Option<bool>,
    pub push_attempts_kept: Option<u32>,
}

/// The keys of the configuration file. Unknown keys are an error, so a typo is not silently
/// ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    http: Option<String>,
    fsync: Option<String>,
    auto_create_topics: Option<bool>,
    event_bytes_max: Option<u32>,
    batch_events_max: Option<u32>,
    body_bytes_max: Option<u32>,
    segment_bytes_max: Option<u64>,
    push: Option<PushFileSettings>,
}

/// The `[push]` table of the configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushFileSettings {
    allow_private_networks: Option<bool>,
    attempts_kept: Option<u32>,
}

/// Most webhook attempts kept per subscription.
const PUSH_ATTEMPTS_KEPT_MAX: u64 = 10_000;

/// A raw value and where it came from, for error messages.
struct Source<'a> {
    origin: String,
    value: &'a str,
}

impl Source<'_> {
    fn error(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            origin: self.origin.clone(),
            reason: format!("{:?} {}", self.value, reason.into()),
        }
    }
}

impl Layer {
    /// The settings of a configuration file's text. A relative `data_dir` is taken relative to
    /// the file's directory, so the file means the same wherever `herald serve` starts.
    pub fn from_toml(path: &Path, text: &str) -> Result<Layer, ConfigError> {
        let file: FileSettings = toml::from_str(text).map_err(|error| ConfigError::File {
            path: path.to_owned(),
            message: error.to_string().trim_end().to_owned(),
        })?;
        let origin = |key: &str| format!("{key} in {}", path.display());
        let base = path.parent().unwrap_or(Path::new(""));
        let mut layer = Layer {
            data_dir: file.data_dir.map(|dir| base.join(dir)),
            auto_create_topics: file.auto_create_topics,
            event_bytes_max: file.event_bytes_max,
            batch_events_max: file.batch_events_max,
            body_bytes_max: file.body_bytes_max,
            segment_bytes_max: file.segment_bytes_max,
            push_allow_private_networks: file
                .push
                .as_ref()
                .and_then(|push| push.allow_private_networks),
            push_attempts_kept: file.push.as_ref().and_then(|push| push.attempts_kept),
            ..Layer::default()
        };
        if let Some(http) = &file.http {
            layer.http = Some(parse_address(&Source {
                origin: origin("http"),
                value: http,
            })?);
        }
        if let Some(fsync) = &file.fsync {
            layer.fsync = Some(parse_fsync(&Source {
                origin: origin("fsync"),
                value: fsync,
            })?);
        }
        layer.check_limits(|key: &str| origin(&key.replacen("push_", "push.", 1)))?;
        Ok(layer)
    }

    /// The settings of the `HERALD_*` environment variables that `lookup` finds. An empty
    /// variable counts as unset.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
        let variable = |key: &str| format!("HERALD_{}", key.to_ascii_uppercase());
        Layer::from_values(variable, |key| {
            lookup(&variable(key)).filter(|value| !value.is_empty())
        })
    }

    /// The settings given as flags.
    pub fn from_flags(args: &ServeArgs) -> Result<Layer, ConfigError> {
        let values = [
            (
                "data_dir",
                args.data_dir.as_ref().map(|dir| dir.display().to_string()),
            ),
            ("http", args.http.clone()),
            ("fsync", args.fsync.clone()),
            ("auto_create_topics", args.auto_create_topics.clone()),
            ("event_bytes_max", args.event_bytes_max.clone()),
            ("batch_events_max", args.batch_events_max.clone()),
            ("body_bytes_max", args.body_bytes_max.clone()),
            ("segment_bytes_max", args.segment_bytes_max.clone()),
            (
                "push_allow_private_networks",
                args.push_allow_private_networks.clone(),
            ),
            ("push_attempts_kept", args.push_attempts_kept.clone()),
        ];
        let flag = |key: &str| format!("--{}", key.replace('_', "-"));
        let mut layer = Layer::from_values(flag, |key| {
            values
                .iter()
                .find(|(name, _)| *name == key)
                .and_then(|(_, value)| value.clone())
        })?;
        // A path is taken as given, not through its display form.
        layer.data_dir = args.data_dir.clone();
        Ok(layer)
    }

    /// Reads every setting from strings: `value_of(key)` looks up the value of a setting (keys
    /// as in the file), `name_of(key)` names where it came from (a flag or a variable).
    fn from_values(
        name_of: impl Fn(&str) -> String,
        value_of: impl Fn(&str) -> Option<String>,
    ) -> Result<Layer, ConfigError> {
        let get = |key: &str| value_of(key).map(|value| (name_of(key), value));
        let mut layer = Layer::default();
        if let Some((_, value)) = get("data_dir") {
            layer.data_dir = Some(PathBuf::from(value));
        }
        if let Some((origin, value)) = get("http") {
            layer.http = Some(parse_address(&Source {
                origin,
                value: &value,
            })?);
        }
        if let Some((origin, value)) = get("fsync") {
            layer.fsync = Some(parse_fsync(&Source {
                origin,
                value: &value,
            })?);
        }
        if let Some((origin, value)) = get("auto_create_topics") {
            layer.auto_create_topics = Some(parse_bool(&Source {
                origin,
                value: &value,
            })?);
        }
        if let Some((origin, value)) = get("event_bytes_max") {
            layer.event_bytes_max = Some(parse_number(
                &Source {
                    origin,
                    value: &value,
                },
                u32::MAX,
            )?);
        }
        if let Some((origin, value)) = get("batch_events_max") {
            layer.batch_events_max = Some(parse_number(
                &Source {
                    origin,
                    value: &value,
                },
                u32::MAX,
            )?);
        }
        if let Some((origin, value)) = get("body_bytes_max") {
            layer.body_bytes_max = Some(parse_number(
                &Source {
                    origin,
                    value: &value,
                },
                u32::MAX,
            )?);
        }
        if let Some((origin, value)) = get("segment_bytes_max") {
            layer.segment_bytes_max = Some(parse_number(
                &Source {
                    origin,
                    value: &value,
                },
                u64::MAX,
            )?);
        }
        if let Some((origin, value)) = get("push_allow_private_networks") {
            layer.push_allow_private_networks = Some(parse_bool(&Source {
                origin,
                value: &value,
            })?);
        }
        if let Some((origin, value)) = get("push_attempts_kept") {
            layer.push_attempts_kept = Some(parse_number(
                &Source {
                    origin,
                    value: &value,
                },
                u32::MAX,
            )?);
        }
        layer.check_limits(name_of)?;
        Ok(layer)
    }

    /// Every limit must allow something: a zero would make the server refuse everything.
    fn check_limits(&self, name_of: impl Fn(&str) -> String) -> Result<(), ConfigError> {
        let limits = [
            ("event_bytes_max", self.event_bytes_max.map(u64::from)),
            ("batch_events_max", self.batch_events_max.map(u64::from)),
            ("body_bytes_max", self.body_bytes_max.map(u64::from)),
            ("segment_bytes_max", self.segment_bytes_max),
            ("push_attempts_kept", self.push_attempts_kept.map(u64::from)),
        ];
        for (key, value) in limits {
            if value == Some(0) {
                return Err(ConfigError::Value {
                    origin: name_of(key),
                    reason: "0 is not allowed; the limit must be at least 1".to_owned(),
                });
            }
        }
        if let Some(kept) = self.push_attempts_kept
            && u64::from(kept) > PUSH_ATTEMPTS_KEPT_MAX
        {
            return Err(ConfigError::Value {
                origin: name_of("push_attempts_kept"),
                reason: format!("{kept} is more than the most allowed, {PUSH_ATTEMPTS_KEPT_MAX}"),
            });
        }
        Ok(())
    }

    /// The settings of `self`, with those it leaves unset taken from `lower`.
    pub fn over(self, lower: Layer) -> Layer {
        Layer {
            data_dir: self.data_dir.or(lower.data_dir),
            http: self.http.or(lower.http),
            fsync: self.fsync.or(lower.fsync),
            auto_create_topics: self.auto_create_topics.or(lower.auto_create_topics),
            event_bytes_max: self.event_bytes_max.or(lower.event_bytes_max),
            batch_events_max: self.batch_events_max.or(lower.batch_events_max),
            body_bytes_max: self.body_bytes_max.or(lower.body_bytes_max),
            segment_bytes_max: self.segment_bytes_max.or(lower.segment_bytes_max),
            push_allow_private_networks: self
                .push_allow_private_networks
                .or(lower.push_allow_private_networks),
            push_attempts_kept: self.push_attempts_kept.or(lower.push_attempts_kept),
        }
    }

    /// `config` with every setting this layer gives replaced.
    pub fn apply_to(self, config: ServerConfig) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.unwrap_or(config.data_dir),
            http: self.http.unwrap_or(config.http),
            fsync: self.fsync.unwrap_or(config.fsync),
            auto_create_topics: self.auto_create_topics.unwrap_or(config.auto_create_topics),
            event_bytes_max: self.event_bytes_max.unwrap_or(config.event_bytes_max),
            batch_events_max: self.batch_events_max.unwrap_or(config.batch_events_max),
            body_bytes_max: self.body_bytes_max.unwrap_or(config.body_bytes_max),
            segment_bytes_max: self.segment_bytes_max.unwrap_or(config.segment_bytes_max),
            push_allow_private_networks: self
                .push_allow_private_networks
                .or(config.push_allow_private_networks),
            push_attempts_kept: self
                .push_attempts_kept
                .map_or(config.push_attempts_kept, |kept| kept as usize),
        }
    }
}

/// The configuration file to read: `--config`, else `HERALD_CONFIG`, else `./herald.toml` when it
/// exists. A file named explicitly must exist.
pub fn config_file(args: &ServeArgs, lookup: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(path) = &args.config {
        return Some(path.clone());
    }
    if let Some(path) = lookup("HERALD_CONFIG").filter(|value| !value.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let default = PathBuf::from(DEFAULT_CONFIG_FILE);
    default.is_file().then_some(default)
}

/// Assembles the configuration from the defaults, the file's text (when there is a file), the
/// environment and the flags.
pub fn resolve(
    args: &ServeArgs,
    lookup: impl Fn(&str) -> Option<String>,
    file: Option<(&Path, &str)>,
) -> Result<ServerConfig, ConfigError> {
    let from_file = match file {
        Some((path, text)) => Layer::from_toml(path, text)?,
        None => Layer::default(),
    };
    let from_env = Layer::from_env(&lookup)?;
    let from_flags = Layer::from_flags(args)?;
    Ok(from_flags
        .over(from_env)
        .over(from_file)
        .apply_to(ServerConfig::default()))
}

/// [`resolve`] with the configuration file found by [`config_file`] and read from disk. Returns
/// the file used, if any, for the log.
pub fn load(
    args: &ServeArgs,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(ServerConfig, Option<PathBuf>), ConfigError> {
    let Some(path) = config_file(args, &lookup) else {
        return Ok((resolve(args, lookup, None)?, None));
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let config = resolve(args, lookup, Some((&path, &text)))?;
    Ok((config, Some(path)))
}

/// Parses `always`, `never` or `interval:DURATION`. The error says what is wrong, without
/// repeating the value.
pub fn parse_fsync_policy(value: &str) -> Result<FsyncPolicy, String> {
    const EXPECTED: &str = "expected always, never or interval:DURATION (e.g. interval:10ms)";
    match value {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        _ => match value.strip_prefix("interval:") {
            Some(interval) => match duration::parse(interval) {
                Ok(interval) if interval > Duration::ZERO => Ok(FsyncPolicy::Interval(interval)),
                Ok(_) => Err(format!("has a zero interval; {EXPECTED}")),
                Err(error) => Err(format!(
                    "has an invalid interval ({}); {EXPECTED}",
                    error.reason
                )),
            },
            None => Err(format!("is not an fsync policy; {EXPECTED}")),
        },
    }
}

/// The form [`parse_fsync_policy`] reads.
pub fn format_fsync_policy(policy: FsyncPolicy) -> String {
    match policy {
        FsyncPolicy::Always => "always".to_owned(),
        FsyncPolicy::Never => "never".to_owned(),
        FsyncPolicy::Interval(interval) => format!("interval:{}", duration::format(interval)),
    }
}

fn parse_fsync(source: &Source<'_>) -> Result<FsyncPolicy, ConfigError> {
    parse_fsync_policy(source.value).map_err(|reason| source.error(reason))
}

fn parse_address(source: &Source<'_>) -> Result<SocketAddr, ConfigError> {
    source.value.parse().map_err(|_| {
        source.error("is not an address; expected IP:PORT, e.g. 127.0.0.1:7070 or 0.0.0.0:7070")
    })
}

fn parse_bool(source: &Source<'_>) -> Result<bool, ConfigError> {
    match source.value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(source.error("is not a boolean; expected true or false")),
    }
}

fn parse_number<T: std::str::FromStr + std::fmt::Display>(
    source: &Source<'_>,
    max: T,
) -> Result<T, ConfigError> {
    source
        .value
        .parse()
        .map_err(|_| source.error(format!("is not a whole number from 1 to {max}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies_parse_and_format() {
        for (text, policy) in [
            ("always", FsyncPolicy::Always),
            ("never", FsyncPolicy::Never),
            (
                "interval:10ms",
                FsyncPolicy::Interval(Duration::from_millis(10)),
            ),
            ("interval:2s", FsyncPolicy::Interval(Duration::from_secs(2))),
        ] {
            assert_eq!(parse_fsync_policy(text), Ok(policy));
            assert_eq!(format_fsync_policy(policy), text);
        }
        assert!(parse_fsync_policy("interval:0s").is_err());
        assert!(parse_fsync_policy("interval:").is_err());
        assert!(parse_fsync_policy("sometimes").is_err());
    }
}
