//! The Consul store, against the in-repo stand-in of `tests/common/consul.rs`: Consul cannot be
//! installed on this machine, so these tests run against a server that follows Consul's
//! documented HTTP API (KV with blocking queries and per-endpoint `X-Consul-Index`, empty
//! values as `null`, the catalog with its `consul` service and the health endpoint, ACL tokens
//! that refuse or filter, datacenters) instead of a real agent; the last test checks the
//! stand-in itself against those documented shapes. A token the agent stops accepting while
//! reconfd watches, or an answer its ACLs filtered, is a refusal, logged as one.

mod common;

use std::time::Duration;

use common::consul::Consul;
use common::{Fixture, Run, expect_file, wait_for};

fn args<'a>(consul: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--backend", "consul", "--node", consul];
    args.extend_from_slice(extra);
    args
}

/// A resource rendering `/app/servers/*` into `app.conf`.
fn kv_fixture() -> Fixture {
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
fn onetime_reads_the_kv_store_with_a_token_and_a_datacenter() {
    let consul = Consul::start(Some("s3cret"));
    consul.put("app/servers/web1", "10.0.0.1:80");
    consul.put("app/servers/web2", "10.0.0.2:80");
    consul.put("other/key", "not mine");
    let fixture = kv_fixture();
    let url = consul.url();
    let run = fixture.run(&args(
        &url,
        &["--onetime", "--auth-token", "s3cret", "--datacenter", "dc1"],
    ));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n"
    );

    let run = fixture.run(&args(&url, &["--onetime", "--auth-token", "wrong"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("ACL not found"), "{run:?}");
    assert!(run.stderr.contains(&url), "names the agent: {run:?}");

    // The token can also come from Consul's own variable.
    let run = Run::from(
        fixture
            .command(&args(&url, &["--onetime"]))
            .env("CONSUL_HTTP_TOKEN", "s3cret")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn basic_auth_sends_the_user_to_a_proxy_in_front_as_confd_does() {
    let consul = Consul::start(None);
    consul.put("app/servers/web1", "10.0.0.1:80");
    consul.require_basic_auth("ops", "pr0xy");
    let fixture = kv_fixture();
    let url = consul.url();
    let user = ["-username", "ops", "-password", "pr0xy"];

    // As in confd, the user and password go only with -basic-auth.
    let run = fixture.run(&args(&url, &[&["-onetime"], user.as_slice()].concat()));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("--username and --password are sent only with --basic-auth"),
        "{run:?}"
    );
    assert!(run.stderr.contains("401"), "{run:?}");
    assert!(!fixture.path("app.conf").exists());

    let run = fixture.run(&args(
        &url,
        &[&["-onetime", "-basic-auth"], user.as_slice()].concat(),
    ));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    assert!(!run.stderr.contains("pr0xy"), "{run:?}");

    // Basic authentication without a user to send is a settings error.
    let run = fixture.run(&args(&url, &["-onetime", "-basic-auth"]));
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("no `username` (--username)"), "{run:?}");
}

#[test]
fn watch_follows_kv_changes_and_an_agent_restart() {
    let mut consul = Consul::start(None);
    consul.put("app/servers/web1", "10.0.0.1:80");
    let fixture = kv_fixture();
    let url = consul.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\n",
        "initial",
    );
    consul.put("app/servers/web2", "10.0.0.2:80");
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "put",
    );
    consul.delete("app/servers/web1");
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web2 10.0.0.2:80\n",
        "delete",
    );

    // A change made while the agent is down is picked up once it is back, at an index below
    // the one the watch held (its data restored from a snapshot).
    consul.stop();
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("consul store unavailable")),
        "the agent's absence noticed\n{}",
        daemon.log()
    );
    consul.put("app/servers/web3", "10.0.0.3:80");
    let before = consul.index();
    consul.restart();
    assert!(consul.index() < before, "the index went backwards");
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web2 10.0.0.2:80\nserver web3 10.0.0.3:80\n",
        "change across the restart",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// The scenario of a monitoring box going down and coming back: an instance whose health
/// check fails leaves the rendered file, and returns when the check passes again.
#[test]
fn instances_follow_their_health_checks() {
    let consul = Consul::start(None);
    consul.register("web-1", "web", "node1", "10.0.0.1", 8080);
    consul.register("web-2", "web", "node2", "10.0.0.2", 8080);
    consul.register("db-1", "db", "node3", "10.0.0.3", 5432);
    let fixture = Fixture::new();
    fixture.template(
        "lb.tmpl",
        "{% for s in service(name=\"web\") %}server {{ s.node }} {{ s.address }}:{{ s.port }}\n{% endfor %}",
    );
    fixture.resource(
        "lb",
        "src = \"lb.tmpl\"\ndest = \"lb.conf\"\nkeys = [\"/_consul/services/web\"]\n",
    );
    fixture.template(
        "all.tmpl",
        "{% for s in services() %}{{ s.name }}:{{ s.tags | join(sep=\",\") }}\n{% endfor %}",
    );
    fixture.resource(
        "all",
        "src = \"all.tmpl\"\ndest = \"all.conf\"\nkeys = [\"/_consul/services\"]\n",
    );
    let url = consul.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    let both = "server node1 10.0.0.1:8080\nserver node2 10.0.0.2:8080\n";
    expect_file(&fixture, &daemon, "lb.conf", both, "both healthy");
    // Every cluster lists its servers as the service `consul`, without tags.
    expect_file(
        &fixture,
        &daemon,
        "all.conf",
        "consul:\ndb:http\nweb:http\n",
        "services()",
    );

    consul.set_passing("web-1", false);
    expect_file(
        &fixture,
        &daemon,
        "lb.conf",
        "server node2 10.0.0.2:8080\n",
        "the failing instance leaves",
    );
    consul.set_passing("web-1", true);
    expect_file(
        &fixture,
        &daemon,
        "lb.conf",
        both,
        "it comes back when it passes",
    );
    consul.deregister("web-2");
    expect_file(
        &fixture,
        &daemon,
        "lb.conf",
        "server node1 10.0.0.1:8080\n",
        "a deregistered instance leaves",
    );
    consul.deregister("db-1");
    expect_file(
        &fixture,
        &daemon,
        "all.conf",
        "consul:\nweb:http\n",
        "a deregistered service",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_token_refused_while_watching_is_logged_as_such_and_the_file_stays_until_it_is_accepted() {
    let consul = Consul::start(Some("s3cret"));
    consul.put("app/servers/web1", "10.0.0.1:80");
    let fixture = kv_fixture();
    let url = consul.url();
    let daemon = fixture.spawn(&args(&url, &["--watch", "--auth-token", "s3cret"]));
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\n",
        "initial render",
    );

    // The token is replaced; the query already waiting still answers this change.
    assert!(
        wait_for(Duration::from_secs(30), || consul.blocking_queries() > 0),
        "the watch follows the agent\n{}",
        daemon.log()
    );
    consul.set_token(Some("rotated"));
    consul.put("app/servers/web2", "10.0.0.2:80");
    let both = "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n";
    expect_file(&fixture, &daemon, "app.conf", both, "the answer in flight");
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("consul store refused the credentials")),
        "the refusal is logged as one\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(log.contains("ACL not found"), "{log}");
    assert!(!log.contains("unavailable"), "{log}");
    consul.put("app/servers/web3", "10.0.0.3:80");
    assert_eq!(fixture.read("app.conf"), both, "nothing read while refused");

    consul.set_token(Some("s3cret"));
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\nserver web3 10.0.0.3:80\n",
        "read once the token is accepted again",
    );
    let log = daemon.log();
    assert_eq!(log.matches("refused the credentials").count(), 1, "{log}");
    assert_eq!(
        log.matches("accepts the credentials again").count(),
        1,
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// A key holding the empty string comes back with a null value, which is still a key; a folder
/// (a key ending in `/`) is not. The root prefix reads the whole KV store.
#[test]
fn an_empty_value_is_a_key_and_a_folder_is_not_even_from_the_root() {
    let consul = Consul::start(None);
    consul.put("app/servers/web1", "10.0.0.1:80");
    consul.put("app/maintenance", "");
    consul.put("app/servers/", "");
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% if exists(key=\"/app/maintenance\") %}maintenance=[{{ getv(key=\"/app/maintenance\") }}]\n{% endif %}\
         {% for key in ls(key=\"/app/servers\") %}server {{ key }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/\"]\n",
    );
    let url = consul.url();
    let run = fixture.run(&args(&url, &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "maintenance=[]\nserver web1\n");
}

/// With the anonymous token or a token that may not read everything asked for, Consul does
/// not refuse: it answers 404 for KV and `{}` for the catalog, with
/// `X-Consul-Results-Filtered-By-ACLs: true`. That is a refusal, never "no keys" or "no
/// servers": the rendered file stays and the log names the ACLs and where the token came from.
#[test]
fn answers_filtered_by_the_acls_are_refusals_and_the_files_stay() {
    let consul = Consul::start(Some("root"));
    consul.put("app/servers/web1", "10.0.0.1:80");
    consul.register("web-1", "web", "node1", "10.0.0.1", 8080);
    consul.add_token("kv-only", &["app/"], &[]);
    let fixture = kv_fixture();
    fixture.template(
        "lb.tmpl",
        "{% for s in service(name=\"web\") %}server {{ s.node }} {{ s.address }}:{{ s.port }}\n{% endfor %}",
    );
    fixture.resource(
        "lb",
        "src = \"lb.tmpl\"\ndest = \"lb.conf\"\nkeys = [\"/_consul/services/web\"]\n",
    );
    let url = consul.url();
    let run = fixture.run(&args(&url, &["--onetime", "--auth-token", "root"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let servers = "server web1 10.0.0.1:80\n";
    let lb = "server node1 10.0.0.1:8080\n";
    assert_eq!(fixture.read("app.conf"), servers);
    assert_eq!(fixture.read("lb.conf"), lb);

    // No token: the anonymous token sees nothing.
    let run = fixture.run(&args(&url, &["--onetime"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("consul store refused the credentials"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("the ACLs hid part of the answer"),
        "{run:?}"
    );
    assert!(run.stderr.contains("anonymous token"), "{run:?}");
    assert_eq!(fixture.read("app.conf"), servers, "the file stays");
    assert_eq!(fixture.read("lb.conf"), lb, "the file stays");

    // A token that reads the keys but no service: the catalog comes back filtered.
    let run = Run::from(
        fixture
            .command(&args(&url, &["--onetime"]))
            .env("CONSUL_HTTP_TOKEN", "kv-only")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("/v1/catalog/services"), "{run:?}");
    assert!(run.stderr.contains("CONSUL_HTTP_TOKEN"), "{run:?}");
    assert_eq!(fixture.read("lb.conf"), lb, "no empty server list");

    // A watch whose token loses its rights keeps the file and says why.
    let daemon = fixture.spawn(&args(&url, &["--watch", "--auth-token", "root"]));
    expect_file(&fixture, &daemon, "lb.conf", lb, "watching");
    consul.set_token(Some("rotated"));
    consul.add_token("root", &["app/"], &[]);
    consul.register("web-2", "web", "node2", "10.0.0.2", 8080);
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("the ACLs hid part of the answer")),
        "the filtered answer is a refusal\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("auth_token"), "{}", daemon.log());
    assert_eq!(fixture.read("lb.conf"), lb, "no empty server list");
    assert_eq!(daemon.terminate(), Some(0));
}

/// The stand-in itself answers with the shapes Consul's HTTP API documents.
#[test]
fn the_stand_in_answers_as_consul_documents() {
    let mut consul = Consul::start(Some("root"));
    consul.put("app/a", "1");
    consul.put("app/empty", "");
    consul.put("other/b", "2");
    consul.register("web-1", "web", "node1", "10.0.0.1", 8080);
    consul.register("web-2", "web", "node2", "10.0.0.2", 8080);
    consul.set_passing("web-2", false);
    consul.add_token("app-reader", &["app/"], &["web"]);
    let client = common::etcd::http_client();
    let url = consul.url();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(format!("{url}{path}"));
        if let Some(token) = token {
            request = request.header("X-Consul-Token", token);
        }
        let response = request.send().expect("answers");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().expect("text").to_string())
        };
        let headers = (
            header("X-Consul-Index").map(|index| index.parse::<u64>().expect("a number")),
            header("X-Consul-Results-Filtered-By-ACLs"),
            header("Content-Type"),
            header("X-Consul-KnownLeader"),
        );
        let status = response.status().as_u16();
        let body = response.text().expect("body");
        (status, headers, body)
    };
    let json = |body: &str| serde_json::from_str::<serde_json::Value>(body).expect("JSON");

    // The root prefix, empty values as null, JSON with a known leader.
    let (status, (index, filtered, content_type, leader), body) =
        get("/v1/kv/?recurse", Some("root"));
    assert_eq!(status, 200);
    let entries = json(&body);
    let keys: Vec<&str> = entries
        .as_array()
        .expect("entries")
        .iter()
        .map(|entry| entry["Key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["app/a", "app/empty", "other/b"]);
    assert!(entries[1]["Value"].is_null(), "{body}");
    assert_eq!(entries[0]["Value"], "MQ==");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(leader.as_deref(), Some("true"));
    assert_eq!(filtered, None);
    let root_index = index.expect("an index");

    // Each endpoint has its own index: a change elsewhere does not move `app`'s.
    let (_, (app_index, ..), _) = get("/v1/kv/app?recurse", Some("root"));
    consul.put("other/c", "3");
    let (_, (still, ..), _) = get("/v1/kv/app?recurse", Some("root"));
    assert_eq!(app_index, still);
    let (_, (moved, ..), _) = get("/v1/kv/?recurse", Some("root"));
    assert!(moved.expect("an index") > root_index);
    // A delete moves the index on (a tombstone), it does not take it back.
    consul.delete("app/a");
    let (_, (after_delete, ..), _) = get("/v1/kv/app?recurse", Some("root"));
    assert!(after_delete > app_index);

    // ACLs: an unknown token is refused; a token that may read part of an answer gets that
    // part, marked as filtered; the anonymous token gets 404 and `{}`, marked too.
    let (status, _, body) = get("/v1/kv/app?recurse", Some("nobody"));
    assert_eq!((status, body.as_str()), (403, "ACL not found"));
    let (status, (_, filtered, ..), body) = get("/v1/kv/?recurse", Some("app-reader"));
    assert_eq!(status, 200);
    assert_eq!(filtered.as_deref(), Some("true"));
    assert!(!body.contains("other/"), "{body}");
    let (status, (_, filtered, ..), _) = get("/v1/kv/app?recurse", None);
    assert_eq!((status, filtered.as_deref()), (404, Some("true")));
    let (status, _, _) = get("/v1/kv/app/empty", None);
    assert_eq!(status, 403, "a single key is refused, not filtered");
    let (_, (_, filtered, ..), body) = get("/v1/catalog/services", None);
    assert_eq!((body.as_str(), filtered.as_deref()), ("{}", Some("true")));
    let (_, (_, filtered, ..), body) = get("/v1/health/service/web", None);
    assert_eq!((body.as_str(), filtered.as_deref()), ("[]", Some("true")));

    // The catalog lists `consul`; health entries carry their checks' IDs, names and output;
    // `?passing` keeps the instances whose checks all pass.
    let (_, (services_index, filtered, ..), body) = get("/v1/catalog/services", Some("root"));
    assert_eq!(filtered, None);
    assert_eq!(
        json(&body),
        serde_json::json!({"consul": [], "web": ["http"]})
    );
    let (_, _, body) = get("/v1/catalog/services", Some("app-reader"));
    assert_eq!(json(&body), serde_json::json!({"web": ["http"]}));
    let (_, _, body) = get("/v1/health/service/web", Some("root"));
    let health = json(&body);
    assert_eq!(health.as_array().expect("entries").len(), 2);
    let check = &health[1]["Checks"][1];
    assert_eq!(check["ServiceID"], "web-2");
    assert_eq!(check["Status"], "critical");
    assert!(
        check["Name"].is_string() && check["Output"].is_string(),
        "{check}"
    );
    let (_, _, body) = get("/v1/health/service/web?passing", Some("root"));
    let passing = json(&body);
    assert_eq!(passing.as_array().expect("entries").len(), 1);
    assert_eq!(passing[0]["Service"]["ID"], "web-1");

    // A blocking query waits for its own endpoint's index to pass the one given.
    let (_, (health_index, ..), _) = get("/v1/health/service/web", Some("root"));
    let health_index = health_index.expect("an index");
    let (_, (index, ..), _) = get(
        &format!("/v1/health/service/web?index={health_index}&wait=10ms"),
        Some("root"),
    );
    assert_eq!(
        index,
        Some(health_index),
        "nothing changed: the wait ran out"
    );

    // Back from a snapshot, the indexes are lower than a client may hold.
    let raft_before = consul.index();
    consul.restart();
    assert!(consul.index() < raft_before);
    let (_, (services_after, ..), _) = get("/v1/catalog/services", Some("root"));
    assert!(
        services_after <= services_index,
        "{services_after:?} {services_index:?}"
    );
    let (_, (kv_after, ..), _) = get("/v1/kv/?recurse", Some("root"));
    assert!(kv_after < moved, "{kv_after:?} {moved:?}");
}
