//! Open files: the daemon raises its soft limit to the hard one, and `--listen` cannot take the
//! descriptors the stores and files need, however many connections it is sent; driven through
//! the real binary started under a low limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::{Daemon, Fixture, expect_file, get, wait_for};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Starts the daemon of `fixture` with `args` under the open files limits `soft` and `hard`.
fn spawn_with_limit(fixture: &Fixture, args: &[&str], soft: u64, hard: u64) -> Daemon {
    fixture.spawn_configured(args, |command| {
        // SAFETY: setrlimit is async-signal-safe and changes only the child.
        unsafe {
            command.pre_exec(move || {
                setrlimit(Resource::RLIMIT_NOFILE, soft, hard).map_err(Into::into)
            });
        }
    })
}

/// A confdir rendering `/app/port` from `data.yaml` into `app.conf`.
fn fixture(port: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.write("data.yaml", &format!("app:\n  port: \"{port}\"\n"));
    fixture
}

/// The soft and hard open files limits of process `pid`, from `/proc/<pid>/limits`.
fn open_files_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a line for open files");
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_limit() {
    let fixture = fixture("80");
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("limits");
    let hard = hard.min(4096);
    let daemon = spawn_with_limit(
        &fixture,
        &["--watch", "--backend", "file", "--file", "data.yaml"],
        64,
        hard,
    );
    expect_file(&fixture, &daemon, "app.conf", "port 80\n", "first sync");
    assert_eq!(open_files_limits(daemon.child.id()), (hard, hard));
}

#[test]
fn commands_get_the_soft_limit_reconfd_started_with() {
    let fixture = fixture("80");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
         reload_cmd = \"ulimit -S -n > reload-limit\"\n",
    );
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("limits");
    let hard = hard.min(4096);
    let daemon = spawn_with_limit(
        &fixture,
        &["--watch", "--backend", "file", "--file", "data.yaml"],
        64,
        hard,
    );
    expect_file(
        &fixture,
        &daemon,
        "reload-limit",
        "64\n",
        "the reload's limit",
    );
    assert_eq!(open_files_limits(daemon.child.id()), (hard, hard));
}

#[test]
fn idle_connections_to_listen_leave_descriptors_for_the_store_and_the_files() {
    let fixture = fixture("80");
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let args = [
        "--watch",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--listen",
        &address,
    ];
    let daemon = spawn_with_limit(&fixture, &args, 64, 64);
    expect_file(&fixture, &daemon, "app.conf", "port 80\n", "first sync");

    // Far more connections than the daemon has descriptors; each sends nothing.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(&address).expect("connect"))
        .collect();
    fixture.write("data.yaml", "app:\n  port: \"81\"\n");
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "port 81\n",
        "a change reaches the file while --listen is flooded",
    );
    let log = daemon.log();
    assert!(!log.contains("Too many open files"), "{log}");

    drop(idle);
    assert_eq!(
        get(&format!("http://{address}/health")),
        (200, "ok\n".to_string()),
        "/health answers once the idle connections are gone"
    );
}

/// Reads from `stream` until the server closes it; false if it stays open two minutes.
fn closed_by_the_server(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("read timeout");
    let mut buffer = [0; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn idle_and_slow_connections_are_closed_by_the_server() {
    let fixture = fixture("80");
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--listen",
        &address,
    ]);
    assert!(
        wait_for(Duration::from_secs(10), || TcpStream::connect(&address)
            .is_ok()),
        "{}",
        daemon.log()
    );
    let mut silent = TcpStream::connect(&address).expect("connect");
    let mut slow = TcpStream::connect(&address).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n")
        .expect("half a request");
    let mut kept_alive = TcpStream::connect(&address).expect("connect");
    kept_alive
        .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("a request");
    assert!(
        closed_by_the_server(&mut silent),
        "a connection that sends nothing"
    );
    assert!(
        closed_by_the_server(&mut slow),
        "a request head that never ends"
    );
    assert!(
        closed_by_the_server(&mut kept_alive),
        "a kept-alive connection left idle"
    );
}
