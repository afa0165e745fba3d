//! Secrets never leave the process: the values a secret resource reads (every value of Vault,
//! and of any store marked `secret`) are masked in log lines, `/status`, `/metrics` and
//! `--noop` diffs, including a check command's output and a template's error; and the password
//! in a node's URL is masked everywhere the node shows. Driven through the real binary, with
//! the in-repo Vault stand-in and the file store.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::vault::Vault;
use common::{Daemon, Fixture, get, wait_for};
use serde_json::{Value, json};

/// A check command that fails quoting the first line of the file it checks, as `haproxy -c`
/// quotes the line it rejects.
const ECHOING_CHECK: &str =
    "check_cmd = \"echo \\\"[ALERT] line 1: $(head -n 1 {{.src}})\\\" >&2; exit 1\"\n";

/// Waits until `/status` on `address` shows a result for every resource, and returns it.
fn settled_status(address: &str, daemon: &Daemon, resources: usize) -> Value {
    let url = format!("http://{address}/status");
    let mut status = Value::Null;
    let settled = wait_for(Duration::from_secs(30), || {
        let Ok(response) = common::etcd::http_client().get(&url).send() else {
            return false;
        };
        status = response.json().unwrap_or(Value::Null);
        status["resources"].as_array().is_some_and(|all| {
            all.len() == resources && all.iter().all(|r| !r["last_result"].is_null())
        })
    });
    assert!(settled, "{status}\n{}", daemon.log());
    status
}

/// The resource of `status` whose file is `conf.d/<name>.toml`.
fn resource<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["resources"]
        .as_array()
        .and_then(|all| {
            all.iter().find(|r| {
                r["file"]
                    .as_str()
                    .is_some_and(|file| file.ends_with(&format!("/{name}.toml")))
            })
        })
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn vault_secrets_are_masked_in_check_output_template_errors_logs_status_and_metrics() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.put(
        "secret",
        "app/db",
        json!({"user": "admin", "password": "Hunter2'VaultSecret"}),
    );
    let fixture = Fixture::new();
    fixture.template(
        "haproxy.tmpl",
        "stats auth {{ getv(key=\"/secret/app/db/user\") }}:{{ getv(key=\"/secret/app/db/password\") }}\n",
    );
    fixture.resource(
        "haproxy",
        &format!(
            "src = \"haproxy.tmpl\"\ndest = \"haproxy.cfg\"\nkeys = [\"/secret/app\"]\n{ECHOING_CHECK}"
        ),
    );
    fixture.template(
        "pool.tmpl",
        "size {{ getv(key=\"/secret/app/db/password\") | atoi }}\n",
    );
    fixture.resource(
        "pool",
        "src = \"pool.tmpl\"\ndest = \"pool.conf\"\nkeys = [\"/secret/app\"]\n",
    );
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let url = vault.url();
    let daemon = fixture.spawn(&[
        "--backend",
        "vault",
        "--node",
        &url,
        "--auth-token",
        "s.root",
        "--interval",
        "1",
        "--listen",
        &address,
    ]);
    let status = settled_status(&address, &daemon, 2);
    let haproxy = resource(&status, "haproxy");
    assert_eq!(haproxy["last_result"], "check_failed", "{status}");
    assert!(
        haproxy["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("[ALERT] line 1: stats auth ***:***")),
        "the check's output, with every value of Vault masked: {status}"
    );
    let pool = resource(&status, "pool");
    assert_eq!(pool["last_result"], "render_failed", "{status}");
    assert!(
        pool["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("atoi: `***` is not an integer")),
        "the template's error, masked: {status}"
    );
    let (_, metrics) = get(&format!("http://{address}/metrics"));
    let log = daemon.log();
    assert!(log.contains("stats auth ***:***"), "{log}");
    assert!(log.contains("atoi: `***` is not an integer"), "{log}");
    for shown in [status.to_string(), metrics, log] {
        assert!(!shown.contains("Hunter2"), "{shown}");
    }
}

/// A confdir whose `secret` resource reads `/app` (with the lines `secret_lines`) and whose
/// `plain` resource reads `/other`, both through a check that quotes their first line and
/// fails; `data.yaml` holds a password under `/app` and a name under `/other`.
fn mixed(secret_lines: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "secret.tmpl",
        "password={{ getv(key=\"/app/password\") }}\nport={{ getv(key=\"/app/port\") }}\n",
    );
    fixture.resource(
        "secret",
        &format!(
            "src = \"secret.tmpl\"\ndest = \"secret.conf\"\nkeys = [\"/app\"]\n{secret_lines}"
        ),
    );
    fixture.template("plain.tmpl", "name={{ getv(key=\"/other/name\") }}\n");
    fixture.resource(
        "plain",
        &format!(
            "src = \"plain.tmpl\"\ndest = \"plain.conf\"\nkeys = [\"/other\"]\n{ECHOING_CHECK}"
        ),
    );
    fixture.write(
        "data.yaml",
        "app:\n  password: \"FileSecret-42\"\n  port: \"8080\"\nother:\n  name: \"visible-name\"\n",
    );
    fixture
}

const FILE_STORE: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

/// Runs `fixture` once with `extra` flags and checks that the secret resource's values are
/// masked, and the plain resource's too when `plain_masked`.
fn secret_values_are_masked(fixture: &Fixture, extra: &[&str], plain_masked: bool) {
    let mut args = FILE_STORE.to_vec();
    args.extend_from_slice(extra);
    let run = fixture.run(&args);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("[ALERT] line 1: password=***"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("FileSecret-42"), "{run:?}");
    let plain = if plain_masked { "***" } else { "visible-name" };
    assert!(
        run.stderr
            .contains(&format!("[ALERT] line 1: name={plain}")),
        "{run:?}"
    );
}

#[test]
fn a_resource_marked_secret_masks_what_it_reads_and_keeps_its_file_private() {
    // A value that no secret resource reads is shown.
    secret_values_are_masked(
        &mixed(&format!("secret = true\n{ECHOING_CHECK}")),
        &[],
        false,
    );

    let fixture = mixed("secret = true\n");
    let run = fixture.run(FILE_STORE);
    assert_eq!(
        run.code,
        Some(1),
        "the plain resource's check fails: {run:?}"
    );
    assert_eq!(
        fixture.read("secret.conf"),
        "password=FileSecret-42\nport=8080\n"
    );
    let mode = std::fs::metadata(fixture.path("secret.conf"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "a secret file without a mode is private"
    );

    fixture.write(
        "data.yaml",
        "app:\n  password: \"FileSecret-43\"\n  port: \"8080\"\nother:\n  name: \"visible-name\"\n",
    );
    let mut args = FILE_STORE.to_vec();
    args.push("--noop");
    let run = fixture.run(&args);
    assert!(run.stdout.contains("-<secret line>"), "{run:?}");
    for hidden in ["FileSecret-42", "FileSecret-43", "port=8080", "md5sum"] {
        assert!(
            !run.stdout.contains(hidden) && !run.stderr.contains(hidden),
            "{hidden}: {run:?}"
        );
    }
}

#[test]
fn the_global_secret_flag_and_a_backend_table_mark_a_store_s_values_secret() {
    // Every resource reading the global store reads secrets.
    secret_values_are_masked(&mixed(ECHOING_CHECK), &["--secret"], true);

    let fixture = mixed(ECHOING_CHECK);
    let resource = fixture.read("conf.d/secret.toml");
    fixture.write(
        "conf.d/secret.toml",
        &format!("{resource}[backend]\nbackend = \"file\"\nfile = \"data.yaml\"\nsecret = true\n"),
    );
    // Only the resources with that table do, even on the same store.
    secret_values_are_masked(&fixture, &[], false);
}

#[test]
fn secrets_are_masked_in_json_log_lines_and_status_shows_no_checksum_of_them() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "key={{ getv(key=\"/app/key\") }}\n");
    fixture.resource(
        "checked",
        &format!(
            "src = \"app.tmpl\"\ndest = \"checked.conf\"\nkeys = [\"/app\"]\nsecret = true\n\
             {ECHOING_CHECK}"
        ),
    );
    fixture.resource(
        "synced",
        "src = \"app.tmpl\"\ndest = \"synced.conf\"\nkeys = [\"/app\"]\nsecret = true\n",
    );
    fixture.write("data.yaml", "app:\n  key: 'Quote\"Secret-7'\n");
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--log-format",
        "json",
        "--listen",
        &address,
    ]);
    let status = settled_status(&address, &daemon, 2);
    let log = daemon.log();
    assert!(log.contains("key=***"), "{log}");
    assert!(!log.contains("Secret-7"), "{log}");
    assert!(!status.to_string().contains("Secret-7"), "{status}");
    let synced = resource(&status, "synced");
    assert_eq!(synced["last_result"], "updated", "{status}");
    assert_eq!(
        synced["md5"],
        Value::Null,
        "no checksum of a secret: {status}"
    );
}

#[test]
fn a_password_in_a_node_address_is_masked_in_the_log_status_and_errors() {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{{ getv(key=\"/app/port\", default=\"80\") }}\n",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    let refusing = common::etcd::free_port();
    let node = format!("http://reader:NodePw-XYZZY@127.0.0.1:{refusing}");
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "etcd",
        "--node",
        &node,
        "--listen",
        &address,
    ]);
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("etcd store unavailable")),
        "{}",
        daemon.log()
    );
    let (_, status) = get(&format!("http://{address}/status"));
    let (_, metrics) = get(&format!("http://{address}/metrics"));
    let log = daemon.log();
    // The node connected to is named without the credentials it took from the URL; the
    // store instance, as configured, with the password masked.
    assert!(
        log.contains(&format!("http://127.0.0.1:{refusing}")),
        "{log}"
    );
    assert!(status.contains("reader:***@127.0.0.1"), "{status}");
    for shown in [&log, &status, &metrics] {
        assert!(!shown.contains("NodePw-XYZZY"), "{shown}");
    }

    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "etcd",
        "--node",
        "http://reader:NodePw-XYZZY@127.0.0.1:0",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("reader:***@127.0.0.1:0"), "{run:?}");
    assert!(!run.stderr.contains("NodePw-XYZZY"), "{run:?}");
}

#[test]
fn an_error_in_the_settings_file_shows_the_line_with_the_password_masked() {
    let fixture = Fixture::new();
    for line in ["password = \"ReaderPw-PLUGH", "password = 12345678"] {
        fixture.write("reconfd.toml", &format!("backend = \"etcd\"\n{line}\n"));
        let run = fixture.run(&["--onetime"]);
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(run.stderr.contains("reconfd.toml:2:"), "{run:?}");
        assert!(run.stderr.contains("in `password = ***`"), "{run:?}");
        assert!(
            !run.stderr.contains("PLUGH") && !run.stderr.contains("12345678"),
            "{run:?}"
        );
    }
}

#[test]
fn help_and_node_urls_do_not_show_credentials() {
    let fixture = Fixture::new();
    // `--help` shows the environment's values of the settings, but not of a node's URL,
    // which may hold a password.
    let output = fixture
        .command(&["--help"])
        .env("RECONFD_NODE", "http://reader:NodePw-AAAA@127.0.0.1:1")
        .output()
        .expect("run reconfd");
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("RECONFD_NODE"), "{help}");
    assert!(!help.contains("NodePw-AAAA"), "{help}");
    // A NATS token written as the URL's user information is masked like a password.
    fixture.template("app.tmpl", "{{ getv(key=\"/app/v\") }}\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    let url = format!(
        "nats://NatsTok-1212@127.0.0.1:{}",
        common::etcd::free_port()
    );
    let run = fixture.run(&["--onetime", "--backend", "nats", "--node", &url]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("nats://***@127.0.0.1:"), "{run:?}");
    assert!(!run.stderr.contains("NatsTok-1212"), "{run:?}");
}
