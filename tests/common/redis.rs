//! A real Redis server (Debian's `redis-server`) on a free loopback port in a temp dir,
//! stopped when dropped, and a small client to change its keys.
//!
//! The server writes an append-only file with every write synced, so a restart keeps the
//! keys, as a production server would.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::etcd::free_port;
use super::wait_for;

/// A running redis-server.
pub struct Redis {
    dir: tempfile::TempDir,
    port: u16,
    /// The password the server requires, if any.
    password: Option<String>,
    /// Configuration lines after the defaults.
    extra: String,
    process: Option<Child>,
    /// The helper's own connection, opened on first use and after a restart.
    connection: Mutex<Option<::redis::Connection>>,
}

impl Redis {
    /// A server with the default settings.
    pub fn start() -> Redis {
        Redis::start_with("", None)
    }

    /// A server whose configuration file ends with `extra` (such as `rename-command CONFIG
    /// ""`); `password` is the `requirepass` it sets, if any.
    pub fn start_with(extra: &str, password: Option<&str>) -> Redis {
        // Another test may take a port between its check and the server's bind; then the
        // server exits and the next attempt takes another port.
        for _ in 0..5 {
            let mut redis = Redis {
                dir: tempfile::tempdir().expect("temp dir"),
                port: free_port(),
                password: password.map(str::to_string),
                extra: extra.to_string(),
                process: None,
                connection: Mutex::new(None),
            };
            if redis.launch() {
                return redis;
            }
        }
        panic!("redis-server did not start");
    }

    /// The node URL, without credentials.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (it writes its data on the way out) and starts it again on the same
    /// port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.launch(), "redis-server did not start again");
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        *self.connection.lock().expect("connection lock") = None;
        if let Some(mut process) = self.process.take() {
            let pid = nix::unistd::Pid::from_raw(process.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = process.wait();
        }
    }

    /// Starts the server and waits until it answers PING; false when it exited instead.
    fn launch(&mut self) -> bool {
        let dir = self.dir.path();
        let mut config = format!(
            "port {port}\nbind 127.0.0.1\ndir {dir}\nsave \"\"\nappendonly yes\n\
             appendfsync always\nlogfile \"\"\n",
            port = self.port,
            dir = dir.display()
        );
        if let Some(password) = &self.password {
            config.push_str(&format!("requirepass {password}\n"));
        }
        config.push_str(&self.extra);
        config.push('\n');
        let config_file = dir.join("redis.conf");
        std::fs::write(&config_file, config).expect("redis config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("redis.log"))
            .expect("redis log");
        let process = Command::new("redis-server")
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (installed by scripts/test.sh)");
        self.process = Some(process);
        let answered = wait_for(Duration::from_secs(20), || {
            if self.exited() {
                return true;
            }
            self.query::<String>(&mut ::redis::cmd("PING"))
                .is_ok_and(|pong| pong == "PONG")
        });
        if !answered || self.exited() {
            self.stop();
            return false;
        }
        true
    }

    fn exited(&mut self) -> bool {
        self.process
            .as_mut()
            .is_none_or(|process| process.try_wait().ok().flatten().is_some())
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Sends one command on the helper's connection, connecting first when needed.
    fn query<T: ::redis::FromRedisValue>(
        &self,
        command: &mut ::redis::Cmd,
    ) -> ::redis::RedisResult<T> {
        let mut connection = self.connection.lock().expect("connection lock");
        if connection.is_none() {
            let url = match &self.password {
                Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
                None => self.url(),
            };
            let client = ::redis::Client::open(url)?;
            *connection = Some(client.get_connection_with_timeout(Duration::from_secs(5))?);
        }
        let answer = command.query(connection.as_mut().expect("connected above"));
        if answer.as_ref().is_err_and(|e| e.is_unrecoverable_error()) {
            *connection = None;
        }
        answer
    }

    /// Runs a command that must succeed.
    fn must<T: ::redis::FromRedisValue>(&self, command: &mut ::redis::Cmd) -> T {
        self.query(command)
            .unwrap_or_else(|e| panic!("redis {command:?}: {e}\n{}", self.log()))
    }

    /// SET `key` `value`.
    pub fn set(&self, key: &str, value: &str) {
        self.must::<()>(::redis::cmd("SET").arg(key).arg(value));
    }

    /// PEXPIRE `key` `milliseconds`: the key expires that long from now.
    pub fn expire(&self, key: &str, milliseconds: u64) {
        self.must::<()>(::redis::cmd("PEXPIRE").arg(key).arg(milliseconds));
    }

    /// MSET of all `pairs`, in chunks.
    pub fn set_all(&self, pairs: &[(&str, &str)]) {
        for chunk in pairs.chunks(1000) {
            let mut command = ::redis::cmd("MSET");
            for (key, value) in chunk {
                command.arg(key).arg(value);
            }
            self.must::<()>(&mut command);
        }
    }

    /// DEL `key`.
    pub fn del(&self, key: &str) {
        self.must::<()>(::redis::cmd("DEL").arg(key));
    }

    /// HSET `key` `field` `value`.
    pub fn hset(&self, key: &str, field: &str, value: &str) {
        self.must::<()>(::redis::cmd("HSET").arg(key).arg(field).arg(value));
    }

    /// HDEL `key` `field`.
    pub fn hdel(&self, key: &str, field: &str) {
        self.must::<()>(::redis::cmd("HDEL").arg(key).arg(field));
    }

    /// A command given word by word, which must succeed (`ACL SETUSER ...`, say).
    pub fn command(&self, words: &[&str]) {
        let mut command = ::redis::cmd(words[0]);
        for word in &words[1..] {
            command.arg(*word);
        }
        self.must::<::redis::Value>(&mut command);
    }

    /// CONFIG SET `parameter` `value`.
    pub fn config_set(&self, parameter: &str, value: &str) {
        self.must::<()>(::redis::cmd("CONFIG").arg("SET").arg(parameter).arg(value));
    }

    /// CONFIG GET `parameter`.
    pub fn config_get(&self, parameter: &str) -> String {
        let (_, value): (String, String) =
            self.must(::redis::cmd("CONFIG").arg("GET").arg(parameter));
        value
    }

    /// RPUSH `key` `value`: a list, which reconfd does not read.
    pub fn rpush(&self, key: &str, value: &str) {
        self.must::<()>(::redis::cmd("RPUSH").arg(key).arg(value));
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}
