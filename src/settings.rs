//! Settings: the command line, `RECONFD_*` environment variables and the settings file, merged
//! with precedence flag > environment > file > default.
//!
//! The settings file uses confd's `confd.toml` keys, so an existing confd.toml works. confd
//! keys for stores reconfd does not offer yet are accepted with a warning; any other unknown
//! key is an error that names the file and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::Deserialize;

use crate::cli::{Cli, LogFormat};
use crate::limits;
use crate::store::backend::{Backend, StoreFields, one_or_many};
use crate::wait::Wait;

const DEFAULT_CONFDIR: &str = "/etc/reconfd";
const DEFAULT_INTERVAL_SECONDS: u64 = 600;

/// confd.toml keys that belong to stores or features reconfd does not offer yet. They are
/// accepted so that a confd.toml can be used unchanged.
const CONFD_KEYS_NOT_USED_YET: &[&str] = &[
    "basic_auth",
    "srv_domain",
    "srv_record",
    "table",
    "app_id",
    "user_id",
    "path",
    "secret_keyring",
];

/// Why the settings are unusable (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The settings file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The settings file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The settings file is not valid or has an unknown key.
    #[error("{path}: {message}")]
    Parse {
        /// The settings file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or names something unknown.
    #[error("{0}")]
    Invalid(String),
}

/// How the daemon runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Once, then exit with the result.
    Onetime,
    /// Every interval.
    Poll,
    /// On every change the store reports, with a full resync every interval.
    Watch,
}

/// Fully resolved settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Directory with `conf.d/` and `templates/`.
    pub confdir: PathBuf,
    /// The store of every resource without a `[backend]` table of its own; `None` when
    /// neither a store nor a data file is named (every resource must then name its own).
    pub backend: Option<Backend>,
    /// Prefix joined in front of every resource's prefix.
    pub prefix: String,
    /// Time between polls or safety resyncs: from a second to [`limits::DURATION`].
    pub interval: Duration,
    /// Once, polling or watching.
    pub mode: RunMode,
    /// Compare and show diffs only.
    pub noop: bool,
    /// Write files but run no commands.
    pub sync_only: bool,
    /// Keep stage files of failed checks.
    pub keep_stage_file: bool,
    /// Log level filter, such as `info`.
    pub log_level: String,
    /// How log lines are written.
    pub log_format: LogFormat,
    /// The render time limit of resources that set none; `None` for the default.
    pub render_timeout: Option<Duration>,
    /// The render output limit of resources that set none; `None` for the default.
    pub render_max_size: Option<u64>,
    /// The wait of resources that set none.
    pub wait: Option<Wait>,
    /// Roll back failed reloads for every resource.
    pub rollback: bool,
    /// Where to serve metrics and the status page.
    pub listen: Option<SocketAddr>,
}

/// The settings file, with confd.toml's key names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    confdir: Option<PathBuf>,
    backend: Option<String>,
    nodes: Option<Vec<String>>,
    prefix: Option<String>,
    interval: Option<u64>,
    watch: Option<bool>,
    onetime: Option<bool>,
    noop: Option<bool>,
    #[serde(rename = "sync-only")]
    sync_only: Option<bool>,
    #[serde(rename = "keep-stage-file")]
    keep_stage_file: Option<bool>,
    #[serde(rename = "log-level")]
    log_level: Option<String>,
    #[serde(rename = "log-format")]
    log_format: Option<LogFormat>,
    wait: Option<String>,
    #[serde(rename = "render-timeout")]
    render_timeout: Option<String>,
    #[serde(rename = "render-max-size")]
    render_max_size: Option<String>,
    rollback: Option<bool>,
    listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "one_or_many")]
    file: Vec<PathBuf>,
    filter: Option<String>,
    scheme: Option<String>,
    username: Option<String>,
    password: Option<String>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    client_cakeys: Option<PathBuf>,
    client_insecure: Option<bool>,
    auth_token: Option<String>,
    auth_type: Option<String>,
    role_id: Option<String>,
    secret_id: Option<String>,
    kv_version: Option<u8>,
    separator: Option<String>,
    nats_bucket: Option<String>,
    datacenter: Option<String>,
}

impl Settings {
    /// Parses the process's command line and environment, reads the settings file, and merges
    /// them. Command-line syntax errors exit through clap (status 2).
    pub fn from_command_line() -> Result<Settings, SettingsError> {
        let matches = Cli::command().get_matches();
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        Settings::merge(cli, &matches)
    }

    fn merge(cli: Cli, matches: &ArgMatches) -> Result<Settings, SettingsError> {
        let default_config_file = cli.config_file.is_none();
        let confdir_for_file = cli
            .confdir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFDIR));
        let config_file = cli
            .config_file
            .clone()
            .unwrap_or_else(|| confdir_for_file.join("reconfd.toml"));
        let file = read_settings_file(&config_file, default_config_file)?;

        // A boolean flag counts only when it was given on the command line or in the
        // environment; otherwise the settings file decides.
        let flag =
            |id: &str, cli_value: bool, file_value: Option<bool>| match matches.value_source(id) {
                Some(ValueSource::CommandLine | ValueSource::EnvVariable) => cli_value,
                _ => file_value.unwrap_or(false),
            };
        let onetime = flag("onetime", cli.onetime, file.onetime);
        let watch = flag("watch", cli.watch, file.watch);
        let noop = flag("noop", cli.noop, file.noop);
        let sync_only = flag("sync_only", cli.sync_only, file.sync_only);
        let keep_stage_file = flag("keep_stage_file", cli.keep_stage_file, file.keep_stage_file);
        let rollback = flag("rollback", cli.rollback, file.rollback);
        let confdir = cli
            .confdir
            .or(file.confdir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFDIR));
        let interval = match (cli.interval, file.interval) {
            (Some(seconds), _) => {
                let origin = Origin::of(matches, "interval", "--interval", "RECONFD_INTERVAL");
                interval(seconds).map_err(|e| origin.invalid(&seconds.to_string(), &e))?
            }
            (None, Some(seconds)) => interval(seconds).map_err(|e| {
                Origin::File(&config_file, "interval").invalid(&seconds.to_string(), &e)
            })?,
            (None, None) => Duration::from_secs(DEFAULT_INTERVAL_SECONDS),
        };
        let store = StoreFields {
            backend: cli.backend.or(file.backend),
            nodes: if cli.nodes.is_empty() {
                file.nodes.unwrap_or_default()
            } else {
                cli.nodes
            },
            scheme: cli.scheme.or(file.scheme),
            username: cli.username.or(file.username),
            password: cli.password.or(file.password),
            client_cert: cli.client_cert.or(file.client_cert),
            client_key: cli.client_key.or(file.client_key),
            client_cakeys: cli.client_ca_keys.or(file.client_cakeys),
            client_insecure: flag("client_insecure", cli.client_insecure, file.client_insecure),
            file: if cli.files.is_empty() {
                file.file
            } else {
                cli.files
            },
            filter: cli.filter.or(file.filter),
            auth_token: cli.auth_token.or(file.auth_token),
            auth_type: cli.auth_type.or(file.auth_type),
            role_id: cli.role_id.or(file.role_id),
            secret_id: cli.secret_id.or(file.secret_id),
            kv_version: cli.kv_version.or(file.kv_version),
            separator: cli.separator.or(file.separator),
            nats_bucket: cli.nats_bucket.or(file.nats_bucket),
            datacenter: cli.datacenter.or(file.datacenter),
        };
        let backend = if store.backend.is_none() && store.file.is_empty() {
            None
        } else {
            Some(store.resolve().map_err(SettingsError::Invalid)?)
        };
        let log_level = cli
            .log_level
            .or(file.log_level)
            .unwrap_or_else(|| "info".to_string());
        let log_level = normalize_log_level(&log_level)?;
        let wait = match (cli.wait, file.wait) {
            (Some(text), _) => Some(text.parse::<Wait>().map_err(|e| {
                Origin::of(matches, "wait", "--wait", "RECONFD_WAIT")
                    .invalid(&format!("{text:?}"), &e)
            })?),
            (None, Some(text)) => Some(text.parse::<Wait>().map_err(|e| {
                Origin::File(&config_file, "wait").invalid(&format!("{text:?}"), &e)
            })?),
            (None, None) => None,
        };
        let render_timeout = match (cli.render_timeout, file.render_timeout) {
            (Some(text), _) => Some(limits::RENDER_TIMEOUT.parse(&text).map_err(|e| {
                Origin::of(
                    matches,
                    "render_timeout",
                    "--render-timeout",
                    "RECONFD_RENDER_TIMEOUT",
                )
                .invalid(&format!("{text:?}"), &e)
            })?),
            (None, Some(text)) => Some(limits::RENDER_TIMEOUT.parse(&text).map_err(|e| {
                Origin::File(&config_file, "render-timeout").invalid(&format!("{text:?}"), &e)
            })?),
            (None, None) => None,
        };
        if render_timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(SettingsError::Invalid(
                "--render-timeout: more than zero, or every render would fail".to_string(),
            ));
        }
        let render_max_size = match (cli.render_max_size, file.render_max_size) {
            (Some(text), _) => Some(limits::parse_size(&text).map_err(|e| {
                Origin::of(
                    matches,
                    "render_max_size",
                    "--render-max-size",
                    "RECONFD_RENDER_MAX_SIZE",
                )
                .invalid(&format!("{text:?}"), &e)
            })?),
            (None, Some(text)) => Some(limits::parse_size(&text).map_err(|e| {
                Origin::File(&config_file, "render-max-size").invalid(&format!("{text:?}"), &e)
            })?),
            (None, None) => None,
        };
        let mode = if onetime {
            RunMode::Onetime
        } else if watch {
            RunMode::Watch
        } else {
            RunMode::Poll
        };
        Ok(Settings {
            confdir,
            backend,
            prefix: cli.prefix.or(file.prefix).unwrap_or_default(),
            interval,
            mode,
            noop,
            sync_only,
            keep_stage_file,
            log_level,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            rollback,
            wait,
            render_timeout,
            render_max_size,
            listen: cli.listen.or(file.listen),
        })
    }
}

/// `seconds` as the interval: at least a second (none would poll without pause) and at most
/// [`limits::DURATION`].
fn interval(seconds: u64) -> Result<Duration, String> {
    if seconds == 0 {
        return Err("at least 1 second".to_string());
    }
    limits::DURATION
        .check(Duration::from_secs(seconds))
        .map_err(|_| {
            format!(
                "at most {} seconds ({})",
                limits::DURATION.max().as_secs(),
                limits::DURATION.text()
            )
        })
}

/// Where a value came from, so that a message names it as the user wrote it.
enum Origin<'a> {
    /// A command-line flag, such as `--interval`.
    Flag(&'static str),
    /// An environment variable, such as `RECONFD_INTERVAL`.
    Env(&'static str),
    /// A key of the settings file.
    File(&'a Path, &'static str),
}

impl Origin<'_> {
    /// The origin of the value of argument `id`, which clap read from the command line or
    /// from the environment.
    fn of(matches: &ArgMatches, id: &str, flag: &'static str, env: &'static str) -> Self {
        match matches.value_source(id) {
            Some(ValueSource::EnvVariable) => Origin::Env(env),
            _ => Origin::Flag(flag),
        }
    }

    /// The error for `value` from here, which is wrong because of `problem`.
    fn invalid(&self, value: &str, problem: &str) -> SettingsError {
        match self {
            Origin::Flag(flag) => SettingsError::Invalid(format!("{flag} {value}: {problem}")),
            Origin::Env(variable) => {
                SettingsError::Invalid(format!("{variable}={value}: {problem}"))
            }
            Origin::File(path, key) => SettingsError::Parse {
                path: path.to_path_buf(),
                message: format!("`{key}` = {value}: {problem}"),
            },
        }
    }
}

/// Maps confd's level names (which include `panic` and `fatal`) onto tracing's.
fn normalize_log_level(level: &str) -> Result<String, SettingsError> {
    match level.to_ascii_lowercase().as_str() {
        "trace" | "debug" | "info" | "error" => Ok(level.to_ascii_lowercase()),
        "warn" | "warning" => Ok("warn".to_string()),
        "panic" | "fatal" => Ok("error".to_string()),
        _ => Err(SettingsError::Invalid(format!(
            "--log-level {level:?} is not a level (error, warn, info, debug, trace)"
        ))),
    }
}

fn read_settings_file(path: &Path, is_default: bool) -> Result<SettingsFile, SettingsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if is_default && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(SettingsFile::default());
        }
        Err(source) => {
            return Err(SettingsError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // confd's keys for stores reconfd does not offer are blanked out, not removed, so that
    // every other error keeps its line and column.
    let mut ignored = Vec::new();
    let kept: String = text
        .split_inclusive('\n')
        .map(|line| {
            let key = line
                .trim_start()
                .split(|c: char| c == '=' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            match CONFD_KEYS_NOT_USED_YET
                .iter()
                .find(|unused| **unused == key)
            {
                Some(unused) if line.contains('=') => {
                    ignored.push(*unused);
                    line.chars()
                        .map(|c| if c == '\n' { c } else { ' ' })
                        .collect()
                }
                _ => line.to_string(),
            }
        })
        .collect();
    for key in ignored {
        tracing::warn!(
            "{}: key `{key}` belongs to a store reconfd does not offer yet; ignored",
            path.display()
        );
    }
    toml::from_str(&kept).map_err(|e: toml::de::Error| {
        // The parser's own rendering quotes the offending line, which may hold a password:
        // the place and the message are enough.
        let mut message = e.message().trim_end().replace('\n', " ");
        let mut place = String::new();
        if let Some(span) = e.span() {
            let before = kept.get(..span.start).unwrap_or(&kept);
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - line_start + 1;
            place = format!(":{line}:{column}");
            // Name the key of the line at fault, as the other settings errors do.
            let key = kept
                .get(line_start..)
                .and_then(|rest| rest.split_once('='))
                .map(|(key, _)| key.trim())
                .filter(|key| {
                    !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                });
            if let Some(key) = key
                && !message.contains(&format!("`{key}`"))
            {
                message = format!("`{key}`: {message}");
            }
        }
        SettingsError::Parse {
            path: PathBuf::from(format!("{}{place}", path.display())),
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, SettingsError> {
        let mut argv = vec!["reconfd"];
        argv.extend_from_slice(args);
        let matches = Cli::command()
            .try_get_matches_from(argv)
            .expect("arguments parse");
        let cli = Cli::from_arg_matches(&matches).expect("arguments map onto Cli");
        Settings::merge(cli, &matches)
    }

    fn write_settings(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("reconfd.toml");
        std::fs::write(&path, text).expect("write settings");
        let path = path.to_string_lossy().into_owned();
        (dir, path)
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = settings(&["--confdir", "/nonexistent", "--file", "a.yaml"]).expect("settings");
        assert_eq!(s.interval, Duration::from_secs(600));
        assert_eq!(s.mode, RunMode::Poll);
        assert_eq!(s.log_level, "info");
        assert_eq!(s.prefix, "");
    }

    #[test]
    fn settings_file_uses_confd_keys_and_flags_win() {
        let (_dir, path) = write_settings(
            "backend = \"env\"\ninterval = 30\nwatch = true\nprefix = \"/production\"\n\
             log-level = \"debug\"\nsync-only = true\nnodes = [\"http://127.0.0.1:2379\"]\n\
             scheme = \"http\"\n",
        );
        let s = settings(&["--config-file", &path, "--interval", "5"]).expect("settings");
        assert_eq!(s.backend, Some(Backend::Env));
        assert_eq!(s.interval, Duration::from_secs(5), "flag beats file");
        assert_eq!(s.mode, RunMode::Watch, "file sets watch");
        assert_eq!(s.prefix, "/production");
        assert_eq!(s.log_level, "debug");
        assert!(s.sync_only);
    }

    #[test]
    fn unknown_settings_key_names_file_and_key() {
        let (_dir, path) = write_settings("backnd = \"env\"\n");
        let err = settings(&["--config-file", &path]).expect_err("typo must fail");
        let message = err.to_string();
        assert!(message.contains(&path), "{message}");
        assert!(message.contains("backnd"), "{message}");
    }

    #[test]
    fn missing_named_settings_file_is_an_error() {
        let err = settings(&["--config-file", "/nonexistent/reconfd.toml"]).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/reconfd.toml"));
    }

    #[test]
    fn unknown_backend_and_zero_interval_are_rejected() {
        let err = settings(&["--backend", "zookeper"]).expect_err("unknown store");
        assert!(err.to_string().contains("zookeper"));
        let err = settings(&["--backend", "env", "--interval", "0"]).expect_err("zero");
        assert!(err.to_string().contains("--interval"));
    }

    #[test]
    fn intervals_and_waits_past_the_limit_name_flag_variable_or_key_and_the_limit() {
        let err = settings(&["--backend", "env", "--interval", "10000000000000000000"])
            .expect_err("too long");
        assert_eq!(
            err.to_string(),
            "--interval 10000000000000000000: at most 31536000 seconds (365d)"
        );
        let err = settings(&["--backend", "env", "--interval", "31536001"]).expect_err("too long");
        assert!(err.to_string().contains("at most 31536000"), "{err}");
        let s = settings(&["--backend", "env", "--interval", "31536000"]).expect("the limit");
        assert_eq!(s.interval, Duration::from_secs(365 * 24 * 60 * 60));
        let s = settings(&["--backend", "env", "--interval", "1"]).expect("the shortest");
        assert_eq!(s.interval, Duration::from_secs(1));

        let err =
            settings(&["--backend", "env", "--wait", "1s:300000000000y"]).expect_err("too long");
        assert_eq!(
            err.to_string(),
            "--wait \"1s:300000000000y\": maximum \"300000000000y\": at most 365d"
        );
        let s = settings(&["--backend", "env", "--wait", "365d"]).expect("the limit");
        assert_eq!(s.wait.map(|w| w.min), Some(Duration::from_secs(31_536_000)));

        let (_dir, path) =
            write_settings("backend = \"env\"\ninterval = 31536001\nwait = \"300000000000y\"\n");
        let err = settings(&["--config-file", &path]).expect_err("too long");
        assert_eq!(
            err.to_string(),
            format!("{path}: `interval` = 31536001: at most 31536000 seconds (365d)")
        );
        let err = settings(&["--config-file", &path, "--interval", "5"]).expect_err("too long");
        assert_eq!(
            err.to_string(),
            format!("{path}: `wait` = \"300000000000y\": at most 365d")
        );
        let (_dir, path) = write_settings("backend = \"env\"\ninterval = 0\n");
        let err = settings(&["--config-file", &path]).expect_err("zero");
        assert_eq!(
            err.to_string(),
            format!("{path}: `interval` = 0: at least 1 second")
        );
    }

    #[test]
    fn listen_and_log_format_come_from_the_file_and_flags_win() {
        let s = settings(&["--backend", "env"]).expect("settings");
        assert_eq!(s.listen, None, "off by default");
        assert_eq!(s.log_format, LogFormat::Text);
        let (_dir, path) = write_settings(
            "listen = \"127.0.0.1:9100\"\nlog-format = \"json\"\nbackend = \"env\"\n",
        );
        let s = settings(&["--config-file", &path]).expect("settings");
        assert_eq!(s.listen, Some(SocketAddr::from(([127, 0, 0, 1], 9100))));
        assert_eq!(s.log_format, LogFormat::Json);
        let s = settings(&[
            "--config-file",
            &path,
            "--listen",
            "[::1]:9200",
            "--log-format",
            "text",
        ])
        .expect("settings");
        assert_eq!(
            s.listen,
            Some(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 9200)))
        );
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn unusable_listen_addresses_name_the_flag_or_key() {
        let err = Cli::command()
            .try_get_matches_from(["reconfd", "--listen", "localhost"])
            .expect_err("not an address");
        assert!(err.to_string().contains("--listen"), "{err}");
        let (_dir, path) = write_settings("listen = \"9100\"\n");
        let err = settings(&["--config-file", &path]).expect_err("not an address");
        assert!(err.to_string().contains("`listen`"), "{err}");
    }

    #[test]
    fn settings_file_errors_name_line_column_and_key_but_not_the_line() {
        let (_dir, path) = write_settings("backend = \"env\"\ninterval = \"abc\"\n");
        let err = settings(&["--config-file", &path]).expect_err("not a number");
        assert!(
            err.to_string()
                .starts_with(&format!("{path}:2:12: `interval`: ")),
            "{err}"
        );
        let (_dir, path) = write_settings("backend = \"env\"\npassword = \"ReaderPw-PLUGH\n");
        let err = settings(&["--config-file", &path]).expect_err("no closing quote");
        assert!(err.to_string().starts_with(&format!("{path}:2:")), "{err}");
        assert!(!err.to_string().contains("PLUGH"), "{err}");
        let (_dir, path) = write_settings("srv_domain = \"x\"\nintervall = 5\n");
        let err = settings(&["--config-file", &path]).expect_err("misspelt");
        assert!(
            err.to_string()
                .starts_with(&format!("{path}:2:1: unknown field `intervall`")),
            "{err}"
        );
    }

    #[test]
    fn onetime_wins_over_watch() {
        let s = settings(&["--backend", "env", "--watch", "--onetime"]).expect("settings");
        assert_eq!(s.mode, RunMode::Onetime);
    }

    #[test]
    fn older_confd_toml_forms_are_accepted() {
        let (_dir, path) = write_settings("file = \"data.yaml\"\nsecret_keyring = \"/k\"\n");
        let s = settings(&["--config-file", &path]).expect("settings");
        assert_eq!(
            s.backend,
            Some(Backend::File {
                paths: vec![PathBuf::from("data.yaml")],
                filter: None
            })
        );
    }
}
