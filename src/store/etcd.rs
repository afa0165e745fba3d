//! The etcd v3 store, spoken over etcd's native gRPC API (the [`rpc`] client).
//!
//! A fetch reads every prefix at one revision, in pages, so the snapshot is consistent and no
//! answer is giant; the watch is in the `watch` module. Requests go to the node that answered
//! last and fail over to the next one when a node cannot be reached or has no leader (the
//! [`Nodes`] policy).

pub mod lease;
mod proto;
mod rpc;
mod watch;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use self::rpc::{ConnectOptions, Credentials, KeyRange, NodeClient, RpcError};
use super::nodes::{Node, NodeFailure, Nodes, credentials_in, split_user_info};
use super::progress::Progress;
use super::tls::{Tls, TlsOptions};
use super::{Snapshot, Store, StoreError, StoreErrorKind, Value, WatchStream, value};

/// Keys per range request: a page of typical keys and values stays around a megabyte.
const PAGE_SIZE: i64 = 5000;

/// Limit for connecting to a node (TCP and TLS), so that a dead node costs little before the
/// next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Limit for one unary request (a range page, an authentication) and for a watcher to be
/// created.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach and authenticate to etcd.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EtcdOptions {
    /// Node URLs such as `http://127.0.0.1:2379`, tried in order.
    pub nodes: Vec<String>,
    /// User name for etcd's authentication, with `password`.
    pub username: Option<String>,
    /// Password for `username`.
    pub password: Option<String>,
    /// TLS settings for the nodes.
    pub tls: TlsOptions,
}

/// Reads keys from etcd v3.
pub struct EtcdStore {
    client: Arc<Client>,
}

impl EtcdStore {
    /// A store for the nodes and credentials in `options`. Fails when a setting cannot work
    /// or a TLS file cannot be read or parsed; no node is contacted yet.
    pub fn new(options: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore {
            client: Arc::new(Client::new(options)?),
        })
    }
}

#[async_trait]
impl Store for EtcdStore {
    fn name(&self) -> &'static str {
        "etcd"
    }

    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        self.client.fetch(prefixes).await
    }

    async fn watch(
        &self,
        prefixes: &[String],
        snapshot: &Snapshot,
    ) -> Result<Option<WatchStream>, StoreError> {
        watch::start(Arc::clone(&self.client), prefixes, snapshot)
            .await
            .map(Some)
    }
}

impl NodeFailure for RpcError {
    fn is_unreachable(&self) -> bool {
        matches!(self, RpcError::Store(error) if error.kind() == StoreErrorKind::Unreachable)
    }

    fn every_node(message: String) -> RpcError {
        RpcError::Store(StoreError::unreachable(message))
    }
}

/// One of the cluster's nodes, and its gRPC client once connected.
struct Member {
    node: Node,
    /// Connected at first use; the client makes its connection again when it breaks, so it
    /// is kept from then on.
    client: tokio::sync::Mutex<Option<Arc<NodeClient>>>,
}

impl Member {
    /// The node's client, connecting first when there is none yet.
    async fn client(&self, options: &ConnectOptions) -> Result<Arc<NodeClient>, StoreError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(Arc::clone(client));
        }
        let connected = Arc::new(NodeClient::connect(self.node.address(), options).await?);
        *client = Some(Arc::clone(&connected));
        Ok(connected)
    }
}

/// The cluster's nodes and what the store and its watch task share.
struct Client {
    nodes: Nodes<Member>,
    connect: ConnectOptions,
    /// For each watched prefix, the revision up to which its watcher delivered every change:
    /// a new watch of the prefix starts right after it.
    progress: Mutex<Progress>,
    /// The key last put among those read or watched, and the revision that put it: a watch
    /// that resumes checks that etcd's history has it too (see `watch::history_differs`).
    last_put: Mutex<Option<LastPut>>,
    /// A watch broke, or could not be opened, since etcd's history was last known to go on
    /// unbroken: the next watch checks it before resuming. Not after a watch the daemon
    /// closed itself (a SIGHUP's handover), which delivered everything to the end.
    history_unchecked: AtomicBool,
    /// Set once the user was told that etcd refuses a watch over the range covering every
    /// prefix (said once, not at every reconnect).
    split_watch_told: AtomicBool,
}

impl Client {
    fn new(options: &EtcdOptions) -> Result<Client, StoreError> {
        let invalid = |message: &str| StoreError::invalid(format!("etcd: {message}"));
        let credentials = match (&options.username, &options.password) {
            (Some(user), Some(password)) => Some(Credentials {
                user: user.clone(),
                password: password.clone(),
            }),
            (Some(_), None) => return Err(invalid("--username needs --password")),
            (None, Some(_)) => return Err(invalid("--password needs --username")),
            (None, None) => None,
        };
        // etcd's clients take `http://user:password@host` as credentials given by flags; the
        // address connected to has none, which would go to etcd in the request's authority.
        let credentials = match credentials {
            Some(given) => Some(given),
            None => match credentials_in(&options.nodes).map_err(|e| invalid(&e))? {
                Some((user, Some(password))) => Some(Credentials { user, password }),
                Some((_, None)) => {
                    return Err(invalid("a --node URL names a user without a password"));
                }
                None => None,
            },
        };
        let members = options
            .nodes
            .iter()
            .map(|url| Member {
                node: Node::new(&split_user_info(url.trim_end_matches('/')).0),
                client: tokio::sync::Mutex::new(None),
            })
            .collect();
        let nodes = Nodes::new("etcd", members)?;
        // The system's CA certificates are loaded only for `https` nodes.
        let https = nodes
            .iter()
            .any(|member| member.node.address().starts_with("https://"));
        let tls = Tls::read("etcd", &options.tls)?;
        let refusals = tls.refusals();
        let tls = tls.client_config("etcd", https)?;
        Ok(Client {
            nodes,
            connect: ConnectOptions {
                connect_timeout: CONNECT_TIMEOUT,
                request_timeout: REQUEST_TIMEOUT,
                tls: Arc::new(tls),
                refusals,
                credentials,
            },
            progress: Mutex::default(),
            last_put: Mutex::default(),
            history_unchecked: AtomicBool::new(false),
            split_watch_told: AtomicBool::new(false),
        })
    }

    /// Every key under `prefixes`, all read at one revision.
    async fn fetch(&self, prefixes: &[String]) -> Result<Snapshot, StoreError> {
        // A compaction between two pages invalidates the revision being read; starting over
        // reads at the new current revision. Compactions are minutes apart, so one more
        // attempt all but always does.
        let mut attempts_left = 3;
        loop {
            let read = self
                .nodes
                .ask(|_, member| self.fetch_from(member, prefixes))
                .await;
            match read {
                Err(RpcError::Compacted) if attempts_left > 1 => attempts_left -= 1,
                other => return other.map_err(StoreError::from),
            }
        }
    }

    /// Every key under `prefixes` from `member`, page by page, every page at the revision of
    /// the first. The pages are read one after the other: reading a range's tail at the same
    /// time spread the JSON gateway's encoding over two cores, but over gRPC a read of 10,000
    /// keys in pages of 5,000 costs etcd about 10 ms (BENCHMARKS.md), and no measurement has
    /// shown concurrent pages to gain anything.
    async fn fetch_from(&self, member: &Member, prefixes: &[String]) -> Result<Snapshot, RpcError> {
        let client = member.client(&self.connect).await?;
        let mut pairs = Vec::new();
        let mut revision = 0;
        let mut last_put: Option<LastPut> = None;
        for prefix in prefixes {
            let mut pages =
                client.range_pages(&KeyRange::prefix(prefix.as_bytes()), revision, PAGE_SIZE);
            while let Some(page) = pages.next().await? {
                if let Some(newest) = page.iter().max_by_key(|kv| kv.mod_revision)
                    && last_put
                        .as_ref()
                        .is_none_or(|last| newest.mod_revision > last.revision)
                {
                    last_put = Some(LastPut {
                        key: newest.key.clone(),
                        revision: newest.mod_revision,
                    });
                }
                pairs.extend(page.into_iter().filter_map(decode));
            }
            revision = pages.revision();
        }
        *self.last_put() = last_put;
        let mut read = Snapshot::from_pairs(pairs);
        read.revision = Some(revision);
        Ok(read)
    }

    /// What the watches delivered, for each prefix.
    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The key last put among those read or watched.
    fn last_put(&self) -> MutexGuard<'_, Option<LastPut>> {
        self.last_put.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A key and the revision that last put it, as read or watched.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LastPut {
    key: Vec<u8>,
    revision: i64,
}

/// A key and its value. A key that is not UTF-8 cannot be named by a template and is skipped;
/// a value that is not UTF-8 is kept as such, so the resources that see it fail naming it.
fn decode(kv: proto::mvccpb::KeyValue) -> Option<(String, Value)> {
    let key = String::from_utf8(kv.key).ok()?;
    Some((key, value(kv.value)))
}
