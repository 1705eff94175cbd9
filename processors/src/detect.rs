//! The detector's rules: emerging trends, suspicious users, price anomalies.
//!
//! - [`Trends`]: per product and per category, the purchases of each final tumbling window of
//!   `kpi.windows` against that key's own last `history` windows (windows without a record count
//!   as zero). An alert is raised when the latest window reaches
//!   `max(min_volume, mean + k * max(stddev, sqrt(mean), 1), min_ratio * mean)` after at least
//!   `min_history` windows of history, on the rising edge only (one alert per burst, not one per
//!   window of a long trend). The `sqrt(mean)` floor is the Poisson noise of small counts: a
//!   quiet history of identical windows does not make every small wobble an alert.
//! - [`UserBursts`]: purchases per user in event-time tumbling windows (`window_ms`, default one
//!   minute) with a watermark and a grace; a window with more than `max_purchases` raises an alert
//!   once final, so the result does not depend on arrival order within the grace.
//! - [`price_anomaly`]: a purchase whose unit price is more than `tolerance` (relative) away
//!   from the catalog price, when the event is in the catalog's currency.
//!
//! Alert ids are built from the type, subject and window (`trend/category/kids.toys/<start>`),
//! so a replay of the same input raises the same ids and sinks upsert them idempotently.
//! The state of [`Trends`] and [`UserBursts`] has a changelog encoding (`take_changes` /
//! `restore`), like the sessions.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use cartstream_events::types::{
    Alert, AlertType, Dimension, EnrichedEvent, EventType, KpiWindow, Severity,
};

/// Trend rule settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrendConfig {
    /// Size of the tumbling windows to watch (others in `kpi.windows` are ignored).
    pub window_ms: i64,
    /// Windows of history kept per key (M).
    pub history: usize,
    /// Windows of history needed before a key can alert.
    pub min_history: usize,
    /// Standard deviations above the mean (k).
    pub k: f64,
    /// Fewest purchases in the window for an alert.
    pub min_volume: i64,
    /// Least ratio of the window to the baseline mean.
    pub min_ratio: f64,
}

impl Default for TrendConfig {
    fn default() -> Self {
        TrendConfig {
            window_ms: 60_000,
            history: 30,
            min_history: 10,
            k: 4.0,
            min_volume: 10,
            min_ratio: 3.0,
        }
    }
}

/// History of one key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrendState {
    /// Purchases of the previous windows, oldest first, at most `history`.
    pub history: VecDeque<i64>,
    /// Start of the latest window seen.
    pub last_start: i64,
    /// The latest window was above its threshold.
    pub alerting: bool,
}

/// Mean and population standard deviation.
pub fn mean_std(xs: &VecDeque<i64>) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<i64>() as f64 / n;
    let var = xs.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

impl TrendConfig {
    /// The purchases a window must reach, given the history's mean and standard deviation.
    pub fn threshold(&self, mean: f64, std: f64) -> f64 {
        let spread = std.max(mean.sqrt()).max(1.0);
        (self.min_volume as f64)
            .max(mean + self.k * spread)
            .max(self.min_ratio * mean)
    }
}

fn dimension_name(d: Dimension) -> &'static str {
    match d {
        Dimension::All => "all",
        Dimension::Category => "category",
        Dimension::Product => "product",
        Dimension::Brand => "brand",
        Dimension::EventType => "event_type",
    }
}

fn dimension_code(d: Dimension) -> u8 {
    match d {
        Dimension::All => 0,
        Dimension::Category => 1,
        Dimension::Product => 2,
        Dimension::Brand => 3,
        Dimension::EventType => 4,
    }
}

fn dimension_of(code: u8) -> Option<Dimension> {
    Some(match code {
        0 => Dimension::All,
        1 => Dimension::Category,
        2 => Dimension::Product,
        3 => Dimension::Brand,
        4 => Dimension::EventType,
        _ => return None,
    })
}

/// What [`Trends::observe`] made of a window.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// Not a final tumbling product/category window of the watched size.
    Ignored,
    /// Not newer than the key's latest window (a replayed or reordered record).
    Stale,
    /// Recorded; maybe an alert.
    Recorded(Option<Alert>),
}

/// Changelog records: key and value (empty = delete).
pub type Change = (Vec<u8>, Vec<u8>);

const TREND_KEY: u8 = b't';
const TREND_CLOCK_KEY: &[u8] = b"T";
const USER_KEY: u8 = b'u';
const USER_WATERMARK_KEY: &[u8] = b"W";

/// Trend detection over the windows of one `kpi.windows` partition.
#[derive(Debug)]
pub struct Trends {
    cfg: TrendConfig,
    keys: HashMap<(Dimension, String), TrendState>,
    /// Earliest window start seen: a key first seen later had zero purchases since then.
    clock_start: i64,
    changed: HashSet<(Dimension, String)>,
    clock_changed: bool,
}

impl Trends {
    pub fn new(cfg: TrendConfig) -> Self {
        Trends {
            cfg: TrendConfig {
                window_ms: cfg.window_ms.max(1),
                history: cfg.history.max(1),
                ..cfg
            },
            keys: HashMap::new(),
            clock_start: i64::MAX,
            changed: HashSet::new(),
            clock_changed: false,
        }
    }

    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Looks at one record of `kpi.windows`.
    pub fn observe(&mut self, w: &KpiWindow, now: i64) -> Seen {
        let size = self.cfg.window_ms;
        if !w.is_final
            || !matches!(w.dimension, Dimension::Product | Dimension::Category)
            || w.window_size_ms != size
            || w.window_slide_ms != size
        {
            return Seen::Ignored;
        }
        if w.window_start < self.clock_start {
            self.clock_start = w.window_start;
            self.clock_changed = true;
        }
        let key = (w.dimension, w.dimension_value.clone());
        let m = self.cfg.history;
        let clock_start = self.clock_start;
        let st = self.keys.entry(key.clone()).or_insert_with(|| TrendState {
            history: VecDeque::new(),
            // Zero windows since the detector's clock started (at most `history` of them).
            last_start: (w.window_start - size * m as i64).max(clock_start - size),
            alerting: false,
        });
        if w.window_start <= st.last_start && !st.history.is_empty() {
            return Seen::Stale;
        }
        // Windows between the previous one and this one had no record: zero purchases.
        let missing = ((w.window_start - st.last_start) / size - 1).clamp(0, m as i64);
        for _ in 0..missing {
            st.history.push_back(0);
        }
        while st.history.len() > m {
            st.history.pop_front();
        }
        let (mean, std) = mean_std(&st.history);
        let threshold = self.cfg.threshold(mean, std);
        let observed = w.purchases;
        let above = st.history.len() >= self.cfg.min_history && observed as f64 >= threshold;
        let alert = (above && !st.alerting).then(|| {
            let kind = dimension_name(w.dimension);
            Alert {
                alert_id: format!("trend/{kind}/{}/{}", w.dimension_value, w.window_start),
                alert_type: AlertType::Trend,
                severity: if observed as f64 >= 2.0 * threshold {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                subject_kind: kind.to_string(),
                subject_id: w.dimension_value.clone(),
                window_start: w.window_start,
                window_end: w.window_end,
                observed: observed as f64,
                baseline: mean,
                threshold,
                message: format!(
                    "{kind} {} had {observed} purchases in the window, baseline {mean:.1} over {} windows (threshold {threshold:.1})",
                    w.dimension_value,
                    st.history.len()
                ),
                detected_at: now,
            }
        });
        st.alerting = above;
        st.history.push_back(observed);
        while st.history.len() > m {
            st.history.pop_front();
        }
        st.last_start = w.window_start;
        self.changed.insert(key);
        Seen::Recorded(alert)
    }

    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::with_capacity(self.changed.len() + 1);
        for key in self.changed.drain() {
            let Some(st) = self.keys.get(&key) else {
                continue;
            };
            let mut k = vec![TREND_KEY, dimension_code(key.0)];
            k.extend_from_slice(key.1.as_bytes());
            let mut v = Vec::with_capacity(12 + 8 * st.history.len());
            v.extend_from_slice(&st.last_start.to_be_bytes());
            v.push(u8::from(st.alerting));
            v.extend_from_slice(&(st.history.len() as u16).to_be_bytes());
            for x in &st.history {
                v.extend_from_slice(&x.to_be_bytes());
            }
            out.push((k, v));
        }
        if self.clock_changed {
            self.clock_changed = false;
            out.push((
                TREND_CLOCK_KEY.to_vec(),
                self.clock_start.to_be_bytes().to_vec(),
            ));
        }
        out
    }

    /// Applies a changelog record; `Ok(false)` when the record is not a trend record.
    pub fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<bool, String> {
        if key == TREND_CLOCK_KEY {
            self.clock_start = i64::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "bad trend clock record".to_string())?,
            );
            return Ok(true);
        }
        if key.len() < 2 || key[0] != TREND_KEY {
            return Ok(false);
        }
        let dim = dimension_of(key[1]).ok_or("bad dimension in a trend key")?;
        let name = std::str::from_utf8(&key[2..])
            .map_err(|_| "trend key is not UTF-8".to_string())?
            .to_string();
        if value.is_empty() {
            self.keys.remove(&(dim, name));
            return Ok(true);
        }
        let bad = || "bad trend record".to_string();
        if value.len() < 11 {
            return Err(bad());
        }
        let last_start = i64::from_be_bytes(value[..8].try_into().map_err(|_| bad())?);
        let alerting = value[8] != 0;
        let n = u16::from_be_bytes(value[9..11].try_into().map_err(|_| bad())?) as usize;
        if value.len() != 11 + 8 * n {
            return Err(bad());
        }
        let history = value[11..]
            .chunks_exact(8)
            .map(|c| c.try_into().map(i64::from_be_bytes).map_err(|_| bad()))
            .collect::<Result<VecDeque<i64>, String>>()?;
        self.keys.insert(
            (dim, name),
            TrendState {
                history,
                last_start,
                alerting,
            },
        );
        Ok(true)
    }

    pub fn clear_changes(&mut self) {
        self.changed.clear();
        self.clock_changed = false;
    }
}

/// The part of a `kpi.windows` record the trend rule needs, forwarded by the detector to its
/// internal topic `<group>.by-subject` keyed by [`SubjectWindow::key`]: `kpi.windows` is keyed by
/// dimension/value/window/size/currency, so one subject's windows (and one window's currencies)
/// are spread over partitions; keyed by subject they meet on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectWindow {
    pub dimension: Dimension,
    pub value: String,
    pub window_start: i64,
    pub window_end: i64,
    pub currency: String,
    pub purchases: i64,
}

impl SubjectWindow {
    /// The record of a final tumbling product/category window of the watched size.
    pub fn of(w: &KpiWindow, cfg: &TrendConfig) -> Option<SubjectWindow> {
        let watched = w.is_final
            && matches!(w.dimension, Dimension::Product | Dimension::Category)
            && w.window_size_ms == cfg.window_ms
            && w.window_slide_ms == cfg.window_ms;
        watched.then(|| SubjectWindow {
            dimension: w.dimension,
            value: w.dimension_value.clone(),
            window_start: w.window_start,
            window_end: w.window_end,
            currency: w.currency.clone(),
            purchases: w.purchases,
        })
    }

    /// The repartition key: `<dimension>/<value>`.
    pub fn key(&self) -> String {
        format!("{}/{}", dimension_name(self.dimension), self.value)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(40 + self.value.len() + self.currency.len());
        v.push(dimension_code(self.dimension));
        v.extend_from_slice(&self.window_start.to_be_bytes());
        v.extend_from_slice(&self.window_end.to_be_bytes());
        v.extend_from_slice(&self.purchases.to_be_bytes());
        v.extend_from_slice(&(self.currency.len() as u16).to_be_bytes());
        v.extend_from_slice(self.currency.as_bytes());
        v.extend_from_slice(self.value.as_bytes());
        v
    }

    pub fn decode(b: &[u8]) -> Result<SubjectWindow, String> {
        let bad = || "malformed by-subject record".to_string();
        if b.len() < 27 {
            return Err(bad());
        }
        let int = |r: std::ops::Range<usize>| -> Result<i64, String> {
            Ok(i64::from_be_bytes(b[r].try_into().map_err(|_| bad())?))
        };
        let n = u16::from_be_bytes(b[25..27].try_into().map_err(|_| bad())?) as usize;
        if b.len() < 27 + n {
            return Err(bad());
        }
        let text = |x: &[u8]| String::from_utf8(x.to_vec()).map_err(|_| bad());
        Ok(SubjectWindow {
            dimension: dimension_of(b[0]).ok_or_else(bad)?,
            window_start: int(1..9)?,
            window_end: int(9..17)?,
            purchases: int(17..25)?,
            currency: text(&b[27..27 + n])?,
            value: text(&b[27 + n..])?,
        })
    }
}

/// Watermarks of the upstream partitions feeding one partition of a repartition topic.
///
/// Records forwarded from several upstream partitions interleave in whatever order the forwarding
/// instance consumed them (a partition catching up after a restart can be minutes of event time
/// ahead of another), so the newest time seen on the repartition partition is no watermark. Each
/// upstream partition's owner broadcasts instead a marker (its partition, its watermark) to every
/// repartition partition after each batch, behind the records it forwarded; a repartition
/// partition's watermark is the lowest mark once every upstream partition has reported. Marks only
/// grow (a restarted owner re-sends lower ones, ignored).
#[derive(Debug, Clone, Default)]
pub struct SourceMarks {
    n: usize,
    marks: BTreeMap<i32, i64>,
    changed: HashSet<i32>,
}

/// A marker record of a repartition topic: `M`, upstream partition, watermark.
pub fn encode_marker(source: i32, watermark: i64) -> Vec<u8> {
    let mut v = Vec::with_capacity(13);
    v.push(b'M');
    v.extend_from_slice(&source.to_be_bytes());
    v.extend_from_slice(&watermark.to_be_bytes());
    v
}

/// The (upstream partition, watermark) of a marker record; `None` when it is not one.
pub fn decode_marker(b: &[u8]) -> Option<(i32, i64)> {
    if b.len() != 13 || b[0] != b'M' {
        return None;
    }
    let p = i32::from_be_bytes(b[1..5].try_into().ok()?);
    let w = i64::from_be_bytes(b[5..13].try_into().ok()?);
    Some((p, w))
}

/// Key of marker records.
pub const MARKER_KEY: &[u8] = b"~marker";

impl SourceMarks {
    pub fn new(sources: usize) -> Self {
        SourceMarks {
            n: sources,
            ..Default::default()
        }
    }

    pub fn mark(&mut self, source: i32, watermark: i64) {
        let m = self.marks.entry(source).or_insert(i64::MIN);
        if watermark > *m {
            *m = watermark;
            self.changed.insert(source);
        }
    }

    /// The lowest mark, once every upstream partition has reported.
    pub fn low(&self) -> Option<i64> {
        (self.marks.len() >= self.n)
            .then(|| self.marks.values().copied().min())
            .flatten()
    }

    pub(crate) fn take_changes(&mut self, tag: u8, out: &mut Vec<Change>) {
        for p in self.changed.drain() {
            let mut k = vec![tag];
            k.extend_from_slice(&p.to_be_bytes());
            let v = self.marks.get(&p).copied().unwrap_or(i64::MIN);
            out.push((k, v.to_be_bytes().to_vec()));
        }
    }

    pub(crate) fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        let bad = || "bad source mark record".to_string();
        let p = i32::from_be_bytes(
            key.get(1..5)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        );
        let w = i64::from_be_bytes(value.try_into().map_err(|_| bad())?);
        self.marks.insert(p, w);
        Ok(())
    }
}

/// A by-subject record for a window already judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowTooLate {
    pub judged_up_to: i64,
}

const PENDING_KEY: u8 = b'p';

/// (window start, dimension code, value) of a window waiting to be judged.
type PendingKey = (i64, u8, String);
/// currency -> (window end, purchases)
type PerCurrency = BTreeMap<String, (i64, i64)>;
const STAGE_CLOCK_KEY: &[u8] = b"C";

/// Trend detection over one `<group>.by-subject` partition: the records of one window (one per
/// currency, from several `kpi.windows` partitions) are summed, and a window is judged once the
/// partition's clock (the newest window start seen) is `lag_windows` windows past it, so the
/// currencies of a window forwarded from different partitions have time to meet. Judging happens
/// in window order; a record for a window already judged is refused ([`WindowTooLate`]).
#[derive(Debug)]
pub struct TrendStage {
    trends: Trends,
    lag_windows: i64,
    clock: i64,
    judged_up_to: i64,
    pending: BTreeMap<PendingKey, PerCurrency>,
    changed: HashSet<(i64, u8, String)>,
    clock_changed: bool,
    /// With upstream markers: the clock is their lowest mark, not the newest window seen.
    sources: Option<SourceMarks>,
}

const TREND_MARK_KEY: u8 = b'S';

impl TrendStage {
    /// A stage whose clock follows the markers of `sources` upstream partitions
    /// ([`SourceMarks`]); records then do not move it.
    pub fn with_sources(cfg: TrendConfig, lag_windows: i64, sources: usize) -> Self {
        TrendStage {
            sources: Some(SourceMarks::new(sources)),
            ..TrendStage::new(cfg, lag_windows)
        }
    }

    /// Applies an upstream marker (the newest final window start of that partition).
    pub fn mark(&mut self, source: i32, clock: i64) {
        if let Some(s) = &mut self.sources {
            s.mark(source, clock);
            if let Some(low) = s.low() {
                self.advance_to(low);
            }
        }
    }

    pub fn new(cfg: TrendConfig, lag_windows: i64) -> Self {
        TrendStage {
            sources: None,
            trends: Trends::new(cfg),
            lag_windows: lag_windows.max(0),
            clock: i64::MIN,
            judged_up_to: i64::MIN,
            pending: BTreeMap::new(),
            changed: HashSet::new(),
            clock_changed: false,
        }
    }

    /// Newest window start seen (the stage's watermark); `i64::MIN` before any.
    pub fn clock(&self) -> i64 {
        self.clock
    }

    pub fn keys(&self) -> usize {
        self.trends.keys()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn add(&mut self, w: &SubjectWindow) -> Result<(), WindowTooLate> {
        if w.window_start <= self.judged_up_to {
            return Err(WindowTooLate {
                judged_up_to: self.judged_up_to,
            });
        }
        let key = (w.window_start, dimension_code(w.dimension), w.value.clone());
        self.pending
            .entry(key.clone())
            .or_default()
            .insert(w.currency.clone(), (w.window_end, w.purchases));
        self.changed.insert(key);
        if self.sources.is_none() {
            self.advance_to(w.window_start);
        }
        Ok(())
    }

    /// Moves the clock to at least `t` (idle partitions).
    pub fn advance_to(&mut self, t: i64) {
        if t > self.clock {
            self.clock = t;
            self.clock_changed = true;
        }
    }

    /// Judges every window the clock is far enough past, oldest first.
    pub fn judge(&mut self, now: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        if self.clock == i64::MIN {
            return out;
        }
        let size = self.trends.cfg.window_ms;
        let up_to = self.clock.saturating_sub(self.lag_windows * size);
        while let Some(((start, _, _), _)) = self.pending.first_key_value() {
            if *start > up_to {
                break;
            }
            let Some(((start, dim, value), per_currency)) = self.pending.pop_first() else {
                break;
            };
            self.changed.insert((start, dim, value.clone()));
            let Some(dimension) = dimension_of(dim) else {
                continue;
            };
            let end = per_currency
                .values()
                .map(|(e, _)| *e)
                .max()
                .unwrap_or(start + size);
            let purchases = per_currency.values().map(|(_, p)| *p).sum();
            let w = KpiWindow {
                window_start: start,
                window_end: end,
                window_size_ms: size,
                window_slide_ms: size,
                dimension,
                dimension_value: value,
                views: 0,
                carts: 0,
                removals: 0,
                purchases,
                units: 0,
                revenue: 0.0,
                currency: String::new(),
                avg_price: None,
                conversion_rate: None,
                distinct_users: 0,
                is_final: true,
                emitted_at: now,
            };
            if let Seen::Recorded(Some(a)) = self.trends.observe(&w, now) {
                out.push(a);
            }
        }
        if up_to > self.judged_up_to {
            self.judged_up_to = up_to;
            self.clock_changed = true;
        }
        out
    }

    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = self.trends.take_changes();
        if let Some(s) = &mut self.sources {
            s.take_changes(TREND_MARK_KEY, &mut out);
        }
        for key in self.changed.drain() {
            let mut k = vec![PENDING_KEY];
            k.extend_from_slice(&key.0.to_be_bytes());
            k.push(key.1);
            k.extend_from_slice(key.2.as_bytes());
            let v = match self.pending.get(&key) {
                None => Vec::new(),
                Some(m) => {
                    let mut v = Vec::new();
                    for (cur, (end, n)) in m {
                        v.extend_from_slice(&(cur.len() as u16).to_be_bytes());
                        v.extend_from_slice(cur.as_bytes());
                        v.extend_from_slice(&end.to_be_bytes());
                        v.extend_from_slice(&n.to_be_bytes());
                    }
                    v
                }
            };
            out.push((k, v));
        }
        if self.clock_changed {
            self.clock_changed = false;
            let mut v = self.clock.to_be_bytes().to_vec();
            v.extend_from_slice(&self.judged_up_to.to_be_bytes());
            out.push((STAGE_CLOCK_KEY.to_vec(), v));
        }
        out
    }

    /// Applies a changelog record; `Ok(false)` when it is not one of the trend stage's.
    pub fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<bool, String> {
        let bad = || "bad trend stage record".to_string();
        if key == STAGE_CLOCK_KEY {
            if value.len() != 16 {
                return Err(bad());
            }
            self.clock = i64::from_be_bytes(value[..8].try_into().map_err(|_| bad())?);
            self.judged_up_to = i64::from_be_bytes(value[8..].try_into().map_err(|_| bad())?);
            return Ok(true);
        }
        if key.first() == Some(&TREND_MARK_KEY) && key.len() == 5 {
            return match &mut self.sources {
                Some(s) => s.restore(key, value).map(|()| true),
                None => Ok(true),
            };
        }
        if key.first() != Some(&PENDING_KEY) {
            return self.trends.restore(key, value);
        }
        if key.len() < 10 {
            return Err(bad());
        }
        let start = i64::from_be_bytes(key[1..9].try_into().map_err(|_| bad())?);
        let name = String::from_utf8(key[10..].to_vec()).map_err(|_| bad())?;
        let k = (start, key[9], name);
        if value.is_empty() {
            self.pending.remove(&k);
            return Ok(true);
        }
        let mut m = BTreeMap::new();
        let mut rest = value;
        while !rest.is_empty() {
            if rest.len() < 2 {
                return Err(bad());
            }
            let n = u16::from_be_bytes(rest[..2].try_into().map_err(|_| bad())?) as usize;
            if rest.len() < 2 + n + 16 {
                return Err(bad());
            }
            let cur = String::from_utf8(rest[2..2 + n].to_vec()).map_err(|_| bad())?;
            let end = i64::from_be_bytes(rest[2 + n..10 + n].try_into().map_err(|_| bad())?);
            let p = i64::from_be_bytes(rest[10 + n..18 + n].try_into().map_err(|_| bad())?);
            m.insert(cur, (end, p));
            rest = &rest[18 + n..];
        }
        self.pending.insert(k, m);
        Ok(true)
    }

    pub fn clear_changes(&mut self) {
        self.trends.clear_changes();
        self.changed.clear();
        self.clock_changed = false;
    }
}

/// Suspicious-user rule settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserConfig {
    pub window_ms: i64,
    pub grace_ms: i64,
    /// More purchases than this in one window raise an alert.
    pub max_purchases: u32,
}

/// Purchases per user and window of one `<group>.by-user` partition.
#[derive(Debug)]
pub struct UserBursts {
    cfg: UserConfig,
    watermark: i64,
    counts: BTreeMap<(i64, i64), u32>,
    changed: HashSet<(i64, i64)>,
    watermark_changed: bool,
    /// With upstream markers: the watermark is their lowest mark, not the newest purchase seen.
    sources: Option<SourceMarks>,
}

const USER_MARK_KEY: u8 = b'M';

/// A purchase refused because it is more than the grace behind the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLate {
    pub lateness_ms: i64,
}

impl UserBursts {
    pub fn new(cfg: UserConfig) -> Self {
        UserBursts {
            cfg: UserConfig {
                window_ms: cfg.window_ms.max(1),
                grace_ms: cfg.grace_ms.max(0),
                ..cfg
            },
            watermark: i64::MIN,
            counts: BTreeMap::new(),
            changed: HashSet::new(),
            watermark_changed: false,
            sources: None,
        }
    }

    /// Windows whose watermark follows the markers of `sources` upstream partitions
    /// ([`SourceMarks`]); purchases then do not move it.
    pub fn with_sources(cfg: UserConfig, sources: usize) -> Self {
        UserBursts {
            sources: Some(SourceMarks::new(sources)),
            ..UserBursts::new(cfg)
        }
    }

    /// Applies an upstream marker.
    pub fn mark(&mut self, source: i32, watermark: i64) {
        if let Some(s) = &mut self.sources {
            s.mark(source, watermark);
            if let Some(low) = s.low() {
                self.advance_to(low);
            }
        }
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn open_windows(&self) -> usize {
        self.counts.len()
    }

    /// Counts a purchase of `user` at `t`. Refused when its window is already final.
    pub fn add(&mut self, user: i64, t: i64) -> Result<(), TooLate> {
        let start = t.div_euclid(self.cfg.window_ms) * self.cfg.window_ms;
        let end = start + self.cfg.window_ms;
        if self.watermark != i64::MIN && end.saturating_add(self.cfg.grace_ms) <= self.watermark {
            return Err(TooLate {
                lateness_ms: self.watermark - t,
            });
        }
        *self.counts.entry((start, user)).or_default() += 1;
        self.changed.insert((start, user));
        if self.sources.is_none() {
            self.advance_to(t);
        }
        Ok(())
    }

    pub fn advance_to(&mut self, t: i64) {
        if t > self.watermark {
            self.watermark = t;
            self.watermark_changed = true;
        }
    }

    /// Closes every final window; alerts for those above the limit.
    pub fn close(&mut self, now: i64) -> Vec<Alert> {
        let mut out = Vec::new();
        if self.watermark == i64::MIN {
            return out;
        }
        let size = self.cfg.window_ms;
        // Final: start + size + grace <= watermark.
        let last_final = self.watermark - self.cfg.grace_ms - size;
        while let Some((&(start, user), &count)) = self.counts.first_key_value() {
            if start > last_final {
                break;
            }
            self.counts.pop_first();
            self.changed.insert((start, user));
            if count > self.cfg.max_purchases {
                let limit = self.cfg.max_purchases;
                out.push(Alert {
                    alert_id: format!("suspicious_user/user/{user}/{start}"),
                    alert_type: AlertType::SuspiciousUser,
                    severity: if count > 2 * limit {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    subject_kind: "user".into(),
                    subject_id: user.to_string(),
                    window_start: start,
                    window_end: start + size,
                    observed: f64::from(count),
                    baseline: 0.0,
                    threshold: f64::from(limit),
                    message: format!(
                        "user {user} made {count} purchases within {} s (limit {limit})",
                        size / 1000
                    ),
                    detected_at: now,
                });
            }
        }
        out
    }

    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::with_capacity(self.changed.len() + 1);
        if let Some(s) = &mut self.sources {
            s.take_changes(USER_MARK_KEY, &mut out);
        }
        for (start, user) in self.changed.drain() {
            let mut k = vec![USER_KEY];
            k.extend_from_slice(&user.to_be_bytes());
            k.extend_from_slice(&start.to_be_bytes());
            let v = self
                .counts
                .get(&(start, user))
                .map(|c| c.to_be_bytes().to_vec())
                .unwrap_or_default();
            out.push((k, v));
        }
        if self.watermark_changed {
            self.watermark_changed = false;
            out.push((
                USER_WATERMARK_KEY.to_vec(),
                self.watermark.to_be_bytes().to_vec(),
            ));
        }
        out
    }

    /// Applies a changelog record; `Ok(false)` when the record is not a user record.
    pub fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<bool, String> {
        if key == USER_WATERMARK_KEY {
            self.watermark = i64::from_be_bytes(
                value
                    .try_into()
                    .map_err(|_| "bad user watermark record".to_string())?,
            );
            return Ok(true);
        }
        if key.len() == 5 && key[0] == USER_MARK_KEY {
            return match &mut self.sources {
                Some(s) => s.restore(key, value).map(|()| true),
                None => Ok(true),
            };
        }
        if key.len() != 17 || key[0] != USER_KEY {
            return Ok(false);
        }
        let bad = || "bad user record".to_string();
        let user = i64::from_be_bytes(key[1..9].try_into().map_err(|_| bad())?);
        let start = i64::from_be_bytes(key[9..17].try_into().map_err(|_| bad())?);
        if value.is_empty() {
            self.counts.remove(&(start, user));
        } else {
            let c = u32::from_be_bytes(value.try_into().map_err(|_| bad())?);
            self.counts.insert((start, user), c);
        }
        Ok(true)
    }

    pub fn clear_changes(&mut self) {
        self.changed.clear();
        self.watermark_changed = false;
    }
}

/// Price rule settings.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceConfig {
    /// Largest relative distance from the catalog price that is normal (0.5 = 50 %).
    pub tolerance: f64,
    /// Currency of the catalog prices; events in other currencies are not compared.
    pub catalog_currency: String,
}

/// What the price rule made of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum PriceCheck {
    /// Not a purchase, or no catalog price.
    NotApplicable,
    /// In another currency than the catalog's: cannot be compared.
    OtherCurrency,
    Normal,
    Anomaly(Alert),
}

/// Compares a purchase's unit price with its catalog price.
pub fn price_anomaly(e: &EnrichedEvent, cfg: &PriceConfig, now: i64) -> PriceCheck {
    let Some(catalog) = e.catalog_price.filter(|p| *p > 0.0) else {
        return PriceCheck::NotApplicable;
    };
    if e.event_type != EventType::Purchase {
        return PriceCheck::NotApplicable;
    }
    if !e.currency.eq_ignore_ascii_case(&cfg.catalog_currency) {
        return PriceCheck::OtherCurrency;
    }
    let distance = (e.price - catalog) / catalog;
    if distance.abs() <= cfg.tolerance {
        return PriceCheck::Normal;
    }
    let bound = if distance > 0.0 {
        catalog * (1.0 + cfg.tolerance)
    } else {
        catalog * (1.0 - cfg.tolerance)
    };
    PriceCheck::Anomaly(Alert {
        alert_id: format!("price_anomaly/product/{}/{}", e.product_id, e.event_id),
        alert_type: AlertType::PriceAnomaly,
        severity: if distance.abs() > 2.0 * cfg.tolerance {
            Severity::Critical
        } else {
            Severity::Warning
        },
        subject_kind: "product".into(),
        subject_id: e.product_id.to_string(),
        window_start: e.event_time,
        window_end: e.event_time,
        observed: e.price,
        baseline: catalog,
        threshold: bound,
        message: format!(
            "purchase {} of product {} at {:.2} {} is {:+.0}% from the catalog price {catalog:.2}",
            e.event_id,
            e.product_id,
            e.price,
            e.currency,
            distance * 100.0
        ),
        detected_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn win(dim: Dimension, value: &str, minute: i64, purchases: i64) -> KpiWindow {
        KpiWindow {
            window_start: minute * 60_000,
            window_end: (minute + 1) * 60_000,
            window_size_ms: 60_000,
            window_slide_ms: 60_000,
            dimension: dim,
            dimension_value: value.into(),
            views: purchases * 10,
            carts: 0,
            removals: 0,
            purchases,
            units: purchases,
            revenue: 0.0,
            currency: "USD".into(),
            avg_price: None,
            conversion_rate: None,
            distinct_users: 1,
            is_final: true,
            emitted_at: 0,
        }
    }

    fn alerts(t: &mut Trends, ws: &[KpiWindow]) -> Vec<Alert> {
        ws.iter()
            .filter_map(|w| match t.observe(w, 0) {
                Seen::Recorded(a) => a,
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_burst_alerts_once_on_its_rising_edge() {
        let mut t = Trends::new(TrendConfig::default());
        let mut ws: Vec<KpiWindow> = (0..20)
            .map(|m| win(Dimension::Category, "kids.toys", m, 3 + m % 3))
            .collect();
        ws.extend((20..25).map(|m| win(Dimension::Category, "kids.toys", m, 40)));
        ws.push(win(Dimension::Category, "kids.toys", 25, 3));
        let a = alerts(&mut t, &ws);
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].alert_id, "trend/category/kids.toys/1200000");
        assert_eq!(a[0].observed, 40.0);
        assert!((a[0].baseline - 3.95).abs() < 0.01);
        assert!(a[0].threshold < 40.0);
        // Replays change nothing: the same window is stale.
        assert_eq!(t.observe(&ws[20], 0), Seen::Stale);
    }

    #[test]
    fn small_volumes_and_short_histories_do_not_alert() {
        let mut t = Trends::new(TrendConfig::default());
        // From 0 to 9 purchases: a big ratio but below the minimum volume.
        let mut ws: Vec<KpiWindow> = (0..15)
            .map(|m| win(Dimension::Product, "7", m, 0))
            .collect();
        ws.push(win(Dimension::Product, "7", 15, 9));
        assert!(alerts(&mut t, &ws).is_empty());
        // A key seen for the first time right when the detector starts: no history yet.
        let mut t = Trends::new(TrendConfig::default());
        assert!(alerts(&mut t, &[win(Dimension::Product, "8", 0, 500)]).is_empty());
        // Non-final, hopping and other dimensions are ignored.
        let mut w = win(Dimension::Brand, "acme", 0, 1);
        assert_eq!(t.observe(&w, 0), Seen::Ignored);
        w.dimension = Dimension::Product;
        w.is_final = false;
        assert_eq!(t.observe(&w, 0), Seen::Ignored);
        w.is_final = true;
        w.window_size_ms = 600_000;
        assert_eq!(t.observe(&w, 0), Seen::Ignored);
    }

    #[test]
    fn missing_windows_count_as_zero_and_new_keys_start_from_the_clock() {
        let mut t = Trends::new(TrendConfig::default());
        // The detector's clock starts at minute 0 with another key.
        alerts(&mut t, &[win(Dimension::Product, "1", 0, 1)]);
        // Product 2 first appears at minute 20 with a burst: 20 zero windows before it.
        let a = alerts(&mut t, &[win(Dimension::Product, "2", 20, 15)]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].baseline, 0.0);
        assert_eq!(a[0].threshold, 10.0);
    }

    #[test]
    fn trend_state_round_trips_through_the_changelog() {
        let mut t = Trends::new(TrendConfig::default());
        let ws: Vec<KpiWindow> = (0..12)
            .map(|m| win(Dimension::Category, "a.b", m, m))
            .collect();
        alerts(&mut t, &ws);
        let mut r = Trends::new(TrendConfig::default());
        for (k, v) in t.take_changes() {
            assert!(r.restore(&k, &v).unwrap());
        }
        assert_eq!(r.keys, t.keys);
        assert_eq!(r.clock_start, t.clock_start);
        assert!(!r.restore(b"u123", b"").unwrap());
        assert!(r.restore(&[TREND_KEY, 1, b'x'], &[1, 2]).is_err());
    }

    fn subject(value: &str, minute: i64, currency: &str, purchases: i64) -> SubjectWindow {
        SubjectWindow {
            dimension: Dimension::Category,
            value: value.into(),
            window_start: minute * 60_000,
            window_end: (minute + 1) * 60_000,
            currency: currency.into(),
            purchases,
        }
    }

    #[test]
    fn marker_watermarks_are_the_lowest_once_every_source_reported() {
        let cfg = UserConfig {
            window_ms: 60_000,
            grace_ms: 0,
            max_purchases: 1,
        };
        let mut u = UserBursts::with_sources(cfg, 2);
        u.add(1, 10_000).unwrap();
        u.add(1, 20_000).unwrap();
        // A purchase far ahead does not close anything by itself.
        u.add(2, 500_000).unwrap();
        assert_eq!(u.watermark(), i64::MIN);
        u.mark(0, 200_000);
        assert!(u.close(0).is_empty(), "source 1 has not reported");
        u.mark(1, 30_000);
        u.mark(1, 10);
        assert_eq!(u.watermark(), 30_000);
        u.mark(1, 90_000);
        let a = u.close(0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].observed, 2.0);
        let mut r = UserBursts::with_sources(cfg, 2);
        for (k, v) in u.take_changes() {
            assert!(r.restore(&k, &v).unwrap());
        }
        r.mark(0, 0);
        r.mark(1, 0);
        assert_eq!(r.sources.as_ref().unwrap().low(), Some(90_000));
        assert_eq!(decode_marker(&encode_marker(3, -5)), Some((3, -5)));
        assert_eq!(decode_marker(b"x"), None);
    }

    #[test]
    fn by_subject_records_round_trip() {
        let w = subject("kids.toys", 3, "EUR", 17);
        assert_eq!(SubjectWindow::decode(&w.encode()), Ok(w.clone()));
        assert_eq!(w.key(), "category/kids.toys");
        let b = w.encode();
        for cut in 0..27 {
            assert!(SubjectWindow::decode(&b[..cut]).is_err());
        }
        let mut k = win(Dimension::Product, "1", 0, 1);
        assert!(SubjectWindow::of(&k, &TrendConfig::default()).is_some());
        k.is_final = false;
        assert!(SubjectWindow::of(&k, &TrendConfig::default()).is_none());
    }

    #[test]
    fn currencies_of_a_window_are_summed_and_judged_after_the_lag() {
        let mut st = TrendStage::new(TrendConfig::default(), 2);
        for m in 0..20 {
            st.add(&subject("c", m, "USD", 2)).unwrap();
            st.add(&subject("c", m, "EUR", 1)).unwrap();
        }
        // The burst is split over three currencies: 6 + 5 + 4 = 15.
        st.add(&subject("c", 20, "USD", 6)).unwrap();
        st.add(&subject("c", 20, "EUR", 5)).unwrap();
        assert!(st.judge(0).is_empty());
        st.add(&subject("c", 20, "GBP", 4)).unwrap();
        st.add(&subject("other", 21, "USD", 1)).unwrap();
        assert!(
            st.judge(0).is_empty(),
            "minute 20 waits for two more windows"
        );
        st.add(&subject("other", 22, "USD", 1)).unwrap();
        let a = st.judge(0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].observed, 15.0);
        assert_eq!(a[0].baseline, 3.0);
        assert_eq!(
            st.add(&subject("c", 20, "JPY", 1)),
            Err(WindowTooLate {
                judged_up_to: 20 * 60_000
            })
        );
    }

    proptest! {
        /// Judged results do not depend on the order records arrive in within the lag, and a
        /// restore from the changelog mid-way changes nothing.
        #[test]
        fn trend_stage_is_order_independent_within_the_lag_and_restorable(
            counts in prop::collection::vec((0i64..3, 0i64..30), 40..80),
            jitter in prop::collection::vec(0i64..2, 80),
            stop in 0usize..240,
        ) {
            let currencies = ["USD", "EUR", "GBP"];
            let mut recs = Vec::new();
            for (m, (burst, base)) in counts.iter().enumerate() {
                for (i, c) in currencies.iter().enumerate() {
                    let n = if m > 30 && *burst == 2 { base * 3 } else { base / 3 + i as i64 };
                    recs.push((m as i64, subject("c", m as i64, c, n)));
                }
            }
            let run = |order: &[(i64, SubjectWindow)], stop: usize| {
                let mut st = TrendStage::new(TrendConfig::default(), 2);
                let mut log: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
                let mut alerts = Vec::new();
                for (i, (_, w)) in order.iter().enumerate() {
                    if i == stop {
                        let mut r = TrendStage::new(TrendConfig::default(), 2);
                        for (k, v) in &log { r.restore(k, v).unwrap(); }
                        st = r;
                    }
                    st.add(w).unwrap();
                    alerts.extend(st.judge(0));
                    log.extend(st.take_changes());
                }
                st.advance_to(i64::MAX / 4);
                alerts.extend(st.judge(0));
                alerts.into_iter().map(|a| (a.alert_id, a.observed as i64)).collect::<Vec<_>>()
            };
            let in_order = run(&recs, usize::MAX);
            // Shuffle within one window: each record moves back by at most one window.
            let mut shuffled = recs.clone();
            shuffled.sort_by_key(|(m, w)| (m + jitter[*m as usize % jitter.len()], w.currency.clone()));
            prop_assert_eq!(run(&shuffled, stop), in_order);
        }
    }

    #[test]
    fn users_above_the_limit_in_a_window_alert_when_it_closes() {
        let cfg = UserConfig {
            window_ms: 60_000,
            grace_ms: 10_000,
            max_purchases: 3,
        };
        let mut u = UserBursts::new(cfg);
        for i in 0..4 {
            u.add(42, 1_000 + i * 1000).unwrap();
        }
        for i in 0..3 {
            u.add(7, 2_000 + i).unwrap();
        }
        assert!(u.close(0).is_empty());
        u.advance_to(69_999);
        assert!(u.close(0).is_empty());
        u.advance_to(70_000);
        let a = u.close(0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].subject_id, "42");
        assert_eq!(a[0].alert_id, "suspicious_user/user/42/0");
        assert_eq!(u.open_windows(), 0);
        assert_eq!(
            u.add(42, 59_999),
            Err(TooLate {
                lateness_ms: 10_001
            })
        );
        assert!(u.add(42, 60_000).is_ok());
    }

    #[test]
    fn prices_far_from_the_catalog_alert() {
        let cfg = PriceConfig {
            tolerance: 0.5,
            catalog_currency: "USD".into(),
        };
        let mut e = EnrichedEvent {
            event_id: "e1".into(),
            event_time: 5,
            event_type: EventType::Purchase,
            product_id: 9,
            category_id: 1,
            category_code: "c".into(),
            brand: "b".into(),
            price: 10.0,
            currency: "USD".into(),
            quantity: 1,
            user_id: 1,
            user_session: "s".into(),
            channel: None,
            source_system: "t".into(),
            product_known: true,
            product_name: "p".into(),
            catalog_price: Some(10.0),
            user_known: true,
            user_country: "DE".into(),
            user_device: "d".into(),
            user_segment: "s".into(),
        };
        assert_eq!(price_anomaly(&e, &cfg, 0), PriceCheck::Normal);
        e.price = 15.0;
        assert_eq!(price_anomaly(&e, &cfg, 0), PriceCheck::Normal);
        e.price = 1.0;
        let PriceCheck::Anomaly(a) = price_anomaly(&e, &cfg, 0) else {
            panic!("expected an anomaly");
        };
        assert_eq!(a.alert_id, "price_anomaly/product/9/e1");
        assert_eq!((a.observed, a.baseline, a.threshold), (1.0, 10.0, 5.0));
        assert_eq!(a.severity, Severity::Warning);
        e.currency = "EUR".into();
        assert_eq!(price_anomaly(&e, &cfg, 0), PriceCheck::OtherCurrency);
        e.event_type = EventType::View;
        assert_eq!(price_anomaly(&e, &cfg, 0), PriceCheck::NotApplicable);
    }

    proptest! {
        /// Purchases counted per user window do not depend on arrival order within the grace,
        /// and restoring from the changelog mid-way changes nothing.
        #[test]
        fn user_windows_are_order_independent_and_restorable(
            spec in prop::collection::vec((0i64..4, 0i64..300_000, 0i64..=5_000), 1..200),
            stop in 0usize..200,
        ) {
            let cfg = UserConfig { window_ms: 60_000, grace_ms: 5_000, max_purchases: 2 };
            let mut expected: BTreeMap<(i64, i64), u32> = BTreeMap::new();
            for (u, t, _) in &spec {
                *expected.entry((t.div_euclid(60_000) * 60_000, *u)).or_default() += 1;
            }
            let mut want: Vec<String> = expected.iter().filter(|(_, c)| **c > 2)
                .map(|((s, u), _)| format!("suspicious_user/user/{u}/{s}")).collect();
            want.sort();
            let mut arrival = spec.clone();
            arrival.sort_by_key(|(u, t, j)| (t + j, *u));
            let stop = stop.min(arrival.len());
            let mut a = UserBursts::new(cfg);
            let mut got = Vec::new();
            let mut log: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for (u, t, _) in &arrival[..stop] {
                prop_assert!(a.add(*u, *t).is_ok());
                got.extend(a.close(0));
                log.extend(a.take_changes());
            }
            let mut b = UserBursts::new(cfg);
            for (k, v) in &log { prop_assert!(b.restore(k, v).unwrap()); }
            for (u, t, _) in &arrival[stop..] {
                prop_assert!(b.add(*u, *t).is_ok());
                got.extend(b.close(0));
            }
            b.advance_to(i64::MAX / 2);
            got.extend(b.close(0));
            let mut ids: Vec<String> = got.into_iter().map(|a| a.alert_id).collect();
            ids.sort();
            prop_assert_eq!(ids, want);
        }

        /// Steady Poisson-like noise around a stable mean raises no trend alert.
        #[test]
        fn steady_noise_does_not_alert(seed in 0u64..1000, mean in 0u32..40) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut t = Trends::new(TrendConfig::default());
            let ws: Vec<KpiWindow> = (0..60).map(|m| {
                // Binomial(4 * mean, 1/4): mean `mean`, a bit less spread than Poisson.
                let n = (0..4 * mean).filter(|_| rng.random_bool(0.25)).count() as i64;
                win(Dimension::Category, "c", m, n)
            }).collect();
            prop_assert!(alerts(&mut t, &ws).is_empty());
        }
    }
}
