//! Shared fixtures for the integration tests: a confdir in a temp dir and the real binary.

#![allow(dead_code)] // each test file uses a different part of this module

pub mod certificates;
pub mod consul;
pub mod etcd;
pub mod http;
pub mod nats;
pub mod proxy;
pub mod redis;
pub mod vault;
pub mod zookeeper;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A confdir (`conf.d/`, `templates/`) and data files in a fresh temp dir.
pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// An empty confdir in a new temp dir.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("conf.d")).expect("conf.d");
        std::fs::create_dir_all(dir.path().join("templates")).expect("templates");
        Fixture { dir }
    }

    /// The confdir.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the confdir.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// Writes a file inside the confdir, creating its directories.
    pub fn write(&self, relative: &str, content: &str) {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&path, content).expect("write fixture file");
    }

    /// Reads a file inside the confdir.
    pub fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).expect("read file")
    }

    /// Writes `conf.d/<name>.toml` with a `[template]` table made of `body`.
    pub fn resource(&self, name: &str, body: &str) {
        self.write(
            &format!("conf.d/{name}.toml"),
            &format!("[template]\n{body}"),
        );
    }

    /// Writes `templates/<name>`.
    pub fn template(&self, name: &str, content: &str) {
        self.write(&format!("templates/{name}"), content);
    }

    /// The binary with `--confdir` set and no `RECONFD_*` variables inherited.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reconfd"));
        for (name, _) in std::env::vars() {
            if name.starts_with("RECONFD_") {
                command.env_remove(name);
            }
        }
        command
            .arg("--confdir")
            .arg(self.root())
            .args(args)
            .current_dir(self.root());
        command
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        let output = self.command(args).output().expect("run reconfd");
        Run::from(output)
    }

    /// Starts the daemon; it is killed when the returned guard is dropped.
    pub fn spawn(&self, args: &[&str]) -> Daemon {
        self.spawn_with_env(args, &[])
    }

    /// Starts the daemon with environment variables `env` added.
    pub fn spawn_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        self.spawn_configured(args, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// Starts the daemon with its command changed by `configure` first.
    pub fn spawn_configured(&self, args: &[&str], configure: impl FnOnce(&mut Command)) -> Daemon {
        let log = self.path("daemon.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = self.command(args);
        configure(&mut command);
        let child = command
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn reconfd");
        Daemon { child, log }
    }

    /// Names of the files directly in `relative`, sorted.
    pub fn list(&self, relative: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(relative))
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

/// A finished run: exit code and output.
pub struct Run {
    /// Exit status, `None` when killed by a signal.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error: the log.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A running daemon, killed on drop.
pub struct Daemon {
    /// The process.
    pub child: Child,
    log: PathBuf,
}

impl Daemon {
    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGHUP: the daemon reads its settings and resources again.
    pub fn hang_up(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("reconfd did not exit after SIGTERM\n{}", self.log());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to 30 s for the fixture's file `name` to hold `expected`; fails saying `what`,
/// with the file and the daemon's log.
pub fn expect_file(fixture: &Fixture, daemon: &Daemon, name: &str, expected: &str, what: &str) {
    let held = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(fixture.path(name)).is_ok_and(|text| text == expected)
    });
    assert!(
        held,
        "{what}\n--- {name}\n{}\n--- log\n{}",
        std::fs::read_to_string(fixture.path(name)).unwrap_or_default(),
        daemon.log()
    );
}

/// [`expect_file`] for `app.conf`, the destination of the store tests' resource.
pub fn expect_content(fixture: &Fixture, daemon: &Daemon, expected: &str, what: &str) {
    expect_file(fixture, daemon, "app.conf", expected, what);
}

/// The reloads recorded by a reload command that appends `app.conf` and a `--` line to the
/// fixture's `reloads` file.
pub fn reloads(fixture: &Fixture) -> usize {
    std::fs::read_to_string(fixture.path("reloads"))
        .map(|text| text.matches("--\n").count())
        .unwrap_or(0)
}

/// What each reload saw, in order, as recorded by a reload command that appends `app.conf`
/// and a `--` line to the fixture's `reloads` file.
pub fn reload_views(fixture: &Fixture) -> Vec<String> {
    std::fs::read_to_string(fixture.path("reloads"))
        .unwrap_or_default()
        .split_terminator("--\n")
        .map(str::to_string)
        .collect()
}

/// Waits up to 30 s for the latest reload to have seen `last`, then returns what every reload
/// saw. When `last` comes from a change made after the ones under test, the daemon has dealt
/// with those before it, so no reload they cause can still be on its way.
pub fn reloads_until(fixture: &Fixture, daemon: &Daemon, last: &str) -> Vec<String> {
    let seen = wait_for(Duration::from_secs(30), || {
        reload_views(fixture)
            .last()
            .is_some_and(|view| view == last)
    });
    let views = reload_views(fixture);
    assert!(
        seen,
        "no reload saw {last:?}\n--- reloads\n{views:#?}\n--- log\n{}",
        daemon.log()
    );
    views
}

/// GETs `url` (a daemon's `--listen` address) and returns the status code and the body.
pub fn get(url: &str) -> (u16, String) {
    let response = etcd::http_client()
        .get(url)
        .send()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = response.status().as_u16();
    (code, response.text().expect("body"))
}

/// Process `pid`'s state letter (`R`, `S`, `Z` for a zombie, ...) and parent, from
/// `/proc/<pid>/stat`; `None` once it is gone (reaped).
pub fn process_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The processes whose parent is `pid`, from `/proc`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut children: Vec<i32> = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| process_state(*child).is_some_and(|(_, parent)| parent == pid))
        .collect();
    children.sort();
    children
}
