//! The HTTP client the network stores share: short connect timeouts, TCP keepalive for
//! long-lived watch connections, and TLS from the `--client-*` settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// TLS settings for a store's nodes, as confd names them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsOptions {
    /// PEM client certificate for TLS client authentication.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// PEM CA certificates that sign the nodes' certificates; without it the system's CAs.
    pub client_ca_keys: Option<PathBuf>,
    /// Accept any server certificate. For testing only.
    pub client_insecure: bool,
}

impl TlsOptions {
    /// True when any TLS setting is given, so nodes without a scheme default to `https`.
    pub fn is_set(&self) -> bool {
        self.client_cert.is_some()
            || self.client_key.is_some()
            || self.client_ca_keys.is_some()
            || self.client_insecure
    }
}

/// An HTTP/1.1 client for `store` (named in errors) with `tls` applied. Without `https`
/// nodes the system's CA certificates are not loaded: they cost start-up time and memory on
/// every host of a fleet for nothing.
pub fn client(store: &str, tls: &TlsOptions, https: bool) -> Result<reqwest::Client, StoreError> {
    let invalid = |message: String| StoreError::invalid(format!("{store}: {message}"));
    // reqwest is built without a compiled-in crypto provider, so that ring is the only one;
    // it must be installed before the first client is built. A second install fails
    // harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(KEEPALIVE)
        .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
        .tcp_keepalive_retries(KEEPALIVE_RETRIES)
        .no_proxy()
        .http1_only();
    if let Some(path) = &tls.client_ca_keys {
        let certificates = reqwest::Certificate::from_pem_bundle(&read(store, path)?)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        builder = builder.tls_certs_only(certificates);
    } else if !https {
        builder = builder.tls_certs_only([]);
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(store, cert)?;
            pem.push(b'\n');
            pem.extend(read(store, key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| invalid(format!("{} / {}: {e}", cert.display(), key.display())))?;
            builder = builder.identity(identity);
        }
        (None, None) => {}
        _ => {
            return Err(invalid(
                "--client-cert and --client-key go together".to_string(),
            ));
        }
    }
    if tls.client_insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| {
        invalid(format!(
            "cannot set up the HTTP client: {}",
            error_chain(&e)
        ))
    })
}

fn read(store: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::invalid(format!("{store}: {}: {e}", path.display())))
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

/// An error with its causes, which for connection errors hold the useful part ("connection
/// refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

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
