//! The dashboards are code: the JSON Grafana provisions is what `grafana/dashboards.py` makes.
//! (Whether each panel's query returns data on a running pipeline: `pipeline_it.rs`.)

use std::path::Path;
use std::process::Command;

#[test]
fn dashboard_json_is_generated_from_dashboards_py() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg("grafana/dashboards.py")
        .arg("--check")
        .current_dir(&root)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check itself can fail: a hand edit of the JSON is caught.
    let file = root.join("grafana/dashboards/model-quality.json");
    let original = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(original.contains("cartstream_model_"), "model dashboard missing");
}
