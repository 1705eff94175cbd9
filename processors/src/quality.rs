//! Data-quality gates: the streaming form of a batch pipeline's "fail the load when nulls pass a
//! threshold", judged per event-time window.
//!
//! Per tumbling window of `window_ms` the gate counts the events of `purchases.enriched`, how many
//! of them have each enriched field unknown ([`FIELDS`]: brand, category, product, user and the
//! user attributes), and the cleaner's rejects (its dead letters) by reason. Once the window is
//! final (the gate's clock, the lowest watermark over every upstream partition, is past its end +
//! `grace_ms`) it is judged once:
//!
//! - **unknown rate** of a field = unknown / events, breached above its threshold;
//! - **reject rate** of a reason = rejects of the reason / (events + all rejects), breached above
//!   [`GateConfig::reject_rate`];
//! - **volume** = events + rejects against the mean of the last `history` judged windows (a window
//!   without any record between two with records counts as 0): breached below `volume_low` x the
//!   mean or above `volume_high` x the mean, after `min_history` windows and when the mean is at
//!   least `min_events`.
//!
//! Rates are judged only for windows of at least `min_events` events (3 unknown brands out of 5
//! events say nothing). Every breach is one `data_quality` alert with the id
//! `data_quality/<gate>/<subject>/<window start>` (gate: `field`, `reject` or `volume`), so a replay
//! raises the same ids; the first window that breaches nothing after one that did raises a
//! `data_quality/gate/all/<window start>` alert of severity `info`: the gates are clear again (what
//! the lake sink's `--quality-pause until-clear` waits for).
//!
//! The partial counts arrive from every upstream partition in any order (each partition's counts
//! are sent before its watermark marker, so a window is complete once the clock passes it); the
//! judgement depends only on the summed counts, never on arrival order. State (open windows,
//! history, the marks) goes to the changelog like the other detector stages.

use std::collections::{BTreeMap, VecDeque};

use cartstream_events::types::{Alert, AlertType, EnrichedEvent, Severity};

use crate::clean::UNKNOWN;
use crate::detect::{Change, SourceMarks};

/// The enriched fields whose unknown rate is gated, in the order of [`Counts::unknown`].
pub const FIELDS: [&str; 7] = [
    "brand",
    "category",
    "product",
    "user",
    "user_country",
    "user_device",
    "user_segment",
];

/// Key of partial-count records on the gate's repartition partition.
pub const PARTIAL_KEY: &[u8] = b"~quality";
/// Key of the gate's watermark markers (source: enriched partition p, or dead-letter partition q
/// as `enriched partitions + q`).
pub const QUALITY_MARKER_KEY: &[u8] = b"~quality-marker";

fn is_unknown(s: &str) -> bool {
    s.is_empty() || s.eq_ignore_ascii_case(UNKNOWN)
}

/// Counts of one window (or of one batch's part of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    pub unknown: [u64; FIELDS.len()],
    pub rejects: BTreeMap<String, u64>,
}

impl Counts {
    pub fn add_event(&mut self, e: &EnrichedEvent) {
        self.events += 1;
        let flags = [
            is_unknown(&e.brand),
            is_unknown(&e.category_code),
            !e.product_known,
            !e.user_known,
            is_unknown(&e.user_country),
            is_unknown(&e.user_device),
            is_unknown(&e.user_segment),
        ];
        for (n, f) in self.unknown.iter_mut().zip(flags) {
            *n += u64::from(f);
        }
    }

    pub fn add_reject(&mut self, reason: &str) {
        *self.rejects.entry(reason.to_string()).or_default() += 1;
    }

    pub fn merge(&mut self, o: &Counts) {
        self.events += o.events;
        for (a, b) in self.unknown.iter_mut().zip(o.unknown) {
            *a += b;
        }
        for (r, n) in &o.rejects {
            *self.rejects.entry(r.clone()).or_default() += n;
        }
    }

    pub fn rejected(&self) -> u64 {
        self.rejects.values().sum()
    }

    /// Events plus rejects: what reached the pipeline in the window.
    pub fn volume(&self) -> u64 {
        self.events + self.rejected()
    }

    pub fn unknown_rate(&self, field: usize) -> f64 {
        if self.events == 0 {
            0.0
        } else {
            self.unknown[field] as f64 / self.events as f64
        }
    }

    pub fn reject_rate(&self, reason: &str) -> f64 {
        let v = self.volume();
        if v == 0 {
            0.0
        } else {
            self.rejects.get(reason).copied().unwrap_or(0) as f64 / v as f64
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.events.to_be_bytes());
        for n in self.unknown {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&(self.rejects.len() as u32).to_be_bytes());
        for (r, n) in &self.rejects {
            let b = r.as_bytes();
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }

    /// Decodes what [`Counts::encode`] wrote at the start of `b`; returns the rest.
    pub fn decode(b: &[u8]) -> Result<(Counts, &[u8]), String> {
        let mut r = Reader(b);
        let mut c = Counts {
            events: r.u64()?,
            ..Default::default()
        };
        for n in c.unknown.iter_mut() {
            *n = r.u64()?;
        }
        let k = r.u32()?;
        for _ in 0..k {
            let len = r.u32()? as usize;
            let s = r.take(len)?;
            let s = std::str::from_utf8(s).map_err(|_| "reject reason is not utf-8".to_string())?;
            let n = r.u64()?;
            c.rejects.insert(s.to_string(), n);
        }
        Ok((c, r.0))
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated quality record".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().map_err(|_| "truncated")?,
        ))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().map_err(|_| "truncated")?,
        ))
    }
}

/// A partial-count record: window start and counts.
pub fn encode_partial(window_start: i64, c: &Counts) -> Vec<u8> {
    let mut v = Vec::with_capacity(80);
    v.push(b'Q');
    v.extend_from_slice(&window_start.to_be_bytes());
    c.encode(&mut v);
    v
}

pub fn decode_partial(b: &[u8]) -> Result<(i64, Counts), String> {
    if b.first() != Some(&b'Q') {
        return Err("not a quality partial".into());
    }
    let mut r = Reader(&b[1..]);
    let start = r.i64()?;
    let (c, rest) = Counts::decode(r.0)?;
    if !rest.is_empty() {
        return Err("trailing bytes in a quality partial".into());
    }
    Ok((start, c))
}

/// Thresholds of the gates (the detector's `--gate-*` flags). A threshold of 0 turns its gate off.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    pub window_ms: i64,
    pub grace_ms: i64,
    /// Largest normal unknown rate per field of [`FIELDS`] (0: not gated).
    pub unknown_rate: [f64; FIELDS.len()],
    /// Largest normal reject rate of any one reason (0: not gated).
    pub reject_rate: f64,
    pub volume_low: f64,
    pub volume_high: f64,
    pub history: usize,
    pub min_history: usize,
    pub min_events: u64,
}

impl GateConfig {
    /// Parses `brand=0.2,category=0.2,...` into per-field thresholds (fields not named: 0, off).
    pub fn parse_unknown(s: &str) -> Result<[f64; FIELDS.len()], String> {
        let mut t = [0.0; FIELDS.len()];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (f, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not FIELD=RATE"))?;
            let i = FIELDS
                .iter()
                .position(|x| *x == f.trim())
                .ok_or_else(|| format!("unknown field {f:?}; fields: {}", FIELDS.join(", ")))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("{v:?} is not a rate"))?;
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("rate {v} of {f} is not within 0..1"));
            }
            t[i] = v;
        }
        Ok(t)
    }

    pub fn window_of(&self, t: i64) -> i64 {
        t.div_euclid(self.window_ms) * self.window_ms
    }
}

/// One judged window (for the metrics and the alerts).
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub window_start: i64,
    pub counts: Counts,
    /// Mean volume of the history it was judged against (`None`: too little history).
    pub baseline: Option<f64>,
    pub alerts: Vec<Alert>,
}

impl Judged {
    /// Breach alerts (the clear alert excluded).
    pub fn breaches(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.iter().filter(|a| a.severity != Severity::Info)
    }
}

/// A partial for a window already judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialTooLate {
    pub judged_up_to: i64,
}

/// The gate of one repartition partition: open windows, history, clock.
#[derive(Debug, Clone)]
pub struct QualityGate {
    cfg: GateConfig,
    marks: SourceMarks,
    open: BTreeMap<i64, Counts>,
    history: VecDeque<u64>,
    /// Start of the next window to judge (windows before it are judged); `None` before the first.
    next: Option<i64>,
    breached: bool,
    changed_windows: Vec<i64>,
    state_changed: bool,
    mark_changes: Vec<Change>,
}

const STATE_KEY: &[u8] = b"Qs";

impl QualityGate {
    pub fn new(cfg: GateConfig, sources: usize) -> Self {
        QualityGate {
            cfg,
            marks: SourceMarks::new(sources),
            open: BTreeMap::new(),
            history: VecDeque::new(),
            next: None,
            breached: false,
            changed_windows: Vec::new(),
            state_changed: false,
            mark_changes: Vec::new(),
        }
    }

    pub fn config(&self) -> &GateConfig {
        &self.cfg
    }

    pub fn mark(&mut self, source: i32, watermark: i64) {
        self.marks.mark(source, watermark);
    }

    /// The clock: the lowest mark once every source has reported.
    pub fn clock(&self) -> Option<i64> {
        self.marks.low()
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Adds a partial count of the window starting at `start`.
    pub fn add(&mut self, start: i64, c: &Counts) -> Result<(), PartialTooLate> {
        if let Some(n) = self.next {
            if start < n {
                return Err(PartialTooLate { judged_up_to: n });
            }
        }
        self.open.entry(start).or_default().merge(c);
        self.changed_windows.push(start);
        Ok(())
    }

    /// Judges every window final by the clock, oldest first. `detected_at` only fills the
    /// alerts' field of that name (never their ids or their judgement).
    pub fn judge(&mut self, detected_at: i64) -> Vec<Judged> {
        let Some(clock) = self.clock() else {
            return Vec::new();
        };
        let mut done = Vec::new();
        while let Some((&start, _)) = self.open.first_key_value() {
            if start
                .saturating_add(self.cfg.window_ms)
                .saturating_add(self.cfg.grace_ms)
                > clock
            {
                break;
            }
            let counts = self.open.remove(&start).unwrap_or_default();
            self.changed_windows.push(start);
            // Windows without any record between the last judged one and this one: volume 0.
            if let Some(n) = self.next {
                let gaps = ((start - n) / self.cfg.window_ms).max(0) as usize;
                for _ in 0..gaps.min(self.cfg.history.max(1)) {
                    self.push_history(0);
                }
            }
            let j = self.judge_one(start, counts, detected_at);
            self.push_history(j.counts.volume());
            self.next = Some(start + self.cfg.window_ms);
            self.state_changed = true;
            done.push(j);
        }
        done
    }

    fn push_history(&mut self, v: u64) {
        self.history.push_back(v);
        while self.history.len() > self.cfg.history.max(1) {
            self.history.pop_front();
        }
    }

    fn judge_one(&mut self, start: i64, counts: Counts, detected_at: i64) -> Judged {
        let cfg = &self.cfg;
        let end = start + cfg.window_ms;
        let alert = |gate: &str,
                     subject: &str,
                     observed: f64,
                     baseline: f64,
                     threshold: f64,
                     message: String| Alert {
            alert_id: format!("data_quality/{gate}/{subject}/{start}"),
            alert_type: AlertType::DataQuality,
            severity: Severity::Warning,
            subject_kind: gate.to_string(),
            subject_id: subject.to_string(),
            window_start: start,
            window_end: end,
            observed,
            baseline,
            threshold,
            message,
            detected_at,
        };
        let mut alerts = Vec::new();
        if counts.events >= cfg.min_events && counts.events > 0 {
            for (i, f) in FIELDS.iter().enumerate() {
                let t = cfg.unknown_rate[i];
                let r = counts.unknown_rate(i);
                if t > 0.0 && r > t {
                    alerts.push(alert(
                        "field",
                        f,
                        r,
                        0.0,
                        t,
                        format!(
                            "{} of {} events ({:.1}%) have {f} unknown, above the gate's {:.1}%",
                            counts.unknown[i],
                            counts.events,
                            100.0 * r,
                            100.0 * t
                        ),
                    ));
                }
            }
        }
        if counts.volume() >= cfg.min_events && cfg.reject_rate > 0.0 {
            for (reason, n) in &counts.rejects {
                let r = counts.reject_rate(reason);
                if r > cfg.reject_rate {
                    alerts.push(alert(
                        "reject",
                        reason,
                        r,
                        0.0,
                        cfg.reject_rate,
                        format!(
                            "{n} of {} records ({:.1}%) rejected as {reason}, above the gate's {:.1}%",
                            counts.volume(),
                            100.0 * r,
                            100.0 * cfg.reject_rate
                        ),
                    ));
                }
            }
        }
        let baseline = (self.history.len() >= cfg.min_history.max(1))
            .then(|| self.history.iter().sum::<u64>() as f64 / self.history.len() as f64);
        if let Some(mean) = baseline.filter(|m| *m >= cfg.min_events as f64 && *m > 0.0) {
            let v = counts.volume() as f64;
            if cfg.volume_low > 0.0 && v < cfg.volume_low * mean {
                alerts.push(alert(
                    "volume",
                    "low",
                    v,
                    mean,
                    cfg.volume_low * mean,
                    format!(
                        "{v} records in the window, below {:.0}% of the recent mean {mean:.1}",
                        100.0 * cfg.volume_low
                    ),
                ));
            }
            if cfg.volume_high > 0.0 && v > cfg.volume_high * mean {
                alerts.push(alert(
                    "volume",
                    "high",
                    v,
                    mean,
                    cfg.volume_high * mean,
                    format!(
                        "{v} records in the window, above {:.1}x the recent mean {mean:.1}",
                        cfg.volume_high
                    ),
                ));
            }
        }
        let breached = !alerts.is_empty();
        if !breached && self.breached {
            let mut a = alert(
                "gate",
                "all",
                0.0,
                0.0,
                0.0,
                "every quality gate passes again".to_string(),
            );
            a.severity = Severity::Info;
            alerts.push(a);
        }
        self.breached = breached;
        Judged {
            window_start: start,
            counts,
            baseline,
            alerts,
        }
    }

    /// Changelog records since the last call (empty value: delete).
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = std::mem::take(&mut self.mark_changes);
        self.marks.take_changes(b'q', &mut out);
        let mut ws = std::mem::take(&mut self.changed_windows);
        ws.sort_unstable();
        ws.dedup();
        for w in ws {
            let mut k = b"Qw".to_vec();
            k.extend_from_slice(&w.to_be_bytes());
            match self.open.get(&w) {
                Some(c) => {
                    let mut v = Vec::new();
                    c.encode(&mut v);
                    out.push((k, v));
                }
                None => out.push((k, Vec::new())),
            }
        }
        if std::mem::take(&mut self.state_changed) {
            let mut v = Vec::new();
            v.extend_from_slice(&self.next.unwrap_or(i64::MIN).to_be_bytes());
            v.push(u8::from(self.breached));
            v.extend_from_slice(&(self.history.len() as u32).to_be_bytes());
            for h in &self.history {
                v.extend_from_slice(&h.to_be_bytes());
            }
            out.push((STATE_KEY.to_vec(), v));
        }
        out
    }

    pub fn clear_changes(&mut self) {
        let _ = self.take_changes();
    }

    /// Whether `key` is a changelog record of the gate.
    pub fn owns_key(key: &[u8]) -> bool {
        key.first() == Some(&b'Q') || key.first() == Some(&b'q')
    }

    /// Applies one changelog record (written by [`QualityGate::take_changes`]).
    pub fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        if key.first() == Some(&b'q') {
            return self.marks.restore(key, value);
        }
        if key == STATE_KEY {
            let mut r = Reader(value);
            let next = r.i64()?;
            self.next = (next != i64::MIN).then_some(next);
            self.breached = r.take(1)?[0] != 0;
            let n = r.u32()?;
            self.history.clear();
            for _ in 0..n {
                self.history.push_back(r.u64()?);
            }
            return Ok(());
        }
        if key.starts_with(b"Qw") && key.len() == 10 {
            let w = i64::from_be_bytes(key[2..10].try_into().map_err(|_| "bad key")?);
            if value.is_empty() {
                self.open.remove(&w);
            } else {
                let (c, _) = Counts::decode(value)?;
                self.open.insert(w, c);
            }
            return Ok(());
        }
        Err("unknown quality changelog record".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: i64 = 60_000;

    fn cfg() -> GateConfig {
        GateConfig {
            window_ms: MIN,
            grace_ms: 0,
            unknown_rate: GateConfig::parse_unknown("brand=0.3,category=0.3,product=0.1,user=0.1")
                .unwrap(),
            reject_rate: 0.05,
            volume_low: 0.2,
            volume_high: 0.0,
            history: 10,
            min_history: 5,
            min_events: 20,
        }
    }

    fn counts(events: u64, unknown_brand: u64, rejects: &[(&str, u64)]) -> Counts {
        let mut c = Counts {
            events,
            ..Default::default()
        };
        c.unknown[0] = unknown_brand;
        for (r, n) in rejects {
            c.rejects.insert(r.to_string(), *n);
        }
        c
    }

    fn run(g: &mut QualityGate, windows: &[Counts]) -> Vec<Judged> {
        let mut out = Vec::new();
        for (i, c) in windows.iter().enumerate() {
            let start = i as i64 * MIN;
            g.add(start, c).unwrap();
            g.mark(0, start + MIN);
            out.extend(g.judge(0));
        }
        out
    }

    #[test]
    fn parse_unknown_names_fields_and_refuses_garbage() {
        let t = GateConfig::parse_unknown("brand=0.5, user_segment=0.1").unwrap();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[6], 0.1);
        assert_eq!(t[1], 0.0);
        assert!(GateConfig::parse_unknown("colour=0.1").is_err());
        assert!(GateConfig::parse_unknown("brand=2").is_err());
        assert!(GateConfig::parse_unknown("brand").is_err());
    }

    #[test]
    fn a_burst_of_unknown_brands_breaches_then_clears() {
        let mut g = QualityGate::new(cfg(), 1);
        let mut ws = vec![counts(100, 10, &[]); 6];
        ws.push(counts(100, 80, &[]));
        ws.push(counts(100, 10, &[]));
        let j = run(&mut g, &ws);
        assert_eq!(j.len(), 8);
        let ids: Vec<_> = j
            .iter()
            .flat_map(|j| j.alerts.iter())
            .map(|a| a.alert_id.clone())
            .collect();
        assert_eq!(
            ids,
            vec![
                format!("data_quality/field/brand/{}", 6 * MIN),
                format!("data_quality/gate/all/{}", 7 * MIN)
            ]
        );
        let a = &j[6].alerts[0];
        assert_eq!(a.alert_type, AlertType::DataQuality);
        assert!((a.observed - 0.8).abs() < 1e-9);
        assert_eq!(j[7].alerts[0].severity, Severity::Info);
    }

    #[test]
    fn small_windows_are_not_rate_judged_and_rejects_are_by_reason() {
        let mut g = QualityGate::new(cfg(), 1);
        // 5 events, all unknown: too few to judge.
        let j = run(&mut g, &[counts(5, 5, &[])]);
        assert!(j[0].alerts.is_empty());
        let mut g = QualityGate::new(cfg(), 1);
        let j = run(
            &mut g,
            &[counts(90, 0, &[("invalid_price", 9), ("bad_magic", 1)])],
        );
        let ids: Vec<_> = j[0].alerts.iter().map(|a| a.subject_id.as_str()).collect();
        assert_eq!(ids, vec!["invalid_price"], "9 of 100 > 5%, 1 of 100 is not");
    }

    #[test]
    fn a_volume_drop_and_gap_windows_breach_the_volume_gate() {
        let mut g = QualityGate::new(cfg(), 1);
        let mut ws = vec![counts(100, 0, &[]); 6];
        ws.push(counts(10, 0, &[]));
        let j = run(&mut g, &ws);
        assert_eq!(
            j[6].alerts[0].alert_id,
            format!("data_quality/volume/low/{}", 6 * MIN)
        );
        assert_eq!(j[6].baseline, Some(100.0));
        // Gaps count as zeros in the history: after 10 empty windows the mean is 0, no alert.
        let mut g = QualityGate::new(cfg(), 1);
        run(&mut g, &vec![counts(100, 0, &[]); 6]);
        g.add(20 * MIN, &counts(100, 0, &[])).unwrap();
        g.mark(0, 21 * MIN);
        let j = g.judge(0);
        assert_eq!(j[0].baseline, Some(0.0));
        assert!(j[0].alerts.is_empty());
    }

    #[test]
    fn a_window_waits_for_every_source_and_the_grace() {
        let mut c = cfg();
        c.grace_ms = 30_000;
        let mut g = QualityGate::new(c, 2);
        g.add(0, &counts(100, 90, &[])).unwrap();
        g.mark(0, 10 * MIN);
        assert!(g.judge(0).is_empty(), "source 1 has not reported");
        g.mark(1, MIN + 29_999);
        assert!(g.judge(0).is_empty(), "within the grace");
        g.mark(1, MIN + 30_000);
        assert_eq!(g.judge(0).len(), 1);
        assert_eq!(
            g.add(0, &counts(1, 0, &[])),
            Err(PartialTooLate { judged_up_to: MIN })
        );
    }

    #[test]
    fn partials_and_changelog_round_trip() {
        let c = counts(7, 3, &[("invalid_price", 2), ("bad_magic", 1)]);
        let b = encode_partial(-42, &c);
        assert_eq!(decode_partial(&b).unwrap(), (-42, c));
        assert!(decode_partial(&b[..b.len() - 1]).is_err());
        assert!(decode_partial(b"M123").is_err());
    }

    fn arb_counts() -> impl Strategy<Value = Counts> {
        (
            0u64..200,
            0u64..200,
            prop::collection::vec((0usize..3, 0u64..20), 0..3),
        )
            .prop_map(|(events, ub, rej)| {
                let mut c = counts(events, ub.min(events), &[]);
                for (r, n) in rej {
                    *c.rejects
                        .entry(["invalid_price", "bad_magic", "missing_field"][r].to_string())
                        .or_default() += n;
                }
                c
            })
    }

    proptest! {
        /// Partials of 3 sources, each source's in order but interleaved in any order, with the
        /// sources' marks after their partials, and a restore from the changelog at any point:
        /// the same windows are judged with the same alerts as when everything is summed first.
        #[test]
        fn judgement_does_not_depend_on_arrival_order_or_restores(
            parts in prop::collection::vec((0i32..3, 0i64..12, arb_counts()), 1..60),
            order in prop::collection::vec(0usize..3, 0..200),
            restore_at in 0usize..40,
        ) {
            // Reference: every window summed, judged in order.
            let mut sums: BTreeMap<i64, Counts> = BTreeMap::new();
            for (_, w, c) in &parts {
                sums.entry(*w * MIN).or_default().merge(c);
            }
            let mut r = QualityGate::new(cfg(), 1);
            for (w, c) in &sums {
                r.add(*w, c).unwrap();
            }
            r.mark(0, i64::MAX);
            let reference: Vec<(i64, Vec<String>)> = r
                .judge(0)
                .into_iter()
                .map(|j| (j.window_start, j.alerts.into_iter().map(|a| a.alert_id).collect()))
                .collect();

            // Per source: its partials in window order, then a final mark.
            let mut queues: Vec<Vec<(i64, Counts)>> = vec![Vec::new(); 3];
            for (s, w, c) in &parts {
                queues[*s as usize].push((*w * MIN, c.clone()));
            }
            for q in &mut queues {
                q.sort_by_key(|(w, _)| *w);
            }
            let mut g = QualityGate::new(cfg(), 3);
            let mut cl: Vec<Change> = Vec::new();
            let mut got = Vec::new();
            let mut pos = [0usize; 3];
            let mut picks = order.into_iter().chain((0..3).cycle().take(300));
            let mut steps = 0;
            while pos.iter().zip(&queues).any(|(p, q)| *p <= q.len()) {
                let s = picks
                    .next()
                    .unwrap_or_else(|| (0..3).find(|s| pos[*s] <= queues[*s].len()).unwrap_or(0));
                steps += 1;
                let q = &queues[s];
                if pos[s] < q.len() {
                    let (w, c) = &q[pos[s]];
                    g.add(*w, c).unwrap();
                    // A source's mark: the start of its partial (its later partials are not older).
                    g.mark(s as i32, *w);
                } else if pos[s] == q.len() {
                    g.mark(s as i32, i64::MAX);
                } else {
                    continue;
                }
                pos[s] += 1;
                got.extend(g.judge(0));
                cl.extend(g.take_changes());
                if steps == restore_at {
                    let mut fresh = QualityGate::new(cfg(), 3);
                    for (k, v) in &cl {
                        fresh.restore(k, v).unwrap();
                    }
                    fresh.clear_changes();
                    g = fresh;
                }
            }
            let got: Vec<(i64, Vec<String>)> = got
                .into_iter()
                .map(|j| (j.window_start, j.alerts.into_iter().map(|a| a.alert_id).collect()))
                .collect();
            prop_assert_eq!(got, reference);
        }

        /// A steady stream (rates below every threshold, volume within 20%) never alerts.
        #[test]
        fn steady_streams_never_alert(vols in prop::collection::vec(80u64..120, 1..80)) {
            let mut g = QualityGate::new(cfg(), 1);
            let ws: Vec<Counts> = vols.iter().map(|v| counts(*v, v / 5, &[("invalid_price", v / 50)])).collect();
            for j in run(&mut g, &ws) {
                prop_assert!(j.alerts.is_empty(), "{:?}", j.alerts);
            }
        }
    }
}
