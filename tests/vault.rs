//! The Vault store, against the in-repo stand-in of `tests/common/vault.rs`: Vault cannot be
//! installed on this machine, so these tests run against a server that follows Vault's
//! documented HTTP API (KV versions 1 and 2, token lookup and renewal, AppRole login) instead
//! of a real Vault. A token or an AppRole login Vault refuses is logged as a refusal.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::etcd::Etcd;
use common::vault::Vault;
use common::{Fixture, Run, wait_for};
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
    assert!(run.stderr.contains("permission denied"), "{run:?}");
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
