//! Which store to read from, and how: confd's store settings, from the command line and the
//! settings file or from a resource's `[backend]` table, checked and resolved into a
//! [`Backend`] that [`open`] turns into a store.

use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;

use super::Store;
use super::consul::lease::ConsulLease;
use super::consul::{ConsulOptions, ConsulStore, TokenSource};
use super::env::EnvStore;
use super::etcd::lease::EtcdLease;
use super::etcd::{EtcdOptions, EtcdStore};
use super::file::FileStore;
use super::lease::{Announcement, Lease};
use super::nats::{NatsOptions, NatsStore};
use super::nodes::redact;
use super::redis::lease::RedisLease;
use super::redis::{RedisOptions, RedisStore};
use super::tls::TlsOptions;
use super::vault::{VaultAuth, VaultOptions, VaultStore};
use super::zookeeper::lease::ZookeeperLease;
use super::zookeeper::{ZookeeperOptions, ZookeeperStore};
use crate::dns::Resolver;

/// Each store's default node: its usual port on the local host, as in confd.
const DEFAULT_ETCD_NODE: &str = "http://127.0.0.1:2379";
const DEFAULT_REDIS_NODE: &str = "redis://127.0.0.1:6379";
const DEFAULT_ZOOKEEPER_NODE: &str = "127.0.0.1:2181";
const DEFAULT_NATS_NODE: &str = "nats://127.0.0.1:4222";
const DEFAULT_CONSUL_NODE: &str = "http://127.0.0.1:8500";
const DEFAULT_VAULT_NODE: &str = "http://127.0.0.1:8200";

/// The NATS key/value bucket read when none is named.
const DEFAULT_NATS_BUCKET: &str = "reconfd";

/// The stores reconfd knows, for messages.
const KNOWN: &str = "file, env, etcd, redis, zookeeper, nats, consul, vault";

/// confd's name of its etcd v3 store, which reconfd's `etcd` is: confd's own `etcd` speaks
/// the v2 API, which etcd 3.4 serves only when asked and reconfd not at all.
const CONFD_ETCD_V3: &str = "etcdv3";

/// Checks that `name` names a store reconfd knows.
pub(crate) fn known_store(name: &str) -> Result<(), String> {
    if name == CONFD_ETCD_V3 || KNOWN.split(", ").any(|known| known == name) {
        Ok(())
    } else {
        Err(format!("not a known store (known: {KNOWN})"))
    }
}

/// A store's settings, as given: every field optional. Each field is a setting's one
/// declaration: its `#[arg]` gives the flag and the `RECONFD_*` variable, its doc comment the
/// help, and its name the key (confd's) in the settings file and in a resource's `[backend]`
/// table.
#[derive(Clone, Debug, Default, Args, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreFields {
    /// The store to read keys from: `file`, `env`, `etcd` (confd's `etcdv3` too), `redis`,
    /// `zookeeper`, `nats`, `consul` or `vault`. [default: file; etcd, confd's default, when
    /// nodes are given]
    #[arg(long, env = "RECONFD_BACKEND", value_name = "NAME")]
    pub backend: Option<String>,
    /// Address of a store node, such as `http://127.0.0.1:2379`; repeat for a cluster (tried
    /// in order, failing over to the next). Unused by the `file` and `env` stores.
    /// [default for etcd: http://127.0.0.1:2379]
    #[arg(
        long = "node",
        env = "RECONFD_NODE",
        value_name = "URL",
        value_delimiter = ',',
        // A node's URL may hold a user and password.
        hide_env_values = true
    )]
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Find the store's nodes in DNS: the SRV record `_<backend>._tcp.<DOMAIN>`, as confd's
    /// `-srv-domain` does. Looked up when the settings are read (at start and on SIGHUP);
    /// the nodes are its targets, by priority then weight.
    #[arg(long, env = "RECONFD_SRV_DOMAIN", value_name = "DOMAIN")]
    pub srv_domain: Option<String>,
    /// Find the store's nodes in DNS from this SRV record, such as
    /// `_etcd-client._tcp.example.com`. Beats --srv-domain.
    #[arg(long, env = "RECONFD_SRV_RECORD", value_name = "NAME")]
    pub srv_record: Option<String>,
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
    /// Use `--username` and `--password` as confd's `-basic-auth` turns them on: Consul
    /// sends them as HTTP basic authentication only with it; etcd uses them whenever they
    /// are given, and not when this is set false (`--basic-auth=false`, `basic_auth =
    /// false`). [default: on for etcd, off for Consul]
    #[arg(
        long,
        env = "RECONFD_BASIC_AUTH",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = crate::cli::switch
    )]
    pub basic_auth: Option<bool>,
    /// PEM client certificate for TLS client authentication to the store.
    #[arg(long, env = "RECONFD_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `--client-cert`.
    #[arg(long, env = "RECONFD_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,
    /// PEM CA certificates that sign the store nodes' certificates. [default: the system's]
    #[arg(
        long = "client-ca-keys",
        env = "RECONFD_CLIENT_CA_KEYS",
        value_name = "FILE"
    )]
    pub client_cakeys: Option<PathBuf>,
    /// Accept any TLS certificate from the store nodes. For testing only.
    #[arg(long, env = "RECONFD_CLIENT_INSECURE")]
    #[serde(default)]
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
    /// Vault AppRole: the path the auth method is mounted at (confd's `-path`), as in
    /// `vault auth enable -path=PATH approle`. [default: approle]
    #[arg(long, env = "RECONFD_PATH", value_name = "PATH")]
    pub path: Option<String>,
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
    /// File store: a YAML, JSON or TOML file, or a directory of them; repeatable.
    #[arg(long, env = "RECONFD_FILE", value_name = "PATH", value_delimiter = ',')]
    #[serde(default, deserialize_with = "one_or_many")]
    pub file: Vec<PathBuf>,
    /// File store: glob on file names read from `--file` directories.
    /// [default: *.yaml, *.yml, *.json, *.toml]
    #[arg(long, env = "RECONFD_FILTER", value_name = "GLOB")]
    pub filter: Option<String>,
    /// Treat the store's values as secrets, as Vault's always are: each value a resource reads
    /// is masked (`***`) in logs, errors, `/status` and `/metrics`, `--noop` diffs hide its
    /// lines, no checksum is shown, and files are written 0600 unless a resource sets a mode.
    #[arg(long, env = "RECONFD_SECRET")]
    #[serde(default)]
    pub secret: bool,
}

/// A list, or a single value as older confd.toml files write `file = "data.yaml"`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    })
}

/// A store and everything needed to reach it. Resources whose backends are equal share one
/// store client, one snapshot and one watch.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// YAML, JSON or TOML files and directories.
    File {
        /// Files or directories, in the order given.
        paths: Vec<PathBuf>,
        /// Glob on file names inside directories.
        filter: Option<String>,
    },
    /// Environment variables.
    Env,
    /// etcd v3.
    Etcd(EtcdOptions),
    /// Redis.
    Redis(RedisOptions),
    /// ZooKeeper.
    Zookeeper(ZookeeperOptions),
    /// A NATS JetStream key/value bucket.
    Nats(NatsOptions),
    /// Consul's KV store and service catalog.
    Consul(ConsulOptions),
    /// Vault's KV secrets engine.
    Vault(VaultOptions),
}

impl Backend {
    /// True for a store of secrets: its values are masked in diffs and logs, and files
    /// rendered from it are private unless their resource sets a mode.
    pub fn holds_secrets(&self) -> bool {
        matches!(self, Backend::Vault(_))
    }

    /// The secrets the store's settings hold: passwords (also those in node addresses),
    /// tokens and secret IDs, to be masked wherever they might show.
    pub(crate) fn credentials(&self) -> Vec<String> {
        let (nodes, secrets): (&[String], Vec<Option<&String>>) = match self {
            Backend::File { .. } | Backend::Env => (&[], Vec::new()),
            Backend::Etcd(options) => (&options.nodes, vec![options.password.as_ref()]),
            Backend::Redis(options) => (&options.nodes, vec![options.password.as_ref()]),
            Backend::Zookeeper(options) => (&options.nodes, Vec::new()),
            Backend::Nats(options) => (
                &options.nodes,
                vec![options.password.as_ref(), options.token.as_ref()],
            ),
            Backend::Consul(options) => (
                &options.nodes,
                vec![
                    options.token.as_ref(),
                    options.basic_auth.as_ref().map(|(_, password)| password),
                ],
            ),
            Backend::Vault(options) => (
                &options.nodes,
                vec![
                    match &options.auth {
                        VaultAuth::Token(token) => token,
                        VaultAuth::AppRole { secret_id, .. } => secret_id,
                    }
                    .into(),
                ],
            ),
        };
        let in_nodes = nodes.iter().filter_map(|node| {
            url::Url::parse(node)
                .ok()
                .and_then(|url| url.password().map(str::to_string))
        });
        secrets
            .into_iter()
            .flatten()
            .cloned()
            .chain(in_nodes)
            .collect()
    }

    /// The kind of store, as `--backend` names it: `etcd`, `file`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::File { .. } => "file",
            Backend::Env => "env",
            Backend::Etcd(_) => "etcd",
            Backend::Redis(_) => "redis",
            Backend::Zookeeper(_) => "zookeeper",
            Backend::Nats(_) => "nats",
            Backend::Consul(_) => "consul",
            Backend::Vault(_) => "vault",
        }
    }

    /// The store instance, as `/status` and `/metrics` name it: its kind and where it is
    /// (`etcd http://10.0.0.1:2379,http://10.0.0.2:2379`, `file data.yaml`), with any
    /// password left out. Two stores of one kind on different clusters are two instances.
    pub fn instance(&self) -> String {
        let kind = self.kind();
        let places: Vec<String> = match self {
            Backend::File { paths, .. } => paths
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
            Backend::Env => Vec::new(),
            Backend::Etcd(options) => options.nodes.clone(),
            Backend::Redis(options) => options.nodes.clone(),
            Backend::Zookeeper(options) => options.nodes.clone(),
            Backend::Nats(options) => options
                .nodes
                .iter()
                .map(|node| format!("{node}/{}", options.bucket))
                .collect(),
            Backend::Consul(options) => options.nodes.clone(),
            Backend::Vault(options) => options.nodes.clone(),
        };
        if places.is_empty() {
            return kind.to_string();
        }
        let places: Vec<String> = places.iter().map(|place| redact(place)).collect();
        format!("{kind} {}", places.join(","))
    }
}

impl StoreFields {
    /// The fields that hold credentials (passwords, tokens, secret IDs): those whose variables'
    /// values `--help` hides. Their names are also their keys.
    pub(crate) fn credential_keys() -> Vec<String> {
        StoreFields::augment_args(clap::Command::new("store"))
            .get_arguments()
            .filter(|arg| arg.is_hide_env_values_set())
            .map(|arg| arg.get_id().to_string())
            .collect()
    }

    /// Takes an empty text as not given, as confd does: confd.toml files often carry
    /// `client_cakeys = ""` or `username = ""` for what they do not use.
    pub fn unset_empty(&mut self) {
        for text in [
            &mut self.backend,
            &mut self.srv_domain,
            &mut self.srv_record,
            &mut self.scheme,
            &mut self.username,
            &mut self.password,
            &mut self.auth_token,
            &mut self.auth_type,
            &mut self.role_id,
            &mut self.secret_id,
            &mut self.path,
            &mut self.separator,
            &mut self.nats_bucket,
            &mut self.datacenter,
            &mut self.filter,
        ] {
            if text.as_deref() == Some("") {
                *text = None;
            }
        }
        for path in [
            &mut self.client_cert,
            &mut self.client_key,
            &mut self.client_cakeys,
        ] {
            if path
                .as_ref()
                .is_some_and(|path| path.as_os_str().is_empty())
            {
                *path = None;
            }
        }
        self.nodes.retain(|node| !node.is_empty());
        self.file.retain(|file| !file.as_os_str().is_empty());
    }

    /// Whether the fields name a store to read: a backend, data files, or nodes (directly or
    /// by an SRV record), which are etcd's without a backend, as in confd.
    pub fn name_a_store(&self) -> bool {
        self.backend.is_some() || !self.file.is_empty() || self.nodes_given()
    }

    fn nodes_given(&self) -> bool {
        !self.nodes.is_empty()
            || [&self.srv_domain, &self.srv_record]
                .iter()
                .any(|field| field.as_ref().is_some_and(|text| !text.is_empty()))
    }

    /// Checks the fields and fills in defaults (`file` when no store is named, `etcd` for
    /// nodes without one). With `srv_record` or `srv_domain`, the nodes are looked up in DNS,
    /// blocking the thread.
    pub fn resolve(&self) -> Result<Backend, String> {
        // confd's default store is etcd: nodes without a store name are etcd's.
        let default = if self.nodes_given() && self.file.is_empty() {
            "etcd"
        } else {
            "file"
        };
        let name = self.backend.as_deref().unwrap_or(default);
        if let Some(record) = self.srv_record_name(name) {
            if matches!(name, "file" | "env") {
                tracing::warn!("an SRV record is not used by the {name} store");
            } else {
                let nodes = crate::dns::srv_nodes(&Resolver::System, &record)?;
                if !self.nodes.is_empty() {
                    tracing::warn!(
                        "the nodes given ({}) are not used: the SRV record {record} names them",
                        self.nodes.join(", ")
                    );
                }
                let backend = StoreFields {
                    nodes,
                    srv_domain: None,
                    srv_record: None,
                    ..self.clone()
                }
                .resolve()?;
                tracing::info!(
                    "the SRV record {record} names the store {}",
                    backend.instance()
                );
                return Ok(backend);
            }
        }
        let backend = match name {
            "file" => {
                if self.file.is_empty() {
                    return Err("the file store needs at least one --file".to_string());
                }
                Backend::File {
                    paths: self.file.clone(),
                    filter: self.filter.clone(),
                }
            }
            "env" => Backend::Env,
            "etcd" | CONFD_ETCD_V3 => {
                let mut nodes = self.urls_or("http", DEFAULT_ETCD_NODE)?;
                let (username, password) = if self.basic_auth == Some(false) {
                    let (bare, in_urls): (Vec<String>, Vec<Option<String>>) = nodes
                        .iter()
                        .map(|node| super::nodes::split_user_info(node))
                        .unzip();
                    if self.username.is_some() || in_urls.iter().any(Option::is_some) {
                        tracing::info!(
                            "basic_auth is off: etcd is read without a user and password (of \
                             --username and --password or of a node URL), as confd does"
                        );
                    }
                    nodes = bare;
                    (None, None)
                } else {
                    (self.username.clone(), self.password.clone())
                };
                Backend::Etcd(EtcdOptions {
                    nodes,
                    username,
                    password,
                    tls: self.tls(),
                })
            }
            "redis" => Backend::Redis(RedisOptions {
                nodes: self.urls_or("redis", DEFAULT_REDIS_NODE)?,
                username: self.username.clone(),
                password: self.password.clone(),
                separator: self.separator.clone().unwrap_or_else(|| "/".to_string()),
                tls: self.tls(),
            }),
            "zookeeper" => Backend::Zookeeper(ZookeeperOptions {
                nodes: if self.nodes.is_empty() {
                    vec![DEFAULT_ZOOKEEPER_NODE.to_string()]
                } else {
                    self.nodes.clone()
                },
            }),
            "nats" => Backend::Nats(NatsOptions {
                nodes: self.urls_or("nats", DEFAULT_NATS_NODE)?,
                bucket: self
                    .nats_bucket
                    .clone()
                    .unwrap_or_else(|| DEFAULT_NATS_BUCKET.to_string()),
                username: self.username.clone(),
                password: self.password.clone(),
                token: self.auth_token.clone(),
                tls: self.tls(),
            }),
            "consul" => Backend::Consul(ConsulOptions {
                nodes: match std::env::var("CONSUL_HTTP_ADDR") {
                    Ok(address) if self.nodes.is_empty() => {
                        self.with_scheme("http", std::slice::from_ref(&address))?
                    }
                    _ => self.urls_or("http", DEFAULT_CONSUL_NODE)?,
                },
                token: self
                    .auth_token
                    .clone()
                    .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok()),
                token_source: if self.auth_token.is_some() {
                    TokenSource::Settings
                } else if std::env::var_os("CONSUL_HTTP_TOKEN").is_some() {
                    TokenSource::Environment
                } else {
                    TokenSource::Anonymous
                },
                datacenter: self.datacenter.clone(),
                basic_auth: self.consul_basic_auth()?,
                tls: self.tls(),
            }),
            "vault" => Backend::Vault(VaultOptions {
                nodes: match std::env::var("VAULT_ADDR") {
                    Ok(address) if self.nodes.is_empty() => {
                        self.with_scheme("http", std::slice::from_ref(&address))?
                    }
                    _ => self.urls_or("http", DEFAULT_VAULT_NODE)?,
                },
                auth: self.vault_auth()?,
                kv_version: match self.kv_version {
                    None | Some(1 | 2) => self.kv_version,
                    Some(other) => {
                        return Err(format!("kv_version {other} is neither 1 nor 2"));
                    }
                },
                tls: self.tls(),
            }),
            other => {
                return Err(format!(
                    "`backend` = {other:?}: not a known store (known: {KNOWN})"
                ));
            }
        };
        if !self.nodes.is_empty() && matches!(backend, Backend::File { .. } | Backend::Env) {
            tracing::warn!("nodes are not used by the {name} store");
        }
        Ok(backend)
    }

    /// Consul's HTTP basic authentication: the user and password, with `basic_auth` on.
    fn consul_basic_auth(&self) -> Result<Option<(String, String)>, String> {
        match (self.basic_auth, &self.username) {
            (Some(true), Some(username)) => Ok(Some((
                username.clone(),
                self.password.clone().unwrap_or_default(),
            ))),
            (Some(true), None) => Err(
                "`basic_auth` (--basic-auth) is on for Consul, but no `username` (--username) is \
                 given to send"
                    .to_string(),
            ),
            (_, Some(_)) => {
                tracing::warn!(
                    "consul: --username and --password are sent only with --basic-auth, as \
                     confd does; not used"
                );
                Ok(None)
            }
            (_, None) => Ok(None),
        }
    }

    /// The SRV record that names the nodes of the store `backend`: `srv_record`, else
    /// `_<backend>._tcp.<srv_domain>.` as confd builds it. An empty one is unset, as in
    /// confd (many confd.toml files carry `srv_domain = ""`).
    fn srv_record_name(&self, backend: &str) -> Option<String> {
        let given = |field: &Option<String>| field.clone().filter(|text| !text.is_empty());
        given(&self.srv_record).or_else(|| {
            given(&self.srv_domain)
                .map(|domain| format!("_{backend}._tcp.{}.", domain.trim_end_matches('.')))
        })
    }

    fn tls(&self) -> TlsOptions {
        TlsOptions {
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            client_ca_keys: self.client_cakeys.clone(),
            client_insecure: self.client_insecure,
        }
    }

    /// The nodes as URLs, or `default` when none is given. See [`StoreFields::with_scheme`].
    fn urls_or(&self, plain: &str, default: &str) -> Result<Vec<String>, String> {
        if self.nodes.is_empty() {
            return Ok(vec![default.to_string()]);
        }
        self.with_scheme(plain, &self.nodes)
    }

    /// `nodes` with a scheme in front of those without one: `scheme` if set, else the store's
    /// `plain` scheme (`http`, `redis`, `nats`) or its TLS form when TLS is set up.
    fn with_scheme(&self, plain: &str, nodes: &[String]) -> Result<Vec<String>, String> {
        let secure = match plain {
            "redis" => "rediss",
            "nats" => "tls",
            _ => "https",
        };
        let scheme = match self.scheme.as_deref() {
            None if self.tls().is_set() => secure,
            None => plain,
            Some(scheme) if scheme == plain || scheme == secure => scheme,
            Some(other) => {
                return Err(format!("scheme {other:?} is neither {plain} nor {secure}"));
            }
        };
        nodes
            .iter()
            .map(|node| {
                let url = match node.split_once("://") {
                    // The HTTP stores speak nothing else; the others' clients name the
                    // schemes they take.
                    Some((given, _)) if plain == "http" && given != plain && given != secure => {
                        return Err(format!(
                            "node {:?}: the scheme {given:?} is neither http nor https",
                            redact(node)
                        ));
                    }
                    Some(_) => node.clone(),
                    None => format!("{scheme}://{node}"),
                };
                check_port(&url)?;
                Ok(url)
            })
            .collect()
    }

    /// Vault's login: a token (`auth_token`, else VAULT_TOKEN) or AppRole.
    fn vault_auth(&self) -> Result<VaultAuth, String> {
        let app_role = match self.auth_type.as_deref() {
            Some("token") => false,
            Some("app-role" | "approle") => true,
            None => self.role_id.is_some(),
            Some(other) => {
                return Err(format!(
                    "auth_type {other:?} is not one reconfd offers for Vault (token, app-role)"
                ));
            }
        };
        if app_role {
            return match (&self.role_id, &self.secret_id) {
                (Some(role_id), Some(secret_id)) => Ok(VaultAuth::AppRole {
                    role_id: role_id.clone(),
                    secret_id: secret_id.clone(),
                    mount: self
                        .path
                        .as_deref()
                        .map(|path| path.trim_matches('/'))
                        .filter(|path| !path.is_empty())
                        .unwrap_or("approle")
                        .to_string(),
                }),
                _ => Err("Vault's app-role login needs --role-id and --secret-id".to_string()),
            };
        }
        self.auth_token
            .clone()
            .or_else(|| std::env::var("VAULT_TOKEN").ok())
            .map(VaultAuth::Token)
            .ok_or_else(|| "Vault needs --auth-token (or VAULT_TOKEN) or --role-id".to_string())
    }
}

/// Refuses a node whose port no server can listen on (0, or past 65535), so that the slip is
/// an unusable setting at load rather than a connection error on every attempt. Other faults
/// in the address are left to the store's client, which reports them in its own terms.
fn check_port(node: &str) -> Result<(), String> {
    let bad = match url::Url::parse(node) {
        Err(url::ParseError::InvalidPort) => true,
        Ok(url) => url.port() == Some(0),
        Err(_) => false,
    };
    if bad {
        return Err(format!(
            "node {:?}: the port is not a number from 1 to 65535",
            redact(node)
        ));
    }
    Ok(())
}

/// A [`Lease`] on `backend` for `announcement`. Fails for a store that cannot bind a key to a
/// lifetime, and for settings the store cannot work with; no network connection is made yet.
pub fn open_lease(backend: &Backend, announcement: Announcement) -> Result<Box<dyn Lease>, String> {
    let lease: Box<dyn Lease> = match backend {
        Backend::Etcd(options) => {
            Box::new(EtcdLease::new(options, announcement).map_err(|e| e.to_string())?)
        }
        Backend::Redis(options) => {
            Box::new(RedisLease::new(options, announcement).map_err(|e| e.to_string())?)
        }
        Backend::Zookeeper(options) => {
            Box::new(ZookeeperLease::new(options, announcement).map_err(|e| e.to_string())?)
        }
        Backend::Consul(options) => {
            Box::new(ConsulLease::new(options, announcement).map_err(|e| e.to_string())?)
        }
        Backend::File { .. } | Backend::Env | Backend::Vault(_) | Backend::Nats(_) => {
            return Err(format!(
                "the {} store cannot bind a key to a lifetime, so it cannot announce: use \
                 etcd, redis, zookeeper or consul",
                backend.kind()
            ));
        }
    };
    Ok(lease)
}

/// A client for `backend`. Fails for settings the store cannot work with; no network
/// connection is made yet.
pub fn open(backend: &Backend) -> Result<Box<dyn Store>, String> {
    let store: Box<dyn Store> = match backend {
        Backend::File { paths, filter } => {
            if let Some(missing) = paths.iter().find(|path| !path.exists()) {
                return Err(format!(
                    "--file {}: no such file or directory",
                    missing.display()
                ));
            }
            Box::new(FileStore::new(paths.clone(), filter.clone()).map_err(|e| e.to_string())?)
        }
        Backend::Env => Box::new(EnvStore),
        Backend::Etcd(options) => Box::new(EtcdStore::new(options).map_err(|e| e.to_string())?),
        Backend::Redis(options) => Box::new(RedisStore::new(options).map_err(|e| e.to_string())?),
        Backend::Zookeeper(options) => {
            Box::new(ZookeeperStore::new(options).map_err(|e| e.to_string())?)
        }
        Backend::Nats(options) => Box::new(NatsStore::new(options).map_err(|e| e.to_string())?),
        Backend::Consul(options) => Box::new(ConsulStore::new(options).map_err(|e| e.to_string())?),
        Backend::Vault(options) => Box::new(VaultStore::new(options).map_err(|e| e.to_string())?),
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_srv_domain_or_record_is_unset_as_in_confd() {
        let fields = StoreFields {
            srv_domain: Some(String::new()),
            srv_record: Some(String::new()),
            ..StoreFields::default()
        };
        assert_eq!(fields.srv_record_name("etcd"), None);
        let fields = StoreFields {
            srv_domain: Some("example.com.".into()),
            ..StoreFields::default()
        };
        assert_eq!(
            fields.srv_record_name("etcd").as_deref(),
            Some("_etcd._tcp.example.com.")
        );
    }

    #[test]
    fn instances_name_the_kind_and_the_nodes_without_passwords() {
        let mut one = fields("etcd");
        one.nodes = vec!["http://10.0.0.1:2379".to_string()];
        let mut other = fields("etcd");
        other.nodes = vec!["http://u:secret@10.0.0.2:2379".to_string()];
        let one = one.resolve().expect("valid").instance();
        let other = other.resolve().expect("valid").instance();
        assert_eq!(one, "etcd http://10.0.0.1:2379");
        assert_eq!(other, "etcd http://u:***@10.0.0.2:2379");
        assert_eq!(Backend::Env.instance(), "env");
    }

    fn fields(backend: &str) -> StoreFields {
        StoreFields {
            backend: Some(backend.to_string()),
            ..StoreFields::default()
        }
    }

    #[test]
    fn the_credential_keys_are_those_whose_values_help_hides() {
        assert_eq!(
            StoreFields::credential_keys(),
            // A node's URL may hold a user and password.
            ["nodes", "password", "auth_token", "secret_id"]
        );
    }

    #[test]
    fn credentials_are_the_passwords_tokens_and_secret_ids_of_the_settings() {
        let mut etcd = fields("etcd");
        etcd.nodes = vec![
            "http://u:InNode@10.0.0.1:2379".into(),
            "10.0.0.2:2379".into(),
        ];
        etcd.password = Some("Given".into());
        let credentials = etcd.resolve().expect("valid").credentials();
        assert_eq!(credentials, ["Given", "InNode"]);
        let mut vault = fields("vault");
        vault.role_id = Some("role".into());
        vault.secret_id = Some("SecretId".into());
        let credentials = vault.resolve().expect("valid").credentials();
        assert_eq!(credentials, ["SecretId"]);
        assert!(Backend::Env.credentials().is_empty());
    }

    #[test]
    fn etcd_nodes_get_a_scheme_and_a_default() {
        let Backend::Etcd(options) = fields("etcd").resolve().expect("valid") else {
            panic!("etcd");
        };
        assert_eq!(options.nodes, ["http://127.0.0.1:2379"]);
        let mut tls = fields("etcd");
        tls.nodes = vec!["10.0.0.1:2379".into(), "http://10.0.0.2:2379".into()];
        tls.client_cakeys = Some("ca.pem".into());
        let Backend::Etcd(options) = tls.resolve().expect("valid") else {
            panic!("etcd");
        };
        assert_eq!(
            options.nodes,
            ["https://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        tls.scheme = Some("gopher".into());
        assert!(tls.resolve().expect_err("bad scheme").contains("gopher"));
        for backend in ["etcd", "consul", "vault"] {
            let mut fields = fields(backend);
            fields.nodes = vec!["ftp://10.0.0.1:2379".into()];
            fields.auth_token = Some("token".into());
            let error = fields.resolve().expect_err("not HTTP");
            assert!(
                error.contains(
                    "\"ftp://10.0.0.1:2379\": the scheme \"ftp\" is neither http nor https"
                ),
                "{backend}: {error}"
            );
        }
    }

    #[test]
    fn node_ports_must_be_from_1_to_65535() {
        for backend in ["etcd", "redis", "nats", "consul", "vault"] {
            for port in ["0", "65536", "99999"] {
                let mut fields = fields(backend);
                fields.nodes = vec![format!("127.0.0.1:{port}")];
                fields.auth_token = Some("token".into());
                let error = fields.resolve().expect_err("port out of range");
                assert!(
                    error.contains(&format!(
                        "127.0.0.1:{port}\": the port is not a number from 1 to 65535"
                    )),
                    "{backend}: {error}"
                );
            }
            let mut fields = fields(backend);
            fields.nodes = vec![
                "127.0.0.1:1".into(),
                "[::1]:65535".into(),
                "db.local".into(),
            ];
            fields.auth_token = Some("token".into());
            assert!(fields.resolve().is_ok(), "{backend}: ports 1 and 65535");
        }
    }

    #[test]
    fn confds_etcdv3_is_the_etcd_store() {
        assert!(known_store("etcdv3").is_ok());
        let Backend::Etcd(options) = fields("etcdv3").resolve().expect("valid") else {
            panic!("etcdv3 is not the etcd store");
        };
        assert_eq!(
            options.nodes,
            fields("etcd")
                .urls_or("http", DEFAULT_ETCD_NODE)
                .expect("nodes")
        );
    }

    #[test]
    fn unknown_stores_and_a_file_store_without_files_are_named() {
        assert!(
            fields("zookeper")
                .resolve()
                .expect_err("unknown")
                .contains("zookeper")
        );
        assert!(
            fields("file")
                .resolve()
                .expect_err("no files")
                .contains("--file")
        );
    }

    #[test]
    fn a_backend_table_rejects_unknown_keys() {
        let error = toml::from_str::<StoreFields>("backend = \"etcd\"\nnode = [\"x\"]\n")
            .expect_err("typo");
        assert!(error.to_string().contains("node"), "{error}");
    }
}
