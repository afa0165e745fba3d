//! confd's DNS functions: `lookupIP`, `lookupIPV4`, `lookupIPV6` and `lookupSRV`.
//!
//! Results are sorted, so an unchanged answer renders unchanged bytes whatever order the
//! server gave. A name with no records is an empty list, as in confd; a lookup that could not
//! be answered (timeout, server failure) is a render error instead, so that a passing DNS
//! fault cannot render a configuration without its servers.

use std::collections::HashMap;
use std::sync::OnceLock;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::RData;
use tera::{Kwargs, Map, State, Tera, TeraResult, Value};
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

/// Registers the DNS functions on `tera`, answered by `resolver`.
pub fn register(tera: &mut Tera, resolver: Resolver) {
    for (name, family) in [
        ("lookupIP", None),
        ("lookupIPV4", Some(Family::V4)),
        ("lookupIPV6", Some(Family::V6)),
    ] {
        let resolver = resolver.clone();
        tera.register_function(name, move |kwargs: Kwargs, _: &State| {
            lookup_ip(&resolver, kwargs.must_get::<&str>("name")?, family)
        });
    }
    tera.register_function("lookupSRV", move |kwargs: Kwargs, _: &State| {
        let service = kwargs.get::<&str>("service")?.unwrap_or("");
        let proto = kwargs.get::<&str>("proto")?.unwrap_or("");
        let name = kwargs.must_get::<&str>("name")?;
        lookup_srv(&resolver, service, proto, name)
    });
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// The addresses of `name`, as strings sorted as strings (confd's order).
fn lookup_ip(resolver: &Resolver, name: &str, family: Option<Family>) -> TeraResult<Vec<String>> {
    let answer = resolve(resolver, {
        let name = name.to_string();
        move |resolver| async move { resolver.lookup_ip(name).await }
    });
    let mut addresses: Vec<String> = match answer {
        Ok(lookup) => lookup
            .iter()
            .filter(|address| match family {
                None => true,
                Some(Family::V4) => address.is_ipv4(),
                Some(Family::V6) => address.is_ipv6(),
            })
            .map(|address| address.to_string())
            .collect(),
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => return Err(lookup_failed(name, &e)),
    };
    addresses.sort_unstable();
    addresses.dedup();
    Ok(addresses)
}

/// The SRV records of `_service._proto.name` (or of `name` when both are empty) as
/// `{target, port, priority, weight}`, sorted by target, then port, priority and weight.
fn lookup_srv(
    resolver: &Resolver,
    service: &str,
    proto: &str,
    name: &str,
) -> TeraResult<Vec<Value>> {
    let query = if service.is_empty() && proto.is_empty() {
        name.to_string()
    } else {
        format!("_{service}._{proto}.{name}")
    };
    let answer = resolve(resolver, {
        let query = query.clone();
        move |resolver| async move { resolver.srv_lookup(query).await }
    });
    let lookup = match answer {
        Ok(lookup) => lookup,
        Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
        Err(e) => return Err(lookup_failed(&query, &e)),
    };
    let mut records: Vec<(String, u16, u16, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some((srv.target.to_string(), srv.port, srv.priority, srv.weight)),
            _ => None,
        })
        .collect();
    records.sort_unstable();
    Ok(records
        .into_iter()
        .map(|(target, port, priority, weight)| {
            let mut map = Map::default();
            map.insert("target".into(), Value::from(target));
            map.insert("port".into(), Value::from(port));
            map.insert("priority".into(), Value::from(priority));
            map.insert("weight".into(), Value::from(weight));
            Value::from(map)
        })
        .collect())
}

fn lookup_failed(name: &str, error: &NetError) -> tera::Error {
    // A timeout or a server failure may be gone on the next try; the resource is retried.
    super::failure_may_pass();
    tera::Error::message(format!("cannot look up `{name}`: {error}"))
}

/// A lookup to run on the resolver thread, given the resolver for its configuration (or why
/// that could not be built); it sends its answer back itself.
type Job = Box<dyn FnOnce(Result<TokioResolver, NetError>) -> BoxFuture + Send>;
type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// The process's lookups: one thread with a runtime of its own, holding one resolver (and so
/// one cache) per configuration for the life of the process. Renders run on threads of
/// their own and wait there for the answer; the daemon's runtime thread never does.
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

/// Runs one lookup on the resolver thread and waits for its answer. Called from a render,
/// which runs on a thread of its own; the resolver's timeouts bound the wait.
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
            // The render stopped waiting only if it was cancelled.
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::time::Duration;

    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::rdata::{A, SRV};
    use hickory_resolver::proto::rr::{Name, Record, RecordType};

    use super::*;
    use crate::template::Renderer;
    use crate::template::tests::view;

    /// A DNS server on a loopback port answering from a fixed zone: SRV records for
    /// `_http._tcp.example.test.`, an A record for `web1.example.test.`, a server failure for
    /// `broken.example.test.`, NXDOMAIN otherwise.
    /// It stops after two seconds without a query.
    fn dns_server() -> SocketAddr {
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
                        ("web2.example.test.", 8080, 10),
                        ("web1.example.test.", 8080, 10),
                        ("web1.example.test.", 80, 20),
                    ]
                    .into_iter()
                    .map(|(target, port, priority)| {
                        Record::from_rdata(
                            question.name().clone(),
                            60,
                            RData::SRV(SRV::new(
                                priority,
                                5,
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

    fn render_with(resolver: Resolver, source: &str) -> String {
        Renderer::from_source("dns.tmpl", source, resolver)
            .expect("parses")
            .render(view(&[], "", &["/"]))
            .expect("renders")
    }

    #[test]
    fn lookup_srv_returns_sorted_records() {
        let address = dns_server();
        let out = render_with(
            Resolver::NameServer(address),
            "{% for srv in lookupSRV(service=\"http\", proto=\"tcp\", name=\"example.test.\") %}\
             {{ srv.target }}:{{ srv.port }}/{{ srv.priority }}/{{ srv.weight }} {% endfor %}",
        );
        assert_eq!(
            out,
            "web1.example.test.:80/20/5 web1.example.test.:8080/10/5 web2.example.test.:8080/10/5 ",
            "sorted by target, then port"
        );
    }

    #[test]
    fn lookup_ip_answers_from_dns_and_a_missing_name_is_empty() {
        let address = dns_server();
        let out = render_with(
            Resolver::NameServer(address),
            "{{ lookupIPV4(name=\"web1.example.test.\") | join(sep=\",\") }}|\
             {{ lookupIP(name=\"gone.example.test.\") | length }}",
        );
        assert_eq!(out, "10.0.0.1|0");
    }

    #[test]
    fn lookup_ip_of_localhost_uses_the_hosts_file() {
        let out = render_with(
            Resolver::System,
            "{{ lookupIPV4(name=\"localhost\") | join(sep=\",\") }}",
        );
        assert_eq!(out, "127.0.0.1");
    }

    #[test]
    fn a_failed_lookup_is_a_render_error() {
        let err = Renderer::from_source(
            "dns.tmpl",
            "{{ lookupIP(name=\"broken.example.test.\") }}",
            Resolver::NameServer(dns_server()),
        )
        .expect("parses")
        .render(view(&[], "", &["/"]))
        .expect_err("server failure");
        assert!(
            err.message
                .contains("cannot look up `broken.example.test.`"),
            "{err}"
        );
        assert!(err.may_pass, "a failed lookup is worth trying again");
        let err = Renderer::from_source(
            "dns.tmpl",
            "{{ lookupIP(nom=\"x\") }}",
            Resolver::NameServer(dns_server()),
        )
        .expect("parses")
        .render(view(&[], "", &["/"]))
        .expect_err("wrong argument");
        assert!(!err.may_pass, "a template error waits for a change: {err}");
    }
}
