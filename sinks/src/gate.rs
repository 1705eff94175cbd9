//! The lake sink's quality pause: a breached data-quality gate stops the lake's loading.
//!
//! The detector raises a `data_quality` alert (severity warning or critical) for each breach of a
//! gate, and one of severity `info` with subject kind `gate` when every gate passes again
//! (`cartstream_processors::quality`). The lake sink reads `alerts.raised` as one of its inputs,
//! so it sees them in order with its own offsets. With `--quality-pause`:
//!
//! - `off`: alerts are written like any other record;
//! - `resume`: a breach pauses the sink until an operator resumes it (`POST /lake/resume` on
//!   `--control-addr`; `GET /lake/gate` shows the state);
//! - `until-clear`: a breach pauses the sink until the gates' clear alert arrives (or an operator
//!   resumes it).
//!
//! **Paused, the sink commits nothing and loses nothing**: no partition is flushed (no file, no
//! offset commit), the fact partitions stop fetching (their buffered records stay buffered), and
//! only the alert partitions go on being read, to see the clear alert. The pause itself lives in
//! Kafka: the breach alert is not committed while paused, so a sink restarted while paused reads it
//! again and pauses again (a graceful stop while paused flushes nothing either). Resuming flushes
//! the alert partitions at once, so a restart after a resume does not pause on the same alert.
//!
//! What it does not do: the records of the breached window itself were usually loaded before the
//! alert (a window is judged after its end + the gate's grace, the lake flushes every
//! `--max-file-age-secs`); and each instance pauses on the alerts of the alert partitions it owns.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use cartstream_events::types::{Alert, AlertType, Severity};
use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};

/// What a breached quality gate does to the lake sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PauseMode {
    Off,
    Resume,
    UntilClear,
}

/// The state shared by the sink and its control endpoint.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GateState {
    /// The alert id that paused the sink.
    pub paused_by: Option<String>,
    /// Breach alerts seen while paused.
    pub breaches: u64,
    /// An operator asked to resume.
    pub resume_requested: bool,
    pub pauses: u64,
    pub resumes: u64,
}

/// What an alert does to the pause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Nothing,
    Pause,
    Resume,
}

/// The pure rule: a breach pauses (in `resume` and `until-clear`), the clear alert resumes (in
/// `until-clear` only).
pub fn decide(mode: PauseMode, paused: bool, a: &Alert) -> Decision {
    if mode == PauseMode::Off || a.alert_type != AlertType::DataQuality {
        return Decision::Nothing;
    }
    let clear = a.severity == Severity::Info && a.subject_kind == "gate";
    match (paused, clear) {
        (false, false) if a.severity != Severity::Info => Decision::Pause,
        (true, true) if mode == PauseMode::UntilClear => Decision::Resume,
        _ => Decision::Nothing,
    }
}

pub type SharedGate = Arc<Mutex<GateState>>;

pub fn lock(g: &SharedGate) -> std::sync::MutexGuard<'_, GateState> {
    g.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `cartstream_lake_paused` (1 while paused) and `cartstream_lake_pauses_total{event}`.
pub struct GateMetrics {
    pub paused: IntGauge,
    pub events: IntCounterVec,
}

impl GateMetrics {
    pub fn get() -> &'static GateMetrics {
        static M: OnceLock<GateMetrics> = OnceLock::new();
        M.get_or_init(|| GateMetrics {
            paused: register_int_gauge!(
                "cartstream_lake_paused",
                "1 while a breached data-quality gate pauses the lake sink (nothing is committed)"
            )
            .expect("registers once"),
            events: register_int_counter_vec!(
                "cartstream_lake_pause_events_total",
                "Quality pauses of the lake sink and their ends, by event (pause, resume_command, resume_clear)",
                &["event"]
            )
            .expect("registers once"),
        })
    }
}

/// Serves `GET /lake/gate` (the state as JSON) and `POST /lake/resume` on `addr` until shutdown;
/// returns the bound address.
pub async fn serve_control(
    addr: SocketAddr,
    gate: SharedGate,
    shutdown: cartstream_runtime::Shutdown,
) -> anyhow::Result<SocketAddr> {
    use axum::routing::{get, post};
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!("cannot listen on {addr} for the lake control endpoint: {e}")
    })?;
    let bound = listener.local_addr()?;
    let g1 = gate.clone();
    let app = axum::Router::new()
        .route(
            "/lake/gate",
            get(move || async move { state_json(&lock(&g1)) }),
        )
        .route(
            "/lake/resume",
            post(move || async move {
                let mut s = lock(&gate);
                if s.paused_by.is_some() {
                    s.resume_requested = true;
                    "resuming\n"
                } else {
                    "not paused\n"
                }
            }),
        );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "lake control endpoint stopped");
        }
    });
    Ok(bound)
}

fn state_json(s: &GateState) -> String {
    serde_json::json!({
        "paused": s.paused_by.is_some(),
        "paused_by": s.paused_by,
        "breaches_while_paused": s.breaches,
        "resume_requested": s.resume_requested,
        "pauses": s.pauses,
        "resumes": s.resumes,
    })
    .to_string()
        + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(t: AlertType, sev: Severity, kind: &str) -> Alert {
        Alert {
            alert_id: "x".into(),
            alert_type: t,
            severity: sev,
            subject_kind: kind.into(),
            subject_id: "brand".into(),
            window_start: 0,
            window_end: 60_000,
            observed: 0.9,
            baseline: 0.0,
            threshold: 0.3,
            message: String::new(),
            detected_at: 0,
        }
    }

    #[test]
    fn breaches_pause_and_only_until_clear_resumes_on_the_clear_alert() {
        let breach = alert(AlertType::DataQuality, Severity::Warning, "field");
        let clear = alert(AlertType::DataQuality, Severity::Info, "gate");
        let trend = alert(AlertType::Trend, Severity::Warning, "category");
        for mode in [PauseMode::Resume, PauseMode::UntilClear] {
            assert_eq!(decide(mode, false, &breach), Decision::Pause);
            assert_eq!(decide(mode, true, &breach), Decision::Nothing);
            assert_eq!(decide(mode, false, &trend), Decision::Nothing);
            assert_eq!(decide(mode, false, &clear), Decision::Nothing);
        }
        assert_eq!(
            decide(PauseMode::UntilClear, true, &clear),
            Decision::Resume
        );
        assert_eq!(decide(PauseMode::Resume, true, &clear), Decision::Nothing);
        assert_eq!(decide(PauseMode::Off, false, &breach), Decision::Nothing);
    }
}
