//! Real etcd servers (Debian's `etcd-server`) on free loopback ports in a temp dir, stopped
//! when dropped, a small client for their HTTP/JSON gateway, and etcd's gRPC proxy.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

pub use super::certificates::Certificates;
use super::certificates::make_certificates;
use super::wait_for;

/// One etcd member: its ports, data directory and process while it runs.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
    /// Stopped with SIGSTOP: the helper's own requests go to another member.
    frozen: bool,
}

/// An etcd cluster of one or more members on loopback.
pub struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    http: reqwest::blocking::Client,
    /// With TLS, the certificates; members then serve `https` only.
    tls: Option<Certificates>,
    /// User and password once authentication is enabled, and the current token.
    auth: Option<(String, String)>,
    token: std::sync::Mutex<Option<String>>,
}

/// A blocking HTTP client for tests. reqwest is built without a default crypto provider, so
/// ring is installed first.
pub fn http_client() -> reqwest::blocking::Client {
    reconfd::store::tls::install_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .expect("HTTP client")
}

/// A client that trusts the test CA and presents the test client certificate.
fn tls_client(certificates: &Certificates) -> reqwest::blocking::Client {
    reconfd::store::tls::install_provider();
    let read = |path: &PathBuf| std::fs::read(path).expect("certificate file");
    let mut identity = read(&certificates.client_cert);
    identity.extend(read(&certificates.client_key));
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(&read(&certificates.ca)).expect("CA")])
        .identity(reqwest::Identity::from_pem(&identity).expect("client identity"))
        .build()
        .expect("HTTP client")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Etcd {
    /// A single-member etcd, running and healthy.
    pub fn start() -> Etcd {
        Etcd::cluster(1)
    }

    /// A cluster of `size` members, all running and healthy.
    pub fn cluster(size: usize) -> Etcd {
        Etcd::launch_all(size, false)
    }

    /// A single-member etcd that serves TLS only and requires a client certificate.
    pub fn start_tls() -> Etcd {
        Etcd::launch_all(1, true)
    }

    fn launch_all(size: usize, tls: bool) -> Etcd {
        let members: Vec<Member> = (0..size)
            .map(|index| Member {
                name: format!("member{index}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
                frozen: false,
            })
            .collect();
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = tls.then(|| make_certificates(dir.path()));
        let http = match &tls {
            None => http_client(),
            Some(certificates) => tls_client(certificates),
        };
        let mut etcd = Etcd {
            dir,
            members,
            http,
            tls,
            auth: None,
            token: std::sync::Mutex::new(None),
        };
        for index in 0..size {
            etcd.launch(index);
        }
        for index in 0..size {
            etcd.wait_healthy(index);
        }
        etcd
    }

    fn launch(&mut self, index: usize) {
        let initial_cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect();
        let member = &self.members[index];
        let data = self.dir.path().join(&member.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .expect("etcd log");
        let client_url = format!("{}://127.0.0.1:{}", self.scheme(), member.client_port);
        let peer_url = format!("http://127.0.0.1:{}", member.peer_port);
        let mut command = Command::new("etcd");
        if let Some(certificates) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&certificates.server_cert)
                .arg("--key-file")
                .arg(&certificates.server_key)
                .arg("--trusted-ca-file")
                .arg(&certificates.ca)
                .arg("--client-cert-auth");
        }
        let process = command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &initial_cluster.join(",")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "reconfd-test"])
            // Tests load thousands of keys in one transaction.
            .args(["--max-txn-ops", "20000", "--max-request-bytes", "10485760"])
            // Short-lived authentication tokens, so that renewal is exercised; zap's log says
            // when each one is dropped.
            .args(["--auth-token-ttl", "1"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (installed by scripts/test.sh)");
        self.members[index].process = Some(process);
    }

    fn wait_healthy(&self, index: usize) {
        let url = format!("{}/health", self.endpoint(index));
        let healthy = wait_for(Duration::from_secs(20), || {
            self.http
                .get(&url)
                .send()
                .and_then(|response| response.json::<Value>())
                .is_ok_and(|health| health["health"] == "true")
        });
        assert!(
            healthy,
            "etcd {index} did not become healthy\n{}",
            self.log(index)
        );
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client address of member `index`.
    pub fn address(&self, index: usize) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.members[index].client_port))
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) member `index`: a node that keeps its
    /// connections open but answers nothing.
    pub fn freeze(&mut self, index: usize, frozen: bool) {
        self.members[index].frozen = frozen;
        let process = self.members[index].process.as_ref().expect("running");
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(process.id() as i32), signal)
            .expect("signal etcd");
    }

    /// The client URL of member `index`.
    pub fn endpoint(&self, index: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[index].client_port
        )
    }

    /// The certificates of a TLS etcd.
    pub fn certificates(&self) -> &Certificates {
        self.tls.as_ref().expect("started with start_tls")
    }

    /// Adds user `user` with the root role and turns authentication on; later calls of this
    /// helper authenticate as that user.
    pub fn enable_auth(&mut self, user: &str, password: &str) {
        self.call(
            "/v3/auth/user/add",
            json!({"name": user, "password": password}),
        );
        self.call("/v3/auth/user/grant", json!({"user": user, "role": "root"}));
        self.call("/v3/auth/enable", json!({}));
        self.auth = Some((user.to_string(), password.to_string()));
    }

    /// Adds user `user` whose role may read under each of `prefixes` and nothing else; needs
    /// authentication on.
    pub fn add_reader(&self, user: &str, password: &str, prefixes: &[&str]) {
        let role = format!("{user}-role");
        self.call("/v3/auth/role/add", json!({"name": role}));
        for prefix in prefixes {
            let mut end = prefix.as_bytes().to_vec();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            self.call(
                "/v3/auth/role/grant",
                json!({"name": role, "perm": {
                    "permType": "READ",
                    "key": BASE64.encode(prefix),
                    "range_end": BASE64.encode(end),
                }}),
            );
        }
        self.call(
            "/v3/auth/user/add",
            json!({"name": user, "password": password}),
        );
        self.call("/v3/auth/user/grant", json!({"user": user, "role": role}));
    }

    fn authenticate(&self) -> Option<String> {
        let (user, password) = self.auth.as_ref()?;
        let answer: Value = self
            .http
            .post(format!("{}/v3/auth/authenticate", self.live_endpoint()))
            .json(&json!({"name": user, "password": password}))
            .send()
            .and_then(|response| response.json())
            .expect("authenticate");
        let token = answer["token"].as_str().expect("a token").to_string();
        *self.token.lock().expect("lock") = Some(token.clone());
        Some(token)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Member `index`'s log, for failure messages.
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[index].name)),
        )
        .unwrap_or_default()
    }

    /// Kills member `index` at once, as a crash would.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.members[index].process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// Replaces member `index` of a single-member cluster with a new, empty one on the same
    /// ports, as a restore from an old backup or a rebuild would.
    pub fn rebuild(&mut self, index: usize) {
        self.kill(index);
        let data = self.dir.path().join(&self.members[index].name);
        std::fs::remove_dir_all(data).expect("remove the data directory");
        self.launch(index);
        self.wait_healthy(index);
    }

    /// Replaces member `index` of a single-member cluster with a new one holding only `pairs`,
    /// each put on its own (a revision each) before the member listens on its client port
    /// again: a wiped etcd that a script filled past the revisions its clients had seen
    /// before they could reach it.
    pub fn rebuild_filled(&mut self, index: usize, pairs: &[(&str, &str)]) {
        self.kill(index);
        let data = self.dir.path().join(&self.members[index].name);
        std::fs::remove_dir_all(data).expect("remove the data directory");
        let client_port = self.members[index].client_port;
        self.members[index].client_port = free_port();
        self.launch(index);
        self.wait_healthy(index);
        for (key, value) in pairs {
            self.put(key, value);
        }
        self.kill(index);
        self.members[index].client_port = client_port;
        self.launch(index);
        self.wait_healthy(index);
    }

    /// Starts member `index` again on its data directory and waits until it is healthy.
    pub fn restart(&mut self, index: usize) {
        self.kill(index);
        self.launch(index);
        self.wait_healthy(index);
    }

    /// The first running member's client URL.
    fn live_endpoint(&self) -> String {
        let index = self
            .members
            .iter()
            .position(|m| m.process.is_some() && !m.frozen)
            .expect("a running member");
        self.endpoint(index)
    }

    fn call(&self, path: &str, body: Value) -> Value {
        // A cluster that just lost a member may need a moment to elect a leader.
        let mut last = String::new();
        for _ in 0..50 {
            let cached = self.token.lock().expect("lock").clone();
            let token = cached.or_else(|| self.authenticate());
            let mut request = self
                .http
                .post(format!("{}{path}", self.live_endpoint()))
                .json(&body);
            if let Some(token) = token {
                request = request.header("Authorization", token);
            }
            match request.send() {
                Ok(response) if response.status().is_success() => {
                    return response.json().expect("JSON answer");
                }
                Ok(response) if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    // The token expired: get a new one.
                    *self.token.lock().expect("lock") = None;
                    last = response.text().unwrap_or_default();
                }
                Ok(response) => last = response.text().unwrap_or_default(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd {path} failed: {last}");
    }

    /// Sets `key` to `value`; returns the new revision.
    pub fn put(&self, key: &str, value: &str) -> i64 {
        let answer = self.call(
            "/v3/kv/put",
            json!({"key": BASE64.encode(key), "value": BASE64.encode(value)}),
        );
        revision(&answer)
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) {
        self.call("/v3/kv/deleterange", json!({"key": BASE64.encode(key)}));
    }

    /// Puts all `pairs` in one transaction: one revision, one watch message.
    pub fn put_all(&self, pairs: &[(&str, &str)]) {
        let success: Vec<Value> = pairs
            .iter()
            .map(|(key, value)| {
                json!({"request_put": {"key": BASE64.encode(key), "value": BASE64.encode(value)}})
            })
            .collect();
        self.call("/v3/kv/txn", json!({"success": success}));
    }

    /// Compacts the history up to `revision`, physically.
    pub fn compact(&self, revision: i64) {
        self.call(
            "/v3/kv/compaction",
            json!({"revision": revision.to_string(), "physical": true}),
        );
    }

    /// The cluster's current revision.
    pub fn revision(&self) -> i64 {
        revision(&self.call("/v3/kv/range", json!({"key": BASE64.encode("/")})))
    }

    /// Member `index`'s Prometheus metrics as text.
    pub fn metrics(&self, index: usize) -> String {
        self.http
            .get(format!("{}/metrics", self.endpoint(index)))
            .send()
            .and_then(|response| response.text())
            .expect("metrics")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

fn revision(answer: &Value) -> i64 {
    answer["header"]["revision"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .expect("a revision in the answer")
}

/// etcd's gRPC proxy (`etcd grpc-proxy start`) in front of an etcd, on a loopback port of its
/// own, with its data directory in a temp dir; stopped when dropped.
pub struct GrpcProxy {
    dir: tempfile::TempDir,
    port: u16,
    /// The client URLs of the etcd members behind it.
    upstream: Vec<String>,
    process: Option<Child>,
    http: reqwest::blocking::Client,
}

impl GrpcProxy {
    /// A proxy in front of `etcd` (which serves plain HTTP), running and healthy.
    pub fn start(etcd: &Etcd) -> GrpcProxy {
        let mut proxy = GrpcProxy {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
            upstream: etcd.endpoints(),
            process: None,
            http: http_client(),
        };
        proxy.launch();
        proxy
    }

    /// The proxy's URL, for `--node`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the proxy, as a crash would, and starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Kills the proxy, runs `meanwhile` (on the etcd behind it), and starts the proxy again on
    /// the same port.
    pub fn restart_after(&mut self, meanwhile: impl FnOnce()) {
        self.kill();
        meanwhile();
        self.launch();
    }

    /// The proxy's process id while it runs, to read its CPU time.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// What the proxy logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("proxy.log"))
            .expect("proxy log");
        let process = Command::new("etcd")
            .args(["grpc-proxy", "start"])
            .arg(format!("--endpoints={}", self.upstream.join(",")))
            .arg(format!("--listen-addr=127.0.0.1:{}", self.port))
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd's gRPC proxy");
        self.process = Some(process);
        let url = format!("{}/health", self.endpoint());
        let healthy = wait_for(Duration::from_secs(20), || {
            self.http
                .get(&url)
                .send()
                .and_then(|response| response.json::<Value>())
                .is_ok_and(|health| health["health"] == "true")
        });
        assert!(healthy, "the gRPC proxy did not come up\n{}", self.log());
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for GrpcProxy {
    fn drop(&mut self) {
        self.kill();
    }
}
