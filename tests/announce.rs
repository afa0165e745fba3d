//! `reconfd announce` against real etcd, Redis and ZooKeeper servers and the Consul stand-in:
//! two announcers (`h1`, `h2`) keep `/services/crate/<host>` = `<host>:4300` while a file
//! says they are healthy, and a watching reconfd renders the Crate host list
//! (`h1:4300,h2:4300`) from them, as the seeds' sidekick setup does. The list follows a
//! failing and recovering check, a SIGTERM, a SIGKILL (once the TTL has run out) and, for
//! etcd, a restart of the store; `/status` and `/metrics` show each announcement's state; a
//! store that cannot bind a key to a lifetime refuses to announce.

mod common;

use std::time::Duration;

use common::consul::Consul;
use common::etcd::{Etcd, free_port};
use common::redis::Redis;
use common::zookeeper::Zookeeper;
use common::{Daemon, Fixture, expect_file, get, wait_for};

/// The watching reconfd's resource: the announced hosts, joined as Crate's unicast list.
const HOSTS_TEMPLATE: &str = "{{ getvs(key=\"/services/crate/*\") | join(sep=\",\") }}";

/// A watching reconfd rendering the host list into `crate.conf`.
fn watcher(store: &[String]) -> (Fixture, Daemon) {
    let fixture = Fixture::new();
    fixture.template("crate.tmpl", HOSTS_TEMPLATE);
    fixture.resource(
        "crate",
        "src = \"crate.tmpl\"\ndest = \"crate.conf\"\nkeys = [\"/services/crate\"]\n",
    );
    let mut args = vec!["--watch"];
    args.extend(store.iter().map(String::as_str));
    let daemon = fixture.spawn(&args);
    (fixture, daemon)
}

/// One host's announcer, healthy while its fixture holds a `healthy` file.
struct Host {
    name: &'static str,
    fixture: Fixture,
}

impl Host {
    fn new(name: &'static str) -> Host {
        let host = Host {
            name,
            fixture: Fixture::new(),
        };
        host.set_healthy(true);
        host
    }

    fn set_healthy(&self, healthy: bool) {
        let path = self.fixture.path("healthy");
        if healthy {
            std::fs::write(path, "").expect("healthy");
        } else {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Starts `reconfd announce` for this host, the store's flags after the subcommand.
    fn announce(&self, ttl: &str, store: &[String], extra: &[&str]) -> Daemon {
        let key = format!("/services/crate/{}", self.name);
        let value = format!("{}:4300", self.name);
        let check = format!("test -e {}", self.fixture.path("healthy").display());
        let mut args = vec![
            "announce",
            "--key",
            &key,
            "--value",
            &value,
            "--ttl",
            ttl,
            "--check",
            &check,
            "--check-interval",
            "200ms",
        ];
        args.extend(store.iter().map(String::as_str));
        args.extend_from_slice(extra);
        self.fixture.spawn(&args)
    }
}

/// Sends SIGKILL, as a crash or a lost host would end reconfd.
fn kill(mut daemon: Daemon) {
    daemon.child.kill().expect("SIGKILL");
    daemon.child.wait().expect("wait");
}

/// A TTL longer than the tests' guard timeouts: a key announced with it goes within the test
/// only if reconfd withdraws it.
const LONG_TTL: &str = "60s";

/// The scenario every store goes through: both hosts announced; h1's check fails and passes
/// again; h2 stops with SIGTERM (exit 0) and comes back; h2, announced with `short_ttl`, is
/// killed and its key goes once the TTL has run out. Returns h1 (with its announcer) and the
/// watcher, with the list at `h1:4300`.
fn follow_checks_sigterm_and_sigkill(
    store: &[String],
    short_ttl: &str,
) -> (Host, Daemon, Fixture, Daemon) {
    let (watched, watcher) = watcher(store);
    let (h1, h2) = (Host::new("h1"), Host::new("h2"));
    let one = h1.announce(LONG_TTL, store, &[]);
    let two = h2.announce(LONG_TTL, store, &[]);
    let expect = |list: &str, what: &str| expect_file(&watched, &watcher, "crate.conf", list, what);
    expect("h1:4300,h2:4300", "both hosts announced");

    h1.set_healthy(false);
    expect("h2:4300", "h1 withdrawn while its check fails");
    assert!(
        one.log().contains("check failing; withdrawn"),
        "{}",
        one.log()
    );
    h1.set_healthy(true);
    expect("h1:4300,h2:4300", "h1 back once its check passes");

    assert_eq!(two.terminate(), Some(0), "SIGTERM withdraws and exits 0");
    expect("h1:4300", "h2 withdrawn by SIGTERM");
    let two = h2.announce(short_ttl, store, &[]);
    expect("h1:4300,h2:4300", "h2 announced again");
    kill(two);
    expect("h1:4300", "h2 gone once its TTL ran out after SIGKILL");
    (h1, one, watched, watcher)
}

fn store_args(backend: &str, node: &str) -> Vec<String> {
    vec![
        "--backend".to_string(),
        backend.to_string(),
        "--node".to_string(),
        node.to_string(),
    ]
}

#[test]
fn etcd_announcements_follow_checks_signals_and_a_restart() {
    let mut etcd = Etcd::start();
    let store = store_args("etcd", &etcd.endpoint(0));
    let (h1, one, watched, watcher) = follow_checks_sigterm_and_sigkill(&store, "2s");
    let expect = |list: &str, what: &str| expect_file(&watched, &watcher, "crate.conf", list, what);

    etcd.restart(0);
    h1.set_healthy(false);
    expect("", "h1 withdrawn after etcd's restart");
    h1.set_healthy(true);
    expect("h1:4300", "h1 announced again after etcd's restart");

    // A wiped etcd has forgotten the lease: the announcer registers the key again.
    etcd.rebuild(0);
    let registered_again = wait_for(Duration::from_secs(30), || {
        one.log()
            .contains("the key was removed); registering it again")
    });
    assert!(registered_again, "{}", one.log());
    expect("h1:4300", "h1 announced in the wiped etcd");
}

#[test]
fn etcd_announcements_show_in_status_and_metrics() {
    let etcd = Etcd::start();
    let store = store_args("etcd", &etcd.endpoint(0));
    let (watched, watcher) = watcher(&store);
    let h1 = Host::new("h1");
    let listen = format!("127.0.0.1:{}", free_port());
    let one = h1.announce("2s", &store, &["--listen", &listen]);
    expect_file(&watched, &watcher, "crate.conf", "h1:4300", "h1 announced");
    let up = format!(
        "reconfd_announcement_up{{key=\"/services/crate/h1\",store=\"etcd {}\"}}",
        etcd.endpoint(0)
    );
    let metric = |value: &str| {
        wait_for(Duration::from_secs(30), || {
            get(&format!("http://{listen}/metrics"))
                .1
                .contains(&format!("{up} {value}"))
        })
    };
    assert!(
        metric("1"),
        "{}",
        get(&format!("http://{listen}/metrics")).1
    );
    assert_eq!(
        get(&format!("http://{listen}/ready")),
        (200, "ready\n".to_string())
    );
    // Someone deletes the key while the lease lives: the next renewal puts it back.
    etcd.delete("/services/crate/h1");
    let registered_again = wait_for(Duration::from_secs(30), || {
        one.log()
            .contains("the key was removed); registering it again")
    });
    assert!(registered_again, "{}", one.log());
    expect_file(&watched, &watcher, "crate.conf", "h1:4300", "h1 put back");
    h1.set_healthy(false);
    expect_file(&watched, &watcher, "crate.conf", "", "h1 withdrawn");
    assert!(
        metric("0"),
        "{}",
        get(&format!("http://{listen}/metrics")).1
    );
    let (code, status) = get(&format!("http://{listen}/status"));
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let announcement = &status["announcements"][0];
    assert_eq!(announcement["key"], "/services/crate/h1", "{status}");
    assert_eq!(announcement["state"], "check-failing", "{status}");
    drop(one);
}

#[test]
fn announce_is_not_ready_until_the_store_has_taken_the_key() {
    // Nothing listens on this port: the store never answers.
    let store = store_args("etcd", &format!("http://127.0.0.1:{}", free_port()));
    let h1 = Host::new("h1");
    let listen = format!("127.0.0.1:{}", free_port());
    let one = h1.announce(LONG_TTL, &store, &["--listen", &listen]);
    let refused = wait_for(Duration::from_secs(30), || {
        one.log().contains("/services/crate/h1: the etcd store")
    });
    assert!(refused, "{}", one.log());
    let (code, why) = get(&format!("http://{listen}/ready"));
    assert_eq!(code, 503, "{why}");
    assert!(
        why.contains("announcement /services/crate/h1 not in place yet"),
        "{why}"
    );
    assert_eq!(get(&format!("http://{listen}/health")).0, 200);
    drop(one);
}

#[test]
fn announce_asks_a_store_that_refuses_the_credentials_again_slowly() {
    let mut etcd = Etcd::start();
    etcd.enable_auth("root", "s3cret");
    let mut store = store_args("etcd", &etcd.endpoint(0));
    store.extend(["--username", "root", "--password", "wrong"].map(String::from));
    let h1 = Host::new("h1");
    let listen = format!("127.0.0.1:{}", free_port());
    let one = h1.announce(LONG_TTL, &store, &["--listen", &listen]);
    let refused = || {
        one.log()
            .lines()
            .find(|line| line.contains("refused the credentials"))
            .map(str::to_string)
    };
    assert!(
        wait_for(Duration::from_secs(30), || refused().is_some()),
        "{}",
        one.log()
    );
    let line = refused().unwrap_or_default();
    assert!(
        line.contains("less often while it refuses, at least every 1m"),
        "{line}"
    );
    let (code, why) = get(&format!("http://{listen}/ready"));
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("the store fails: "), "{why}");
    assert!(!why.contains("wrong"), "the password is masked: {why}");
    drop(one);
}

#[test]
fn a_daemon_renders_and_announces_from_its_settings_file() {
    let etcd = Etcd::start();
    let store = store_args("etcd", &etcd.endpoint(0));
    let (watched, watcher) = watcher(&store);
    let sidecar = Fixture::new();
    sidecar.template("crate.tmpl", HOSTS_TEMPLATE);
    sidecar.resource(
        "crate",
        "src = \"crate.tmpl\"\ndest = \"crate.conf\"\nkeys = [\"/services/crate\"]\n",
    );
    sidecar.write(
        "reconfd.toml",
        "backend = \"etcd\"\n\
         watch = true\n\
         [[announce]]\n\
         key = \"/services/crate/h3\"\n\
         value = \"h3:4300\"\n\
         ttl = \"2s\"\n",
    );
    let daemon = sidecar.spawn(&["--node", &etcd.endpoint(0)]);
    expect_file(
        &sidecar,
        &daemon,
        "crate.conf",
        "h3:4300",
        "the sidecar renders its own key",
    );
    expect_file(&watched, &watcher, "crate.conf", "h3:4300", "others see it");
    assert_eq!(daemon.terminate(), Some(0));
    expect_file(
        &watched,
        &watcher,
        "crate.conf",
        "",
        "withdrawn as the sidecar stops",
    );
}

#[test]
fn redis_announcements_follow_checks_and_signals() {
    let redis = Redis::start();
    let store = store_args("redis", &redis.url());
    follow_checks_sigterm_and_sigkill(&store, "2s");
}

#[test]
fn zookeeper_announcements_follow_checks_and_signals() {
    let zookeeper = Zookeeper::start();
    let store = store_args("zookeeper", &zookeeper.node());
    follow_checks_sigterm_and_sigkill(&store, "2s");
}

#[test]
fn consul_announcements_follow_checks_and_signals() {
    let consul = Consul::start(None);
    let store = store_args("consul", &consul.url());
    follow_checks_sigterm_and_sigkill(&store, "10s");
    assert_eq!(consul.sessions(), 1, "only h1's session is left");
}

#[test]
fn stores_that_cannot_bind_a_key_to_a_lifetime_refuse_to_announce() {
    let fixture = Fixture::new();
    fixture.write("data.yaml", "a: 1\n");
    let run = fixture.run(&[
        "announce",
        "--key",
        "/services/crate/h1",
        "--value",
        "h1:4300",
        "--ttl",
        "10s",
        "--backend",
        "file",
        "--file",
        "data.yaml",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("the file store cannot bind a key to a lifetime"),
        "{run:?}"
    );
    let run = fixture.run(&[
        "announce",
        "--key",
        "/services/crate/h1",
        "--value",
        "h1:4300",
        "--ttl",
        "2s",
        "--backend",
        "consul",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("from 10s to 24h"), "{run:?}");
    // An announcement lasts while its announcer runs: one pass of it is refused.
    let run = fixture.run(&[
        "announce",
        "--key",
        "/services/crate/h1",
        "--value",
        "h1:4300",
        "--ttl",
        "10s",
        "--onetime",
        "--backend",
        "etcd",
        "--node",
        "http://127.0.0.1:9",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--onetime does not apply"), "{run:?}");
}
