//! The process's one DNS resolver: a thread with a runtime of its own, holding one resolver
//! (and so one cache) per configuration for the life of the process. It answers the template
//! functions `lookupIP` and `lookupSRV` and finds a store's nodes from an SRV record
//! (`--srv-record`, confd's `-srv-domain`). Callers wait for the answer on their own thread
//! (a render's, or the one that reads the settings); the daemon's runtime thread never does.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use tokio::sync::mpsc;

/// Which name server answers lookups.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resolver {
    /// The system's configuration: `/etc/resolv.conf` and `/etc/hosts`.
    System,
    /// One name server, over UDP and TCP, with no hosts file: a test's.
    #[cfg(test)]
    NameServer(std::net::SocketAddr),
}

/// One SRV record's data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Srv {
    /// The host, as a fully qualified name (with its final dot).
    pub target: String,
    /// The port on the host.
    pub port: u16,
    /// Lower is tried first.
    pub priority: u16,
    /// Among records of one priority, higher takes more of the load.
    pub weight: u16,
}

/// The addresses of `name`.
pub(crate) fn ip_addresses(resolver: &Resolver, name: &str) -> Result<Vec<IpAddr>, NetError> {
    let name = name.to_string();
    resolve(resolver, move |resolver| async move {
        Ok(resolver.lookup_ip(name).await?.iter().collect())
    })
}

/// The SRV records of `name`, in the order the server gave them.
pub(crate) fn srv_records(resolver: &Resolver, name: &str) -> Result<Vec<Srv>, NetError> {
    let name = name.to_string();
    resolve(resolver, move |resolver| async move {
        let lookup = resolver.srv_lookup(name).await?;
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(Srv {
                    target: srv.target.to_string(),
                    port: srv.port,
                    priority: srv.priority,
                    weight: srv.weight,
                }),
                _ => None,
            })
            .collect())
    })
}

/// The store nodes the SRV record `name` names, as `host:port` (the target without its final
/// dot), in the order to try them: by priority, then the heaviest weight first, then by name,
/// so that every host of a fleet prefers the same node. No records is an error: a store with
/// no nodes could never be read.
pub(crate) fn srv_nodes(resolver: &Resolver, name: &str) -> Result<Vec<String>, String> {
    let mut records = match srv_records(resolver, name) {
        Ok(records) => records,
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(format!("cannot look up the SRV record {name}: {e}")),
    };
    if records.is_empty() {
        return Err(format!("the SRV record {name} names no store nodes"));
    }
    let order = |srv: &Srv| {
        (
            srv.priority,
            Reverse(srv.weight),
            srv.target.clone(),
            srv.port,
        )
    };
    records.sort_by_cached_key(order);
    Ok(records
        .into_iter()
        .map(|srv| format!("{}:{}", srv.target.trim_end_matches('.'), srv.port))
        .collect())
}

/// A lookup to run on the resolver thread, given the resolver for its configuration (or why
/// that could not be built); it sends its answer back itself.
type Job = Box<dyn FnOnce(Result<TokioResolver, NetError>) -> BoxFuture + Send>;
type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The process's lookups (see the module's documentation).
static LOOKUPS: OnceLock<Result<mpsc::UnboundedSender<(Resolver, Job)>, String>> = OnceLock::new();

fn lookups() -> Result<&'static mpsc::UnboundedSender<(Resolver, Job)>, NetError> {
    LOOKUPS
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
            let (sender, mut requests) = mpsc::unbounded_channel::<(Resolver, Job)>();
            std::thread::Builder::new()
                .name("reconfd-dns".to_string())
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut resolvers: HashMap<Resolver, TokioResolver> = HashMap::new();
                        while let Some((config, job)) = requests.recv().await {
                            let built = match resolvers.get(&config) {
                                Some(resolver) => Ok(resolver.clone()),
                                None => build(&config).inspect(|resolver| {
                                    resolvers.insert(config, resolver.clone());
                                }),
                            };
                            tokio::spawn(job(built));
                        }
                    });
                })
                .map_err(|e| format!("cannot start the DNS resolver: {e}"))?;
            Ok(sender)
        })
        .as_ref()
        .map_err(|message| NetError::from(message.clone()))
}

/// Runs one lookup on the resolver thread and waits for its answer. Called from a thread
/// that may block (a render's, the settings reader's); the resolver's timeouts bound the wait.
fn resolve<T, Lookup, Answer>(resolver: &Resolver, lookup: Lookup) -> Result<T, NetError>
where
    T: Send + 'static,
    Lookup: FnOnce(TokioResolver) -> Answer + Send + 'static,
    Answer: Future<Output = Result<T, NetError>> + Send + 'static,
{
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let job: Job = Box::new(move |built| {
        Box::pin(async move {
            let result = match built {
                Ok(resolver) => lookup(resolver).await,
                Err(e) => Err(e),
            };
            // The caller stopped waiting only if it was cancelled (a render that ran out of time).
            let _ = reply.send(result);
        })
    });
    lookups()?
        .send((resolver.clone(), job))
        .map_err(|_| NetError::from("the DNS resolver thread stopped"))?;
    answer
        .recv()
        .map_err(|_| NetError::from("the DNS resolver thread stopped"))?
}

fn build(resolver: &Resolver) -> Result<TokioResolver, NetError> {
    match resolver {
        Resolver::System => TokioResolver::builder_tokio()?.build(),
        #[cfg(test)]
        Resolver::NameServer(address) => {
            use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
            let mut udp = ConnectionConfig::udp();
            udp.port = address.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = address.port();
            let server = NameServerConfig::new(address.ip(), true, vec![udp, tcp]);
            hickory_resolver::Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
            )
            .build()
        }
    }
}

/// A name server for tests.
#[cfg(test)]
pub(crate) mod test_server {
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::time::Duration;

    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::rdata::{A, SRV};
    use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

    /// A DNS server on a loopback port answering from a fixed zone: SRV records for
    /// `_http._tcp.example.test.`, an A record for `web1.example.test.`, a server failure for
    /// `broken.example.test.`, NXDOMAIN otherwise.
    /// It stops after two seconds without a query.
    pub(crate) fn dns_server() -> SocketAddr {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let address = socket.local_addr().expect("address");
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while let Ok((length, peer)) = socket.recv_from(&mut buffer) {
                let query = Message::from_vec(&buffer[..length]).expect("a DNS query");
                let question = query.queries[0].clone();
                let mut response = Message::new(query.id, MessageType::Response, query.op_code);
                response.metadata.recursion_desired = query.metadata.recursion_desired;
                response.metadata.recursion_available = true;
                response.add_query(question.clone());
                let name = question.name().to_string();
                let answers: Vec<Record> = match (name.as_str(), question.query_type()) {
                    ("_http._tcp.example.test.", RecordType::SRV) => [
                        ("web2.example.test.", 8080, 10, 5),
                        ("web1.example.test.", 8080, 10, 50),
                        ("web1.example.test.", 80, 20, 5),
                    ]
                    .into_iter()
                    .map(|(target, port, priority, weight)| {
                        Record::from_rdata(
                            question.name().clone(),
                            60,
                            RData::SRV(SRV::new(
                                priority,
                                weight,
                                port,
                                Name::from_ascii(target).expect("name"),
                            )),
                        )
                    })
                    .collect(),
                    ("web1.example.test.", RecordType::A) => vec![Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(A::new(10, 0, 0, 1)),
                    )],
                    _ => Vec::new(),
                };
                if name == "broken.example.test." {
                    response.metadata.response_code = ResponseCode::ServFail;
                } else if answers.is_empty() && name != "web1.example.test." {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                response.add_answers(answers);
                let bytes = response.to_vec().expect("encode");
                socket.send_to(&bytes, peer).expect("send");
            }
        });
        address
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srv_nodes_are_ordered_by_priority_then_weight() {
        let resolver = Resolver::NameServer(test_server::dns_server());
        assert_eq!(
            srv_nodes(&resolver, "_http._tcp.example.test.").expect("nodes"),
            [
                "web1.example.test:8080",
                "web2.example.test:8080",
                "web1.example.test:80"
            ]
        );
    }

    #[test]
    fn srv_nodes_of_a_missing_record_or_a_failing_server_are_errors() {
        let resolver = Resolver::NameServer(test_server::dns_server());
        assert_eq!(
            srv_nodes(&resolver, "_etcd._tcp.gone.example.test.").expect_err("no records"),
            "the SRV record _etcd._tcp.gone.example.test. names no store nodes"
        );
        let error = srv_nodes(&resolver, "broken.example.test.").expect_err("server failure");
        assert!(
            error.starts_with("cannot look up the SRV record broken.example.test.: "),
            "{error}"
        );
    }
}
