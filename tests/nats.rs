//! The NATS store against a real nats-server with JetStream started on a loopback port:
//! onetime reads of a bucket with thousands of keys, deletes and purges; watch mode with puts
//! and deletes, over two parts of the bucket, across a server restart and a bucket created
//! again; a missing bucket; and credentials or permissions the server refuses.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::nats::{ADMIN, BUCKET, NO_JETSTREAM, Nats};
use common::{Fixture, expect_content, expect_file, reloads, reloads_until, wait_for};
use reconfd::store::nats::{NatsOptions, NatsStore};
use reconfd::store::{Change, Snapshot, Store, StoreErrorKind, WatchEvent, WatchStream};

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

fn args<'a>(nats: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--backend", "nats", "--node", nats, "--nats-bucket", BUCKET];
    args.extend_from_slice(extra);
    args
}

#[test]
fn onetime_reads_every_key_and_skips_deleted_ones() {
    let nats = Nats::start();
    let keys: Vec<(String, String)> = (0..5_000)
        .map(|i| {
            (
                format!("/app/servers/w{i:05}"),
                format!("10.0.{}.{}", i / 256, i % 256),
            )
        })
        .collect();
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    nats.put_all(&pairs);
    // Later values replace earlier ones; deleted and purged keys are gone.
    nats.put("/app/servers/w00001", "changed");
    nats.delete("/app/servers/w00002");
    nats.purge("/app/servers/w00003");
    nats.put("/apple/not-mine", "x");
    nats.put("/other/key", "y");
    let fixture = fixture();
    let url = nats.url();
    let run = fixture.run(&args(&url, &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    let rendered = fixture.read("app.conf");
    assert_eq!(rendered.lines().count(), 4_998, "every key but two");
    assert!(rendered.starts_with("server w00000 10.0.0.0\nserver w00001 changed\nserver w00004 "));
    assert!(rendered.ends_with("server w04999 10.0.19.135\n"));
    assert_eq!(
        reloads(&fixture),
        1,
        "the run has ended: every reload is logged"
    );
    // reconfd's own lines only: the client library's connection chatter is for debug.
    assert!(!run.stderr.contains("connected successfully"), "{run:?}");
}

#[test]
fn watch_follows_puts_and_deletes() {
    let nats = Nats::start();
    nats.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let url = nats.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );

    nats.put("/app/servers/web2", "10.0.0.2:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "put picked up",
    );
    nats.delete("/app/servers/web1");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "delete picked up",
    );
    nats.put("/app/servers/web3", "10.0.0.3:80");
    nats.purge("/app/servers/web2");
    expect_content(
        &fixture,
        &daemon,
        "server web3 10.0.0.3:80\n",
        "purge picked up",
    );
    let before = reloads_until(&fixture, &daemon, "server web3 10.0.0.3:80\n").len();
    // A key outside the resource's prefix renders nothing: a later change's reload comes
    // right after the last one.
    nats.put("/elsewhere/x", "1");
    nats.put("/app/servers/web4", "10.0.0.4:80");
    let views = reloads_until(
        &fixture,
        &daemon,
        "server web3 10.0.0.3:80\nserver web4 10.0.0.4:80\n",
    );
    assert_eq!(views.len(), before + 1, "{views:#?}\n{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_restarted_server_neither_loses_nor_replays_changes() {
    let mut nats = Nats::start();
    nats.put("/app/servers/web1", "10.0.0.1:80");
    let fixture = fixture();
    let url = nats.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    for n in 1..=20 {
        nats.put("/app/servers/web2", &format!("10.0.1.{n}:80"));
    }
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.1.20:80\n",
        "changes before the restart",
    );
    let before = reloads_until(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.1.20:80\n",
    )
    .len();

    nats.restart();
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("watching again")),
        "the watch ended with the connection\n{}",
        daemon.log()
    );
    nats.put("/app/servers/web3", "10.0.0.3:80");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.1.20:80\nserver web3 10.0.0.3:80\n",
        "change after the restart",
    );
    // A later change, once reloaded, shows every reload since the restart.
    nats.put("/app/servers/web4", "10.0.0.4:80");
    let views = reloads_until(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.1.20:80\nserver web3 10.0.0.3:80\n\
         server web4 10.0.0.4:80\n",
    );
    assert_eq!(
        views.len(),
        before + 2,
        "one reload for each new change, none for a replayed one\n{views:#?}\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_watch_over_two_parts_of_the_bucket_follows_both() {
    let nats = Nats::start();
    nats.put("/svc/a/x", "0");
    nats.put("/cfg/b/x", "0");
    let fixture = Fixture::new();
    fixture.template(
        "ab.tmpl",
        "a={{ getv(key=\"/svc/a/x\", default=\"-\") }} b={{ getv(key=\"/cfg/b/x\", default=\"-\") }}\n",
    );
    fixture.resource(
        "ab",
        "src = \"ab.tmpl\"\ndest = \"ab.conf\"\nkeys = [\"/svc/a\", \"/cfg/b\"]\n",
    );
    let url = nats.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    expect_file(&fixture, &daemon, "ab.conf", "a=0 b=0\n", "initial render");
    // Writes while reconfd reads do not leave it between two revisions.
    for n in 1..=50 {
        nats.put("/svc/a/x", &n.to_string());
        nats.put("/cfg/b/x", &n.to_string());
    }
    expect_file(&fixture, &daemon, "ab.conf", "a=50 b=50\n", "both parts");
    nats.delete("/cfg/b/x");
    expect_file(&fixture, &daemon, "ab.conf", "a=50 b=-\n", "a delete");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_bucket_created_again_is_read_again() {
    let mut nats = Nats::start();
    for n in 0..20 {
        nats.put("/app/servers/web1", &format!("10.0.0.{n}:80"));
    }
    let fixture = fixture();
    let url = nats.url();
    let daemon = fixture.spawn(&args(&url, &["--watch"]));
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.19:80\n",
        "initial render",
    );
    nats.recreate_bucket();
    nats.put("/app/servers/web9", "10.0.0.9:80");
    expect_content(
        &fixture,
        &daemon,
        "server web9 10.0.0.9:80\n",
        "the new bucket's keys, read again",
    );
    nats.put("/app/servers/web8", "10.0.0.8:80");
    expect_content(
        &fixture,
        &daemon,
        "server web8 10.0.0.8:80\nserver web9 10.0.0.9:80\n",
        "and watched",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_missing_bucket_is_named() {
    let nats = Nats::start_without_bucket();
    let fixture = fixture();
    let url = nats.url();
    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "nats",
        "--node",
        &url,
        "--nats-bucket",
        "nosuchbucket",
    ]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("nosuchbucket"), "{run:?}");
    assert!(run.stderr.contains(&url), "names the server: {run:?}");
    assert!(!fixture.path("app.conf").exists());
}

#[test]
fn an_unreachable_server_is_named() {
    let url = format!("nats://127.0.0.1:{}", common::etcd::free_port());
    let fixture = fixture();
    let run = fixture.run(&args(&url, &["--onetime"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&url), "{run:?}");
}

#[test]
fn refused_credentials_and_permissions_are_auth_failures_and_a_missing_bucket_a_refusal() {
    let nats = Nats::start_with_users();
    nats.put("/app/servers/web1", "10.0.0.1:80");
    let read = |user: &str, password: &str, bucket: &str| {
        let store = NatsStore::new(&NatsOptions {
            nodes: vec![nats.url()],
            bucket: bucket.to_string(),
            username: Some(user.to_string()),
            password: Some(password.to_string()),
            ..NatsOptions::default()
        })
        .expect("store");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(store.fetch(&["/app".to_string()]))
    };

    let error = read(ADMIN.0, "wrong", BUCKET).expect_err("a wrong password");
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
    assert!(error.to_string().contains(&nats.url()), "{error}");

    // The server refuses the requests apart from answering them: they time out.
    let error = read(NO_JETSTREAM.0, NO_JETSTREAM.1, BUCKET).expect_err("no JetStream");
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
    assert!(
        error.to_string().contains("Permissions Violation"),
        "says why: {error}"
    );

    let error = read(ADMIN.0, ADMIN.1, "nosuchbucket").expect_err("no such bucket");
    assert_eq!(error.kind(), StoreErrorKind::Rejected, "{error}");

    let snapshot = read(ADMIN.0, ADMIN.1, BUCKET).expect("the admin reads");
    assert_eq!(snapshot.entries["/app/servers/web1"], "10.0.0.1:80");

    // As NATS's own clients do, reconfd takes the credentials written in the URL.
    let fixture = fixture();
    let in_url = |password: &str| {
        nats.url()
            .replacen("nats://", &format!("nats://{}:{password}@", ADMIN.0), 1)
    };
    let run = fixture.run(&args(&in_url(ADMIN.1), &["--onetime"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(fixture.path("app.conf").exists());
    let run = fixture.run(&args(&in_url("wrong"), &["--onetime"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("refused the credentials"), "{run:?}");
}

/// A store client of `nats`'s bucket, used directly, with a runtime to drive it.
fn direct_store(nats: &Nats) -> (NatsStore, tokio::runtime::Runtime) {
    let store = NatsStore::new(&NatsOptions {
        nodes: vec![nats.url()],
        bucket: BUCKET.to_string(),
        ..NatsOptions::default()
    })
    .expect("store");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    (store, runtime)
}

/// The changes a watch reports, with their revisions, until `/svc/a/x` and `/cfg/b/x` both
/// hold `value`.
fn changes_until(
    runtime: &tokio::runtime::Runtime,
    stream: &mut WatchStream,
    value: &str,
) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    while ["/svc/a/x", "/cfg/b/x"]
        .iter()
        .any(|key| latest.get(*key).map(String::as_str) != Some(value))
    {
        let event = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), stream.recv()).await })
            .expect("an event within 10 s")
            .expect("the watch goes on")
            .expect("no error");
        match event {
            WatchEvent::Changes { revision, changes } => {
                for change in changes {
                    if let Change::Put { key, value } = change {
                        seen.push((revision.expect("a revision"), value.clone()));
                        latest.insert(key, value);
                    }
                }
            }
            WatchEvent::Replace(_) => panic!("a full read"),
        }
    }
    seen
}

#[test]
fn a_read_during_writes_holds_every_change_to_its_revision_and_watches_resume_exactly() {
    let nats = Nats::start();
    // Revision 1 sets a to 0 and revision 2 sets b to 0; each round n then sets a to n (at
    // 2n + 1) and b to n (at 2n + 2). The two keys lie in different parts of the bucket, read
    // side by side. The bucket keeps only each key's last value, so a read while writers go
    // on may hold values newer than its revision, but never one older.
    nats.put("/svc/a/x", "0");
    nats.put("/cfg/b/x", "0");
    let prefixes = vec!["/svc/a".to_string(), "/cfg/b".to_string()];
    let (store, runtime) = direct_store(&nats);
    let writing = AtomicBool::new(true);
    let mut rounds = 0;
    std::thread::scope(|scope| {
        // Stops the writer however the reads end, so a failed assertion is reported rather
        // than waiting on the writer for ever.
        struct StopWriting<'a>(&'a AtomicBool);
        impl Drop for StopWriting<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let stop_writing = StopWriting(&writing);
        let writer = scope.spawn(|| {
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                n += 1;
                nats.put("/svc/a/x", &n.to_string());
                nats.put("/cfg/b/x", &n.to_string());
            }
            n
        });
        for _ in 0..40 {
            let snapshot = runtime.block_on(store.fetch(&prefixes)).expect("fetch");
            let revision = snapshot.revision.expect("a revision");
            let value = |key: &str| -> i64 { snapshot.entries[key].parse().expect("a number") };
            let (a, b) = (value("/svc/a/x"), value("/cfg/b/x"));
            assert!(
                a >= (revision - 1) / 2 && b >= (revision - 2) / 2,
                "a = {a} and b = {b} hold every change up to revision {revision}"
            );
        }
        drop(stop_writing);
        rounds = writer.join().expect("writer");
    });

    let snapshot: Snapshot = runtime.block_on(store.fetch(&prefixes)).expect("fetch");
    let read = snapshot.revision.expect("a revision");
    assert_eq!(read, 2 * rounds + 2, "the read is at the last write");
    let mut first = runtime
        .block_on(store.watch(&prefixes, &snapshot))
        .expect("watch")
        .expect("a stream");
    for n in 1..=5 {
        nats.put("/svc/a/x", &format!("w{n}"));
        nats.put("/cfg/b/x", &format!("w{n}"));
    }
    // The bucket keeps each key's last value only, so a watch that falls behind skips values
    // already replaced, but it always reaches the last ones. The two parts of the bucket are
    // followed side by side, each in order.
    let seen = changes_until(&runtime, &mut first, "w5");
    let mut revisions: Vec<i64> = seen.iter().map(|(revision, _)| *revision).collect();
    revisions.sort();
    assert!(
        revisions.windows(2).all(|pair| pair[0] < pair[1]) && revisions[0] > read,
        "each once, after the read: {seen:?}"
    );
    assert_eq!(revisions.last(), Some(&(read + 10)), "{seen:?}");
    drop(first);

    // A new watch from the same snapshot starts after what the first one delivered.
    nats.put("/svc/a/x", "again");
    nats.put("/cfg/b/x", "again");
    let mut second = runtime
        .block_on(store.watch(&prefixes, &snapshot))
        .expect("watch")
        .expect("a stream");
    let mut again = changes_until(&runtime, &mut second, "again");
    again.sort();
    assert_eq!(
        again,
        [
            (read + 11, "again".to_string()),
            (read + 12, "again".to_string())
        ]
    );
    // A later change, once delivered, shows everything the watch had before it.
    nats.put("/svc/a/x", "end");
    let mut more = Vec::new();
    while !more.iter().any(|(_, value)| value == "end") {
        let event = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(10), second.recv()).await })
            .expect("an event within 10 s")
            .expect("the watch goes on")
            .expect("no error");
        match event {
            WatchEvent::Changes { revision, changes } => {
                for change in changes {
                    if let Change::Put { value, .. } = change {
                        more.push((revision.expect("a revision"), value));
                    }
                }
            }
            WatchEvent::Replace(_) => panic!("a full read"),
        }
    }
    assert_eq!(more, [(read + 13, "end".to_string())], "nothing else");
}
