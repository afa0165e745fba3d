//! What keeps a service on a good configuration: `rollback` when the reload fails, `backup`,
//! `output_format` validation, `create_dest_dirs`, one reload per batch for resources sharing
//! a reload command, and resources of several files swapped all or none; driven through the
//! real binary with the file store.

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

/// A confdir for the reload-batching tests: templates `a` and `b` render `/app/port`;
/// reloads append what they see of both files to `reloads`.
fn two_files(port: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.template("a.tmpl", "a {{ getv(key=\"/app/port\") }}\n");
    fixture.template("b.tmpl", "b {{ getv(key=\"/app/port\") }}\n");
    fixture.write("data.yaml", &format!("app:\n  port: \"{port}\"\n"));
    fixture
}

const SHOW_BOTH: &str = "cat a.conf b.conf >> reloads; echo -- >> reloads";

#[test]
fn resources_with_the_same_reload_command_reload_once_after_both_swaps() {
    let fixture = two_files("80");
    for name in ["a", "b"] {
        fixture.resource(
            name,
            &format!(
                "src = \"{name}.tmpl\"\ndest = \"{name}.conf\"\nkeys = [\"/app\"]\n\
                 reload_cmd = \"{SHOW_BOTH}\"\n"
            ),
        );
    }
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fixture.read("reloads"),
        "a 80\nb 80\n--\n",
        "one reload, both files in place"
    );
}

#[test]
fn a_resource_with_several_templates_swaps_all_then_reloads_once_or_swaps_none() {
    let fixture = two_files("80");
    fixture.write(
        "conf.d/app.toml",
        &format!(
            "[[template]]\nsrc = \"a.tmpl\"\ndest = \"a.conf\"\nkeys = [\"/app\"]\n\
             reload_cmd = \"{SHOW_BOTH}\"\n\n\
             [[template]]\nsrc = \"b.tmpl\"\ndest = \"b.conf\"\nkeys = [\"/app\"]\n\
             check_cmd = \"! grep -q 99 {{{{.src}}}}\"\nreload_cmd = \"{SHOW_BOTH}\"\n"
        ),
    );
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("reloads"), "a 80\nb 80\n--\n");

    // b's check rejects port 99: a, though fine, is not swapped in either.
    fixture.write("data.yaml", "app:\n  port: \"99\"\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(fixture.read("a.conf"), "a 80\n");
    assert_eq!(fixture.read("b.conf"), "b 80\n");
    assert_eq!(fixture.read("reloads"), "a 80\nb 80\n--\n", "no reload");
    assert!(
        run.stderr
            .contains("another template of the same resource failed"),
        "{run:?}"
    );
    let stray: Vec<String> = fixture
        .list(".")
        .into_iter()
        .filter(|name| name.starts_with(".a.conf") || name.starts_with(".b.conf"))
        .collect();
    assert!(stray.is_empty(), "no stage files left: {stray:?}");
}

#[test]
fn without_check_commands_a_template_that_fails_holds_back_the_others_of_its_file() {
    // No check command: the batch is compared, staged and swapped in one go, and the rule
    // holds there too. b is JSON, which "b 99" is not; c fails to render without /app/name.
    let fixture = two_files("80");
    fixture.template(
        "c.tmpl",
        "{% if getv(key=\"/app/port\") == \"77\" %}{{ getv(key=\"/app/name\") }}{% endif %}c\n",
    );
    fixture.write(
        "conf.d/app.toml",
        &format!(
            "[[template]]\nsrc = \"a.tmpl\"\ndest = \"a.conf\"\nkeys = [\"/app\"]\n\
             reload_cmd = \"{SHOW_BOTH}\"\n\n\
             [[template]]\nsrc = \"b.tmpl\"\ndest = \"b.conf\"\nkeys = [\"/app\"]\n\
             output_format = \"yaml\"\nreload_cmd = \"{SHOW_BOTH}\"\n\n\
             [[template]]\nsrc = \"c.tmpl\"\ndest = \"c.conf\"\nkeys = [\"/app\"]\n"
        ),
    );
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read("reloads"), "a 80\nb 80\n--\n");

    for (port, fault) in [("99: [", "b.conf"), ("77", "/app/name")] {
        fixture.write("data.yaml", &format!("app:\n  port: \"{port}\"\n"));
        let run = fixture.run(ONETIME);
        assert_eq!(run.code, Some(1), "{run:?}");
        assert!(run.stderr.contains(fault), "{run:?}");
        assert_eq!(fixture.read("a.conf"), "a 80\n", "a held back ({fault})");
        assert_eq!(fixture.read("b.conf"), "b 80\n", "b held back ({fault})");
        assert_eq!(fixture.read("c.conf"), "c\n", "c held back ({fault})");
        assert_eq!(fixture.read("reloads"), "a 80\nb 80\n--\n", "no reload");
        let stray: Vec<String> = fixture
            .list(".")
            .into_iter()
            .filter(|name| name.starts_with(".a.conf") || name.starts_with(".c.conf"))
            .collect();
        assert!(stray.is_empty(), "no stage files left: {stray:?}");
    }
}

/// The file names in `out` that start as a stage file of `out/app.json` does.
fn stage_files(fixture: &Fixture) -> Vec<String> {
    fixture
        .list("out")
        .into_iter()
        .filter(|name| name.starts_with(".app.json.reconfd-"))
        .collect()
}

#[test]
fn stage_files_left_by_a_killed_run_are_removed_at_start_and_nothing_else() {
    // The check records its process ID and blocks until killed, holding the stage file.
    let fixture = fixture(
        "8080",
        "check_cmd = \"echo $$ > check.pid; exec sleep 1000\"\n",
    );
    let mut daemon = fixture.spawn(ONETIME);
    let check_pid = || {
        std::fs::read_to_string(fixture.path("check.pid"))
            .ok()
            .filter(|text| text.ends_with('\n'))
            .and_then(|text| text.trim().parse::<i32>().ok())
    };
    assert!(
        common::wait_for(std::time::Duration::from_secs(30), || check_pid().is_some()),
        "the check runs\n{}",
        daemon.log()
    );
    daemon.child.kill().expect("SIGKILL");
    daemon.child.wait().expect("wait");
    // The check runs in a process group of its own, which SIGKILL did not reach.
    let group = nix::unistd::Pid::from_raw(check_pid().expect("pid"));
    nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL).expect("killpg");
    let leftovers = stage_files(&fixture);
    assert_eq!(leftovers.len(), 1, "the killed run left its stage file");

    // Files of the user's that look alike, and a file kept after a failed check, stay.
    let alike = [
        ".app.json.reconfd-notes",
        ".app.json.reconfd-Ab12Cd.orig",
        ".app.json.reconfd-Ab12Cd.rejected",
        ".app.json.Ab12Cd",
        "app.json.reconfd-Ab12Cd",
        ".other.json.reconfd-Ab12Cd",
    ];
    for name in alike {
        fixture.write(&format!("out/{name}"), "mine\n");
    }
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"out/app.json\"\nkeys = [\"/app\"]\n",
    );
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "removed {}, a stage file left by a run that was interrupted",
            fixture.path(&format!("out/{}", leftovers[0])).display()
        )),
        "{run:?}"
    );
    let mut expected: Vec<String> = alike.iter().map(|name| name.to_string()).collect();
    expected.extend([".keep".to_string(), "app.json".to_string()]);
    expected.sort();
    assert_eq!(fixture.list("out"), expected);
    for name in alike {
        assert_eq!(fixture.read(&format!("out/{name}")), "mine\n");
    }
}

#[test]
fn a_destination_name_as_long_as_the_file_system_takes_is_staged_checked_and_kept() {
    let long = format!("{}.json", "é".repeat(122));
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "{{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "app",
        &format!(
            "src = \"app.tmpl\"\ndest = \"out/{long}\"\nkeys = [\"/app\"]\n\
             check_cmd = \"grep -qv 9999 {{{{.src}}}}\"\n"
        ),
    );
    fixture.write("out/.keep", "");
    fixture.write("data.yaml", "app:\n  port: \"8080\"\n");
    let run = fixture.run(ONETIME);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fixture.read(&format!("out/{long}")), "8080\n");

    fixture.write("data.yaml", "app:\n  port: \"9999\"\n");
    let run = fixture.run(&[ONETIME, &["--keep-stage-file"]].concat());
    assert_eq!(run.code, Some(1), "the check refuses 9999: {run:?}");
    assert!(!run.stderr.contains("too long"), "{run:?}");
    let kept: Vec<String> = fixture
        .list("out")
        .into_iter()
        .filter(|name| name.ends_with(".rejected"))
        .collect();
    assert_eq!(kept.len(), 1, "{run:?}");
    assert!(kept[0].len() <= 255, "{}", kept[0]);
    assert!(
        kept[0].starts_with(".éé") && kept[0].contains(".reconfd-"),
        "{}",
        kept[0]
    );
    assert_eq!(fixture.read(&format!("out/{}", kept[0])), "9999\n");
    assert_eq!(fixture.read(&format!("out/{long}")), "8080\n");
}
