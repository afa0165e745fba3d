//! The Redis store against real redis-server processes started on loopback ports: onetime
//! reads of strings and hash fields, the key separator, failover past a dead node, watch mode
//! with SET, DEL, HSET, HDEL and expiry, a server restart, a server that refuses CONFIG, and
//! passwords.

mod common;

use std::time::Duration;

use common::redis::Redis;
use common::{Fixture, expect_content, wait_for};

/// A confdir with one resource rendering the strings `/app/servers/*` and the fields of the
/// hash `/app/limits` into `app.conf`; its reload appends the file's content to `reloads`.
fn fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}\
         server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}\
         {% for kv in gets(key=\"/app/limits/*\") %}\
         limit {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
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

fn args<'a>(nodes: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--backend", "redis"];
    for node in nodes {
        args.extend(["--node", node]);
    }
    args.extend_from_slice(extra);
    args
}

#[test]
fn onetime_renders_strings_and_hash_fields_from_the_first_live_node() {
    let redis = Redis::start();
    redis.set("/app/servers/web1", "10.0.0.1:80");
    redis.set("/app/servers/web2", "10.0.0.2:80");
    redis.hset("/app/limits", "maxconn", "100");
    redis.hset("/app/limits", "timeout", "5s");
    redis.rpush("/app/servers/queue", "not a string");
    redis.set("/other/servers/web9", "10.0.0.9:80");
    // A prefix with glob characters selects its own keys only.
    redis.set("/odd[1]/x", "escaped");
    redis.set("/odd1/x", "matched by the unescaped pattern");
    let fixture = fixture();
    fixture.template(
        "odd.tmpl",
        "{{ getv(key=\"/odd[1]/x\") }} {{ getv(key=\"/odd1/x\", default=\"-\") }}\n",
    );
    fixture.resource(
        "odd",
        "src = \"odd.tmpl\"\ndest = \"odd.conf\"\nkeys = [\"/odd[1]\"]\n",
    );

    let dead = format!("redis://127.0.0.1:{}", common::etcd::free_port());
    let live = redis.url();
    let run = fixture.run(&args(&[&dead, &live], &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n\
         limit maxconn 100\nlimit timeout 5s\n"
    );
    assert_eq!(fixture.read("odd.conf"), "escaped -\n");
}

#[test]
fn a_separator_maps_key_names() {
    let redis = Redis::start();
    redis.set("app:servers:web1", "10.0.0.1:80");
    redis.hset("app:limits", "maxconn", "100");
    redis.set("/app/servers/slashed", "not named with the separator");
    let fixture = fixture();
    let node = redis.url();
    let run = fixture.run(&args(&[&node], &["--onetime", "--separator", ":"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\nlimit maxconn 100\n"
    );
}

#[test]
fn watch_follows_set_del_hset_hdel_and_expiry() {
    let redis = Redis::start();
    // Flags someone else set are kept.
    redis.config_set("notify-keyspace-events", "El");
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = redis.url();
    let daemon = fixture.spawn(&args(&[&node], &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    // The watch turns the notifications on once it opens, after the first sync.
    let has_every_flag = |flags: &str| {
        ['E', 'l', 'K', 'g', '$', 'h', 'x', 'e'].iter().all(|flag| {
            flags.contains(*flag) || (flags.contains('A') && *flag != 'E' && *flag != 'K')
        })
    };
    wait_for(Duration::from_secs(30), || {
        has_every_flag(&redis.config_get("notify-keyspace-events"))
    });
    let flags = redis.config_get("notify-keyspace-events");
    assert!(has_every_flag(&flags), "every flag in {flags:?}");
    assert!(
        flags.contains('l'),
        "the flags set before are kept: {flags:?}"
    );

    redis.set("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "SET picked up",
    );
    redis.del("/app/servers/web1");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "DEL picked up",
    );
    redis.hset("/app/limits", "maxconn", "100");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\nlimit maxconn 100\n",
        "HSET picked up",
    );
    redis.hset("/app/limits", "timeout", "5s");
    redis.hdel("/app/limits", "maxconn");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\nlimit timeout 5s\n",
        "HDEL picked up",
    );
    redis.del("/app/limits");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "the hash's DEL removes its fields",
    );
    // The key expires only once it has been rendered, however slow the machine.
    redis.set("/app/servers/temp", "10.0.0.3:80");
    expect_content(
        &fixture,
        &daemon,
        "server temp 10.0.0.3:80\nserver web2 10.0.0.2:80\n",
        "the key to expire is seen",
    );
    redis.expire("/app/servers/temp", 1);
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "the expired key is gone",
    );
    assert!(!daemon.log().contains("ERROR"), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_change_after_a_server_restart_is_rendered() {
    let mut redis = Redis::start();
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = redis.url();
    let daemon = fixture.spawn(&args(&[&node], &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );

    // The restarted server has lost the notification flags the watch set at run time.
    redis.restart();
    redis.set("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "change right after the restart",
    );
    assert!(
        wait_for(Duration::from_secs(10), || redis
            .config_get("notify-keyspace-events")
            .contains('K')),
        "notifications turned on again\n{}",
        daemon.log()
    );
    redis.set("/app/servers/web3", "10.0.0.3:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\nserver web3 10.0.0.3:80\n",
        "change seen by the new watch",
    );
    // The watch ended with the server: opened again at once, or, when the server was not
    // back yet, after the outage it found.
    let log = daemon.log();
    assert!(
        log.contains("; watching again") || log.contains("store available again"),
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_server_refusing_config_is_watched_anyway_and_read_every_interval() {
    // CONFIG renamed away, as a managed Redis does, and notifications off: the setting cannot
    // be read, the watch subscribes anyway, and the read at every interval brings changes.
    let redis = Redis::start_with("rename-command CONFIG \"\"", None);
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = redis.url();
    let daemon = fixture.spawn(&args(&[&node], &["--watch", "--interval", "1"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    redis.set("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "change picked up by the read at the interval",
    );
    redis.del("/app/servers/web2");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "a later read",
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("cannot read notify-keyspace-events").count(),
        1,
        "{log}"
    );
    assert!(log.contains("watching anyway"), "{log}");
    assert!(log.contains(&node), "names the node: {log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(daemon.terminate(), Some(0));

    // With the notifications set on the server by its operator, changes come at once: the
    // interval is far longer than the test waits.
    let redis = Redis::start_with(
        "rename-command CONFIG \"\"\nnotify-keyspace-events KEA",
        None,
    );
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let node = redis.url();
    std::fs::remove_file(fixture.path("app.conf")).expect("rm");
    let daemon = fixture.spawn(&args(&[&node], &["--watch", "--interval", "3600"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    redis.set("/app/servers/web3", "10.0.0.3:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web3 10.0.0.3:80\n",
        "change notified",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_server_whose_notifications_cannot_be_turned_on_is_polled_with_one_warning() {
    // CONFIG GET allowed, CONFIG SET not: the flags are known to be missing.
    let redis = Redis::start_with("", Some("pw"));
    redis.command(&[
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">rpw",
        "~*",
        "&*",
        "+@all",
        "-config|set",
    ]);
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = format!("redis://reader:rpw@127.0.0.1:{}", redis.port());
    let daemon = fixture.spawn(&args(&[&node], &["--watch", "--interval", "1"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    redis.set("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "change picked up by polling",
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("keyspace notifications cannot be turned on")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("polling instead"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_node_that_is_not_redis_is_named_in_one_line() {
    // A server that greets as NATS does, with a line that is no Redis answer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            use std::io::{Read, Write};
            let _ = stream.write_all(b"INFO {\"server_id\":\"x\",\"version\":\"2.10\"}\r\n");
            let mut buffer = [0u8; 1024];
            while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
        }
    });
    let fixture = fixture();
    let node = format!("redis://127.0.0.1:{port}");
    let run = fixture.run(&args(&[&node], &["--onetime"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    let error = run
        .stderr
        .lines()
        .find(|line| line.contains("ERROR"))
        .unwrap_or_else(|| panic!("an error line: {run:?}"));
    assert!(error.contains(&node), "{error}");
    assert!(error.contains("is not Redis's protocol"), "{error}");
    assert!(
        run.stderr
            .lines()
            .all(|line| line.contains("ERROR") || line.contains("INFO")),
        "one line each: {run:?}"
    );
}

#[test]
fn passwords_are_used_and_a_wrong_one_names_the_node() {
    let redis = Redis::start_with("", Some("s3cret"));
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = redis.url();

    let run = fixture.run(&args(&[&node], &["--onetime", "--password", "wrong"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&node), "names the node: {run:?}");
    assert!(!run.stderr.contains("wrong"), "no password logged: {run:?}");

    let in_url = format!("redis://:wrong@127.0.0.1:{}", redis.port());
    let run = fixture.run(&args(&[&in_url], &["--onetime"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    let masked = format!("redis://:***@127.0.0.1:{}", redis.port());
    assert!(run.stderr.contains(&masked), "names the node: {run:?}");
    assert!(!run.stderr.contains("wrong"), "no password logged: {run:?}");
    assert!(!fixture.path("app.conf").exists());

    // The URL's password wins over --password; the watch's own connection logs in too.
    let in_url = format!("redis://:s3cret@127.0.0.1:{}", redis.port());
    let daemon = fixture.spawn(&args(&[&in_url], &["--watch", "--password", "wrong"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    redis.set("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "change picked up",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn the_password_flag_logs_in_and_none_or_a_wrong_one_is_refused_clearly() {
    let redis = Redis::start_with("", Some("s3cret"));
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let node = redis.url();

    let run = fixture.run(&args(&[&node], &["--onetime", "--password", "s3cret"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    std::fs::remove_file(fixture.path("app.conf")).expect("remove");

    for (extra, answer) in [
        (&[][..], "Authentication required"),
        (
            &["--password", "wrong"][..],
            "Password authentication failed",
        ),
    ] {
        let run = fixture.run(&args(&[&node], &[&["--onetime"], extra].concat()));
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(run.stderr.contains(&node), "names the node: {run:?}");
        assert!(
            run.stderr.contains("redis store refused the credentials"),
            "a refusal, not an outage: {run:?}"
        );
        assert!(run.stderr.contains(answer), "says why: {run:?}");
        assert!(!run.stderr.contains("wrong"), "no password logged: {run:?}");
        assert!(!fixture.path("app.conf").exists());
    }
}

#[test]
fn a_refused_password_is_logged_as_such_the_file_stays_and_a_mended_one_is_read() {
    let redis = Redis::start_with("", Some("s3cret"));
    redis.set("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    fixture.write("app.conf", "kept\n");
    let node = redis.url();
    let daemon = fixture.spawn(&args(&[&node], &["--watch", "--password", "wrong"]));
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("redis store refused the credentials")),
        "the refusal is logged as one\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(!log.contains("unavailable"), "{log}");
    assert!(log.contains(&node), "names the node: {log}");
    assert!(
        log.contains("retrying at least every 1m"),
        "says how often it asks again: {log}"
    );
    assert_eq!(fixture.read("app.conf"), "kept\n");

    // The server now takes the password reconfd has.
    redis.config_set("requirepass", "wrong");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "read once the password is accepted",
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("refused the credentials").count(),
        1,
        "one line for the whole refusal: {log}"
    );
    assert_eq!(
        log.matches("accepts the credentials again").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("unavailable"), "{log}");
    assert_eq!(daemon.terminate(), Some(0));
}
