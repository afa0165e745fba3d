//! Where and how reconfd reaches Consul and Vault when the flags leave it open:
//! `CONSUL_HTTP_ADDR` and `VAULT_ADDR` in place of `--node`, and Vault's `--auth-type` and
//! `--kv-version` overriding what the flags given and the mount would choose. Against the
//! in-repo stand-ins of `tests/common/{consul,vault}.rs` (Consul and Vault cannot be installed
//! here).

mod common;

use std::time::Duration;

use common::consul::Consul;
use common::vault::Vault;
use common::{Fixture, Run};
use serde_json::json;

/// Runs `--onetime` with `args` and the environment variables `env`, and without the
/// caller's own Consul and Vault variables.
fn run(fixture: &Fixture, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = fixture.command(&[&["--onetime"], args].concat());
    for name in [
        "CONSUL_HTTP_ADDR",
        "CONSUL_HTTP_TOKEN",
        "VAULT_ADDR",
        "VAULT_TOKEN",
    ] {
        command.env_remove(name);
    }
    Run::from(
        command
            .envs(env.iter().copied())
            .output()
            .expect("run reconfd"),
    )
}

/// An address nothing listens on, without a scheme as the variables often hold it.
fn dead_address() -> String {
    format!("127.0.0.1:{}", common::etcd::free_port())
}

/// A resource rendering Consul's `/app/servers/*` into `app.conf`.
fn consul_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template(
        "app.tmpl",
        "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture
}

/// A resource rendering the Vault secret `/secret/app/db` into `db.conf`.
fn vault_fixture() -> Fixture {
    let fixture = Fixture::new();
    fixture.template("db.tmpl", "user={{ getv(key=\"/secret/app/db/user\") }}\n");
    fixture.resource(
        "db",
        "src = \"db.tmpl\"\ndest = \"db.conf\"\nkeys = [\"/secret/app\"]\n",
    );
    fixture
}

#[test]
fn consul_http_addr_names_the_agent_when_no_node_is_given() {
    let consul = Consul::start(None);
    consul.put("app/servers/web1", "10.0.0.1:80");
    let fixture = consul_fixture();
    let live = consul.url().replace("http://", "");
    let dead = dead_address();

    let run_ = run(
        &fixture,
        &["--backend", "consul"],
        &[("CONSUL_HTTP_ADDR", &live)],
    );
    assert_eq!(run_.code, Some(0), "{run_:?}");
    assert_eq!(fixture.read("app.conf"), "server web1 10.0.0.1:80\n");
    std::fs::remove_file(fixture.path("app.conf")).expect("remove");

    let run_ = run(
        &fixture,
        &["--backend", "consul"],
        &[("CONSUL_HTTP_ADDR", &dead)],
    );
    assert_eq!(run_.code, Some(1), "{run_:?}");
    assert!(
        run_.stderr.contains(&format!("http://{dead}")),
        "names the address of the variable: {run_:?}"
    );
    assert!(!fixture.path("app.conf").exists());

    // --node wins over the variable.
    let url = consul.url();
    let run_ = run(
        &fixture,
        &["--backend", "consul", "--node", &url],
        &[("CONSUL_HTTP_ADDR", &dead)],
    );
    assert_eq!(run_.code, Some(0), "{run_:?}");
}

#[test]
fn vault_addr_names_the_server_when_no_node_is_given() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.put("secret", "app/db", json!({"user": "app"}));
    let fixture = vault_fixture();
    let live = vault.url().replace("http://", "");
    let dead = dead_address();

    let env = [("VAULT_ADDR", live.as_str()), ("VAULT_TOKEN", "s.root")];
    let run_ = run(&fixture, &["--backend", "vault"], &env);
    assert_eq!(run_.code, Some(0), "{run_:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\n");
    std::fs::remove_file(fixture.path("db.conf")).expect("remove");

    let env = [("VAULT_ADDR", dead.as_str()), ("VAULT_TOKEN", "s.root")];
    let run_ = run(&fixture, &["--backend", "vault"], &env);
    assert_eq!(run_.code, Some(1), "{run_:?}");
    assert!(
        run_.stderr.contains(&format!("http://{dead}")),
        "names the address of the variable: {run_:?}"
    );
    assert!(!fixture.path("db.conf").exists());

    // --node wins over the variable.
    let url = vault.url();
    let run_ = run(&fixture, &["--backend", "vault", "--node", &url], &env);
    assert_eq!(run_.code, Some(0), "{run_:?}");
}

#[test]
fn auth_type_chooses_the_token_or_app_role_whatever_else_is_given() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.enable_app_role(
        "role-1",
        "secret-1",
        Duration::from_secs(600),
        Duration::from_secs(3600),
    );
    vault.put("secret", "app/db", json!({"user": "app"}));
    let fixture = vault_fixture();
    let url = vault.url();
    let vault_args = |extra: &[&str]| -> Vec<String> {
        ["--backend", "vault", "--node", &url]
            .iter()
            .chain(extra)
            .map(|arg| arg.to_string())
            .collect()
    };
    let run_args = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&fixture, &args, &[])
    };

    // With a role ID, AppRole is the default, and this secret ID is wrong.
    let both = [
        "--auth-token",
        "s.root",
        "--role-id",
        "role-1",
        "--secret-id",
        "wrong",
    ];
    let refused = run_args(vault_args(&both));
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("invalid role or secret ID"),
        "{refused:?}"
    );
    let by_token = run_args(vault_args(&[&both[..], &["--auth-type", "token"]].concat()));
    assert_eq!(by_token.code, Some(0), "{by_token:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\n");
    assert_eq!(vault.logins_and_renewals().0, 0, "no AppRole login");
    std::fs::remove_file(fixture.path("db.conf")).expect("remove");

    let app_role = [
        "--auth-token",
        "s.unknown",
        "--role-id",
        "role-1",
        "--secret-id",
        "secret-1",
        "--auth-type",
        "app-role",
    ];
    let logged_in = run_args(vault_args(&app_role));
    assert_eq!(logged_in.code, Some(0), "{logged_in:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\n");
    assert_eq!(vault.logins_and_renewals().0, 1, "one AppRole login");

    let unusable = run_args(vault_args(&[
        "--auth-token",
        "s.root",
        "--auth-type",
        "app-role",
    ]));
    assert_eq!(unusable.code, Some(2), "{unusable:?}");
    assert!(
        unusable.stderr.contains("needs --role-id and --secret-id"),
        "{unusable:?}"
    );
}

#[test]
fn kv_version_overrides_the_version_the_mount_reports() {
    let vault = Vault::start();
    vault.add_token("s.root", None);
    vault.put("secret", "app/db", json!({"user": "app"}));
    let fixture = vault_fixture();
    let url = vault.url();
    let args = |version: &'static str| {
        [
            "--backend",
            "vault",
            "--node",
            url.as_str(),
            "--auth-token",
            "s.root",
            "--kv-version",
            version,
        ]
    };

    let run_ = run(&fixture, &args("2"), &[]);
    assert_eq!(run_.code, Some(0), "{run_:?}");
    assert_eq!(fixture.read("db.conf"), "user=app\n");
    std::fs::remove_file(fixture.path("db.conf")).expect("remove");

    // Read as KV version 1, the version 2 mount is asked at the KV 1 paths (no `data/` or
    // `metadata/`), which Vault refuses for a KV 2 mount.
    let run_ = run(&fixture, &args("1"), &[]);
    assert_eq!(run_.code, Some(1), "{run_:?}");
    assert!(
        run_.stderr.contains("/v1/secret/app/") && !run_.stderr.contains("metadata"),
        "asked at the KV 1 path: {run_:?}"
    );
    assert!(!fixture.path("db.conf").exists());
}
