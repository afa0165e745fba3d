//! The etcd store against real etcd servers started on loopback ports: onetime reads across
//! pages, watch mode with puts, deletes and bursts, an etcd restart, failover in a
//! three-member cluster, compaction past the watched revision, transactions over two
//! prefixes (live, caught up after a reconnect, for a user who may read only the prefixes,
//! and 2,000 of them with the destination read all along), authentication with token
//! renewal, TLS with client certificates and with a server certificate from an untrusted CA,
//! `--scheme`, and SIGHUP keeping the store's snapshot.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::etcd::{Etcd, GrpcProxy};
use common::{Daemon, Fixture, expect_content, reloads, reloads_until, wait_for};

/// A confdir with one resource rendering `/app/servers/*` into `app.conf`; its reload
/// appends the file's content to `reloads`, so each reload's view of the file is recorded.
fn fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
             reload_cmd = \"(cat app.conf; echo --) >> {}\"\n",
            fixture.path("reloads").display()
        ),
    );
    fixture
}

fn args<'a>(etcd: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--backend", "etcd"];
    for node in etcd {
        args.extend(["--node", node.as_str()]);
    }
    args.extend_from_slice(extra);
    args
}

#[test]
fn onetime_reads_every_page_and_reloads_once() {
    let etcd = Etcd::start();
    let keys: Vec<(String, String)> = (0..12_000)
        .map(|i| {
            (
                format!("/app/servers/w{i:05}"),
                format!("10.0.{}.{}", i / 256, i % 256),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    etcd.put_all(&pairs);
    etcd.put("/apple/not-mine", "x");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let run = fixture.run(&args(&nodes, &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let rendered = fixture.read("app.conf");
    assert_eq!(rendered.lines().count(), 12_000, "every key, across pages");
    assert!(rendered.starts_with("server w00000 10.0.0.0\n"));
    assert!(rendered.ends_with("server w11999 10.0.46.223\n"));
    assert_eq!(
        reloads(&fixture),
        1,
        "the run has ended: every reload is logged"
    );
}

#[test]
fn watch_follows_puts_deletes_and_collapses_bursts() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );

    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "put picked up",
    );
    etcd.delete("/app/servers/web1");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "delete picked up",
    );

    // One transaction of 50 puts: one render, one reload.
    let keys: Vec<String> = (0..50).map(|i| format!("/app/servers/t{i:02}")).collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "10.1.0.1:80")).collect();
    etcd.put_all(&pairs);
    let expected: String = std::iter::once("server t00 10.1.0.1:80\n".to_string())
        .chain((1..50).map(|i| format!("server t{i:02} 10.1.0.1:80\n")))
        .chain(std::iter::once("server web2 10.0.0.2:80\n".to_string()))
        .collect();
    expect_content(&fixture, &daemon, &expected, "transaction applied");
    // A later change, once reloaded, shows every reload before it.
    etcd.put("/app/servers/zz", "end");
    let last = format!("{expected}server zz end\n");
    let views = reloads_until(&fixture, &daemon, &last);
    assert_eq!(
        views,
        [
            "server web1 10.0.0.1:80\n",
            "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
            "server web2 10.0.0.2:80\n",
            expected.as_str(),
            last.as_str(),
        ],
        "one reload per change and one for the whole transaction"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// `--log-level debug` shows what reconfd does with a change, not the HTTP/2 frames of its
/// gRPC client (those are `trace`).
#[test]
fn debug_logs_reconfd_s_details_without_its_client_s_frames() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch", "--log-level", "debug"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "put picked up",
    );
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("1 key changed")),
        "reconfd's debug line\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(!log.contains("frame="), "{log}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn quick_puts_during_a_slow_reload_are_rendered_once_with_the_final_values() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web", "v0");
    let fixture = fixture();
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
             reload_cmd = \"(cat app.conf; echo --) >> {}; sleep 1\"\n",
            fixture.path("reloads").display()
        ),
    );
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(&fixture, &daemon, "server web v0\n", "initial render");
    for version in 1..=20 {
        etcd.put("/app/servers/web", &format!("v{version}"));
    }
    expect_content(
        &fixture,
        &daemon,
        "server web v20\n",
        "final value rendered",
    );
    // A later change, once reloaded, shows every reload the 20 puts caused.
    etcd.put("/app/servers/zz", "end");
    let views = reloads_until(&fixture, &daemon, "server web v20\nserver zz end\n");
    assert!(
        views.len() <= 4,
        "20 quick puts gave {} reloads (initial, first put, the rest, then the later \
         change):\n{views:#?}",
        views.len()
    );
    assert_eq!(views[views.len() - 2], "server web v20\n", "{views:#?}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_change_made_after_an_etcd_restart_is_rendered() {
    let mut etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    // Read with `/app` by etcd's string prefix; the check of etcd's history after the
    // restart counts it as etcd does.
    etcd.put("/apple/x", "1");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );

    etcd.kill(0);
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("etcd store unavailable")),
        "outage noticed\n{}",
        daemon.log()
    );
    assert!(
        fixture.read("app.conf") == "server web1 10.0.0.1:80\n",
        "the last good file is kept during the outage"
    );
    etcd.restart(0);
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "change after the restart rendered",
    );
    let log = daemon.log();
    assert_eq!(log.matches("etcd store unavailable").count(), 1, "{log}");
    assert_eq!(log.matches("available again").count(), 1, "{log}");
    assert!(
        !log.contains("reading every key again"),
        "the same etcd is watched on, not read again\n{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_change_is_rendered_after_the_connected_member_dies() {
    let mut etcd = Etcd::cluster(3);
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch", "--log-level", "debug"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    let watching = format!("watching 1 prefix on {}", nodes[0]);
    assert!(
        wait_for(Duration::from_secs(10), || daemon.log().contains(&watching)),
        "watching the first member\n{}",
        daemon.log()
    );

    etcd.kill(0);
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "change after the failover rendered",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn compaction_past_the_watched_revision_resyncs_everything() {
    let mut etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "initial render",
    );

    // Freeze reconfd, break its connection, change and compact the history it has not
    // seen, then let it go on: its watch from the old revision is refused as compacted.
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    etcd.restart(0);
    etcd.delete("/app/servers/web1");
    etcd.put("/app/servers/web3", "10.0.0.3:80");
    etcd.put("/app/servers/web2", "10.0.0.22:80");
    etcd.compact(etcd.revision());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");

    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.22:80\nserver web3 10.0.0.3:80\n",
        "full resync after compaction",
    );
    assert!(daemon.log().contains("compacted"), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn authentication_renews_expired_tokens_and_a_wrong_password_is_named() {
    let mut etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    etcd.enable_auth("root", "s3cret");
    let fixture = fixture();
    let nodes = etcd.endpoints();

    let run = fixture.run(&args(
        &nodes,
        &["--onetime", "--username", "root", "--password", "wrong"],
    ));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("etcd refused user `root`"), "{run:?}");
    assert!(
        run.stderr.contains("refused the credentials"),
        "a wrong password is an authentication failure, not an outage: {run:?}"
    );
    assert!(
        !run.stderr.contains("wrong"),
        "the password is not logged: {run:?}"
    );

    // confd's command line, one dash and `-basic-auth` included, works unchanged.
    let confd_line: Vec<String> = ["-onetime", "-backend", "etcdv3"]
        .into_iter()
        .map(String::from)
        .chain(
            nodes
                .iter()
                .flat_map(|node| ["-node".to_string(), node.clone()]),
        )
        .chain(
            ["-basic-auth", "-username", "root", "-password", "s3cret"]
                .into_iter()
                .map(String::from),
        )
        .collect();
    let confd_line: Vec<&str> = confd_line.iter().map(String::as_str).collect();
    let run = fixture.run(&confd_line);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    std::fs::remove_file(fixture.path("app.conf")).expect("rm");

    // As etcd's own clients do, a user and password in the node's URL are credentials.
    let in_url: Vec<String> = nodes
        .iter()
        .map(|node| node.replacen("http://", "http://root:s3cret@", 1))
        .collect();
    let run = fixture.run(&args(&in_url, &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    std::fs::remove_file(fixture.path("app.conf")).expect("rm");

    // Polling every 3 s with tokens that expire after 1 s: every poll needs a new token.
    let daemon = fixture.spawn(&args(
        &nodes,
        &[
            "--interval",
            "3",
            "--username",
            "root",
            "--password",
            "s3cret",
        ],
    ));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "rendered after the token expired",
    );
    assert!(!daemon.log().contains("ERROR"), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

/// A store that answers again with nothing changed shows as up again at once: the watch
/// opened again is its answer, not the next change or the next interval.
#[test]
fn a_store_back_with_the_same_data_shows_as_up_at_once() {
    let mut etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let listen = format!("127.0.0.1:{}", common::etcd::free_port());
    let daemon = fixture.spawn(&args(
        &nodes,
        &["--watch", "--interval", "3600", "--listen", &listen],
    ));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    let store = || {
        let (_, body) = common::get(&format!("http://{listen}/status"));
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        status["stores"][0].clone()
    };
    etcd.kill(0);
    assert!(
        wait_for(Duration::from_secs(30), || store()["connected"] == false),
        "{}",
        daemon.log()
    );
    etcd.restart(0);
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("store available again")),
        "{}",
        daemon.log()
    );
    let store = store();
    assert_eq!(store["connected"], true, "{store}\n{}", daemon.log());
    assert_eq!(store["last_error"], serde_json::Value::Null, "{store}");
    let (_, metrics) = common::get(&format!("http://{listen}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("reconfd_store_up{") && line.ends_with(" 1")),
        "{metrics}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn basic_auth_off_in_a_confd_settings_file_reads_without_the_user() {
    // etcd without authentication, which refuses a user and password; confd sends them
    // only with basic_auth on, so a confd.toml with basic_auth = false and a user works.
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    fixture.write(
        "confd.toml",
        &format!(
            "backend = \"etcdv3\"\nnodes = [\"{}\"]\nbasic_auth = false\nusername = \"u\"\n\
             password = \"p\"\n",
            etcd.endpoint(0)
        ),
    );
    let run = fixture.run(&["--onetime", "--config-file", "confd.toml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    assert!(!run.stderr.contains("WARN"), "{run:?}");
    assert!(run.stderr.contains("basic_auth is off"), "{run:?}");

    // A user in the node's URL is left out too.
    std::fs::remove_file(fixture.path("app.conf")).expect("rm");
    let in_url = etcd.endpoint(0).replacen("http://", "http://u:p@", 1);
    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "etcd",
        "--node",
        &in_url,
        "--basic-auth=false",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");

    // Without it, the user is sent, and etcd's refusal is named.
    std::fs::remove_file(fixture.path("app.conf")).expect("rm");
    let run = fixture.run(&["--onetime", "--config-file", "confd.toml", "--basic-auth"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("authentication is not enabled"),
        "{run:?}"
    );
}

#[test]
fn tls_with_client_certificates() {
    let etcd = Etcd::start_tls();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let certificates = etcd.certificates();
    let (ca, cert, key) = (
        certificates.ca.display().to_string(),
        certificates.client_cert.display().to_string(),
        certificates.client_key.display().to_string(),
    );
    let run = fixture.run(&args(
        &nodes,
        &[
            "--onetime",
            "--client-ca-keys",
            &ca,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ],
    ));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");

    // Without a client certificate the server refuses the connection; the error says so,
    // and what to set.
    std::fs::remove_file(fixture.path("app.conf")).expect("remove");
    let run = fixture.run(&args(&nodes, &["--onetime", "--client-ca-keys", &ca]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&nodes[0]), "names the node: {run:?}");
    assert!(
        run.stderr.contains(
            "the server asks for a client certificate and none is set (--client-cert, \
             --client-key)"
        ),
        "{run:?}"
    );
    assert!(!fixture.path("app.conf").exists());

    // A client certificate of another CA: refused, and said so from the first attempt.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other = common::certificates::make_certificates(elsewhere.path());
    let (other_cert, other_key) = (
        other.client_cert.display().to_string(),
        other.client_key.display().to_string(),
    );
    let run = fixture.run(&args(
        &nodes,
        &[
            "--onetime",
            "--client-ca-keys",
            &ca,
            "--client-cert",
            &other_cert,
            "--client-key",
            &other_key,
        ],
    ));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("refused the credentials")
            && run
                .stderr
                .contains("the server refused the client certificate or its absence"),
        "{run:?}"
    );

    // A daemon takes it as a refusal, asked again slowly, not as a store out of reach.
    let daemon = fixture.spawn(&args(&nodes, &["--watch", "--client-ca-keys", &ca]));
    let refused = wait_for(Duration::from_secs(30), || {
        daemon.log().lines().any(|line| {
            line.contains("etcd store refused the credentials")
                && line.contains("the server asks for a client certificate and none is set")
        })
    });
    assert!(refused, "{}", daemon.log());
    assert!(
        !daemon.log().contains("retrying at least every 1s"),
        "{}",
        daemon.log()
    );
    assert!(!fixture.path("app.conf").exists());
}

/// `--client-ca-keys`, `--client-cert` and `--client-key` for the TLS etcd, with the CA
/// file `ca`.
fn tls_args(etcd: &Etcd, ca: &std::path::Path) -> Vec<String> {
    let certificates = etcd.certificates();
    [
        "--client-ca-keys",
        &ca.display().to_string(),
        "--client-cert",
        &certificates.client_cert.display().to_string(),
        "--client-key",
        &certificates.client_key.display().to_string(),
    ]
    .map(str::to_string)
    .to_vec()
}

#[test]
fn a_server_certificate_from_an_untrusted_ca_is_refused_unless_insecure() {
    let etcd = Etcd::start_tls();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    // A CA of its own, which did not sign the server's certificate.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other_ca = common::certificates::make_certificates(elsewhere.path()).ca;
    let tls = tls_args(&etcd, &other_ca);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();

    let run = fixture.run(&args(&nodes, &[&["--onetime"], tls.as_slice()].concat()));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&nodes[0]), "names the node: {run:?}");
    assert!(
        run.stderr.contains("invalid peer certificate"),
        "says the server's certificate is not one it trusts: {run:?}"
    );
    assert!(!fixture.path("app.conf").exists());
    assert!(!run.stderr.contains("--client-insecure"), "{run:?}");

    let insecure = [&["--onetime", "--client-insecure"], tls.as_slice()].concat();
    let run = fixture.run(&args(&nodes, &insecure));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    let warning = run
        .stderr
        .lines()
        .find(|line| line.contains("--client-insecure"))
        .unwrap_or_else(|| panic!("a warning about --client-insecure: {run:?}"));
    assert!(
        warning.contains("WARN") && warning.contains("any server certificate is accepted"),
        "{warning}"
    );
}

#[test]
fn scheme_is_given_to_nodes_named_without_one() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let bare = format!("127.0.0.1:{}", etcd.address(0).port());
    let certificates = tempfile::tempdir().expect("temp dir");
    let ca = common::certificates::make_certificates(certificates.path()).ca;
    let ca = ca.display().to_string();
    let base = [
        "--onetime",
        "--backend",
        "etcd",
        "--node",
        &bare,
        "--client-ca-keys",
        &ca,
    ];

    // A TLS setting makes such nodes https, which this etcd does not speak.
    let run = fixture.run(&base);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&format!("https://{bare}")), "{run:?}");
    assert!(
        run.stderr
            .contains("a node that serves plain HTTP is given as http://"),
        "{run:?}"
    );
    assert!(!fixture.path("app.conf").exists());

    let run = fixture.run(&[base.as_slice(), &["--scheme", "http"]].concat());
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
}

/// How many watches etcd has opened and how many ranges it has been asked for.
fn watches_and_reads(etcd: &Etcd) -> (u64, u64) {
    let metrics = etcd.metrics(0);
    let started = |method: &str| -> u64 {
        metrics
            .lines()
            .filter(|line| {
                line.starts_with("grpc_server_started_total{")
                    && line.contains(&format!("grpc_method=\"{method}\""))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    (started("Watch"), started("Range"))
}

#[test]
fn sighup_keeps_the_etcd_snapshot_reads_nothing_again_and_misses_no_change_made_meanwhile() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    // A change that arrives shows the watch is open.
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "change through the watch",
    );
    let before = watches_and_reads(&etcd);
    assert!(before.0 >= 1 && before.1 >= 1, "{before:?}");

    fixture.template(
        "count.tmpl",
        "{{ gets(key=\"/app/servers/*\") | length }}\n",
    );
    fixture.resource(
        "count",
        "src = \"count.tmpl\"\ndest = \"count.conf\"\nkeys = [\"/app\"]\n",
    );
    daemon.hang_up();
    etcd.put("/app/servers/web3", "10.0.0.3:80");
    common::expect_file(&fixture, &daemon, "count.conf", "3\n", "the new resource");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\nserver web3 10.0.0.3:80\n",
        "the change made during the SIGHUP",
    );
    let log = daemon.log();
    assert!(log.contains("SIGHUP: new settings applied"), "{log}");
    assert!(!log.contains("reading every key again"), "{log}");
    let after = watches_and_reads(&etcd);
    assert_eq!(
        after.1, before.1,
        "no new read of the keys (watches, ranges: {before:?} then {after:?})\n{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_resource_with_its_own_store_runs_beside_the_etcd_resources() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    fixture.template("local.tmpl", "port={{ getv(key=\"/local/port\") }}\n");
    fixture.write("local.yaml", "local:\n  port: 8080\n");
    fixture.write(
        "conf.d/local.toml",
        "[template]\nsrc = \"local.tmpl\"\ndest = \"local.conf\"\nkeys = [\"/local\"]\n\
         [backend]\nbackend = \"file\"\nfile = [\"local.yaml\"]\n",
    );
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "etcd resource",
    );
    assert!(
        wait_for(Duration::from_secs(10), || fixture
            .path("local.conf")
            .exists()),
        "file resource\n{}",
        daemon.log()
    );
    assert_eq!(fixture.read("local.conf"), "port=8080\n");

    // Each store's changes reach its own resources.
    fixture.write("local.yaml", "local:\n  port: 9090\n");
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "etcd change",
    );
    assert!(
        wait_for(Duration::from_secs(10), || fixture.read("local.conf")
            == "port=9090\n"),
        "file change\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// A resource over two prefixes, whose reload records `a=<value> b=<value>` each time.
fn two_prefix_fixture() -> Fixture {
    fixture_over(&["/a", "/b"])
}

/// A confdir with one resource rendering `/a/x` and `/b/x` into `ab.conf` from the prefixes
/// `keys`; its reload appends the file to `reloads`.
fn fixture_over(keys: &[&str]) -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "ab.tmpl",
        "a={{ getv(key=\"/a/x\", default=\"-\") }} b={{ getv(key=\"/b/x\", default=\"-\") }}\n",
    );
    let keys: Vec<String> = keys.iter().map(|key| format!("{key:?}")).collect();
    fixture.resource(
        "ab",
        &format!(
            "src = \"ab.tmpl\"\ndest = \"ab.conf\"\nkeys = [{}]\n\
             reload_cmd = \"cat ab.conf >> {}\"\n",
            keys.join(", "),
            fixture.path("reloads").display()
        ),
    );
    fixture
}

fn wait_for_file(fixture: &Fixture, daemon: &Daemon, name: &str, expected: &str, what: &str) {
    assert!(
        wait_for(Duration::from_secs(60), || {
            std::fs::read_to_string(fixture.path(name)).is_ok_and(|text| text == expected)
        }),
        "{what}\n--- {name}\n{}\n--- log\n{}",
        std::fs::read_to_string(fixture.path(name)).unwrap_or_default(),
        daemon.log()
    );
}

/// Waits until the fixture's reload log ends with `last`, then checks that every reload saw
/// `/a/x` and `/b/x` set by the same transaction: each of them puts one value into both.
fn expect_whole_transactions(fixture: &Fixture, daemon: &Daemon, last: &str) {
    let read = || std::fs::read_to_string(fixture.path("reloads")).unwrap_or_default();
    // The last transaction's reload comes after every earlier one, so once it is logged,
    // every state the daemon rendered is in the log.
    assert!(
        wait_for(Duration::from_secs(60), || read().ends_with(last)),
        "no reload of the last transaction\n--- reloads\n{}\n--- log\n{}",
        read(),
        daemon.log()
    );
    let reloads = read();
    for line in reloads.lines() {
        let values: Vec<&str> = line.split(' ').map(|part| &part[2..]).collect();
        assert_eq!(
            values[0], values[1],
            "a state etcd never had: {line}\n{reloads}"
        );
    }
}

#[test]
fn a_transaction_over_two_prefixes_is_never_rendered_half_applied() {
    let etcd = Etcd::start();
    etcd.put_all(&[("/a/x", "0"), ("/b/x", "0")]);
    let fixture = two_prefix_fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    wait_for_file(&fixture, &daemon, "ab.conf", "a=0 b=0\n", "initial render");
    for n in 1..=30 {
        let n = n.to_string();
        etcd.put_all(&[("/a/x", &n), ("/b/x", &n)]);
    }
    expect_whole_transactions(&fixture, &daemon, "a=30 b=30\n");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn transactions_caught_up_after_a_reconnect_are_rendered_whole() {
    let etcd = Etcd::start();
    etcd.put_all(&[("/a/x", "0"), ("/b/x", "0")]);
    let proxy = common::proxy::Proxy::start(etcd.address(0));
    let fixture = two_prefix_fixture();
    let node = format!("http://{}", proxy.address);
    let daemon = fixture.spawn(&["--watch", "--backend", "etcd", "--node", &node]);
    wait_for_file(&fixture, &daemon, "ab.conf", "a=0 b=0\n", "initial render");

    // Made while the daemon cannot reach etcd, the transactions reach it in the catch-up of
    // the next watch, many revisions to a message.
    proxy.refuse(true);
    proxy.cut();
    for n in 1..=30 {
        let n = n.to_string();
        etcd.put_all(&[("/a/x", &n), ("/b/x", &n)]);
    }
    proxy.refuse(false);
    expect_whole_transactions(&fixture, &daemon, "a=30 b=30\n");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_user_who_may_read_only_the_prefixes_still_watches_them() {
    let mut etcd = Etcd::start();
    etcd.put_all(&[("/a/x", "0"), ("/b/x", "0")]);
    etcd.enable_auth("root", "s3cret");
    // The range covering both prefixes holds /b to /b/x, which this user may not read.
    etcd.add_reader("reader", "r3ad", &["/a", "/b/x"]);
    let fixture = fixture_over(&["/a", "/b/x"]);
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(
        &nodes,
        &["--watch", "--username", "reader", "--password", "r3ad"],
    ));
    wait_for_file(&fixture, &daemon, "ab.conf", "a=0 b=0\n", "initial render");
    for n in 1..=5 {
        let n = n.to_string();
        etcd.put_all(&[("/a/x", &n), ("/b/x", &n)]);
    }
    // Gathered by waiting, which a loaded machine can outlast: only the end is checked.
    wait_for_file(&fixture, &daemon, "ab.conf", "a=5 b=5\n", "watched");
    assert!(
        daemon.log().contains("watching each prefix on its own"),
        "{}",
        daemon.log()
    );
    etcd.put("/b/x", "6");
    wait_for_file(&fixture, &daemon, "ab.conf", "a=5 b=6\n", "still watched");
    assert_eq!(daemon.terminate(), Some(0));

    // A prefix the user may not read is named in the refusal.
    let refused = fixture_over(&["/a", "/c/x"]);
    let run = refused.run(&args(
        &nodes,
        &["--onetime", "--username", "reader", "--password", "r3ad"],
    ));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("range from /c/x: etcdserver: permission denied"),
        "{run:?}"
    );
}

#[test]
fn a_reconnect_neither_misses_nor_replays_changes() {
    let etcd = Etcd::start();
    etcd.put_all(&[("/a/x", "p0"), ("/b/x", "idle")]);
    let proxy = common::proxy::Proxy::start(etcd.address(0));
    let fixture = two_prefix_fixture();
    let node = format!("http://{}", proxy.address);
    let daemon = fixture.spawn(&["--watch", "--backend", "etcd", "--node", &node]);
    wait_for_file(
        &fixture,
        &daemon,
        "ab.conf",
        "a=p0 b=idle\n",
        "initial render",
    );
    for n in 1..=1500 {
        etcd.put("/a/x", &format!("p{n}"));
    }
    wait_for_file(
        &fixture,
        &daemon,
        "ab.conf",
        "a=p1500 b=idle\n",
        "puts rendered",
    );
    let reloaded = |last: &str| {
        assert!(
            wait_for(Duration::from_secs(30), || fixture
                .read("reloads")
                .ends_with(last)),
            "no reload of {last:?}\n{}",
            daemon.log()
        );
    };
    reloaded("a=p1500 b=idle\n");
    let before = fixture.read("reloads");

    // The watch is cut while the /b watcher has seen nothing since the start; the new watch
    // must not replay /a's 1,500 changes, and a change made meanwhile must arrive.
    proxy.cut();
    etcd.put("/b/x", "after");
    wait_for_file(
        &fixture,
        &daemon,
        "ab.conf",
        "a=p1500 b=after\n",
        "change after the cut",
    );
    // A later change, once reloaded, shows every reload since the cut.
    etcd.put("/a/x", "end");
    reloaded("a=end b=after\n");
    let after = fixture.read("reloads");
    assert_eq!(
        &after[before.len()..],
        "a=p1500 b=after\na=end b=after\n",
        "one reload for each new change, none for a replayed one\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_watch_refused_for_an_expired_token_logs_in_again() {
    let mut etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    etcd.enable_auth("root", "s3cret");
    let proxy = common::proxy::Proxy::start(etcd.address(0));
    let fixture = fixture();
    let node = format!("http://{}", proxy.address);
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "etcd",
        "--node",
        &node,
        "--username",
        "root",
        "--password",
        "s3cret",
    ]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    // Tokens live one second from their last use; the watch's was used when the watch
    // opened, and etcd logs each it drops. The helper has used none since it enabled auth.
    assert!(
        wait_for(Duration::from_secs(30), || etcd
            .log(0)
            .contains("deleted a simple token")),
        "the watch's token expired\n{}",
        etcd.log(0)
    );
    proxy.cut();
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "rendered after logging in again",
    );
    let log = daemon.log();
    assert!(
        log.matches("watching again").count() < 5,
        "no storm of new watches\n{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_node_that_stops_answering_is_left_for_another() {
    let mut etcd = Etcd::cluster(3);
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch", "--log-level", "debug"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    let watching = format!("watching 1 prefix on {}", nodes[0]);
    assert!(
        wait_for(Duration::from_secs(10), || daemon.log().contains(&watching)),
        "watching the first member\n{}",
        daemon.log()
    );
    // Stopped, the member keeps its connections open and answers nothing. The watch notices
    // at its next probe (every 20 s, 5 s to answer) and moves on.
    etcd.freeze(0, true);
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    wait_for_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "rendered through another member",
    );
    etcd.freeze(0, false);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn an_etcd_rebuilt_behind_the_revisions_seen_is_read_again() {
    let mut etcd = Etcd::start();
    for n in 0..20 {
        etcd.put("/app/servers/web1", &format!("10.0.0.{n}:80"));
    }
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.19:80\n",
        "initial render",
    );
    etcd.rebuild(0);
    etcd.put("/app/servers/web9", "10.0.0.9:80");
    expect_content(
        &fixture,
        &daemon,
        "server web9 10.0.0.9:80\n",
        "the rebuilt etcd's keys, read again",
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("reading every key again").count(),
        1,
        "read once, then watched\n{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn an_etcd_wiped_after_hundreds_of_changes_is_read_once_and_watched_again() {
    let mut etcd = Etcd::start();
    etcd.put("/app/servers/web1", "v0");
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(&fixture, &daemon, "server web1 v0\n", "initial render");
    // Delivered through the watch, these changes are where the watch would resume.
    for n in 1..=600 {
        etcd.put("/app/servers/web1", &format!("v{n}"));
    }
    expect_content(&fixture, &daemon, "server web1 v600\n", "the puts rendered");

    // The new etcd is empty, at revision 1: once it has been read, the file is empty.
    etcd.rebuild(0);
    wait_for_file(&fixture, &daemon, "app.conf", "", "the empty etcd read");
    etcd.put("/app/servers/web9", "10.0.0.9:80");
    wait_for_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web9 10.0.0.9:80\n",
        "a put after the read",
    );
    // The put came through a watch opened right after the one read, not through reading
    // everything again and again while the watch asks for revisions the new etcd never had.
    let log = daemon.log();
    assert_eq!(
        log.matches("reading every key again").count(),
        1,
        "one full read\n{log}"
    );
    let read = log.find("reading every key again").unwrap_or_default();
    assert!(
        log[read..].contains("read every key at revision 1; watching from there"),
        "watching right after the read\n{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn an_etcd_wiped_and_filled_past_the_revisions_seen_is_read_again() {
    let mut etcd = Etcd::start();
    for n in 1..=3 {
        etcd.put(&format!("/app/servers/old{n}"), "10.0.0.1:80");
    }
    let fixture = fixture();
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server old1 10.0.0.1:80\nserver old2 10.0.0.1:80\nserver old3 10.0.0.1:80\n",
        "initial render",
    );
    // The new etcd's history runs past the revision the daemon saw before it can reconnect,
    // so the watch could resume in it: at the old revision it holds other keys.
    let new_keys: Vec<(String, String)> = (10..30)
        .map(|n| (format!("/app/servers/new{n}"), format!("10.0.1.{n}:80")))
        .collect();
    let pairs: Vec<(&str, &str)> = new_keys
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    etcd.rebuild_filled(0, &pairs);
    let expected: String = (10..30)
        .map(|n| format!("server new{n} 10.0.1.{n}:80\n"))
        .collect();
    expect_content(
        &fixture,
        &daemon,
        &expected,
        "the filled etcd's keys, and only those",
    );
    assert!(
        daemon.log().contains("was etcd rebuilt?"),
        "{}",
        daemon.log()
    );
    etcd.put("/app/servers/new10", "10.0.2.10:80");
    expect_content(
        &fixture,
        &daemon,
        &expected.replace("new10 10.0.1.10:80", "new10 10.0.2.10:80"),
        "a put after the read, through the watch",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_busy_resource_does_not_starve_another() {
    let etcd = Etcd::start();
    etcd.put_all(&[("/sa/x", "0"), ("/sb/x", "0")]);
    let fixture = Fixture::new();
    for name in ["sa", "sb"] {
        fixture.template(
            &format!("{name}.tmpl"),
            &format!("{{{{ getv(key=\"/{name}/x\") }}}}\n"),
        );
    }
    // Each of `a`'s reloads logs both files; the second hangs until the test lets it go.
    fixture.resource(
        "a",
        "src = \"sa.tmpl\"\ndest = \"a.conf\"\nkeys = [\"/sa\"]\n\
         reload_cmd = \"echo a=$(cat a.conf) b=$(cat b.conf) >> a.reloads; \
         if [ -e a.started ]; then touch a.hanging; \
         while [ ! -e a.release ]; do sleep 0.05; done; fi; touch a.started\"\n",
    );
    fixture.resource(
        "b",
        "src = \"sb.tmpl\"\ndest = \"b.conf\"\nkeys = [\"/sb\"]\n",
    );
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    wait_for_file(&fixture, &daemon, "a.conf", "0\n", "initial render");
    wait_for_file(&fixture, &daemon, "b.conf", "0\n", "initial render");
    etcd.put("/sa/x", "1");
    assert!(
        wait_for(Duration::from_secs(30), || fixture
            .path("a.hanging")
            .exists()),
        "a's reload runs\n{}",
        daemon.log()
    );
    // While `a` reloads, `b` changes once, and `a` four more times after it.
    etcd.put("/sb/x", "1");
    for n in 2..=5 {
        etcd.put("/sa/x", &n.to_string());
    }
    fixture.write("a.release", "");
    // The reload of `a`'s last value comes after every earlier one.
    assert!(
        wait_for(Duration::from_secs(30), || fixture
            .read("a.reloads")
            .ends_with("a=5 b=1\n")),
        "a's last change reloaded\n{}\n{}",
        fixture.read("a.reloads"),
        daemon.log()
    );
    // `b` was synced in the first round after `a`'s reload, before `a`'s next reload: it
    // did not wait for `a`'s queue of changes.
    let reloads = fixture.read("a.reloads");
    let seen: Vec<&str> = reloads.lines().collect();
    assert!(
        seen.len() >= 3 && seen[..2] == ["a=0 b=0", "a=1 b=0"] && seen[2].ends_with(" b=1"),
        "{reloads}\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn wait_collapses_fifty_quick_changes_into_one_reload() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web0", "10.0.0.0:80");
    let fixture = fixture();
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\nwait = \"500ms:3s\"\n\
             reload_cmd = \"(cat app.conf; echo --) >> {}\"\n",
            fixture.path("reloads").display()
        ),
    );
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(&fixture, &daemon, "server web0 10.0.0.0:80\n", "first sync");
    for n in 1..=50 {
        etcd.put("/app/servers/web0", &format!("10.0.0.{n}:80"));
    }
    expect_content(
        &fixture,
        &daemon,
        "server web0 10.0.0.50:80\n",
        "the last of 50 values",
    );
    // A later change, once reloaded, shows every reload before it.
    etcd.put("/app/servers/zz", "end");
    let views = reloads_until(
        &fixture,
        &daemon,
        "server web0 10.0.0.50:80\nserver zz end\n",
    );
    assert_eq!(
        views,
        [
            "server web0 10.0.0.0:80\n",
            "server web0 10.0.0.50:80\n",
            "server web0 10.0.0.50:80\nserver zz end\n",
        ],
        "the first sync reloads once, the 50 changes once, seeing the final file"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// Checks that every line of `text` holds the same value for `a` and `b`; `what` names the
/// lines in the failure. Returns how many lines there were.
fn count_whole_states(text: &str, what: &str) -> usize {
    for line in text.lines() {
        let values: Vec<&str> = line.split(' ').map(|part| &part[2..]).collect();
        assert_eq!(values[0], values[1], "a torn {what}: {line}");
    }
    text.lines().count()
}

#[test]
fn two_thousand_transactions_are_never_staged_or_read_torn() {
    const TRANSACTIONS: usize = 2000;
    let etcd = Etcd::start();
    etcd.put_all(&[("/a/x", "0"), ("/b/x", "0")]);
    let fixture = two_prefix_fixture();
    // The check sees every version staged, before it may replace the destination.
    let staged = fixture.path("staged");
    fixture.resource(
        "ab",
        &format!(
            "src = \"ab.tmpl\"\ndest = \"ab.conf\"\nkeys = [\"/a\", \"/b\"]\n\
             check_cmd = \"cat {{{{.src}}}} >> {}\"\n",
            staged.display()
        ),
    );
    let nodes = etcd.endpoints();
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    wait_for_file(&fixture, &daemon, "ab.conf", "a=0 b=0\n", "initial render");

    // A reader reads the destination as fast as it can until the writes are over.
    let destination = fixture.path("ab.conf");
    let done = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let done = Arc::clone(&done);
        move || {
            let mut reads = 0;
            while !done.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&destination).expect("the destination");
                reads += count_whole_states(&text, "read");
            }
            reads
        }
    });
    for n in 1..=TRANSACTIONS {
        let n = n.to_string();
        etcd.put_all(&[("/a/x", &n), ("/b/x", &n)]);
    }
    let last = format!("a={TRANSACTIONS} b={TRANSACTIONS}\n");
    let arrived = wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(fixture.path("ab.conf")).is_ok_and(|text| text == last)
    });
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("no torn read");
    assert!(arrived, "the last transaction\n{}", daemon.log());
    let staged = std::fs::read_to_string(&staged).expect("staged versions");
    let versions = count_whole_states(&staged, "staged version");
    assert!(staged.ends_with(&last), "{staged}");
    assert!(versions >= 2 && reads >= 1);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_daemon_over_ten_prefixes_sees_a_change_after_every_start() {
    const PREFIXES: usize = 10;
    let etcd = Etcd::start();
    let fixture = Fixture::new();
    fixture.template("one.tmpl", "{{ getv(key=\"/x\", default=\"-\") }}\n");
    for prefix in 0..PREFIXES {
        fixture.resource(
            &format!("p{prefix}"),
            &format!(
                "src = \"one.tmpl\"\ndest = \"p{prefix}.conf\"\nprefix = \"/p{prefix}\"\n\
                 keys = [\"/x\"]\n"
            ),
        );
    }
    let set_all = |value: &str| {
        let keys: Vec<String> = (0..PREFIXES)
            .map(|prefix| format!("/p{prefix}/x"))
            .collect();
        let pairs: Vec<(&str, &str)> = keys.iter().map(|key| (key.as_str(), value)).collect();
        etcd.put_all(&pairs);
    };
    let nodes = etcd.endpoints();
    for start in 0..20 {
        let before = format!("before {start}");
        set_all(&before);
        let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
        for prefix in 0..PREFIXES {
            let file = format!("p{prefix}.conf");
            wait_for_file(
                &fixture,
                &daemon,
                &file,
                &format!("{before}\n"),
                "first render",
            );
        }
        // Made while the watch may still be opening: it starts right after the first read.
        let after = format!("after {start}");
        set_all(&after);
        for prefix in 0..PREFIXES {
            let file = format!("p{prefix}.conf");
            wait_for_file(&fixture, &daemon, &file, &format!("{after}\n"), "watched");
        }
        assert_eq!(daemon.terminate(), Some(0));
    }
}

/// A history compacted while the proxy was down: the proxy passes etcd's refusal on in words
/// of its own, and the daemon still reads everything again rather than retrying for ever.
#[test]
fn compaction_seen_through_the_grpc_proxy_reads_everything_again() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let mut proxy = GrpcProxy::start(&etcd);
    let fixture = fixture();
    let nodes = vec![proxy.endpoint()];
    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "watched through the proxy",
    );
    proxy.restart_after(|| {
        etcd.put("/app/servers/web2", "10.0.0.2:80");
        etcd.delete("/app/servers/web1");
        etcd.compact(etcd.revision());
    });
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "read again after the compaction",
    );
    assert!(daemon.log().contains("compacted"), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0), "{}", proxy.log());
}

#[test]
fn etcds_grpc_proxy_serves_onetime_runs_and_watches_across_its_restart() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let mut proxy = GrpcProxy::start(&etcd);
    let fixture = fixture();
    let nodes = vec![proxy.endpoint()];
    let run = fixture.run(&args(&nodes, &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");

    let daemon = fixture.spawn(&args(&nodes, &["--watch"]));
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "watched through the proxy",
    );
    proxy.restart();
    etcd.put("/app/servers/web3", "10.0.0.3:80");
    etcd.delete("/app/servers/web1");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\nserver web3 10.0.0.3:80\n",
        "watched again after the proxy's restart",
    );
    let log = daemon.log();
    assert!(
        !log.contains("reading every key again"),
        "the watch resumed, nothing was read again\n{log}"
    );
    assert_eq!(daemon.terminate(), Some(0), "{}", proxy.log());
}
