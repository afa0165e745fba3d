//! SIGTERM and SIGINT during `--onetime`: the running command, which has a process group of
//! its own that the signal does not reach, is killed with everything it started, and reconfd
//! exits non-zero.
//!
//! This test binary is a child subreaper: the command's processes, once their parents are
//! gone, become its children, so that it can wait for each of them and learn whether a signal
//! ended it. Nothing in these tests waits for a time to pass.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use common::Fixture;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, mkfifo};

const ONETIME: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

/// The process ID in the fixture's file `name`, once the whole line is written.
fn pid_in(fixture: &Fixture, name: &str) -> Option<Pid> {
    std::fs::read_to_string(fixture.path(name))
        .ok()
        .filter(|text| text.ends_with('\n'))
        .and_then(|text| text.trim().parse().ok())
        .map(Pid::from_raw)
}

/// Whether `pid` was ended by SIGKILL: waited for when it is this process's child (the
/// subreaper's), or already gone when another process reaped it (reconfd, its shell's
/// parent).
fn killed(pid: Pid) -> Result<(), String> {
    match waitpid(pid, None) {
        Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _)) => Ok(()),
        Ok(other) => Err(format!("{pid} was not killed but ended with {other:?}")),
        Err(Errno::ECHILD) => match kill(pid, None) {
            Err(Errno::ESRCH) => Ok(()),
            other => Err(format!(
                "{pid} is not this test's child yet lives on: {other:?}"
            )),
        },
        Err(e) => Err(format!("waitpid {pid}: {e}")),
    }
}

fn interrupting_kills_the_running_check_and_what_it_started(signal: Signal) {
    nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper");
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    mkfifo(&fixture.path("release"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    // The check starts a reader of the FIFO in the background, which blocks until the test
    // writes to it, records both process IDs and waits for the reader.
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
         check_cmd = \"cat release > /dev/null & echo $! > reader.pid; echo $$ > check.pid; \
         wait\"\n",
    );
    let mut daemon = fixture.spawn(ONETIME);
    assert!(
        common::wait_for(Duration::from_secs(60), || {
            pid_in(&fixture, "check.pid").is_some()
        }),
        "the check runs\n{}",
        daemon.log()
    );
    let (check, reader) = (
        pid_in(&fixture, "check.pid").expect("check"),
        pid_in(&fixture, "reader.pid").expect("reader"),
    );

    let reconfd = Pid::from_raw(i32::try_from(daemon.child.id()).expect("pid"));
    kill(reconfd, signal).expect("signal reconfd");
    let status = daemon.child.wait().expect("wait for reconfd");
    assert_eq!(status.code(), Some(1), "{}", daemon.log());
    assert!(
        daemon.log().contains(&format!("interrupted by {signal}"))
            && daemon
                .log()
                .contains("was still running: killed with its process group"),
        "{}",
        daemon.log()
    );

    // A reader still alive is released now, so that a check left running ends by itself, and
    // says so by how it ends; a reader killed is gone, or dies at once whatever it reads.
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(fixture.path("release"))
    {
        Ok(mut release) => release.write_all(b"go\n").expect("release the reader"),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {}
        Err(e) => panic!("open the FIFO: {e}"),
    }
    // The check's shell first: once it is gone, the reader is this process's child.
    killed(check).unwrap_or_else(|e| panic!("the check: {e}\n{}", daemon.log()));
    killed(reader).unwrap_or_else(|e| panic!("what the check started: {e}\n{}", daemon.log()));
    assert!(!fixture.path("app.conf").exists(), "nothing was swapped in");
    assert_eq!(
        fixture
            .list(".")
            .iter()
            .filter(|name| name.contains(".reconfd-"))
            .count(),
        0,
        "no stage file is left"
    );
}

#[test]
fn sigterm_during_onetime_kills_the_running_check_and_what_it_started() {
    interrupting_kills_the_running_check_and_what_it_started(Signal::SIGTERM);
}

#[test]
fn sigint_during_onetime_kills_the_running_check_and_what_it_started() {
    interrupting_kills_the_running_check_and_what_it_started(Signal::SIGINT);
}
