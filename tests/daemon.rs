//! The long-running modes of the real binary: `--watch` on the file store, `--interval`
//! polling, and the global `--wait`.

mod common;

use std::time::Duration;

use common::{Daemon, Fixture, reload_views, reloads_until, wait_for};

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
    fixture.write("data/app.yaml", "app:\n  servers:\n    web1: 10.0.0.1:80\n");
    fixture
}

/// Replaces the data file `data/app.yaml` as an editor saves: a new file renamed over it, so
/// no reader ever sees it half written.
fn save(fixture: &Fixture, content: &str) {
    fixture.write("data/.app.yaml.swp", content);
    std::fs::rename(
        fixture.path("data/.app.yaml.swp"),
        fixture.path("data/app.yaml"),
    )
    .expect("rename");
}

/// How many times the daemon's log says `text`.
fn logged(daemon: &Daemon, text: &str) -> usize {
    daemon.log().matches(text).count()
}

fn has_content(fixture: &Fixture, expected: &str) -> bool {
    std::fs::read_to_string(fixture.path("app.conf")).is_ok_and(|text| text == expected)
}

/// Waits up to 10 s for `app.conf` to hold `expected`; fails saying `what` with the log.
fn expect_content(fixture: &Fixture, daemon: &Daemon, expected: &str, what: &str) {
    assert!(
        wait_for(Duration::from_secs(10), || has_content(fixture, expected)),
        "{what}\n{}",
        daemon.log()
    );
}

/// Adds a resource writing the number of servers to `count.conf`.
fn add_count_resource(fixture: &Fixture) {
    fixture.template(
        "count.tmpl",
        "{{ gets(key=\"/app/servers/*\") | length }}\n",
    );
    fixture.resource(
        "count",
        "src = \"count.tmpl\"\ndest = \"count.conf\"\nkeys = [\"/app\"]\n",
    );
}

/// Waits up to 10 s for `count.conf` to say one server; fails saying `what` with the log.
fn expect_count(fixture: &Fixture, daemon: &Daemon, what: &str) {
    assert!(
        wait_for(Duration::from_secs(10), || std::fs::read_to_string(
            fixture.path("count.conf")
        )
        .is_ok_and(|text| text == "1\n")),
        "{what}\n{}",
        daemon.log()
    );
}

/// A daemon watching the fixture's file store, once it has rendered the first data.
fn watching(fixture: &Fixture) -> Daemon {
    let daemon = fixture.spawn(&["--watch", "--backend", "file", "--file", "data"]);
    expect_content(
        fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    daemon
}

/// A daemon started with confd's spelling of the options (`-watch=true`, `-backend file`) reads
/// that same command line again on SIGHUP.
#[test]
fn confd_spelling_is_read_at_start_and_again_on_sighup() {
    let fixture = fixture();
    let daemon = fixture.spawn(&["-watch=true", "-backend", "file", "-file", "data"]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    add_count_resource(&fixture);
    daemon.hang_up();
    expect_count(&fixture, &daemon, "the resource added before SIGHUP");
    save(
        &fixture,
        "app:\n  servers:\n    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n",
    );
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "still watching after SIGHUP",
    );
    assert!(
        wait_for(Duration::from_secs(60), || daemon
            .log()
            .contains("first sync done of the settings read again")),
        "the first sync after SIGHUP is said to be of the settings read again:\n{}",
        daemon.log()
    );
    assert_eq!(daemon.log().matches("first sync done:").count(), 1);
    assert_eq!(daemon.terminate(), Some(0));
}

/// As confd reads conf.d and the templates again for every run, a polling daemon takes a new
/// resource file and an edited template at the next interval, without a SIGHUP; a broken edit
/// keeps what runs, and its fix is taken.
#[test]
fn polling_takes_changes_to_conf_d_and_the_templates_at_the_next_interval() {
    let fixture = fixture();
    let daemon = fixture.spawn(&["--interval", "1", "--backend", "file", "--file", "data"]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    add_count_resource(&fixture);
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}backend {{ kv.value }}\n{% endfor %}",
    );
    expect_count(&fixture, &daemon, "the resource added");
    expect_content(
        &fixture,
        &daemon,
        "backend 10.0.0.1:80\n",
        "the template edited",
    );

    fixture.template("app.tmpl", "{% for kv in %}");
    assert!(
        wait_for(Duration::from_secs(10), || daemon.log().contains(
            "conf.d or the templates changed: keeping the current settings"
        )),
        "the broken template refused\n{}",
        daemon.log()
    );
    assert!(has_content(&fixture, "backend 10.0.0.1:80\n"));
    fixture.template("app.tmpl", "fixed {{ getv(key=\"/app/servers/web1\") }}\n");
    expect_content(&fixture, &daemon, "fixed 10.0.0.1:80\n", "the fix taken");
    assert_eq!(
        logged(&daemon, "keeping the current settings"),
        1,
        "a broken edit is reported once\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn watch_on_the_file_store_follows_edits() {
    let fixture = fixture();
    let daemon = watching(&fixture);

    save(
        &fixture,
        "app:\n  servers:\n    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n",
    );
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "edit picked up",
    );

    // A broken edit keeps the last good file, and is a store failure as in any other mode;
    // the fix after it is applied.
    save(&fixture, "app: [broken\n");
    assert!(
        wait_for(Duration::from_secs(10), || daemon.log().lines().any(
            |line| {
                line.contains("file store cannot read a data file") && line.contains("app.yaml")
            }
        )),
        "parse error reported naming the file\n{}",
        daemon.log()
    );
    assert!(has_content(
        &fixture,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n"
    ));
    save(&fixture, "app:\n  servers:\n    web2: 10.0.0.2:80\n");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "deleted key's line is gone",
    );
    assert!(
        daemon.log().contains("reads its data files again"),
        "{}",
        daemon.log()
    );
    // The reload runs after the rename that shows the new content; a later change, once
    // reloaded, shows every reload before it.
    save(&fixture, "app:\n  servers:\n    web3: 10.0.0.3:80\n");
    let views = reloads_until(&fixture, &daemon, "server web3 10.0.0.3:80\n");
    assert_eq!(
        views,
        [
            "server web1 10.0.0.1:80\n",
            "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
            "server web2 10.0.0.2:80\n",
            "server web3 10.0.0.3:80\n",
        ],
        "one reload per applied change, none for the broken one"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn interval_polling_picks_up_changes_and_exits_cleanly_on_sigterm() {
    let fixture = fixture();
    let daemon = fixture.spawn(&[
        "--interval",
        "1",
        "--backend",
        "file",
        "--file",
        "data",
        "--log-level",
        "debug",
    ]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    save(&fixture, "app:\n  servers:\n    web3: 10.0.0.3:80\n");
    expect_content(
        &fixture,
        &daemon,
        "server web3 10.0.0.3:80\n",
        "next poll picks it up",
    );
    // Two later polls find the file in sync, each after the previous poll's reload.
    let in_sync = logged(&daemon, "app.conf in sync");
    assert!(
        wait_for(Duration::from_secs(30), || logged(
            &daemon,
            "app.conf in sync"
        ) >= in_sync + 2),
        "later polls\n{}",
        daemon.log()
    );
    assert_eq!(
        reload_views(&fixture),
        ["server web1 10.0.0.1:80\n", "server web3 10.0.0.3:80\n"],
        "no reload while in sync"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn polling_keeps_the_last_good_file_through_failing_cycles() {
    let fixture = fixture();
    let daemon = fixture.spawn(&[
        "--interval",
        "1",
        "--backend",
        "file",
        "--file",
        "data",
        "--log-level",
        "debug",
    ]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    save(&fixture, "app:\n  servers: [unclosed\n");
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("app.yaml: line 3")),
        "the failing cycle names the file and line\n{}",
        daemon.log()
    );
    // Two more failing cycles.
    assert!(
        wait_for(Duration::from_secs(30), || logged(&daemon, "still failing")
            >= 2),
        "later cycles fail too\n{}",
        daemon.log()
    );
    assert!(
        has_content(&fixture, "server web1 10.0.0.1:80\n"),
        "last good file kept through the failing cycles"
    );
    assert_eq!(
        reload_views(&fixture),
        ["server web1 10.0.0.1:80\n"],
        "no reload while the data is broken"
    );
    save(&fixture, "app:\n  servers:\n    web4: 10.0.0.4:80\n");
    expect_content(
        &fixture,
        &daemon,
        "server web4 10.0.0.4:80\n",
        "a later cycle recovers",
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn the_global_wait_holds_back_the_resources_without_a_wait_of_their_own() {
    let fixture = fixture();
    fixture.resource(
        "prompt",
        "src = \"app.tmpl\"\ndest = \"prompt.conf\"\nkeys = [\"/app\"]\nwait = \"100ms:200ms\"\n",
    );
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "file",
        "--file",
        "data",
        "--wait",
        "1h",
    ]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "the first sync waits for nothing",
    );
    common::expect_file(
        &fixture,
        &daemon,
        "prompt.conf",
        "server web1 10.0.0.1:80\n",
        "the first sync waits for nothing",
    );
    save(
        &fixture,
        "app:\n  servers:\n    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n",
    );
    // The resource with its own short wait renders the change once that has passed; the
    // other, under the global wait of an hour, not yet.
    common::expect_file(
        &fixture,
        &daemon,
        "prompt.conf",
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "the resource's own wait wins",
    );
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\n",
        "held by --wait\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// The files a daemon's swaps replaced that it still holds open: `/proc/<pid>/fd` links to
/// `app.conf (deleted)`.
fn replaced_files_held(daemon: &Daemon) -> usize {
    let fds = format!("/proc/{}/fd", daemon.child.id());
    std::fs::read_dir(fds)
        .expect("the daemon's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().ends_with("app.conf (deleted)"))
        .count()
}

/// A replaced destination is held open only until its swap has been answered (so that the
/// reload does not wait for the file system to free it): a long-running daemon never keeps
/// the space of old versions (`lsof` would show them as deleted files).
#[test]
fn replaced_destinations_are_closed_and_their_space_freed() {
    let fixture = fixture();
    let daemon = watching(&fixture);
    for version in 2..=9 {
        save(
            &fixture,
            &format!("app:\n  servers:\n    web1: 10.0.0.{version}:80\n"),
        );
        expect_content(
            &fixture,
            &daemon,
            &format!("server web1 10.0.0.{version}:80\n"),
            "edit picked up",
        );
    }
    // The last swap's old file may still be being closed; none of the seven before it.
    let held = replaced_files_held(&daemon);
    assert!(
        held <= 1,
        "{held} replaced versions of app.conf still open\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}
