//! Values that are not UTF-8, in every store: the resource whose keys cover such a value fails
//! naming the key and leaves its destination as it is, while another resource of the same run
//! is written; in watch mode a later valid value mends it. A data file that is not UTF-8 is an
//! error naming the file, and a Vault answer that is not JSON an error of the read.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use common::consul::Consul;
use common::etcd::{Etcd, http_client};
use common::nats::{BUCKET, Nats};
use common::redis::Redis;
use common::zookeeper::Zookeeper;
use common::{Fixture, Run, expect_file, wait_for};

/// A value whose fourth byte (offset 3) is not UTF-8.
const BAD: &[u8] = b"abc\xffdef";

/// What the failing resource's error says about `key` holding [`BAD`].
fn fault(key: &str) -> String {
    format!("key {key}: value is not valid UTF-8 (byte 0xff at offset 3)")
}

/// A confdir with two resources: `svc` renders the keys under `/svc` into `svc.conf`, which
/// already holds `old`; `other` renders `/other/b` into `other.conf`.
fn fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "svc.tmpl",
        "{% for kv in gets(key=\"/svc/*\") %}{{ kv.key }}={{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "svc",
        "src = \"svc.tmpl\"\ndest = \"svc.conf\"\nkeys = [\"/svc\"]\n",
    );
    fixture.template("other.tmpl", "b={{ getv(key=\"/other/b\") }}\n");
    fixture.resource(
        "other",
        "src = \"other.tmpl\"\ndest = \"other.conf\"\nkeys = [\"/other\"]\n",
    );
    fixture.write("svc.conf", "old\n");
    fixture
}

/// A onetime run over a store holding [`BAD`] under `bad_key` and `b` at `/other/b`: it exits
/// 1 naming the key, `svc.conf` is unchanged and `other.conf` is written.
fn expect_onetime_fails_on(fixture: &Fixture, run: &Run, bad_key: &str) {
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&fault(bad_key)), "{run:?}");
    assert_eq!(fixture.read("svc.conf"), "old\n", "{run:?}");
    assert_eq!(fixture.read("other.conf"), "b=b\n", "{run:?}");
}

/// A tokio runtime for the tests that write bytes with a store's own client.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Sets etcd key `key` to `value` through etcd's JSON gateway, which takes values as base64,
/// so any bytes.
fn etcd_put(etcd: &Etcd, key: &str, value: &[u8]) {
    use base64::Engine;
    let base64 = base64::engine::general_purpose::STANDARD;
    let response = http_client()
        .post(format!("{}/v3/kv/put", etcd.endpoint(0)))
        .json(&serde_json::json!({"key": base64.encode(key), "value": base64.encode(value)}))
        .send()
        .expect("etcd put");
    assert!(response.status().is_success(), "{response:?}");
}

#[test]
fn etcd_a_value_that_is_not_utf8_fails_its_resource_until_mended() {
    let etcd = Etcd::start();
    etcd_put(&etcd, "/svc/a", BAD);
    etcd.put("/svc/z", "fine");
    etcd.put("/other/b", "b");
    let fixture = fixture();
    let node = etcd.endpoint(0);
    let run = fixture.run(&["--onetime", "--backend", "etcd", "--node", &node]);
    expect_onetime_fails_on(&fixture, &run, "/svc/a");

    std::fs::remove_file(fixture.path("other.conf")).expect("remove other.conf");
    let daemon = fixture.spawn(&["--watch", "--backend", "etcd", "--node", &node]);
    expect_file(
        &fixture,
        &daemon,
        "other.conf",
        "b=b\n",
        "the other resource is written",
    );
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains(&fault("/svc/a"))),
        "{}",
        daemon.log()
    );
    assert_eq!(fixture.read("svc.conf"), "old\n");

    etcd.put("/svc/a", "mended");
    expect_file(
        &fixture,
        &daemon,
        "svc.conf",
        "/svc/a=mended\n/svc/z=fine\n",
        "a valid value mends the resource",
    );
    // Broken again by a watched change: the file stays as the last valid values made it.
    etcd_put(&etcd, "/svc/z", b"\xfe");
    assert!(
        wait_for(Duration::from_secs(30), || daemon.log().contains(
            "key /svc/z: value is not valid UTF-8 (byte 0xfe at offset 0)"
        )),
        "{}",
        daemon.log()
    );
    etcd.put("/other/b", "c");
    expect_file(
        &fixture,
        &daemon,
        "other.conf",
        "b=c\n",
        "the other resource goes on",
    );
    assert_eq!(fixture.read("svc.conf"), "/svc/a=mended\n/svc/z=fine\n");
}

/// SETs or HSETs raw bytes on `url`, which the helper's text-only commands cannot.
fn redis_raw(url: &str, command: &[&[u8]]) {
    runtime().block_on(async {
        let client = redis::Client::open(url).expect("redis client");
        let mut connection = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis connection");
        let mut cmd = redis::cmd(std::str::from_utf8(command[0]).expect("command name"));
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let _: redis::Value = cmd.query_async(&mut connection).await.expect("command");
    });
}

#[test]
fn redis_strings_and_hash_fields_that_are_not_utf8_fail_their_resource() {
    let redis = Redis::start();
    redis.set("/other/b", "b");
    let url = redis.url();
    redis_raw(&url, &[b"SET", b"/svc/a", BAD]);
    redis_raw(&url, &[b"HSET", b"/svc/h", b"f", BAD]);
    let fixture = fixture();
    let run = fixture.run(&["--onetime", "--backend", "redis", "--node", &url]);
    expect_onetime_fails_on(&fixture, &run, "/svc/a");

    // The hash field alone, once the string is valid.
    redis.set("/svc/a", "fine");
    std::fs::remove_file(fixture.path("other.conf")).expect("remove other.conf");
    let run = fixture.run(&["--onetime", "--backend", "redis", "--node", &url]);
    expect_onetime_fails_on(&fixture, &run, "/svc/h/f");
}

#[test]
fn redis_a_watched_value_that_turns_to_bytes_not_utf8_fails_its_resource_until_mended() {
    let redis = Redis::start();
    redis.set_all(&[("/svc/a", "fine"), ("/other/b", "b")]);
    let fixture = fixture();
    let url = redis.url();
    let daemon = fixture.spawn(&["--watch", "--backend", "redis", "--node", &url]);
    expect_file(&fixture, &daemon, "svc.conf", "/svc/a=fine\n", "first sync");
    // Until now reported as the key deleted, which rendered the file without it.
    redis_raw(&url, &[b"SET", b"/svc/a", BAD]);
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains(&fault("/svc/a"))),
        "{}",
        daemon.log()
    );
    redis.set("/other/b", "c");
    expect_file(
        &fixture,
        &daemon,
        "other.conf",
        "b=c\n",
        "the other resource goes on",
    );
    assert_eq!(fixture.read("svc.conf"), "/svc/a=fine\n");
    redis.set("/svc/a", "mended");
    expect_file(
        &fixture,
        &daemon,
        "svc.conf",
        "/svc/a=mended\n",
        "a valid value mends it",
    );
}

#[test]
fn zookeeper_node_data_that_is_not_utf8_fails_its_resource() {
    let zookeeper = Zookeeper::start();
    zookeeper.put("/svc/a", "placeholder");
    zookeeper.put("/other/b", "b");
    let node = zookeeper.node();
    runtime().block_on(async {
        let client = zookeeper_client::Client::connect(&node)
            .await
            .expect("zookeeper connection");
        client
            .set_data("/svc/a", BAD, None)
            .await
            .expect("set_data");
    });
    let fixture = fixture();
    let run = fixture.run(&["--onetime", "--backend", "zookeeper", "--node", &node]);
    expect_onetime_fails_on(&fixture, &run, "/svc/a");
}

#[test]
fn nats_values_that_are_not_utf8_fail_their_resource() {
    let nats = Nats::start();
    nats.put("/other/b", "b");
    let url = nats.url();
    runtime().block_on(async {
        let client = async_nats::connect(url.as_str()).await.expect("nats");
        let bucket = async_nats::jetstream::new(client)
            .get_key_value(BUCKET)
            .await
            .expect("bucket");
        bucket.put("svc.a", BAD.to_vec().into()).await.expect("put");
    });
    let fixture = fixture();
    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "nats",
        "--node",
        &url,
        "--nats-bucket",
        BUCKET,
    ]);
    expect_onetime_fails_on(&fixture, &run, "/svc/a");
}

#[test]
fn consul_values_that_decode_to_bytes_not_utf8_fail_their_resource() {
    let consul = Consul::start(None);
    consul.put("svc/a", BAD);
    consul.put("other/b", "b");
    let fixture = fixture();
    let url = consul.url();
    let run = fixture.run(&["--onetime", "--backend", "consul", "--node", &url]);
    expect_onetime_fails_on(&fixture, &run, "/svc/a");
}

#[test]
fn env_values_that_are_not_utf8_fail_their_resource() {
    let fixture = fixture();
    let output = fixture
        .command(&["--onetime", "--backend", "env"])
        .env("SVC_A", OsStr::from_bytes(BAD))
        .env("OTHER_B", "b")
        .output()
        .expect("run reconfd");
    expect_onetime_fails_on(&fixture, &Run::from(output), "/svc/a");
}

#[test]
fn a_data_file_that_is_not_utf8_is_an_error_naming_the_file() {
    let fixture = fixture();
    let mut data = b"other:\n  b: b\nsvc:\n  a: \"".to_vec();
    data.extend_from_slice(BAD);
    data.extend_from_slice(b"\"\n");
    std::fs::write(fixture.path("data.yaml"), data).expect("data file");
    let file = fixture.path("data.yaml");
    let file = file.to_str().expect("a UTF-8 temp path");
    let run = fixture.run(&["--onetime", "--backend", "file", "--file", file]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{file}: line 4 column 10: not valid UTF-8 (byte 0xff at offset 28)"
        )),
        "{run:?}"
    );
    // The file is the store: no resource reads part of it.
    assert_eq!(fixture.read("svc.conf"), "old\n");
    assert!(!fixture.path("other.conf").exists());
}

#[test]
fn vault_an_answer_that_is_not_json_fails_the_read_instead_of_emptying_the_secrets() {
    // Vault's answers are JSON (https://developer.hashicorp.com/vault/api-docs#http-api), so
    // bytes that are not UTF-8 can only come from something else answering in its place.
    let server = common::http::Server::start(axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            BAD,
        )
    }));
    let fixture = Fixture::new();
    fixture.template(
        "svc.tmpl",
        "{{ getv(key=\"/secret/svc/a\", default=\"-\") }}\n",
    );
    fixture.resource(
        "svc",
        "src = \"svc.tmpl\"\ndest = \"svc.conf\"\nkeys = [\"/secret/svc\"]\n",
    );
    fixture.write("svc.conf", "old\n");
    let url = format!("http://{}", server.address);
    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "vault",
        "--node",
        &url,
        "--auth-token",
        "s.root",
        "--kv-version",
        "1",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("the answer is not JSON"), "{run:?}");
    assert_eq!(fixture.read("svc.conf"), "old\n");
}
