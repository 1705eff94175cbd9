//! Fault injection: what a real source does wrong, at chosen ratios.
//!
//! An [`Injector`] takes the good events in the order they happen and says what to send:
//! - **duplicates**: with probability `duplicate_ratio` per good event, the same event (same
//!   `event_id`, same content) is sent a second time — right after the original (a producer
//!   retry), or, for a `duplicate_far_share` of them, only once the stream's event time has moved
//!   on by a delay drawn from `duplicate_far_delay` (a redelivery much later).
//! - **late events**: with probability `late_ratio`, a good event is held back and sent once the
//!   stream's event time has passed its own by a delay drawn from `late_delay`: it arrives late
//!   and out of order, with its true event time.
//! - **malformed records**: with probability `malformed_ratio` per good event, one extra record
//!   of a kind drawn uniformly from `malformed_kinds` is sent after it (see [`Malformed`]). It has
//!   its own `event_id`, so it never shadows a good event.
//!
//! Ratios are per good event, so with `n` good events one expects `n × ratio` of each fault; the
//! draws are independent Bernoulli trials from the seed. The stream's event time is the latest
//! event time of the good events pushed so far. Held records are released when it passes their
//! release time, and [`Injector::finish`] releases the rest in release order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use cartstream_events::types::RawEvent;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A kind of malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Malformed {
    /// Random bytes without the Confluent framing.
    GarbageBytes,
    /// A well-framed record whose schema id the registry does not know.
    UnknownSchemaId,
    /// `user_session` is null.
    MissingSession,
    /// `event_id` is empty.
    EmptyEventId,
    /// `price` is 0.
    ZeroPrice,
    /// `price` is below 0.
    NegativePrice,
    /// `event_type` outside the funnel vocabulary.
    UnknownEventType,
    /// `event_time` a year after it was sent.
    FutureTimestamp,
}

impl Malformed {
    pub const ALL: [Malformed; 8] = [
        Malformed::GarbageBytes,
        Malformed::UnknownSchemaId,
        Malformed::MissingSession,
        Malformed::EmptyEventId,
        Malformed::ZeroPrice,
        Malformed::NegativePrice,
        Malformed::UnknownEventType,
        Malformed::FutureTimestamp,
    ];

    /// Stable name (metric label, ground-truth key).
    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::GarbageBytes => "garbage_bytes",
            Malformed::UnknownSchemaId => "unknown_schema_id",
            Malformed::MissingSession => "missing_session",
            Malformed::EmptyEventId => "empty_event_id",
            Malformed::ZeroPrice => "zero_price",
            Malformed::NegativePrice => "negative_price",
            Malformed::UnknownEventType => "unknown_event_type",
            Malformed::FutureTimestamp => "future_timestamp",
        }
    }

    /// The cleaner's rejection code for this kind, or the decoder's error code for records that
    /// do not decode.
    pub fn expected_rejection(self) -> &'static str {
        match self {
            Malformed::GarbageBytes => "bad_magic",
            Malformed::UnknownSchemaId => "unknown_schema_id",
            Malformed::MissingSession => "missing_user_session",
            Malformed::EmptyEventId => "missing_event_id",
            Malformed::ZeroPrice | Malformed::NegativePrice => "invalid_price",
            Malformed::UnknownEventType => "unknown_event_type",
            Malformed::FutureTimestamp => "future_event_time",
        }
    }
}

/// A delay distribution, in milliseconds of event time.
#[derive(Debug, Clone, PartialEq)]
pub enum Delay {
    Fixed(i64),
    Uniform(i64, i64),
    Exponential(f64),
}

impl Delay {
    /// `30s`, `10s..5m` (uniform) or `exp:2m` (exponential with that mean).
    pub fn parse(s: &str) -> Result<Delay, String> {
        use crate::clock::parse_duration_ms;
        let s = s.trim();
        if let Some(mean) = s.strip_prefix("exp:") {
            return Ok(Delay::Exponential(parse_duration_ms(mean)? as f64));
        }
        if let Some((a, b)) = s.split_once("..") {
            let (a, b) = (parse_duration_ms(a)?, parse_duration_ms(b)?);
            if b < a {
                return Err(format!("{s:?}: the upper bound is below the lower one"));
            }
            return Ok(Delay::Uniform(a, b));
        }
        Ok(Delay::Fixed(parse_duration_ms(s)?))
    }

    pub fn sample(&self, rng: &mut impl Rng) -> i64 {
        match *self {
            Delay::Fixed(d) => d,
            Delay::Uniform(a, b) if b > a => rng.random_range(a..=b),
            Delay::Uniform(a, _) => a,
            Delay::Exponential(mean) => {
                let u: f64 = rng.random();
                (-(1.0 - u).ln() * mean) as i64
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct FaultConfig {
    pub seed: u64,
    pub duplicate_ratio: f64,
    /// Share of duplicates sent much later instead of right away.
    pub duplicate_far_share: f64,
    pub duplicate_far_delay: Delay,
    pub late_ratio: f64,
    pub late_delay: Delay,
    pub malformed_ratio: f64,
    pub malformed_kinds: Vec<Malformed>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        FaultConfig {
            seed: 42,
            duplicate_ratio: 0.0,
            duplicate_far_share: 0.25,
            duplicate_far_delay: Delay::Uniform(60_000, 600_000),
            late_ratio: 0.0,
            late_delay: Delay::Uniform(5_000, 300_000),
            malformed_ratio: 0.0,
            malformed_kinds: Malformed::ALL.to_vec(),
        }
    }
}

impl FaultConfig {
    pub fn is_clean(&self) -> bool {
        self.duplicate_ratio <= 0.0 && self.late_ratio <= 0.0 && self.malformed_ratio <= 0.0
    }
}

/// Why a record is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A good event, on time.
    Original,
    /// A good event held back by `delay_ms` of stream time.
    Late { delay_ms: i64 },
    /// A second copy of a good event; `far` when sent much later.
    Duplicate { far: bool },
    /// A malformed record.
    Malformed(Malformed),
}

/// One record to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Emission {
    pub kind: Kind,
    /// The event (for [`Malformed::GarbageBytes`] and [`Malformed::UnknownSchemaId`], the event
    /// the bytes stand in for, giving the key).
    pub event: RawEvent,
    /// Event time in ms (as it was before any malformation).
    pub time_ms: i64,
    /// Raw bytes to send instead of the encoded event ([`Malformed::GarbageBytes`]).
    pub raw_bytes: Option<Vec<u8>>,
}

impl Emission {
    pub fn is_event(&self) -> bool {
        matches!(self.kind, Kind::Original | Kind::Late { .. })
    }
}

struct Held {
    release: i64,
    seq: u64,
    emission: Emission,
}

impl PartialEq for Held {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Held {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(o.release, o.seq))
    }
}

/// Counts of what was injected.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Injected {
    pub good: u64,
    pub duplicates: u64,
    pub duplicates_far: u64,
    pub late: u64,
    pub malformed: std::collections::BTreeMap<&'static str, u64>,
}

/// Decides, for each good event, what to send. See the module docs.
pub struct Injector {
    config: FaultConfig,
    rng: SmallRng,
    held: BinaryHeap<Reverse<Held>>,
    seq: u64,
    stream_ms: i64,
    injected: Injected,
}

/// A year, for future timestamps.
const YEAR_MS: i64 = 365 * 86_400_000;

impl Injector {
    pub fn new(config: FaultConfig) -> Self {
        Injector {
            rng: SmallRng::seed_from_u64(config.seed ^ 0x0fa0_17ed),
            config,
            held: BinaryHeap::new(),
            seq: 0,
            stream_ms: i64::MIN,
            injected: Injected::default(),
        }
    }

    pub fn injected(&self) -> &Injected {
        &self.injected
    }

    /// Records waiting for a later release.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    fn hold(&mut self, release: i64, emission: Emission) {
        self.seq += 1;
        self.held.push(Reverse(Held {
            release,
            seq: self.seq,
            emission,
        }));
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    /// Takes the next good event (which happened at `time_ms`) and appends what to send now.
    pub fn push(&mut self, event: RawEvent, time_ms: i64, out: &mut Vec<Emission>) {
        self.injected.good += 1;
        self.stream_ms = self.stream_ms.max(time_ms);
        // What is due before this event goes first.
        self.release(self.stream_ms, out);

        let malformed = if self.chance(self.config.malformed_ratio)
            && !self.config.malformed_kinds.is_empty()
        {
            let k = self.rng.random_range(0..self.config.malformed_kinds.len());
            Some(self.malform(self.config.malformed_kinds[k], &event, time_ms))
        } else {
            None
        };
        if self.chance(self.config.late_ratio) {
            let delay = self.config.late_delay.sample(&mut self.rng).max(1);
            self.injected.late += 1;
            let e = Emission {
                kind: Kind::Late { delay_ms: delay },
                event,
                time_ms,
                raw_bytes: None,
            };
            self.hold(time_ms.saturating_add(delay), e);
        } else {
            self.emit_original(
                Emission {
                    kind: Kind::Original,
                    event,
                    time_ms,
                    raw_bytes: None,
                },
                out,
            );
        }
        if let Some(m) = malformed {
            out.push(m);
        }
    }

    /// Sends a good event and decides on its duplicate.
    fn emit_original(&mut self, e: Emission, out: &mut Vec<Emission>) {
        let dup = self.chance(self.config.duplicate_ratio);
        let copy = dup.then(|| e.event.clone());
        let time_ms = e.time_ms;
        out.push(e);
        if let Some(event) = copy {
            self.injected.duplicates += 1;
            if self.chance(self.config.duplicate_far_share) {
                self.injected.duplicates_far += 1;
                let delay = self.config.duplicate_far_delay.sample(&mut self.rng).max(1);
                let release = self.stream_ms.max(time_ms).saturating_add(delay);
                self.hold(
                    release,
                    Emission {
                        kind: Kind::Duplicate { far: true },
                        event,
                        time_ms,
                        raw_bytes: None,
                    },
                );
            } else {
                out.push(Emission {
                    kind: Kind::Duplicate { far: false },
                    event,
                    time_ms,
                    raw_bytes: None,
                });
            }
        }
    }

    fn release(&mut self, until: i64, out: &mut Vec<Emission>) {
        while self.held.peek().is_some_and(|h| h.0.release <= until) {
            let Some(Reverse(h)) = self.held.pop() else {
                break;
            };
            match h.emission.kind {
                Kind::Late { .. } => self.emit_original(h.emission, out),
                _ => out.push(h.emission),
            }
        }
    }

    /// Sends everything still held, in release order (the run is over).
    pub fn finish(&mut self, out: &mut Vec<Emission>) {
        self.release(i64::MAX, out);
        // Duplicates decided while releasing late events may have been held again.
        self.release(i64::MAX, out);
    }

    fn malform(&mut self, kind: Malformed, template: &RawEvent, time_ms: i64) -> Emission {
        *self.injected.malformed.entry(kind.as_str()).or_default() += 1;
        let mut ev = template.clone();
        // A fresh id: a malformed record never shares its id with a good event.
        ev.event_id = uuid::Builder::from_random_bytes(self.rng.random())
            .into_uuid()
            .to_string();
        let mut raw_bytes = None;
        match kind {
            Malformed::GarbageBytes => {
                let n = self.rng.random_range(1..200);
                let mut b: Vec<u8> = (0..n).map(|_| self.rng.random()).collect();
                // Never the Confluent magic byte, so it is garbage for sure.
                if b[0] == 0 {
                    b[0] = 0xff;
                }
                raw_bytes = Some(b);
            }
            Malformed::UnknownSchemaId => {}
            Malformed::MissingSession => ev.user_session = None,
            Malformed::EmptyEventId => ev.event_id.clear(),
            Malformed::ZeroPrice => ev.price = 0.0,
            Malformed::NegativePrice => ev.price = -ev.price.abs().max(0.01),
            Malformed::UnknownEventType => {
                ev.event_type =
                    ["click", "wishlist", "", "VIEWED"][self.rng.random_range(0..4)].to_string();
            }
            Malformed::FutureTimestamp => {
                ev.event_time = crate::clock::format_rfc3339(time_ms + YEAR_MS);
            }
        }
        Emission {
            kind: Kind::Malformed(kind),
            event: ev,
            time_ms,
            raw_bytes,
        }
    }
}

/// A schema id no registry hands out in practice (ids count up from 1).
pub const UNKNOWN_SCHEMA_ID: u32 = 0x7fff_fff0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::sim::{blank_event, SimConfig, Simulator, Step};
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn run(config: FaultConfig, n: usize) -> (Vec<Emission>, Injected) {
        let mut sim = Simulator::new(
            Catalog::synthetic(1, 200, 100, 0),
            SimConfig {
                events_per_sec: 100.0,
                ..SimConfig::default()
            },
        )
        .unwrap();
        let mut inj = Injector::new(config);
        let mut out = Vec::new();
        let mut ev = blank_event();
        let mut good = 0;
        while good < n {
            if let Step::Event { time_ms } = sim.next(&mut ev) {
                ev.event_time = crate::clock::format_rfc3339(time_ms);
                inj.push(ev.clone(), time_ms, &mut out);
                good += 1;
            }
        }
        inj.finish(&mut out);
        assert_eq!(inj.held(), 0);
        (out, inj.injected().clone())
    }

    #[test]
    fn delays_parse() {
        assert_eq!(Delay::parse("30s"), Ok(Delay::Fixed(30_000)));
        assert_eq!(Delay::parse("1s..2m"), Ok(Delay::Uniform(1000, 120_000)));
        assert_eq!(Delay::parse("exp:1m"), Ok(Delay::Exponential(60_000.0)));
        assert!(Delay::parse("2m..1s").is_err());
    }

    #[test]
    fn a_clean_config_passes_events_through_in_order() {
        let (out, inj) = run(FaultConfig::default(), 1000);
        assert_eq!(out.len(), 1000);
        assert!(out.iter().all(|e| e.kind == Kind::Original));
        assert!(out.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
        assert_eq!(inj.good, 1000);
    }

    #[test]
    fn every_good_event_is_sent_exactly_once_and_faults_are_what_they_say() {
        let config = FaultConfig {
            duplicate_ratio: 0.1,
            late_ratio: 0.1,
            malformed_ratio: 0.1,
            late_delay: Delay::Uniform(10_000, 60_000),
            ..FaultConfig::default()
        };
        let (out, inj) = run(config, 20_000);
        let mut originals: HashMap<String, i64> = HashMap::new();
        let mut stream = i64::MIN;
        let mut dup_ids = Vec::new();
        for e in &out {
            match &e.kind {
                Kind::Original | Kind::Late { .. } => {
                    assert!(
                        originals
                            .insert(e.event.event_id.clone(), e.time_ms)
                            .is_none(),
                        "a good event is sent once"
                    );
                    if let Kind::Late { .. } = e.kind {
                        assert!(stream >= e.time_ms, "a late event is behind the stream");
                    }
                    stream = stream.max(e.time_ms);
                }
                Kind::Duplicate { .. } => dup_ids.push(e.event.event_id.clone()),
                Kind::Malformed(_) => {}
            }
        }
        assert_eq!(originals.len(), 20_000);
        // A late event is released when an event at least its delay younger arrives: the
        // latest event sent after it (unless it was flushed at the end) proves it.
        let mut max_after = i64::MIN;
        let mut checked = 0;
        for e in out.iter().rev() {
            match e.kind {
                Kind::Late { delay_ms } if max_after != i64::MIN => {
                    assert!(max_after >= e.time_ms + delay_ms);
                    checked += 1;
                }
                Kind::Original => max_after = max_after.max(e.time_ms),
                _ => {}
            }
        }
        assert!(checked > 1000);
        for id in &dup_ids {
            assert!(
                originals.contains_key(id),
                "a duplicate repeats a sent event"
            );
        }
        let malformed: u64 = inj.malformed.values().sum();
        let within = |x: u64, p: f64| {
            let (n, mean) = (20_000.0, 20_000.0 * p);
            let sd = (n * p * (1.0 - p)).sqrt();
            (x as f64 - mean).abs() < 4.0 * sd
        };
        assert!(within(inj.duplicates, 0.1), "{inj:?}");
        assert!(within(inj.late, 0.1), "{inj:?}");
        assert!(within(malformed, 0.1), "{inj:?}");
        assert_eq!(dup_ids.len() as u64, inj.duplicates);
        assert!(inj.duplicates_far > 0 && inj.duplicates_far < inj.duplicates);
        let kinds: HashSet<_> = inj.malformed.keys().collect();
        assert_eq!(kinds.len(), Malformed::ALL.len());
    }

    #[test]
    fn malformed_records_are_malformed_in_their_own_way() {
        let config = FaultConfig {
            malformed_ratio: 1.0,
            ..FaultConfig::default()
        };
        let (out, _) = run(config, 2000);
        let ids: HashSet<&str> = out
            .iter()
            .filter(|e| e.is_event())
            .map(|e| e.event.event_id.as_str())
            .collect();
        for e in out.iter() {
            let Kind::Malformed(k) = e.kind else { continue };
            assert!(!ids.contains(e.event.event_id.as_str()));
            match k {
                Malformed::GarbageBytes => {
                    assert_ne!(e.raw_bytes.as_ref().unwrap()[0], 0)
                }
                Malformed::MissingSession => assert!(e.event.user_session.is_none()),
                Malformed::EmptyEventId => assert!(e.event.event_id.is_empty()),
                Malformed::ZeroPrice => assert_eq!(e.event.price, 0.0),
                Malformed::NegativePrice => assert!(e.event.price < 0.0),
                Malformed::UnknownEventType => {
                    assert!(
                        cartstream_events::types::EventType::parse(&e.event.event_type).is_none()
                    )
                }
                Malformed::FutureTimestamp => {
                    let t = crate::clock::parse_event_time(&e.event.event_time).unwrap();
                    assert!(t > e.time_ms + 300 * 86_400_000);
                }
                Malformed::UnknownSchemaId => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn ratios_hold_for_any_setting(dup in 0.0f64..0.5, late in 0.0f64..0.5, bad in 0.0f64..0.5, seed in 0u64..1000) {
            let n = 4000usize;
            let (out, inj) = run(FaultConfig { seed, duplicate_ratio: dup, late_ratio: late, malformed_ratio: bad, ..FaultConfig::default() }, n);
            let bad_n: u64 = inj.malformed.values().sum();
            prop_assert_eq!(out.len() as u64, n as u64 + inj.duplicates + bad_n);
            for (x, p) in [(inj.duplicates, dup), (inj.late, late), (bad_n, bad)] {
                let sd = (n as f64 * p * (1.0 - p)).sqrt();
                prop_assert!((x as f64 - n as f64 * p).abs() <= 5.0 * sd + 1.0, "{} vs {}", x, p);
            }
        }
    }
}
