//! The command line. Every flag can also come from an environment variable `RECONFD_<NAME>`
//! and from the settings file; [`crate::settings`] merges them (flag > env > file > default).
//!
//! Fields are `Option`s (or plain `bool`s whose origin is read from the argument matches) so
//! that an unset flag can fall through to the settings file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

/// reconfd: render configuration files from key/value stores and swap them in safely.
///
/// Reads template resources (confd's `conf.d/*.toml`) from the confdir, renders each template
/// from the keys it names, and replaces the destination only when the rendered bytes, mode or
/// owner differ, after an optional check command; then runs the reload command.
#[derive(Debug, Parser)]
#[command(name = "reconfd", version, about, max_term_width = 100)]
pub struct Cli {
    /// Directory holding `conf.d/` (template resources) and `templates/`. [default: /etc/reconfd]
    #[arg(long, env = "RECONFD_CONFDIR", value_name = "DIR")]
    pub confdir: Option<PathBuf>,

    /// Settings file in confd's `confd.toml` format. A missing default file is fine; a missing
    /// file named here is an error. [default: CONFDIR/reconfd.toml]
    #[arg(long, env = "RECONFD_CONFIG_FILE", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// The store to read keys from: `file`, `env`, `etcd`, `redis`, `zookeeper`, `nats`,
    /// `consul` or `vault`. [default: file]
    #[arg(long, env = "RECONFD_BACKEND", value_name = "NAME")]
    pub backend: Option<String>,

    /// Address of a store node, such as `http://127.0.0.1:2379`; repeat for a cluster (tried
    /// in order, failing over to the next). Unused by the `file` and `env` stores.
    /// [default for etcd: http://127.0.0.1:2379]
    #[arg(
        long = "node",
        env = "RECONFD_NODE",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub nodes: Vec<String>,

    /// Scheme for `--node` addresses given without one: `http` or `https`.
    /// [default: https when a --client-* option is set, else http]
    #[arg(long, env = "RECONFD_SCHEME", value_name = "SCHEME")]
    pub scheme: Option<String>,

    /// User name for the store's authentication (etcd).
    #[arg(long, env = "RECONFD_USERNAME", value_name = "NAME")]
    pub username: Option<String>,

    /// Password for `--username`. Prefer RECONFD_PASSWORD or the settings file to keep it out
    /// of the process list.
    #[arg(
        long,
        env = "RECONFD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,

    /// PEM client certificate for TLS client authentication to the store.
    #[arg(long, env = "RECONFD_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of `--client-cert`.
    #[arg(long, env = "RECONFD_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,

    /// PEM CA certificates that sign the store nodes' certificates. [default: the system's]
    #[arg(long, env = "RECONFD_CLIENT_CA_KEYS", value_name = "FILE")]
    pub client_ca_keys: Option<PathBuf>,

    /// Accept any TLS certificate from the store nodes. For testing only.
    #[arg(long, env = "RECONFD_CLIENT_INSECURE")]
    pub client_insecure: bool,

    /// Token for the store: Consul's ACL token (else CONSUL_HTTP_TOKEN), Vault's token (else
    /// VAULT_TOKEN), or a NATS token.
    #[arg(
        long,
        env = "RECONFD_AUTH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub auth_token: Option<String>,

    /// Vault: how to log in, `token` or `app-role`. [default: app-role when --role-id is set]
    #[arg(long, env = "RECONFD_AUTH_TYPE", value_name = "TYPE")]
    pub auth_type: Option<String>,

    /// Vault AppRole: the role ID.
    #[arg(long, env = "RECONFD_ROLE_ID", value_name = "ID")]
    pub role_id: Option<String>,

    /// Vault AppRole: the secret ID.
    #[arg(
        long,
        env = "RECONFD_SECRET_ID",
        value_name = "ID",
        hide_env_values = true
    )]
    pub secret_id: Option<String>,

    /// Vault: the KV secrets engine version, 1 or 2. [default: detected from the mount]
    #[arg(long, env = "RECONFD_KV_VERSION", value_name = "VERSION")]
    pub kv_version: Option<u8>,

    /// Redis: the separator in key names that stands for `/` (confd's option), e.g. `:` for
    /// keys such as `proxy:frontend:web1`. [default: /]
    #[arg(long, env = "RECONFD_SEPARATOR", value_name = "TEXT")]
    pub separator: Option<String>,

    /// NATS: the JetStream key/value bucket. [default: reconfd]
    #[arg(long, env = "RECONFD_NATS_BUCKET", value_name = "BUCKET")]
    pub nats_bucket: Option<String>,

    /// Consul: the datacenter to read from. [default: the agent's]
    #[arg(long, env = "RECONFD_DATACENTER", value_name = "NAME")]
    pub datacenter: Option<String>,

    /// Prefix joined in front of every resource's keys (and in front of the resource's own
    /// `prefix`), as confd's --prefix.
    #[arg(long, env = "RECONFD_PREFIX", value_name = "PATH")]
    pub prefix: Option<String>,

    /// Seconds between full runs when polling; in watch mode, between safety resyncs. From 1
    /// to 31536000 (365 days). [default: 600]
    #[arg(long, env = "RECONFD_INTERVAL", value_name = "SECONDS")]
    pub interval: Option<u64>,

    /// Re-render when the store reports a change instead of polling.
    #[arg(long, env = "RECONFD_WATCH")]
    pub watch: bool,

    /// Run every resource once and exit: 0 in sync or updated, 1 if any resource failed.
    #[arg(long, env = "RECONFD_ONETIME")]
    pub onetime: bool,

    /// Render and compare only; print a unified diff of what would change. Nothing is written
    /// and no command runs.
    #[arg(long, env = "RECONFD_NOOP")]
    pub noop: bool,

    /// Write destination files but run no check or reload command.
    #[arg(long, env = "RECONFD_SYNC_ONLY")]
    pub sync_only: bool,

    /// Keep the stage file after a failed check, for inspection.
    #[arg(long, env = "RECONFD_KEEP_STAGE_FILE")]
    pub keep_stage_file: bool,

    /// When a reload command fails, put the previous file back and reload again, for every
    /// resource (a resource's `rollback` turns it on for that one).
    #[arg(long, env = "RECONFD_ROLLBACK")]
    pub rollback: bool,

    /// Serve metrics, health, readiness and a status page on this address, such as
    /// `127.0.0.1:9100`. [default: off]
    #[arg(long, env = "RECONFD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Log level: error, warn, info, debug or trace. [default: info]
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

    /// File store: a YAML, JSON or TOML file, or a directory of them; repeatable.
    #[arg(
        long = "file",
        env = "RECONFD_FILE",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub files: Vec<PathBuf>,

    /// File store: glob on file names read from `--file` directories.
    /// [default: *.yaml, *.yml, *.json, *.toml]
    #[arg(long, env = "RECONFD_FILTER", value_name = "GLOB")]
    pub filter: Option<String>,
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
