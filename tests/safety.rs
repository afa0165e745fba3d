//! The resource options that keep a service on a good configuration: `rollback` when the
//! reload fails, `backup`, `output_format` validation and `create_dest_dirs`, driven through
//! the real binary with the file store.

mod common;

use common::Fixture;

const ONETIME: &[&str] = &["--onetime", "--backend", "file", "--file", "data.yaml"];

/// A confdir whose resource renders `/app/port` into `out/app.json` as JSON, with `extra`
/// resource lines.
fn fixture(port: &str, extra: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "{\"port\": {{ getv(key=\"/app/port\") }}}\n");
    fixture.resource(
        "app",
        &format!("src = \"app.tmpl\"\ndest = \"out/app.json\"\nkeys = [\"/app\"]\n{extra}"),
    );
    fixture.write("out/.keep", "");
    fixture.write("data.yaml", &format!("app:\n  port: \"{port}\"\n"));
    fixture
}

#[test]
fn a_failed_reload_with_rollback_restores_the_previous_file_and_reloads_it() {
    // The reload records the file it reloads, and fails for port 9999.
    let reload = "cat out/app.json >> reloads; ! grep -q 9999 out/app.json";
    let fixture = fixture(
        "8080",
        &format!("rollback = true\nreload_cmd = \"{reload}\"\n"),
    );
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");

    fixture.write("data.yaml", "app:\n  port: \"9999\"\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        fixture.read("out/app.json"),
        "{\"port\": 8080}\n",
        "previous bytes back"
    );
    assert_eq!(
        fixture.read("reloads"),
        "{\"port\": 8080}\n{\"port\": 9999}\n{\"port\": 8080}\n",
        "reloaded on the new file, then again on the restored one"
    );
    assert!(
        run.stderr.contains("app.toml"),
        "names the resource: {run:?}"
    );
    assert!(
        run.stderr.contains("previous file was put back")
            && run.stderr.contains("the reload on it succeeded"),
        "{run:?}"
    );
    assert_eq!(fixture.list("out"), [".keep", "app.json"], "no stray files");
}

#[test]
fn without_rollback_a_failed_reload_leaves_the_new_file() {
    let fixture = fixture("8080", "reload_cmd = \"false\"\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
}

#[test]
fn backup_keeps_the_previous_bytes_and_mode() {
    let fixture = fixture("8080", "backup = true\nmode = \"0640\"\n");
    assert_eq!(fixture.run(ONETIME).code, Some(0));
    assert!(
        !fixture.path("out/app.json.bak").exists(),
        "nothing to keep yet"
    );
    fixture.write("data.yaml", "app:\n  port: \"9090\"\n");
    assert_eq!(fixture.run(ONETIME).code, Some(0));
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 9090}\n");
    assert_eq!(fixture.read("out/app.json.bak"), "{\"port\": 8080}\n");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(fixture.path("out/app.json.bak"))
            .expect("bak")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o640);
}

#[test]
fn output_format_rejects_invalid_output_and_leaves_the_destination() {
    let fixture = fixture("8080", "output_format = \"json\"\n");
    assert_eq!(fixture.run(ONETIME).code, Some(0), "valid JSON is written");
    fixture.write("data.yaml", "app:\n  port: \"80 80\"\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("app.toml")
            && run.stderr.contains("not valid JSON")
            && run.stderr.contains("line 1 column"),
        "{run:?}"
    );
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
    assert_eq!(fixture.list("out"), [".keep", "app.json"], "nothing staged");
}

#[test]
fn an_unknown_output_format_is_an_error_naming_the_file_and_key() {
    let fixture = fixture("8080", "output_format = \"xml\"\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("app.toml") && run.stderr.contains("output_format"),
        "{run:?}"
    );
}

#[test]
fn create_dest_dirs_creates_missing_directories_and_is_needed() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"deep/er/app.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("deep/er") && run.stderr.contains("create_dest_dirs"),
        "{run:?}"
    );
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"deep/er/app.conf\"\nkeys = [\"/app\"]\n\
         create_dest_dirs = true\n",
    );
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("deep/er/app.conf"), "port 80\n");
}

#[test]
fn the_rollback_flag_applies_to_every_resource() {
    let fixture = fixture("8080", "reload_cmd = \"! grep -q 9999 out/app.json\"\n");
    assert_eq!(fixture.run(ONETIME).code, Some(0));
    fixture.write("data.yaml", "app:\n  port: \"9999\"\n");
    let mut args = ONETIME.to_vec();
    args.push("--rollback");
    let run = fixture.run(&args);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(fixture.read("out/app.json"), "{\"port\": 8080}\n");
}
