//! Which store to read from, and how: confd's store settings, from the command line and the
//! settings file or from a resource's `[backend]` table, checked and resolved into a
//! [`Backend`] that [`open`] turns into a store.

use std::path::PathBuf;

use serde::Deserialize;

use super::Store;
use super::env::EnvStore;
use super::etcd::{EtcdOptions, EtcdStore};
use super::file::FileStore;
use super::http::TlsOptions;

/// etcd's client port on the local host, confd's default node.
const DEFAULT_ETCD_NODE: &str = "http://127.0.0.1:2379";

/// The stores reconfd knows, for messages.
const KNOWN: &str = "file, env, etcd";

/// A store's settings with confd's names, as given: every field optional.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoreFields {
    /// The store's name, such as `etcd`.
    pub backend: Option<String>,
    /// Node addresses, tried in order.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Scheme for nodes given without one.
    pub scheme: Option<String>,
    /// User name for the store's authentication.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// PEM client certificate.
    pub client_cert: Option<PathBuf>,
    /// PEM key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// PEM CA certificates of the nodes.
    pub client_cakeys: Option<PathBuf>,
    /// Accept any server certificate.
    #[serde(default)]
    pub client_insecure: bool,
    /// File store: files and directories.
    #[serde(default, deserialize_with = "one_or_many")]
    pub file: Vec<PathBuf>,
    /// File store: glob on file names inside directories.
    pub filter: Option<String>,
}

/// A list, or a single value as older confd.toml files write `file = "data.yaml"`.
pub fn one_or_many<'de, D: serde::Deserializer<'de>>(
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
}

impl StoreFields {
    /// Checks the fields and fills in defaults (`file` when no store is named).
    pub fn resolve(&self) -> Result<Backend, String> {
        let name = self.backend.as_deref().unwrap_or("file");
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
            "etcd" => Backend::Etcd(EtcdOptions {
                nodes: self.nodes_or(DEFAULT_ETCD_NODE)?,
                username: self.username.clone(),
                password: self.password.clone(),
                tls: self.tls(),
            }),
            other => {
                return Err(format!(
                    "backend {other:?} is not a known store (known: {KNOWN})"
                ));
            }
        };
        if !self.nodes.is_empty() && matches!(backend, Backend::File { .. } | Backend::Env) {
            tracing::warn!("nodes are not used by the {name} store");
        }
        Ok(backend)
    }

    fn tls(&self) -> TlsOptions {
        TlsOptions {
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            client_ca_keys: self.client_cakeys.clone(),
            client_insecure: self.client_insecure,
        }
    }

    /// The nodes, each with a scheme (`scheme`, or `https` when TLS is set up, else `http`),
    /// or `default` when none is given.
    fn nodes_or(&self, default: &str) -> Result<Vec<String>, String> {
        if self.nodes.is_empty() {
            return Ok(vec![default.to_string()]);
        }
        let scheme = match self.scheme.as_deref() {
            None if self.tls().is_set() => "https",
            None => "http",
            Some(scheme @ ("http" | "https")) => scheme,
            Some(other) => return Err(format!("scheme {other:?} is neither http nor https")),
        };
        Ok(self
            .nodes
            .iter()
            .map(|node| {
                if node.contains("://") {
                    node.clone()
                } else {
                    format!("{scheme}://{node}")
                }
            })
            .collect())
    }
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
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(backend: &str) -> StoreFields {
        StoreFields {
            backend: Some(backend.to_string()),
            ..StoreFields::default()
        }
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
