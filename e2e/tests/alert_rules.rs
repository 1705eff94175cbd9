//! The Prometheus alert rules (`grafana/prometheus/alerts.yml`) through the real `promtool`:
//! syntax (`check rules`), behaviour (`test rules alerts.test.yml`: synthetic series, expected
//! alerts and non-alerts), and both Prometheus configs that load them (`check config`).
//!
//! promtool comes with the local stack's Prometheus (`scripts/stack.sh install`); the test skips,
//! saying so, only when it is not installed and `CI` is unset (in CI a missing promtool fails).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn promtool() -> Option<PathBuf> {
    let stack = std::env::var_os("STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack"));
    let p = stack.join("prometheus/root/usr/bin/promtool");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "promtool not found at {} (run scripts/stack.sh install)",
            p.display()
        );
    }
    eprintln!(
        "SKIP: promtool not installed at {} (run scripts/stack.sh install)",
        p.display()
    );
    None
}

fn run(promtool: &Path, args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running promtool {args:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_are_valid_and_behave_as_their_unit_tests_say() {
    let Some(promtool) = promtool() else { return };
    let dir = repo_root().join("grafana/prometheus");
    let (ok, text) = run(&promtool, &["check", "rules", "alerts.yml"], &dir);
    assert!(ok, "promtool check rules failed:\n{text}");
    // Every rule group is non-empty and the count matches the file.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let n = rules.matches("- alert:").count();
    assert!(n >= 6, "expected the operator alerts, found {n}");
    assert!(
        text.contains(&format!("{n} rules found")),
        "promtool saw a different number of rules than the file has ({n}):\n{text}"
    );
    let (ok, text) = run(&promtool, &["test", "rules", "alerts.test.yml"], &dir);
    assert!(
        ok && text.contains("SUCCESS"),
        "promtool test rules failed:\n{text}"
    );
}

#[test]
fn every_alert_has_a_unit_test() {
    let dir = repo_root().join("grafana/prometheus");
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
    let missing: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:").map(str::trim))
        .filter(|name| !tests.contains(&format!("alertname: {name}")))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts without a case in alerts.test.yml: {missing:?}"
    );
}

#[test]
fn compose_prometheus_config_with_its_rules_is_valid() {
    let Some(promtool) = promtool() else { return };
    let dir = repo_root().join("grafana/prometheus");
    let (ok, text) = run(
        &promtool,
        &["check", "config", "prometheus-compose.yml"],
        &dir,
    );
    assert!(ok, "promtool check config failed:\n{text}");
    assert!(
        text.contains("alerts.yml") && text.contains("rules found"),
        "the compose config does not load alerts.yml:\n{text}"
    );
}
