//! The HTTP client of Consul and Vault (short connect timeouts, TCP keepalive for
//! long-lived watch connections, TLS from the `--client-*` settings), and their nodes as base
//! URLs.

use std::time::Duration;

use super::nodes::{Node, Nodes};
use super::tls::{self, CERTIFICATE_REFUSED, Tls, TlsOptions, refusal_in};
use super::{StoreError, StoreErrorKind};

/// Limit for connecting to a node, so that a dead node costs little before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Idle time before TCP keepalive probes start, so that a node that vanished without closing
/// a watch connection is noticed.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Time between keepalive probes, and how many go unanswered before the connection is
/// declared dead: about a minute in all.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// The nodes of `store` at the base URLs `urls`, without a trailing `/` so that API paths
/// append to them.
pub(crate) fn nodes(store: &'static str, urls: &[String]) -> Result<Nodes<Node>, StoreError> {
    Nodes::new(
        store,
        urls.iter()
            .map(|url| Node::new(url.trim_end_matches('/')))
            .collect(),
    )
}

/// An HTTP/1.1 client for `store` (named in errors) and its `nodes`, with `tls` applied. The
/// system's CA certificates are loaded only for `https` nodes.
pub(crate) fn client(
    store: &str,
    tls: &TlsOptions,
    nodes: &Nodes<Node>,
) -> Result<reqwest::Client, StoreError> {
    let https = nodes
        .iter()
        .any(|node| node.address().starts_with("https://"));
    let mut config = Tls::read(store, tls)?.client_config(store, https)?;
    // reqwest offers HTTP/1.1 only (`http1_only`), so the TLS handshake offers it alone too.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(KEEPALIVE)
        .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
        .tcp_keepalive_retries(KEEPALIVE_RETRIES)
        .no_proxy()
        .http1_only()
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|e| {
            StoreError::invalid(format!(
                "{store}: cannot set up the HTTP client: {}",
                error_chain(&e)
            ))
        })
}

/// The kind of failure an HTTP error status stands for, whatever the store: 401 and 403 are
/// credentials or permissions; 5xx and 408 a node that cannot serve now, worth another node
/// or another try soon; any other 4xx (a 404 of a path the store should have, a 400, a 429
/// rate limit) a refusal that asking again at the reconnect rate would not mend.
pub fn status_kind(status: reqwest::StatusCode) -> StoreErrorKind {
    match status.as_u16() {
        401 | 403 => StoreErrorKind::Auth,
        408 | 500..=599 => StoreErrorKind::Unreachable,
        _ => StoreErrorKind::Rejected,
    }
}

/// A server's error text on one line: Vault's read `1 error occurred:\n\t* permission
/// denied\n\n`, which would otherwise break a log line into four.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A request to a node that failed without an answer, `context` saying which: out of reach,
/// or refused by the TLS layer (a client certificate the server does not take, a server
/// certificate the settings do not trust), which asking again soon does not mend.
pub(crate) fn failure(context: &str, error: &reqwest::Error) -> StoreError {
    tls::failure(
        refusal_in(error, CERTIFICATE_REFUSED),
        StoreErrorKind::Unreachable,
        format!("{context}: {}", error_chain(error)),
    )
}

/// An error with its causes, which for connection errors hold the useful part ("connection
/// refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        // Some errors repeat their cause in their own message, or wrap one with the same
        // words ("tcp connect error: transport error: tcp connect error"): said once is
        // enough.
        let said = last.ends_with(&message) || text.split(": ").any(|part| part == message);
        if !said {
            text.push_str(": ");
            text.push_str(&message);
        }
        last = message;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and an optional cause.
    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|cause| cause as _)
        }
    }

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        let refused = Layer("Connection refused (os error 111)", None);
        let connect = Layer("tcp connect error", Some(Box::new(refused)));
        let wrapped = Layer("tcp connect error", Some(Box::new(connect)));
        let transport = Layer("transport error", Some(Box::new(wrapped)));
        assert_eq!(
            error_chain(&transport),
            "transport error: tcp connect error: Connection refused (os error 111)"
        );
        let inner = Layer("timed out", None);
        let outer = Layer("request failed: timed out", Some(Box::new(inner)));
        assert_eq!(error_chain(&outer), "request failed: timed out");
        // A layer that repeats one further out is said once.
        let refused = Layer("Connection refused (os error 111)", None);
        let connect = Layer("tcp connect error", Some(Box::new(refused)));
        let transport = Layer("transport error", Some(Box::new(connect)));
        let outer = Layer("tcp connect error", Some(Box::new(transport)));
        assert_eq!(
            error_chain(&outer),
            "tcp connect error: transport error: Connection refused (os error 111)"
        );
    }

    #[test]
    fn statuses_map_to_kinds() {
        let kind = |code: u16| {
            status_kind(reqwest::StatusCode::from_u16(code).expect("a valid status code"))
        };
        assert_eq!(kind(401), StoreErrorKind::Auth);
        assert_eq!(kind(403), StoreErrorKind::Auth);
        for code in [500, 502, 503, 504, 408] {
            assert_eq!(kind(code), StoreErrorKind::Unreachable, "{code}");
        }
        for code in [400, 404, 405, 412, 429] {
            assert_eq!(kind(code), StoreErrorKind::Rejected, "{code}");
        }
    }
}
