//! The long-running modes of the real binary: `--watch` on the file store and `--interval`
//! polling.

mod common;

use std::time::Duration;

use common::{Daemon, Fixture, wait_for};

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
             reload_cmd = \"echo reloaded >> {}\"\n",
            fixture.path("reloads").display()
        ),
    );
    fixture.write("data/app.yaml", "app:\n  servers:\n    web1: 10.0.0.1:80\n");
    fixture
}

fn reloads(fixture: &Fixture) -> usize {
    std::fs::read_to_string(fixture.path("reloads"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
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

#[test]
fn watch_on_the_file_store_follows_edits() {
    let fixture = fixture();
    let daemon = fixture.spawn(&["--watch", "--backend", "file", "--file", "data"]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );

    // An editor-style save: write a new file, rename it over the old one.
    fixture.write(
        "data/.app.yaml.swp",
        "app:\n  servers:\n    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n",
    );
    std::fs::rename(
        fixture.path("data/.app.yaml.swp"),
        fixture.path("data/app.yaml"),
    )
    .expect("rename");
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n",
        "edit picked up",
    );

    // A broken edit keeps the last good file; the fix after it is applied.
    fixture.write("data/app.yaml", "app: [broken\n");
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("app.yaml")),
        "parse error reported naming the file\n{}",
        daemon.log()
    );
    assert!(has_content(
        &fixture,
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n"
    ));
    fixture.write("data/app.yaml", "app:\n  servers:\n    web2: 10.0.0.2:80\n");
    expect_content(
        &fixture,
        &daemon,
        "server web2 10.0.0.2:80\n",
        "deleted key's line is gone",
    );
    // The reload runs after the rename that shows the new content.
    wait_for(Duration::from_secs(10), || reloads(&fixture) >= 3);
    assert_eq!(reloads(&fixture), 3, "one reload per applied change");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn interval_polling_picks_up_changes_and_exits_cleanly_on_sigterm() {
    let fixture = fixture();
    let daemon = fixture.spawn(&["--interval", "1", "--backend", "file", "--file", "data"]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    fixture.write("data/app.yaml", "app:\n  servers:\n    web3: 10.0.0.3:80\n");
    expect_content(
        &fixture,
        &daemon,
        "server web3 10.0.0.3:80\n",
        "next poll picks it up",
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reloads(&fixture), 2, "no reload while in sync");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn polling_keeps_the_last_good_file_through_failing_cycles() {
    let fixture = fixture();
    let daemon = fixture.spawn(&["--interval", "1", "--backend", "file", "--file", "data"]);
    expect_content(
        &fixture,
        &daemon,
        "server web1 10.0.0.1:80\n",
        "initial render",
    );
    fixture.write("data/app.yaml", "app:\n  servers: [unclosed\n");
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("app.yaml: line 3")),
        "the failing cycle names the file and line\n{}",
        daemon.log()
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        has_content(&fixture, "server web1 10.0.0.1:80\n"),
        "last good file kept through the failing cycles"
    );
    assert_eq!(reloads(&fixture), 1, "no reload while the data is broken");
    fixture.write("data/app.yaml", "app:\n  servers:\n    web4: 10.0.0.4:80\n");
    expect_content(
        &fixture,
        &daemon,
        "server web4 10.0.0.4:80\n",
        "a later cycle recovers",
    );
    assert_eq!(daemon.terminate(), Some(0));
}
