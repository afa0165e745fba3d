//! `--onetime` runs of the real binary against the file and env stores.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Fixture, Run};

const TEMPLATE: &str = "{% for kv in gets(key=\"/app/servers/*\") %}server {{ kv.key | base }} {{ kv.value }}\n{% endfor %}";

/// A confdir with one resource `app` rendering `/app/servers/*` into `out/app.conf`, whose
/// reload appends a line to `reloads`.
fn app_fixture(servers: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", TEMPLATE);
    let reloads = fixture.path("reloads");
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n\
             reload_cmd = \"echo reloaded >> {}\"\n",
            reloads.display()
        ),
    );
    fixture.write("out/.keep", "");
    fixture.write("data.yaml", &format!("app:\n  servers:\n{servers}"));
    fixture
}

fn reload_count(fixture: &Fixture) -> usize {
    std::fs::read_to_string(fixture.path("reloads"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

const ONETIME_FILE: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

#[test]
fn renders_then_stays_in_sync_without_reloading() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n");
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("out/app.conf"),
        "server web1 10.0.0.1:80\nserver web2 10.0.0.2:80\n"
    );
    assert_eq!(reload_count(&fixture), 1);
    assert!(run.stderr.contains("out of sync"), "{run:?}");

    let modified = std::fs::metadata(fixture.path("out/app.conf"))
        .expect("meta")
        .modified();
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(reload_count(&fixture), 1, "in sync: no reload");
    let again = std::fs::metadata(fixture.path("out/app.conf"))
        .expect("meta")
        .modified();
    assert_eq!(modified.ok(), again.ok(), "in sync: file not rewritten");
}

/// confd's own spelling, one dash per long option as Go's flag package takes them: a
/// command line copied from a confd setup works unchanged.
#[test]
fn confd_spelling_of_the_options_is_accepted() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    let noop = fixture.run(&["-onetime", "-noop", "-backend", "file", "-file=data.yaml"]);
    assert_eq!(noop.code, Some(0), "{noop:?}");
    assert!(
        !fixture.path("out/app.conf").exists(),
        "-noop wrote\n{noop:?}"
    );
    let run = fixture.run(&["-onetime", "-backend", "file", "-file=data.yaml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
    // A confd flag of a feature reconfd does not have is refused by its whole name.
    let unknown = fixture.run(&["-onetime", "-table", "confd"]);
    assert_eq!(unknown.code, Some(2), "{unknown:?}");
    assert!(
        unknown.stderr.contains("unexpected argument '--table'"),
        "{unknown:?}"
    );
}

/// Go's flag package takes `-noop=false` (and `=0`, `=F`, ...): a templated command line
/// such as `-watch=${WATCH}` turns a switch off, over the environment and the settings file.
#[test]
fn a_switch_given_false_is_off_over_the_environment_and_the_settings_file() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.write("reconfd.toml", "noop = true\n");
    let file_on = fixture.run(&["-onetime", "-backend", "file", "-file=data.yaml"]);
    assert_eq!(file_on.code, Some(0), "{file_on:?}");
    assert!(
        !fixture.path("out/app.conf").exists(),
        "noop from the settings file wrote\n{file_on:?}"
    );
    let mut with_env = fixture.command(&[
        "-onetime=T",
        "-noop=false",
        "-backend",
        "file",
        "-file=data.yaml",
    ]);
    with_env.env("RECONFD_NOOP", "true");
    let run = Run::from(with_env.output().expect("run reconfd"));
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
    let unclear = fixture.run(&["-onetime", "-noop=maybe", "-backend", "file"]);
    assert_eq!(unclear.code, Some(2), "{unclear:?}");
    assert!(
        unclear.stderr.contains("invalid value 'maybe' for '--noop"),
        "{unclear:?}"
    );
}

#[test]
fn changed_value_rewrites_and_reloads_once() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    assert_eq!(fixture.run(ONETIME_FILE).code, Some(0));
    fixture.write("data.yaml", "app:\n  servers:\n    web1: 10.0.0.9:8080\n");
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.9:8080\n");
    assert_eq!(reload_count(&fixture), 2);
    let md5 = |text: &str| reconfd::reconcile::md5_hex(text.as_bytes());
    let difference = format!(
        "has md5sum {} should be {}",
        md5("server web1 10.0.0.1:80\n"),
        md5("server web1 10.0.0.9:8080\n")
    );
    assert!(run.stderr.contains(&difference), "{difference}\n{run:?}");
    assert!(run.stderr.contains("has been updated"), "{run:?}");
}

#[test]
fn mode_is_applied() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\nmode = \"0600\"\n",
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    let mode = std::fs::metadata(fixture.path("out/app.conf"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o600);
}

#[test]
fn failing_check_leaves_destination_identical_and_no_stage_file() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.write("out/app.conf", "server web1 known-good\n");
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n\
             check_cmd = \"grep -q known-good {{{{.src}}}} || {{ echo 'config invalid at line 1' >&2; exit 1; }}\"\n\
             reload_cmd = \"echo reloaded >> {}\"\n",
            fixture.path("reloads").display()
        ),
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("config invalid at line 1"), "{run:?}");
    assert!(run.stderr.contains("out/app.conf"), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 known-good\n");
    assert_eq!(
        fixture.list("out"),
        [".keep", "app.conf"],
        "no stray stage file"
    );
    assert_eq!(reload_count(&fixture), 0);
}

#[test]
fn noop_prints_a_diff_and_changes_nothing() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n");
    fixture.write("out/app.conf", "server web1 10.0.0.1:80\n");
    let mut args = ONETIME_FILE.to_vec();
    args.push("--noop");
    let run = fixture.run(&args);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("+server web2 10.0.0.2:80"), "{run:?}");
    assert!(run.stdout.contains("@@"), "a unified diff: {run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
    assert_eq!(reload_count(&fixture), 0);
}

#[test]
fn sync_only_writes_without_commands() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n\
         check_cmd = \"echo checked >> checks\"\nreload_cmd = \"echo reloaded >> reloads\"\n",
    );
    let mut args = ONETIME_FILE.to_vec();
    args.push("--sync-only");
    let run = fixture.run(&args);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
    assert!(!fixture.path("checks").exists(), "no check ran: {run:?}");
    assert_eq!(reload_count(&fixture), 0);

    // The same run without the flag runs both.
    fixture.write("data.yaml", "app:\n  servers:\n    web2: 10.0.0.2:80\n");
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("checks"), "checked\n");
    assert_eq!(reload_count(&fixture), 1);
}

/// The owner of `relative` in the fixture, as (uid, gid).
fn owner_of(fixture: &Fixture, relative: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(fixture.path(relative)).expect("metadata");
    (metadata.uid(), metadata.gid())
}

/// `uid`/`gid` and `owner`/`group` give the destination its owner, and an owner changed behind
/// reconfd's back is found and put back. Only root can give a file away: run as another user
/// (CI runs as root) the test gives the files to that user's own user and group and checks
/// no more.
#[test]
fn owners_by_number_and_name_are_applied_and_compared() {
    use nix::unistd::{Gid, Group, Uid, User, getegid, geteuid};
    let root = geteuid().is_root();
    let (uid, gid) = if root {
        (65534, 65534)
    } else {
        (geteuid().as_raw(), getegid().as_raw())
    };
    let user = User::from_uid(Uid::from_raw(uid))
        .expect("passwd")
        .expect("a user with that ID")
        .name;
    let group = Group::from_gid(Gid::from_raw(gid))
        .expect("group file")
        .expect("a group with that ID")
        .name;
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    // Reload commands of their own: resources sharing one are reloaded once.
    let reload = |name: &str| {
        format!(
            "reload_cmd = \"echo {name} >> {}\"\n",
            fixture.path("reloads").display()
        )
    };
    let (app_reload, named_reload) = (reload("app"), reload("named"));
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n\
             uid = {uid}\ngid = {gid}\n{app_reload}"
        ),
    );
    fixture.resource(
        "named",
        &format!(
            "src = \"app.tmpl\"\ndest = \"out/named.conf\"\nkeys = [\"/app\"]\n\
             owner = \"{user}\"\ngroup = \"{group}\"\n{named_reload}"
        ),
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    for file in ["out/app.conf", "out/named.conf"] {
        assert_eq!(owner_of(&fixture, file), (uid, gid), "{file}: {run:?}");
    }
    if !root {
        eprintln!("not root: the owners cannot be changed to show that they are compared");
        return;
    }
    assert_eq!(reload_count(&fixture), 2, "{run:?}");

    // Given to root behind reconfd's back, with the content unchanged.
    for file in ["out/app.conf", "out/named.conf"] {
        std::os::unix::fs::chown(fixture.path(file), Some(0), Some(0)).expect("chown");
    }
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    for file in ["out/app.conf", "out/named.conf"] {
        assert_eq!(
            owner_of(&fixture, file),
            (uid, gid),
            "{file} put back: {run:?}"
        );
        let dest = fixture.path(file).display().to_string();
        assert!(
            run.stderr
                .contains(&format!("{dest} has UID 0 should be {uid}"))
                && run
                    .stderr
                    .contains(&format!("{dest} has GID 0 should be {gid}")),
            "{run:?}"
        );
    }
    assert_eq!(
        reload_count(&fixture),
        4,
        "each put back is reloaded: {run:?}"
    );
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
}

/// Each broken resource is reported precisely, and the valid one beside it is still rendered.
#[test]
fn broken_resources_are_named_and_the_valid_one_still_renders() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.resource(
        "typo",
        "src = \"app.tmpl\"\ndset = \"out/typo.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.template(
        "broken.tmpl",
        "line one\n{% for kv in gets(key=\"/app/*\") %}\n{{ kv.key \n",
    );
    fixture.resource(
        "broken",
        "src = \"broken.tmpl\"\ndest = \"out/broken.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.template("missing.tmpl", "a\nport = {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "missing",
        "src = \"missing.tmpl\"\ndest = \"out/missing.conf\"\nkeys = [\"/app\"]\n",
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("typo.toml:3:1"),
        "typo file and line: {run:?}"
    );
    assert!(run.stderr.contains("dset"), "typo key: {run:?}");
    assert!(
        run.stderr.contains("broken.tmpl:3:"),
        "template file and line: {run:?}"
    );
    assert!(
        run.stderr.contains("missing.tmpl:2"),
        "template line: {run:?}"
    );
    assert!(run.stderr.contains("/app/port"), "missing key: {run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
    assert_eq!(fixture.list("out"), [".keep", "app.conf"]);
}

/// Two resources in two files that write one destination would each find the other's content
/// on every run, rewrite it and reload: both are refused, each naming the other file, however
/// the destination is spelled; the other resources go on.
#[test]
fn resources_of_two_files_with_one_destination_are_both_refused() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.template("other.tmpl", "other\n");
    fixture.resource(
        "first",
        "src = \"other.tmpl\"\ndest = \"out/shared.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.resource(
        "second",
        "src = \"app.tmpl\"\ndest = \"out/../out/shared.conf\"\nkeys = [\"/app\"]\n",
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(1), "{run:?}");
    let refusal = |file: &str, other: &str| {
        run.stderr.lines().any(|line| {
            line.contains(&format!("conf.d/{file}.toml: "))
                && line.contains("shared.conf is also the destination of")
                && line.contains(&format!("conf.d/{other}.toml"))
        })
    };
    assert!(refusal("first", "second"), "{run:?}");
    assert!(refusal("second", "first"), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
    assert_eq!(fixture.list("out"), [".keep", "app.conf"]);
    assert_eq!(reload_count(&fixture), 1, "the other resource reloaded");
}

/// 4294967295 is chown's "leave unchanged": an owner that could never be set would rewrite
/// the file on every run. It is refused with the file and line; the other resources go on.
#[test]
fn an_owner_id_out_of_range_is_refused_with_file_and_line() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    for (name, key) in [("by_uid", "uid"), ("by_gid", "gid")] {
        fixture.resource(
            name,
            &format!(
                "src = \"app.tmpl\"\ndest = \"out/{name}.conf\"\nkeys = [\"/app\"]\n\
                 {key} = 4294967295\n"
            ),
        );
    }
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(1), "{run:?}");
    for (name, key) in [("by_uid", "uid"), ("by_gid", "gid")] {
        assert!(
            run.stderr.contains(&format!(
                "{name}.toml:5:7: `{key}` = 4294967295: a number, at least 0 and at most \
                 4294967294"
            )),
            "{run:?}"
        );
    }
    assert_eq!(fixture.list("out"), [".keep", "app.conf"]);
}

/// A wait past its limit is refused when the resource is read, naming the file, the key and
/// the limit, instead of a panic; the other resources still render.
#[test]
fn an_overlong_wait_fails_only_its_resource_naming_file_key_and_limit() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.resource(
        "forever",
        "src = \"app.tmpl\"\ndest = \"out/forever.conf\"\nkeys = [\"/app\"]\n\
         wait = \"300000000000y\"\n",
    );
    fixture.resource(
        "until",
        "src = \"app.tmpl\"\ndest = \"out/until.conf\"\nkeys = [\"/app\"]\n\
         wait = \"1s:300000000000y\"\n",
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    assert!(
        run.stderr
            .contains("forever.toml:5:8: `wait` = \"300000000000y\": at most 365d"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(
            "until.toml:5:8: `wait` = \"1s:300000000000y\": maximum \"300000000000y\": at most 365d"
        ),
        "{run:?}"
    );
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
    assert_eq!(fixture.list("out"), [".keep", "app.conf"]);
}

/// Durations past their limit in flags, the environment or the settings file are unusable
/// settings: exit 2 with one line naming where the value came from and the limit.
#[test]
fn overlong_durations_in_flags_environment_and_settings_exit_2_naming_them() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    let run = fixture.run(&[ONETIME_FILE, &["--interval", "10000000000000000000"]].concat());
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(
        run.stderr,
        "reconfd: --interval 10000000000000000000: at most 31536000 seconds (365d)\n"
    );
    let run = Run::from(
        fixture
            .command(ONETIME_FILE)
            .env("RECONFD_INTERVAL", "10000000000000000000")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("RECONFD_INTERVAL=10000000000000000000: at most 31536000 seconds"),
        "{run:?}"
    );
    let run = fixture.run(&[ONETIME_FILE, &["--wait", "1s:300000000000y"]].concat());
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("--wait \"1s:300000000000y\": maximum \"300000000000y\": at most 365d"),
        "{run:?}"
    );
    fixture.write("reconfd.toml", "wait = \"300000000000y\"\n");
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("reconfd.toml:1:8: `wait`: at most 365d, in `wait = \"300000000000y\"`"),
        "{run:?}"
    );
    assert!(!fixture.path("out/app.conf").exists(), "nothing ran");
}

#[test]
fn env_store_maps_variables_like_confd() {
    let fixture = Fixture::new();
    fixture.template(
        "env.tmpl",
        "{% for kv in gets(key=\"/proxy/frontend/*\") %}{{ kv.key | base }}={{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "env",
        "src = \"env.tmpl\"\ndest = \"env.conf\"\nkeys = [\"/proxy/frontend\"]\n",
    );
    let run = Run::from(
        fixture
            .command(&["--onetime", "--backend", "env"])
            .env("PROXY_FRONTEND_WEB1", "10.0.0.1:80")
            .env("PROXY_FRONTEND_WEB2", "10.0.0.2:80")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("env.conf"),
        "web1=10.0.0.1:80\nweb2=10.0.0.2:80\n"
    );
}

#[test]
fn settings_file_and_environment_feed_the_flags() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.write(
        "reconfd.toml",
        "backend = \"file\"\nfile = [\"data.yaml\"]\nlog-level = \"debug\"\n",
    );
    let run = Run::from(
        fixture
            .command(&[])
            .env("RECONFD_ONETIME", "true")
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
}

/// A flag beats its variable, which beats the settings file: for a value (`prefix`), a switch
/// (`noop`) and a list (`file`).
#[test]
fn flags_beat_variables_which_beat_the_settings_file() {
    let fixture = Fixture::new();
    fixture.template("db.tmpl", "host={{ getv(key=\"/db/host\") }}\n");
    fixture.resource(
        "db",
        "src = \"db.tmpl\"\ndest = \"db.conf\"\nkeys = [\"/db\"]\n",
    );
    fixture.write(
        "data.json",
        r#"{"file": {"db": {"host": "file"}}, "env": {"db": {"host": "env"}}, "flag": {"db": {"host": "flag"}}}"#,
    );
    fixture.write(
        "reconfd.toml",
        "onetime = true\nfile = \"missing.json\"\nprefix = \"/file\"\nnoop = true\n",
    );
    let run_with = |args: &[&str], env: &[(&str, &str)]| {
        Run::from(
            fixture
                .command(args)
                .env("RECONFD_FILE", "data.json")
                .envs(env.iter().copied())
                .output()
                .expect("run"),
        )
    };
    let run = run_with(&[], &[]);
    assert_eq!(
        run.code,
        Some(0),
        "the variable's file, not the file's: {run:?}"
    );
    assert!(!fixture.path("db.conf").exists(), "noop from the file");
    let run = run_with(&[], &[("RECONFD_NOOP", "false")]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "host=file\n");
    let run = run_with(
        &[],
        &[("RECONFD_NOOP", "false"), ("RECONFD_PREFIX", "/env")],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "host=env\n");
    let run = run_with(
        &["--prefix", "/flag"],
        &[("RECONFD_NOOP", "false"), ("RECONFD_PREFIX", "/env")],
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "host=flag\n");
}

#[test]
fn unusable_settings_exit_2_with_one_clear_line() {
    let fixture = Fixture::new();
    let run = fixture.run(&["--onetime", "--backend", "zookeper"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("zookeper"), "{run:?}");
    let run = fixture.run(&["--onetime", "--interval", "soon"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    let run = fixture.run(&["--onetime", "--config-file", "/nonexistent/reconfd.toml"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("/nonexistent/reconfd.toml"), "{run:?}");
    let run = fixture.run(&["--onetime", "--file", "missing.yaml"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--file missing.yaml"), "{run:?}");
    let run = Run::from(
        std::process::Command::new(env!("CARGO_BIN_EXE_reconfd"))
            .args(["--onetime", "--confdir", "/nonexistent", "--backend", "env"])
            .output()
            .expect("run"),
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("/nonexistent/conf.d"), "{run:?}");
}

#[test]
fn the_log_level_applies_to_what_reading_the_settings_logs() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    // `table` is a key of a confd store reconfd lacks: a warning, at the default level.
    fixture.write(
        "settings.toml",
        "backend = \"file\"\nfile = [\"data.yaml\"]\ntable = \"x\"\n",
    );
    let run = fixture.run(&["--onetime", "--config-file", "settings.toml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains("`table`"),
        "{run:?}"
    );
    // At `error`, from the command line or from the file itself, nothing below it shows.
    let run = fixture.run(&[
        "--onetime",
        "--config-file",
        "settings.toml",
        "--log-level",
        "error",
        "--node",
        "unused:1",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    fixture.write(
        "settings.toml",
        "log-level = \"error\"\nbackend = \"file\"\nfile = [\"data.yaml\"]\ntable = \"x\"\n",
    );
    let run = fixture.run(&["--onetime", "--config-file", "settings.toml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "", "{run:?}");
    assert!(fixture.read("out/app.conf").contains("web1"));
}

#[test]
fn sigterm_during_a_check_leaves_no_stage_file_and_the_destination_as_it_was() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.write("out/app.conf", "previous\n");
    let started = fixture.path("check-started");
    fixture.resource(
        "app",
        // A check that never ends by itself: reconfd must end it, not wait for it. It says
        // when it runs: the stage file exists before, while it is still being flushed.
        &format!(
            "src = \"app.tmpl\"\ndest = \"out/app.conf\"\nkeys = [\"/app\"]\n\
             check_cmd = \"touch {}; while true; do sleep 0.05; done\"\n",
            started.display()
        ),
    );
    let daemon = fixture.spawn(ONETIME_FILE);
    assert!(
        common::wait_for(std::time::Duration::from_secs(10), || started.exists()),
        "the check runs"
    );
    assert_eq!(
        fixture.list("out").len(),
        3,
        "the stage file is there while the check runs"
    );
    assert_eq!(
        daemon.terminate(),
        Some(1),
        "exits without waiting for the check"
    );
    assert_eq!(fixture.list("out"), [".keep", "app.conf"]);
    assert_eq!(fixture.read("out/app.conf"), "previous\n");
}

#[test]
fn sigterm_while_a_stage_file_is_written_leaves_no_stage_file_and_the_destination_as_it_was() {
    // 128 MB to write and flush: the stage file exists for a good while (about a tenth of a
    // second on a fast disk) before it is complete.
    let line = "x".repeat(128 * 1024);
    let fixture = Fixture::new();
    fixture.template(
        "big.tmpl",
        "{% set line = getv(key=\"/app/line\") %}{% for i in range(end=1000) %}{{ line }}\n{% endfor %}",
    );
    fixture.resource(
        "big",
        "src = \"big.tmpl\"\ndest = \"out/big.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.write("out/big.conf", "previous\n");
    fixture.write("data.yaml", &format!("app:\n  line: {line}\n"));

    let (created, creations) = std::sync::mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && matches!(event.kind, notify::EventKind::Create(_))
        {
            let _ = created.send(event.paths);
        }
    })
    .expect("inotify");
    notify::Watcher::watch(
        &mut watcher,
        &fixture.path("out"),
        notify::RecursiveMode::NonRecursive,
    )
    .expect("watch out/");
    let daemon = fixture.spawn(ONETIME_FILE);
    let stage_created = creations
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("a stage file is created");
    assert!(
        stage_created[0]
            .display()
            .to_string()
            .contains(".big.conf.reconfd-"),
        "{stage_created:?}"
    );
    // Sent while the stage file is being written or flushed, work that cannot be stopped.
    assert_eq!(daemon.terminate(), Some(1));
    assert_eq!(
        fixture.list("out"),
        ["big.conf"],
        "the interrupted run removed its stage file before exiting"
    );
    let dest = fixture.read("out/big.conf");
    assert!(
        dest == "previous\n",
        "the destination is as it was, not replaced after the SIGTERM ({} bytes)",
        dest.len()
    );
}

#[test]
fn unreadable_data_file_fails_naming_it_and_keeps_the_destination() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.write("out/app.conf", "previous\n");
    fixture.write("data.yaml", "app:\n  servers: [unclosed\n");
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("data.yaml"), "{run:?}");
    assert!(run.stderr.contains("line"), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "previous\n");
}

#[test]
fn a_data_directory_is_read_through_the_filter_and_later_files_win() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.write("data/a.yaml", "app:\n  servers:\n    web1: 10.0.0.1:80\n");
    fixture.write(
        "data/nested/b.json",
        r#"{"app": {"servers": {"web1": "10.0.0.11:80", "web2": "10.0.0.2:80"}}}"#,
    );
    fixture.write("data/notes.txt", "not: [data\n");
    let run = fixture.run(&["--onetime", "--backend", "file", "--file", "data"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("out/app.conf"),
        "server web1 10.0.0.11:80\nserver web2 10.0.0.2:80\n",
        "nested/b.json is read after a.yaml and wins /app/servers/web1"
    );
    assert!(
        run.stderr.contains("/app/servers/web1") && run.stderr.contains("b.json"),
        "the override is reported: {run:?}"
    );

    let run = fixture.run(&[
        "--onetime",
        "--backend",
        "file",
        "--file",
        "data",
        "--filter",
        "*.yaml",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("out/app.conf"), "server web1 10.0.0.1:80\n");
}

#[test]
fn version_is_printed() {
    let run = Fixture::new().run(&["--version"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .starts_with(&format!("reconfd {}", env!("CARGO_PKG_VERSION"))),
        "{run:?}"
    );
}

/// A destination that is a bind mount of its own (a single file mounted into a container)
/// cannot be renamed over; it is written in place. The mount is made in a private user and
/// mount namespace (`unshare -rm`), so the test needs no privileges.
#[test]
fn a_bind_mounted_destination_is_written_in_place() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    fixture.write("mounted.conf", "old\n");
    fixture.write("out/app.conf", "old\n");
    let command = fixture.command(&["--onetime", "--backend", "file", "--file", "data.yaml"]);
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(|arg| arg.to_owned()).collect();
    let run = Run::from(
        std::process::Command::new("unshare")
            .args([
                "-rm",
                "sh",
                "-c",
                "mount --bind mounted.conf out/app.conf && exec \"$@\"",
                "sh",
            ])
            .arg(program)
            .args(args)
            .current_dir(fixture.root())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .output()
            .expect("unshare (util-linux)"),
    );
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stderr.contains("writing it in place"), "{run:?}");
    assert_eq!(
        fixture.read("mounted.conf"),
        "server web1 10.0.0.1:80\n",
        "the mounted file itself received the content"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let fixture = app_fixture("    web1: 10.0.0.1:80\n");
    let mut args = ONETIME_FILE.to_vec();
    args.extend(["--log-format", "json"]);
    let run = fixture.run(&args);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect();
    assert!(
        lines.iter().any(|line| line["level"] == "INFO"
            && line["message"]
                .as_str()
                .is_some_and(|message| message.contains("out of sync"))),
        "{run:?}"
    );
}

#[test]
fn a_global_prefix_replaces_the_resources_own_as_confd_does() {
    let fixture = Fixture::new();
    fixture.template("db.tmpl", "host {{ getv(key=\"/db/host\") }}\n");
    fixture.resource(
        "db",
        "src = \"db.tmpl\"\ndest = \"db.conf\"\nprefix = \"myapp\"\nkeys = [\"/db\"]\n",
    );
    fixture.write(
        "data.yaml",
        "myapp:\n  db:\n    host: own\nproduction:\n  db:\n    host: global\n",
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "host own\n");

    let mut with_prefix = ONETIME_FILE.to_vec();
    with_prefix.extend(["--prefix", "/production"]);
    let run = fixture.run(&with_prefix);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("db.conf"), "host global\n");
    assert!(
        run.stderr
            .contains("the global prefix /production replaces the resource's prefix /myapp"),
        "{run:?}"
    );
}

#[test]
fn a_resource_without_keys_renders_without_asking_the_store() {
    let fixture = Fixture::new();
    fixture.template(
        "motd.tmpl",
        "{% for i in seq(first=1, last=3) %}{{ i }}{% endfor %}\n",
    );
    fixture.resource("motd", "src = \"motd.tmpl\"\ndest = \"motd\"\n");
    // Nothing listens on the discard port: a store that were asked would fail the run.
    let run = fixture.run(&["--onetime", "--backend", "redis", "--node", "127.0.0.1:9"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("motd"), "123\n");
}

#[test]
fn an_unknown_store_is_named_where_it_was_given() {
    let fixture = Fixture::new();
    fixture.write("reconfd.toml", "backend = \"etcdd\"\n");
    let run = fixture.run(&["--onetime", "--backend", "etcdd"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("--backend \"etcdd\": not a known store (known: file, env, etcd"),
        "{run:?}"
    );
    let output = fixture
        .command(&["--onetime"])
        .env("RECONFD_BACKEND", "etcdd")
        .output()
        .expect("run reconfd");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("RECONFD_BACKEND=\"etcdd\": not a known store"),
        "{stderr}"
    );
    let run = fixture.run(&["--onetime"]);
    assert!(
        run.stderr
            .contains("reconfd.toml:1:11: `backend`: not a known store"),
        "{run:?}"
    );
}

#[test]
fn a_missing_confdir_points_at_the_flag() {
    let fixture = Fixture::new();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reconfd"))
        .args(["--onetime", "--confdir", "nowhere"])
        .current_dir(fixture.root())
        .output()
        .expect("run reconfd");
    let run = common::Run::from(output);
    assert_eq!(run.code, Some(2), "unusable settings: {run:?}");
    assert!(
        run.stderr
            .contains("nowhere/conf.d: cannot read the resource directory")
            && run
                .stderr
                .contains("--confdir (or RECONFD_CONFDIR) names the directory"),
        "{run:?}"
    );
}

#[test]
fn unquoted_yes_no_on_off_are_booleans_as_in_confd() {
    let fixture = Fixture::new();
    fixture.template(
        "flags.tmpl",
        "{% for kv in gets(key=\"/v/*\") %}{{ kv.key | base }}={{ kv.value }}\n{% endfor %}",
    );
    fixture.resource(
        "flags",
        "src = \"flags.tmpl\"\ndest = \"flags.conf\"\nkeys = [\"/v\"]\n",
    );
    fixture.write(
        "data.yaml",
        "v:\n  word_yes: yes\n  word_off: Off\n  letter_n: n\n  quoted_yes: 'yes'\n  \
         quoted_on: \"on\"\n  sentence: say yes\n",
    );
    let run = fixture.run(ONETIME_FILE);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("flags.conf"),
        "letter_n=false\nquoted_on=on\nquoted_yes=yes\nsentence=say yes\nword_off=false\n\
         word_yes=true\n"
    );
}

#[test]
fn confds_variables_name_the_client_tls_files_where_nothing_else_does() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/app\"]\n",
    );
    let onetime = [
        "--onetime",
        "--backend",
        "etcd",
        "--node",
        "https://127.0.0.1:1",
    ];
    // The files do not exist, so the message names the one taken.
    let run = Run::from(
        fixture
            .command(&onetime)
            .env("CONFD_CLIENT_CERT", "/nonexistent/confd-cert.pem")
            .env("CONFD_CLIENT_KEY", "/nonexistent/confd-key.pem")
            .output()
            .expect("run reconfd"),
    );
    assert_eq!(run.code, Some(2), "a settings error: {run:?}");
    assert!(
        run.stderr.contains("/nonexistent/confd-cert.pem"),
        "{run:?}"
    );
    let run = Run::from(
        fixture
            .command(&onetime)
            .env("CONFD_CLIENT_CERT", "/nonexistent/confd-cert.pem")
            .env("CONFD_CLIENT_KEY", "/nonexistent/confd-key.pem")
            .env("RECONFD_CLIENT_CERT", "/nonexistent/ours-cert.pem")
            .output()
            .expect("run reconfd"),
    );
    assert!(run.stderr.contains("/nonexistent/ours-cert.pem"), "{run:?}");
    assert!(!run.stderr.contains("confd-cert.pem"), "{run:?}");
}

#[test]
fn a_bad_value_from_a_variable_names_the_variable_not_the_flag() {
    let fixture = Fixture::new();
    let run = Run::from(
        fixture
            .command(&["--onetime", "--backend", "env"])
            .env("RECONFD_INTERVAL", "abc")
            .output()
            .expect("run reconfd"),
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr
            .contains("invalid value 'abc' for RECONFD_INTERVAL (from the environment)"),
        "{run:?}"
    );
    // Given as a flag, the flag is named.
    let run = Run::from(
        fixture
            .command(&["--onetime", "--backend", "env", "--interval", "xyz"])
            .env("RECONFD_INTERVAL", "abc")
            .output()
            .expect("run reconfd"),
    );
    assert!(run.stderr.contains("for '--interval <SECONDS>'"), "{run:?}");
}
