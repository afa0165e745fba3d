//! The HAProxy scenario end to end, with the confdir of `examples/haproxy`: a real etcd, a real
//! HAProxy started and reloaded by reconfd (`haproxy -c` as the check, `-sf` to reload), and
//! two web backends; requests through HAProxy reach exactly the backends registered in etcd.
//! The same with `examples/haproxy-exec`, where reconfd runs HAProxy in master-worker mode as
//! its child and reloads it with SIGUSR2.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::etcd::{Etcd, free_port, http_client};
use common::http::Server;
use common::{Fixture, children_of, process_state, wait_for};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Kills the HAProxy processes named in the pid file when the test ends, however it ends.
struct HaproxyGuard {
    pid_file: std::path::PathBuf,
}

impl Drop for HaproxyGuard {
    fn drop(&mut self) {
        for pid in std::fs::read_to_string(&self.pid_file)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|pid| pid.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// Which backends answer `requests` requests through HAProxy; `-` for a failed request.
fn answers(port: u16, requests: usize) -> BTreeSet<String> {
    // A fresh connection per request, so no connection is held to a HAProxy being replaced.
    let client = http_client();
    (0..requests)
        .map(|_| {
            client
                .get(format!("http://127.0.0.1:{port}/"))
                .header("Connection", "close")
                .send()
                .and_then(|response| response.error_for_status())
                .and_then(|response| response.text())
                .unwrap_or_else(|_| "-".to_string())
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

#[test]
fn haproxy_follows_the_backends_registered_in_etcd() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = Fixture::new();
    copy_dir(
        &repo.join("examples/haproxy/conf.d"),
        &fixture.path("conf.d"),
    );
    copy_dir(
        &repo.join("examples/haproxy/templates"),
        &fixture.path("templates"),
    );
    std::fs::create_dir_all(fixture.path("run")).expect("run dir");
    let _haproxy = HaproxyGuard {
        pid_file: fixture.path("run/haproxy.pid"),
    };

    let etcd = Etcd::start();
    let web1 = Server::backend("web1");
    let web2 = Server::backend("web2");
    let port = free_port();
    etcd.put("/proxy/port", &port.to_string());
    let node = etcd.endpoint(0);
    let daemon = fixture.spawn(&["--watch", "--backend", "etcd", "--node", &node]);
    let reaches = |expected: &[&str], what: &str| {
        let expected = set(expected);
        assert!(
            wait_for(Duration::from_secs(30), || answers(port, 6) == expected),
            "{what}: requests reached {:?}, expected {expected:?}\n{}",
            answers(port, 6),
            daemon.log()
        );
    };

    etcd.put("/proxy/frontend/web1", &web1.address.to_string());
    reaches(&["web1"], "web1 registered");
    etcd.put("/proxy/frontend/web2", &web2.address.to_string());
    reaches(&["web1", "web2"], "web2 registered");
    etcd.delete("/proxy/frontend/web1");
    reaches(&["web2"], "web1 removed");

    // A registration HAProxy rejects is not swapped in; HAProxy keeps serving.
    let before = fixture.read("run/haproxy.cfg");
    etcd.put("/proxy/frontend/broken", "not-an-address:port");
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("check failed")),
        "the rejected config is reported\n{}",
        daemon.log()
    );
    let log = daemon.log();
    let failure = log
        .lines()
        .find(|line| line.contains("check failed"))
        .unwrap_or_default();
    assert!(
        failure.contains("[ALERT]") && failure.contains("not-an-address"),
        "the one log line of the failure carries HAProxy's own message\n{log}"
    );
    assert_eq!(fixture.read("run/haproxy.cfg"), before);
    assert_eq!(answers(port, 4), set(&["web2"]));
    assert_eq!(daemon.terminate(), Some(0));
}

/// Kills HAProxy's process group (its master and workers) when the test ends, however it ends:
/// reconfd killed by the test's end would leave it running.
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(master) = self.0 {
            let _ = killpg(master, Signal::SIGKILL);
        }
    }
}

/// The process ID reconfd logged for the service it started.
fn service_pid(log: &str) -> Option<Pid> {
    let line = log.lines().find(|line| line.contains("exec: started `"))?;
    let pid = line.rsplit("(pid ").next()?.trim_end_matches(')');
    pid.parse().ok().map(Pid::from_raw)
}

#[test]
fn haproxy_runs_under_reconfd_in_master_worker_mode_and_follows_etcd() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = repo.join("examples/haproxy-exec");
    let fixture = Fixture::new();
    copy_dir(&example.join("conf.d"), &fixture.path("conf.d"));
    copy_dir(&example.join("templates"), &fixture.path("templates"));
    std::fs::copy(example.join("reconfd.toml"), fixture.path("reconfd.toml")).expect("copy");
    std::fs::create_dir_all(fixture.path("run")).expect("run dir");

    let etcd = Etcd::start();
    let web1 = Server::backend("web1");
    let web2 = Server::backend("web2");
    let port = free_port();
    etcd.put("/proxy/port", &port.to_string());
    let node = etcd.endpoint(0);
    let daemon = fixture.spawn(&["--watch", "--backend", "etcd", "--node", &node]);
    let reconfd = i32::try_from(daemon.child.id()).expect("pid");
    assert!(
        wait_for(Duration::from_secs(30), || service_pid(&daemon.log())
            .is_some()),
        "HAProxy is started\n{}",
        daemon.log()
    );
    let master = service_pid(&daemon.log()).expect("logged");
    let _haproxy = GroupGuard(Some(master));
    let is_the_master = || {
        std::fs::read_to_string(format!("/proc/{master}/comm")).is_ok_and(|c| c == "haproxy\n")
            && process_state(master.as_raw()).is_some_and(|(_, parent)| parent == reconfd)
    };
    assert!(
        wait_for(Duration::from_secs(30), is_the_master),
        "reconfd's child is HAProxy itself, not a shell\n{}",
        daemon.log()
    );
    let workers = || children_of(master.as_raw());
    let reaches = |expected: &[&str], what: &str| {
        let expected = set(expected);
        assert!(
            wait_for(Duration::from_secs(30), || answers(port, 6) == expected),
            "{what}: requests reached {:?}, expected {expected:?}\n{}",
            answers(port, 6),
            daemon.log()
        );
        assert!(is_the_master(), "{what}: the master is the same process");
    };

    assert!(
        wait_for(Duration::from_secs(30), || !workers().is_empty()),
        "HAProxy's master starts a worker\n{}",
        daemon.log()
    );
    let first_workers = workers();
    etcd.put("/proxy/frontend/web1", &web1.address.to_string());
    reaches(&["web1"], "web1 registered");
    etcd.put("/proxy/frontend/web2", &web2.address.to_string());
    reaches(&["web1", "web2"], "web2 registered");
    etcd.delete("/proxy/frontend/web1");
    reaches(&["web2"], "web1 removed");
    let log = daemon.log();
    assert!(
        log.matches(&format!("exec: sent SIGUSR2 to the service (pid {master})"))
            .count()
            >= 3,
        "{log}"
    );
    assert!(
        !workers()
            .iter()
            .any(|worker| first_workers.contains(worker)),
        "the master started new workers: {first_workers:?}, now {:?}",
        workers()
    );

    let log = fixture.path("daemon.log");
    let code = daemon.terminate();
    let log = std::fs::read_to_string(log).expect("log");
    assert!(
        process_state(master.as_raw()).is_none(),
        "HAProxy exited with reconfd\n{log}"
    );
    // HAProxy's master exits 0 once its workers have stopped on SIGTERM, or 143 when a worker
    // of a reload still finishing dies of it: either way reconfd returns that status.
    let status = if log.contains("exec: the service exited with status 0") {
        0
    } else if log.contains("exec: the service was killed by SIGTERM (exit status 143)") {
        143
    } else {
        panic!("the service's status is logged\n{log}");
    };
    assert_eq!(code, Some(status), "{log}");
}
