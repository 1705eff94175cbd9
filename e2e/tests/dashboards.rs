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
    // The three dashboards the README promises are there.
    for (file, metric) in [
        ("business-kpis.json", "cartstream_kpi_"),
        ("pipeline-health.json", "cartstream_processor_"),
        ("model-quality.json", "cartstream_model_"),
    ] {
        let text =
            std::fs::read_to_string(root.join("grafana/dashboards").join(file)).unwrap_or_default();
        assert!(
            text.contains(metric),
            "{file} is missing or shows no {metric}* metric"
        );
    }
}
