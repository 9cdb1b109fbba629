//! `herald serve`'s configuration: defaults < file < environment < flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use herald::config::{ConfigError, ServeArgs, load, parse_fsync_policy, resolve};
use herald_http::{FsyncPolicy, ServerConfig};

/// An environment holding only `variables`.
fn environment(variables: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let variables: Vec<(String, String)> = variables
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    move |name| {
        variables
            .iter()
            .find(|(variable, _)| variable == name)
            .map(|(_, value)| value.clone())
    }
}

fn no_environment() -> impl Fn(&str) -> Option<String> {
    environment(&[])
}

const FILE: &str = r#"
data_dir = "from-file"
http = "127.0.0.1:1000"
fsync = "never"
auto_create_topics = false
event_bytes_max = 100
batch_events_max = 5
"#;

#[test]
fn defaults_apply_when_nothing_is_set() {
    let config = resolve(&ServeArgs::default(), no_environment(), None).unwrap();
    assert_eq!(config, ServerConfig::default());
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file() {
    let file = Path::new("/etc/herald/herald.toml");
    let env = environment(&[
        ("HERALD_HTTP", "127.0.0.1:2000"),
        ("HERALD_FSYNC", "interval:10ms"),
        ("HERALD_EVENT_BYTES_MAX", "200"),
    ]);
    let flags = ServeArgs {
        fsync: Some("always".into()),
        body_bytes_max: Some("300".into()),
        ..ServeArgs::default()
    };

    let config = resolve(&flags, env, Some((file, FILE))).unwrap();

    assert_eq!(
        config,
        ServerConfig {
            // Only the file sets these.
            data_dir: PathBuf::from("/etc/herald/from-file"),
            auto_create_topics: false,
            batch_events_max: 5,
            // The environment beats the file.
            http: "127.0.0.1:2000".parse().unwrap(),
            event_bytes_max: 200,
            // The flag beats both.
            fsync: FsyncPolicy::Always,
            body_bytes_max: 300,
            // Nobody sets these.
            segment_bytes_max: ServerConfig::default().segment_bytes_max,
            push_allow_private_networks: None,
            push_attempts_kept: ServerConfig::default().push_attempts_kept,
        }
    );
}

#[test]
fn push_settings_come_from_the_push_table_the_environment_and_flags() {
    let text = "[push]\nallow_private_networks = false\nattempts_kept = 500\n";
    let file = Some((Path::new("herald.toml"), text));
    let config = resolve(&ServeArgs::default(), no_environment(), file).unwrap();
    assert_eq!(config.push_allow_private_networks, Some(false));
    assert_eq!(config.push_attempts_kept, 500);

    let env = environment(&[("HERALD_PUSH_ALLOW_PRIVATE_NETWORKS", "true")]);
    let flags = ServeArgs {
        push_attempts_kept: Some("10000".into()),
        ..ServeArgs::default()
    };
    let config = resolve(&flags, env, file).unwrap();
    assert_eq!(config.push_allow_private_networks, Some(true));
    assert_eq!(config.push_attempts_kept, 10_000);

    let over = ServeArgs {
        push_attempts_kept: Some("10001".into()),
        ..ServeArgs::default()
    };
    let error = resolve(&over, no_environment(), None).unwrap_err();
    assert!(
        error.to_string().contains("--push-attempts-kept"),
        "{error}"
    );
    let zero = "[push]\nattempts_kept = 0\n";
    let error = resolve(
        &ServeArgs::default(),
        no_environment(),
        Some((Path::new("herald.toml"), zero)),
    )
    .unwrap_err();
    assert!(error.to_string().contains("push.attempts_kept"), "{error}");
}

#[test]
fn the_file_alone_overrides_the_defaults() {
    let config = resolve(
        &ServeArgs::default(),
        no_environment(),
        Some((Path::new("herald.toml"), FILE)),
    )
    .unwrap();
    assert_eq!(config.data_dir, PathBuf::from("from-file"));
    assert_eq!(config.http, "127.0.0.1:1000".parse().unwrap());
    assert_eq!(config.fsync, FsyncPolicy::Never);
    assert_eq!(config.event_bytes_max, 100);
}

#[test]
fn an_empty_environment_variable_counts_as_unset() {
    let env = environment(&[("HERALD_HTTP", "")]);
    let config = resolve(&ServeArgs::default(), env, None).unwrap();
    assert_eq!(config.http, ServerConfig::default().http);
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_naming_it() {
    let text = "data_dir = \"x\"\nretention_days = 3\n";
    let error = resolve(
        &ServeArgs::default(),
        no_environment(),
        Some((Path::new("herald.toml"), text)),
    )
    .unwrap_err();
    assert!(matches!(error, ConfigError::File { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("herald.toml"), "{message}");
    assert!(
        message.contains("unknown field `retention_days`"),
        "{message}"
    );
    assert!(message.contains("line 2"), "{message}");
}

#[test]
fn a_value_of_the_wrong_type_in_the_file_is_an_error_naming_the_key() {
    let error = resolve(
        &ServeArgs::default(),
        no_environment(),
        Some((Path::new("herald.toml"), "event_bytes_max = \"big\"\n")),
    )
    .unwrap_err();
    assert!(error.to_string().contains("event_bytes_max"), "{error}");
}

/// Asserts that the configuration is refused with a message starting with `expected`.
fn assert_refused(
    flags: &ServeArgs,
    variables: &[(&str, &str)],
    file: Option<&str>,
    expected: &str,
) {
    let file = file.map(|text| (Path::new("conf/herald.toml"), text));
    let error = resolve(flags, environment(variables), file).unwrap_err();
    assert!(
        error.to_string().starts_with(expected),
        "{error} does not start with {expected}"
    );
}

#[test]
fn a_bad_value_names_where_it_came_from() {
    let none = ServeArgs::default();
    assert_refused(
        &none,
        &[("HERALD_AUTO_CREATE_TOPICS", "yes")],
        None,
        "invalid HERALD_AUTO_CREATE_TOPICS: \"yes\" is not a boolean; expected true or false",
    );
    assert_refused(
        &ServeArgs {
            http: Some("localhost".into()),
            ..ServeArgs::default()
        },
        &[],
        None,
        "invalid --http: \"localhost\" is not an address",
    );
    assert_refused(
        &none,
        &[],
        Some("fsync = \"interval:soon\""),
        "invalid fsync in conf/herald.toml: \"interval:soon\" has an invalid interval",
    );
    assert_refused(
        &none,
        &[("HERALD_SEGMENT_BYTES_MAX", "-1")],
        None,
        "invalid HERALD_SEGMENT_BYTES_MAX: \"-1\" is not a whole number",
    );
    assert_refused(
        &ServeArgs {
            batch_events_max: Some("0".into()),
            ..ServeArgs::default()
        },
        &[],
        None,
        "invalid --batch-events-max: 0 is not allowed",
    );
}

#[test]
fn the_configuration_file_is_named_by_flag_or_environment() {
    let directory = tempfile::tempdir().unwrap();
    let by_env = directory.path().join("env.toml");
    let by_flag = directory.path().join("flag.toml");
    std::fs::write(&by_env, "http = \"127.0.0.1:1001\"\n").unwrap();
    std::fs::write(&by_flag, "http = \"127.0.0.1:1002\"\n").unwrap();
    let env_path = by_env.display().to_string();
    let env = environment(&[("HERALD_CONFIG", env_path.as_str())]);

    let (config, file) = load(&ServeArgs::default(), &env).unwrap();
    assert_eq!(config.http, "127.0.0.1:1001".parse().unwrap());
    assert_eq!(file, Some(by_env.clone()));

    let flags = ServeArgs {
        config: Some(by_flag.clone()),
        ..ServeArgs::default()
    };
    let (config, file) = load(&flags, &env).unwrap();
    assert_eq!(config.http, "127.0.0.1:1002".parse().unwrap());
    assert_eq!(file, Some(by_flag));
}

#[test]
fn a_missing_configuration_file_named_explicitly_is_an_error() {
    let flags = ServeArgs {
        config: Some(PathBuf::from("/nonexistent/herald.toml")),
        ..ServeArgs::default()
    };
    let error = load(&flags, no_environment()).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("cannot read the configuration file /nonexistent/herald.toml"),
        "{error}"
    );
}

#[test]
fn fsync_policies_use_herald_durations() {
    assert_eq!(parse_fsync_policy("always"), Ok(FsyncPolicy::Always));
    assert_eq!(parse_fsync_policy("never"), Ok(FsyncPolicy::Never));
    assert_eq!(
        parse_fsync_policy("interval:500ms"),
        Ok(FsyncPolicy::Interval(Duration::from_millis(500)))
    );
    assert_eq!(
        parse_fsync_policy("interval:1m30s"),
        Ok(FsyncPolicy::Interval(Duration::from_secs(90)))
    );
    assert!(parse_fsync_policy("interval:0ms").is_err());
    assert!(parse_fsync_policy("interval:10").is_err());
    assert!(parse_fsync_policy("sometimes").is_err());
}

#[test]
fn durations_parse_and_format_in_herald_convention() {
    use herald_client::duration::{format, parse};
    for (text, duration) in [
        ("500ms", Duration::from_millis(500)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("7d", Duration::from_secs(7 * 86_400)),
    ] {
        assert_eq!(parse(text), Ok(duration));
        assert_eq!(format(duration), text);
    }
    assert!(parse("-1s").is_err());
    assert!(parse("1 week").is_err());
}
