//! `reconfd check` loads the settings, resources and templates without reading any store and
//! prints every problem with its place, then a summary; `--data` adds a render of each
//! resource from a data file.

mod common;

use common::{Fixture, Run};

/// A confdir with two sound resources, `a` and `b`.
fn sound() -> Fixture {
    let fixture = Fixture::new();
    for name in ["a", "b"] {
        fixture.resource(
            name,
            &format!("src = \"{name}.tmpl\"\ndest = \"{name}.conf\"\nkeys = [\"/app\"]\n"),
        );
        fixture.template(
            &format!("{name}.tmpl"),
            "port {{ getv(key=\"/app/port\") }}\n",
        );
    }
    fixture
}

/// The lines of standard output that name `needle`.
fn lines_with<'a>(run: &'a Run, needle: &str) -> Vec<&'a str> {
    run.stdout.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn a_sound_confdir_passes_without_any_store() {
    let fixture = sound();
    // The store named is out of reach: check never asks it.
    let run = fixture.run(&["check", "--backend", "etcd", "--node", "127.0.0.1:1"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        "reconfd check: 2 resources in 2 files: no problems",
        "{run:?}"
    );
    assert!(!fixture.path("a.conf").exists(), "nothing is written");
}

#[test]
fn every_problem_is_printed_with_file_line_and_column() {
    let fixture = sound();
    fixture.resource("typo", "src = \"a.tmpl\"\ndset = \"typo.conf\"\n");
    fixture.resource(
        "mode",
        "src = \"a.tmpl\"\ndest = \"m.conf\"\nmode = \"0999\"\n",
    );
    fixture.resource(
        "duration",
        "src = \"a.tmpl\"\ndest = \"d.conf\"\ncheck_cmd = \"true\"\ncheck_cmd_timeout = \"soon\"\n",
    );
    fixture.resource("nosrc", "src = \"missing.tmpl\"\ndest = \"n.conf\"\n");
    fixture.resource("dup1", "src = \"a.tmpl\"\ndest = \"same.conf\"\n");
    fixture.resource("dup2", "src = \"b.tmpl\"\ndest = \"same.conf\"\n");
    fixture.resource("syntax", "src = \"syntax.tmpl\"\ndest = \"s.conf\"\n");
    fixture.template("syntax.tmpl", "line one\n{% if %}\n");
    fixture.resource("unknown", "src = \"unknown.tmpl\"\ndest = \"u.conf\"\n");
    fixture.template(
        "unknown.tmpl",
        "one\n  {{ nosuch(key=\"/x\") }}\n{{ \"a\" | nofilter }}\n",
    );
    fixture.resource(
        "positional",
        "src = \"positional.tmpl\"\ndest = \"p.conf\"\n",
    );
    fixture.template("positional.tmpl", "{{ getv(\"/x\") }}\n");
    fixture.resource("misnamed", "src = \"misnamed.tmpl\"\ndest = \"mn.conf\"\n");
    // In a branch no render would take: found all the same.
    fixture.template(
        "misnamed.tmpl",
        "{% if false %}\n{% for kv in gets(pattern=\"/w/*\") %}{% endfor %}{% endif %}\n",
    );
    fixture.resource(
        "owner",
        "src = \"a.tmpl\"\ndest = \"o.conf\"\nowner = \"no-such-user-here\"\n",
    );

    let run = fixture.run(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let expect = |needle: &str, located: &str, what: &str| {
        let lines = lines_with(&run, needle);
        assert!(
            lines.iter().any(|line| line.contains(located)),
            "{what}: no line with {needle} at {located}\n{}",
            run.stdout
        );
    };
    expect("dset", "typo.toml:3:1", "an unknown key");
    expect("mode", "mode.toml:4:8", "an invalid mode");
    expect("no such user", "owner.toml:4:9", "an unknown owner");
    expect(
        "check_cmd_timeout",
        "duration.toml:5:",
        "an invalid duration",
    );
    expect("missing.tmpl", "missing.tmpl", "a src that does not exist");
    expect("same.conf", "dup1.toml", "a shared destination");
    expect("same.conf", "dup2.toml", "a shared destination, both files");
    expect("(resource", "syntax.tmpl:2:", "a syntax error");
    expect("nosuch", "unknown.tmpl:2:6", "an unknown function");
    expect("nofilter", "unknown.tmpl:3:", "an unknown filter");
    expect(
        "getv(key=",
        "positional.tmpl:1:",
        "an argument passed by position",
    );
    expect(
        "gets() has no argument `pattern`; it takes key",
        "misnamed.tmpl:2:19",
        "an argument the function does not take",
    );
    // The files refused whole hold no resource to count.
    assert_eq!(
        run.stdout.lines().last(),
        Some("reconfd check: 7 resources in 13 files: 12 problems in 11 files"),
        "{run:?}"
    );
}

#[test]
fn unusable_settings_exit_2() {
    let fixture = sound();
    let run = fixture.run(&["check", "--log-level", "loud"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    let run = fixture.run(&["check", "--confdir", "/nonexistent/reconfd"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stdout.contains("conf.d"), "{run:?}");
}

#[test]
fn data_renders_every_resource_and_names_a_key_the_data_lacks() {
    let fixture = sound();
    fixture.resource(
        "db",
        "src = \"db.tmpl\"\ndest = \"db.conf\"\nkeys = [\"/db\"]\n",
    );
    fixture.template("db.tmpl", "host {{ getv(key=\"/db/host\") }}\n");
    fixture.write("full.yaml", "app:\n  port: 80\ndb:\n  host: db1\n");
    fixture.write("partial.yaml", "app:\n  port: 80\n");

    let run = fixture.run(&["check", "--data", "full.yaml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stdout
            .contains("3 resources in 3 files, rendered from full.yaml: no problems"),
        "{run:?}"
    );

    let run = fixture.run(&["check", "--data", "partial.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let lines = lines_with(&run, "/db/host");
    assert!(
        lines.iter().any(|line| line.contains("db.tmpl:1:")),
        "the missing key is named with its place\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("1 problem in 1 file"), "{run:?}");
    assert!(!fixture.path("db.conf").exists(), "nothing is written");

    let run = fixture.run(&["check", "--data", "absent.yaml"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert_eq!(run.stdout.matches("absent.yaml").count(), 1, "{run:?}");
    let run = fixture.run(&["render", "db", "--data", "absent.yaml"]);
    assert_eq!(run.code, Some(2), "the same for render: {run:?}");
}

#[test]
fn data_applies_min_keys_and_output_format_as_a_sync_would() {
    let fixture = sound();
    fixture.resource(
        "db",
        "src = \"db.tmpl\"\ndest = \"db.json\"\nkeys = [\"/db\"]\noutput_format = \"json\"\n",
    );
    fixture.template("db.tmpl", "host={{ getv(key=\"/db/host\") }}\n");
    fixture.resource(
        "pool",
        "src = \"pool.tmpl\"\ndest = \"pool.conf\"\nkeys = [\"/pool\"]\nmin_keys = 3\n",
    );
    fixture.template(
        "pool.tmpl",
        "{{ getvs(key=\"/pool/*\") | join(sep=\",\") }}\n",
    );
    fixture.write(
        "data.yaml",
        "app:\n  port: 80\ndb:\n  host: db1\npool:\n  a: 1\n  b: 2\n",
    );
    let run = fixture.run(&["check", "--data", "data.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        lines_with(&run, "db.tmpl: the rendered output is not valid JSON")
            .iter()
            .any(|line| line.contains("conf.d/db.toml")),
        "{run:?}"
    );
    assert!(
        lines_with(&run, "2 keys under /pool, fewer than min_keys = 3")
            .iter()
            .any(|line| line.contains("conf.d/pool.toml")),
        "{run:?}"
    );
    assert!(run.stdout.contains("2 problems in 2 files"), "{run:?}");
    // `render` refuses the same, as the daemon would.
    let run = fixture.run(&["render", "db", "--data", "data.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("not valid JSON"), "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
}

#[test]
fn data_renders_mask_secret_values_and_take_the_global_min_keys() {
    let fixture = Fixture::new();
    fixture.template("s.tmpl", "port {{ getv(key=\"/db/password\") | atoi }}\n");
    fixture.resource(
        "s",
        "src = \"s.tmpl\"\ndest = \"s.conf\"\nkeys = [\"/db\"]\nsecret = true\n",
    );
    fixture.write("d.yaml", "db:\n  password: Hunter2Secret\n");
    for run in [
        fixture.run(&["check", "--data", "d.yaml"]),
        fixture.run(&["render", "s", "--data", "d.yaml"]),
        fixture.run(&["render", "s", "--backend", "file", "--file", "d.yaml"]),
    ] {
        assert_eq!(run.code, Some(1), "{run:?}");
        let printed = format!("{}{}", run.stdout, run.stderr);
        assert!(printed.contains("atoi: `***` is not an integer"), "{run:?}");
        assert!(!printed.contains("Hunter2Secret"), "{run:?}");
    }
    fixture.template("s.tmpl", "password {{ getv(key=\"/db/password\") }}\n");
    let run = fixture.run(&["check", "--data", "d.yaml", "--min-keys", "2"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stdout
            .contains("1 key under /db, fewer than min_keys = 2"),
        "{run:?}"
    );
    let run = fixture.run(&["render", "s", "--data", "d.yaml", "--min-keys", "2"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    // What render prints on success is the file itself, secret or not.
    let run = fixture.run(&["render", "s", "--data", "d.yaml"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "password Hunter2Secret\n");
}

#[test]
fn a_reader_that_stops_early_changes_no_exit_status() {
    let fixture = sound();
    for name in ["a", "b", "c"] {
        fixture.resource(name, "src = \"missing.tmpl\"\ndest = \"x.conf\"\n");
    }
    fixture.write("d.yaml", "app:\n  port: \"80\"\n");
    // `| head -0`: the pipe is closed before anything is written to it.
    let ran = |args: &[&str]| {
        let mut child = fixture
            .command(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run reconfd");
        drop(child.stdout.take());
        Run::from(child.wait_with_output().expect("wait"))
    };
    let run = ran(&["check"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    let run = ran(&["man"]);
    assert_eq!(run.code, Some(0), "{run:?}");
}
