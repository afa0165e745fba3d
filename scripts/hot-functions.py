#!/usr/bin/env python3
"""Writes scripts/hot-functions.txt: the functions reconfd's common paths run, in link order.

A daemon's resident memory is mostly the binary's code, and the kernel maps code 64 KiB around
every page touched. Left to itself, the linker scatters the few thousand functions a daemon
runs over the whole 11 MB of code, so it ends up mapping most of it. build.rs hands this list
to the linker (`--symbol-ordering-file`) for release builds, which puts these functions first
and together: the same work then keeps about 40 % of the code pages resident.

The list holds symbol names, whose hashes depend on the toolchain, on Cargo.lock and on the
features the build unifies. So it is made for the two builds that matter, each run under
valgrind's callgrind through the same scenarios:
  - `cargo build --release`, what users and scripts/deb.sh build;
  - the build `cargo bench` makes, where dev-dependencies add features (tokio's test-util),
    which changes every hash.
A name the binary does not have is skipped by the linker, so a stale list costs memory, never
correctness. Run this after a toolchain or dependency update (the etcd benchmark's idle row
says how much of the list the binary still has). Beside the list it writes
scripts/hot-functions.for, the dependencies the names were made with (Cargo.lock, Cargo.toml's
dependency tables), which tests/release_build.rs compares with the checkout's, so a commit
that stales the list fails the tests until the list is made again. The toolchain is not
compared: a contributor's newer rustc stales the list for their build only.

Needs: valgrind, etcd, redis-server, nats-server and ZooKeeper (scripts/test.sh installs the
servers). Takes about a quarter of an hour, most of it the two release builds. Consul and Vault
are not in the scenarios: Debian packages neither server.

Usage: scripts/hot-functions.py
"""

import base64
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIST = os.path.join(REPO, "scripts", "hot-functions.txt")
MADE_FOR = os.path.join(REPO, "scripts", "hot-functions.for")
# Cargo.toml's tables whose contents change the crates' symbol names (their versions and
# features).
DEPENDENCY_TABLES = {"dependencies", "dev-dependencies", "build-dependencies", "features",
                     "patch"}
SERVERS_TEMPLATE = (
    '{% for kv in gets(key="/*") %}server {{ kv.key | base }} {{ kv.value }} check\n{% endfor %}'
)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, what, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    sys.exit(f"hot-functions: gave up waiting for {what}")


def file_holds(path, text):
    try:
        with open(path) as file:
            return text in file.read()
    except FileNotFoundError:
        return False


class Server:
    """A server process the scenarios started; `stop` ends it."""

    process = None

    def stop(self):
        self.process.terminate()
        self.process.wait()


class Etcd(Server):
    """etcd on free loopback ports, spoken to through its JSON gateway."""

    def __init__(self, directory):
        self.client = f"http://127.0.0.1:{free_port()}"
        peer = f"http://127.0.0.1:{free_port()}"
        self.process = subprocess.Popen(
            ["etcd", "--name", "hot", "--data-dir", os.path.join(directory, "etcd"),
             "--listen-client-urls", self.client, "--advertise-client-urls", self.client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"hot={peer}",
             "--max-txn-ops", "20000", "--max-request-bytes", "10485760"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.answers, "etcd")

    def call(self, path, body):
        request = urllib.request.Request(self.client + path, data=json.dumps(body).encode())
        with urllib.request.urlopen(request) as answer:
            return json.load(answer)

    def answers(self):
        try:
            self.call("/v3/kv/range", {"key": encode("/")})
            return True
        except OSError:
            return False

    def put_all(self, pairs):
        operations = [{"requestPut": {"key": encode(k), "value": encode(v)}} for k, v in pairs]
        self.call("/v3/kv/txn", {"success": operations})

    def put(self, key, value):
        self.call("/v3/kv/put", {"key": encode(key), "value": encode(value)})

class Redis(Server):
    """redis-server on a free loopback port, without persistence."""

    def __init__(self, directory):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.cli("PING") == "PONG", "redis-server")

    def cli(self, *words):
        answer = subprocess.run(["redis-cli", "-p", str(self.port), *words],
                                capture_output=True, text=True)
        return answer.stdout.strip()

class Nats(Server):
    """nats-server with JetStream on a free loopback port, holding the key/value bucket
    `reconfd`, spoken to in NATS's text protocol."""

    BUCKET = "reconfd"

    def __init__(self, directory):
        self.port = free_port()
        self.process = subprocess.Popen(
            ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", os.path.join(directory, "nats")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.connects, "nats-server")
        self.pending = b""
        self.socket.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        self.inbox = 0
        # The stream NATS's key/value clients create for a bucket.
        self.request(f"$JS.API.STREAM.CREATE.KV_{self.BUCKET}", json.dumps({
            "name": f"KV_{self.BUCKET}", "subjects": [f"$KV.{self.BUCKET}.>"],
            "max_msgs_per_subject": 1, "storage": "file", "allow_rollup_hdrs": True,
            "deny_delete": True, "allow_direct": True, "discard": "new", "num_replicas": 1,
        }).encode())

    def connects(self):
        try:
            self.socket = socket.create_connection(("127.0.0.1", self.port))
            return True
        except OSError:
            return False

    def line(self):
        while b"\r\n" not in self.pending:
            self.pending += self.socket.recv(65536)
        line, self.pending = self.pending.split(b"\r\n", 1)
        return line.decode()

    def request(self, subject, payload):
        """Publishes `payload` to `subject` and returns the answer's payload."""
        self.inbox += 1
        inbox = f"_INBOX.hot.{self.inbox}"
        self.socket.sendall(f"SUB {inbox} {self.inbox}\r\nPUB {subject} {inbox} "
                            f"{len(payload)}\r\n".encode() + payload + b"\r\n")
        while True:
            words = self.line().split()
            if words and words[0] == "PING":
                self.socket.sendall(b"PONG\r\n")
            elif words and words[0] == "MSG" and words[1] == inbox:
                size = int(words[-1])
                while len(self.pending) < size + 2:
                    self.pending += self.socket.recv(65536)
                answer, self.pending = self.pending[:size], self.pending[size + 2:]
                return answer

    def put(self, key, value):
        nats_key = key.strip("/").replace("/", ".")
        self.request(f"$KV.{self.BUCKET}.{nats_key}", value.encode())

    def stop(self):
        self.socket.close()
        super().stop()


class ZooKeeper(Server):
    """A ZooKeeper server on a free loopback port (Debian's package), written with zkCli.sh."""

    CLASSPATH = "/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar"

    def __init__(self, directory):
        self.port = free_port()
        config = os.path.join(directory, "zoo.cfg")
        with open(config, "w") as file:
            file.write(f"tickTime=2000\ndataDir={os.path.join(directory, 'zookeeper')}\n"
                       f"clientPort={self.port}\nclientPortAddress=127.0.0.1\n"
                       "admin.enableServer=false\n")
        self.process = subprocess.Popen(
            ["java", "-Xmx256m", "-XX:+UseSerialGC", "-cp", self.CLASSPATH,
             "org.apache.zookeeper.server.ZooKeeperServerMain", config],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.cli("ls", "/").returncode == 0, "ZooKeeper")

    def cli(self, *words):
        return subprocess.run(["/usr/share/zookeeper/bin/zkCli.sh", "-server",
                               f"127.0.0.1:{self.port}", *words], capture_output=True)

    def create(self, path, value=""):
        self.cli("create", path, value)

    def set(self, path, value):
        self.cli("set", path, value)

def encode(text):
    return base64.b64encode(text.encode()).decode()


class Scenarios:
    """The paths a user's reconfd takes, run with `binary` under callgrind into `out`."""

    def __init__(self, binary, out, work, servers):
        self.binary, self.out, self.work = binary, out, work
        self.etcd, self.redis, self.nats, self.zookeeper = servers
        self.health = f"127.0.0.1:{free_port()}"

    def command(self, tag, args):
        return ["valgrind", "--tool=callgrind", "--demangle=no",
                f"--callgrind-out-file={self.out}/{tag}.%p", self.binary,
                "--confdir", self.work, *args]

    def resources(self, **files):
        conf = os.path.join(self.work, "conf.d")
        for name in os.listdir(conf):
            os.remove(os.path.join(conf, name))
        for name, text in files.items():
            with open(os.path.join(conf, f"{name}.toml"), "w") as file:
                file.write("[template]\n" + text)

    def once(self, tag, args):
        subprocess.run(self.command(tag, args), cwd=self.work, check=True)

    def daemon(self, tag, args, dest, changes):
        """Starts a watching daemon, waits for `dest`, makes the changes in `changes` (a
        function and the text it should bring) but the last, asks the HTTP endpoints, reloads
        (SIGHUP), makes the last change, stops."""
        dest = os.path.join(self.work, dest)
        if os.path.exists(dest):
            os.remove(dest)
        process = subprocess.Popen(self.command(tag, ["--watch", "--listen", self.health, *args]),
                                   cwd=self.work)
        wait_until(lambda: os.path.exists(dest), f"{tag}: first render")
        *before_reload, after_reload = changes
        for change, text in before_reload:
            change()
            wait_until(lambda: file_holds(dest, text), f"{tag}: a change")
        for path, accept in [("/health", "*/*"), ("/ready", "*/*"), ("/metrics", "*/*"),
                             ("/status", "application/json"), ("/status", "text/html")]:
            request = urllib.request.Request(f"http://{self.health}{path}",
                                             headers={"Accept": accept})
            with urllib.request.urlopen(request) as answer:
                answer.read()
        process.send_signal(signal.SIGHUP)
        change, text = after_reload
        change()
        wait_until(lambda: file_holds(dest, text), f"{tag}: a change after SIGHUP")
        process.send_signal(signal.SIGTERM)
        if process.wait() != 0:
            sys.exit(f"hot-functions: {tag} exited with {process.returncode}")

    def run(self):
        etcd = ["--backend", "etcd", "--node", self.etcd.client]
        self.resources(haproxy='src = "haproxy.cfg.tmpl"\ndest = "haproxy.cfg"\n'
                               'keys = ["/proxy"]\ncheck_cmd = "true {{.src}}"\n'
                               'reload_cmd = "true"\n')
        self.once("onetime-etcd", ["--onetime", *etcd])
        self.once("onetime-etcd-noop", ["--onetime", "--noop", *etcd])
        self.resources(small='src = "servers.tmpl"\ndest = "small.conf"\n'
                             'prefix = "/bench/small"\nkeys = ["/"]\nreload_cmd = "true"\n')
        etcd_changes = [
            (lambda i=i: self.etcd.put("/bench/small/web00050", f"10.9.0.{i}:8080"),
             f"10.9.0.{i}:8080")
            for i in range(20)
        ]
        self.daemon("watch-etcd", etcd, "small.conf", etcd_changes)

        data = os.path.join(self.work, "data.yaml")
        shutil.copy(os.path.join(REPO, "examples", "haproxy.yaml"), data)
        file_store = ["--backend", "file", "--file", data]
        self.resources(haproxy='src = "haproxy.cfg.tmpl"\ndest = "haproxy.cfg"\n'
                               'keys = ["/proxy"]\n')
        self.once("onetime-file", ["--onetime", *file_store])

        def add_backend(number):
            with open(data, "a") as file:
                file.write(f"    web{number}: 127.0.0.1:{9000 + number}\n")
        file_changes = [(lambda n=n: add_backend(n), f"127.0.0.1:{9000 + n}") for n in (3, 4)]
        self.daemon("watch-file", file_store, "haproxy.cfg", file_changes)

        redis = ["--backend", "redis", "--node", f"redis://127.0.0.1:{self.redis.port}"]
        self.once("onetime-redis", ["--onetime", *redis])
        redis_changes = [
            (lambda i=i: self.redis.cli("SET", "/proxy/frontend/web1", f"10.8.0.{i}:80"),
             f"10.8.0.{i}:80")
            for i in range(5)
        ]
        self.daemon("watch-redis", redis, "haproxy.cfg", redis_changes)

        nats = ["--backend", "nats", "--node", f"nats://127.0.0.1:{self.nats.port}"]
        self.once("onetime-nats", ["--onetime", *nats])
        nats_changes = [
            (lambda i=i: self.nats.put("/proxy/frontend/web1", f"10.7.0.{i}:80"), f"10.7.0.{i}:80")
            for i in range(5)
        ]
        self.daemon("watch-nats", nats, "haproxy.cfg", nats_changes)

        zookeeper = ["--backend", "zookeeper", "--node", f"127.0.0.1:{self.zookeeper.port}"]
        self.once("onetime-zookeeper", ["--onetime", *zookeeper])
        zookeeper_changes = [
            (lambda i=i: self.zookeeper.set("/proxy/frontend/web1", f"10.6.0.{i}:80"),
             f"10.6.0.{i}:80")
            for i in range(3)
        ]
        self.daemon("watch-zookeeper", zookeeper, "haproxy.cfg", zookeeper_changes)

        env = dict(os.environ, PROXY_PORT="8081", PROXY_FRONTEND_WEB1="127.0.0.1:9001")
        subprocess.run(self.command("onetime-env", ["--onetime", "--backend", "env"]),
                       cwd=self.work, env=env, check=True)
        subprocess.run(self.command("help", ["--help"]), stdout=subprocess.DEVNULL, check=True)


def executed(callgrind_files):
    """Function names callgrind saw run, in the order first seen, recursion marks removed."""
    names = {}
    for path in callgrind_files:
        with open(path, errors="replace") as file:
            for line in file:
                match = re.match(r"c?fn=\(\d+\) (.+)$", line)
                if match:
                    names.setdefault(re.sub(r"'\d+$", "", match.group(1).strip()), None)
    return list(names)


def functions_in(binary):
    listing = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True,
                             check=True).stdout
    return {fields[2] for fields in map(str.split, listing.splitlines())
            if len(fields) == 3 and fields[1] in "tTwW"}


def link_order(out, binary):
    """The daemon's watch path first (an idle etcd daemon touches only that), then --onetime,
    then the rest; sorted within each, so that a module's functions sit together."""
    known = functions_in(binary)
    groups = [glob.glob(f"{out}/watch-etcd.*"), glob.glob(f"{out}/onetime-etcd*"),
              glob.glob(f"{out}/*")]
    order = {}
    for group in groups:
        order.update(dict.fromkeys(name for name in sorted(executed(group)) if name in known))
    return list(order)


def build(command, copy_to):
    subprocess.run(command, cwd=REPO, check=True)
    shutil.copy(os.path.join(REPO, "target", "release", "reconfd"), copy_to)


def made_for():
    """The dependencies the list's symbol names depend on, as tests/release_build.rs computes
    them: Cargo.lock's md5, and the md5 of Cargo.toml's dependency and feature tables (each
    table's lines, from its header to the next one, joined by newlines)."""
    with open(os.path.join(REPO, "Cargo.lock"), "rb") as file:
        lock = hashlib.md5(file.read()).hexdigest()
    with open(os.path.join(REPO, "Cargo.toml")) as file:
        tables = []
        keep = False
        for line in file.read().splitlines():
            if line.startswith("["):
                names = line.strip("[] ").split(".")
                keep = any(name in DEPENDENCY_TABLES for name in names)
            if keep:
                tables.append(line)
    manifest = hashlib.md5("\n".join(tables).encode()).hexdigest()
    return f"Cargo.lock {lock}\nCargo.toml {manifest}\n"


def main():
    with tempfile.TemporaryDirectory(prefix="reconfd-hot-") as scratch:
        binaries = {
            "release": os.path.join(scratch, "reconfd-release"),
            "bench": os.path.join(scratch, "reconfd-bench"),
        }
        build(["cargo", "build", "--release", "--bin", "reconfd"], binaries["release"])
        build(["cargo", "bench", "--no-run"], binaries["bench"])

        work = os.path.join(scratch, "work")
        for directory in ["conf.d", "templates"]:
            os.makedirs(os.path.join(work, directory))
        shutil.copy(os.path.join(REPO, "templates", "haproxy.cfg.tmpl"),
                    os.path.join(work, "templates"))
        with open(os.path.join(work, "templates", "servers.tmpl"), "w") as file:
            file.write(SERVERS_TEMPLATE)

        etcd = Etcd(scratch)
        redis = Redis(scratch)
        nats = Nats(scratch)
        zookeeper = ZooKeeper(scratch)
        try:
            frontends = [(f"/proxy/frontend/web{i:05}", f"10.0.{i // 256}.{i % 256}:8080")
                         for i in range(10_000)]
            etcd.put_all(frontends + [("/proxy/port", "8080")])
            etcd.put_all([(f"/bench/small/web{i:05}", f"10.1.0.{i}:8080") for i in range(100)])
            redis.cli("SET", "/proxy/port", "8080")
            redis.cli("SET", "/proxy/frontend/web1", "10.8.0.100:80")
            nats.put("/proxy/port", "8080")
            nats.put("/proxy/frontend/web1", "10.7.0.100:80")
            for path in ["/proxy", "/proxy/frontend"]:
                zookeeper.create(path)
            zookeeper.create("/proxy/port", "8080")
            zookeeper.create("/proxy/frontend/web1", "10.6.0.100:80")
            order = {}
            for kind, binary in binaries.items():
                out = os.path.join(scratch, f"callgrind-{kind}")
                os.makedirs(out)
                Scenarios(binary, out, work, (etcd, redis, nats, zookeeper)).run()
                names = link_order(out, binary)
                print(f"hot-functions: {kind} build: {len(names)} functions", flush=True)
                # The standard library and crates the features leave alone have the same
                # names in both builds: listed once.
                order.update(dict.fromkeys(names))
        finally:
            for server in (etcd, redis, nats, zookeeper):
                server.stop()
    with open(LIST, "w") as file:
        file.write("\n".join(order) + "\n")
    with open(MADE_FOR, "w") as file:
        file.write(made_for())
    print(f"hot-functions: wrote {LIST} and {MADE_FOR}")


if __name__ == "__main__":
    main()
