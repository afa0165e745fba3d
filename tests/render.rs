//! `reconfd render RESOURCE` prints one resource's rendered content, from a data file or one
//! read of its store, touching no destination and running no command.

mod common;

use common::Fixture;

/// A confdir with the resource `haproxy`, whose reload command would leave a mark.
fn haproxy() -> Fixture {
    let fixture = Fixture::new();
    fixture.resource(
        "haproxy",
        "src = \"haproxy.tmpl\"\ndest = \"haproxy.cfg\"\nprefix = \"/lb\"\nkeys = [\"/backends\"]\n\
         check_cmd = \"touch checked\"\nreload_cmd = \"touch reloaded\"\n",
    );
    fixture.template(
        "haproxy.tmpl",
        "backend app\n{% for kv in gets(key=\"/backends/*\") %}  server {{ kv.key | split(pat=\"/\") | last }} {{ kv.value }}\n{% endfor %}",
    );
    fixture.write(
        "fixtures/two-backends.yaml",
        "lb:\n  backends:\n    web1: 10.0.0.1:80\n    web2: 10.0.0.2:80\n",
    );
    fixture
}

const EXPECTED: &str = "backend app\n  server web1 10.0.0.1:80\n  server web2 10.0.0.2:80\n";

#[test]
fn a_resource_renders_from_a_fixture_by_name_file_name_or_path() {
    let fixture = haproxy();
    let path = fixture.path("conf.d/haproxy.toml");
    for name in [
        "haproxy",
        "haproxy.toml",
        path.to_str().expect("UTF-8 path"),
    ] {
        let run = fixture.run(&["render", name, "--data", "fixtures/two-backends.yaml"]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        assert_eq!(run.stdout, EXPECTED, "{name}");
    }
    assert!(!fixture.path("haproxy.cfg").exists(), "no destination");
    assert!(!fixture.path("checked").exists(), "no check command");
    assert!(!fixture.path("reloaded").exists(), "no reload command");

    // In a subdirectory of conf.d: by its path there, or by its name alone.
    std::fs::create_dir(fixture.path("conf.d/lb")).expect("mkdir");
    std::fs::rename(
        fixture.path("conf.d/haproxy.toml"),
        fixture.path("conf.d/lb/haproxy.toml"),
    )
    .expect("move");
    for name in [
        "lb/haproxy",
        "lb/haproxy.toml",
        "haproxy",
        "conf.d/lb/haproxy.toml",
    ] {
        let run = fixture.run(&["render", name, "--data", "fixtures/two-backends.yaml"]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        assert_eq!(run.stdout, EXPECTED, "{name}");
    }
}

#[test]
fn without_data_the_configured_store_is_read_once() {
    let fixture = haproxy();
    let run = fixture.run(&[
        "render",
        "haproxy",
        "--backend",
        "file",
        "--file",
        "fixtures/two-backends.yaml",
    ]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, EXPECTED);
    assert!(!fixture.path("haproxy.cfg").exists(), "no destination");
}

#[test]
fn a_failed_render_exits_1_with_the_located_error_and_prints_nothing() {
    let fixture = haproxy();
    fixture.template(
        "haproxy.tmpl",
        "backend app\n  {{ getv(key=\"/backends/none\") }}\n",
    );
    let run = fixture.run(&["render", "haproxy", "--data", "fixtures/two-backends.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stdout, "", "no partial output");
    assert!(run.stderr.contains("haproxy.tmpl:2:"), "{run:?}");
    assert!(run.stderr.contains("/backends/none"), "{run:?}");
}

#[test]
fn an_unknown_resource_or_no_data_source_is_refused() {
    let fixture = haproxy();
    let run = fixture.run(&["render", "nginx", "--data", "fixtures/two-backends.yaml"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("nginx.toml"), "{run:?}");
    let run = fixture.run(&["render", "haproxy"]);
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("--data"), "{run:?}");
}
