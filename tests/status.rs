//! `--listen`: health, readiness, Prometheus metrics, the `/status` JSON and the status page,
//! served by the real daemon on a loopback port; the page is loaded in headless Chromium.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Daemon, Fixture, get, wait_for};

/// A confdir with two resources over the file store, and the daemon watching it with
/// `--listen` on a free loopback port.
fn start() -> (Fixture, Daemon, String) {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    for name in ["alpha", "beta"] {
        fixture.resource(
            name,
            &format!("src = \"app.tmpl\"\ndest = \"{name}.conf\"\nkeys = [\"/app\"]\n"),
        );
    }
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--listen",
        &address,
    ]);
    let base = format!("http://{address}");
    let client = common::etcd::http_client();
    assert!(
        wait_for(Duration::from_secs(10), || client
            .get(format!("{base}/ready"))
            .send()
            .is_ok_and(|response| response.status() == 200)),
        "/ready turns 200 after the first sync\n{}",
        daemon.log()
    );
    (fixture, daemon, base)
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_renders() {
    let (fixture, daemon, base) = start();
    assert_eq!(get(&format!("{base}/health")), (200, "ok\n".to_string()));
    let (code, text) = get(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    // Every line is a comment or `name{labels} value`, as the exposition format says.
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(value.parse::<f64>().is_ok(), "a number in {line:?}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "a metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "labels in {line:?}"
            );
        }
    }
    for name in ["alpha", "beta"] {
        let resource = fixture.path(&format!("conf.d/{name}.toml"));
        let line = format!(
            "reconfd_renders_total{{resource=\"{}\",result=\"updated\"}} 1",
            resource.display()
        );
        assert!(text.lines().any(|l| l == line), "{line}\n{text}");
    }
    assert!(
        text.contains("reconfd_render_duration_seconds_bucket"),
        "{text}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn status_json_lists_every_resource() {
    let (fixture, daemon, base) = start();
    let (code, body) = get(&format!("{base}/status"));
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["ready"], true);
    let resources = status["resources"].as_array().expect("resources");
    assert_eq!(resources.len(), 2, "{body}");
    for (resource, name) in resources.iter().zip(["alpha", "beta"]) {
        assert_eq!(
            resource["dest"],
            fixture.path(&format!("{name}.conf")).display().to_string()
        );
        assert_eq!(resource["last_result"], "updated");
        assert_eq!(resource["md5"], md5("port 80\n"));
    }
    assert_eq!(status["stores"][0]["name"], "file");
    assert_eq!(status["stores"][0]["connected"], true);
    assert_eq!(daemon.terminate(), Some(0));
}

#[test]
fn a_resource_file_that_cannot_be_loaded_is_listed_and_counted() {
    let fixture = Fixture::new();
    fixture.template("app.tmpl", "port {{ getv(key=\"/app/port\") }}\n");
    fixture.resource(
        "good",
        "src = \"app.tmpl\"\ndest = \"good.conf\"\nkeys = [\"/app\"]\n",
    );
    fixture.resource(
        "broken",
        "src = \"app.tmpl\"\ndest = \"broken.conf\"\nkeys = [\"/app\"]\nmode = 0644\n",
    );
    fixture.write("data.yaml", "app:\n  port: \"80\"\n");
    let address = format!("127.0.0.1:{}", common::etcd::free_port());
    let daemon = fixture.spawn(&[
        "--watch",
        "--backend",
        "file",
        "--file",
        "data.yaml",
        "--listen",
        &address,
    ]);
    let base = format!("http://{address}");
    assert!(
        wait_for(Duration::from_secs(10), || get(&format!("{base}/ready")).0
            == 200),
        "the good resource is synced\n{}",
        daemon.log()
    );
    let (_, body) = get(&format!("{base}/status"));
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let unloaded = status["unloaded"].as_array().expect("unloaded");
    assert_eq!(unloaded.len(), 1, "{body}");
    let broken = fixture.path("conf.d/broken.toml").display().to_string();
    assert_eq!(unloaded[0]["file"], broken, "{body}");
    let error = unloaded[0]["error"].as_str().expect("error");
    assert!(error.contains(&format!("{broken}:5:")), "{error}");
    assert!(error.contains("quoted octal string"), "{error}");
    let (_, metrics) = get(&format!("{base}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|line| line == "reconfd_resource_files_unloaded 1"),
        "{metrics}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

/// A SIGHUP whose conf.d is refused keeps the running set; `/status` and `/metrics` say so, and
/// name the file, until a SIGHUP is taken.
#[test]
fn a_refused_reload_is_shown_until_one_is_taken() {
    let (fixture, daemon, base) = start();
    let (_, metrics) = get(&format!("{base}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|line| line == "reconfd_last_reload_successful 1"),
        "{metrics}"
    );
    let (_, body) = get(&format!("{base}/status"));
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert!(status["last_reload"].is_null(), "{body}");

    fixture.resource(
        "broken",
        "src = \"app.tmpl\"\ndest = \"broken.conf\"\nmode = 0644\n",
    );
    daemon.hang_up();
    let refused = || {
        let (_, body) = get(&format!("{base}/status"));
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (status["last_reload"]["ok"] == false).then_some(status)
    };
    assert!(
        wait_for(Duration::from_secs(30), || refused().is_some()),
        "the refused SIGHUP is shown\n{}",
        daemon.log()
    );
    let status = refused().expect("still refused");
    let error = status["last_reload"]["error"].as_str().expect("error");
    assert!(error.contains("conf.d/broken.toml"), "{error}");
    let (_, metrics) = get(&format!("{base}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|line| line == "reconfd_last_reload_successful 0"),
        "{metrics}"
    );

    std::fs::remove_file(fixture.path("conf.d/broken.toml")).expect("remove");
    daemon.hang_up();
    assert!(
        wait_for(Duration::from_secs(30), || {
            let (_, body) = get(&format!("{base}/status"));
            let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            status["last_reload"]["ok"] == true && status["last_reload"]["error"].is_null()
        }),
        "the SIGHUP taken is shown\n{}",
        daemon.log()
    );
    let (_, metrics) = get(&format!("{base}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|line| line == "reconfd_last_reload_successful 1"),
        "{metrics}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}

fn md5(text: &str) -> String {
    reconfd::reconcile::md5_hex(text.as_bytes())
}

#[test]
fn the_status_page_shows_each_resource_in_chromium() {
    let (fixture, daemon, base) = start();
    let profile = fixture.path("chromium-profile");
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &format!("{base}/"),
        ])
        .output()
        .expect("chromium (Debian's chromium package, installed by the test command)");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["alpha", "beta"] {
        let file = fixture
            .path(&format!("conf.d/{name}.toml"))
            .display()
            .to_string();
        let row = format!("data-file=\"{file}\" data-state=\"updated\"");
        assert!(dom.contains(&row), "{row} in\n{dom}");
    }
    assert!(dom.contains(">ready ·"), "the summary says ready\n{dom}");
    let (_, body) = get(&format!("{base}/status"));
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let instance = status["stores"][0]["instance"]
        .as_str()
        .expect("an instance");
    assert!(
        dom.contains(&format!("<td>{instance}</td><td>yes</td>")),
        "the store's row names its instance\n{dom}"
    );
    assert_eq!(daemon.terminate(), Some(0));
}
