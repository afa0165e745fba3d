//! Settings: the command line, `RECONFD_*` environment variables and the settings file, merged
//! with precedence flag > environment > file > default.
//!
//! Every setting is declared once, as a field of `Cli` or of [`StoreFields`]. The settings
//! file is read into a `Cli`, and clap lays the flags and variables given over it; the
//! defaults are applied and the values checked here, and a value refused names the flag,
//! variable or key it came from.
//!
//! The settings file uses confd's `confd.toml` keys, so an existing confd.toml works. confd
//! keys for stores reconfd does not offer yet are accepted with a warning; any other unknown
//! key is an error that names the file and the key.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Command, FromArgMatches};
use serde::Deserialize;
use serde::de::{DeserializeOwned, Visitor};
use toml::Spanned;
use toml::de::{DeTable, Deserializer};

use crate::announce::Announce;
use crate::cli::{Cli, ExecTable, LogFormat, Subcommands};
use crate::exec::{self, Exec};
use crate::limits;
use crate::secrets;
use crate::store::backend::{Backend, StoreFields};
use crate::wait::Wait;

const DEFAULT_CONFDIR: &str = "/etc/reconfd";
const DEFAULT_INTERVAL_SECONDS: u64 = 600;

/// confd.toml keys that belong to stores or features reconfd does not offer yet. They are
/// accepted so that a confd.toml can be used unchanged.
const CONFD_KEYS_NOT_USED_YET: &[&str] = &["table", "app_id", "user_id", "secret_keyring"];

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
    /// The values of the global store are secrets (`--secret`).
    pub secret: bool,
    /// Prefix joined in front of every resource's prefix.
    pub prefix: String,
    /// Time between polls or safety resyncs: from a second to [`limits::DURATION`].
    pub interval: Duration,
    /// Once, polling or watching.
    pub mode: RunMode,
    /// Compare and show diffs only.
    pub noop: bool,
    /// `--onetime --noop` exits 3 when a destination would change.
    pub exit_code: bool,
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
    /// The `min_keys` of resources that set none.
    pub min_keys: Option<usize>,
    /// Roll back failed reloads for every resource.
    pub rollback: bool,
    /// Credentials of reconfd's environment that commands get after all.
    pub command_env: Vec<String>,
    /// Where to serve metrics and the status page.
    pub listen: Option<SocketAddr>,
    /// Exec mode: the service reconfd runs as its child.
    pub exec: Option<Exec>,
    /// The keys to announce: the `announce` subcommand's one, else the settings file's
    /// `[[announce]]` tables.
    pub announcements: Vec<Announce>,
}

impl Settings {
    /// Parses the process's command line and environment, reads the settings file, and merges
    /// them. Command-line syntax errors exit through clap (status 2).
    pub fn from_command_line() -> Result<Settings, SettingsError> {
        Settings::merge(&crate::cli::matches())
    }

    /// Reads the settings file named by `matches` (the command line and environment, parsed
    /// by [`crate::cli::command`]) and merges them.
    pub fn merge(matches: &ArgMatches) -> Result<Settings, SettingsError> {
        let cli = Cli::from_arg_matches(matches).unwrap_or_else(|e| e.exit());
        let config_file = cli.config_file.clone().unwrap_or_else(|| {
            let confdir = cli
                .confdir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFDIR));
            let ours = confdir.join("reconfd.toml");
            // A confd user's `--confdir /etc/confd` has confd's settings file beside conf.d,
            // where confd reads it by default.
            let confds = confdir.join("confd.toml");
            if !ours.exists() && confds.exists() {
                tracing::info!(
                    "reading confd's settings file {} (no reconfd.toml beside it)",
                    confds.display()
                );
                confds
            } else {
                ours
            }
        });
        let mut given = read_settings_file(&config_file, cli.config_file.is_none())?;
        let exec_of_file = given.exec.clone();
        // Clap lays only what was given over the file: a flag or variable beats the file.
        given
            .update_from_arg_matches(&without_defaults(matches))
            .unwrap_or_else(|e| e.exit());
        given.store.unset_empty();
        // confd's variables for the client's TLS files count where nothing else set them, as
        // confd reads them.
        for (file, variable) in [
            (&mut given.store.client_cert, "CONFD_CLIENT_CERT"),
            (&mut given.store.client_key, "CONFD_CLIENT_KEY"),
            (&mut given.store.client_cakeys, "CONFD_CLIENT_CAKEYS"),
        ] {
            if file.is_none() {
                *file = std::env::var_os(variable)
                    .filter(|value| !value.is_empty())
                    .map(PathBuf::from);
            }
        }
        // `--exec` gives the command only: the file's `[exec]` table keeps the rest.
        if let (Some(file), Some(given)) = (exec_of_file, given.exec.as_mut()) {
            *given = ExecTable {
                command: given.command.take(),
                ..file
            };
        }
        let origins = Origins {
            matches,
            command: crate::cli::command(),
            config_file: &config_file,
        };

        let interval = origins
            .read("interval", given.interval, |seconds| interval(*seconds))?
            .unwrap_or(Duration::from_secs(DEFAULT_INTERVAL_SECONDS));
        let store = &given.store;
        origins.read("backend", store.backend.as_ref(), |name| {
            crate::store::backend::known_store(name)
        })?;
        let backend = if store.name_a_store() {
            Some(store.resolve().map_err(SettingsError::Invalid)?)
        } else {
            None
        };
        let log_level = origins
            .read("log_level", given.log_level, |level| {
                normalize_log_level(level)
            })?
            .unwrap_or_else(|| "info".to_string());
        let wait = origins.read("wait", given.wait, |text| text.parse::<Wait>())?;
        let render_timeout = origins.read("render_timeout", given.render_timeout, |text| {
            limits::RENDER_TIMEOUT.parse(text)
        })?;
        if render_timeout.is_some_and(|timeout| timeout.is_zero()) {
            return Err(SettingsError::Invalid(
                "--render-timeout: more than zero, or every render would fail".to_string(),
            ));
        }
        let render_max_size = origins.read("render_max_size", given.render_max_size, |text| {
            limits::parse_size(text)
        })?;
        let exec = match given.exec {
            Some(table) => Some(origins.exec(table)?),
            None => None,
        };
        let exec = match exec {
            // A settings file written for the daemon serves a one-time run too (in CI, say),
            // as its [[announce]] tables do: the service is not started.
            Some(_) if given.onetime && origins.in_file("exec") && !origins.in_file("onetime") => {
                tracing::warn!(
                    "{}: the [exec] table of {} is not run",
                    origins.name("onetime"),
                    origins.config_file.display()
                );
                None
            }
            Some(_) if given.onetime => {
                return Err(SettingsError::Invalid(format!(
                    "{} cannot be used with {}: --onetime exits once the files are synced, and \
                     exec mode runs a service until it stops",
                    origins.name("exec"),
                    origins.name("onetime")
                )));
            }
            exec => exec,
        };
        let subcommand = crate::cli::subcommand(matches).unwrap_or_else(|e| e.exit());
        // `check`, `render` and the others have exit statuses of their own, and a job's
        // RECONFD_EXIT_CODE is not for them.
        if given.exit_code && !(given.onetime && given.noop) && subcommand.is_none() {
            return Err(SettingsError::Invalid(format!(
                "{}: only a run with --onetime and --noop has the exit status 3; give both",
                origins.name("exit_code")
            )));
        }
        let announcements = match &subcommand {
            Some(Subcommands::Announce(fields)) => {
                vec![
                    Announce::read(fields, |field| format!("--{field}"))
                        .map_err(SettingsError::Invalid)?,
                ]
            }
            _ => given
                .announce
                .iter()
                .map(|fields| {
                    Announce::read(fields, |field| {
                        format!("[[announce]] {}: `{field}` =", fields.key)
                    })
                    .map_err(|message| SettingsError::Parse {
                        path: config_file.clone(),
                        message,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if let (Some(first), None) = (announcements.first(), &backend) {
            return Err(SettingsError::Invalid(format!(
                "announcing {}: no store named (--backend)",
                first.announcement.key
            )));
        }
        let mode = if given.onetime {
            RunMode::Onetime
        } else if given.watch {
            RunMode::Watch
        } else {
            RunMode::Poll
        };
        Ok(Settings {
            confdir: given
                .confdir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFDIR)),
            backend,
            secret: given.store.secret,
            prefix: given.prefix.unwrap_or_default(),
            interval,
            mode,
            noop: given.noop,
            exit_code: given.exit_code,
            sync_only: given.sync_only,
            keep_stage_file: given.keep_stage_file,
            log_level,
            log_format: given.log_format.unwrap_or_default(),
            rollback: given.rollback,
            command_env: given.command_env,
            wait,
            min_keys: given.min_keys,
            render_timeout,
            render_max_size,
            listen: given.listen,
            exec,
            announcements,
        })
    }
}

/// `matches` without the values clap supplies for what was not given (`false` for a switch),
/// so that laying them over the settings file's keeps the file's.
fn without_defaults(matches: &ArgMatches) -> ArgMatches {
    let mut given = matches.clone();
    for id in matches.ids() {
        if matches.value_source(id.as_str()) == Some(ValueSource::DefaultValue) {
            // `id` comes from these matches, so clearing it cannot fail.
            let _ = given.try_clear_id(id.as_str());
        }
    }
    given
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

/// Where each value came from, so that a message names it as the user wrote it.
struct Origins<'a> {
    /// The command line and environment, which tell where each value given came from.
    matches: &'a ArgMatches,
    /// The flags' definitions, which give their names and variables.
    command: Command,
    /// The settings file, where every other value came from.
    config_file: &'a Path,
}

impl Origins<'_> {
    /// `value` of setting `id`, if any, read by `read`; a value it refuses names the flag,
    /// variable or settings-file key it came from.
    fn read<T: Debug, U>(
        &self,
        id: &str,
        value: Option<T>,
        read: impl FnOnce(&T) -> Result<U, String>,
    ) -> Result<Option<U>, SettingsError> {
        let Some(value) = value else {
            return Ok(None);
        };
        read(&value)
            .map(Some)
            .map_err(|problem| self.invalid(id, &format!("{value:?}"), &problem))
    }

    /// Where setting `id` came from, as the user wrote it: `--exec`, `RECONFD_EXEC`, or
    /// `` `exec` in FILE ``.
    /// True when setting `id` came from the settings file, not the command line or the
    /// environment.
    fn in_file(&self, id: &str) -> bool {
        !matches!(
            self.matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    }

    fn name(&self, id: &str) -> String {
        let arg = self.command.get_arguments().find(|arg| arg.get_id() == id);
        let name = arg.and_then(Arg::get_long).unwrap_or(id);
        match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) => format!("--{name}"),
            Some(ValueSource::EnvVariable) => arg
                .and_then(Arg::get_env)
                .map(|variable| variable.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("--{name}")),
            _ => format!("`{name}` in {}", self.config_file.display()),
        }
    }

    /// The exec mode's settings from `table`, with the defaults; a table without a command
    /// (and no `--exec` to give one) or an empty command is refused.
    fn exec(&self, table: ExecTable) -> Result<Exec, SettingsError> {
        let command = match table.command {
            Some(command) if !command.trim().is_empty() => command,
            Some(command) => {
                return Err(self.invalid("exec", &format!("{command:?}"), "an empty command"));
            }
            None => {
                return Err(SettingsError::Parse {
                    path: self.config_file.to_path_buf(),
                    message: "`exec`: the table names no `command`, and neither --exec nor \
                              RECONFD_EXEC gives one"
                        .to_string(),
                });
            }
        };
        Ok(Exec {
            command,
            reload_signal: table.reload_signal.unwrap_or(exec::DEFAULT_RELOAD_SIGNAL),
            kill_signal: table.kill_signal.unwrap_or(exec::DEFAULT_KILL_SIGNAL),
            kill_timeout: table.kill_timeout.unwrap_or(exec::DEFAULT_KILL_TIMEOUT),
            splay: table.splay.unwrap_or_default(),
        })
    }

    /// The error for `value` of setting `id`, which is wrong because of `problem`.
    fn invalid(&self, id: &str, value: &str, problem: &str) -> SettingsError {
        let arg = self.command.get_arguments().find(|arg| arg.get_id() == id);
        // The settings read here are `Cli`'s own, whose settings-file keys are their flags'
        // names (both kebab-case).
        let name = arg.and_then(Arg::get_long).unwrap_or(id);
        match self.matches.value_source(id) {
            Some(ValueSource::CommandLine) => {
                SettingsError::Invalid(format!("--{name} {value}: {problem}"))
            }
            Some(ValueSource::EnvVariable) => {
                let variable = arg.and_then(Arg::get_env).unwrap_or_default();
                SettingsError::Invalid(format!("{}={value}: {problem}", variable.to_string_lossy()))
            }
            _ => {
                let text = std::fs::read_to_string(self.config_file).unwrap_or_default();
                match value_span(&text, name) {
                    // As a type error is reported: its place, and the line quoted.
                    Some(span) => file_error(
                        self.config_file,
                        &text,
                        &format!("`{name}`: {problem}"),
                        Some(span),
                    ),
                    None => SettingsError::Parse {
                        path: self.config_file.to_path_buf(),
                        message: format!("`{name}` = {value}: {problem}"),
                    },
                }
            }
        }
    }
}

/// Where the value of top-level `key` (spelt with `-` or `_`) starts in settings-file `text`.
fn value_span(text: &str, key: &str) -> Option<Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            // The keys of a table are not top-level settings.
            return None;
        }
        let Some((name, rest)) = trimmed.split_once('=') else {
            continue;
        };
        let name = name.trim().trim_matches('"');
        if name.replace('_', "-") == key.replace('_', "-") {
            let at = start + (line.len() - rest.trim_start().len());
            return Some(at..at);
        }
    }
    None
}

/// Maps confd's level names (which include `panic` and `fatal`) onto tracing's.
fn normalize_log_level(level: &str) -> Result<String, String> {
    match level.to_ascii_lowercase().as_str() {
        "trace" | "debug" | "info" | "error" => Ok(level.to_ascii_lowercase()),
        "warn" | "warning" => Ok("warn".to_string()),
        "panic" | "fatal" => Ok("error".to_string()),
        _ => Err("not a level (error, warn, info, debug, trace)".to_string()),
    }
}

/// The settings file at `path`, read into the struct of the command line's settings; nothing
/// when the default file is missing.
fn read_settings_file(path: &Path, is_default: bool) -> Result<Cli, SettingsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if is_default && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Cli::default());
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
            "{}: key `{key}` is for a store or feature of confd reconfd does not offer yet; \
             ignored",
            path.display()
        );
    }
    let error = |e: toml::de::Error| file_error(path, &kept, e.message(), e.span());
    let table = DeTable::parse(&kept).map_err(error)?;
    // The store's keys are read as a resource's `[backend]` table is read, the others as
    // `Cli`'s: each from its part of the parsed table, whose spans keep every error's place.
    let span = table.span();
    let store_keys = keys_of::<StoreFields>();
    let (store, others): (DeTable, DeTable) = table
        .into_inner()
        .into_iter()
        .partition(|(key, _)| store_keys.contains(&key.get_ref().as_ref()));
    let other_keys = keys_of::<Cli>();
    if let Some((key, _)) = others
        .iter()
        .find(|(key, _)| !other_keys.contains(&key.get_ref().as_ref()))
    {
        let expected: Vec<String> = other_keys
            .iter()
            .chain(store_keys)
            .map(|key| format!("`{key}`"))
            .collect();
        let message = format!(
            "unknown field `{}`, expected one of {}",
            key.get_ref(),
            expected.join(", ")
        );
        return Err(file_error(path, &kept, &message, Some(key.span())));
    }
    let mut settings =
        Cli::deserialize(Deserializer::from(Spanned::new(span.clone(), others))).map_err(error)?;
    settings.store =
        StoreFields::deserialize(Deserializer::from(Spanned::new(span, store))).map_err(error)?;
    Ok(settings)
}

/// True for a settings-file or `[backend]` key that is known and holds no credential, whose
/// value an error may quote.
pub(crate) fn readable_key(key: &str) -> bool {
    let known = keys_of::<Cli>().contains(&key)
        || keys_of::<StoreFields>().contains(&key)
        || keys_of::<ExecTable>().contains(&key);
    known
        && !StoreFields::credential_keys()
            .iter()
            .any(|credential| credential == key)
}

/// The keys `T`'s derived `Deserialize` reads, which it hands to `deserialize_struct`.
pub(crate) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct KeyCatcher(&'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for &mut KeyCatcher {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("only a struct's keys are caught"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            keys: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = keys;
            self.deserialize_any(visitor)
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut catcher = KeyCatcher(&[]);
    // The deserializer fails on purpose once it has the keys.
    let _ = T::deserialize(&mut catcher);
    catcher.0
}

/// The settings-file error `message` at `span` of `text`, placed as `file:line:column`,
/// naming the key of its line and quoting the line with any credential masked (see
/// [`secrets::with_settings_line`]). The parser's own rendering is not used: it quotes the
/// offending line as it is, which may hold a password.
/// A TOML error's message on one line; an integer TOML cannot hold is said to be one, where the
/// parser's words name a Rust type.
pub(crate) fn toml_message(message: &str) -> String {
    let line = message.trim_end().replace('\n', " ");
    match line.split_once("invalid type: integer `") {
        Some((before, rest)) if rest.contains("` as i128") => {
            let number = rest.split('`').next().unwrap_or_default();
            format!(
                "{before}`{number}` is past what a TOML integer holds \
                 (-9223372036854775808 to 9223372036854775807)"
            )
        }
        _ => line,
    }
}

fn file_error(path: &Path, text: &str, message: &str, span: Option<Range<usize>>) -> SettingsError {
    let mut message = toml_message(message);
    let mut place = String::new();
    if let Some(span) = span {
        let before = text.get(..span.start).unwrap_or(text);
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - line_start + 1;
        place = format!(":{line}:{column}");
        message = secrets::with_settings_line(&message, text, line_start, readable_key);
    }
    SettingsError::Parse {
        path: PathBuf::from(format!("{}{place}", path.display())),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use nix::sys::signal::Signal;

    use super::*;

    fn settings(args: &[&str]) -> Result<Settings, SettingsError> {
        let mut argv = vec!["reconfd"];
        argv.extend_from_slice(args);
        let matches = crate::cli::command()
            .try_get_matches_from(argv)
            .expect("arguments parse");
        Settings::merge(&matches)
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
    fn confds_settings_file_in_the_confdir_is_read_when_there_is_no_reconfd_toml() {
        let dir = tempfile::tempdir().expect("temp dir");
        let confdir = dir.path().to_string_lossy().into_owned();
        std::fs::write(
            dir.path().join("confd.toml"),
            "backend = \"env\"\ninterval = 42\n",
        )
        .expect("confd.toml");
        let s = settings(&["--confdir", &confdir]).expect("settings");
        assert_eq!(s.interval, Duration::from_secs(42));
        assert_eq!(s.backend, Some(Backend::Env));
        // reconfd.toml, when there is one, is the settings file.
        std::fs::write(dir.path().join("reconfd.toml"), "backend = \"env\"\n").expect("ours");
        let s = settings(&["--confdir", &confdir]).expect("settings");
        assert_eq!(s.interval, Duration::from_secs(600));
    }

    #[test]
    fn empty_texts_of_a_confd_toml_are_not_given() {
        let (_dir, path) = write_settings(
            "backend = \"etcd\"\nnodes = [\"http://127.0.0.1:2379\"]\nclient_cakeys = \"\"\n\
             client_cert = \"\"\nclient_key = \"\"\nusername = \"\"\npassword = \"\"\n\
             srv_domain = \"\"\n",
        );
        let s = settings(&["--config-file", &path]).expect("settings");
        let Some(Backend::Etcd(etcd)) = &s.backend else {
            panic!("{:?}", s.backend);
        };
        assert_eq!(etcd.username, None);
        assert_eq!(etcd.tls.client_ca_keys, None);
    }

    #[test]
    fn nodes_without_a_backend_are_etcd_as_in_confd() {
        let s = settings(&["--node", "http://127.0.0.1:2379"]).expect("settings");
        assert!(
            matches!(&s.backend, Some(Backend::Etcd(_))),
            "{:?}",
            s.backend
        );
        let s = settings(&["--confdir", "/nonexistent"]).expect("settings");
        assert_eq!(s.backend, None, "nothing given, no store");
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
    fn options_given_after_a_subcommand_are_settings_too() {
        let s = settings(&["check", "--confdir", "/srv/conf", "--prefix", "/p"]).expect("valid");
        assert_eq!(s.confdir, PathBuf::from("/srv/conf"));
        assert_eq!(s.prefix, "/p");
        let s = settings(&["--confdir", "/srv/conf", "--onetime"]).expect("no subcommand");
        assert_eq!(s.mode, RunMode::Onetime);
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
            format!(
                "{path}:2:12: `interval`: at most 31536000 seconds (365d), in `interval = \
                 31536001`"
            )
        );
        let err = settings(&["--config-file", &path, "--interval", "5"]).expect_err("too long");
        assert_eq!(
            err.to_string(),
            format!("{path}:3:8: `wait`: at most 365d, in `wait = \"300000000000y\"`")
        );
        let (_dir, path) = write_settings("backend = \"env\"\ninterval = 0\n");
        let err = settings(&["--config-file", &path]).expect_err("zero");
        assert_eq!(
            err.to_string(),
            format!("{path}:2:12: `interval`: at least 1 second, in `interval = 0`")
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
        let err = crate::cli::command()
            .try_get_matches_from(["reconfd", "--listen", "localhost"])
            .expect_err("not an address");
        assert!(err.to_string().contains("--listen"), "{err}");
        let (_dir, path) = write_settings("listen = \"9100\"\n");
        let err = settings(&["--config-file", &path]).expect_err("not an address");
        assert!(err.to_string().contains("`listen`"), "{err}");
        assert!(err.to_string().contains("give IP:PORT"), "{err}");
        for (spelled, address) in [
            (":9100", "0.0.0.0:9100"),
            ("localhost:9100", "127.0.0.1:9100"),
        ] {
            let s = settings(&["--listen", spelled]).expect("an address");
            assert_eq!(
                s.listen,
                Some(address.parse().expect("address")),
                "{spelled}"
            );
            let (_dir, path) = write_settings(&format!("listen = \"{spelled}\"\n"));
            let s = settings(&["--config-file", &path]).expect("an address");
            assert_eq!(
                s.listen,
                Some(address.parse().expect("address")),
                "{spelled}"
            );
        }
    }

    #[test]
    fn settings_file_errors_name_line_column_and_key_and_show_the_line_without_credentials() {
        let (_dir, path) = write_settings("backend = \"env\"\ninterval = \"abc\"\n");
        let err = settings(&["--config-file", &path]).expect_err("not a number");
        assert!(
            err.to_string()
                .starts_with(&format!("{path}:2:12: `interval`: ")),
            "{err}"
        );
        assert!(
            err.to_string().ends_with(", in `interval = \"abc\"`"),
            "{err}"
        );
        for (line, shown) in [
            ("password = \"ReaderPw-PLUGH", "password = ***"),
            ("password = 12345678", "password = ***"),
            ("auth_token = [\"Tok-PLUGH\"]", "auth_token = ***"),
            ("passwrd = \"Misspelt-PLUGH\"", "passwrd = ***"),
        ] {
            let (_dir, path) = write_settings(&format!("backend = \"env\"\n{line}\n"));
            let err = settings(&["--config-file", &path]).expect_err(line);
            let message = err.to_string();
            assert!(message.starts_with(&format!("{path}:2:")), "{message}");
            assert!(message.ends_with(&format!(", in `{shown}`")), "{message}");
            assert!(
                !message.contains("PLUGH") && !message.contains("12345678"),
                "{message}"
            );
        }
        let (_dir, path) = write_settings("backend = \"env\"\ninterval = 99999999999999999999\n");
        let err = settings(&["--config-file", &path]).expect_err("past i64");
        assert_eq!(
            err.to_string(),
            format!(
                "{path}:2:12: `interval`: `99999999999999999999` is past what a TOML integer \
                 holds (-9223372036854775808 to 9223372036854775807), in `interval = \
                 99999999999999999999`"
            )
        );
        let (_dir, path) = write_settings("table = \"x\"\nintervall = 5\n");
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

    #[test]
    fn switches_and_lists_of_the_file_hold_unless_a_flag_gives_them() {
        let (_dir, path) = write_settings(
            "backend = \"etcd\"\nnodes = [\"10.0.0.1:2379\"]\nclient_insecure = true\n\
             noop = true\nrollback = true\n",
        );
        let s = settings(&["--config-file", &path]).expect("settings");
        assert!(s.noop && s.rollback, "switches from the file");
        let Some(Backend::Etcd(options)) = s.backend else {
            panic!("etcd: {:?}", s.backend);
        };
        assert_eq!(
            options.nodes,
            ["https://10.0.0.1:2379"],
            "TLS from the file"
        );
        let s = settings(&["--config-file", &path, "--node", "10.0.0.2:2379", "--noop"])
            .expect("settings");
        let Some(Backend::Etcd(options)) = s.backend else {
            panic!("etcd: {:?}", s.backend);
        };
        assert_eq!(options.nodes, ["https://10.0.0.2:2379"], "the flag's list");
        assert!(s.noop && s.rollback);
    }

    #[test]
    fn store_keys_of_the_file_are_checked_in_place_and_unknown_keys_list_all_keys() {
        let (_dir, path) = write_settings("backend = \"vault\"\nkv_version = 300\n");
        let err = settings(&["--config-file", &path]).expect_err("not a u8");
        assert_eq!(
            err.to_string(),
            format!(
                "{path}:2:14: `kv_version`: invalid value: integer `300`, expected u8, in \
                 `kv_version = 300`"
            )
        );
        let (_dir, path) = write_settings("backend = \"env\"\n\nclient_cakey = \"ca.pem\"\n");
        let message = settings(&["--config-file", &path])
            .expect_err("misspelt")
            .to_string();
        assert!(
            message.starts_with(&format!(
                "{path}:3:1: unknown field `client_cakey`, expected one of `confdir`, "
            )),
            "{message}"
        );
        for key in ["`render-max-size`", "`client_cakeys`", "`filter`"] {
            assert!(message.contains(key), "{message}");
        }
        assert!(!message.contains("`config_file`"), "{message}");
    }

    #[test]
    fn render_limits_name_the_flag_or_key_they_came_from() {
        let (_dir, path) = write_settings("backend = \"env\"\nrender-timeout = \"2h\"\n");
        let err = settings(&["--config-file", &path]).expect_err("too long");
        assert_eq!(
            err.to_string(),
            format!("{path}:2:18: `render-timeout`: at most 1h, in `render-timeout = \"2h\"`")
        );
        let s = settings(&["--config-file", &path, "--render-timeout", "5s"]).expect("flag wins");
        assert_eq!(s.render_timeout, Some(Duration::from_secs(5)));
        let err = settings(&["--backend", "env", "--render-max-size", "9GiB"]).expect_err("large");
        assert_eq!(err.to_string(), "--render-max-size \"9GiB\": at most 4GiB");
        let (_dir, path) = write_settings("backend = \"env\"\nrender-max-size = \"5GiB\"\n");
        let err = settings(&["--config-file", &path]).expect_err("too large");
        assert_eq!(
            err.to_string(),
            format!(
                "{path}:2:19: `render-max-size`: at most 4GiB, in `render-max-size = \"5GiB\"`"
            )
        );
    }

    #[test]
    fn exec_is_a_command_or_a_table_whose_command_the_flag_gives() {
        let s = settings(&["--backend", "env"]).expect("settings");
        assert_eq!(s.exec, None, "off by default");
        let s = settings(&[
            "--backend",
            "env",
            "--exec",
            "haproxy -W -db -f run/haproxy.cfg",
        ])
        .expect("settings");
        assert_eq!(
            s.exec,
            Some(Exec {
                command: "haproxy -W -db -f run/haproxy.cfg".to_string(),
                reload_signal: Signal::SIGHUP,
                kill_signal: Signal::SIGTERM,
                kill_timeout: Duration::from_secs(30),
                splay: Duration::ZERO,
            })
        );
        let (_dir, path) = write_settings("backend = \"env\"\nexec = \"nginx\"\n");
        let s = settings(&["--config-file", &path]).expect("settings");
        assert_eq!(s.exec.map(|exec| exec.command).as_deref(), Some("nginx"));

        let (_dir, path) = write_settings(
            "backend = \"env\"\n[exec]\ncommand = \"haproxy\"\nreload_signal = \"usr2\"\n\
             kill_signal = \"SIGUSR1\"\nkill_timeout = \"1m\"\nsplay = \"5s\"\n",
        );
        let table = Exec {
            command: "haproxy".to_string(),
            reload_signal: Signal::SIGUSR2,
            kill_signal: Signal::SIGUSR1,
            kill_timeout: Duration::from_secs(60),
            splay: Duration::from_secs(5),
        };
        let s = settings(&["--config-file", &path]).expect("settings");
        assert_eq!(s.exec.as_ref(), Some(&table));
        let s = settings(&["--config-file", &path, "--exec", "haproxy -W"]).expect("settings");
        assert_eq!(
            s.exec,
            Some(Exec {
                command: "haproxy -W".to_string(),
                ..table
            }),
            "the flag gives the command, the table the rest"
        );
    }

    #[test]
    fn unusable_exec_settings_name_the_flag_or_key_and_line() {
        for (table, expected) in [
            (
                "reload_signal = \"SIGFOO\"",
                ":3:17: `reload_signal`: `SIGFOO` is not a signal name such as \"SIGHUP\", in \
                 `reload_signal = \"SIGFOO\"`",
            ),
            (
                "reload_signal = \"kill\"",
                ":3:17: `reload_signal`: SIGKILL cannot be caught, so it would end or stop the \
                 service at every swap, in `reload_signal = \"kill\"`",
            ),
            (
                "kill_timeout = \"2h\"",
                ":3:16: `kill_timeout`: at most 1h, in `kill_timeout = \"2h\"`",
            ),
            (
                "kil_signal = \"SIGINT\"",
                ":3:1: unknown field `kil_signal`, expected one of",
            ),
        ] {
            let (_dir, path) = write_settings(&format!(
                "backend = \"env\"\n[exec]\n{table}\ncommand = \"haproxy\"\n"
            ));
            let err = settings(&["--config-file", &path]).expect_err(table);
            assert!(
                err.to_string().starts_with(&format!("{path}{expected}")),
                "{err}"
            );
        }
        let (_dir, path) = write_settings("backend = \"env\"\n[exec]\nsplay = \"1s\"\n");
        let err = settings(&["--config-file", &path]).expect_err("no command");
        assert_eq!(
            err.to_string(),
            format!(
                "{path}: `exec`: the table names no `command`, and neither --exec nor \
                 RECONFD_EXEC gives one"
            )
        );
        assert!(settings(&["--config-file", &path, "--exec", "haproxy"]).is_ok());
        let err = settings(&["--backend", "env", "--exec", " "]).expect_err("empty");
        assert_eq!(err.to_string(), "--exec \" \": an empty command");
    }

    #[test]
    fn exec_with_onetime_is_refused_naming_where_each_came_from() {
        let err =
            settings(&["--backend", "env", "--exec", "haproxy", "--onetime"]).expect_err("refused");
        assert!(
            err.to_string()
                .starts_with("--exec cannot be used with --onetime: "),
            "{err}"
        );
        let (_dir, path) =
            write_settings("backend = \"env\"\nonetime = true\n[exec]\ncommand = \"x\"\n");
        let err = settings(&["--config-file", &path]).expect_err("refused");
        assert!(
            err.to_string().starts_with(&format!(
                "`exec` in {path} cannot be used with `onetime` in {path}: "
            )),
            "{err}"
        );
        // The daemon's settings file, in a one-time run: its service is not started.
        let (_dir, path) = write_settings("backend = \"env\"\n[exec]\ncommand = \"x\"\n");
        let run = settings(&["--config-file", &path, "--onetime"]).expect("taken");
        assert_eq!(run.mode, RunMode::Onetime);
        assert!(run.exec.is_none());
        assert!(
            settings(&["--config-file", &path])
                .expect("daemon")
                .exec
                .is_some()
        );
    }

    /// README's table of settings names the keys the settings file accepts, and no other.
    #[test]
    fn the_readme_lists_every_settings_file_key() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        let listed: BTreeSet<String> = readme
            .lines()
            .filter(|line| line.starts_with("| `--"))
            .flat_map(|line| {
                // The first cell may hold an escaped `\|` (`--scheme http\|https`).
                let row = line.replace("\\|", "/");
                let keys = row.split('|').nth(2).unwrap_or_default();
                let keys: Vec<String> = keys
                    .split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                keys
            })
            .collect();
        // `[[announce]]` tables have no flag; the README names them below the table.
        let accepted: BTreeSet<String> = keys_of::<Cli>()
            .iter()
            .chain(keys_of::<StoreFields>())
            .filter(|key| **key != "announce")
            .map(|key| key.to_string())
            .collect();
        assert_eq!(listed, accepted);
        assert!(readme.contains("`[[announce]]`"));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::*;
    use crate::arbitrary;

    /// Every key a settings file may hold.
    fn settings_keys() -> &'static [&'static str] {
        let keys: Vec<&'static str> = keys_of::<Cli>()
            .iter()
            .chain(keys_of::<StoreFields>())
            .chain(CONFD_KEYS_NOT_USED_YET)
            .copied()
            .collect();
        keys.leak()
    }

    /// Reads `text` as a settings file, then merges it as `--config-file` would: no panic,
    /// and an error of the file names it, with `:line:column` when it has a place.
    fn check(text: &str) -> Result<(), TestCaseError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("reconfd.toml");
        std::fs::write(&path, text).expect("write settings");
        let name = path.display().to_string();
        match read_settings_file(&path, false) {
            Err(e @ SettingsError::Parse { .. }) => {
                let message = e.to_string();
                prop_assert!(message.starts_with(&name), "{message}");
                if text.parse::<toml::Table>().is_err() {
                    prop_assert!(message[name.len()..].starts_with(':'), "{message}");
                }
            }
            Err(e) => prop_assert!(false, "not a file error: {e}"),
            Ok(_) => {
                let matches = crate::cli::command()
                    .try_get_matches_from(["reconfd", "--config-file", &name, "--file", "a.yaml"])
                    .expect("arguments parse");
                if let Err(e) = Settings::merge(&matches) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn settings_files_of_known_keys_read_or_fail_naming_the_file(
            text in arbitrary::toml_text(settings_keys(), &["", "[backend]", "[x]"])
        ) {
            check(&text)?;
        }

        #[test]
        fn any_text_reads_or_fails_naming_the_file(text in any::<String>()) {
            check(&text)?;
        }
    }
}
