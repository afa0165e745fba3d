//! TLS for the network stores: the `--client-*` settings, the files they name, and one rustls
//! client configuration built from them.
//!
//! The files are read and parsed when the store is set up, so that a missing or broken file is
//! a settings error naming it rather than a failure at every connection. Every client that
//! takes a rustls configuration gets the same one (reqwest for Consul and Vault, etcd's gRPC
//! channels, async-nats); Redis's client, which builds its own, gets the
//! files' PEM.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::StoreError;

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
            ca,
            identity,
            insecure: options.client_insecure,
        })
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
        match &self.identity {
            Some(identity) => builder
                .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
                .map_err(|e| {
                    invalid(format!(
                        "{} / {}: {e}",
                        identity.cert_path.display(),
                        identity.key_path.display()
                    ))
                }),
            None => Ok(builder.with_no_client_auth()),
        }
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
