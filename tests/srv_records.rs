//! Store nodes from DNS SRV records (`--srv-domain`, `--srv-record`), as confd finds them.
//!
//! reconfd looks records up through the system's resolver, which reads `/etc/resolv.conf`, and
//! that file can name a server on port 53 only. So each test runs its body again inside a
//! user, mount and network namespace of its own (`unshare -rmn`, no privileges needed): there
//! the loopback is the test's alone, its name server listens on 127.0.0.1:53, and
//! `/etc/resolv.conf` is a bind mount of a file naming that server. etcd and reconfd run in
//! the namespace too. The records' targets are `localhost.`, which the hosts file answers.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::etcd::{Etcd, free_port};
use common::{Fixture, expect_content};
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// Set in the namespace, where the test's body runs.
const INSIDE: &str = "RECONFD_TEST_IN_NAMESPACE";

/// Whether this is the run inside the namespace; if not, runs `test` there and checks that it
/// passed.
fn inside_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        return true;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv_conf = dir.path().join("resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 127.0.0.1\n").expect("resolv.conf");
    let output = Command::new("unshare")
        .args([
            "-rmn",
            "sh",
            "-c",
            "PATH=$PATH:/usr/sbin:/sbin; ip link set lo up && \
             mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
        ])
        .arg(&resolv_conf)
        .arg(std::env::current_exe().expect("the test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .expect("unshare (util-linux)");
    assert!(
        output.status.success(),
        "{test} in its namespace: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    false
}

/// The zone the name server answers: SRV records by name, each `(priority, weight, port)`
/// with the target `localhost.`. Any other name is NXDOMAIN.
type Zone = Arc<Mutex<Vec<(String, Vec<(u16, u16, u16)>)>>>;

/// A name server on 127.0.0.1:53 (the namespace's), answering from `zone` as it is at each
/// query, for the life of the test process.
fn name_server(zone: Zone) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 53)).expect("port 53 in the namespace");
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
            let records = zone
                .lock()
                .expect("zone")
                .iter()
                .find(|(known, _)| *known == name)
                .map(|(_, records)| records.clone());
            match records {
                Some(records) if question.query_type() == RecordType::SRV => {
                    response.add_answers(records.into_iter().map(|(priority, weight, port)| {
                        // No caching: a test changes the zone and expects the change seen.
                        Record::from_rdata(
                            question.name().clone(),
                            0,
                            RData::SRV(SRV::new(
                                priority,
                                weight,
                                port,
                                Name::from_ascii("localhost.").expect("name"),
                            )),
                        )
                    }));
                }
                Some(_) => {}
                None => response.metadata.response_code = ResponseCode::NXDomain,
            }
            let bytes = response.to_vec().expect("encode");
            socket.send_to(&bytes, peer).expect("send");
        }
    });
}

/// A confdir with one resource rendering `/app/servers/*` into `app.conf`.
fn fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture
}

#[test]
fn the_nodes_come_from_the_domain_s_srv_record_in_priority_order() {
    if !inside_namespace("the_nodes_come_from_the_domain_s_srv_record_in_priority_order") {
        return;
    }
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let port = etcd.address(0).port();
    let nobody = free_port();
    // The lower priority is listed first, as a server may: reconfd tries the higher first.
    name_server(Arc::new(Mutex::new(vec![(
        "_etcd._tcp.example.test.".to_string(),
        vec![(20, 0, nobody), (10, 0, port)],
    )])));
    let fixture = fixture();
    let run = fixture.run(&[
        "-onetime",
        "-backend",
        "etcd",
        "-srv-domain",
        "example.test",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    assert!(
        run.stderr.contains(&format!(
            "the SRV record _etcd._tcp.example.test. names the store \
             etcd http://localhost:{port},http://localhost:{nobody}"
        )),
        "{run:?}"
    );
}

#[test]
fn a_named_record_beats_the_nodes_and_a_record_naming_nothing_is_refused() {
    if !inside_namespace("a_named_record_beats_the_nodes_and_a_record_naming_nothing_is_refused") {
        return;
    }
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let port = etcd.address(0).port();
    name_server(Arc::new(Mutex::new(vec![
        (
            "_etcd-client._tcp.example.test.".to_string(),
            vec![(10, 0, port)],
        ),
        ("_etcd._tcp.empty.test.".to_string(), Vec::new()),
    ])));
    let fixture = fixture();
    let unused = format!("http://127.0.0.1:{}", free_port());
    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "etcd",
        "--node",
        &unused,
        "--srv-record",
        "_etcd-client._tcp.example.test.",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    assert!(
        run.stderr
            .contains(&format!("the nodes given ({unused}) are not used")),
        "{run:?}"
    );

    fixture.write("app.conf", "kept\n");
    for (domain, error) in [
        (
            "empty.test",
            "the SRV record _etcd._tcp.empty.test. names no store nodes",
        ),
        (
            "gone.test",
            "the SRV record _etcd._tcp.gone.test. names no store nodes",
        ),
    ] {
        let run = fixture.run(&["--onetime", "--backend", "etcd", "--srv-domain", domain]);
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(run.stderr.contains(error), "{run:?}");
        assert_eq!(
            fixture.read("app.conf"),
            "kept\n",
            "the destination is left alone"
        );
    }
}

#[test]
fn sighup_looks_the_record_up_again_and_keeps_the_running_nodes_when_it_fails() {
    if !inside_namespace(
        "sighup_looks_the_record_up_again_and_keeps_the_running_nodes_when_it_fails",
    ) {
        return;
    }
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let port = etcd.address(0).port();
    let zone: Zone = Arc::new(Mutex::new(vec![(
        "_etcd._tcp.example.test.".to_string(),
        vec![(10, 0, port)],
    )]));
    name_server(zone.clone());
    let fixture = fixture();
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "etcd",
        "--srv-domain",
        "example.test",
    ]);
    expect_content(&fixture, &daemon, "server web1 10.0.0.1:80\n", "first sync");

    zone.lock().expect("zone").clear();
    daemon.hang_up();
    let refused = "SIGHUP: keeping the current settings: the SRV record \
                   _etcd._tcp.example.test. names no store nodes";
    assert!(
        common::wait_for(std::time::Duration::from_secs(30), || daemon
            .log()
            .contains(refused)),
        "{}",
        daemon.log()
    );
    etcd.put("/app/servers/web1", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.2:80\n",
        "the running nodes are still watched",
    );
}
