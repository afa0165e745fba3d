//! The client against real etcd servers (Debian's `etcd-server`, 3.4) on free loopback ports
//! in temp dirs, stopped when dropped; with TLS, authentication and etcd's gRPC proxy.

use std::collections::BTreeSet;
use std::net::TcpListener;

use std::process::{Child, Command, Stdio};

use super::*;
use crate::store::etcd::proto::etcdserverpb::auth_client::AuthClient;
use crate::store::etcd::proto::etcdserverpb::request_op::Request as Operation;
use crate::store::etcd::proto::etcdserverpb::{
    AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserGrantRoleRequest, AuthenticateRequest,
    CompactionRequest, DeleteRangeRequest, PutRequest, RequestOp, TxnRequest,
};
use crate::store::etcd::proto::{authpb, mvccpb};
use crate::store::test_certificates::{Certificates, make_certificates};
use crate::store::tls::{Tls, TlsOptions};

/// Longest wait for a server to come up: generous, as a loaded machine starts etcd slowly.
const STARTUP: Duration = Duration::from_secs(30);

/// The store's TLS configuration for `options` (none: plain TCP only).
fn tls_config(options: Option<TlsOptions>) -> Arc<rustls::ClientConfig> {
    let options = options.unwrap_or_default();
    let config = Tls::read("etcd", &options)
        .and_then(|tls| tls.client_config("etcd", false))
        .expect("TLS config");
    Arc::new(config)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A single-member etcd, or etcd's gRPC proxy in front of one.
struct Server {
    dir: tempfile::TempDir,
    port: u16,
    peer_port: u16,
    process: Option<Child>,
    certificates: Option<Certificates>,
}

impl Server {
    /// A running etcd.
    async fn etcd() -> Server {
        Server::launch_etcd(false).await
    }

    /// A running etcd that serves TLS only and requires a client certificate.
    async fn etcd_with_tls() -> Server {
        Server::launch_etcd(true).await
    }

    async fn launch_etcd(tls: bool) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let certificates = tls.then(|| make_certificates(dir.path()));
        let mut server = Server {
            dir,
            port: free_port(),
            peer_port: free_port(),
            process: None,
            certificates,
        };
        server.spawn_etcd();
        server.wait_ready().await;
        server
    }

    fn spawn_etcd(&mut self) {
        let client_url = self.url();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new("etcd");
        if let Some(certificates) = &self.certificates {
            command
                .arg("--cert-file")
                .arg(&certificates.server_cert)
                .arg("--key-file")
                .arg(&certificates.server_key)
                .arg("--trusted-ca-file")
                .arg(&certificates.ca)
                .arg("--client-cert-auth");
        }
        command
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--name", "test"])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            // Tests and measurements write thousands of keys in one transaction.
            .args(["--max-txn-ops", "20000", "--max-request-bytes", "10485760"]);
        self.spawn(command, "etcd.log");
    }

    /// etcd's gRPC proxy in front of `etcd`, running.
    async fn grpc_proxy(etcd: &Server) -> Server {
        let mut proxy = Server {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            peer_port: 0,
            process: None,
            certificates: None,
        };
        let mut command = Command::new("etcd");
        command
            .args(["grpc-proxy", "start"])
            .arg(format!("--endpoints=127.0.0.1:{}", etcd.port))
            .arg(format!("--listen-addr=127.0.0.1:{}", proxy.port))
            .arg("--data-dir")
            .arg(proxy.dir.path().join("data"));
        proxy.spawn(command, "proxy.log");
        proxy.wait_ready().await;
        proxy
    }

    fn spawn(&mut self, mut command: Command, log: &str) {
        let log = std::fs::File::create(self.dir.path().join(log)).expect("log file");
        let process = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd (installed by scripts/test.sh)");
        self.process = Some(process);
    }

    /// Waits until the server answers a range: the member has a leader, or the proxy reaches
    /// its member.
    async fn wait_ready(&self) {
        let options = ConnectOptions {
            credentials: None,
            ..self.options()
        };
        let deadline = tokio::time::Instant::now() + STARTUP;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match NodeClient::connect(&self.url(), &options).await {
                Ok(client) => match client.count(&KeyRange::prefix(b""), 0).await {
                    Ok(_) => return,
                    // With authentication on, a refusal is an answer too.
                    Err(RpcError::Store(error)) if error.kind() != StoreErrorKind::Unreachable => {
                        return;
                    }
                    Err(error) => last = error.to_string(),
                },
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not come up: {last}\n{}", self.url(), self.logs());
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    fn url(&self) -> String {
        let scheme = if self.certificates.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn options(&self) -> ConnectOptions {
        let tls = tls_config(self.certificates.as_ref().map(|certificates| TlsOptions {
            client_ca_keys: Some(certificates.ca.clone()),
            client_cert: Some(certificates.client_cert.clone()),
            client_key: Some(certificates.client_key.clone()),
            client_insecure: false,
        }));
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(20),
            tls,
            refusals: Arc::default(),
            credentials: None,
        }
    }

    async fn client(&self) -> NodeClient {
        NodeClient::connect(&self.url(), &self.options())
            .await
            .expect("connect")
    }

    async fn client_as(&self, user: &str, password: &str) -> NodeClient {
        let options = ConnectOptions {
            credentials: Some(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            ..self.options()
        };
        NodeClient::connect(&self.url(), &options)
            .await
            .expect("connect")
    }

    /// A writer over a connection of its own.
    async fn writer(&self) -> Writer {
        Writer {
            kv: KvClient::new(self.client().await.channel),
        }
    }

    fn logs(&self) -> String {
        ["etcd.log", "proxy.log"]
            .iter()
            .filter_map(|log| std::fs::read_to_string(self.dir.path().join(log)).ok())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes test data with the generated client, without authentication.
struct Writer {
    kv: KvClient<Channel>,
}

impl Writer {
    /// Sets `key` to `value`; returns the new revision.
    async fn put(&mut self, key: &str, value: &str) -> i64 {
        let answer = self
            .kv
            .put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..PutRequest::default()
            })
            .await
            .expect("put")
            .into_inner();
        answer.header.expect("a header").revision
    }

    /// Puts `pairs` and deletes `deleted` in one transaction; returns its revision.
    async fn transaction(&mut self, pairs: &[(String, String)], deleted: &[&str]) -> i64 {
        let puts = pairs.iter().map(|(key, value)| {
            Operation::RequestPut(PutRequest {
                key: key.clone().into(),
                value: value.clone().into(),
                ..PutRequest::default()
            })
        });
        let deletes = deleted.iter().map(|key| {
            Operation::RequestDeleteRange(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..DeleteRangeRequest::default()
            })
        });
        let success = puts
            .chain(deletes)
            .map(|request| RequestOp {
                request: Some(request),
            })
            .collect();
        let answer = self
            .kv
            .txn(TxnRequest {
                success,
                ..TxnRequest::default()
            })
            .await
            .expect("txn")
            .into_inner();
        answer.header.expect("a header").revision
    }

    async fn delete(&mut self, key: &str) {
        self.kv
            .delete_range(DeleteRangeRequest {
                key: key.into(),
                ..DeleteRangeRequest::default()
            })
            .await
            .expect("delete");
    }

    async fn compact(&mut self, revision: i64) {
        self.kv
            .compact(CompactionRequest {
                revision,
                physical: true,
            })
            .await
            .expect("compact");
    }
}

/// `count` keys `{prefix}{n:05}` with values like `10.0.0.N:8080`.
fn numbered(prefix: &str, count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|n| {
            (
                format!("{prefix}{n:05}"),
                format!("10.0.{}.{}:8080", n / 256, n % 256),
            )
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The keys and values of `kvs`, asserting that no key comes twice.
fn key_values(kvs: &[mvccpb::KeyValue]) -> Vec<(String, String)> {
    let pairs: Vec<(String, String)> = kvs
        .iter()
        .map(|kv| (text(&kv.key), text(&kv.value)))
        .collect();
    let distinct: BTreeSet<&String> = pairs.iter().map(|(key, _)| key).collect();
    assert_eq!(distinct.len(), pairs.len(), "a key came twice");
    pairs
}

/// The next watch message, with a bound so that a missing message fails instead of hanging.
async fn next_message(watcher: &mut Watcher) -> WatchMessage {
    tokio::time::timeout(STARTUP, watcher.next())
        .await
        .expect("a watch message")
        .expect("no watch error")
        .expect("the watch stream goes on")
}

#[test]
fn prefix_ranges_cover_exactly_the_prefix() {
    let range = |key: &[u8], range_end: &[u8]| KeyRange {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
    };
    assert_eq!(KeyRange::prefix(b"/app"), range(b"/app", b"/apq"));
    assert_eq!(KeyRange::prefix(b"/"), range(b"/", b"0"));
    assert_eq!(KeyRange::prefix(b"/a\xff"), range(b"/a\xff", b"/b"));
    assert_eq!(KeyRange::prefix(b"\xff\xff"), range(b"\xff\xff", b"\0"));
    assert_eq!(KeyRange::prefix(b""), range(b"\0", b"\0"));
}

#[test]
fn statuses_map_to_kinds() {
    let kind = |code: Code| status_kind(&Status::new(code, "x"));
    for code in [
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Unknown,
        Code::Cancelled,
    ] {
        assert_eq!(kind(code), StoreErrorKind::Unreachable, "{code:?}");
    }
    for code in [Code::Unauthenticated, Code::PermissionDenied] {
        assert_eq!(kind(code), StoreErrorKind::Auth, "{code:?}");
    }
    for code in [
        Code::InvalidArgument,
        Code::OutOfRange,
        Code::FailedPrecondition,
        Code::Unimplemented,
    ] {
        assert_eq!(kind(code), StoreErrorKind::Rejected, "{code:?}");
    }
    for refused in [
        Status::unauthenticated("etcdserver: invalid auth token"),
        Status::invalid_argument("etcdserver: revision of auth store is old"),
        Status::invalid_argument("etcdserver: user name is empty"),
    ] {
        assert!(token_refused(&refused), "{refused:?}");
    }
    assert!(!token_refused(&Status::permission_denied(
        "etcdserver: permission denied"
    )));
    for credentials in [
        Status::invalid_argument("etcdserver: user name is empty"),
        Status::invalid_argument("etcdserver: authentication failed, invalid user ID or password"),
        Status::failed_precondition("etcdserver: authentication is not enabled"),
    ] {
        assert_eq!(
            status_kind(&credentials),
            StoreErrorKind::Auth,
            "{credentials:?}"
        );
    }
    assert!(is_compacted(&Status::out_of_range(
        "etcdserver: mvcc: required revision has been compacted"
    )));
    assert!(!is_compacted(&Status::out_of_range(
        "etcdserver: mvcc: required revision is a future revision"
    )));
    // As etcd's gRPC proxy passes it on.
    assert!(is_compacted(&Status::unknown(
        "etcdserver: mvcc: required revision has been compacted"
    )));
}

#[tokio::test]
async fn pages_are_read_at_the_first_pages_revision_while_keys_change_between_them() {
    let etcd = Server::etcd().await;
    let mut writer = etcd.writer().await;
    let keys = numbered("/page/", 1000);
    let loaded = writer.transaction(&keys, &[]).await;
    let client = etcd.client().await;

    let mut pages = client.range_pages(&KeyRange::prefix(b"/page/"), 0, 100);
    let mut read = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next().await.expect("a page") {
        assert!(page.len() <= 100);
        read.extend(page);
        page_count += 1;
        // Between pages: keys before and after the cursor, changes and deletions ahead.
        let n = page_count * 100;
        writer.put(&format!("/page/{n:05}a"), "new").await;
        writer.put("/page/", "new").await;
        writer.put("/page/99999", "new").await;
        writer.put(&format!("/page/{:05}", n + 50), "changed").await;
        writer.delete(&format!("/page/{:05}", n + 60)).await;
    }
    assert_eq!(page_count, 10);
    assert_eq!(pages.revision(), loaded);
    assert_eq!(key_values(&read), keys);
    assert!(read.iter().all(|kv| kv.mod_revision == loaded));
}

#[tokio::test]
async fn a_paged_read_under_concurrent_writes_equals_one_read_at_its_revision() {
    let etcd = Server::etcd().await;
    let mut writer = etcd.writer().await;
    writer.transaction(&numbered("/busy/", 2000), &[]).await;
    let client = etcd.client().await;
    let range = KeyRange::prefix(b"/busy/");

    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let writing = tokio::spawn(async move {
        let mut n = 0;
        while stopped.try_recv().is_err() {
            writer
                .put(&format!("/busy/{:05}", n * 7 % 2500), "moving")
                .await;
            n += 1;
        }
    });
    let paged = client.range(&range, 0, 50).await.expect("paged read");
    stop.send(()).expect("the writer runs");
    writing.await.expect("the writer ends");

    let at_once = client
        .range(&range, paged.revision, 0)
        .await
        .expect("read at the same revision");
    assert_eq!(key_values(&paged.kvs), key_values(&at_once.kvs));
    assert_eq!(at_once.revision, paged.revision);
    assert!(paged.kvs.iter().all(|kv| kv.mod_revision <= paged.revision));
}

#[tokio::test]
async fn counts_and_member_status_tell_the_revision() {
    let etcd = Server::etcd().await;
    let mut writer = etcd.writer().await;
    let loaded = writer.transaction(&numbered("/count/", 30), &[]).await;
    let changed = writer.put("/count/00001", "changed").await;
    let client = etcd.client().await;

    let now = client
        .count(&KeyRange::prefix(b"/count/"), 0)
        .await
        .expect("count");
    assert_eq!(
        now,
        RangeCount {
            count: 30,
            revision: changed
        }
    );
    let before = client
        .count(&KeyRange::prefix(b"/count/0000"), loaded - 1)
        .await
        .expect("count at an earlier revision");
    assert_eq!(
        before,
        RangeCount {
            count: 0,
            revision: loaded - 1
        }
    );

    let status = client.status().await.expect("status");
    assert_eq!(status.revision, changed);
    assert!(status.version.starts_with("3."), "{status:?}");
    assert_eq!(status.leader, status.member_id);
}

#[tokio::test]
async fn compacted_revisions_are_told_apart_in_reads_and_watches() {
    let etcd = Server::etcd().await;
    let mut writer = etcd.writer().await;
    let first = writer.put("/old/a", "1").await;
    let compacted = writer.put("/old/a", "2").await;
    writer.compact(compacted).await;
    let client = etcd.client().await;
    let range = KeyRange::prefix(b"/old/");

    assert!(matches!(
        client.range(&range, first, 0).await,
        Err(RpcError::Compacted)
    ));
    let error = StoreError::from(RpcError::Compacted);
    assert_eq!(error.kind(), StoreErrorKind::Unreachable);

    let mut watcher = client.watch(&range, first, false).await.expect("watch");
    match next_message(&mut watcher).await {
        WatchMessage::Compacted { compact_revision } => assert_eq!(compact_revision, compacted),
        other => panic!("expected the compaction, got {other:?}"),
    }
}

#[tokio::test]
async fn a_transaction_arrives_in_one_watch_message_at_one_revision() {
    let etcd = Server::etcd().await;
    let mut writer = etcd.writer().await;
    let before = writer.put("/watched/gone", "x").await;
    let client = etcd.client().await;
    let mut watcher = client
        .watch(&KeyRange::prefix(b"/watched/"), before + 1, true)
        .await
        .expect("watch");

    let keys = numbered("/watched/", 200);
    let committed = writer.transaction(&keys, &["/watched/gone"]).await;
    let WatchMessage::Events { revision, events } = next_message(&mut watcher).await else {
        panic!("expected the transaction's events");
    };
    assert_eq!(revision, committed);
    assert_eq!(events.len(), 201);
    assert!(events.iter().all(|event| {
        event
            .kv
            .as_ref()
            .is_some_and(|kv| kv.mod_revision == committed)
    }));
    let deleted: Vec<String> = events
        .iter()
        .filter(|event| event.r#type == mvccpb::event::EventType::Delete as i32)
        .filter_map(|event| event.kv.as_ref().map(|kv| text(&kv.key)))
        .collect();
    assert_eq!(deleted, ["/watched/gone"]);

    // A watcher from a past revision delivers the history first.
    let mut replay = client
        .watch(&KeyRange::prefix(b"/watched/"), before, false)
        .await
        .expect("watch from the past");
    let mut revisions = Vec::new();
    while revisions.last() != Some(&committed) {
        let WatchMessage::Events { events, .. } = next_message(&mut replay).await else {
            panic!("expected the history");
        };
        revisions.extend(
            events
                .iter()
                .filter_map(|event| event.kv.as_ref())
                .map(|kv| kv.mod_revision),
        );
        revisions.dedup();
    }
    assert_eq!(revisions, [before, committed]);
}

#[tokio::test]
async fn a_progress_request_is_answered_with_the_current_revision() {
    let etcd = Server::etcd().await;
    let mut writer = etcd.writer().await;
    let client = etcd.client().await;
    let mut watcher = client
        .watch(&KeyRange::prefix(b"/quiet/"), 0, true)
        .await
        .expect("watch");
    let elsewhere = writer.put("/elsewhere", "x").await;

    watcher.request_progress().await.expect("progress request");
    match next_message(&mut watcher).await {
        WatchMessage::Progress { revision } => assert_eq!(revision, elsewhere),
        other => panic!("expected progress, got {other:?}"),
    }
}

/// `message` with `root`'s token, for etcd's Auth service once authentication is on.
async fn as_root<T>(channel: &Channel, message: T) -> tonic::Request<T> {
    let token = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest {
            name: "root".into(),
            password: "pw".into(),
        })
        .await
        .expect("root's token")
        .into_inner()
        .token;
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(TOKEN_KEY, token.try_into().expect("an ASCII token"));
    request
}

/// Adds users `root` and `app`, both with the root role and password `pw`, and turns
/// authentication on.
async fn enable_auth(channel: &Channel) {
    let mut auth = AuthClient::new(channel.clone());
    for user in ["root", "app"] {
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: "pw".into(),
            ..AuthUserAddRequest::default()
        })
        .await
        .expect("add a user");
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: "root".into(),
        })
        .await
        .expect("grant the root role");
    }
    auth.auth_enable(AuthEnableRequest {})
        .await
        .expect("enable auth");
}

#[tokio::test]
async fn refused_tokens_are_renewed_for_reads_and_watches() {
    let etcd = Server::etcd().await;
    etcd.writer().await.put("/secret/a", "1").await;
    let channel = etcd.client().await.channel;
    enable_auth(&channel).await;
    // Setting a user's password drops the user's tokens: etcd then answers "invalid auth token".
    let drop_app_tokens = async || {
        let request = as_root(
            &channel,
            AuthUserChangePasswordRequest {
                name: "app".into(),
                password: "pw".into(),
            },
        )
        .await;
        AuthClient::new(channel.clone())
            .user_change_password(request)
            .await
            .expect("change the password");
    };

    let client = etcd.client_as("app", "pw").await;
    let range = KeyRange::prefix(b"/secret/");
    let read = async || client.range(&range, 0, 0).await.expect("read").kvs.len();
    assert_eq!(read().await, 1);
    let first_token = client.current_token().expect("a token");

    drop_app_tokens().await;
    let mut with_old_token = tonic::Request::new(RangeRequest {
        key: b"/secret/a".to_vec(),
        ..RangeRequest::default()
    });
    with_old_token
        .metadata_mut()
        .insert(TOKEN_KEY, first_token.clone());
    let refused = KvClient::new(channel.clone())
        .range(with_old_token)
        .await
        .expect_err("the dropped token is refused");
    assert!(token_refused(&refused), "{refused:?}");
    assert_eq!(read().await, 1);
    let second_token = client.current_token().expect("a token");
    assert_ne!(second_token, first_token);

    // A watcher is refused as "permission denied" with a dropped token.
    drop_app_tokens().await;
    let mut watcher = client.watch(&range, 0, false).await.expect("watch");
    assert_ne!(client.current_token().expect("a token"), second_token);
    watcher.request_progress().await.expect("progress request");
    assert!(matches!(
        next_message(&mut watcher).await,
        WatchMessage::Progress { .. }
    ));
}

#[tokio::test]
async fn wrong_passwords_and_missing_permissions_are_auth_failures() {
    let etcd = Server::etcd().await;
    let mut auth = AuthClient::new(etcd.client().await.channel);
    for (user, role) in [("root", "root"), ("reader", "reader")] {
        auth.user_add(AuthUserAddRequest {
            name: user.into(),
            password: "pw".into(),
            ..AuthUserAddRequest::default()
        })
        .await
        .expect("add user");
        if role != "root" {
            auth.role_add(AuthRoleAddRequest { name: role.into() })
                .await
                .expect("add role");
            auth.role_grant_permission(AuthRoleGrantPermissionRequest {
                name: role.into(),
                perm: Some(authpb::Permission {
                    perm_type: authpb::permission::Type::Read as i32,
                    key: b"/allowed/".to_vec(),
                    range_end: b"/allowed0".to_vec(),
                }),
            })
            .await
            .expect("grant read");
        }
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await
        .expect("grant role");
    }
    auth.auth_enable(AuthEnableRequest {})
        .await
        .expect("enable auth");

    let wrong = etcd.client_as("reader", "wrong").await;
    let error = StoreError::from(
        wrong
            .range(&KeyRange::prefix(b"/allowed/"), 0, 0)
            .await
            .unwrap_err(),
    );
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
    assert!(
        error.to_string().contains("refused user `reader`"),
        "{error}"
    );

    let reader = etcd.client_as("reader", "pw").await;
    reader
        .range(&KeyRange::prefix(b"/allowed/"), 0, 0)
        .await
        .expect("a permitted read");
    let error = StoreError::from(
        reader
            .range(&KeyRange::prefix(b"/other/"), 0, 0)
            .await
            .unwrap_err(),
    );
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
    let Err(error) = reader.watch(&KeyRange::prefix(b"/other/"), 0, false).await else {
        panic!("a watch without permission");
    };
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");

    let anonymous = etcd.client().await;
    let error = StoreError::from(
        anonymous
            .range(&KeyRange::prefix(b"/allowed/"), 0, 0)
            .await
            .unwrap_err(),
    );
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    let etcd = Server::etcd_with_tls().await;
    let client = etcd.client().await;
    let mut watcher = client
        .watch(&KeyRange::prefix(b"/tls/"), 0, false)
        .await
        .expect("watch");
    let revision = etcd.writer().await.put("/tls/a", "1").await;
    let read = client
        .range(&KeyRange::prefix(b"/tls/"), 0, 0)
        .await
        .expect("read");
    assert_eq!(
        key_values(&read.kvs),
        [("/tls/a".to_string(), "1".to_string())]
    );
    assert!(matches!(
        next_message(&mut watcher).await,
        WatchMessage::Events { revision: r, .. } if r == revision
    ));

    // Without a client certificate the server refuses the connection: a refusal of the
    // credentials, whether the request meets the server's alert or only the connection
    // closing after it.
    let certificates = etcd.certificates.as_ref().expect("TLS");
    let tls = Tls::read(
        "etcd",
        &TlsOptions {
            client_ca_keys: Some(certificates.ca.clone()),
            ..TlsOptions::default()
        },
    )
    .expect("TLS files");
    let without_client_certificate = ConnectOptions {
        tls: Arc::new(tls.client_config("etcd", false).expect("TLS config")),
        refusals: tls.refusals(),
        ..etcd.options()
    };
    let refused = match NodeClient::connect(&etcd.url(), &without_client_certificate).await {
        Err(error) => error,
        Ok(client) => client.status().await.expect_err("no client certificate"),
    };
    assert_eq!(refused.kind(), StoreErrorKind::Auth, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("the server asks for a client certificate and none is set"),
        "{refused}"
    );
}

#[tokio::test]
async fn nodes_that_are_down_are_unreachable_and_come_back() {
    let mut etcd = Server::etcd().await;
    let client = etcd.client().await;
    etcd.kill();
    let error = client.status().await.expect_err("etcd is down");
    assert_eq!(error.kind(), StoreErrorKind::Unreachable, "{error}");
    let error = NodeClient::connect(&etcd.url(), &etcd.options())
        .await
        .err()
        .expect("nothing listens");
    assert_eq!(error.kind(), StoreErrorKind::Unreachable, "{error}");

    etcd.spawn_etcd();
    etcd.wait_ready().await;
    client
        .status()
        .await
        .expect("the same client, connected again");

    let error = NodeClient::connect("etcd:2379", &etcd.options())
        .await
        .err()
        .expect("no scheme");
    assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}");
}

#[tokio::test]
async fn ranges_and_watches_work_through_the_grpc_proxy() {
    let etcd = Server::etcd().await;
    let proxy = Server::grpc_proxy(&etcd).await;
    let mut writer = etcd.writer().await;
    let keys = numbered("/proxied/", 500);
    let loaded = writer.transaction(&keys, &[]).await;
    let client = proxy.client().await;
    let range = KeyRange::prefix(b"/proxied/");

    let read = client.range(&range, 0, 100).await.expect("paged read");
    assert_eq!(read.revision, loaded);
    assert_eq!(key_values(&read.kvs), keys);
    assert_eq!(client.count(&range, 0).await.expect("count").count, 500);

    assert_eq!(client.status().await.expect("status").revision, loaded);

    let mut watcher = client.watch(&range, loaded + 1, true).await.expect("watch");
    // etcd 3.4's proxy leaves progress requests unanswered (and goes on serving): the next
    // message is the transaction's.
    watcher.request_progress().await.expect("progress request");
    let committed = writer
        .transaction(&numbered("/proxied/x", 20), &["/proxied/00000"])
        .await;
    let WatchMessage::Events { revision, events } = next_message(&mut watcher).await else {
        panic!("expected the transaction's events");
    };
    assert_eq!((revision, events.len()), (committed, 21));
}

/// etcd's CPU time so far, from its `process_cpu_seconds_total`.
async fn etcd_cpu_seconds(http: &reqwest::Client, etcd: &Server) -> f64 {
    let metrics = http
        .get(format!("{}/metrics", etcd.url()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("process_cpu_seconds_total "))
        .and_then(|value| value.trim().parse().ok())
        .expect("process_cpu_seconds_total")
}

/// Reads `range` through etcd's HTTP/JSON gateway as the store did before it spoke gRPC: pages of
/// `page_size` keys (0: one page) at the first page's revision, JSON parsed and keys and values
/// decoded from base64. Returns the keys read and the bytes of JSON received.
async fn gateway_range(
    http: &reqwest::Client,
    etcd: &Server,
    range: &KeyRange,
    page_size: i64,
) -> (usize, usize) {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;

    let mut key = range.key.clone();
    let mut revision = 0_i64;
    let (mut keys, mut bytes) = (0, 0);
    loop {
        let mut body = serde_json::json!({
            "key": BASE64.encode(&key),
            "range_end": BASE64.encode(&range.range_end),
            "limit": page_size.to_string(),
        });
        if revision > 0 {
            body["revision"] = serde_json::json!(revision.to_string());
        }
        let answer = http
            .post(format!("{}/v3/kv/range", etcd.url()))
            .body(body.to_string())
            .send()
            .await
            .expect("gateway range")
            .bytes()
            .await
            .expect("gateway answer");
        bytes += answer.len();
        let answer: serde_json::Value = serde_json::from_slice(&answer).expect("JSON");
        if revision == 0 {
            revision = answer["header"]["revision"]
                .as_str()
                .and_then(|text| text.parse().ok())
                .expect("a revision");
        }
        let kvs = answer["kvs"].as_array().cloned().unwrap_or_default();
        let mut last = Vec::new();
        for kv in &kvs {
            last = BASE64
                .decode(kv["key"].as_str().expect("a key"))
                .expect("base64");
            let value = BASE64
                .decode(kv["value"].as_str().unwrap_or_default())
                .expect("base64");
            std::hint::black_box(value);
            keys += 1;
        }
        if answer["more"].as_bool() != Some(true) || kvs.is_empty() {
            return (keys, bytes);
        }
        last.push(0);
        key = last;
    }
}

/// Not a test: times reading 10,000 keys over gRPC and over the HTTP/JSON gateway, with etcd's
/// CPU per read. Run by hand, in release mode:
/// `cargo test --release --lib measure_range -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn measure_range_over_grpc_and_the_json_gateway() {
    const KEYS: usize = 10_000;
    const READS: usize = 30;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    let etcd = Server::etcd().await;
    etcd.writer()
        .await
        .transaction(&numbered("/proxy/frontend/web", KEYS), &[])
        .await;
    let client = etcd.client().await;
    let range = KeyRange::prefix(b"/proxy/frontend/");
    let grpc_bytes = {
        let read = client.range(&range, 0, 0).await.expect("read");
        prost::Message::encoded_len(&RangeResponse {
            kvs: read.kvs,
            ..RangeResponse::default()
        })
    };

    println!("| API | page size | time p50 | time min | etcd CPU per read | bytes received |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for page_size in [1000, 5000, 0] {
        for api in ["gRPC", "JSON gateway"] {
            let mut times = Vec::new();
            let mut bytes = grpc_bytes;
            // One read to warm up, not counted.
            let mut cpu_before = 0.0;
            for read in 0..=READS {
                if read == 1 {
                    cpu_before = etcd_cpu_seconds(&http, &etcd).await;
                }
                let started = std::time::Instant::now();
                let keys = if api == "gRPC" {
                    client
                        .range(&range, 0, page_size)
                        .await
                        .expect("read")
                        .kvs
                        .len()
                } else {
                    let (keys, received) = gateway_range(&http, &etcd, &range, page_size).await;
                    bytes = received;
                    keys
                };
                assert_eq!(keys, KEYS);
                if read > 0 {
                    times.push(started.elapsed());
                }
            }
            let cpu = (etcd_cpu_seconds(&http, &etcd).await - cpu_before) / READS as f64;
            times.sort();
            let page = if page_size == 0 {
                "all".to_string()
            } else {
                page_size.to_string()
            };
            println!(
                "| {api} | {page} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} KiB |",
                times[READS / 2].as_secs_f64() * 1000.0,
                times[0].as_secs_f64() * 1000.0,
                cpu * 1000.0,
                bytes as f64 / 1024.0,
            );
        }
    }
}
