//! A thin typed client for etcd's gRPC API on one node: ranges read in pages at one revision,
//! counts, one watcher per watch stream, and authentication by user and password with a token
//! that is renewed when etcd stops accepting it. Whole-range reads, progress requests and the
//! member's status serve the tests, which pin down etcd's behaviour with them.
//!
//! Every failure is a [`StoreError`] of the kind that paces the daemon's retries; a read at a
//! compacted revision is told apart ([`RpcError::Compacted`]) so that a reader can start over at
//! the current one. Nothing here fails over: that is the store's policy, across node clients.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::proto::etcdserverpb::auth_client::AuthClient;
use super::proto::etcdserverpb::kv_client::KvClient;
use super::proto::etcdserverpb::lease_client::LeaseClient;
use super::proto::etcdserverpb::watch_client::WatchClient;
use super::proto::etcdserverpb::watch_request::RequestUnion;
use super::proto::etcdserverpb::{
    AuthenticateRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, RangeResponse, WatchCreateRequest, WatchRequest, WatchResponse,
};
use super::proto::mvccpb;
use crate::store::http::error_chain;
use crate::store::nodes::redact;
use crate::store::tls::{self, ClosedInHandshake, Noted, Refusals};
use crate::store::{StoreError, StoreErrorKind};

/// etcd's own client accepts answers of up to 2 GiB (`math.MaxInt32`); tonic's default of 4 MiB
/// would fail a read of a large range in one page.
const MAX_ANSWER_BYTES: usize = i32::MAX as usize;

/// An HTTP/2 ping this long after the last one on a connection with a watch open, so that a
/// node that vanished without closing the connection is noticed. etcd refuses pings more
/// often than every 5 s (`--grpc-keepalive-min-time`), and pings on a connection without open
/// streams, so idle connections are not pinged.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is declared dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata key etcd reads the authentication token from.
const TOKEN_KEY: &str = "token";

/// With this metadata, a member cut off from its cluster's leader refuses the request (and
/// ends a watch) instead of serving what it last knew.
const REQUIRE_LEADER_KEY: &str = "hasleader";

/// etcd's message for a lease it does not have (`rpctypes.ErrLeaseNotFound`).
const LEASE_NOT_FOUND: &str = "requested lease not found";

/// How to reach a node and for how long to wait.
#[derive(Clone)]
pub(crate) struct ConnectOptions {
    /// Limit for the TCP connection and TLS handshake.
    pub(crate) connect_timeout: Duration,
    /// Limit for one unary call, authentication included, and for a watcher to be created.
    pub(crate) request_timeout: Duration,
    /// TLS for `https` nodes: the configuration [`Tls`](crate::store::tls::Tls) builds from the
    /// `--client-*` settings.
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// What the connections made with `tls` have seen of servers refusing them.
    pub(crate) refusals: Arc<Refusals>,
    /// User and password for etcd's authentication.
    pub(crate) credentials: Option<Credentials>,
}

/// A user and password for etcd's authentication.
#[derive(Clone)]
pub(crate) struct Credentials {
    /// The user name.
    pub(crate) user: String,
    /// The user's password.
    pub(crate) password: String,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RpcError {
    /// The revision read at was compacted away; a read at the current revision works.
    #[error("etcd: the revision was compacted")]
    Compacted,
    /// Any other failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RpcError> for StoreError {
    /// A compaction during a read is worth another read soon.
    fn from(error: RpcError) -> StoreError {
        match error {
            RpcError::Compacted => StoreError::unreachable(error.to_string()),
            RpcError::Store(error) => error,
        }
    }
}

/// The keys `[key, range_end)` in etcd's terms: an empty `range_end` is the single key `key`,
/// and `range_end` `\0` is every key from `key` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyRange {
    /// The first key.
    pub(crate) key: Vec<u8>,
    /// The first key after the range.
    pub(crate) range_end: Vec<u8>,
}

impl KeyRange {
    /// Every key that starts with `prefix`, as etcd's clients compute it: the prefix with its
    /// last byte below 0xff incremented; the empty prefix is every key.
    pub(crate) fn prefix(prefix: &[u8]) -> KeyRange {
        if prefix.is_empty() {
            return KeyRange {
                key: vec![0],
                range_end: vec![0],
            };
        }
        let mut range_end = prefix.to_vec();
        while let Some(last) = range_end.pop() {
            if last < 0xff {
                range_end.push(last + 1);
                return KeyRange {
                    key: prefix.to_vec(),
                    range_end,
                };
            }
        }
        KeyRange {
            key: prefix.to_vec(),
            range_end: vec![0],
        }
    }
}

/// Keys read at one revision.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct RangeRead {
    /// The keys with their values and revisions, in key order.
    pub(crate) kvs: Vec<mvccpb::KeyValue>,
    /// The store revision they were read at.
    pub(crate) revision: i64,
}

/// The number of keys in a range at one revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RangeCount {
    /// The number of keys.
    pub(crate) count: i64,
    /// The store revision they were counted at.
    pub(crate) revision: i64,
}

/// What a member says of itself.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberStatus {
    /// The store's revision on this member.
    pub(crate) revision: i64,
    /// The member's etcd version, such as `3.4.23`.
    pub(crate) version: String,
    /// The member's ID.
    pub(crate) member_id: u64,
    /// The ID of the member it takes for the leader; 0 when it knows of none.
    pub(crate) leader: u64,
}

/// A client of one etcd node (a member or a gRPC proxy). Its calls, concurrent ones too, go
/// over one HTTP/2 connection, which is made again when it breaks.
pub(crate) struct NodeClient {
    node: String,
    channel: Channel,
    request_timeout: Duration,
    credentials: Option<Credentials>,
    /// The current authentication token; cleared when etcd stops accepting it.
    token: Mutex<Option<AsciiMetadataValue>>,
    refusals: Arc<Refusals>,
}

impl NodeClient {
    /// Connects to `node`, an `http://` or `https://` URL. Fails with an invalid error for a
    /// URL or TLS setting that cannot work, and as unreachable when no connection can be made.
    pub(crate) async fn connect(
        node: &str,
        options: &ConnectOptions,
    ) -> Result<NodeClient, StoreError> {
        let invalid =
            |message: String| StoreError::invalid(format!("etcd: {}: {message}", redact(node)));
        let endpoint = Endpoint::from_shared(node.to_string())
            .map_err(|e| invalid(error_chain(&e)))?
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(false);
        let connected = match endpoint.uri().scheme_str() {
            Some("http") => endpoint.connect().await,
            Some("https") => {
                endpoint
                    .connect_with_connector(TlsConnector::new(options))
                    .await
            }
            _ => {
                return Err(invalid(
                    "the URL must start with http:// or https://".into(),
                ));
            }
        };
        let channel = connected.map_err(|e| {
            tls::failure(
                options.refusals.explain(&e),
                StoreErrorKind::Unreachable,
                format!("etcd: {}: {}", redact(node), error_chain(&e)),
            )
        })?;
        Ok(NodeClient {
            node: redact(node),
            channel,
            request_timeout: options.request_timeout,
            credentials: options.credentials.clone(),
            token: Mutex::new(None),
            refusals: Arc::clone(&options.refusals),
        })
    }

    /// Every key of `range` at `revision` (0: the current one), in pages of `page_size` keys (0:
    /// all in one answer). The store takes the pages one by one instead.
    #[cfg(test)]
    pub(crate) async fn range(
        &self,
        range: &KeyRange,
        revision: i64,
        page_size: i64,
    ) -> Result<RangeRead, RpcError> {
        let mut pages = self.range_pages(range, revision, page_size);
        let mut kvs = Vec::new();
        while let Some(page) = pages.next().await? {
            kvs.extend(page);
        }
        Ok(RangeRead {
            kvs,
            revision: pages.revision(),
        })
    }

    /// The keys of `range` at `revision` (0: the current one) page by page, `page_size` keys
    /// each (0: all in one page), every page at the revision of the first.
    pub(crate) fn range_pages(
        &self,
        range: &KeyRange,
        revision: i64,
        page_size: i64,
    ) -> RangePages<'_> {
        RangePages {
            client: self,
            next: Some(range.key.clone()),
            range_end: range.range_end.clone(),
            revision,
            page_size,
        }
    }

    /// The number of keys in `range` at `revision` (0: the current one).
    pub(crate) async fn count(
        &self,
        range: &KeyRange,
        revision: i64,
    ) -> Result<RangeCount, RpcError> {
        let request = RangeRequest {
            key: range.key.clone(),
            range_end: range.range_end.clone(),
            revision,
            count_only: true,
            ..RangeRequest::default()
        };
        let answer = self.range_request(request).await?;
        Ok(RangeCount {
            count: answer.count,
            revision: pinned_revision(revision, &answer),
        })
    }

    /// The member's revision and version. The store probes a node by counting instead, which
    /// also proves that it may still read.
    #[cfg(test)]
    pub(crate) async fn status(&self) -> Result<MemberStatus, StoreError> {
        use super::proto::etcdserverpb::StatusRequest;
        use super::proto::etcdserverpb::maintenance_client::MaintenanceClient;
        let answer = self
            .unary("status", StatusRequest {}, |channel, request| async move {
                MaintenanceClient::new(channel).status(request).await
            })
            .await
            .map_err(StoreError::from)?;
        let header = answer.header.unwrap_or_default();
        Ok(MemberStatus {
            revision: header.revision,
            version: answer.version,
            member_id: header.member_id,
            leader: answer.leader,
        })
    }

    /// Starts a watch stream with one watcher over `range`, from `start_revision` (0: changes
    /// after the current revision), and returns once etcd has created the watcher. With
    /// `progress_notify`, etcd reports the revision it reached every few minutes (10 by
    /// default) when nothing changed.
    pub(crate) async fn watch(
        &self,
        range: &KeyRange,
        start_revision: i64,
        progress_notify: bool,
    ) -> Result<Watcher, StoreError> {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: range.key.clone(),
                range_end: range.range_end.clone(),
                start_revision,
                progress_notify,
                ..WatchCreateRequest::default()
            })),
        };
        let mut renewed = false;
        loop {
            self.authenticate_once().await?;
            let (requests, queued) = mpsc::channel(4);
            let stream = tokio_stream::once(create.clone()).chain(ReceiverStream::new(queued));
            let request = self.request(stream, None);
            let opened = async {
                let mut responses = WatchClient::new(self.channel.clone())
                    .max_decoding_message_size(MAX_ANSWER_BYTES)
                    .watch(request)
                    .await?
                    .into_inner();
                let created = responses.message().await?;
                Ok::<_, Status>((responses, created))
            };
            let (responses, created) = tokio::time::timeout(self.request_timeout, opened)
                .await
                .map_err(|_| self.timed_out("watch"))?
                .map_err(|status| self.status_error("watch", &status))?;
            let Some(created) = created else {
                return Err(StoreError::unreachable(format!(
                    "etcd: {}: the watch stream ended before the watcher was created",
                    self.node
                )));
            };
            if created.created && !created.canceled {
                return Ok(Watcher {
                    node: self.node.clone(),
                    refusals: Arc::clone(&self.refusals),
                    created_revision: created.header.as_ref().map_or(0, |header| header.revision),
                    requests,
                    responses,
                });
            }
            if self.credentials.is_some() && !renewed && refused_credentials(&created) {
                self.forget_token();
                renewed = true;
                continue;
            }
            return Err(watch_refused(&self.node, &created));
        }
    }

    /// Grants a lease of `ttl` seconds and returns its ID and the TTL etcd chose (at least
    /// its minimum, about 1.5 s with the default election timeout).
    pub(crate) async fn lease_grant(&self, ttl: i64) -> Result<(i64, i64), StoreError> {
        let answer = self
            .unary(
                "lease grant",
                LeaseGrantRequest { ttl, id: 0 },
                |channel, request| async move { LeaseClient::new(channel).lease_grant(request).await },
            )
            .await?;
        if !answer.error.is_empty() {
            return Err(StoreError::rejected(format!(
                "etcd: {}: lease grant: {}",
                self.node, answer.error
            )));
        }
        Ok((answer.id, answer.ttl))
    }

    /// Renews lease `id` once, on a keep-alive stream of one request, and returns its TTL in
    /// seconds: 0 when etcd no longer has the lease (it expired or was revoked).
    pub(crate) async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        let answer = self
            .unary(
                "lease keep-alive",
                LeaseKeepAliveRequest { id },
                |channel, request| async move {
                    let mut answers = LeaseClient::new(channel)
                        .lease_keep_alive(request.map(tokio_stream::once))
                        .await?
                        .into_inner();
                    let answer = answers.message().await?.ok_or_else(|| {
                        Status::unavailable("the keep-alive stream ended without an answer")
                    })?;
                    Ok(tonic::Response::new(answer))
                },
            )
            .await?;
        Ok(answer.ttl.max(0))
    }

    /// Revokes lease `id`, which deletes the keys put with it. A lease etcd no longer has is
    /// gone already, which is what was asked.
    pub(crate) async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        let revoked = self
            .unary(
                "lease revoke",
                LeaseRevokeRequest { id },
                |channel, request| async move { LeaseClient::new(channel).lease_revoke(request).await },
            )
            .await;
        match revoked {
            Ok(_) => Ok(()),
            Err(RpcError::Store(error)) if error.to_string().contains(LEASE_NOT_FOUND) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Puts `key` = `value`, bound to lease `lease` (0: none).
    pub(crate) async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), StoreError> {
        let request = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..PutRequest::default()
        };
        self.unary("put", request, |channel, request| async move {
            KvClient::new(channel).put(request).await
        })
        .await?;
        Ok(())
    }

    /// Whether `key` exists and is bound to lease `lease`.
    pub(crate) async fn holds(&self, key: &[u8], lease: i64) -> Result<bool, StoreError> {
        let request = RangeRequest {
            key: key.to_vec(),
            keys_only: true,
            ..RangeRequest::default()
        };
        let answer = self.range_request(request).await?;
        Ok(answer.kvs.first().is_some_and(|kv| kv.lease == lease))
    }

    async fn range_request(&self, request: RangeRequest) -> Result<RangeResponse, RpcError> {
        // A refusal names the keys refused: a user may read some prefixes and not others.
        let what = format!("range from {}", String::from_utf8_lossy(&request.key));
        self.unary(&what, request, |channel, request| async move {
            KvClient::new(channel)
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .range(request)
                .await
        })
        .await
    }

    /// Sends one unary call, with the token when there are credentials, and once more with a
    /// new token when etcd no longer accepts the one sent.
    async fn unary<Message, Answer, Call, Answered>(
        &self,
        what: &str,
        message: Message,
        call: Call,
    ) -> Result<Answer, RpcError>
    where
        Message: Clone,
        Call: Fn(Channel, tonic::Request<Message>) -> Answered,
        Answered: Future<Output = Result<tonic::Response<Answer>, Status>>,
    {
        let mut renewed = false;
        loop {
            self.authenticate_once().await?;
            let request = self.request(message.clone(), Some(self.request_timeout));
            let answered =
                tokio::time::timeout(self.request_timeout, call(self.channel.clone(), request))
                    .await
                    .map_err(|_| self.timed_out(what))?;
            match answered {
                Ok(answer) => return Ok(answer.into_inner()),
                Err(status) if self.credentials.is_some() && !renewed && token_refused(&status) => {
                    self.forget_token();
                    renewed = true;
                }
                Err(status) if is_compacted(&status) => return Err(RpcError::Compacted),
                Err(status) => return Err(self.status_error(what, &status).into()),
            }
        }
    }

    /// A request carrying the token and the leader requirement; `timeout` also tells etcd
    /// when to give up on it.
    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let metadata = request.metadata_mut();
        metadata.insert(REQUIRE_LEADER_KEY, MetadataValue::from_static("true"));
        if let Some(token) = self.current_token() {
            metadata.insert(TOKEN_KEY, token);
        }
        request
    }

    /// Obtains a token when there are credentials and no token yet.
    async fn authenticate_once(&self) -> Result<(), StoreError> {
        let Some(credentials) = &self.credentials else {
            return Ok(());
        };
        if self.current_token().is_some() {
            return Ok(());
        }
        let mut request = tonic::Request::new(AuthenticateRequest {
            name: credentials.user.clone(),
            password: credentials.password.clone(),
        });
        request.set_timeout(self.request_timeout);
        let answered = tokio::time::timeout(
            self.request_timeout,
            AuthClient::new(self.channel.clone()).authenticate(request),
        )
        .await
        .map_err(|_| self.timed_out("authenticate"))?;
        let answer = match answered {
            Ok(answer) => answer.into_inner(),
            Err(status) if status_kind(&status) == StoreErrorKind::Auth => {
                return Err(StoreError::auth(format!(
                    "etcd: {}: etcd refused user `{}`: {}",
                    self.node,
                    credentials.user,
                    status_text(&status)
                )));
            }
            Err(status) => return Err(self.status_error("authenticate", &status)),
        };
        let token = AsciiMetadataValue::try_from(answer.token).map_err(|e| {
            StoreError::rejected(format!("etcd: {}: unusable token: {e}", self.node))
        })?;
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    fn current_token(&self) -> Option<AsciiMetadataValue> {
        self.token.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn status_error(&self, what: &str, status: &Status) -> StoreError {
        failure(&self.node, what, status, &self.refusals)
    }

    fn timed_out(&self, what: &str) -> StoreError {
        StoreError::unreachable(format!(
            "etcd: {}: {what}: no answer within {:?}",
            self.node, self.request_timeout
        ))
    }
}

/// The pages of a range read, from [`NodeClient::range_pages`].
pub(crate) struct RangePages<'a> {
    client: &'a NodeClient,
    /// The first key of the next page; `None` once the last page was read.
    next: Option<Vec<u8>>,
    range_end: Vec<u8>,
    /// The revision every page is read at; 0 until the first page pins the current one.
    revision: i64,
    page_size: i64,
}

impl RangePages<'_> {
    /// The next page, or `None` after the last.
    pub(crate) async fn next(&mut self) -> Result<Option<Vec<mvccpb::KeyValue>>, RpcError> {
        let Some(key) = self.next.take() else {
            return Ok(None);
        };
        let request = RangeRequest {
            key,
            range_end: self.range_end.clone(),
            revision: self.revision,
            limit: self.page_size,
            ..RangeRequest::default()
        };
        let answer = self.client.range_request(request).await?;
        self.revision = pinned_revision(self.revision, &answer);
        if answer.more
            && let Some(last) = answer.kvs.last()
        {
            // The next page starts right after the last key of this one.
            let mut next = last.key.clone();
            next.push(0);
            self.next = Some(next);
        }
        Ok(Some(answer.kvs))
    }

    /// The revision the pages are read at: the one asked for, or the one the first page was
    /// read at.
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }
}

/// The revision a range was read at: etcd's answer always carries its current revision, which
/// is later than the one asked for when that was given.
fn pinned_revision(asked: i64, answer: &RangeResponse) -> i64 {
    if asked > 0 {
        asked
    } else {
        answer.header.as_ref().map_or(0, |header| header.revision)
    }
}

/// One watcher on its own watch stream, from [`NodeClient::watch`]. Dropping it ends the
/// stream.
pub(crate) struct Watcher {
    node: String,
    refusals: Arc<Refusals>,
    created_revision: i64,
    /// Held while the watcher lives, so that the request stream stays open; the store sends
    /// nothing on it, as etcd 3.4 answers progress requests out of order.
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "held to keep the request stream open")
    )]
    requests: mpsc::Sender<WatchRequest>,
    responses: tonic::Streaming<WatchResponse>,
}

/// What a watch stream reports.
#[derive(Debug)]
pub(crate) enum WatchMessage {
    /// Changes in the order etcd made them. One message may hold several revisions (each
    /// event's `kv.mod_revision`); etcd never splits one revision, such as a transaction's,
    /// across messages.
    Events {
        /// The store's revision when etcd sent the message; at least that of the last event.
        revision: i64,
        /// The changes.
        events: Vec<mvccpb::Event>,
    },
    /// No changes: an answer to a progress request or a periodic progress notification, with
    /// the store's revision when etcd sent it.
    Progress {
        /// The store's revision.
        revision: i64,
    },
    /// etcd compacted the history the watcher still had to deliver, and ended the watcher:
    /// what changed since must be read again.
    Compacted {
        /// The revision compacted up to; a new watcher may start there.
        compact_revision: i64,
    },
}

impl Watcher {
    /// The store's revision when etcd created the watcher; 0 when the answer did not say.
    pub(crate) fn created_revision(&self) -> i64 {
        self.created_revision
    }

    /// The next message, or `None` when etcd ended the stream without an error.
    pub(crate) async fn next(&mut self) -> Result<Option<WatchMessage>, StoreError> {
        let answer = self
            .responses
            .message()
            .await
            .map_err(|status| failure(&self.node, "watch", &status, &self.refusals))?;
        let Some(answer) = answer else {
            return Ok(None);
        };
        let revision = answer.header.as_ref().map_or(0, |header| header.revision);
        if answer.compact_revision != 0 {
            return Ok(Some(WatchMessage::Compacted {
                compact_revision: answer.compact_revision,
            }));
        }
        if answer.canceled {
            return Err(watch_refused(&self.node, &answer));
        }
        Ok(Some(if answer.events.is_empty() {
            WatchMessage::Progress { revision }
        } else {
            WatchMessage::Events {
                revision,
                events: answer.events,
            }
        }))
    }

    /// Asks etcd for the revision the stream has reached; the answer comes as a
    /// [`WatchMessage::Progress`]. etcd 3.4's gRPC proxy leaves the request unanswered.
    #[cfg(test)]
    pub(crate) async fn request_progress(&self) -> Result<(), StoreError> {
        let request = WatchRequest {
            request_union: Some(RequestUnion::ProgressRequest(
                super::proto::etcdserverpb::WatchProgressRequest {},
            )),
        };
        self.requests.send(request).await.map_err(|_| {
            StoreError::unreachable(format!("etcd: {}: the watch stream is closed", self.node))
        })
    }
}

/// Opens a TCP connection and runs TLS over it with the caller's rustls config, so that an
/// etcd node gets the same certificates and verification as the stores spoken over HTTP, with
/// no TLS stack of tonic's own.
#[derive(Clone)]
struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    refusals: Arc<Refusals>,
}

impl TlsConnector {
    fn new(options: &ConnectOptions) -> TlsConnector {
        let mut config = options.tls.as_ref().clone();
        // etcd serves gRPC only to clients that negotiate HTTP/2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        TlsConnector {
            config: Arc::new(config),
            refusals: Arc::clone(&options.refusals),
        }
    }
}

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<Noted<TlsStream<TcpStream>>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.config));
        let refusals = Arc::clone(&self.refusals);
        Box::pin(async move {
            let invalid =
                |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri}: no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(443);
            let server_name = ServerName::try_from(host.to_string())
                .map_err(|e| invalid(format!("{host}: {e}")))?;
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector
                .connect(server_name, tcp)
                .await
                .map_err(ClosedInHandshake::note)?;
            Ok(TokioIo::new(Noted::new(tls, refusals)))
        })
    }
}

/// The kind of failure a gRPC status stands for.
fn status_kind(status: &Status) -> StoreErrorKind {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => StoreErrorKind::Auth,
        // etcd answers a request without a token, a wrong password, and credentials sent to a
        // cluster without authentication with codes of their own.
        Code::InvalidArgument | Code::FailedPrecondition
            if [
                "user name is empty",
                "authentication failed",
                "authentication is not enabled",
            ]
            .iter()
            .any(|credentials| status.message().contains(credentials)) =>
        {
            StoreErrorKind::Auth
        }
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::NotFound
        | Code::AlreadyExists
        | Code::Unimplemented => StoreErrorKind::Rejected,
        // A node without a leader, overloaded, timing out or gone (tonic reports connection
        // failures as unavailable or unknown): another node or a later try may serve.
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => StoreErrorKind::Unreachable,
    }
}

/// The failure of `what` on `node`: `status`, explained by the TLS layer when it was a
/// server refusing the connection.
fn failure(node: &str, what: &str, status: &Status, refusals: &Refusals) -> StoreError {
    // Only a failed connection has a source; an answer of etcd's is never the TLS layer's.
    tls::failure(
        std::error::Error::source(status).and_then(|source| refusals.explain(source)),
        status_kind(status),
        format!("etcd: {node}: {what}: {}", status_text(status)),
    )
}

/// A status's message with its causes (the connection failure behind a transport error).
fn status_text(status: &Status) -> String {
    let mut text = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().to_string()
    };
    if let Some(source) = std::error::Error::source(status) {
        let causes = error_chain(source);
        // tonic's transport errors say "transport error" in the status and in its source.
        let causes = causes
            .strip_prefix(text.as_str())
            .and_then(|rest| rest.strip_prefix(": "))
            .unwrap_or(&causes);
        text.push_str(": ");
        text.push_str(causes);
    }
    text
}

/// True when etcd refused the token rather than the user: it expired, etcd forgot it, the
/// user's password was set since, or the users and roles changed since it was issued. etcd's
/// own client renews its token on the same answers.
fn token_refused(status: &Status) -> bool {
    let message = status.message();
    match status.code() {
        Code::Unauthenticated => message.contains("invalid auth token"),
        Code::InvalidArgument => {
            message.contains("revision of auth store is old")
                || message.contains("user name is empty")
        }
        _ => false,
    }
}

/// True when etcd refused a read at a revision it has compacted away. etcd itself answers
/// `OutOfRange`; its gRPC proxy passes the error through its own client and answers `Unknown`
/// with the same text (`rpctypes.ErrCompacted`), so the text decides.
fn is_compacted(status: &Status) -> bool {
    status
        .message()
        .contains("mvcc: required revision has been compacted")
}

/// True when etcd refused a watcher for its token or the user's permissions. etcd checks them
/// only when it creates a watcher, and tells a token it no longer accepts either as such or,
/// in some versions, as "permission denied", like a user without permission.
fn refused_credentials(answer: &WatchResponse) -> bool {
    [
        "permission denied",
        "invalid auth token",
        "revision of auth store is old",
        "user name is empty",
    ]
    .iter()
    .any(|refusal| answer.cancel_reason.contains(refusal))
}

/// The error for a watcher etcd refused or ended.
fn watch_refused(node: &str, answer: &WatchResponse) -> StoreError {
    let reason = if answer.cancel_reason.is_empty() {
        "etcd canceled the watcher"
    } else {
        &answer.cancel_reason
    };
    let message = format!("etcd: {node}: watch: {reason}");
    if refused_credentials(answer) {
        StoreError::auth(message)
    } else {
        StoreError::rejected(message)
    }
}

#[cfg(test)]
mod tests;
