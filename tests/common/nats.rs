//! A real nats server for tests (Debian's `nats-server`, with JetStream) on a free loopback
//! port with its store in a temp dir, stopped when dropped, and a small client that writes
//! reconfd keys into its key/value bucket.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv, stream};

use super::etcd::free_port;

/// The bucket reconfd reads by default, which [`Nats::start`] creates.
pub const BUCKET: &str = "reconfd";

/// Debian installs the server outside a normal user's PATH.
const SERVER: &str = "/usr/sbin/nats-server";

/// The user of a server started with [`Nats::start_with_users`] that may do anything; the
/// helper's own client logs in as it.
pub const ADMIN: (&str, &str) = ("admin", "admin-pw");

/// The user of a server started with [`Nats::start_with_users`] that may not make JetStream
/// requests, so it cannot read a bucket.
pub const NO_JETSTREAM: (&str, &str) = ("outsider", "outsider-pw");

/// A nats-server with JetStream, and a client of its bucket.
pub struct Nats {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<Child>,
    runtime: tokio::runtime::Runtime,
    /// The client and bucket while the server runs.
    bucket: Option<(async_nats::Client, kv::Store)>,
    /// The server's configuration file, if it has one.
    config: Option<String>,
    /// The user and password the helper's client logs in with, if the server wants one.
    credentials: Option<(&'static str, &'static str)>,
}

impl Nats {
    /// A running server with the bucket [`BUCKET`].
    pub fn start() -> Nats {
        let mut nats = Nats::start_without_bucket();
        nats.create_bucket(BUCKET);
        nats
    }

    /// A running server with no bucket at all.
    pub fn start_without_bucket() -> Nats {
        Nats::start_configured(None, None)
    }

    /// A running server with the bucket [`BUCKET`] that wants a user and a password: the
    /// users [`ADMIN`] and [`NO_JETSTREAM`].
    pub fn start_with_users() -> Nats {
        let config = format!(
            "authorization {{\n  users = [\n    {{ user: {admin}, password: {admin_pw} }}\n    \
             {{ user: {outsider}, password: {outsider_pw}, permissions: {{ publish: {{ deny: \
             [\"$JS.API.>\"] }} }} }}\n  ]\n}}\n",
            admin = ADMIN.0,
            admin_pw = ADMIN.1,
            outsider = NO_JETSTREAM.0,
            outsider_pw = NO_JETSTREAM.1,
        );
        let mut nats = Nats::start_configured(Some(config), Some(ADMIN));
        nats.create_bucket(BUCKET);
        nats
    }

    fn start_configured(
        config: Option<String>,
        credentials: Option<(&'static str, &'static str)>,
    ) -> Nats {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut nats = Nats {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            process: None,
            runtime,
            bucket: None,
            config,
            credentials,
        };
        nats.launch();
        nats.connect();
        nats
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name` (keeping one value per key) and writes to it from now on.
    pub fn create_bucket(&mut self, name: &str) {
        let client = self.connect();
        let context = self.jetstream(&client);
        // The stream NATS's KV clients create for a bucket. async-nats's own
        // `create_key_value` first reads the account's limits, which it cannot parse from a
        // 2.9 server.
        let config = stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_bytes: -1,
            max_message_size: -1,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: 1,
            ..stream::Config::default()
        };
        self.retry("create the bucket", || {
            context.create_stream(config.clone())
        });
        let store = self.retry("open the bucket", || context.get_key_value(name));
        self.bucket = Some((client, store));
    }

    /// Deletes bucket [`BUCKET`] and creates it again, empty.
    pub fn recreate_bucket(&mut self) {
        let client = self.connect();
        self.runtime
            .block_on(self.jetstream(&client).delete_key_value(BUCKET))
            .expect("delete the bucket");
        self.create_bucket(BUCKET);
    }

    /// Writes reconfd key `key` (`/a/b` is the NATS key `a.b`); returns its revision.
    pub fn put(&self, key: &str, value: &str) -> u64 {
        let store = self.store();
        self.runtime
            .block_on(store.put(nats_key(key), value.to_string().into()))
            .unwrap_or_else(|e| panic!("put {key}: {e}"))
    }

    /// Writes many keys, sending them all before waiting for the acknowledgements.
    pub fn put_all(&self, pairs: &[(&str, &str)]) {
        let (client, _) = self.bucket.as_ref().expect("a bucket");
        let context = self.jetstream(client);
        self.runtime.block_on(async {
            for chunk in pairs.chunks(1000) {
                let mut acks = Vec::with_capacity(chunk.len());
                for (key, value) in chunk {
                    let subject = format!("$KV.{BUCKET}.{}", nats_key(key));
                    acks.push(
                        context
                            .publish(subject, value.to_string().into())
                            .await
                            .expect("publish"),
                    );
                }
                for ack in acks {
                    ack.await.expect("acknowledged");
                }
            }
        });
    }

    /// Deletes `key`, leaving a delete marker as NATS's clients do.
    pub fn delete(&self, key: &str) {
        let store = self.store();
        self.runtime
            .block_on(store.delete(nats_key(key)))
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    /// Purges `key`: its history goes, a purge marker stays.
    pub fn purge(&self, key: &str) {
        let store = self.store();
        self.runtime
            .block_on(store.purge(nats_key(key)))
            .unwrap_or_else(|e| panic!("purge {key}: {e}"));
    }

    /// Stops the server (SIGTERM, waiting for it to exit).
    pub fn stop(&mut self) {
        self.bucket = None;
        let Some(mut process) = self.process.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(process.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = process.kill();
        let _ = process.wait();
    }

    /// Stops the server and starts it again on the same port with the same store: the
    /// bucket and its keys survive.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
        let client = self.connect();
        let context = self.jetstream(&client);
        let store = self.retry("open the bucket after the restart", || {
            context.get_key_value(BUCKET)
        });
        self.bucket = Some((client, store));
    }

    fn store(&self) -> kv::Store {
        self.bucket
            .as_ref()
            .map(|(_, store)| store.clone())
            .expect("a bucket")
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .expect("nats log");
        let mut command = Command::new(SERVER);
        if let Some(config) = &self.config {
            let file = self.dir.path().join("nats.conf");
            std::fs::write(&file, config).expect("nats config");
            command.arg("-c").arg(file);
        }
        let process = command
            .arg("-js")
            .arg("-sd")
            .arg(self.store_dir())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server (installed by scripts/test.sh)");
        self.process = Some(process);
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A JetStream context for `client`, made inside the runtime whose timers it uses.
    fn jetstream(&self, client: &async_nats::Client) -> jetstream::Context {
        let _entered = self.runtime.enter();
        jetstream::new(client.clone())
    }

    /// A client, once the server accepts connections.
    fn connect(&self) -> async_nats::Client {
        let url = self.url();
        let credentials = self.credentials;
        self.retry("connect", || {
            let options = match credentials {
                Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(
                    user.to_string(),
                    password.to_string(),
                ),
                None => async_nats::ConnectOptions::new(),
            };
            options.connect(url.clone())
        })
    }

    /// What `attempt` gives once it succeeds: JetStream answers a moment after the server
    /// accepts connections.
    fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> F,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.runtime.block_on(attempt()) {
                Ok(value) => return value,
                Err(e) if Instant::now() >= deadline => panic!(
                    "{what} on {}: {e}\n{}",
                    self.url(),
                    std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The NATS key of reconfd key `key`, as the store maps them.
fn nats_key(key: &str) -> String {
    key.trim_start_matches('/').replace('/', ".")
}
