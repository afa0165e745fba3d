//! TLS for the network stores: the `--client-*` settings, the files they name, and one rustls
//! client configuration built from them.
//!
//! The files are read and parsed when the store is set up, so that a missing or broken file is
//! a settings error naming it rather than a failure at every connection. Every client that
//! takes a rustls configuration gets the same one (reqwest for Consul and Vault, etcd's gRPC
//! channels, async-nats); Redis's client, which builds its own, gets the
//! files' PEM.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::task::{Context, Poll};

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    AlertDescription, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{StoreError, StoreErrorKind};

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

/// Makes ring the process's rustls crypto provider. The binary calls it before any store is
/// set up. The configurations built here name their provider themselves; the process's one is
/// for the libraries that build a configuration of their own (Redis's client, async-nats when
/// a server asks for TLS unasked), which are built without a choice of provider compiled in.
/// Calling it again does nothing.
pub fn install_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // It fails only when a provider is installed already, which then stays the one used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The crypto provider of every configuration built here: ring, the only one built in.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A store's TLS settings with the files they name read and parsed.
pub(crate) struct Tls {
    ca: Option<CaFile>,
    identity: Option<Identity>,
    insecure: bool,
    refusals: Arc<Refusals>,
}

/// The CA certificates file: as read, and as the roots it gives.
struct CaFile {
    pem: Vec<u8>,
    roots: Arc<RootCertStore>,
}

/// The client certificate and its key: as read, and parsed.
struct Identity {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Tls {
    /// Reads and parses the files `options` name. `store` begins each error, which names the
    /// file at fault.
    pub(crate) fn read(store: &str, options: &TlsOptions) -> Result<Tls, StoreError> {
        let invalid = |message: String| StoreError::invalid(format!("{store}: {message}"));
        let ca = match &options.client_ca_keys {
            Some(path) => Some(read_ca(path).map_err(invalid)?),
            None => None,
        };
        let identity = match (&options.client_cert, &options.client_key) {
            (Some(cert), Some(key)) => Some(read_identity(cert, key).map_err(invalid)?),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "--client-cert and --client-key go together".to_string(),
                ));
            }
        };
        if options.client_insecure {
            // The connection is then open to anyone on the path posing as the store: the
            // operator must see that it is so, not only have set it once.
            tracing::warn!(
                "{store}: --client-insecure: any server certificate is accepted, so anyone on \
                 the network path can pose as the store"
            );
        }
        Ok(Tls {
            refusals: Arc::new(Refusals {
                without_certificate: identity.is_none(),
                ..Refusals::default()
            }),
            ca,
            identity,
            insecure: options.client_insecure,
        })
    }

    /// What the connections of [`Tls::client_config`]'s configurations see of servers
    /// refusing them, to tell their failures apart.
    pub(crate) fn refusals(&self) -> Arc<Refusals> {
        Arc::clone(&self.refusals)
    }

    /// A client configuration: any server certificate accepted when insecure, else those the
    /// CA file signs, else those the system's CAs sign when `system_roots`, else none (no node
    /// asked for TLS, and loading the system's CAs costs start-up time and memory on every
    /// host of a fleet for nothing); presenting the client certificate when there is one.
    pub(crate) fn client_config(
        &self,
        store: &str,
        system_roots: bool,
    ) -> Result<ClientConfig, StoreError> {
        let invalid = |message: String| StoreError::invalid(format!("{store}: {message}"));
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(format!("cannot set up TLS: {e}")))?;
        let builder = if self.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        } else if let Some(ca) = &self.ca {
            builder.with_root_certificates(Arc::clone(&ca.roots))
        } else if system_roots {
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| invalid(format!("cannot load the system's CA certificates: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
        } else {
            builder.with_root_certificates(RootCertStore::empty())
        };
        let mut config = match &self.identity {
            Some(identity) => builder
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(|e| {
                    invalid(format!(
                        "{} / {}: {e}",
                        identity.cert_path.display(),
                        identity.key_path.display()
                    ))
                })?,
            None => builder.with_no_client_auth(),
        };
        config.client_auth_cert_resolver = Arc::new(Asked {
            resolver: Arc::clone(&config.client_auth_cert_resolver),
            refusals: Arc::clone(&self.refusals),
        });
        Ok(config)
    }

    /// The CA certificates file as read, PEM.
    pub(crate) fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_ref().map(|ca| ca.pem.as_slice())
    }

    /// The client certificate and key files as read, PEM.
    pub(crate) fn identity_pem(&self) -> Option<(&[u8], &[u8])> {
        self.identity
            .as_ref()
            .map(|identity| (identity.cert_pem.as_slice(), identity.key_pem.as_slice()))
    }

    /// True when any server certificate is accepted.
    pub(crate) fn insecure(&self) -> bool {
        self.insecure
    }
}

/// What the TLS connections of one store have seen of its servers refusing them.
///
/// A server that refuses the client's certificate, or its lack of one, says so with an
/// alert. Under TLS 1.3 that alert comes after the client has finished its side of the
/// handshake, so whether a request sees it or only the connection closing ("broken pipe",
/// "connection closed") is a race, and HTTP/2 clients report the alert without it as a
/// cause. So the connections note each alert as they read it, and a connection closed
/// before any answer after the server asked for a client certificate ([`Noted`]); once a
/// server has refused this way, a failed connection is taken as the same refusal until a
/// server answers on one: the daemon then neither asks again every second nor alternates
/// between two reasons in its log.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// No client certificate is set.
    without_certificate: bool,
    /// A server asked for a client certificate.
    asked_for_certificate: AtomicBool,
    /// A server ended a connection with a certificate alert.
    refused_certificate: AtomicBool,
}

/// A connection failure the TLS layer explains.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TlsRefusal {
    /// How the daemon takes it: [`StoreErrorKind::Auth`] for a refused client certificate,
    /// [`StoreErrorKind::Invalid`] for a server certificate the settings do not trust,
    /// [`StoreErrorKind::Unreachable`] for a handshake the server broke off.
    pub(crate) kind: StoreErrorKind,
    /// What the operator can do, to append to the failure's message.
    pub(crate) hint: &'static str,
}

impl Refusals {
    /// Notes a read or write failure of a connection: a certificate alert from the server.
    fn note(&self, error: &std::io::Error) {
        if refusal_in(error, CERTIFICATE_REFUSED)
            .is_some_and(|refusal| refusal.kind == StoreErrorKind::Auth)
        {
            self.refused_certificate.store(true, Ordering::Relaxed);
        }
    }

    /// Notes a connection that failed or was closed before the server sent anything on it:
    /// after asking for a client certificate, that is the server refusing the one it got, or
    /// its absence, whether or not its alert was read.
    fn closed_unanswered(&self) {
        if self.asked_for_certificate.load(Ordering::Relaxed) {
            self.refused_certificate.store(true, Ordering::Relaxed);
        }
    }

    /// Notes that a server took a connection.
    fn accepted(&self) {
        if self.refused_certificate.load(Ordering::Relaxed) {
            self.refused_certificate.store(false, Ordering::Relaxed);
        }
    }

    /// The refusal `error`, a failed connection or request with its causes, stands for, if
    /// any: the TLS error among its causes, or a connection failing since a server refused
    /// the client's certificate.
    pub(crate) fn explain(&self, error: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
        let certificate_hint =
            if self.without_certificate && self.asked_for_certificate.load(Ordering::Relaxed) {
                "the server asks for a client certificate and none is set (--client-cert, \
             --client-key)"
            } else {
                CERTIFICATE_REFUSED
            };
        refusal_in(error, certificate_hint)
            .or_else(|| {
                self.refused_certificate
                    .load(Ordering::Relaxed)
                    .then_some(TlsRefusal {
                        kind: StoreErrorKind::Auth,
                        hint: certificate_hint,
                    })
            })
            .or_else(|| closed_in_handshake(error))
    }
}

/// The store error of a failed connection or request told by `text`: the refusal it stands
/// for, with what to do appended, or else a failure of kind `otherwise`.
pub(crate) fn failure(
    refusal: Option<TlsRefusal>,
    otherwise: StoreErrorKind,
    text: String,
) -> StoreError {
    match refusal {
        Some(refusal) => StoreError::new(refusal.kind, format!("{text}; {}", refusal.hint)),
        None => StoreError::new(otherwise, text),
    }
}

/// A connection the server closed before the TLS handshake was done, without an alert: what a
/// server speaking plain HTTP does with a TLS greeting. Still a connection failure, with the
/// likely slip named.
fn closed_in_handshake(error: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        let io = error.downcast_ref::<std::io::Error>();
        // Noted by a connector of reconfd's, or in tokio-rustls's words (common/mod.rs).
        let noted = io
            .and_then(std::io::Error::get_ref)
            .is_some_and(|inner| inner.is::<ClosedInHandshake>());
        let eof = io.is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
            && error.to_string() == "tls handshake eof";
        if noted || eof {
            return Some(TlsRefusal {
                kind: StoreErrorKind::Unreachable,
                hint: "the node closed the connection in the TLS handshake: a node that serves \
                       plain HTTP is given as http://",
            });
        }
        cause = error.source();
    }
    None
}

/// A connection closed or reset by the server before the TLS handshake was done, as a
/// connector that runs the handshake notes it: a server under load resets a connection where
/// another would close it.
#[derive(Debug)]
pub(crate) struct ClosedInHandshake(std::io::Error);

impl ClosedInHandshake {
    /// `error` of a TLS handshake, noted as a closed one when it is.
    pub(crate) fn note(error: std::io::Error) -> std::io::Error {
        match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => {
                std::io::Error::new(error.kind(), ClosedInHandshake(error))
            }
            _ => error,
        }
    }
}

impl std::fmt::Display for ClosedInHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in the TLS handshake", self.0)
    }
}

impl std::error::Error for ClosedInHandshake {}

/// What to do about a certificate alert, when it is not known whether a certificate was sent.
pub(crate) const CERTIFICATE_REFUSED: &str =
    "the server refused the client certificate or its absence (--client-cert, --client-key)";

/// The refusal the TLS error among `error`'s causes stands for, if there is one:
/// `certificate_hint` for a server's certificate alert.
pub(crate) fn refusal_in(
    error: &(dyn std::error::Error + 'static),
    certificate_hint: &'static str,
) -> Option<TlsRefusal> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        // An I/O error's `source` skips the error it wraps, which is where rustls's is.
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for error in [Some(error), wrapped].into_iter().flatten() {
            match error.downcast_ref::<rustls::Error>() {
                Some(rustls::Error::AlertReceived(alert)) if certificate_alert(*alert) => {
                    return Some(TlsRefusal {
                        kind: StoreErrorKind::Auth,
                        hint: certificate_hint,
                    });
                }
                Some(rustls::Error::InvalidCertificate(_)) => {
                    return Some(TlsRefusal {
                        kind: StoreErrorKind::Invalid,
                        hint: "the node's certificate is not one the settings trust: check \
                               --client-ca-keys and the host name in --node",
                    });
                }
                _ => {}
            }
        }
        cause = error.source();
    }
    None
}

/// A connection whose read and write failures are noted in its store's [`Refusals`].
pub(crate) struct Noted<S> {
    inner: S,
    refusals: Arc<Refusals>,
    /// The server has sent data on it.
    answered: bool,
}

impl<S> Noted<S> {
    /// `inner`, noting its failures in `refusals`.
    pub(crate) fn new(inner: S, refusals: Arc<Refusals>) -> Noted<S> {
        Noted {
            inner,
            refusals,
            answered: false,
        }
    }

    fn noted<T>(&self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if let Poll::Ready(Err(error)) = &polled {
            self.refusals.note(error);
            if !self.answered {
                self.refusals.closed_unanswered();
            }
        }
        polled
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Noted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let filled = buf.filled().len();
        let room = buf.remaining() > 0;
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) {
            if buf.filled().len() > filled {
                // Data from the server is an answer: it took the connection, so the
                // refusals seen before were mended (a certificate set, its settings changed).
                if !self.answered {
                    self.answered = true;
                    self.refusals.accepted();
                }
            } else if room && !self.answered {
                self.refusals.closed_unanswered();
            }
        }
        self.noted(polled)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Noted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.noted(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.noted(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.noted(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.noted(polled)
    }
}

/// True for the alerts a server sends when it does not accept the client's certificate.
fn certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::AccessDenied
            | AlertDescription::CertificateRequired
    )
}

/// A client-certificate resolver that notes that a server asked for a certificate, so that
/// its refusal can be explained, and answers as `resolver` does.
#[derive(Debug)]
struct Asked {
    resolver: Arc<dyn ResolvesClientCert>,
    refusals: Arc<Refusals>,
}

impl ResolvesClientCert for Asked {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.refusals
            .asked_for_certificate
            .store(true, Ordering::Relaxed);
        self.resolver.resolve(root_hint_subjects, sigschemes)
    }

    fn has_certs(&self) -> bool {
        self.resolver.has_certs()
    }
}

/// `path`'s contents; an error naming it.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The certificates of the PEM file `path` holds, at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certificates)
}

/// The CA certificates file `path`, every certificate in it a root.
fn read_ca(path: &Path) -> Result<CaFile, String> {
    let pem = read(path)?;
    let mut roots = RootCertStore::empty();
    for certificate in certificates(path, &pem)? {
        roots
            .add(certificate)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(CaFile {
        pem,
        roots: Arc::new(roots),
    })
}

/// The client certificate (with its chain) in `cert_path` and its key in `key_path`.
fn read_identity(cert_path: &Path, key_path: &Path) -> Result<Identity, String> {
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let chain = certificates(cert_path, &cert_pem)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    Ok(Identity {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        cert_pem,
        key_pem,
        chain,
        key,
    })
}

/// Accepts any server certificate (`--client-insecure`), still checking that the server holds
/// the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConnection, ServerConfig, ServerConnection};

    use super::*;
    use crate::store::test_certificates::make_certificates;

    /// A CA, and a server (`localhost`) and a client certificate it signed, in a temp dir.
    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn new() -> Files {
            let dir = tempfile::tempdir().expect("temp dir");
            make_certificates(dir.path());
            Files { dir }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Options naming the CA and the client certificate.
        fn options(&self) -> TlsOptions {
            TlsOptions {
                client_cert: Some(self.path("client.pem")),
                client_key: Some(self.path("client.key")),
                client_ca_keys: Some(self.path("ca.pem")),
                client_insecure: false,
            }
        }

        /// A server presenting the server certificate that wants a client certificate the
        /// CA signed.
        fn server(&self) -> ServerConfig {
            let read = |name: &str| std::fs::read(self.path(name)).expect("a test file");
            let chain = certificates(&self.path("server.pem"), &read("server.pem"))
                .expect("server certificate");
            let key = PrivateKeyDer::from_pem_slice(&read("server.key")).expect("server key");
            let ca = read_ca(&self.path("ca.pem")).expect("CA");
            let clients = WebPkiClientVerifier::builder_with_provider(ca.roots, provider())
                .build()
                .expect("client verifier");
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("protocol versions")
                .with_client_cert_verifier(clients)
                .with_single_cert(chain, key)
                .expect("server config")
        }
    }

    /// Runs a TLS handshake between `client` and `server` in memory.
    fn handshake(client: ClientConfig, server: ServerConfig) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("localhost").expect("a server name");
        let mut client = ClientConnection::new(Arc::new(client), name)?;
        let mut server = ServerConnection::new(Arc::new(server))?;
        let io = |e: std::io::Error| rustls::Error::General(e.to_string());
        while client.is_handshaking() || server.is_handshaking() {
            let mut flight = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut flight).map_err(io)?;
            }
            let mut unread = flight.as_slice();
            while !unread.is_empty() {
                server.read_tls(&mut unread).map_err(io)?;
                server.process_new_packets()?;
            }
            let mut flight = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut flight).map_err(io)?;
            }
            if flight.is_empty() && client.is_handshaking() && server.is_handshaking() {
                return Err(rustls::Error::General("the handshake stalled".to_string()));
            }
            let mut unread = flight.as_slice();
            while !unread.is_empty() {
                client.read_tls(&mut unread).map_err(io)?;
                client.process_new_packets()?;
            }
        }
        Ok(())
    }

    #[test]
    fn the_ca_verifies_the_server_and_the_client_certificate_is_presented() {
        let files = Files::new();
        let tls = Tls::read("etcd", &files.options()).expect("valid files");
        let config = tls.client_config("etcd", false).expect("a client config");
        handshake(config, files.server()).expect("a handshake");
        assert_eq!(
            tls.ca_pem(),
            Some(std::fs::read(files.path("ca.pem")).expect("CA").as_slice())
        );
        assert!(tls.identity_pem().is_some());
        assert!(!tls.insecure());

        // Without the client certificate the server refuses the client.
        let mut anonymous = files.options();
        anonymous.client_cert = None;
        anonymous.client_key = None;
        let config = Tls::read("etcd", &anonymous)
            .and_then(|tls| tls.client_config("etcd", false))
            .expect("a client config");
        assert!(handshake(config, files.server()).is_err());
    }

    #[test]
    fn a_refused_certificate_explains_the_connection_failures_until_a_server_answers() {
        let files = Files::new();
        let mut anonymous = files.options();
        anonymous.client_cert = None;
        anonymous.client_key = None;
        let tls = Tls::read("etcd", &anonymous).expect("valid files");
        let refusals = tls.refusals();
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        // Before any server asked for a certificate, a reset is a connection lost.
        assert_eq!(refusals.explain(&reset), None);
        let config = tls.client_config("etcd", false).expect("a client config");
        assert!(handshake(config, files.server()).is_err());
        // The server asked and got none: its closing the connection is that refusal.
        refusals.closed_unanswered();
        let refusal = refusals.explain(&reset).expect("a refusal");
        assert_eq!(refusal.kind, StoreErrorKind::Auth);
        assert_eq!(
            refusal.hint,
            "the server asks for a client certificate and none is set (--client-cert, \
             --client-key)"
        );
        refusals.accepted();
        assert_eq!(refusals.explain(&reset), None);

        // The alert itself, wrapped as the connection's reader reports it, is read as such
        // whatever came before.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        refusals.note(&alert);
        assert_eq!(
            refusals.explain(&reset).map(|refusal| refusal.kind),
            Some(StoreErrorKind::Auth)
        );
        let refusal = refusal_in(&alert, CERTIFICATE_REFUSED).expect("a refusal");
        assert_eq!(refusal.kind, StoreErrorKind::Auth);
        let untrusted = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let refusal = refusal_in(&untrusted, CERTIFICATE_REFUSED).expect("a refusal");
        assert_eq!(refusal.kind, StoreErrorKind::Invalid);
        assert_eq!(refusal_in(&reset, CERTIFICATE_REFUSED), None);
    }

    #[test]
    fn without_a_ca_only_the_insecure_setting_accepts_an_unknown_server() {
        let files = Files::new();
        let mut options = files.options();
        options.client_ca_keys = None;
        let config = Tls::read("nats", &options)
            .and_then(|tls| tls.client_config("nats", false))
            .expect("a client config");
        assert!(matches!(
            handshake(config, files.server()),
            Err(rustls::Error::InvalidCertificate(_))
        ));
        options.client_insecure = true;
        let tls = Tls::read("nats", &options).expect("valid files");
        assert!(tls.insecure());
        let config = tls.client_config("nats", false).expect("a client config");
        handshake(config, files.server()).expect("a handshake");
    }

    #[test]
    fn errors_name_the_file_at_fault() {
        let files = Files::new();
        let error = |options: TlsOptions| match Tls::read("redis", &options) {
            Ok(_) => panic!("accepted {options:?}"),
            Err(error) => {
                assert_eq!(error.kind(), crate::store::StoreErrorKind::Invalid);
                error.to_string()
            }
        };
        let mut missing = files.options();
        missing.client_ca_keys = Some(files.path("nonexistent.pem"));
        let message = error(missing);
        assert!(message.starts_with("redis: "), "{message}");
        assert!(message.contains("nonexistent.pem"), "{message}");

        let mut not_certificates = files.options();
        not_certificates.client_ca_keys = Some(files.path("client.key"));
        let message = error(not_certificates);
        assert!(
            message.contains("client.key: no PEM certificate"),
            "{message}"
        );

        let mut not_a_key = files.options();
        not_a_key.client_key = Some(files.path("ca.pem"));
        assert!(error(not_a_key).contains("ca.pem"));

        let mut half = files.options();
        half.client_key = None;
        assert!(error(half).contains("--client-cert and --client-key go together"));

        let mut wrong_key = files.options();
        wrong_key.client_key = Some(files.path("server.key"));
        let message = Tls::read("redis", &wrong_key)
            .and_then(|tls| tls.client_config("redis", false))
            .err()
            .map(|error| error.to_string())
            .expect("a key of another certificate is refused");
        assert!(
            message.contains("client.pem") && message.contains("server.key"),
            "{message}"
        );
    }
}
