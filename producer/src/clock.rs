//! Time: formatting and parsing event times, the hour-of-day curve, and pacing.
//!
//! Everything here is pure: the caller passes the times. Formatting is hand-written because it
//! runs once per event on the hot path (chrono's `format` parses its pattern on every call).

/// Milliseconds per minute, hour and day.
pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 86_400_000;

pub use cartstream_events::time::{civil_from_days, days_from_civil};

fn push_digits(out: &mut String, v: u32, width: usize) {
    let mut buf = [b'0'; 10];
    let mut v = v;
    for i in (0..width).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    // Only ASCII digits were written.
    out.extend(buf[..width].iter().map(|b| *b as char));
}

/// Appends `ms` (UTC epoch milliseconds) as RFC 3339 with milliseconds, e.g.
/// `2026-11-24T10:00:00.000Z`. Years outside 0..=9999 are written as the millisecond number,
/// which the cleaner also accepts.
pub fn format_rfc3339_into(ms: i64, out: &mut String) {
    let days = ms.div_euclid(DAY_MS);
    let in_day = ms.rem_euclid(DAY_MS);
    let (y, mo, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        out.push_str(&ms.to_string());
        return;
    }
    push_digits(out, y as u32, 4);
    out.push('-');
    push_digits(out, mo, 2);
    out.push('-');
    push_digits(out, d, 2);
    out.push('T');
    let secs = (in_day / 1000) as u32;
    push_digits(out, secs / 3600, 2);
    out.push(':');
    push_digits(out, secs / 60 % 60, 2);
    out.push(':');
    push_digits(out, secs % 60, 2);
    out.push('.');
    push_digits(out, (in_day % 1000) as u32, 3);
    out.push('Z');
}

pub fn format_rfc3339(ms: i64) -> String {
    let mut s = String::with_capacity(24);
    format_rfc3339_into(ms, &mut s);
    s
}

/// REES46 style, second precision: `2019-10-01 00:00:04 UTC`.
pub fn format_rees46(ms: i64) -> String {
    let mut s = format_rfc3339(ms);
    if s.len() == 24 {
        s.truncate(19);
        s.replace_range(10..11, " ");
        s.push_str(" UTC");
    }
    s
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u32, |a, d| a * 10 + u32::from(d - b'0')))
}

/// Fast path for `YYYY-MM-DD[ T]HH:MM:SS[.fff][ UTC|Z]`, the shapes of REES46 and of our own
/// output. `None` means "not this shape", not "invalid".
fn parse_fixed(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (h, mi, se) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let mut m = 0i64;
        for (i, c) in frac[..n].iter().enumerate().take(3) {
            m += i64::from(c - b'0') * [100, 10, 1][i];
        }
        millis = m;
        rest = &frac[n..];
    }
    if !(rest.is_empty() || rest == b"Z" || rest == b" UTC") {
        return None;
    }
    // Day-of-month overflow (Feb 30) would silently roll over: check it round-trips.
    let days = days_from_civil(i64::from(y), mo, d);
    if civil_from_days(days) != (i64::from(y), mo, d) {
        return None;
    }
    Some(days * DAY_MS + i64::from(h * 3600 + mi * 60 + se) * 1000 + millis)
}

/// Parses the event time formats the cleaner accepts: `YYYY-MM-DD HH:MM:SS[.fff] UTC`, RFC 3339
/// with any offset, `YYYY-MM-DD HH:MM:SS` (UTC), or epoch milliseconds.
pub fn parse_event_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    if let Some(ms) = parse_fixed(s) {
        return Some(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    let naive = s.strip_suffix(" UTC").unwrap_or(s);
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(naive, fmt) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    None
}

/// A point in time given on the command line: `now`, RFC 3339, `YYYY-MM-DD[ HH:MM:SS]` (UTC)
/// or epoch milliseconds.
pub fn parse_instant(s: &str, now_ms: i64) -> Result<i64, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Some(ms) = parse_event_time(t) {
        return Ok(ms);
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map(|x| x.and_utc().timestamp_millis())
            .unwrap_or_default());
    }
    Err(format!(
        "{s:?} is not a time (use now, 2026-11-24T10:00:00Z, 2026-11-24 or epoch milliseconds)"
    ))
}

/// A duration such as `90`, `90s`, `15m`, `2h`, `1d` or `250ms`, in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.');
    let (num, unit) = match split {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 90s, 15m, 2h)"))?;
    let factor = match unit.trim() {
        "ms" => 1.0,
        "s" | "" => 1000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        u => {
            return Err(format!(
                "unknown duration unit {u:?} in {s:?} (ms, s, m, h, d)"
            ))
        }
    };
    if !(n.is_finite() && n >= 0.0) {
        return Err(format!("{s:?} is not a non-negative duration"));
    }
    Ok((n * factor).round() as i64)
}

/// Relative traffic by hour of day (UTC), mean 1.0: quiet nights, a lunch bump, an evening peak,
/// the usual shape of a web shop's day.
const HOURLY: [f64; 24] = [
    0.45, 0.30, 0.22, 0.18, 0.17, 0.20, 0.32, 0.55, 0.80, 1.00, 1.10, 1.20, //
    1.30, 1.25, 1.15, 1.10, 1.15, 1.30, 1.50, 1.70, 1.80, 1.65, 1.25, 0.80,
];

/// The hour-of-day factor at `ms`, interpolated between hour midpoints so that the rate has no
/// steps. Averages 1.0 over a day.
pub fn seasonality(ms: i64) -> f64 {
    let mean: f64 = HOURLY.iter().sum::<f64>() / 24.0;
    let h = (ms.rem_euclid(DAY_MS) as f64 / HOUR_MS as f64 - 0.5).rem_euclid(24.0);
    let i = h.floor() as usize % 24;
    let f = h - h.floor();
    (HOURLY[i] * (1.0 - f) + HOURLY[(i + 1) % 24] * f) / mean
}

/// Maps event times to wall-clock offsets at a speed factor: the event at `t` is due
/// `(t - first) / speed` after the first one. Gaps longer than `max_gap_ms` are shortened to it
/// (a night without traffic does not stall a replay); times that go backwards are due at once.
#[derive(Debug, Clone)]
pub struct Pacer {
    speed: f64,
    max_gap_ms: Option<i64>,
    first: Option<i64>,
    last: i64,
    skipped_ms: i64,
}

impl Pacer {
    /// `speed` 0 (or below, or not finite) means as fast as possible: nothing is ever due later.
    pub fn new(speed: f64, max_gap_ms: Option<i64>) -> Self {
        Pacer {
            speed: if speed.is_finite() && speed > 0.0 {
                speed
            } else {
                0.0
            },
            max_gap_ms,
            first: None,
            last: i64::MIN,
            skipped_ms: 0,
        }
    }

    pub fn is_unpaced(&self) -> bool {
        self.speed == 0.0
    }

    /// Wall-clock offset from the start (seconds) at which an event of time `t` is due; `None`
    /// when unpaced or `t` unknown.
    pub fn due_secs(&mut self, t: Option<i64>) -> Option<f64> {
        if self.speed == 0.0 {
            return None;
        }
        let t = t?;
        let first = *self.first.get_or_insert(t);
        if self.last != i64::MIN {
            if let Some(cap) = self.max_gap_ms {
                let gap = t - self.last;
                if gap > cap {
                    self.skipped_ms += gap - cap;
                }
            }
        }
        self.last = self.last.max(t);
        let offset = (t - first - self.skipped_ms).max(0);
        Some(offset as f64 / 1000.0 / self.speed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_and_parses_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_569_888_004_123),
            "2019-10-01T00:00:04.123Z"
        );
        assert_eq!(format_rees46(1_569_888_004_123), "2019-10-01 00:00:04 UTC");
        assert_eq!(
            parse_event_time("2019-10-01 00:00:04 UTC"),
            Some(1_569_888_004_000)
        );
        assert_eq!(
            parse_event_time("2019-10-01T02:00:04+02:00"),
            Some(1_569_888_004_000)
        );
        assert_eq!(parse_event_time("1569888004000"), Some(1_569_888_004_000));
        assert_eq!(parse_event_time("2019-02-30 00:00:00 UTC"), None);
        assert_eq!(parse_event_time("yesterday"), None);
        assert_eq!(parse_event_time(""), None);
    }

    #[test]
    fn durations_and_instants_parse() {
        assert_eq!(parse_duration_ms("90"), Ok(90_000));
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert!(parse_duration_ms("5 parsecs").is_err());
        assert_eq!(parse_instant("now", 7), Ok(7));
        assert_eq!(parse_instant("1970-01-02", 0), Ok(DAY_MS));
        assert!(parse_instant("soon", 0).is_err());
    }

    #[test]
    fn seasonality_has_mean_one_and_an_evening_peak() {
        let samples: Vec<f64> = (0..24 * 60).map(|m| seasonality(m * MINUTE_MS)).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!(seasonality(20 * HOUR_MS) > 1.5 * seasonality(12 * HOUR_MS) / 1.3);
        assert!(seasonality(4 * HOUR_MS) < 0.3);
    }

    #[test]
    fn pacer_preserves_gaps_caps_long_ones_and_never_waits_for_the_past() {
        let mut p = Pacer::new(2.0, Some(10_000));
        assert_eq!(p.due_secs(Some(1_000)), Some(0.0));
        assert_eq!(p.due_secs(Some(5_000)), Some(2.0));
        assert_eq!(p.due_secs(None), None);
        // 100 s gap capped to 10 s.
        assert_eq!(p.due_secs(Some(105_000)), Some(7.0));
        // Backwards: due as of its own offset, which is already past.
        assert!(p.due_secs(Some(2_000)).unwrap() < 7.0);
        assert!(Pacer::new(0.0, None).due_secs(Some(5)).is_none());
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(ms in -30_000_000_000_000i64..250_000_000_000_000i64) {
            let s = format_rfc3339(ms);
            prop_assert_eq!(parse_event_time(&s), Some(ms));
            let c = chrono::DateTime::from_timestamp_millis(ms).unwrap();
            prop_assert_eq!(s, c.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }
    }
}
