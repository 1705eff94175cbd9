//! Session windows per `user_session`, in event time: the sessionizer's core.
//!
//! - Two events of one key belong to the same session when they are less than `gap` apart,
//!   directly or through other events of the session (Flink's session windows: each event opens
//!   `[t, t + gap)`, overlapping windows merge). An event that bridges two open sessions merges
//!   them; an event before a session's start extends it backwards.
//! - The watermark is the highest event time seen on the partition (or set by
//!   [`Sessions::advance_to`] for idle partitions). A session is final, and emitted by
//!   [`Sessions::close`], once `watermark >= end + gap + grace`.
//! - **Late events.** An event more than `grace` behind the watermark (`t < watermark - grace`) is
//!   refused with its lateness ([`Late`]); the caller dead-letters it (`late_event`). This is the
//!   exact condition under which the event *might* belong to a session already emitted (an emitted
//!   session ended at most `watermark - gap - grace`, so only events before `watermark - grace`
//!   can fall within its gap): an event within grace never touches an emitted session, so results
//!   do not depend on arrival order within grace, and an event that would have to change an
//!   emitted session is never silently folded into a new one.
//! - A session's descriptive fields (user, country, device, segment, currency) come from its
//!   earliest event by `(event_time, event_id)`, the order id from its earliest purchase, so they
//!   do not depend on arrival order either. Revenue is summed in integer micro-units, exactly.
//!   Currency: the earliest purchase's (else the earliest event's); a session mixing currencies
//!   still sums all purchases and is counted by [`Sessions::mixed_currency`].
//! - State can be written to a changelog ([`Sessions::take_changes`]: one record per key touched
//!   since the last call, empty bytes when the key has no open session) and rebuilt from it
//!   ([`Sessions::restore`]), watermark included.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use cartstream_events::types::{AvroRecord, EnrichedEvent, EventType, Session};
use cartstream_events::Contract;
use serde::{Deserialize, Serialize};

use crate::window::MICROS;

/// The fields of an enriched event a session needs: the sessionizer decodes `purchases.enriched`
/// straight into it (same contract, the other fields are skipped), which saves half the
/// allocations of decoding the whole [`EnrichedEvent`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "EnrichedEvent")]
pub struct SessionEvent {
    pub event_id: String,
    pub event_time: i64,
    pub event_type: EventType,
    pub price: f64,
    pub currency: String,
    pub quantity: i32,
    pub user_id: i64,
    pub user_session: String,
    pub user_country: String,
    pub user_device: String,
    pub user_segment: String,
}

impl AvroRecord for SessionEvent {
    const CONTRACT: Contract = Contract::EnrichedEvent;
}

impl From<&EnrichedEvent> for SessionEvent {
    fn from(e: &EnrichedEvent) -> Self {
        SessionEvent {
            event_id: e.event_id.clone(),
            event_time: e.event_time,
            event_type: e.event_type,
            price: e.price,
            currency: e.currency.clone(),
            quantity: e.quantity,
            user_id: e.user_id,
            user_session: e.user_session.clone(),
            user_country: e.user_country.clone(),
            user_device: e.user_device.clone(),
            user_segment: e.user_segment.clone(),
        }
    }
}

/// Inactivity gap and grace, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub gap_ms: i64,
    pub grace_ms: i64,
}

/// An event refused because it is more than the grace behind the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// How far the watermark was past the event.
    pub lateness_ms: i64,
}

/// What a session keeps of its earliest event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub time: i64,
    pub event_id: String,
    pub user_id: i64,
    pub country: String,
    pub device: String,
    pub segment: String,
    pub currency: String,
}

/// The earliest purchase of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstPurchase {
    pub time: i64,
    pub event_id: String,
    pub currency: String,
}

/// An open session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub start: i64,
    pub end: i64,
    pub views: i64,
    pub carts: i64,
    pub removals: i64,
    pub purchases: i64,
    pub revenue_micros: i128,
    pub head: Head,
    pub first_purchase: Option<FirstPurchase>,
    /// A purchase in another currency than the first purchase's.
    pub mixed_currency: bool,
}

/// Price x quantity in micro-units (the windower's rounding), i128: exact for every accepted value.
pub use crate::window::line_micros;

impl Open {
    pub fn from_event(e: &SessionEvent) -> Open {
        let mut o = Open {
            start: e.event_time,
            end: e.event_time,
            views: 0,
            carts: 0,
            removals: 0,
            purchases: 0,
            revenue_micros: 0,
            head: Head {
                time: e.event_time,
                event_id: e.event_id.clone(),
                user_id: e.user_id,
                country: e.user_country.clone(),
                device: e.user_device.clone(),
                segment: e.user_segment.clone(),
                currency: e.currency.clone(),
            },
            first_purchase: None,
            mixed_currency: false,
        };
        match e.event_type {
            EventType::View => o.views = 1,
            EventType::Cart => o.carts = 1,
            EventType::RemoveFromCart => o.removals = 1,
            EventType::Purchase => {
                o.purchases = 1;
                o.revenue_micros = line_micros(e.price, e.quantity);
                o.first_purchase = Some(FirstPurchase {
                    time: e.event_time,
                    event_id: e.event_id.clone(),
                    currency: e.currency.clone(),
                });
            }
        }
        o
    }

    /// Folds `other` in; commutative and associative.
    pub fn merge(&mut self, other: Open) {
        self.start = self.start.min(other.start);
        self.end = self.end.max(other.end);
        self.views += other.views;
        self.carts += other.carts;
        self.removals += other.removals;
        self.purchases += other.purchases;
        self.revenue_micros = self.revenue_micros.saturating_add(other.revenue_micros);
        if (other.head.time, &other.head.event_id) < (self.head.time, &self.head.event_id) {
            self.head = other.head;
        }
        self.mixed_currency |= other.mixed_currency;
        match (&mut self.first_purchase, other.first_purchase) {
            (_, None) => {}
            (None, Some(p)) => self.first_purchase = Some(p),
            (Some(mine), Some(p)) => {
                if mine.currency != p.currency {
                    self.mixed_currency = true;
                }
                if (p.time, &p.event_id) < (mine.time, &mine.event_id) {
                    *mine = p;
                }
            }
        }
    }

    /// Adds one event to this session (the same as merging `Open::from_event(e)`, without
    /// building it: the hot path).
    pub fn absorb(&mut self, e: &SessionEvent) {
        let t = e.event_time;
        self.start = self.start.min(t);
        self.end = self.end.max(t);
        if (t, e.event_id.as_str()) < (self.head.time, self.head.event_id.as_str()) {
            self.head = Head {
                time: t,
                event_id: e.event_id.clone(),
                user_id: e.user_id,
                country: e.user_country.clone(),
                device: e.user_device.clone(),
                segment: e.user_segment.clone(),
                currency: e.currency.clone(),
            };
        }
        match e.event_type {
            EventType::View => self.views += 1,
            EventType::Cart => self.carts += 1,
            EventType::RemoveFromCart => self.removals += 1,
            EventType::Purchase => {
                self.purchases += 1;
                self.revenue_micros = self
                    .revenue_micros
                    .saturating_add(line_micros(e.price, e.quantity));
                match &mut self.first_purchase {
                    None => {
                        self.first_purchase = Some(FirstPurchase {
                            time: t,
                            event_id: e.event_id.clone(),
                            currency: e.currency.clone(),
                        })
                    }
                    Some(p) => {
                        if p.currency != e.currency {
                            self.mixed_currency = true;
                        }
                        if (t, e.event_id.as_str()) < (p.time, p.event_id.as_str()) {
                            *p = FirstPurchase {
                                time: t,
                                event_id: e.event_id.clone(),
                                currency: e.currency.clone(),
                            };
                        }
                    }
                }
            }
        }
    }

    /// Whether an event at `t` joins this session.
    fn touches(&self, t: i64, gap: i64) -> bool {
        t > self.start.saturating_sub(gap) && t < self.end.saturating_add(gap)
    }

    /// The output record of this session (`key` is its `user_session`).
    pub fn to_session(&self, key: &str) -> Session {
        Session {
            session_id: session_id(key, self.start),
            user_id: self.head.user_id,
            user_country: self.head.country.clone(),
            user_device: self.head.device.clone(),
            user_segment: self.head.segment.clone(),
            session_start: self.start,
            session_end: self.end,
            duration_ms: self.end - self.start,
            views: self.views,
            carts: self.carts,
            removals: self.removals,
            purchases: self.purchases,
            revenue: self.revenue_micros as f64 / MICROS,
            currency: self
                .first_purchase
                .as_ref()
                .map_or_else(|| self.head.currency.clone(), |p| p.currency.clone()),
            converted: self.purchases > 0,
            order_id: self.first_purchase.as_ref().map(|p| p.event_id.clone()),
        }
    }
}

/// `<user_session>@<start ms>`: unique even when one `user_session` spans several sessions.
pub fn session_id(user_session: &str, start: i64) -> String {
    format!("{user_session}@{start}")
}

/// The open sessions of one input partition.
#[derive(Debug)]
pub struct Sessions {
    cfg: SessionConfig,
    watermark: i64,
    /// key -> its open sessions, sorted by start, pairwise at least `gap` apart. Keys are shared
    /// (`Arc`) with the index and the change set: no allocation per event.
    open: HashMap<Arc<str>, Vec<Open>>,
    /// (end, key) of every open session: what closes next.
    by_end: BTreeSet<(i64, Arc<str>)>,
    changed: HashSet<Arc<str>>,
    watermark_changed: bool,
    mixed_currency: u64,
}

/// One changelog record: key and value (empty = the key has no open session).
pub type Change = (Vec<u8>, Vec<u8>);

/// Changelog key of the watermark (never valid UTF-8, so never a `user_session`).
pub const WATERMARK_KEY: &[u8] = &[0xff, b'w', b'm'];

impl Sessions {
    pub fn new(cfg: SessionConfig) -> Self {
        Sessions {
            cfg: SessionConfig {
                gap_ms: cfg.gap_ms.max(1),
                grace_ms: cfg.grace_ms.max(0),
            },
            watermark: i64::MIN,
            open: HashMap::new(),
            by_end: BTreeSet::new(),
            changed: HashSet::new(),
            watermark_changed: false,
            mixed_currency: 0,
        }
    }

    pub fn config(&self) -> SessionConfig {
        self.cfg
    }

    /// Highest event time seen (or advanced to); `i64::MIN` before any.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn open_sessions(&self) -> usize {
        self.by_end.len()
    }

    /// Sessions emitted with purchases in more than one currency.
    pub fn mixed_currency(&self) -> u64 {
        self.mixed_currency
    }

    /// Adds an event of session key `e.user_session`.
    pub fn add(&mut self, e: &SessionEvent) -> Result<(), Late> {
        let t = e.event_time;
        if t < self.watermark.saturating_sub(self.cfg.grace_ms) {
            return Err(Late {
                lateness_ms: self.watermark.saturating_sub(t),
            });
        }
        let gap = self.cfg.gap_ms;
        let key = e.user_session.as_str();
        let k: Arc<str> = match self.open.get_key_value(key) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(key);
                self.open.insert(k.clone(), Vec::with_capacity(1));
                k
            }
        };
        let Some(list) = self.open.get_mut(key) else {
            return Ok(());
        };
        let mut touching = list.iter().enumerate().filter(|(_, s)| s.touches(t, gap));
        match (touching.next().map(|(i, _)| i), touching.next()) {
            // The common case: the event joins one session, updated in place (it cannot reach
            // a neighbour, so the list stays sorted).
            (Some(i), None) => {
                let s = &mut list[i];
                let old_end = s.end;
                s.absorb(e);
                if s.end != old_end {
                    self.by_end.remove(&(old_end, k.clone()));
                    self.by_end.insert((s.end, k.clone()));
                }
            }
            _ => {
                let mut merged = Open::from_event(e);
                let mut i = 0;
                while i < list.len() {
                    if list[i].touches(t, gap) {
                        let s = list.remove(i);
                        self.by_end.remove(&(s.end, k.clone()));
                        merged.merge(s);
                    } else {
                        i += 1;
                    }
                }
                let at = list.partition_point(|s| s.start < merged.start);
                self.by_end.insert((merged.end, k.clone()));
                list.insert(at, merged);
            }
        }
        self.changed.insert(k);
        self.advance_to(t);
        Ok(())
    }

    /// Moves the watermark to at least `t` (idle partitions).
    pub fn advance_to(&mut self, t: i64) {
        if t > self.watermark {
            self.watermark = t;
            self.watermark_changed = true;
        }
    }

    /// Emits every session that became final, oldest end first, as `(user_session, session)`.
    pub fn close(&mut self) -> Vec<(String, Open)> {
        let mut out = Vec::new();
        let cutoff = self
            .watermark
            .saturating_sub(self.cfg.gap_ms.saturating_add(self.cfg.grace_ms));
        while let Some((end, _)) = self.by_end.first() {
            if *end > cutoff || self.watermark == i64::MIN {
                break;
            }
            let Some((end, key)) = self.by_end.pop_first() else {
                break;
            };
            let Some(list) = self.open.get_mut(&key) else {
                continue;
            };
            let Some(pos) = list.iter().position(|s| s.end == end) else {
                continue;
            };
            let s = list.remove(pos);
            if list.is_empty() {
                self.open.remove(&key);
            }
            if s.mixed_currency {
                self.mixed_currency += 1;
            }
            out.push((key.to_string(), s));
            self.changed.insert(key);
        }
        out
    }

    /// Changelog records for every key changed since the last call, and the watermark.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = Vec::with_capacity(self.changed.len() + 1);
        for key in self.changed.drain() {
            let value = self
                .open
                .get(&key)
                .map(|l| encode_sessions(l))
                .unwrap_or_default();
            out.push((key.as_bytes().to_vec(), value));
        }
        if self.watermark_changed {
            self.watermark_changed = false;
            out.push((
                WATERMARK_KEY.to_vec(),
                self.watermark.to_be_bytes().to_vec(),
            ));
        }
        out
    }

    /// Applies one changelog record (the latest per key wins: apply in log order).
    pub fn restore(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        if key == WATERMARK_KEY {
            let b: [u8; 8] = value
                .try_into()
                .map_err(|_| "watermark record of the wrong size".to_string())?;
            self.watermark = self.watermark.max(i64::from_be_bytes(b));
            return Ok(());
        }
        let key: Arc<str> = Arc::from(
            std::str::from_utf8(key).map_err(|_| "changelog key is not UTF-8".to_string())?,
        );
        if let Some(old) = self.open.remove(&key) {
            for s in old {
                self.by_end.remove(&(s.end, key.clone()));
            }
        }
        if value.is_empty() {
            return Ok(());
        }
        let list = decode_sessions(value)?;
        for s in &list {
            self.by_end.insert((s.end, key.clone()));
        }
        self.open.insert(key, list);
        Ok(())
    }

    /// Forgets what [`Sessions::take_changes`] would report (after a restore).
    pub fn clear_changes(&mut self) {
        self.changed.clear();
        self.watermark_changed = false;
    }
}

// Changelog value: version byte 2, then per session its fields; integers big-endian (i64, the
// revenue i128), strings as u32 length + UTF-8. Version 1 (still read) had the revenue as i64.
const VERSION: u8 = 2;
const VERSION_I64_REVENUE: u8 = 1;

struct Writer(Vec<u8>);

impl Writer {
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i128(&mut self, v: i128) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("truncated session record".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64, String> {
        let b: [u8; 8] = self.take(8)?.try_into().map_err(|_| "size".to_string())?;
        Ok(i64::from_be_bytes(b))
    }
    fn i128(&mut self) -> Result<i128, String> {
        let b: [u8; 16] = self.take(16)?.try_into().map_err(|_| "size".to_string())?;
        Ok(i128::from_be_bytes(b))
    }
    fn str(&mut self) -> Result<String, String> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| "size".to_string())?;
        let n = u32::from_be_bytes(b) as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "string is not UTF-8".to_string())
    }
}

pub fn encode_sessions(list: &[Open]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(160 * list.len() + 2));
    w.0.push(VERSION);
    w.0.push(list.len().min(255) as u8);
    for s in list.iter().take(255) {
        for v in [s.start, s.end, s.views, s.carts, s.removals, s.purchases] {
            w.i64(v);
        }
        w.i128(s.revenue_micros);
        for v in [s.head.time, s.head.user_id] {
            w.i64(v);
        }
        for v in [
            &s.head.event_id,
            &s.head.country,
            &s.head.device,
            &s.head.segment,
            &s.head.currency,
        ] {
            w.str(v);
        }
        w.0.push(u8::from(s.mixed_currency));
        match &s.first_purchase {
            None => w.0.push(0),
            Some(p) => {
                w.0.push(1);
                w.i64(p.time);
                w.str(&p.event_id);
                w.str(&p.currency);
            }
        }
    }
    w.0
}

pub fn decode_sessions(bytes: &[u8]) -> Result<Vec<Open>, String> {
    let mut r = Reader(bytes);
    let v = r.u8()?;
    if v != VERSION && v != VERSION_I64_REVENUE {
        return Err(format!("unknown session record version {v}"));
    }
    let n = r.u8()?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let mut ints = [0_i64; 6];
        for i in &mut ints {
            *i = r.i64()?;
        }
        let [start, end, views, carts, removals, purchases] = ints;
        let revenue_micros = if v == VERSION {
            r.i128()?
        } else {
            i128::from(r.i64()?)
        };
        let (time, user_id) = (r.i64()?, r.i64()?);
        let head = Head {
            time,
            event_id: r.str()?,
            user_id,
            country: r.str()?,
            device: r.str()?,
            segment: r.str()?,
            currency: r.str()?,
        };
        let mixed_currency = r.u8()? != 0;
        let first_purchase = match r.u8()? {
            0 => None,
            _ => Some(FirstPurchase {
                time: r.i64()?,
                event_id: r.str()?,
                currency: r.str()?,
            }),
        };
        out.push(Open {
            start,
            end,
            views,
            carts,
            removals,
            purchases,
            revenue_micros,
            head,
            first_purchase,
            mixed_currency,
        });
    }
    if !r.0.is_empty() {
        return Err("trailing bytes after the sessions".into());
    }
    Ok(out)
}

/// Sessions of a complete set of events computed offline (sort each key's events, split where
/// two consecutive events are `gap` or more apart): the reference the streaming result must equal.
pub fn sessions_offline(events: &[SessionEvent], gap_ms: i64) -> Vec<Session> {
    let mut by_key: HashMap<&str, Vec<&SessionEvent>> = HashMap::new();
    for e in events {
        by_key.entry(e.user_session.as_str()).or_default().push(e);
    }
    let mut out = Vec::new();
    for (key, mut evs) in by_key {
        evs.sort_by(|a, b| (a.event_time, &a.event_id).cmp(&(b.event_time, &b.event_id)));
        let mut cur: Option<Open> = None;
        for e in evs {
            match &mut cur {
                Some(c) if e.event_time - c.end < gap_ms => c.merge(Open::from_event(e)),
                _ => {
                    if let Some(c) = cur.take() {
                        out.push(c.to_session(key));
                    }
                    cur = Some(Open::from_event(e));
                }
            }
        }
        if let Some(c) = cur {
            out.push(c.to_session(key));
        }
    }
    out.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    out
}

/// The watermark an idle partition adopts, from `(watermark, idle)` of every partition of the
/// instance: the lowest watermark of the active partitions (an active partition without one holds
/// everything back), or the highest of all when every partition is idle. `None`: nothing to adopt.
/// The windower uses the same rule.
pub fn idle_target(parts: impl IntoIterator<Item = (i64, bool)>) -> Option<i64> {
    let mut active_min: Option<i64> = None;
    let mut all_max = i64::MIN;
    for (wm, idle) in parts {
        all_max = all_max.max(wm);
        if !idle {
            active_min = Some(active_min.map_or(wm, |m| m.min(wm)));
        }
    }
    let t = active_min.unwrap_or(all_max);
    (t != i64::MIN).then_some(t)
}

/// Parses a duration flag: `500ms`, `90s`, `30m`, `2h`, `1d` (a bare number is seconds).
pub fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 30m or 2h"))?;
    let factor = match unit.trim() {
        "ms" => 1.0,
        "" | "s" => 1_000.0,
        "m" | "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (use ms, s, m, h or d)"
            ))
        }
    };
    let ms = n * factor;
    if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(ms.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GAP: i64 = 1_000;
    const GRACE: i64 = 300;

    fn ev(key: &str, id: usize, t: i64, kind: EventType, price: f64) -> SessionEvent {
        SessionEvent::from(&EnrichedEvent {
            event_id: format!("e{id}"),
            event_time: t,
            event_type: kind,
            product_id: 1,
            category_id: 1,
            category_code: "c".into(),
            brand: "b".into(),
            price,
            currency: "USD".into(),
            quantity: 1 + (id % 3) as i32,
            user_id: key.len() as i64,
            user_session: key.into(),
            channel: None,
            source_system: "t".into(),
            product_known: true,
            product_name: "p".into(),
            catalog_price: Some(price),
            user_known: true,
            user_country: "DE".into(),
            user_device: "mobile".into(),
            user_segment: "new".into(),
        })
    }

    fn cfg() -> SessionConfig {
        SessionConfig {
            gap_ms: GAP,
            grace_ms: GRACE,
        }
    }

    fn flush(s: &mut Sessions) -> Vec<Session> {
        s.advance_to(i64::MAX / 2);
        s.close()
            .into_iter()
            .map(|(k, o)| o.to_session(&k))
            .collect()
    }

    fn sorted(mut v: Vec<Session>) -> Vec<Session> {
        v.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        v
    }

    #[test]
    fn maximal_purchases_sum_exactly_and_survive_the_changelog() {
        let max = |id: usize, t: i64| {
            let mut e = ev(
                "s",
                id,
                t,
                EventType::Purchase,
                crate::clean::DEFAULT_MAX_PRICE,
            );
            e.quantity = crate::clean::DEFAULT_MAX_QUANTITY;
            e
        };
        // 100,000 lines of 10^16 micro-units (10^21, past i64::MAX after 923 of them), in two
        // halves merged as a bridge would merge them.
        let mut a = Open::from_event(&max(0, 0));
        let mut b = Open::from_event(&max(1, 1));
        for i in 2..100_000 {
            if i % 2 == 0 {
                a.absorb(&max(i, 0));
            } else {
                b.absorb(&max(i, 1));
            }
        }
        a.merge(b);
        assert_eq!(a.revenue_micros, 10_i128.pow(21));
        assert_eq!(a.purchases, 100_000);
        let back = decode_sessions(&encode_sessions(std::slice::from_ref(&a))).unwrap();
        assert_eq!(back, vec![a.clone()]);
        assert_eq!(a.to_session("s").revenue, 1e15);
        // A version-1 record (revenue as i64) still reads.
        let mut small = Open::from_event(&ev("s", 0, 5, EventType::Purchase, 2.5));
        small.revenue_micros = 7_500_000;
        let v2 = encode_sessions(std::slice::from_ref(&small));
        let mut v1 = vec![VERSION_I64_REVENUE, 1];
        v1.extend_from_slice(&v2[2..2 + 48]);
        v1.extend_from_slice(&7_500_000_i64.to_be_bytes());
        v1.extend_from_slice(&v2[2 + 48 + 16..]);
        assert_eq!(decode_sessions(&v1).unwrap(), vec![small]);
    }

    #[test]
    fn a_gap_splits_and_a_bridge_merges() {
        let mut s = Sessions::new(SessionConfig {
            gap_ms: GAP,
            grace_ms: GAP,
        });
        s.add(&ev("a", 1, 0, EventType::View, 1.0)).unwrap();
        s.add(&ev("a", 2, 1_800, EventType::View, 1.0)).unwrap();
        assert_eq!(s.open_sessions(), 2);
        // 900 is within the gap of both: one session.
        s.add(&ev("a", 3, 900, EventType::Purchase, 2.5)).unwrap();
        assert_eq!(s.open_sessions(), 1);
        let out = flush(&mut s);
        assert_eq!(out.len(), 1);
        let x = &out[0];
        assert_eq!(
            (x.session_start, x.session_end, x.duration_ms),
            (0, 1_800, 1_800)
        );
        assert_eq!((x.views, x.purchases, x.converted), (2, 1, true));
        assert_eq!(x.order_id.as_deref(), Some("e3"));
        assert_eq!(x.session_id, "a@0");
        // A pause of exactly the gap ends a session.
        let mut s = Sessions::new(cfg());
        s.add(&ev("a", 1, 0, EventType::View, 1.0)).unwrap();
        s.add(&ev("a", 2, GAP, EventType::View, 1.0)).unwrap();
        assert_eq!(flush(&mut s).len(), 2);
    }

    #[test]
    fn sessions_close_after_gap_plus_grace_only() {
        let mut s = Sessions::new(cfg());
        s.add(&ev("a", 1, 0, EventType::View, 1.0)).unwrap();
        s.add(&ev("b", 2, GAP + GRACE - 1, EventType::View, 1.0))
            .unwrap();
        assert!(s.close().is_empty());
        s.add(&ev("b", 3, GAP + GRACE, EventType::View, 1.0))
            .unwrap();
        let closed = s.close();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0, "a");
        assert_eq!(s.open_sessions(), 1);
    }

    #[test]
    fn events_beyond_grace_are_refused_with_their_lateness() {
        let mut s = Sessions::new(cfg());
        s.add(&ev("a", 1, 10_000, EventType::View, 1.0)).unwrap();
        assert!(s
            .add(&ev("b", 2, 10_000 - GRACE, EventType::View, 1.0))
            .is_ok());
        assert_eq!(
            s.add(&ev("a", 3, 10_000 - GRACE - 1, EventType::View, 1.0)),
            Err(Late {
                lateness_ms: GRACE + 1
            })
        );
        // A late event is not in any session.
        let out = flush(&mut s);
        assert_eq!(out.iter().map(|x| x.views).sum::<i64>(), 2);
    }

    #[test]
    fn head_and_currency_come_from_the_earliest_events() {
        let mut s = Sessions::new(cfg());
        let mut late = ev("a", 9, 100, EventType::Purchase, 3.0);
        late.user_country = "FR".into();
        late.currency = "EUR".into();
        s.add(&late).unwrap();
        let mut early = ev("a", 1, 50, EventType::Purchase, 1.0);
        early.currency = "GBP".into();
        s.add(&early).unwrap();
        let out = flush(&mut s);
        assert_eq!(out[0].user_country, "DE");
        assert_eq!(out[0].currency, "GBP");
        assert_eq!(out[0].order_id.as_deref(), Some("e1"));
        assert_eq!(s.mixed_currency(), 1);
    }

    #[test]
    fn idle_partitions_adopt_the_slowest_active_one_or_the_fastest_of_all() {
        assert_eq!(
            idle_target([(10, false), (30, false), (50, true)]),
            Some(10)
        );
        assert_eq!(
            idle_target([(10, true), (30, true), (i64::MIN, true)]),
            Some(30)
        );
        assert_eq!(idle_target([(i64::MIN, false), (30, true)]), None);
        assert_eq!(idle_target([]), None);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("30m"), Ok(1_800_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("2"), Ok(2_000));
        assert_eq!(parse_duration_ms("1.5h"), Ok(5_400_000));
        assert!(parse_duration_ms("x").is_err());
        assert!(parse_duration_ms("3w").is_err());
        assert!(parse_duration_ms("-1s").is_err());
    }

    #[test]
    fn changelog_values_round_trip_and_reject_garbage() {
        let mut s = Sessions::new(cfg());
        s.add(&ev("a", 1, 0, EventType::Purchase, 1.25)).unwrap();
        s.add(&ev("a", 2, 5_000, EventType::Cart, 1.0)).unwrap();
        let list = s.open.get("a").unwrap().clone();
        let bytes = encode_sessions(&list);
        assert_eq!(decode_sessions(&bytes).unwrap(), list);
        for cut in 0..bytes.len() {
            assert!(decode_sessions(&bytes[..cut]).is_err());
        }
        assert!(s.restore(b"x", &[9, 9]).is_err());
        assert!(s.restore(WATERMARK_KEY, &[1]).is_err());
    }

    fn arb_events() -> impl Strategy<Value = Vec<(u8, i64, u8, u16, i64)>> {
        // (key, time, type, price cents, arrival jitter within grace)
        prop::collection::vec(
            (0u8..6, 0i64..20_000, 0u8..4, 1u16..5000, 0i64..=GRACE),
            1..120,
        )
    }

    fn build(spec: &[(u8, i64, u8, u16, i64)]) -> Vec<(SessionEvent, i64)> {
        spec.iter()
            .enumerate()
            .map(|(i, (k, t, ty, cents, jitter))| {
                let e = ev(
                    &format!("k{k}"),
                    i,
                    *t,
                    EventType::ALL[*ty as usize],
                    f64::from(*cents) / 100.0,
                );
                (e, t + jitter)
            })
            .collect()
    }

    proptest! {
        /// Any arrival order where no event is more than the grace behind the events before it
        /// gives exactly the offline sessions: every event in one session, sums conserved,
        /// bridges merged, whatever the moments of closing.
        #[test]
        fn arrival_order_within_grace_does_not_matter(
            spec in arb_events(), close_every in 1usize..10
        ) {
            let evs = build(&spec);
            let all: Vec<SessionEvent> = evs.iter().map(|(e, _)| e.clone()).collect();
            let expected = sessions_offline(&all, GAP);
            let mut arrival = evs.clone();
            arrival.sort_by_key(|(e, a)| (*a, e.event_id.clone()));
            let mut s = Sessions::new(cfg());
            let mut got = Vec::new();
            for (i, (e, _)) in arrival.iter().enumerate() {
                prop_assert!(s.add(e).is_ok());
                if i % close_every == 0 {
                    got.extend(s.close().into_iter().map(|(k, o)| o.to_session(&k)));
                }
            }
            got.extend(flush(&mut s));
            let got = sorted(got);
            prop_assert_eq!(got.iter().map(|x| x.views + x.carts + x.removals + x.purchases).sum::<i64>(), all.len() as i64);
            let revenue: i128 = all.iter().filter(|e| e.event_type == EventType::Purchase).map(|e| line_micros(e.price, e.quantity)).sum();
            prop_assert_eq!(got.iter().map(|x| (x.revenue * MICROS).round() as i128).sum::<i128>(), revenue);
            prop_assert_eq!(got, expected);
            prop_assert_eq!(s.open_sessions(), 0);
        }

        /// Stopping anywhere, keeping only the changelog (latest value per key) and going on
        /// from a restored state gives the same sessions as never stopping.
        #[test]
        fn restoring_from_the_changelog_continues_exactly(
            spec in arb_events(), stop in 0usize..120
        ) {
            let evs = build(&spec);
            let mut arrival = evs.clone();
            arrival.sort_by_key(|(e, a)| (*a, e.event_id.clone()));
            let stop = stop.min(arrival.len());
            let mut a = Sessions::new(cfg());
            let mut log: Vec<Change> = Vec::new();
            let mut got = Vec::new();
            for (e, _) in &arrival[..stop] {
                a.add(e).unwrap();
                got.extend(a.close().into_iter().map(|(k, o)| o.to_session(&k)));
                log.extend(a.take_changes());
            }
            // Compaction keeps the latest value per key; replay what is left in any key order.
            let mut compacted: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            for (k, v) in log { compacted.insert(k, v); }
            let mut b = Sessions::new(cfg());
            for (k, v) in &compacted { b.restore(k, v).unwrap(); }
            prop_assert_eq!(b.watermark(), a.watermark());
            prop_assert_eq!(b.open_sessions(), a.open_sessions());
            for (e, _) in &arrival[stop..] {
                b.add(e).unwrap();
                got.extend(b.close().into_iter().map(|(k, o)| o.to_session(&k)));
            }
            got.extend(flush(&mut b));
            let all: Vec<SessionEvent> = evs.into_iter().map(|(e, _)| e).collect();
            prop_assert_eq!(sorted(got), sessions_offline(&all, GAP));
        }
    }
}
