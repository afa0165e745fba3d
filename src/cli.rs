//! The settings, each declared once: a field's `#[arg]` gives its flag and its `RECONFD_*`
//! variable, its doc comment the help, and its serde name the settings-file key (confd.toml's:
//! the flag's name here, the field's name for the store's settings in [`StoreFields`]).
//! [`crate::settings`] reads the settings file into the same struct and lets clap lay the flags
//! and variables given over it (flag > env > file > default).
//!
//! Fields are `Option`s, plain `bool`s or lists, so that a setting left out stays unset and a
//! default can be told from a value given.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use nix::sys::signal::Signal;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::store::backend::StoreFields;

/// Render configuration files from key/value stores and swap them in safely.
///
/// Reads template resources (confd's `conf.d/*.toml`) from the confdir, renders each template
/// from the keys it names, and replaces the destination only when the rendered bytes, mode or
/// owner differ, after an optional check command; then runs the reload command.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(name = "reconfd", version, about, max_term_width = 100)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Cli {
    /// Directory holding `conf.d/` (template resources) and `templates/`. [default: /etc/reconfd]
    #[arg(long, env = "RECONFD_CONFDIR", value_name = "DIR")]
    pub confdir: Option<PathBuf>,

    /// Settings file in confd's `confd.toml` format. A missing default file is fine; a missing
    /// file named here is an error. [default: CONFDIR/reconfd.toml, or CONFDIR/confd.toml
    /// when there is no reconfd.toml]
    #[arg(long, env = "RECONFD_CONFIG_FILE", value_name = "FILE")]
    #[serde(skip)] // It names the settings file, so it cannot be one of its keys.
    pub config_file: Option<PathBuf>,

    /// The store's settings, which a resource's `[backend]` table may also give.
    #[command(flatten)]
    #[serde(skip)] // The settings file holds them among its other keys: see `crate::settings`.
    pub store: StoreFields,

    /// Key prefix of every resource, in place of the resource's own `prefix`, as confd's
    /// --prefix.
    #[arg(long, env = "RECONFD_PREFIX", value_name = "PATH")]
    pub prefix: Option<String>,

    /// Seconds between full runs when polling; in watch mode, between safety resyncs. From 1
    /// to 31536000 (365 days). [default: 600]
    #[arg(long, env = "RECONFD_INTERVAL", value_name = "SECONDS")]
    pub interval: Option<u64>,

    /// Re-render when the store reports a change instead of polling.
    #[arg(long, env = "RECONFD_WATCH")]
    pub watch: bool,

    /// Run every resource once and exit: 0 in sync or updated, 1 if any resource failed or
    /// SIGTERM or SIGINT interrupted the run (killing the command running then).
    #[arg(long, env = "RECONFD_ONETIME")]
    pub onetime: bool,

    /// Exec mode: once every resource has been synced, run this command (through `sh`, as
    /// `exec COMMAND`) as reconfd's child; send it SIGHUP when a sync swaps a file, forward
    /// SIGTERM and SIGINT to it, and exit with its status. The settings file may give an
    /// `[exec]` table with `command`, `reload_signal`, `kill_signal`, `kill_timeout` and
    /// `splay` (docs/exec.md). Not with --onetime. [default: off]
    #[arg(long, env = "RECONFD_EXEC", value_name = "COMMAND")]
    #[serde(deserialize_with = "command_or_table")]
    pub exec: Option<ExecTable>,

    /// Render and compare only; print a unified diff of what would change. Nothing is written
    /// and no command runs.
    #[arg(long, env = "RECONFD_NOOP")]
    pub noop: bool,

    /// With --onetime --noop: exit 3 when any destination would change (0 when all are in
    /// sync, 1 when a resource failed, 2 for unusable settings), so a pipeline can gate on
    /// drift.
    #[arg(long, env = "RECONFD_EXIT_CODE")]
    pub exit_code: bool,

    /// Write destination files but run no check or reload command.
    #[arg(long, env = "RECONFD_SYNC_ONLY")]
    pub sync_only: bool,

    /// Keep the stage file after a failed check, for inspection, as
    /// `.<name>.reconfd-XXXXXX.rejected` beside the destination; reconfd never removes it.
    #[arg(long, env = "RECONFD_KEEP_STAGE_FILE")]
    pub keep_stage_file: bool,

    /// Give check and reload commands this credential of reconfd's environment (such as
    /// VAULT_TOKEN), which they do not get otherwise; repeatable. The variables withheld are
    /// listed in docs/resources.md. [default: none]
    #[arg(
        long,
        env = "RECONFD_COMMAND_ENV",
        value_name = "NAME",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub command_env: Vec<String>,

    /// When a reload command fails, put the previous file back and reload again, for every
    /// resource (a resource's `rollback` turns it on for that one).
    #[arg(long, env = "RECONFD_ROLLBACK")]
    pub rollback: bool,

    /// Serve metrics, health, readiness and a status page on this address, such as
    /// `127.0.0.1:9100`, or `:9100` for every IPv4 address. [default: off]
    #[arg(long, env = "RECONFD_LISTEN", value_name = "ADDR", value_parser = listen_address)]
    #[serde(default, deserialize_with = "listen")]
    pub listen: Option<SocketAddr>,

    /// Log level: error, warn, info, debug (reconfd's own details, and its store clients'
    /// lines) or trace (down to every HTTP/2 frame). [default: info]
    #[arg(long, env = "RECONFD_LOG_LEVEL", value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Log line format: `text` for people, `json` (one object per line) for log shippers.
    /// [default: text]
    #[arg(long, env = "RECONFD_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Wait for changed data to settle before rendering: `MIN:MAX` (`2s:10s`) or `MIN` (the
    /// maximum is then four times it), each at most 365d. A resource's own `wait` overrides
    /// it. [default: none]
    #[arg(long, env = "RECONFD_WAIT", value_name = "MIN:MAX")]
    pub wait: Option<String>,

    /// Longest a template may take to render, such as `10s`, at most 1h; past it the resource
    /// fails and its destination stays as it is. A resource's own `render_timeout` overrides
    /// it. [default: 10s]
    #[arg(long, env = "RECONFD_RENDER_TIMEOUT", value_name = "DURATION")]
    pub render_timeout: Option<String>,

    /// Largest output a template may render, such as `256MiB`, at most 4GiB; past it the
    /// resource fails and its destination stays as it is. A resource's own `render_max_size`
    /// overrides it. [default: 256MiB]
    #[arg(long, env = "RECONFD_RENDER_MAX_SIZE", value_name = "SIZE")]
    pub render_max_size: Option<String>,

    /// Fewest keys a resource must see under its prefixes to be synced; with fewer (an empty
    /// or wiped store) its destination stays as it is and the resource is reported as guarded.
    /// A resource's own `min_keys` overrides it. [default: 0, off]
    #[arg(long, env = "RECONFD_MIN_KEYS", value_name = "COUNT")]
    pub min_keys: Option<usize>,

    /// `[[announce]]` tables: keys the daemon keeps in its store while it runs, beside the
    /// resources it renders (see docs/announce.md).
    #[arg(skip)]
    #[serde(default)]
    pub announce: Vec<AnnounceFields>,
}

/// What to do instead of running the resources; without one, reconfd runs them as confd does
/// (as a daemon, or once with --onetime). Every option of [`Cli`] may also follow a
/// subcommand's name. They are no field of `Cli`, which is also what the settings file is read
/// into: a subcommand is the command line's alone.
#[derive(Debug, Subcommand)]
pub enum Subcommands {
    /// Print a completion script for a shell, generated from these options: `reconfd
    /// completions bash > /usr/share/bash-completion/completions/reconfd`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), generated from these options: `reconfd man | man -l -`.
    Man,
    /// Load the settings and every resource and template without reading any store; print
    /// each problem with its file:line:column, then a summary. Exit 0 when all is well, 1 when
    /// a resource has a problem, 2 when the settings are unusable.
    Check {
        /// Also render every resource from this data file (YAML, JSON or TOML, read as the
        /// file store reads it) and report what fails, such as a key the data lacks.
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
    },
    /// Print the rendered content of one resource to standard output: no destination is
    /// touched and no command runs. Exit 1, with the located error, when the render fails.
    Render {
        /// The resource: its conf.d file name, with or without `.toml`, or its path.
        resource: PathBuf,
        /// Render from this data file (YAML, JSON or TOML) instead of reading the store once.
        #[arg(long, value_name = "FILE")]
        data: Option<PathBuf>,
    },
    /// Turn a confd configuration directory into a reconfd one: `conf.d/*.toml` copied,
    /// every template translated from Go's text/template into Tera. What cannot be translated
    /// is marked in the output and listed as file:line; the command then exits 1.
    Convert {
        /// The confd directory, holding `conf.d/` and `templates/`.
        from: PathBuf,
        /// The directory to write the reconfd configuration to.
        to: PathBuf,
    },
    /// Keep a key in the store while this process lives and its check passes, bound to a
    /// TTL (an etcd lease, a Consul session, a Redis expiry, a ZooKeeper ephemeral znode), so
    /// that it disappears when the process or its host dies: `reconfd announce --backend etcd
    /// --key /services/crate/h1 --value h1:4300 --ttl 10s --check 'nc -z h1 4300'`.
    Announce(AnnounceFields),
}

/// One announcement: the `announce` subcommand's options, and the keys of an `[[announce]]`
/// table in the settings file.
#[derive(Clone, Debug, Args, Deserialize, PartialEq, Eq)]
#[command(next_help_heading = "Announcement")]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AnnounceFields {
    /// The key to keep, such as `/services/crate/h1`.
    #[arg(long, value_name = "KEY")]
    pub key: String,
    /// Its value, such as `h1:4300`.
    #[arg(long, value_name = "VALUE")]
    pub value: String,
    /// How long the key outlives this process, such as `10s`: the store removes it this long
    /// after the last renewal (Consul: from 10s; ZooKeeper: the servers' bounds apply).
    #[arg(long, value_name = "DURATION")]
    pub ttl: String,
    /// A shell command that exits 0 while the announced service is healthy; while it fails,
    /// the key is removed. [default: none, always announced]
    #[arg(long, value_name = "CMD")]
    pub check: Option<String>,
    /// Time between runs of the check, such as `5s`, which is also its time limit.
    /// [default: 10s]
    #[arg(long, value_name = "DURATION")]
    #[serde(alias = "check_interval")]
    pub check_interval: Option<String>,
}

/// The command-line definition: [`Cli`] and [`Subcommands`], every option accepted before or
/// after a subcommand's name.
pub fn command() -> clap::Command {
    let program = Cli::command();
    let about = program.get_about().cloned();
    let long_about = program.get_long_about().cloned();
    // Adding the subcommands applies their enum's documentation as the program's; the
    // program's own description is what `--help` and the manual page open with.
    let mut command = Subcommands::augment_subcommands(program);
    if let Some(about) = about {
        command = command.about(about);
    }
    if let Some(long_about) = long_about {
        command = command.long_about(long_about);
    }
    command.mut_args(|arg| switch_value(arg.global(true)))
}

/// `arg` taking a value after `=` when it is a switch (a `bool` field: `--watch`), as Go's
/// flag package (confd's) takes `-watch=false`; see [`switch`]. Declared here once for every
/// switch.
fn switch_value(arg: clap::Arg) -> clap::Arg {
    if !matches!(arg.get_action(), clap::ArgAction::SetTrue) {
        return arg;
    }
    arg.action(clap::ArgAction::Set)
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true")
        .default_value("false")
        .hide_default_value(true)
        .value_name("BOOL")
        .value_parser(switch)
}

/// The process's command line parsed by [`command`], with confd's spelling accepted (see
/// [`confd_spelling`]); a syntax error exits through clap (status 2).
pub fn matches() -> ArgMatches {
    let command = command();
    let args = confd_spelling(std::env::args_os().collect(), &command);
    match command.clone().try_get_matches_from(&args) {
        Ok(matches) => matches,
        Err(error) => match from_the_environment(&error, &command, &args) {
            Some(message) => {
                eprint!("{message}");
                std::process::exit(2);
            }
            None => error.exit(),
        },
    }
}

/// clap's message for a bad value that came from a `RECONFD_*` variable, which names the
/// flag although none was given, with the variable named instead.
fn from_the_environment(
    error: &clap::Error,
    command: &clap::Command,
    args: &[OsString],
) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        error.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(spec)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = spec.strip_prefix("--")?.split([' ', '=']).next()?;
    let flag = format!("--{long}");
    let given = args.iter().skip(1).any(|arg| {
        arg.to_str()
            .is_some_and(|arg| arg == flag || arg.starts_with(&format!("{flag}=")))
    });
    if given {
        return None;
    }
    let arg = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))?;
    let variable = arg.get_env()?.to_string_lossy();
    std::env::var_os(&*variable)?;
    let plain = error.render().to_string();
    Some(plain.replace(
        &format!("'{spec}'"),
        &format!("{variable} (from the environment)"),
    ))
}

/// `args` with every long option spelt with one dash, as confd (Go's flag package) takes them
/// (`-onetime`, `-backend etcd`, `-node=http://...`, `-watch=true`), spelt with two. Never an
/// option's value (`--prefix -x` keeps `-x`), nor anything after `--`, nor `-h` and `-V`; a
/// name that is no option of `command` or its subcommands (`-table`) is spelt with two
/// dashes too, so that the error names it whole.
fn confd_spelling(args: Vec<OsString>, command: &clap::Command) -> Vec<OsString> {
    // clap adds these two only when it parses.
    let mut takes_value: HashMap<String, bool> =
        HashMap::from([("help".to_string(), false), ("version".to_string(), false)]);
    for arg in command.get_arguments().chain(
        command
            .get_subcommands()
            .flat_map(clap::Command::get_arguments),
    ) {
        if let Some(long) = arg.get_long() {
            // A switch takes its value only after `=` (`--watch=false`): the word after it
            // is never its value.
            let takes = arg.get_action().takes_values() && !arg.is_require_equals_set();
            takes_value.insert(long.to_string(), takes);
        }
    }
    let mut rewritten = Vec::with_capacity(args.len());
    let mut value_next = false;
    let mut options_ended = false;
    // The program's name is not an option.
    for (position, arg) in args.into_iter().enumerate() {
        if position == 0 || options_ended || std::mem::take(&mut value_next) {
            rewritten.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            rewritten.push(arg);
            continue;
        };
        if text == "--" {
            options_ended = true;
            rewritten.push(arg);
            continue;
        }
        let (one_dash, option) = if let Some(option) = text.strip_prefix("--") {
            (false, option)
        } else if let Some(option) = text.strip_prefix('-') {
            (true, option)
        } else {
            rewritten.push(arg);
            continue;
        };
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        let takes = takes_value.get(name).copied();
        value_next = takes == Some(true) && value.is_none();
        if one_dash && name.len() > 1 {
            rewritten.push(format!("--{option}").into());
        } else {
            rewritten.push(arg);
        }
    }
    rewritten
}

/// The value of a switch (`--watch`, `--noop`, ...): none is `true`; `--watch=false` turns it
/// off over the environment and the settings file, as Go's flag package (confd's) takes
/// `-watch=false`. Go's spellings (`1`, `t`, `TRUE`, `0`, `f`, `False`, ...) and those a
/// `RECONFD_*` variable may have (`yes`, `no`, `on`, `off`, and empty for off) are taken,
/// in any case.
pub(crate) fn switch(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" | "on" => Ok(true),
        "" | "0" | "f" | "false" | "n" | "no" | "off" => Ok(false),
        _ => Err("not a boolean: give true or false (or 1, 0, t, f, yes, no, on, off)".to_string()),
    }
}

/// The subcommand `matches` (parsed by [`command`]) name, if any.
pub fn subcommand(matches: &ArgMatches) -> Result<Option<Subcommands>, clap::Error> {
    match matches.subcommand_name() {
        Some(_) => Subcommands::from_arg_matches(matches).map(Some),
        None => Ok(None),
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `exec` setting: a command (`--exec`, `RECONFD_EXEC`, `exec = "..."`), or an `[exec]`
/// table of the settings file with the signals and times as well. Its signals and durations
/// are checked as the file is read, so that an error names their line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecTable {
    /// The service's command line.
    pub command: Option<String>,
    /// Sent to the service after a sync that swapped a file.
    #[serde(default, deserialize_with = "reload_signal")]
    pub reload_signal: Option<Signal>,
    /// Sent to the service when reconfd is told to stop.
    #[serde(default, deserialize_with = "signal")]
    pub kill_signal: Option<Signal>,
    /// How long the service may take to exit after `kill_signal`, before SIGKILL.
    #[serde(default, deserialize_with = "delay")]
    pub kill_timeout: Option<Duration>,
    /// The longest random delay before a reload signal.
    #[serde(default, deserialize_with = "delay")]
    pub splay: Option<Duration>,
}

impl std::str::FromStr for ExecTable {
    type Err = std::convert::Infallible;

    /// The command of `--exec` and `RECONFD_EXEC`.
    fn from_str(command: &str) -> Result<ExecTable, Self::Err> {
        Ok(ExecTable {
            command: Some(command.to_string()),
            ..ExecTable::default()
        })
    }
}

/// `Cli::exec` as the settings file gives it: a command or a table.
fn command_or_table<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<ExecTable>, D::Error> {
    struct CommandOrTable;
    impl<'de> Visitor<'de> for CommandOrTable {
        type Value = ExecTable;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a command or an [exec] table")
        }

        fn visit_str<E: de::Error>(self, command: &str) -> Result<ExecTable, E> {
            Ok(ExecTable {
                command: Some(command.to_string()),
                ..ExecTable::default()
            })
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ExecTable, A::Error> {
            ExecTable::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }
    deserializer.deserialize_any(CommandOrTable).map(Some)
}

/// A signal of the `[exec]` table, by name (`SIGUSR2`, `USR2`, `usr2`).
fn signal<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Signal>, D::Error> {
    let name = String::deserialize(deserializer)?;
    crate::exec::signal_named(&name)
        .map(Some)
        .map_err(de::Error::custom)
}

/// `reload_signal` of the `[exec]` table: a signal, but none that a service cannot catch,
/// which would kill or freeze it at every swap.
fn reload_signal<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Signal>, D::Error> {
    match signal(deserializer)? {
        Some(uncatchable @ (Signal::SIGKILL | Signal::SIGSTOP)) => Err(de::Error::custom(format!(
            "{uncatchable} cannot be caught, so it would end or stop the service at every swap"
        ))),
        signal => Ok(signal),
    }
}

/// A duration of the `[exec]` table (`"30s"`), at most [`crate::limits::EXEC_DELAY`].
/// `--listen`'s address: `IP:PORT`, `:PORT` for every IPv4 address (as Go's servers and
/// Prometheus's exporters read it) or `localhost:PORT`.
pub(crate) fn listen_address(text: &str) -> Result<SocketAddr, String> {
    let spelled = if let Some(port) = text.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if let Some(port) = text.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else {
        text.to_string()
    };
    spelled.parse().map_err(|_| {
        format!(
            "{text:?} is not an address to listen on: give IP:PORT (127.0.0.1:9100, \
             [::1]:9100), or :PORT for every address"
        )
    })
}

fn listen<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    listen_address(&text).map(Some).map_err(de::Error::custom)
}

fn delay<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::limits::EXEC_DELAY
        .parse(&text)
        .map(Some)
        .map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spelt(args: &[&str]) -> Vec<String> {
        let args = std::iter::once("reconfd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        confd_spelling(args, &command())
            .into_iter()
            .skip(1)
            .map(|arg| arg.into_string().expect("UTF-8"))
            .collect()
    }

    #[test]
    fn confd_single_dash_options_are_taken_as_long_options() {
        assert_eq!(
            spelt(&[
                "-onetime",
                "-backend",
                "etcd",
                "-node=http://127.0.0.1:2379",
                "-watch"
            ]),
            [
                "--onetime",
                "--backend",
                "etcd",
                "--node=http://127.0.0.1:2379",
                "--watch"
            ]
        );
        assert_eq!(
            spelt(&["-watch=true", "--noop=true", "-onetime=false"]),
            ["--watch=true", "--noop=true", "--onetime=false"]
        );
        assert_eq!(
            spelt(&["announce", "-key", "/services/a", "-value=h1:80"]),
            ["announce", "--key", "/services/a", "--value=h1:80"]
        );
    }

    #[test]
    fn values_short_options_and_what_follows_a_double_dash_stay() {
        assert_eq!(
            spelt(&[
                "-prefix", "-watch", "--prefix", "-noop", "-h", "-V", "-version"
            ]),
            [
                "--prefix",
                "-watch",
                "--prefix",
                "-noop",
                "-h",
                "-V",
                "--version"
            ]
        );
        assert_eq!(spelt(&["-table", "confd"]), ["--table", "confd"]);
        assert_eq!(
            spelt(&["--onetime", "--", "-watch"]),
            ["--onetime", "--", "-watch"]
        );
    }

    #[test]
    fn a_command_line_in_confd_spelling_parses_as_in_reconfd_spelling() {
        let confd = command()
            .try_get_matches_from(std::iter::once("reconfd".to_string()).chain(spelt(&[
                "-confdir",
                "/etc/confd",
                "-backend",
                "etcd",
                "-node",
                "http://10.0.0.1:2379",
                "-node=http://10.0.0.2:2379",
                "-interval",
                "60",
                "-noop",
            ])))
            .expect("parses");
        assert_eq!(
            confd.get_one::<PathBuf>("confdir"),
            Some(&PathBuf::from("/etc/confd"))
        );
        let nodes: Vec<&String> = confd
            .get_many::<String>("nodes")
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(nodes, ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert!(confd.get_flag("noop"));
    }
}
