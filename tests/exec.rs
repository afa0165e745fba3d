//! Exec mode: reconfd runs the service as its child once the files are rendered, signals it
//! when a file is swapped, passes signals on, stops it, exits with its status, and reaps the
//! orphans that come to it.
//!
//! The services are small shell scripts that record what they see in files of the confdir.
//! Each one stops by itself once reconfd is gone (`kill -0 $PPID`), so that a failed test
//! leaves nothing running.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Fixture, process_state, wait_for};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, mkfifo};

const STORE: &[&str] = &["--backend", "file", "--file", "data.yaml"];

/// The loop that keeps a test service running until reconfd is gone; `wait` returns at once
/// for a signal the script traps.
const RUN_WHILE_RECONFD_LIVES: &str =
    "while kill -0 \"$PPID\" 2>/dev/null; do sleep 1 & wait $!; done\n";

/// A confdir rendering `value=<the /app/value key>` into `app.conf` from `data.yaml`, with
/// the resource lines `extra`.
fn confdir(extra: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "value={{ getv(key=\"/app/value\") }}\n");
    fixture.resource(
        "app",
        &format!("src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n{extra}"),
    );
    fixture.write("data.yaml", "app:\n  value: \"1\"\n");
    fixture
}

/// Waits up to 30 s for the fixture's file `name` to hold `expected`.
fn holds(fixture: &Fixture, name: &str, expected: &str) -> bool {
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(fixture.path(name)).is_ok_and(|text| text == expected)
    })
}

fn pid_of(daemon: &common::Daemon) -> Pid {
    Pid::from_raw(i32::try_from(daemon.child.id()).expect("pid"))
}

#[test]
fn the_service_starts_on_the_rendered_files_hears_of_swaps_and_signals_and_gives_its_status() {
    // The resource's own reload command runs before the service is signalled.
    let fixture = confdir("reload_cmd = \"echo reload_cmd >> reloads\"\n");
    fixture.write(
        "service.sh",
        &format!(
            "env > service.env\n\
             cat app.conf > started.tmp && mv started.tmp started\n\
             trap 'cat app.conf >> reloads' HUP\n\
             trap 'echo usr2 >> passed-on' USR2\n\
             trap 'exit 7' TERM\n{RUN_WHILE_RECONFD_LIVES}"
        ),
    );
    let mut args = vec!["--watch", "--exec", "sh service.sh"];
    args.extend_from_slice(STORE);
    let daemon = fixture.spawn_with_env(
        &args,
        &[("VAULT_TOKEN", "s3cret-token"), ("SERVICE_SETTING", "kept")],
    );
    assert!(
        holds(&fixture, "started", "value=1\n"),
        "the service started on the rendered file\n{}",
        daemon.log()
    );
    let env = fixture.read("service.env");
    assert!(env.contains("SERVICE_SETTING=kept"), "{env}");
    assert!(
        !env.contains("s3cret-token"),
        "credentials are withheld: {env}"
    );

    fixture.write("data.yaml", "app:\n  value: \"2\"\n");
    assert!(
        holds(&fixture, "reloads", "reload_cmd\nreload_cmd\nvalue=2\n"),
        "SIGHUP after the swap and the reload command\n{}",
        daemon.log()
    );

    kill(pid_of(&daemon), Signal::SIGUSR2).expect("SIGUSR2");
    assert!(
        holds(&fixture, "passed-on", "usr2\n"),
        "SIGUSR2 is passed on\n{}",
        daemon.log()
    );

    // SIGHUP is reconfd's: it reads its settings again and does not pass the signal on; the
    // new generation of controllers signals the service in turn.
    daemon.hang_up();
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("SIGHUP: new settings applied")),
        "{}",
        daemon.log()
    );
    fixture.write("data.yaml", "app:\n  value: \"3\"\n");
    assert!(
        holds(
            &fixture,
            "reloads",
            "reload_cmd\nreload_cmd\nvalue=2\nreload_cmd\nvalue=3\n"
        ),
        "SIGHUP after the swap of the new generation, and no other\n{}",
        daemon.log()
    );

    let log_before = daemon.log();
    assert_eq!(daemon.terminate(), Some(7), "{log_before}");
}

#[test]
fn reconfd_exits_with_the_status_of_a_service_that_ends_on_its_own() {
    let fixture = confdir("");
    for (command, code, logged) in [
        (
            "sh -c 'exit 3'",
            3,
            "ERROR exec: the service exited with status 3; stopping",
        ),
        (
            "sh -c 'kill -KILL $$'",
            137,
            "ERROR exec: the service was killed by SIGKILL (exit status 137); stopping",
        ),
        (
            "true",
            0,
            "WARN exec: the service exited with status 0; stopping",
        ),
    ] {
        let mut args = vec!["--exec", command];
        args.extend_from_slice(STORE);
        let run = fixture.run(&args);
        assert_eq!(run.code, Some(code), "{run:?}");
        assert!(run.stderr.contains(logged), "{run:?}");
        assert!(
            run.stderr.find("first sync done") < run.stderr.find("exec: started"),
            "{run:?}"
        );
    }
}

#[test]
fn the_service_waits_for_a_destination_held_back_by_min_keys() {
    let fixture = confdir("min_keys = 2\n");
    fixture.write(
        "service.sh",
        &format!("cat app.conf > started.tmp && mv started.tmp started\n{RUN_WHILE_RECONFD_LIVES}"),
    );
    let mut args = vec!["--watch", "--exec", "sh service.sh"];
    args.extend_from_slice(STORE);
    let daemon = fixture.spawn(&args);
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("exec: the service starts once")),
        "{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("exec: started"), "{}", daemon.log());
    assert!(!fixture.path("started").exists());
    // The second key lets the file be written; the service starts on it.
    fixture.write("data.yaml", "app:\n  value: \"2\"\n  other: \"x\"\n");
    assert!(
        holds(&fixture, "started", "value=2\n"),
        "the service started once its file was written\n{}",
        daemon.log()
    );
    // The service's own status: the SIGTERM passed on ended it.
    assert_eq!(daemon.terminate(), Some(143));
}

#[test]
fn a_service_that_outlives_kill_timeout_is_killed() {
    let fixture = confdir("");
    fixture.write(
        "reconfd.toml",
        "[exec]\ncommand = \"sh service.sh\"\nkill_signal = \"usr1\"\nkill_timeout = \"100ms\"\n",
    );
    // The service notes the stop signal and carries on.
    fixture.write(
        "service.sh",
        &format!("trap 'echo usr1 > stopping' USR1\necho up > up\n{RUN_WHILE_RECONFD_LIVES}"),
    );
    let daemon = fixture.spawn(STORE);
    assert!(holds(&fixture, "up", "up\n"), "{}", daemon.log());
    let log = fixture.path("daemon.log");
    assert_eq!(daemon.terminate(), Some(137));
    let log = std::fs::read_to_string(log).expect("log");
    assert_eq!(fixture.read("stopping"), "usr1\n", "{log}");
    assert!(
        log.contains(
            "exec: the service did not exit within 100ms of SIGUSR1: killing its process group"
        ),
        "{log}"
    );
}

#[test]
fn exec_with_onetime_is_refused() {
    let fixture = confdir("");
    let mut args = vec!["--onetime", "--exec", "true"];
    args.extend_from_slice(STORE);
    let run = fixture.run(&args);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains(
            "reconfd: --exec cannot be used with --onetime: --onetime exits once the files \
             are synced, and exec mode runs a service until it stops"
        ),
        "{run:?}"
    );
    assert!(!fixture.path("app.conf").exists(), "nothing ran");
}

#[test]
fn an_orphan_of_the_service_is_reaped() {
    let fixture = confdir("");
    mkfifo(&fixture.path("release"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    // The service double-forks: a shell starts a reader of the FIFO in the background, records
    // its ID and exits, so the reader's parent is gone and it comes to reconfd.
    fixture.write(
        "service.sh",
        &format!(
            "sh -c 'cat release > /dev/null & echo $! > grandchild.tmp; \
             mv grandchild.tmp grandchild.pid'\n{RUN_WHILE_RECONFD_LIVES}"
        ),
    );
    let mut args = vec!["--exec", "sh service.sh"];
    args.extend_from_slice(STORE);
    let daemon = fixture.spawn(&args);
    let reconfd = pid_of(&daemon).as_raw();
    assert!(
        wait_for(Duration::from_secs(30), || fixture
            .path("grandchild.pid")
            .exists()),
        "{}",
        daemon.log()
    );
    let grandchild: i32 = fixture
        .read("grandchild.pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(
        wait_for(Duration::from_secs(30), || {
            process_state(grandchild).is_some_and(|(_, parent)| parent == reconfd)
        }),
        "the orphan came to reconfd, the subreaper: {:?}\n{}",
        process_state(grandchild),
        daemon.log()
    );

    // Released, the reader exits; reconfd must wait for it, or it stays a zombie.
    let mut release = std::fs::OpenOptions::new()
        .write(true)
        .open(fixture.path("release"))
        .expect("open the FIFO");
    release.write_all(b"go\n").expect("release the reader");
    drop(release);
    assert!(
        wait_for(Duration::from_secs(30), || process_state(grandchild)
            .is_none()),
        "the orphan was reaped: {:?}\n{}",
        process_state(grandchild),
        daemon.log()
    );
    let zombies: Vec<i32> = common::children_of(reconfd)
        .into_iter()
        .filter(|child| process_state(*child).is_some_and(|(state, _)| state == 'Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies left: {zombies:?}");
    // The service's shell, killed by SIGTERM: 128 + 15.
    assert_eq!(daemon.terminate(), Some(143));
}
