//! `--onetime --noop --exit-code` tells drift apart: 3 when a destination would change, 0 when
//! all are in sync, 1 when a resource failed, 2 for unusable settings.

mod common;

use common::Fixture;

/// A resource rendering `port` from `data.yaml` into `app.conf`.
fn app(port: &str) -> Fixture {
    let fixture = Fixture::new();
    fixture.resource(
        "app",
        "src = \"app.tmpl\"\ndest = \"app.conf\"\nkeys = [\"/port\"]\n",
    );
    fixture.template("app.tmpl", "port {{ getv(key=\"/port\") }}\n");
    fixture.write("data.yaml", &format!("port: {port}\n"));
    fixture
}

const NOOP: &[&str] = &[
    "--onetime",
    "--noop",
    "--exit-code",
    "--backend",
    "file",
    "--file",
    "data.yaml",
];

#[test]
fn drift_exits_3_and_is_left_in_place() {
    let fixture = app("80");
    fixture.write("app.conf", "port 81\n");
    let run = fixture.run(NOOP);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(
        run.stdout.contains("+port 80"),
        "the diff is shown: {run:?}"
    );
    assert_eq!(fixture.read("app.conf"), "port 81\n", "noop writes nothing");
    // A missing destination would change too.
    std::fs::remove_file(fixture.path("app.conf")).expect("remove");
    assert_eq!(fixture.run(NOOP).code, Some(3));
}

#[test]
fn in_sync_exits_0() {
    let fixture = app("80");
    fixture.write("app.conf", "port 80\n");
    let run = fixture.run(NOOP);
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn a_failure_exits_1_even_with_drift_elsewhere() {
    let fixture = app("80");
    fixture.resource(
        "broken",
        "src = \"broken.tmpl\"\ndest = \"broken.conf\"\nkeys = [\"/port\"]\n",
    );
    fixture.template("broken.tmpl", "{{ getv(key=\"/none\") }}");
    let run = fixture.run(NOOP);
    assert_eq!(run.code, Some(1), "{run:?}");
}

#[test]
fn without_the_flag_drift_exits_0_as_in_confd() {
    let fixture = app("80");
    fixture.write("app.conf", "port 81\n");
    let run = fixture.run(&[
        "--onetime",
        "--noop",
        "--backend",
        "file",
        "--file",
        "data.yaml",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
fn the_flag_without_onetime_and_noop_is_refused() {
    let fixture = app("80");
    let run = fixture.run(&[
        "--onetime",
        "--exit-code",
        "--backend",
        "file",
        "--file",
        "data.yaml",
    ]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--exit-code"), "{run:?}");
    assert!(!fixture.path("app.conf").exists(), "nothing ran");
}

#[test]
fn a_jobs_variable_does_not_stop_check_and_render() {
    let fixture = app("80");
    for args in [
        &["check"][..],
        &["render", "app", "--data", "data.yaml"][..],
    ] {
        let run = common::Run::from(
            fixture
                .command(args)
                .env("RECONFD_EXIT_CODE", "true")
                .output()
                .expect("run reconfd"),
        );
        assert_eq!(run.code, Some(0), "{args:?}: {run:?}");
    }
    let run = common::Run::from(
        fixture
            .command(&["--onetime", "--backend", "file", "--file", "data.yaml"])
            .env("RECONFD_EXIT_CODE", "true")
            .output()
            .expect("run reconfd"),
    );
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("RECONFD_EXIT_CODE"), "{run:?}");
}
