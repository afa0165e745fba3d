//! The Vault store, against the in-repo stand-in of `tests/common/vault.rs`: Vault cannot be
//! installed on this machine, so these tests run against a server that follows Vault's
//! documented HTTP API (KV versions 1 and 2 with `data/` and `metadata/` apart, deleted and
//! destroyed versions, nested mounts found with `sys/internal/ui/mounts`, policies enforced per
//! path and capability, token lookup and renewal, AppRole login) instead of a real Vault; the
//! last test checks the stand-in itself against those documented shapes. A token or an
//! AppRole login Vault refuses is logged as a refusal.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::etcd::Etcd;
use common::vault::Vault;
use common::{Fixture, Run, expect_file, wait_for};
use serde_json::json;

/// A resource rendering the database secret `/secret/app/db` into `db.conf`.
fn fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "db.tmpl",
        "user={{ getv(key=\"/secret/app/db/user\") }}\npassword={{ getv(key=\"/secret/app/db/password\") }}\n",
    );
    fixture.resource(
        "db",
        "src = \"db.tmpl\"\ndest = \"db.conf\"\nkeys = [\"/secret/app\"]\n",
    );
    fixture
}

fn vault_args<'a>(url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--backend", "vault", "--node", url];
    args.extend_from_slice(extra);
    args
}

#[test]
fn kv2_secrets_render_private_and_never_show_in_logs_or_diffs() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.put(
        "secret",
        "app/db",
        json!({"user": "app", "password": "hunter2"}),
    );
    let fixture = fixture();
    let url = vault.url();
    let run = fixture.run(&vault_args(&url, &["--onetime", "--auth-token", "s.root"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\npassword=hunter2\n");
    let mode = std::fs::metadata(fixture.path("db.conf"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "a secret file without a mode is private"
    );
    assert!(!run.stderr.contains("hunter2"), "{run:?}");

    vault.put(
        "secret",
        "app/db",
        json!({"user": "app", "password": "correct horse"}),
    );
    let run = fixture.run(&vault_args(
        &url,
        &["--onetime", "--noop", "--auth-token", "s.root"],
    ));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("@@ -1,2 +1,2 @@"), "where: {run:?}");
    assert!(run.stdout.contains("-<secret line>"), "{run:?}");
    for secret in ["hunter2", "correct horse", "user=app"] {
        assert!(!run.stdout.contains(secret), "{secret} shown: {run:?}");
        assert!(!run.stderr.contains(secret), "{secret} logged: {run:?}");
    }
    assert!(
        !run.stderr.contains("md5sum"),
        "no checksums of secrets: {run:?}"
    );

    let run = fixture.run(&vault_args(&url, &["--onetime", "--auth-token", "s.wrong"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    // Vault's message spans lines; the log line holds all of it.
    assert!(
        run.stderr
            .lines()
            .any(|line| line.ends_with("HTTP 403 Forbidden: 1 error occurred: * permission denied")),
        "{run:?}"
    );
    assert!(run.stderr.contains(&url), "names the server: {run:?}");
}

#[test]
fn kv1_is_detected_and_the_token_can_come_from_vault_token() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.put("kv", "app/db", json!({"user": "legacy", "password": "pw1"}));
    vault.put("kv", "app/api-key", json!({"value": "k3y"}));
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{{ getv(key=\"/kv/app/db/user\") }} {{ getv(key=\"/kv/app/api-key\") }}\n",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/kv/app\"]\n",
    );
    let url = vault.url();
    let run = Run::from(
        fixture
            .command(&vault_args(&url, &["--onetime"]))
            .env("VAULT_TOKEN", "s.root")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "legacy k3y\n");
    // The version came from asking Vault about the mount, not from a default.
    assert_eq!(vault.preflights(), ["kv/app"]);
}

#[test]
fn an_app_role_enabled_at_another_path_logs_in_there() {
    let vault = Vault::start();
    vault.enable_app_role(
        "role-1",
        "secret-1",
        Duration::from_secs(60),
        Duration::from_secs(600),
    );
    vault.move_app_role_to("my-approle");
    vault.put("secret", "app/db", json!({"user": "app", "password": "v1"}));
    let fixture = fixture();
    let url = vault.url();
    let login = [
        "--onetime",
        "--role-id",
        "role-1",
        "--secret-id",
        "secret-1",
    ];
    let run = fixture.run(&vault_args(&url, &login));
    assert_eq!(
        run.code,
        Some(1),
        "approle is not where it is enabled: {run:?}"
    );
    let mut at_path = login.to_vec();
    at_path.extend(["--path", "my-approle"]);
    let run = fixture.run(&vault_args(&url, &at_path));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\npassword=v1\n");
    // confd's settings key.
    fixture.write(
        "confd.toml",
        &format!(
            "backend = \"vault\"\nnodes = [\"{url}\"]\nauth_type = \"app-role\"\n\
             role_id = \"role-1\"\nsecret_id = \"secret-1\"\npath = \"my-approle\"\n"
        ),
    );
    std::fs::remove_file(fixture.path("db.conf")).expect("remove");
    let run = fixture.run(&["--onetime"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\npassword=v1\n");
}

#[test]
fn app_role_tokens_are_renewed_and_logged_in_again() {
    let vault = Vault::start();
    // Tokens live 2 s and may be renewed until 5 s after the login.
    vault.enable_app_role(
        "role-1",
        "secret-1",
        Duration::from_secs(2),
        Duration::from_secs(5),
    );
    vault.put("secret", "app/db", json!({"user": "app", "password": "v1"}));
    let fixture = fixture();
    let url = vault.url();
    let daemon = fixture.spawn(&vault_args(
        &url,
        &[
            "--interval",
            "1",
            "--role-id",
            "role-1",
            "--secret-id",
            "secret-1",
        ],
    ));
    assert!(
        wait_for(Duration::from_secs(10), || fixture.path("db.conf").exists()),
        "{}",
        daemon.log()
    );
    // Renewed, then past the maximum lifetime and logged in again.
    assert!(
        wait_for(Duration::from_secs(30), || {
            let (logins, renewals) = vault.logins_and_renewals();
            logins >= 2 && renewals >= 1
        }),
        "{:?}\n{}",
        vault.logins_and_renewals(),
        daemon.log()
    );
    vault.put("secret", "app/db", json!({"user": "app", "password": "v2"}));
    assert!(
        wait_for(Duration::from_secs(10), || fixture.read("db.conf")
            == "user=app\npassword=v2\n"),
        "{}",
        daemon.log()
    );
    let (logins, renewals) = vault.logins_and_renewals();
    assert!(
        logins >= 2,
        "logged in again after the maximum lifetime: {logins}"
    );
    assert!(renewals >= 1, "renewed before that: {renewals}");
    let log = daemon.log();
    assert!(!log.contains("ERROR"), "{log}");
    assert!(!log.contains("secret-1") && !log.contains("v2"), "{log}");
    assert_eq!(daemon.terminate(), Some(0));
}

/// One reconfd serving configuration from etcd and secrets from Vault: the Vault resource has
/// a `[backend]` table of its own.
#[test]
fn a_vault_resource_beside_etcd_resources_in_one_process() {
    let etcd = Etcd::start();
    etcd.put("/app/servers/web1", "10.0.0.1:80");
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.put("secret", "app/db", json!({"user": "app", "password": "v1"}));
    let fixture = fixture();
    let url = vault.url();
    fixture.write(
        "conf.d/db.toml",
        &format!(
            "[template]\nsrc = \"db.tmpl\"\ndest = \"db.conf\"\nkeys = [\"/secret/app\"]\n\
             [backend]\nbackend = \"vault\"\nnodes = [\"{url}\"]\nauth_token = \"s.root\"\n"
        ),
    );
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    let node = etcd.endpoint(0);
    let daemon = fixture.spawn(&[
        "--watch",
        "--interval",
        "1",
        "--backend",
        "etcd",
        "--node",
        &node,
    ]);
    let holds = |name: &str, expected: &str| {
        wait_for(Duration::from_secs(15), || {
            std::fs::read_to_string(fixture.path(name)).is_ok_and(|text| text == expected)
        })
    };
    assert!(
        holds("app.conf", "server web1 10.0.0.1:80\n"),
        "{}",
        daemon.log()
    );
    assert!(
        holds("db.conf", "user=app\npassword=v1\n"),
        "{}",
        daemon.log()
    );
    etcd.put("/app/servers/web2", "10.0.0.2:80");
    vault.put("secret", "app/db", json!({"user": "app", "password": "v2"}));
    assert!(
        holds(
            "app.conf",
            "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n"
        ),
        "etcd change\n{}",
        daemon.log()
    );
    assert!(
        holds("db.conf", "user=app\npassword=v2\n"),
        "vault change\n{}",
        daemon.log()
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_refused_token_or_login_is_logged_as_such_and_a_token_vault_learns_is_used() {
    let vault = Vault::start();
    vault.enable_app_role(
        "role-1",
        "secret-1",
        Duration::from_secs(60),
        Duration::from_secs(600),
    );
    vault.put("secret", "app/db", json!({"user": "app", "password": "v1"}));
    let fixture = fixture();
    let url = vault.url();

    let run = fixture.run(&vault_args(
        &url,
        &["--onetime", "--role-id", "role-1", "--secret-id", "wrong"],
    ));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("vault store refused the credentials"),
        "{run:?}"
    );
    assert!(run.stderr.contains("invalid role or secret ID"), "{run:?}");

    let daemon = fixture.spawn(&vault_args(&url, &["--auth-token", "s.later"]));
    assert!(
        wait_for(Duration::from_secs(30), || daemon
            .log()
            .contains("vault store refused the credentials")),
        "the refusal is logged as one\n{}",
        daemon.log()
    );
    assert!(!daemon.log().contains("unavailable"), "{}", daemon.log());
    assert!(!fixture.path("db.conf").exists());

    vault.add_token("s.later", None);
    assert!(
        wait_for(Duration::from_secs(30), || fixture.path("db.conf").exists()),
        "read once the token is known\n{}",
        daemon.log()
    );
    let log = daemon.log();
    assert_eq!(log.matches("refused the credentials").count(), 1, "{log}");
    assert_eq!(
        log.matches("accepts the credentials again").count(),
        1,
        "{log}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// The policy a least-privilege token usually has for `keys = ["/secret/app"]`: read the
/// secrets below `app`, list the directories below it, nothing at the mount's root.
#[test]
fn a_least_privilege_policy_reads_what_the_keys_name_and_no_more() {
    let vault = Vault::start();
    vault.add_token_with_policy(
        "s.app",
        &[
            ("secret/data/app/*", &["read"]),
            ("secret/metadata/app/*", &["list"]),
        ],
    );
    vault.add_token_with_policy("s.list-only", &[("secret/metadata/app/*", &["list"])]);
    vault.put(
        "secret",
        "app/db",
        json!({"user": "app", "password": "hunter2"}),
    );
    vault.put(
        "secret",
        "other/db",
        json!({"user": "other", "password": "x"}),
    );
    let fixture = fixture();
    let url = vault.url();
    let run = fixture.run(&vault_args(&url, &["--onetime", "--auth-token", "s.app"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\npassword=hunter2\n");

    // A secret the policy lists but may not read is a refusal, not a missing key.
    let run = fixture.run(&vault_args(
        &url,
        &["--onetime", "--auth-token", "s.list-only"],
    ));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("vault store refused the credentials"),
        "{run:?}"
    );
    assert!(run.stderr.contains("/v1/secret/data/app/db"), "{run:?}");

    // A key naming one secret works with `read` on that secret alone.
    vault.add_token_with_policy("s.db", &[("secret/data/app/db", &["read"])]);
    let one = Fixture::new();
    one.template("db.tmpl", "{{ getv(key=\"/secret/app/db/user\") }}\n");
    one.resource(
        "db",
        "src = \"db.tmpl\"\ndest = \"db.conf\"\nkeys = [\"/secret/app/db\"]\n",
    );
    let run = one.run(&vault_args(&url, &["--onetime", "--auth-token", "s.db"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(one.read("db.conf"), "app\n");
}

/// A nested KV 2 mount and a KV 1 mount in one resource, each found by asking Vault; a key in
/// a mount that is not KV is an error naming it.
#[test]
fn nested_and_kv1_mounts_are_found_and_a_mount_that_is_not_kv_is_named() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.put("team/kv", "app/db", json!({"password": "nested"}));
    vault.put("kv", "app/db", json!({"password": "legacy"}));
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{{ getv(key=\"/team/kv/app/db/password\") }} {{ getv(key=\"/kv/app/db/password\") }}\n",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/team/kv/app\", \"/kv/app\"]\n",
    );
    let url = vault.url();
    let run = fixture.run(&vault_args(&url, &["--onetime", "--auth-token", "s.root"]));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("app.conf"), "nested legacy\n");
    let mut asked = vault.preflights();
    asked.sort();
    assert_eq!(asked, ["kv/app", "team/kv/app"]);

    let pki = Fixture::new();
    pki.template("cert.tmpl", "{{ getv(key=\"/pki/cert\") }}\n");
    pki.resource(
        "cert",
        "src = \"cert.tmpl\"\ndest = \"cert.pem\"\nkeys = [\"/pki/cert\"]\n",
    );
    let run = pki.run(&vault_args(&url, &["--onetime", "--auth-token", "s.root"]));
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("a `pki` secrets engine, not KV"),
        "{run:?}"
    );
}

/// A KV 2 secret whose latest version is deleted or destroyed, or whose metadata is deleted,
/// leaves the rendered file; an undeleted one comes back.
#[test]
fn deleted_and_destroyed_versions_leave_the_render() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    for name in ["a", "b", "c"] {
        vault.put("secret", &format!("app/{name}"), json!({"value": "v1"}));
        vault.put("secret", &format!("app/{name}"), json!({"value": "v2"}));
    }
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/secret/app/*\") %}{{ kv.key | base }}={{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/secret/app\"]\n",
    );
    let url = vault.url();
    let daemon = fixture.spawn(&vault_args(
        &url,
        &["--interval", "1", "--auth-token", "s.root"],
    ));
    let all = "a=v2\nb=v2\nc=v2\n";
    expect_file(&fixture, &daemon, "app.conf", all, "every secret");
    vault.delete("secret", "app/a");
    expect_file(
        &fixture,
        &daemon,
        "app.conf",
        "b=v2\nc=v2\n",
        "soft-deleted",
    );
    vault.undelete("secret", "app/a");
    expect_file(&fixture, &daemon, "app.conf", all, "undeleted");
    vault.destroy("secret", "app/b");
    expect_file(&fixture, &daemon, "app.conf", "a=v2\nc=v2\n", "destroyed");
    vault.delete_metadata("secret", "app/c");
    expect_file(&fixture, &daemon, "app.conf", "a=v2\n", "metadata deleted");
    assert!(!daemon.log().contains("ERROR"), "{}", daemon.log());
    assert_eq!(daemon.terminate(), Some(0));
}

/// The stand-in itself answers as Vault's HTTP API documents.
#[test]
fn the_stand_in_answers_as_vault_documents() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.add_token_with_policy(
        "s.app",
        &[
            ("secret/data/app/*", &["read"]),
            ("secret/metadata/app/*", &["list"]),
            ("secret/data/app/private", &["deny"]),
            ("team/kv/data/+/db", &["read"]),
        ],
    );
    vault.put("secret", "app/db", json!({"password": "v1"}));
    vault.put("secret", "app/db", json!({"password": "v2"}));
    vault.put("secret", "app/private", json!({"value": "p"}));
    vault.put("team/kv", "x/db", json!({"value": "t"}));
    let client = common::etcd::http_client();
    let url = vault.url();
    let get = |path: &str, token: &str| {
        let response = client
            .get(format!("{url}/v1/{path}"))
            .header("X-Vault-Token", token)
            .send()
            .expect("answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().unwrap_or(serde_json::Value::Null);
        (status, body)
    };

    // data/ and metadata/ are apart: data has no LIST, metadata no secret.
    let (status, _) = get("secret/data/app/?list=true", "s.root");
    assert_eq!(status, 405);
    let (status, body) = get("secret/metadata/app/?list=true", "s.root");
    assert_eq!(
        (status, body["data"]["keys"].clone()),
        (200, json!(["db", "private"]))
    );
    let (status, body) = get("secret/metadata/app/db", "s.root");
    assert_eq!(status, 200);
    assert_eq!(body["data"]["current_version"], 2);
    assert!(!body.to_string().contains("v2\""), "no secret data: {body}");
    let (_, body) = get("secret/data/app/db", "s.root");
    assert_eq!(body["data"]["data"], json!({"password": "v2"}));
    assert_eq!(body["data"]["metadata"]["version"], 2);

    // Policies, per path and capability: the mount's root is not listed, a denied path is
    // refused, `+` stands for one segment.
    let (status, body) = get("secret/metadata/?list=true", "s.app");
    assert_eq!(
        (status, body["errors"][0].clone()),
        (403, json!("1 error occurred:\n\t* permission denied\n\n"))
    );
    assert_eq!(get("secret/metadata/app/?list=true", "s.app").0, 200);
    assert_eq!(get("secret/data/app/db", "s.app").0, 200);
    assert_eq!(get("secret/data/app", "s.app").0, 403);
    assert_eq!(get("secret/data/app/private", "s.app").0, 403);
    assert_eq!(get("secret/data/app/?list=true", "s.app").0, 403);
    assert_eq!(get("team/kv/data/x/db", "s.app").0, 200);
    assert_eq!(get("team/kv/data/x/y/db", "s.app").0, 403);

    // The mount holding a path, nested ones too, for a token with access in that mount.
    let (status, body) = get("sys/internal/ui/mounts/team/kv/x/db", "s.app");
    assert_eq!(status, 200);
    assert_eq!(body["data"]["path"], "team/kv/");
    assert_eq!(body["data"]["options"]["version"], "2");
    let (_, body) = get("sys/internal/ui/mounts/kv/app", "s.root");
    assert_eq!(body["data"]["options"]["version"], "1");
    assert_eq!(get("sys/internal/ui/mounts/kv/app", "s.app").0, 403);
    assert_eq!(get("sys/internal/ui/mounts/nowhere/app", "s.root").0, 403);
    let (_, body) = get("sys/internal/ui/mounts/pki/cert", "s.root");
    assert_eq!(body["data"]["type"], "pki");

    // A deleted or destroyed latest version: 404 with its metadata; gone metadata: plain 404.
    vault.delete("secret", "app/db");
    let (status, body) = get("secret/data/app/db", "s.root");
    assert_eq!(status, 404);
    assert!(body["data"]["data"].is_null(), "{body}");
    assert_ne!(body["data"]["metadata"]["deletion_time"], "");
    vault.undelete("secret", "app/db");
    assert_eq!(get("secret/data/app/db", "s.root").0, 200);
    vault.destroy("secret", "app/db");
    let (status, body) = get("secret/data/app/db", "s.root");
    assert_eq!(
        (status, body["data"]["metadata"]["destroyed"].clone()),
        (404, json!(true))
    );
    let (_, body) = get("secret/metadata/app/?list=true", "s.root");
    assert_eq!(
        body["data"]["keys"],
        json!(["db", "private"]),
        "still listed"
    );
    vault.delete_metadata("secret", "app/db");
    let (status, body) = get("secret/data/app/db", "s.root");
    assert_eq!(
        (status, body["data"].clone()),
        (404, serde_json::Value::Null)
    );
}
