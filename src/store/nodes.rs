//! A store's nodes and the one failover policy of the stores that pick a node themselves
//! (etcd, Redis, Consul, Vault; the NATS and ZooKeeper clients pick among their servers on
//! their own).
//!
//! The nodes of one deployment are alternatives. A request goes to the node that answered
//! last, and on to the next one only when a node cannot be reached or cannot serve: a node
//! that refuses the credentials or the request speaks for the others, which share them, so its
//! answer is the store's. Asking the next node instead would only turn a refusal, which the
//! daemon asks again slowly, into a node out of reach, which it asks again every second.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{StoreError, StoreErrorKind};

/// What failover needs to know of one node's failure.
pub(crate) trait NodeFailure: std::fmt::Display {
    /// True when the node could not be reached or could not serve, so that another may.
    fn is_unreachable(&self) -> bool;

    /// The failure of every node, told by `message`.
    fn every_node(message: String) -> Self;
}

impl NodeFailure for StoreError {
    fn is_unreachable(&self) -> bool {
        self.kind() == StoreErrorKind::Unreachable
    }

    fn every_node(message: String) -> StoreError {
        StoreError::unreachable(message)
    }
}

/// A store's nodes, in the order given, and the one to ask first.
pub(crate) struct Nodes<N> {
    /// The store's name, for messages.
    store: &'static str,
    /// Never empty.
    nodes: Vec<N>,
    /// The index of the node to ask first: the last one that answered.
    preferred: AtomicUsize,
}

impl<N> Nodes<N> {
    /// `nodes`, the first one preferred; an unusable setting when there is none.
    pub(crate) fn new(store: &'static str, nodes: Vec<N>) -> Result<Nodes<N>, StoreError> {
        if nodes.is_empty() {
            return Err(StoreError::invalid(format!("{store}: no node given")));
        }
        Ok(Nodes {
            store,
            nodes,
            preferred: AtomicUsize::new(0),
        })
    }

    /// The nodes, in the order given.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &N> {
        self.nodes.iter()
    }

    /// Asks each node in turn, from the preferred one, until one answers, and prefers it from
    /// then on. A failure that is not [unreachable](NodeFailure::is_unreachable) ends the
    /// round, as it is; when every node is unreachable, the error names each one's failure.
    pub(crate) async fn ask<'n, T, E: NodeFailure, Answer>(
        &'n self,
        mut ask: impl FnMut(usize, &'n N) -> Answer,
    ) -> Result<T, E>
    where
        Answer: Future<Output = Result<T, E>>,
    {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for offset in 0..self.nodes.len() {
            let index = (first + offset) % self.nodes.len();
            match ask(index, &self.nodes[index]).await {
                Ok(answer) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(answer);
                }
                Err(failure) if failure.is_unreachable() => failures.push(failure.to_string()),
                Err(failure) => return Err(failure),
            }
        }
        Err(E::every_node(format!(
            "no {} node answered ({})",
            self.store,
            failures.join("; ")
        )))
    }

    /// Prefers the node after the one at `index`, which stopped answering while it was used
    /// outside [`Nodes::ask`] (a watch's connection).
    pub(crate) fn avoid(&self, index: usize) {
        self.preferred
            .store((index + 1) % self.nodes.len(), Ordering::Relaxed);
    }
}

impl<N> std::ops::Index<usize> for Nodes<N> {
    type Output = N;

    /// The node at `index`, as [`Nodes::ask`] numbers them.
    fn index(&self, index: usize) -> &N {
        &self.nodes[index]
    }
}

/// A node's address, and its name in messages: the address with any password masked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Node {
    address: String,
    name: String,
}

impl Node {
    /// The node at `address`.
    pub(crate) fn new(address: &str) -> Node {
        Node {
            address: address.to_string(),
            name: redact(address),
        }
    }

    /// The address, to connect to; never for messages.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// The credentials the node URLs `addresses` carry as user information (`user:password@`, or
/// `user@`: no password), for the stores whose clients do not read them from the URL (etcd,
/// NATS), which take them as their own clients do. `None` when no URL carries any; an error
/// when two URLs carry different ones, or `%`-escapes, which are not decoded.
pub(crate) fn credentials_in(
    addresses: &[String],
) -> Result<Option<(String, Option<String>)>, String> {
    let written: BTreeSet<String> = addresses
        .iter()
        .filter_map(|address| split_user_info(address).1)
        .collect();
    let Some(user_info) = written.first() else {
        return Ok(None);
    };
    if written.len() > 1 {
        return Err(
            "the --node URLs carry different credentials; give them once with \
                    --username and --password"
                .to_string(),
        );
    }
    if user_info.contains('%') {
        return Err(
            "credentials with %-escapes in a --node URL are not decoded; give them \
                    with --username and --password"
                .to_string(),
        );
    }
    Ok(Some(match user_info.split_once(':') {
        Some((user, password)) => (user.to_string(), Some(password.to_string())),
        None => (user_info.clone(), None),
    }))
}

/// `address` without its user information, and the user information (`user:password`), for a
/// store whose client does not take credentials from the URL.
pub(crate) fn split_user_info(address: &str) -> (String, Option<String>) {
    let (scheme, rest) = match address.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), address),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => (
            format!("{scheme}{}", &rest[at + 1..]),
            Some(rest[..at].to_string()),
        ),
        None => (address.to_string(), None),
    }
}

/// `address` (a URL, or `[user[:password]@]host:port`) with the password of its user
/// information replaced by `***`, for messages, logs and `/status`; the rest as given. User
/// information without a password is all masked: it is a token (`nats://token@host`).
pub(crate) fn redact(address: &str) -> String {
    let (scheme, rest) = match address.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, address),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    // The host follows the last `@`: a password may hold one.
    let Some(at) = rest[..authority_end].rfind('@') else {
        return address.to_string();
    };
    let shown = match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    let scheme = scheme
        .map(|scheme| format!("{scheme}://"))
        .unwrap_or_default();
    format!("{scheme}{shown}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// `count` nodes, named `n0`, `n1`, ...
    fn nodes(count: usize) -> Nodes<String> {
        Nodes::new(
            "test",
            (0..count).map(|index| format!("n{index}")).collect(),
        )
        .expect("nodes")
    }

    /// Asks `nodes` once: the nodes named in `unreachable` and `refusing` fail so, the others
    /// answer with their name. Returns the answer and the nodes asked, in order.
    async fn ask_once(
        nodes: &Nodes<String>,
        unreachable: &[&str],
        refusing: &[&str],
    ) -> (Result<String, StoreError>, Vec<String>) {
        let asked = Mutex::new(Vec::new());
        let answer = nodes
            .ask(|_, node| {
                asked.lock().expect("lock").push(node.clone());
                let answer = if unreachable.contains(&node.as_str()) {
                    Err(StoreError::unreachable(format!("{node}: down")))
                } else if refusing.contains(&node.as_str()) {
                    Err(StoreError::auth(format!("{node}: wrong password")))
                } else {
                    Ok(node.clone())
                };
                std::future::ready(answer)
            })
            .await;
        (answer, asked.into_inner().expect("lock"))
    }

    #[tokio::test]
    async fn an_unreachable_node_passes_to_the_next_in_order() {
        let nodes = nodes(3);
        let (answer, asked) = ask_once(&nodes, &["n0", "n1"], &[]).await;
        assert_eq!(answer.expect("n2 answers"), "n2");
        assert_eq!(asked, ["n0", "n1", "n2"]);
    }

    #[tokio::test]
    async fn the_node_that_answered_is_asked_first_from_then_on() {
        let nodes = nodes(3);
        ask_once(&nodes, &["n0"], &[]).await.0.expect("n1 answers");
        let (answer, asked) = ask_once(&nodes, &[], &[]).await;
        assert_eq!(answer.expect("n1 answers"), "n1");
        assert_eq!(asked, ["n1"]);
        // Past the last node, the round goes on with the first.
        let (answer, asked) = ask_once(&nodes, &["n1", "n2"], &[]).await;
        assert_eq!(answer.expect("n0 answers"), "n0");
        assert_eq!(asked, ["n1", "n2", "n0"]);
    }

    #[tokio::test]
    async fn a_refusal_is_the_answer_not_a_reason_to_ask_the_next_node() {
        let nodes = nodes(3);
        let (answer, asked) = ask_once(&nodes, &["n0"], &["n1"]).await;
        let error = answer.expect_err("n1 refuses");
        assert_eq!(error.kind(), StoreErrorKind::Auth);
        assert_eq!(error.to_string(), "n1: wrong password");
        assert_eq!(asked, ["n0", "n1"]);
        // A refusal is no answer: the preferred node stays the one that answered last.
        let (_, asked) = ask_once(&nodes, &[], &[]).await;
        assert_eq!(asked, ["n0"]);
    }

    #[tokio::test]
    async fn every_node_out_of_reach_is_named() {
        let nodes = nodes(2);
        let (answer, asked) = ask_once(&nodes, &["n0", "n1"], &[]).await;
        let error = answer.expect_err("none answers");
        assert_eq!(error.kind(), StoreErrorKind::Unreachable);
        assert_eq!(
            error.to_string(),
            "no test node answered (n0: down; n1: down)"
        );
        assert_eq!(asked, ["n0", "n1"]);
    }

    #[tokio::test]
    async fn an_avoided_node_is_asked_last() {
        let nodes = nodes(3);
        nodes.avoid(2);
        let (_, asked) = ask_once(&nodes, &["n0"], &[]).await;
        assert_eq!(asked, ["n0", "n1"]);
        nodes.avoid(1);
        let (_, asked) = ask_once(&nodes, &[], &[]).await;
        assert_eq!(asked, ["n2"]);
    }

    #[test]
    fn no_node_is_an_unusable_setting() {
        let error = Nodes::<String>::new("etcd", Vec::new())
            .err()
            .expect("no node");
        assert_eq!(error.kind(), StoreErrorKind::Invalid);
        assert_eq!(error.to_string(), "etcd: no node given");
    }

    #[test]
    fn passwords_are_masked_and_the_rest_kept() {
        let cases = [
            (
                "http://u:secret@10.0.0.2:2379",
                "http://u:***@10.0.0.2:2379",
            ),
            (
                "nats://me:secret@127.0.0.1:4222",
                "nats://me:***@127.0.0.1:4222",
            ),
            (
                "redis://user:secret@10.0.0.1:6379/2",
                "redis://user:***@10.0.0.1:6379/2",
            ),
            ("rediss://:p@ss@host:6380", "rediss://:***@host:6380"),
            ("me:secret@host:4222", "me:***@host:4222"),
            // User information alone may be a token (`nats://token@host`): all masked.
            ("redis://user@host:6379", "redis://***@host:6379"),
            (
                "nats://NatsTok-1212@127.0.0.1:4222",
                "nats://***@127.0.0.1:4222",
            ),
            // No user information: nothing to mask.
            ("http://127.0.0.1:2379/", "http://127.0.0.1:2379/"),
            ("http://host/path?a=b@c", "http://host/path?a=b@c"),
            ("127.0.0.1:2181", "127.0.0.1:2181"),
        ];
        for (address, shown) in cases {
            assert_eq!(redact(address), shown, "{address}");
        }
        let node = Node::new("https://root:pw@etcd:2379");
        assert_eq!(
            split_user_info("https://root:pw@etcd:2379/x"),
            (
                "https://etcd:2379/x".to_string(),
                Some("root:pw".to_string())
            )
        );
        assert_eq!(node.to_string(), "https://root:***@etcd:2379");
        assert_eq!(node.address(), "https://root:pw@etcd:2379");
    }

    #[test]
    fn credentials_are_taken_from_the_urls_once() {
        let urls = |list: &[&str]| list.iter().map(|u| u.to_string()).collect::<Vec<_>>();
        assert_eq!(credentials_in(&urls(&["http://a:1", "b:2"])), Ok(None));
        assert_eq!(
            credentials_in(&urls(&["http://u:p@a:1", "http://u:p@b:1", "http://c:1"])),
            Ok(Some(("u".to_string(), Some("p".to_string()))))
        );
        assert_eq!(
            credentials_in(&urls(&["nats://token@a:4222"])),
            Ok(Some(("token".to_string(), None)))
        );
        let different = credentials_in(&urls(&["http://u:p@a:1", "http://u:q@b:1"]));
        assert!(different.is_err_and(|e| e.contains("different credentials")));
        let escaped = credentials_in(&urls(&["http://u:p%40ss@a:1"]));
        assert!(escaped.is_err_and(|e| e.contains("%-escapes")));
    }
}
