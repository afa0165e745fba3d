//! Running as a service: the notifications a systemd `Type=notify` unit relies on, a shutdown
//! that lets a reload in progress finish, and SIGHUP reading conf.d again.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{Fixture, wait_for};

fn fixture(reload_cmd: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\nreload_cmd = \"{reload_cmd}\"\n"
        ),
    );
    fixture.write("data/app.yaml", "app:\n  servers:\n    web1: 10.0.0.1:80\n");
    fixture
}

/// A service manager's notification socket: collects what the daemon sends.
struct NotifySocket {
    socket: UnixDatagram,
    received: Vec<String>,
}

impl NotifySocket {
    fn bind(fixture: &Fixture) -> NotifySocket {
        NotifySocket::receiving(UnixDatagram::bind(fixture.path("notify.sock")).expect("bind"))
    }

    /// A socket in the abstract namespace, which `NOTIFY_SOCKET` names as `@<name>`.
    fn bind_abstract(name: &str) -> NotifySocket {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name).expect("a name");
        NotifySocket::receiving(UnixDatagram::bind_addr(&address).expect("bind"))
    }

    fn receiving(socket: UnixDatagram) -> NotifySocket {
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        NotifySocket {
            socket,
            received: Vec::new(),
        }
    }

    /// Waits up to 10 s for a message with the line `line`; returns that message.
    fn expect(&mut self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buffer = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(length) = self.socket.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
                self.received.push(message.clone());
                if message.lines().any(|l| l == line) {
                    return message;
                }
            }
        }
        panic!("no {line} within 10 s; received {:?}", self.received);
    }
}

/// The notifications, and commands that do not inherit the variables that speak to the service
/// manager (they would send it their own).
#[test]
fn systemd_hears_ready_after_the_first_sync_watchdog_pings_and_stopping() {
    let fixture = fixture("env > env.txt");
    let commands_env = fixture.path("env.txt");
    let mut socket = NotifySocket::bind(&fixture);
    let notify_path = fixture.path("notify.sock");
    let daemon = fixture.spawn_with_env(
        &["--watch", "--backend", "file", "--file", "data"],
        &[
            ("NOTIFY_SOCKET", notify_path.to_str().expect("utf-8 path")),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let ready = socket.expect("READY=1");
    assert_eq!(
        fixture.read("app.conf"),
        "server web1 10.0.0.1:80\n",
        "READY=1 comes after the first sync\n{}",
        daemon.log()
    );
    assert!(
        ready
            .lines()
            .any(|line| line.starts_with("STATUS=1 resource from 1 store")),
        "a status line with READY=1: {ready:?}"
    );
    socket.expect("WATCHDOG=1");
    socket.expect("WATCHDOG=1");
    let env = std::fs::read_to_string(&commands_env).expect("the reload ran before READY=1");
    assert!(env.contains("PATH="), "{env}");
    assert!(
        !env.contains("NOTIFY_SOCKET") && !env.contains("WATCHDOG_USEC"),
        "{env}"
    );
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    socket.expect("STOPPING=1");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn an_abstract_notification_socket_hears_ready() {
    let fixture = fixture("true");
    let name = format!("reconfd-test-notify-{}", std::process::id());
    let mut socket = NotifySocket::bind_abstract(&name);
    let daemon = fixture.spawn_with_env(
        &["--watch", "--backend", "file", "--file", "data"],
        &[("NOTIFY_SOCKET", &format!("@{name}"))],
    );
    socket.expect("READY=1");
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn sigterm_during_a_slow_reload_waits_for_it_and_exits_zero() {
    // Commands run in the daemon's working directory, the fixture's root. The reload goes on
    // until the test lets it finish.
    let fixture = fixture(
        "echo started >> marks; while [ ! -e release ]; do sleep 0.05; done; \
         echo finished >> marks",
    );
    let mut daemon = fixture.spawn(&["--watch", "--backend", "file", "--file", "data"]);
    assert!(
        wait_for(Duration::from_secs(10), || fixture.path("marks").exists()),
        "the first sync starts the reload\n{}",
        daemon.log()
    );
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("stopping")),
        "SIGTERM heard\n{}",
        daemon.log()
    );
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "still running while the reload runs\n{}",
        daemon.log()
    );
    fixture.write("release", "");
    let mut status = None;
    assert!(
        wait_for(Duration::from_secs(10), || {
            status = daemon.child.try_wait().expect("wait");
            status.is_some()
        }),
        "exits once the reload ends\n{}",
        daemon.log()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "exit 0 after the reload"
    );
    assert_eq!(fixture.read("marks"), "started\nfinished\n");
}

#[test]
fn sighup_picks_up_a_new_resource_and_keeps_watching() {
    let fixture = fixture("true");
    let daemon = fixture.spawn(&["--watch", "--backend", "file", "--file", "data"]);
    assert!(
        wait_for(Duration::from_secs(10), || fixture
            .path("app.conf")
            .exists()),
        "initial render\n{}",
        daemon.log()
    );
    fixture.template(
        "count.tmpl",
        "{{ gets(key=\"/app/servers/*\") | length }}\n",
    );
    fixture.resource(
        "count",
        "src = \"count.tmpl\"\ndest = \"count.conf\"\nkeys = [\"/app\"]\n",
    );
    daemon.hang_up();
    assert!(
        wait_for(Duration::from_secs(10), || fixture
            .path("count.conf")
            .exists()),
        "the new resource is rendered\n{}",
        daemon.log()
    );
    assert_eq!(fixture.read("count.conf"), "1\n");
    // Both resources follow the data afterwards.
    fixture.write(
        "data/app.yaml",
        "app:\n  servers:\n    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n",
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(fixture.path("count.conf")).is_ok_and(|c| c == "2\n")
                && std::fs::read_to_string(fixture.path("app.conf"))
                    .is_ok_and(|c| c.contains("web2"))
        }),
        "both resources follow a change after SIGHUP\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn sighup_with_a_broken_resource_keeps_the_old_set_running() {
    let fixture = fixture("true");
    let daemon = fixture.spawn(&["--watch", "--backend", "file", "--file", "data"]);
    assert!(
        wait_for(Duration::from_secs(10), || fixture
            .path("app.conf")
            .exists()),
        "initial render\n{}",
        daemon.log()
    );
    fixture.resource(
        "broken",
        "src = \"app.tmpl\"\ndset = \"typo.conf\"\nkeys = [\"/app\"]\n",
    );
    daemon.hang_up();
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("SIGHUP: keeping the current settings")),
        "the reload is refused\n{}",
        daemon.log()
    );
    assert!(
        daemon.log().contains("dset"),
        "the error names the key\n{}",
        daemon.log()
    );
    // The old set still follows the data.
    fixture.write("data/app.yaml", "app:\n  servers:\n    web3: 10.0.0.3:80\n");
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(fixture.path("app.conf")).is_ok_and(|c| c.contains("web3"))
        }),
        "the old set keeps running\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// A wait past its limit in a resource added before SIGHUP is refused like any broken
/// resource: the daemon keeps running the old set instead of panicking.
#[test]
fn sighup_with_an_overlong_wait_keeps_the_old_set_running() {
    let fixture = fixture("true");
    let mut daemon = fixture.spawn(&["--watch", "--backend", "file", "--file", "data"]);
    assert!(
        wait_for(Duration::from_secs(10), || fixture
            .path("app.conf")
            .exists()),
        "initial render\n{}",
        daemon.log()
    );
    fixture.resource(
        "forever",
        "src = \"app.tmpl\"\ndest = \"forever.conf\"\nkeys = [\"/app\"]\n\
         wait = \"300000000000y\"\n",
    );
    fixture.resource(
        "until",
        "src = \"app.tmpl\"\ndest = \"until.conf\"\nkeys = [\"/app\"]\n\
         wait = \"1s:300000000000y\"\n",
    );
    daemon.hang_up();
    assert!(
        wait_for(Duration::from_secs(10), || daemon
            .log()
            .contains("SIGHUP: keeping the current settings")),
        "the reload is refused\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert!(
        log.contains("forever.toml:5:8: `wait` = \"300000000000y\": at most 365d"),
        "the error names the file, the key and the limit\n{log}"
    );
    assert!(
        log.contains("until.toml:5:8: `wait` = \"1s:300000000000y\""),
        "the error names the file and the key\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // The old set still follows the data.
    fixture.write("data/app.yaml", "app:\n  servers:\n    web3: 10.0.0.3:80\n");
    assert!(
        wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(fixture.path("app.conf")).is_ok_and(|c| c.contains("web3"))
        }),
        "the old set keeps running\n{}",
        daemon.log()
    );
    assert!(!fixture.path("forever.conf").exists() && !fixture.path("until.conf").exists());
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "still running"
    );
    assert_eq!(daemon.terminate(), Some(0));
}
