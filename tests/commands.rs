//! What check and reload commands are given: the exact paths of `{{.src}}` and `{{.dest}}`
//! however the command quotes them, and reconfd's environment without the credentials it was
//! given unless the settings name them; driven through the real binary with the file store.

mod common;

use common::Fixture;

const ONETIME: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

/// A directory name with spaces, both quotes, `$`, backquotes and command substitutions that
/// would create `pwned` in the confdir if the shell ran them.
const HOSTILE_DIR: &str = "my dir 'a' \"b\" $HOME `touch pwned` $(touch pwned) ${IFS}x";

/// `text` as a TOML basic string's content.
fn toml_escaped(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[test]
fn placeholders_give_the_exact_path_bare_or_in_either_quotes_and_run_nothing_of_it() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    fixture.write(&format!("{HOSTILE_DIR}/.keep"), "");
    // Each command prints the path it sees three times: bare, in double and in single quotes;
    // confd's `test -s "{{.src}}"` must pass too.
    let check =
        "test -s \"{{.src}}\" && printf '%s\\n' {{.src}} \"{{ .src }}\" '{{src}}' > seen-check";
    let reload = "printf '%s\\n' {{.dest}} \"{{ .dest }}\" '{{dest}}' > seen-reload";
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"{}/app.conf\"\nkeys = [\"/app\"]\n\
             check_cmd = \"{}\"\nreload_cmd = \"{}\"\n",
            toml_escaped(HOSTILE_DIR),
            toml_escaped(check),
            toml_escaped(reload)
        ),
    );
    // confd's usual form, alone.
    fixture.resource(
        "usual",
        &format!(
            "src = \"app.tmpl\"\ndest = \"{}/usual.conf\"\nkeys = [\"/app\"]\n\
             check_cmd = \"test -s \\\"{{{{.src}}}}\\\"\"\n",
            toml_escaped(HOSTILE_DIR)
        ),
    );
    let run = fixture.run(ONETIME);
    assert!(
        !fixture.path("pwned").exists() && !fixture.path(HOSTILE_DIR).join("pwned").exists(),
        "nothing of the path ran: {run:?}"
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    for name in ["app.conf", "usual.conf"] {
        assert_eq!(fixture.read(&format!("{HOSTILE_DIR}/{name}")), "port 80\n");
    }

    let dest = fixture.path(&format!("{HOSTILE_DIR}/app.conf"));
    let seen_check = fixture.read("seen-check");
    let seen: Vec<&str> = seen_check.lines().collect();
    assert_eq!(seen.len(), 3, "{seen_check}");
    let stage_prefix = format!("{}/.app.conf.reconfd-", fixture.path(HOSTILE_DIR).display());
    assert!(seen[0].starts_with(&stage_prefix), "{seen_check}");
    assert!(seen.iter().all(|path| *path == seen[0]), "{seen_check}");
    let expected = format!("{0}\n{0}\n{0}\n", dest.display());
    assert_eq!(fixture.read("seen-reload"), expected);
}

/// Credentials given to reconfd, with a value each that a command's environment must not hold.
const CREDENTIALS: &[(&str, &str)] = &[
    ("RECONFD_PASSWORD", "secret-reconfd-password"),
    ("RECONFD_AUTH_TOKEN", "secret-reconfd-token"),
    ("RECONFD_SECRET_ID", "secret-reconfd-secret-id"),
    ("VAULT_TOKEN", "secret-vault-token"),
    ("CONSUL_HTTP_TOKEN", "secret-consul-token"),
    ("ETCDCTL_PASSWORD", "secret-etcdctl-password"),
    ("REDISCLI_AUTH", "secret-redis-auth"),
    ("NATS_TOKEN", "secret-nats-token"),
];

/// A confdir whose check and reload commands write their environment to `check-env` and
/// `reload-env`.
fn env_fixture(port: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.write("data.yaml", &format!("app:\n  port: \"{port}\"\n"));
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n\
         check_cmd = \"env > check-env\"\nreload_cmd = \"env > reload-env\"\n",
    );
    fixture
}

/// Runs the fixture with every credential of [`CREDENTIALS`] and an ordinary variable in
/// reconfd's environment, plus `extra` arguments.
fn run_with_credentials(fixture: &Fixture, extra: &[&str]) -> common::Run {
    let run = common::Run::from(
        fixture
            .command(&[ONETIME, extra].concat())
            .envs(CREDENTIALS.iter().copied())
            .env("ORDINARY_SETTING", "kept")
            .output()
            .expect("run reconfd"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    run
}

#[test]
fn commands_do_not_get_the_credentials_reconfd_was_given() {
    let fixture = env_fixture("80");
    run_with_credentials(&fixture, &[]);
    for seen in ["check-env", "reload-env"] {
        let env = fixture.read(seen);
        for (name, value) in CREDENTIALS {
            assert!(
                !env.contains(value) && !env.contains(&format!("{name}=")),
                "{seen} has {name}:\n{env}"
            );
        }
        assert!(env.contains("ORDINARY_SETTING=kept\n"), "{seen}:\n{env}");
    }
}

#[test]
fn a_credential_named_by_the_settings_is_passed_on_and_only_that_one() {
    let fixture = env_fixture("80");
    // From the flag, the variable and the settings file alike.
    fixture.write("reconfd.toml", "command-env = [\"REDISCLI_AUTH\"]\n");
    run_with_credentials(&fixture, &["--command-env", "VAULT_TOKEN"]);
    let passed = ["VAULT_TOKEN"];
    for seen in ["check-env", "reload-env"] {
        let env = fixture.read(seen);
        for (name, value) in CREDENTIALS {
            let line = format!("{name}={value}\n");
            assert_eq!(
                env.contains(&line),
                passed.contains(name),
                "{seen}, {name}:\n{env}"
            );
        }
    }

    let fixture = env_fixture("81");
    fixture.write(
        "reconfd.toml",
        "command-env = [\"REDISCLI_AUTH\", \"NATS_TOKEN\"]\n",
    );
    run_with_credentials(&fixture, &[]);
    let env = fixture.read("reload-env");
    assert!(env.contains("REDISCLI_AUTH=secret-redis-auth\n"), "{env}");
    assert!(env.contains("NATS_TOKEN=secret-nats-token\n"), "{env}");
    assert!(!env.contains("VAULT_TOKEN="), "{env}");

    let fixture = env_fixture("82");
    let run = common::Run::from(
        fixture
            .command(ONETIME)
            .envs(CREDENTIALS.iter().copied())
            .env("RECONFD_COMMAND_ENV", "ETCDCTL_PASSWORD,NOT_A_CREDENTIAL")
            .output()
            .expect("run reconfd"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let env = fixture.read("reload-env");
    assert!(
        env.contains("ETCDCTL_PASSWORD=secret-etcdctl-password\n"),
        "{env}"
    );
    assert!(!env.contains("VAULT_TOKEN="), "{env}");
    assert!(
        run.stderr
            .contains("command-env names NOT_A_CREDENTIAL, which commands get anyway"),
        "{run:?}"
    );
}

#[test]
fn a_relative_destination_stages_under_a_clean_absolute_path() {
    let fixture = Fixture::new();
    fixture.template("a.tmpl", "x\n");
    fixture.resource(
        "a",
        "src = \"a.tmpl\"\ndest = \"out.txt\"\ncheck_cmd = \"printf %s {{.src}} > src-seen\"\n",
    );
    // The confdir given relative, as `reconfd --confdir .` run where it lies.
    let run = common::Run::from(
        std::process::Command::new(env!("CARGO_BIN_EXE_reconfd"))
            .args(["--confdir", ".", "--onetime", "--backend", "env"])
            .current_dir(fixture.root())
            .output()
            .expect("run reconfd"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    let seen = fixture.read("src-seen");
    let root = fixture.root().canonicalize().unwrap();
    assert!(
        seen.starts_with(&format!("{}/.out.txt.reconfd-", root.display()))
            || seen.starts_with(&format!("{}/.out.txt.reconfd-", fixture.root().display())),
        "{seen}"
    );
    assert!(!seen.contains("/./"), "{seen}");
}
