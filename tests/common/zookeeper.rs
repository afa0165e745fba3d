//! A real ZooKeeper for tests (Debian's `zookeeper`, run in a JVM): standalone, on a free
//! loopback port in a temp dir, stopped when dropped, and a client to create, change and delete
//! znodes with.

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zookeeper_client as zk;

use super::etcd::free_port;

/// ZooKeeper's jar names the jars it needs in its manifest; slf4j-simple writes the server's
/// log to standard error.
const CLASSPATH: &str = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar";

/// Every znode the helper creates is open to all, as confd's users' znodes usually are.
const CREATE: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

/// Znodes created by one request each, at most this many outstanding at once.
const CREATES_IN_FLIGHT: usize = 1000;

/// A standalone ZooKeeper on loopback, and a session on it for the test's own changes.
pub struct Zookeeper {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<Child>,
    client: Mutex<Option<zk::Client>>,
    runtime: Background,
}

impl Zookeeper {
    /// A server, running and serving.
    pub fn start() -> Zookeeper {
        let mut zookeeper = Zookeeper::stopped();
        zookeeper.launch();
        zookeeper
    }

    /// A server with its port and data directory chosen but not started: connections to it
    /// are refused until [`Zookeeper::launch`].
    pub fn stopped() -> Zookeeper {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let config = format!(
            "tickTime=2000\n\
             dataDir={}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n",
            dir.path().join("data").display()
        );
        std::fs::write(dir.path().join("zoo.cfg"), config).expect("zoo.cfg");
        Zookeeper {
            dir,
            port,
            process: None,
            client: Mutex::new(None),
            runtime: Background::start(),
        }
    }

    /// `127.0.0.1:<port>`, as reconfd's `--node` takes it.
    pub fn node(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server on its port and data directory and waits until it serves.
    pub fn launch(&mut self) {
        assert!(self.process.is_none(), "ZooKeeper is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("zookeeper.log"))
            .expect("ZooKeeper log");
        let process = Command::new("java")
            .args(["-Xmx256m", "-XX:+UseSerialGC", "-cp", CLASSPATH])
            .arg("org.apache.zookeeper.server.ZooKeeperServerMain")
            .arg(self.dir.path().join("zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start ZooKeeper (java and zookeeper, installed by scripts/test.sh)");
        self.process = Some(process);
        self.wait_serving();
    }

    /// Kills the server. Its data directory stays for [`Zookeeper::launch`].
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
        // The helper's session would spend its time reconnecting; the next call opens another.
        *self.client.lock().expect("client") = None;
    }

    /// Stops the server and starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }

    /// Sets `path` to `value`, creating it and its missing parents (with empty data).
    pub fn put(&self, path: &str, value: &str) {
        let client = self.client();
        let (owned_path, value) = (path.to_string(), value.to_string());
        self.runtime
            .run(async move { put(&client, &owned_path, &value).await })
            .unwrap_or_else(|e| panic!("put {path}: {e}"));
    }

    /// Sets every pair as [`Zookeeper::put`] does, many requests at once.
    pub fn put_all(&self, pairs: &[(&str, &str)]) {
        let client = self.client();
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(path, value)| (path.to_string(), value.to_string()))
            .collect();
        self.runtime.run(async move {
            let parents: std::collections::BTreeSet<&str> = pairs
                .iter()
                .filter_map(|(path, _)| path.rsplit_once('/').map(|(parent, _)| parent))
                .filter(|parent| !parent.is_empty())
                .collect();
            for parent in parents {
                client
                    .mkdir(parent, &CREATE)
                    .await
                    .unwrap_or_else(|e| panic!("mkdir {parent}: {e}"));
            }
            for chunk in pairs.chunks(CREATES_IN_FLIGHT) {
                let puts = chunk.iter().map(|(path, value)| {
                    let client = &client;
                    async move {
                        put(client, path, value)
                            .await
                            .unwrap_or_else(|e| panic!("put {path}: {e}"));
                    }
                });
                futures_util::future::join_all(puts).await;
            }
        });
    }

    /// Lets anyone read `path`, or, with `readable` false, anyone do anything with it but
    /// read it (its ACL can still be changed back).
    pub fn set_readable(&self, path: &str, readable: bool) {
        let client = self.client();
        let owned_path = path.to_string();
        let permission = if readable {
            zk::Permission::ALL
        } else {
            zk::Permission::WRITE
                | zk::Permission::CREATE
                | zk::Permission::DELETE
                | zk::Permission::ADMIN
        };
        self.runtime
            .run(async move {
                let acl = [zk::Acl::new(permission, zk::AuthId::anyone())];
                client.set_acl(&owned_path, &acl, None).await
            })
            .unwrap_or_else(|e| panic!("set the ACL of {path}: {e}"));
    }

    /// Deletes `path` and everything under it.
    pub fn delete(&self, path: &str) {
        let client = self.client();
        let path = path.to_string();
        self.runtime.run(async move {
            let mut subtree = vec![path.clone()];
            let mut index = 0;
            while index < subtree.len() {
                let parent = subtree[index].clone();
                let children = client
                    .list_children(&parent)
                    .await
                    .unwrap_or_else(|e| panic!("list {parent}: {e}"));
                subtree.extend(children.iter().map(|child| format!("{parent}/{child}")));
                index += 1;
            }
            // Children before their parents: ZooKeeper deletes only znodes without children.
            for znode in subtree.iter().rev() {
                client
                    .delete(znode, None)
                    .await
                    .unwrap_or_else(|e| panic!("delete {znode}: {e}"));
            }
        });
    }

    /// The helper's session, opened again after the server was stopped.
    fn client(&self) -> zk::Client {
        let mut current = self.client.lock().expect("client");
        if let Some(client) = current
            .as_ref()
            .filter(|client| client.state() == zk::SessionState::SyncConnected)
        {
            return client.clone();
        }
        let node = self.node();
        let client = self
            .runtime
            .run(async move { connect(&node).await })
            .unwrap_or_else(|e| panic!("connect to ZooKeeper on {}: {e}", self.node()));
        *current = Some(client.clone());
        client
    }

    /// Waits up to 30 s until a session can be opened and the root read.
    fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = self.node();
            let served = self.runtime.run(async move {
                let client = connect(&node).await?;
                client.check_stat("/").await?;
                Ok::<_, zk::Error>(client)
            });
            match served {
                Ok(client) => {
                    *self.client.lock().expect("client") = Some(client);
                    return;
                }
                Err(e) => {
                    if let Some(status) = self
                        .process
                        .as_mut()
                        .and_then(|process| process.try_wait().ok().flatten())
                    {
                        panic!("ZooKeeper exited with {status}\n{}", self.log());
                    }
                    assert!(
                        Instant::now() < deadline,
                        "ZooKeeper on {} did not serve within 30 s: {e}\n{}",
                        self.node(),
                        self.log()
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

impl Drop for Zookeeper {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

async fn connect(node: &str) -> Result<zk::Client, zk::Error> {
    zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .with_fail_eagerly()
        .connect(node)
        .await
}

/// Sets `path`, or creates it with its missing parents.
async fn put(client: &zk::Client, path: &str, value: &str) -> Result<(), zk::Error> {
    match client.set_data(path, value.as_bytes(), None).await {
        Err(zk::Error::NoNode) => {}
        other => return other.map(|_| ()),
    }
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
    {
        client.mkdir(parent, &CREATE).await?;
    }
    match client.create(path, value.as_bytes(), &CREATE).await {
        // Created meanwhile by another put.
        Err(zk::Error::NodeExists) => client
            .set_data(path, value.as_bytes(), None)
            .await
            .map(|_| ()),
        other => other.map(|_| ()),
    }
}

/// A tokio runtime on a thread of its own: the helper's session answers the server between
/// the test's calls, as it must to stay alive.
struct Background {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start() -> Background {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        Background {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `future` on the runtime's thread and waits for its result.
    fn run<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        match self.handle.block_on(self.handle.spawn(future)) {
            Ok(result) => result,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
