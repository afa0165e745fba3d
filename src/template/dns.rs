//! confd's DNS functions: `lookupIP`, `lookupIPV4`, `lookupIPV6` and `lookupSRV`, answered by
//! the process's resolver ([`crate::dns`]).
//!
//! Results are sorted, so an unchanged answer renders unchanged bytes whatever order the
//! server gave. A name with no records is an empty list, as in confd; a lookup that could not
//! be answered (timeout, server failure) is a render error instead, so that a passing DNS
//! fault cannot render a configuration without its servers.

use hickory_resolver::net::NetError;
use tera::{Kwargs, Map, State, TeraResult, Value};

use super::{Registry, register_function};
use crate::dns::{Resolver, ip_addresses, srv_records};

/// Registers the DNS functions on `tera`, answered by `resolver`.
pub(super) fn register(tera: &mut Registry, resolver: Resolver) {
    for (name, family) in [
        ("lookupIP", None),
        ("lookupIPV4", Some(Family::V4)),
        ("lookupIPV6", Some(Family::V6)),
    ] {
        let resolver = resolver.clone();
        register_function(tera, name, &["name"], move |kwargs: Kwargs, _: &State| {
            lookup_ip(&resolver, kwargs.must_get::<&str>("name")?, family)
        });
    }
    register_function(
        tera,
        "lookupSRV",
        &["service", "proto", "name"],
        move |kwargs: Kwargs, _: &State| {
            let service = kwargs.get::<&str>("service")?.unwrap_or("");
            let proto = kwargs.get::<&str>("proto")?.unwrap_or("");
            let name = kwargs.must_get::<&str>("name")?;
            lookup_srv(&resolver, service, proto, name)
        },
    );
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// The addresses of `name`, as strings sorted as strings (confd's order).
fn lookup_ip(resolver: &Resolver, name: &str, family: Option<Family>) -> TeraResult<Vec<String>> {
    let mut addresses: Vec<String> = match ip_addresses(resolver, name) {
        Ok(addresses) => addresses
            .into_iter()
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
    let mut records = match srv_records(resolver, &query) {
        Ok(records) => records,
        Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
        Err(e) => return Err(lookup_failed(&query, &e)),
    };
    records.sort_unstable();
    Ok(records
        .into_iter()
        .map(|srv| {
            let mut map = Map::default();
            map.insert("target".into(), Value::from(srv.target));
            map.insert("port".into(), Value::from(srv.port));
            map.insert("priority".into(), Value::from(srv.priority));
            map.insert("weight".into(), Value::from(srv.weight));
            Value::from(map)
        })
        .collect())
}

fn lookup_failed(name: &str, error: &NetError) -> tera::Error {
    // A timeout or a server failure may be gone on the next try; the resource is retried.
    super::failure_may_pass();
    tera::Error::message(format!("cannot look up `{name}`: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::test_server::dns_server;
    use crate::template::Renderer;
    use crate::template::tests::view;

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
            "web1.example.test.:80/20/5 web1.example.test.:8080/10/50 web2.example.test.:8080/10/5 ",
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
            "{{ lookupIP() }}",
            Resolver::NameServer(dns_server()),
        )
        .expect("parses")
        .render(view(&[], "", &["/"]))
        .expect_err("missing argument");
        assert!(!err.may_pass, "a template error waits for a change: {err}");
    }
}
