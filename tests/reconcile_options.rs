//! The `[template]` options `backup`, `rollback`, `create_dest_dirs`, `output_format` and
//! `check_cmd_timeout`, driven through the real binary with `--onetime` and the file store.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Fixture, Run};

const ONETIME: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

/// A confdir whose resource `app` renders `/app/port` as JSON into `out/app.json`, with the
/// resource lines `extra` added.
fn fixture(port: &str, extra: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "{\"port\": {{ getv(key=\"/app/port\") }}}\n");
    fixture.resource(
        "app",
        &format!("src = \"app.tmpl\"\ndest = \"out/app.json\"\nkeys = [\"/app\"]\n{extra}"),
    );
    fixture.write("out/.keep", "");
    set_port(&fixture, port);
    fixture
}

fn set_port(fixture: &Fixture, port: &str) {
    fixture.write("data.yaml", &format!("app:\n  port: \"{port}\"\n"));
}

fn run(fixture: &Fixture) -> Run {
    fixture.run(ONETIME)
}

fn mode(fixture: &Fixture, relative: &str) -> u32 {
    std::fs::metadata(fixture.path(relative))
        .expect("metadata")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn backup_keeps_the_previous_bytes_and_mode_and_is_replaced_each_time() {
    let fixture = fixture("8080", "backup = true\n");
    let first = run(&fixture);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(
        !fixture.path("out/app.json.bak").exists(),
        "no previous file, no backup"
    );
    std::fs::set_permissions(
        fixture.path("out/app.json"),
        std::fs::Permissions::from_mode(0o640),
    )
    .expect("chmod");

    set_port(&fixture, "9090");
    let second = run(&fixture);
    assert_eq!(second.code, Some(0), "{second:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 9090}\n");
    assert_eq!(fixture.read("out/app.json.bak"), "{\"port\": 8080}\n");
    assert_eq!(mode(&fixture, "out/app.json.bak"), 0o640);

    set_port(&fixture, "7070");
    let third = run(&fixture);
    assert_eq!(third.code, Some(0), "{third:?}");
    assert_eq!(fixture.read("out/app.json.bak"), "{\"port\": 9090}\n");

    let again = run(&fixture);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_eq!(
        fixture.read("out/app.json.bak"),
        "{\"port\": 9090}\n",
        "in sync: the backup is left alone"
    );
    assert_eq!(
        fixture.list("out"),
        [".keep", "app.json", "app.json.bak"],
        "no stray files"
    );
}

/// A reload command that counts its runs in `runs`, copies what it reloads to
/// `reloaded.<run>`, and fails on port 9999.
const COUNTING_RELOAD: &str = concat!(
    "reload_cmd = 'echo run >> runs; ",
    "cp out/app.json reloaded.$(wc -l < runs | tr -d \" \"); ",
    "! grep -q 9999 out/app.json'\n",
);

fn runs(fixture: &Fixture) -> usize {
    std::fs::read_to_string(fixture.path("runs"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_failed_reload_with_rollback_restores_the_previous_bytes_and_reloads_them() {
    let fixture = fixture("8080", &format!("rollback = true\n{COUNTING_RELOAD}"));
    let first = run(&fixture);
    assert_eq!(first.code, Some(0), "{first:?}");
    assert_eq!(runs(&fixture), 1);
    std::fs::set_permissions(
        fixture.path("out/app.json"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");

    set_port(&fixture, "9999");
    let failed = run(&fixture);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
    assert_eq!(mode(&fixture, "out/app.json"), 0o600, "previous mode kept");
    assert_eq!(
        runs(&fixture),
        3,
        "the failed reload, then one on the old file"
    );
    assert_eq!(fixture.read("reloaded.2"), "{\"port\": 9999}\n");
    assert_eq!(fixture.read("reloaded.3"), "{\"port\": 8080}\n");
    assert!(failed.stderr.contains("app.toml"), "{failed:?}");
    assert!(
        failed.stderr.contains("the reload command failed")
            && failed.stderr.contains("previous file was put back")
            && failed.stderr.contains("the reload on it succeeded"),
        "{failed:?}"
    );
    assert_eq!(fixture.list("out"), [".keep", "app.json"], "no stray files");

    // Level-triggered: the next run tries the new content again, and fails the same way.
    let again = run(&fixture);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
    assert_eq!(runs(&fixture), 5);
}

#[test]
fn a_reload_that_times_out_is_rolled_back_too() {
    let reload = "reload_cmd = 'if grep -q 9999 out/app.json; then sleep 10; fi'\n\
                  reload_cmd_timeout = \"1s\"\nrollback = true\n";
    let fixture = fixture("8080", reload);
    assert_eq!(run(&fixture).code, Some(0));
    set_port(&fixture, "9999");
    let failed = run(&fixture);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(failed.stderr.contains("killed"), "{failed:?}");
    assert!(failed.stderr.contains("put back"), "{failed:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
}

#[test]
fn a_check_that_outlives_its_timeout_is_killed_and_the_destination_kept() {
    let check = "check_cmd = 'if grep -q 9999 {{.src}}; then sleep 1000; fi'\n\
                 check_cmd_timeout = \"1s\"\n";
    let fixture = fixture("8080", check);
    assert_eq!(run(&fixture).code, Some(0));
    set_port(&fixture, "9999");
    let failed = run(&fixture);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(
        failed
            .stderr
            .contains("did not finish within 1s and was killed"),
        "{failed:?}"
    );
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
    assert_eq!(
        fixture.list("out"),
        [".keep", "app.json"],
        "no stage file left"
    );
}

#[test]
fn rollback_removes_a_destination_that_did_not_exist_before() {
    let fixture = fixture("9999", &format!("rollback = true\n{COUNTING_RELOAD}"));
    let failed = run(&fixture);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert!(!fixture.path("out/app.json").exists(), "{failed:?}");
    assert_eq!(runs(&fixture), 2, "{failed:?}");
    assert!(
        failed.stderr.contains("app.toml") && failed.stderr.contains("put back"),
        "{failed:?}"
    );
}

#[test]
fn without_rollback_a_failed_reload_keeps_the_new_file_and_reloads_once() {
    let fixture = fixture("8080", COUNTING_RELOAD);
    assert_eq!(run(&fixture).code, Some(0));
    set_port(&fixture, "9999");
    let failed = run(&fixture);
    assert_eq!(failed.code, Some(1), "{failed:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 9999}\n");
    assert_eq!(runs(&fixture), 2);
    assert!(!failed.stderr.contains("put back"), "{failed:?}");
}

#[test]
fn create_dest_dirs_creates_nested_directories() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    let resource = "src = \"app.tmpl\"\ndest = \"a/b/c/app.conf\"\nkeys = [\"/app\"]\n";
    fixture.resource("app", resource);
    set_port(&fixture, "80");

    let refused = run(&fixture);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("a/b/c does not exist")
            && refused.stderr.contains("create_dest_dirs"),
        "names the directory: {refused:?}"
    );
    assert!(!fixture.path("a").exists());

    fixture.resource("app", &format!("{resource}create_dest_dirs = true\n"));
    let created = run(&fixture);
    assert_eq!(created.code, Some(0), "{created:?}");
    assert_eq!(fixture.read("a/b/c/app.conf"), "port 80\n");
    for dir in ["a", "a/b", "a/b/c"] {
        assert_eq!(mode(&fixture, dir), 0o755, "{dir}");
    }
    let again = run(&fixture);
    assert_eq!(again.code, Some(0), "{again:?}");
}

#[test]
fn output_format_json_rejects_invalid_json_and_accepts_valid_json() {
    let check = "check_cmd = 'touch checked'\nreload_cmd = 'touch reloaded'\n";
    let fixture = fixture("80 80", &format!("output_format = \"json\"\n{check}"));
    fixture.write("out/app.json", "{\"port\": 1}\n");

    let rejected = run(&fixture);
    assert_eq!(rejected.code, Some(1), "{rejected:?}");
    assert!(
        rejected.stderr.contains("app.toml")
            && rejected.stderr.contains("not valid JSON")
            && rejected.stderr.contains("line 1 column"),
        "{rejected:?}"
    );
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 1}\n", "untouched");
    assert_eq!(fixture.list("out"), [".keep", "app.json"], "nothing staged");
    assert!(
        !fixture.path("checked").exists() && !fixture.path("reloaded").exists(),
        "nothing ran"
    );

    set_port(&fixture, "8080");
    let accepted = run(&fixture);
    assert_eq!(accepted.code, Some(0), "{accepted:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
    assert!(fixture.path("reloaded").exists());
}

#[test]
fn output_format_yaml_and_toml_check_their_syntax() {
    for (format, template, bad) in [
        ("yaml", "port: {{ getv(key=\"/app/port\") }}\n", "[80"),
        ("toml", "port = {{ getv(key=\"/app/port\") }}\n", "80 80"),
    ] {
        let fixture = Fixture::new();
        fixture.template("app.tmpl", template);
        fixture.resource(
            "app",
            &format!(
                "src = \"app.tmpl\"\ndest = \"app.{format}\"\nkeys = [\"/app\"]\n\
                 output_format = \"{format}\"\n"
            ),
        );
        set_port(&fixture, bad);
        let rejected = run(&fixture);
        assert_eq!(rejected.code, Some(1), "{format}: {rejected:?}");
        assert!(
            rejected
                .stderr
                .contains(&format!("not valid {}", format.to_uppercase())),
            "{rejected:?}"
        );
        assert!(!fixture.path(&format!("app.{format}")).exists());
        set_port(&fixture, "80");
        let accepted = run(&fixture);
        assert_eq!(accepted.code, Some(0), "{format}: {accepted:?}");
    }
}

#[test]
fn an_unknown_output_format_is_an_error_naming_the_file_and_key() {
    let fixture = fixture("8080", "output_format = \"xml\"\n");
    let refused = run(&fixture);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("app.toml:5:")
            && refused.stderr.contains("`output_format`")
            && refused.stderr.contains("xml"),
        "{refused:?}"
    );
    assert!(!fixture.path("out/app.json").exists());
}

#[test]
fn a_misspelt_option_is_still_an_error() {
    let fixture = fixture("8080", "back_up = true\n");
    let refused = run(&fixture);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("app.toml:5:") && refused.stderr.contains("back_up"),
        "{refused:?}"
    );
}
