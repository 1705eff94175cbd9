//! The windower's two stages, apart from any I/O (the service is `cartstream-windower`).
//!
//! `purchases.enriched` is keyed by `user_session`, so the events of one dimension value are on
//! every input partition; a window result must be computed by one owner, exactly (distinct users
//! are exact sets, not sketches). Hence two stages:
//!
//! 1. [`PreStage`], per input partition `p`: keeps `p`'s watermark `wm(p)` (highest event time seen
//!    minus the allowed out-of-orderness, or adopted from the other partitions when `p` is idle);
//!    sets aside as *late* an event whose first window is final under `wm(p)`
//!    (`wm(p) >= end + grace`); otherwise adds it to a per-batch partial aggregate per
//!    ([`GroupKey`], pane). At the end of a batch the partials go to a repartition topic keyed by
//!    the group key, followed by a marker `(p, wm(p))` broadcast to every repartition partition.
//! 2. [`MergeState`], per repartition partition: merges partials into panes and closes a window
//!    once the minimum of the markers of all input partitions passes its end plus grace.
//!
//! Why this is exact: a partial from `p` is written before the marker that follows it, on every
//! repartition partition, so when stage 2 closes a window (every `wm(p) >= end + grace`) it has
//! every partial of that window any `p` will ever send: `p` accepts an event only while its first
//! window is still open under `wm(p)`, and `wm(p)` never goes back. Late is all or nothing: a late
//! event is counted in no window (for hopping windows, not even the newer ones still open), so
//! every window is computed from the same set of on-time events, and the late topic holds the rest.
//!
//! Hopping windows cost about the same as tumbling ones: an event updates one pane; windows are
//! merged from their `size / slide` panes when they close.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cartstream_events::types::{Dimension, EnrichedEvent, EventType};

use crate::window::{Agg, WindowSpec};

/// What a window result is grouped by: a dimension value, per currency (sums of different
/// currencies are never mixed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub dimension: Dimension,
    pub value: String,
    pub currency: String,
}

pub const DIMENSIONS: [Dimension; 5] = [
    Dimension::All,
    Dimension::Category,
    Dimension::Product,
    Dimension::Brand,
    Dimension::EventType,
];

fn dim_code(d: Dimension) -> u8 {
    match d {
        Dimension::All => 0,
        Dimension::Category => 1,
        Dimension::Product => 2,
        Dimension::Brand => 3,
        Dimension::EventType => 4,
    }
}

/// Name of the stream of final windows of one spec, in the watermark records the windower
/// writes to `kpi.windows` (`cartstream_kafka::control::STREAM_HEADER`): `window/<size>/<slide>`.
pub fn window_stream(size_ms: i64, slide_ms: i64) -> String {
    cartstream_kafka::control::window_stream(size_ms, slide_ms)
}

pub fn dimension_name(d: Dimension) -> &'static str {
    match d {
        Dimension::All => "all",
        Dimension::Category => "category",
        Dimension::Product => "product",
        Dimension::Brand => "brand",
        Dimension::EventType => "event_type",
    }
}

fn or_unknown(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

/// The value of `e` for dimension `d`: `all`, the category code, the product id in decimal, the
/// brand, the event type (blank text is `unknown`).
pub fn dimension_value(e: &EnrichedEvent, d: Dimension) -> String {
    match d {
        Dimension::All => "all".to_string(),
        Dimension::Category => or_unknown(&e.category_code),
        Dimension::Product => e.product_id.to_string(),
        Dimension::Brand => or_unknown(&e.brand),
        Dimension::EventType => e.event_type.as_str().to_string(),
    }
}

impl GroupKey {
    /// The five groups an event counts in.
    pub fn of(e: &EnrichedEvent) -> [GroupKey; 5] {
        DIMENSIONS.map(|d| GroupKey {
            dimension: d,
            value: dimension_value(e, d),
            currency: e.currency.clone(),
        })
    }

    /// Bytes: dimension code, currency length, currency, value.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        buf.push(dim_code(self.dimension));
        buf.push(self.currency.len().min(255) as u8);
        buf.extend_from_slice(&self.currency.as_bytes()[..self.currency.len().min(255)]);
        buf.extend_from_slice(self.value.as_bytes());
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.value.len());
        self.encode(&mut b);
        b
    }

    pub fn decode(b: &[u8]) -> Option<GroupKey> {
        let (&d, rest) = b.split_first()?;
        let dimension = *DIMENSIONS.get(usize::from(d))?;
        let (&n, rest) = rest.split_first()?;
        let n = usize::from(n);
        if rest.len() < n {
            return None;
        }
        let currency = std::str::from_utf8(&rest[..n]).ok()?.to_string();
        let value = std::str::from_utf8(&rest[n..]).ok()?.to_string();
        Some(GroupKey {
            dimension,
            value,
            currency,
        })
    }
}

/// Adds one event to an aggregate.
pub fn add_event(agg: &mut Agg, e: &EnrichedEvent) {
    agg.add(e.event_type, e.price, e.quantity, e.user_id);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn i64(&mut self) -> Option<i64> {
        let (h, t) = self.0.split_at_checked(8)?;
        self.0 = t;
        Some(i64::from_le_bytes(h.try_into().ok()?))
    }
    fn i128(&mut self) -> Option<i128> {
        let (h, t) = self.0.split_at_checked(16)?;
        self.0 = t;
        Some(i128::from_le_bytes(h.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        let (h, t) = self.0.split_at_checked(4)?;
        self.0 = t;
        Some(u32::from_le_bytes(h.try_into().ok()?))
    }
    fn u8(&mut self) -> Option<u8> {
        let (&h, t) = self.0.split_first()?;
        self.0 = t;
        Some(h)
    }
}

/// Binary form of an aggregate: five little-endian i64 (counts and units), the revenue and the
/// price sums as little-endian i128, the user count, the sorted user ids. (Bundles tagged
/// [`TAG_BUNDLE_I64`], written before the money sums were i128, have them as i64; still read.)
pub fn encode_agg(a: &Agg, buf: &mut Vec<u8>) {
    for v in [a.views, a.carts, a.removals, a.purchases, a.units] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    for v in [a.revenue_micros, a.price_micros] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    let mut users: Vec<i64> = a.users.iter().copied().collect();
    users.sort_unstable();
    buf.extend_from_slice(&(users.len() as u32).to_le_bytes());
    for u in users {
        buf.extend_from_slice(&u.to_le_bytes());
    }
}

fn decode_agg(r: &mut Reader<'_>, wide_money: bool) -> Option<Agg> {
    let (views, carts, removals, purchases, units) =
        (r.i64()?, r.i64()?, r.i64()?, r.i64()?, r.i64()?);
    let mut money = || {
        if wide_money {
            r.i128()
        } else {
            r.i64().map(i128::from)
        }
    };
    let (revenue_micros, price_micros) = (money()?, money()?);
    let mut a = Agg {
        views,
        carts,
        removals,
        purchases,
        units,
        revenue_micros,
        price_micros,
        users: HashSet::new(),
    };
    let n = r.u32()? as usize;
    if r.0.len() < n * 8 {
        return None;
    }
    a.users.reserve(n);
    for _ in 0..n {
        a.users.insert(r.i64()?);
    }
    Some(a)
}

pub fn decode_agg_bytes(b: &[u8]) -> Option<Agg> {
    let mut r = Reader(b);
    let a = decode_agg(&mut r, true)?;
    r.0.is_empty().then_some(a)
}

/// A record of the repartition topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Repartitioned {
    /// Partial aggregates (group key, pane, aggregate) of groups routed to this repartition
    /// partition ([`route`]), from one batch of one stage-1 instance. Bundled so the topic carries
    /// a few large records per batch instead of one per group.
    Bundle(Vec<(GroupKey, i64, Agg)>),
    /// Input partition `partition` has watermark `watermark`: no partial for a window final
    /// under it will follow from that partition. `idle`: the watermark was adopted because the
    /// partition had no records (other instances do not count it as active).
    Marker {
        partition: i32,
        watermark: i64,
        idle: bool,
    },
}

/// A bundle whose aggregates hold i128 money sums (what is written).
const TAG_BUNDLE: u8 = b'b';
/// A bundle of the earlier format, money sums as i64 (read, never written).
const TAG_BUNDLE_I64: u8 = b'B';
const TAG_MARKER: u8 = b'W';

/// The repartition partition of a group (FNV-1a of its key bytes).
pub fn route(key: &GroupKey, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    feed(dim_code(key.dimension));
    key.currency.bytes().for_each(&mut feed);
    feed(0xff);
    key.value.bytes().for_each(&mut feed);
    (h % partitions.max(1) as u64) as i32
}

fn encode_entry(buf: &mut Vec<u8>, key: &GroupKey, pane: i64, agg: &Agg) {
    let start = buf.len();
    buf.extend_from_slice(&[0, 0]);
    key.encode(buf);
    let len = (buf.len() - start - 2).min(usize::from(u16::MAX)) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&pane.to_le_bytes());
    encode_agg(agg, buf);
}

/// Encodes partials into bundles per repartition partition, each at most about `max_bytes`
/// (a single partial may exceed it; [`split_users`] bounds those).
pub fn bundles(
    partials: Vec<(GroupKey, i64, Agg)>,
    partitions: i32,
    max_bytes: usize,
) -> Vec<(i32, Vec<u8>)> {
    let mut open: HashMap<i32, (Vec<u8>, u32)> = HashMap::new();
    let mut out = Vec::new();
    let finish = |(mut b, n): (Vec<u8>, u32)| {
        b[1..5].copy_from_slice(&n.to_le_bytes());
        b
    };
    for (k, pane, agg) in partials {
        let r = route(&k, partitions);
        let slot = open
            .entry(r)
            .or_insert_with(|| (vec![TAG_BUNDLE, 0, 0, 0, 0], 0));
        encode_entry(&mut slot.0, &k, pane, &agg);
        slot.1 += 1;
        if slot.0.len() >= max_bytes {
            if let Some(full) = open.remove(&r) {
                out.push((r, finish(full)));
            }
        }
    }
    let mut rest: Vec<_> = open.into_iter().collect();
    rest.sort_unstable_by_key(|(r, _)| *r);
    out.extend(rest.into_iter().map(|(r, b)| (r, finish(b))));
    out
}

impl Repartitioned {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Repartitioned::Bundle(entries) => {
                let mut b = vec![TAG_BUNDLE];
                b.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for (k, pane, agg) in entries {
                    encode_entry(&mut b, k, *pane, agg);
                }
                b
            }
            Repartitioned::Marker {
                partition,
                watermark,
                idle,
            } => {
                let mut b = Vec::with_capacity(14);
                b.push(TAG_MARKER);
                b.extend_from_slice(&partition.to_le_bytes());
                b.extend_from_slice(&watermark.to_le_bytes());
                b.push(u8::from(*idle));
                b
            }
        }
    }

    pub fn decode(b: &[u8]) -> Option<Repartitioned> {
        let mut r = Reader(b);
        match r.u8()? {
            tag @ (TAG_BUNDLE | TAG_BUNDLE_I64) => {
                let n = r.u32()? as usize;
                let mut entries = Vec::with_capacity(n.min(1 << 16));
                for _ in 0..n {
                    let (len, rest) = r.0.split_at_checked(2)?;
                    let len = usize::from(u16::from_le_bytes(len.try_into().ok()?));
                    let (key, rest) = rest.split_at_checked(len)?;
                    let key = GroupKey::decode(key)?;
                    r.0 = rest;
                    let pane = r.i64()?;
                    let agg = decode_agg(&mut r, tag == TAG_BUNDLE)?;
                    entries.push((key, pane, agg));
                }
                r.0.is_empty().then_some(Repartitioned::Bundle(entries))
            }
            TAG_MARKER => {
                let partition = i32::try_from(r.u32()?).ok()?;
                let watermark = r.i64()?;
                let idle = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                r.0.is_empty().then_some(Repartitioned::Marker {
                    partition,
                    watermark,
                    idle,
                })
            }
            _ => None,
        }
    }
}

/// Window size/slide, grace and allowed out-of-orderness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinConfig {
    pub spec: WindowSpec,
    pub grace_ms: i64,
    /// The watermark trails the highest event time seen by this much.
    pub out_of_order_ms: i64,
}

impl WinConfig {
    /// Start and end of the oldest window holding `t`.
    pub fn first_window(&self, t: i64) -> (i64, i64) {
        let end = (self.spec.pane_of(t) + 1) * self.spec.slide_ms;
        (end - self.spec.size_ms, end)
    }

    /// Start of the newest window that is final under watermark `wm` (`end + grace <= wm`).
    pub fn last_final_start(&self, wm: i64) -> i64 {
        wm.saturating_sub(self.grace_ms)
            .saturating_sub(self.spec.size_ms)
            .div_euclid(self.spec.slide_ms)
            * self.spec.slide_ms
    }
}

/// Why an event was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Late {
    /// Watermark minus (end + grace) of the missed window, >= 0.
    pub lateness_ms: i64,
    pub watermark: i64,
    pub window_start: i64,
    pub window_end: i64,
}

/// Watermark state of one input partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMark {
    pub max_time: i64,
    pub watermark: i64,
}

impl Default for PartitionMark {
    fn default() -> Self {
        PartitionMark {
            max_time: i64::MIN,
            watermark: i64::MIN,
        }
    }
}

impl PartitionMark {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&self.max_time.to_le_bytes());
        b.extend_from_slice(&self.watermark.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<PartitionMark> {
        let mut r = Reader(b);
        let m = PartitionMark {
            max_time: r.i64()?,
            watermark: r.i64()?,
        };
        r.0.is_empty().then_some(m)
    }
}

/// Stage 1: per input partition watermarks and per-batch partial aggregates.
#[derive(Debug)]
pub struct PreStage {
    pub cfg: WinConfig,
    marks: BTreeMap<i32, PartitionMark>,
    committed: BTreeMap<i32, PartitionMark>,
    pending: HashMap<(GroupKey, i64), Agg>,
    dirty: BTreeSet<i32>,
    /// Partitions whose watermark moved by records in this batch (the others moved by adoption).
    by_records: BTreeSet<i32>,
}

/// What stage 1 hands over at the end of a batch.
#[derive(Debug, Default)]
pub struct Drained {
    pub partials: Vec<(GroupKey, i64, Agg)>,
    /// Partitions whose watermark moved, with their new state and whether it moved only by
    /// idle adoption.
    pub marks: Vec<(i32, PartitionMark, bool)>,
}

impl PreStage {
    pub fn new(cfg: WinConfig) -> Self {
        PreStage {
            cfg,
            marks: BTreeMap::new(),
            committed: BTreeMap::new(),
            pending: HashMap::new(),
            dirty: BTreeSet::new(),
            by_records: BTreeSet::new(),
        }
    }

    /// Restores (or starts) the state of an assigned partition.
    pub fn assign(&mut self, partition: i32, mark: Option<PartitionMark>) {
        let m = mark.unwrap_or_default();
        self.marks.insert(partition, m);
        self.committed.insert(partition, m);
    }

    pub fn revoke(&mut self, partition: i32) {
        self.marks.remove(&partition);
        self.committed.remove(&partition);
        self.dirty.remove(&partition);
    }

    pub fn mark(&self, partition: i32) -> PartitionMark {
        self.marks.get(&partition).copied().unwrap_or_default()
    }

    pub fn partitions(&self) -> impl Iterator<Item = (i32, PartitionMark)> + '_ {
        self.marks.iter().map(|(p, m)| (*p, *m))
    }

    /// Takes one event of `partition` at event time `t`: `Err(Late)` when its first window is
    /// final under the partition's watermark, else it is added to the batch's partials.
    pub fn observe(&mut self, partition: i32, e: &EnrichedEvent) -> Result<(), Late> {
        let t = e.event_time;
        let cfg = self.cfg;
        let m = self.marks.entry(partition).or_default();
        let (start, end) = cfg.first_window(t);
        let closes_at = end.saturating_add(cfg.grace_ms);
        if m.watermark >= closes_at {
            return Err(Late {
                lateness_ms: m.watermark - closes_at,
                watermark: m.watermark,
                window_start: start,
                window_end: end,
            });
        }
        if t > m.max_time {
            m.max_time = t;
            let wm = t.saturating_sub(cfg.out_of_order_ms);
            if wm > m.watermark {
                m.watermark = wm;
                self.dirty.insert(partition);
                self.by_records.insert(partition);
            }
        }
        let pane = cfg.spec.pane_of(t);
        for k in GroupKey::of(e) {
            add_event(self.pending.entry((k, pane)).or_default(), e);
        }
        Ok(())
    }

    /// Moves an idle partition's watermark up to `to` (never down).
    pub fn advance(&mut self, partition: i32, to: i64) {
        let m = self.marks.entry(partition).or_default();
        if to > m.watermark {
            m.watermark = to;
            self.dirty.insert(partition);
        }
    }

    /// The batch's partials and moved watermarks (partials must be written before the markers).
    pub fn drain(&mut self) -> Drained {
        let mut partials: Vec<(GroupKey, i64, Agg)> = Vec::with_capacity(self.pending.len());
        for ((k, pane), a) in self.pending.drain() {
            for part in split_users(a, MAX_USERS_PER_RECORD) {
                partials.push((k.clone(), pane, part));
            }
        }
        partials.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        let by_records = std::mem::take(&mut self.by_records);
        let marks = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|p| {
                self.marks
                    .get(&p)
                    .map(|m| (p, *m, !by_records.contains(&p)))
            })
            .collect();
        Drained { partials, marks }
    }

    pub fn commit(&mut self) {
        self.committed.clone_from(&self.marks);
    }

    pub fn rollback(&mut self) {
        self.marks.clone_from(&self.committed);
        self.pending.clear();
        self.dirty.clear();
        self.by_records.clear();
    }
}

/// A window result ready to emit.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    pub key: GroupKey,
    pub window_start: i64,
    pub agg: Agg,
    pub is_final: bool,
}

/// Stage 2's changelog record of one repartition partition, written in every transaction that
/// moved it: the state is rebuilt by replaying the repartition partition itself from
/// `replay_from` (the first record of the oldest pane still open) to `next_offset` (the first
/// record not processed), starting from these upstream watermarks. The repartition topic is the
/// log of the state's changes already; writing them again would double the traffic, and a busy
/// pane's user set (hundreds of thousands of ids) does not fit one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub replay_from: i64,
    pub next_offset: i64,
    /// Windows starting before this were emitted.
    pub next_open: i64,
    pub marks: Vec<i64>,
}

/// Changelog key of a [`Checkpoint`] (one per repartition partition).
pub const CHECKPOINT_KEY: &[u8] = b"c";

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24 + 8 * self.marks.len());
        b.extend_from_slice(&self.replay_from.to_le_bytes());
        b.extend_from_slice(&self.next_offset.to_le_bytes());
        b.extend_from_slice(&self.next_open.to_le_bytes());
        for m in &self.marks {
            b.extend_from_slice(&m.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() < 24 || !b.len().is_multiple_of(8) {
            return None;
        }
        let mut r = Reader(b);
        let replay_from = r.i64()?;
        let next_offset = r.i64()?;
        let next_open = r.i64()?;
        let mut marks = Vec::with_capacity(r.0.len() / 8);
        while !r.0.is_empty() {
            marks.push(r.i64()?);
        }
        Some(Checkpoint {
            replay_from,
            next_offset,
            next_open,
            marks,
        })
    }
}

/// Splits an aggregate whose user set is larger than `max_users` into several (the first with
/// the counts, the others with users only), so no record gets too big; merging them gives it
/// back.
pub fn split_users(agg: Agg, max_users: usize) -> Vec<Agg> {
    if agg.users.len() <= max_users.max(1) {
        return vec![agg];
    }
    let mut users: Vec<i64> = agg.users.iter().copied().collect();
    users.sort_unstable();
    let mut out = Vec::new();
    let mut first = Agg {
        users: HashSet::new(),
        ..agg
    };
    let mut chunks = users.chunks(max_users.max(1));
    if let Some(c) = chunks.next() {
        first.users.extend(c.iter().copied());
    }
    out.push(first);
    for c in chunks {
        out.push(Agg {
            users: c.iter().copied().collect(),
            ..Agg::default()
        });
    }
    out
}

/// Most user ids in one partial or changelog record (8 bytes each: well under Kafka's 1 MB).
pub const MAX_USERS_PER_RECORD: usize = 50_000;

/// Stage 2 state of one repartition partition: panes per group and the upstream watermarks.
#[derive(Debug)]
pub struct MergeState {
    pub cfg: WinConfig,
    /// Latest watermark marker of each input partition.
    marks: Vec<i64>,
    panes: BTreeMap<i64, HashMap<GroupKey, Agg>>,
    /// First repartition offset that contributed to each open pane.
    pane_first: BTreeMap<i64, i64>,
    /// The first repartition offset not applied yet.
    next_offset: i64,
    /// Windows starting before this are final and emitted.
    next_open: i64,
    /// Something was applied or emitted since the last checkpoint.
    moved: bool,
    /// `next_open` of the checkpoint being restored (applied by `restored`).
    restoring_next_open: Option<i64>,
    /// Panes changed since the last early update.
    early: HashSet<(i64, GroupKey)>,
    /// Partials that came for windows already final: impossible by construction, counted.
    pub stale: u64,
}

impl MergeState {
    pub fn new(cfg: WinConfig, upstream_partitions: usize) -> Self {
        MergeState {
            cfg,
            marks: vec![i64::MIN; upstream_partitions.max(1)],
            panes: BTreeMap::new(),
            pane_first: BTreeMap::new(),
            next_offset: 0,
            next_open: i64::MIN,
            moved: false,
            restoring_next_open: None,
            early: HashSet::new(),
            stale: 0,
        }
    }

    /// Starts a restore: the watermarks of the checkpoint; then replay the repartition records
    /// of [`Checkpoint::replay_from`, [`Checkpoint::next_offset`]) with `apply_*` and call
    /// [`MergeState::restored`].
    pub fn from_checkpoint(cfg: WinConfig, upstream_partitions: usize, cp: &Checkpoint) -> Self {
        let mut s = MergeState::new(cfg, upstream_partitions);
        for (slot, m) in s.marks.iter_mut().zip(&cp.marks) {
            *slot = *m;
        }
        s.next_offset = cp.replay_from;
        s.restoring_next_open = Some(cp.next_open);
        s
    }

    /// After a restore: the windows the checkpoint says were emitted (it commits with them) are
    /// dropped, not emitted again; final windows not emitted yet come with the next `close`.
    pub fn restored(&mut self) {
        if let Some(no) = self.restoring_next_open.take() {
            self.next_open = no;
        }
        if self.next_open != i64::MIN {
            self.drop_panes_before(self.cfg.spec.pane_of(self.next_open));
        }
        self.early.clear();
        self.moved = false;
    }

    /// Minimum of the upstream watermarks (`i64::MIN` until every input partition reported).
    pub fn watermark(&self) -> i64 {
        self.marks.iter().copied().min().unwrap_or(i64::MIN)
    }

    pub fn marks(&self) -> &[i64] {
        &self.marks
    }

    /// Every final window starting before this has been emitted (`i64::MIN` before the first
    /// close): the watermark this partition sends downstream with its results.
    pub fn emitted_before(&self) -> i64 {
        self.next_open
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub fn open_panes(&self) -> usize {
        self.panes.values().map(HashMap::len).sum()
    }

    /// Open (group, window) pairs holding data.
    pub fn open_windows(&self) -> usize {
        let n = self.cfg.spec.panes();
        let first_open_pane = if self.next_open == i64::MIN {
            i64::MIN
        } else {
            self.cfg.spec.pane_of(self.next_open)
        };
        // Per group, the windows are the union of [pane, pane + n) over its panes (in window
        // start panes), from the first open one.
        let mut last: HashMap<&GroupKey, (i64, usize)> = HashMap::new();
        for (pane, keys) in &self.panes {
            for k in keys.keys() {
                let e = last.entry(k).or_insert((i64::MIN, 0));
                let from = (*pane - n + 1).max(first_open_pane).max(e.0);
                let to = *pane + 1;
                if to > from {
                    e.1 += (to - from) as usize;
                    e.0 = to;
                }
            }
        }
        last.values().map(|v| v.1).sum()
    }

    fn seen(&mut self, offset: i64) {
        self.next_offset = self.next_offset.max(offset + 1);
        self.moved = true;
    }

    /// Applies a marker read at `offset` of the repartition partition.
    pub fn apply_marker(&mut self, partition: i32, watermark: i64, offset: i64) {
        self.seen(offset);
        if let Some(m) = usize::try_from(partition)
            .ok()
            .and_then(|p| self.marks.get_mut(p))
        {
            *m = (*m).max(watermark);
        }
    }

    /// Merges a partial read at `offset` of the repartition partition.
    pub fn apply_partial(&mut self, key: GroupKey, pane: i64, agg: &Agg, offset: i64) {
        self.seen(offset);
        if self.next_open != i64::MIN && pane * self.cfg.spec.slide_ms < self.next_open {
            self.stale += 1;
            return;
        }
        self.pane_first.entry(pane).or_insert(offset);
        self.panes
            .entry(pane)
            .or_default()
            .entry(key.clone())
            .or_default()
            .merge(agg);
        self.early.insert((pane, key));
    }

    fn drop_panes_before(&mut self, keep_from: i64) {
        let kept = self.panes.split_off(&keep_from);
        let gone = std::mem::replace(&mut self.panes, kept);
        self.pane_first = self.pane_first.split_off(&keep_from);
        if !self.early.is_empty() {
            for (pane, keys) in gone {
                for (k, _) in keys {
                    self.early.remove(&(pane, k));
                }
            }
        }
    }

    /// Emits the windows that became final, oldest first, and forgets the panes no open window
    /// needs.
    pub fn close(&mut self) -> Vec<WindowResult> {
        self.close_at_most(usize::MAX)
    }

    /// Like [`MergeState::close`], stopping after the window at which the results reach `max`
    /// (bounded transactions when the watermark jumps far, e.g. many small slides); the rest
    /// comes with the next call.
    pub fn close_at_most(&mut self, max: usize) -> Vec<WindowResult> {
        let mut out = Vec::new();
        let wm = self.watermark();
        if wm == i64::MIN {
            return out;
        }
        let spec = self.cfg.spec;
        let last_final = self.cfg.last_final_start(wm);
        if let Some((&first_pane, _)) = self.panes.first_key_value() {
            let n = spec.panes();
            let mut start = ((first_pane - (n - 1)) * spec.slide_ms).max(self.next_open);
            while start <= last_final {
                let from = spec.pane_of(start);
                if self.panes.range(from..from + n).next().is_none() {
                    // No data in this window: jump to the first window holding the next pane.
                    match self.panes.range(from + n..).next() {
                        Some((&p, _)) => {
                            start = (start + spec.slide_ms).max((p - (n - 1)) * spec.slide_ms);
                            continue;
                        }
                        None => break,
                    }
                }
                let mut merged: HashMap<&GroupKey, Agg> = HashMap::new();
                for (_, keys) in self.panes.range(from..from + n) {
                    for (k, a) in keys {
                        merged.entry(k).or_default().merge(a);
                    }
                }
                let mut batch: Vec<WindowResult> = merged
                    .into_iter()
                    .map(|(k, agg)| WindowResult {
                        key: k.clone(),
                        window_start: start,
                        agg,
                        is_final: true,
                    })
                    .collect();
                batch.sort_unstable_by(|a, b| a.key.cmp(&b.key));
                out.extend(batch);
                start += spec.slide_ms;
                if out.len() >= max && start <= last_final {
                    // Stop here: windows from `start` on are emitted by the next call.
                    if start > self.next_open {
                        self.next_open = start;
                        self.moved = true;
                    }
                    self.drop_panes_before(spec.pane_of(self.next_open));
                    return out;
                }
            }
        }
        if last_final + spec.slide_ms > self.next_open {
            self.next_open = last_final + spec.slide_ms;
            self.moved = true;
        }
        self.drop_panes_before(spec.pane_of(self.next_open));
        out
    }

    /// Current (not final) results of the open windows holding a pane changed since the last call.
    pub fn early_updates(&mut self) -> Vec<WindowResult> {
        let spec = self.cfg.spec;
        let mut windows: BTreeSet<(i64, GroupKey)> = BTreeSet::new();
        for (pane, k) in self.early.drain() {
            for s in spec.windows_of(pane * spec.slide_ms) {
                if self.next_open == i64::MIN || s >= self.next_open {
                    windows.insert((s, k.clone()));
                }
            }
        }
        let mut out = Vec::with_capacity(windows.len());
        for (s, k) in windows {
            let from = spec.pane_of(s);
            let mut agg = Agg::default();
            for (_, keys) in self.panes.range(from..from + spec.panes()) {
                if let Some(a) = keys.get(&k) {
                    agg.merge(a);
                }
            }
            out.push(WindowResult {
                key: k,
                window_start: s,
                agg,
                is_final: false,
            });
        }
        out
    }

    /// The checkpoint to write when something was applied since the last one (it must be written
    /// in every transaction that processed records of this partition).
    pub fn checkpoint(&mut self) -> Option<Checkpoint> {
        if !std::mem::take(&mut self.moved) {
            return None;
        }
        Some(Checkpoint {
            replay_from: self
                .pane_first
                .values()
                .copied()
                .min()
                .unwrap_or(self.next_offset),
            next_offset: self.next_offset,
            next_open: self.next_open,
            marks: self.marks.clone(),
        })
    }
}

/// An event type's name, for tests and tools.
pub fn event_type_name(t: EventType) -> &'static str {
    t.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(t: i64, user: i64, product: i64, kind: EventType) -> EnrichedEvent {
        EnrichedEvent {
            event_id: format!("{t}-{user}-{product}"),
            event_time: t,
            event_type: kind,
            product_id: product,
            category_id: product % 3,
            category_code: format!("cat{}", product % 3),
            brand: if product % 2 == 0 {
                "acme".into()
            } else {
                String::new()
            },
            price: 1.25 + product as f64,
            currency: "USD".into(),
            quantity: 1 + (user % 3) as i32,
            user_id: user,
            user_session: format!("s{user}"),
            channel: None,
            source_system: "test".into(),
            product_known: true,
            product_name: "p".into(),
            catalog_price: None,
            user_known: true,
            user_country: "PL".into(),
            user_device: "web".into(),
            user_segment: "new".into(),
        }
    }

    fn cfg(size: i64, slide: i64, grace: i64, ooo: i64) -> WinConfig {
        WinConfig {
            spec: WindowSpec::hopping(size, slide).unwrap(),
            grace_ms: grace,
            out_of_order_ms: ooo,
        }
    }

    #[test]
    fn codecs_round_trip() {
        let k = GroupKey {
            dimension: Dimension::Brand,
            value: "a|b/é".into(),
            currency: "EUR".into(),
        };
        assert_eq!(GroupKey::decode(&k.to_bytes()), Some(k.clone()));
        let mut a = Agg::default();
        add_event(&mut a, &ev(5, 7, 3, EventType::Purchase));
        add_event(&mut a, &ev(6, 8, 3, EventType::View));
        let p = Repartitioned::Bundle(vec![
            (k.clone(), -3, a.clone()),
            (k.clone(), 4, Agg::default()),
        ]);
        assert_eq!(Repartitioned::decode(&p.encode()), Some(p));
        // Bundles built per partition decode to the partials routed there.
        let partials: Vec<_> = (0..50)
            .map(|i| {
                let key = GroupKey {
                    dimension: Dimension::Product,
                    value: i.to_string(),
                    currency: "USD".into(),
                };
                (key, i64::from(i % 3), a.clone())
            })
            .collect();
        let mut back = Vec::new();
        for (r, bytes) in bundles(partials.clone(), 4, 300) {
            let Some(Repartitioned::Bundle(entries)) = Repartitioned::decode(&bytes) else {
                panic!("a bundle")
            };
            assert!(entries.iter().all(|(k, _, _)| route(k, 4) == r));
            back.extend(entries);
        }
        back.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        let mut want = partials;
        want.sort_by(|x, y| (&x.0, x.1).cmp(&(&y.0, y.1)));
        assert_eq!(back, want);
        let cp = Checkpoint {
            replay_from: 3,
            next_offset: 9,
            next_open: -60,
            marks: vec![1, i64::MIN],
        };
        assert_eq!(Checkpoint::decode(&cp.encode()), Some(cp));
        let m = Repartitioned::Marker {
            partition: 4,
            watermark: -9,
            idle: true,
        };
        assert_eq!(Repartitioned::decode(&m.encode()), Some(m));
        assert_eq!(Repartitioned::decode(b"Bxx"), None);
        assert_eq!(Repartitioned::decode(b"bxx"), None);
        // Money sums past i64 cross the repartition topic exactly.
        let mut big = Agg::default();
        for _ in 0..2_000 {
            big.add(EventType::Purchase, 1e6, 10_000, 9);
        }
        assert!(big.revenue_micros > i128::from(i64::MAX));
        let p = Repartitioned::Bundle(vec![(k.clone(), 1, big)]);
        assert_eq!(Repartitioned::decode(&p.encode()), Some(p));
        // A bundle of the earlier format (tag B, money sums as i64) still reads.
        let mut old = vec![b'B'];
        old.extend_from_slice(&1_u32.to_le_bytes());
        let mut entry = Vec::new();
        encode_entry(&mut entry, &k, 2, &a);
        // Narrow the two i128 money sums (after the key, the pane and five i64) to i64.
        let money = 2 + k.to_bytes().len() + 8 + 5 * 8;
        old.extend_from_slice(&entry[..money]);
        old.extend_from_slice(&(a.revenue_micros as i64).to_le_bytes());
        old.extend_from_slice(&(a.price_micros as i64).to_le_bytes());
        old.extend_from_slice(&entry[money + 32..]);
        assert_eq!(
            Repartitioned::decode(&old),
            Some(Repartitioned::Bundle(vec![(k.clone(), 2, a.clone())]))
        );
        assert_eq!(Repartitioned::decode(b""), None);
        let pm = PartitionMark {
            max_time: 10,
            watermark: 5,
        };
        assert_eq!(PartitionMark::decode(&pm.encode()), Some(pm));
    }

    #[test]
    fn early_updates_cover_the_open_windows_of_changed_panes_only() {
        // Hopping 30 every 10, grace 0, two input partitions.
        let c = cfg(30, 10, 0, 0);
        let mut m = MergeState::new(c, 2);
        let k = GroupKey {
            dimension: Dimension::Product,
            value: "1".into(),
            currency: "USD".into(),
        };
        let mut a = Agg::default();
        add_event(&mut a, &ev(25, 1, 1, EventType::View));
        m.apply_partial(k.clone(), 2, &a, 1);
        let early = m.early_updates();
        // Pane 2 ([20,30)) is in the windows starting at 0, 10 and 20.
        let starts: Vec<i64> = early.iter().map(|w| w.window_start).collect();
        assert_eq!(starts, vec![0, 10, 20]);
        assert!(early.iter().all(|w| !w.is_final && w.agg.views == 1));
        assert!(m.early_updates().is_empty(), "nothing changed since");
        // Window [0,30) closes; a new event in pane 2 updates only the open windows.
        m.apply_marker(0, 30, 2);
        m.apply_marker(1, 30, 3);
        let finals = m.close();
        assert_eq!(finals.len(), 1);
        assert!(finals[0].is_final && finals[0].window_start == 0);
        m.apply_partial(k, 2, &a, 4);
        let starts: Vec<(i64, i64)> = m
            .early_updates()
            .iter()
            .map(|w| (w.window_start, w.agg.views))
            .collect();
        assert_eq!(starts, vec![(10, 2), (20, 2)]);
    }

    #[test]
    fn big_user_sets_are_split_and_merge_back() {
        let mut a = Agg::default();
        for u in 0..10 {
            add_event(&mut a, &ev(1, u, 1, EventType::Purchase));
        }
        let parts = split_users(a.clone(), 3);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|p| p.users.len() <= 3));
        let mut back = Agg::default();
        for p in &parts {
            back.merge(p);
        }
        assert_eq!(back, a);
        assert_eq!(split_users(a.clone(), 10), vec![a]);
    }

    #[test]
    fn late_is_decided_on_the_first_window_and_reported() {
        let c = cfg(60, 60, 10, 5);
        let mut s = PreStage::new(c);
        s.assign(0, None);
        s.observe(0, &ev(100, 1, 1, EventType::View)).unwrap();
        assert_eq!(s.mark(0).watermark, 95);
        // Window [60,120) closes at 130 > 95: on time.
        s.observe(0, &ev(61, 1, 1, EventType::View)).unwrap();
        s.observe(0, &ev(200, 1, 1, EventType::View)).unwrap();
        // wm 195 >= [60,120) + 10 = 130: late by 65.
        let late = s.observe(0, &ev(70, 1, 1, EventType::View)).unwrap_err();
        assert_eq!(
            late,
            Late {
                lateness_ms: 65,
                watermark: 195,
                window_start: 60,
                window_end: 120
            }
        );
        let d = s.drain();
        assert_eq!(d.marks, vec![(0, s.mark(0), false)]);
        s.advance(0, 1_000);
        assert_eq!(s.drain().marks, vec![(0, s.mark(0), true)]);
        // 3 on-time events x 5 dimensions, in panes 1 and 3.
        let total: i64 = d.partials.iter().map(|p| p.2.views).sum();
        assert_eq!(total, 15);
        s.rollback();
        assert_eq!(s.mark(0), PartitionMark::default());
    }

    #[test]
    fn idle_partitions_adopt_a_watermark_and_stage_two_waits_for_all() {
        let c = cfg(60, 60, 0, 0);
        let mut m = MergeState::new(c, 2);
        let k = GroupKey {
            dimension: Dimension::All,
            value: "all".into(),
            currency: "USD".into(),
        };
        let mut a = Agg::default();
        add_event(&mut a, &ev(10, 1, 1, EventType::View));
        m.apply_partial(k.clone(), 0, &a, 7);
        m.apply_marker(0, 500, 8);
        assert!(m.close().is_empty(), "partition 1 has not reported");
        assert_eq!(
            m.checkpoint(),
            Some(Checkpoint {
                replay_from: 7,
                next_offset: 9,
                next_open: i64::MIN,
                marks: vec![500, i64::MIN]
            })
        );
        assert_eq!(m.checkpoint(), None, "nothing applied since");
        m.apply_marker(1, 61, 9);
        let out = m.close();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].window_start, out[0].agg.views), (0, 1));
        // The pane is gone: nothing to replay.
        assert_eq!(
            m.checkpoint(),
            Some(Checkpoint {
                replay_from: 10,
                next_offset: 10,
                next_open: 60,
                marks: vec![500, 61]
            })
        );
        // A partial for a final window is counted as stale, not merged.
        m.apply_partial(k, 0, &a, 10);
        assert_eq!((m.stale, m.open_panes()), (1, 0));
    }

    /// Runs events (partition, event) through stage 1 in batches, ships partials/markers to
    /// `r` stage-2 states by key hash, with a changelog restore of stage 2 after every batch, and
    /// returns the final windows and the late events.
    fn pipeline(
        c: WinConfig,
        inputs: usize,
        r: usize,
        events: &[(i32, EnrichedEvent)],
        batch: usize,
        cap: usize,
    ) -> (BTreeMap<(i64, GroupKey), Agg>, Vec<EnrichedEvent>) {
        let mut pre = PreStage::new(c);
        for p in 0..inputs {
            pre.assign(p as i32, None);
        }
        let mut merges: Vec<MergeState> = (0..r).map(|_| MergeState::new(c, inputs)).collect();
        // The repartition partitions (offset = index) and stage 2's checkpoints.
        let mut logs: Vec<Vec<Vec<u8>>> = vec![Vec::new(); r];
        let mut checkpoints: Vec<Option<Checkpoint>> = vec![None; r];
        let mut finals = BTreeMap::new();
        let mut late = Vec::new();
        let apply =
            |m: &mut MergeState, bytes: &[u8], offset: i64| match Repartitioned::decode(bytes) {
                Some(Repartitioned::Bundle(entries)) => {
                    for (k, pane, agg) in entries {
                        m.apply_partial(k, pane, &agg, offset);
                    }
                }
                Some(Repartitioned::Marker {
                    partition,
                    watermark,
                    ..
                }) => m.apply_marker(partition, watermark, offset),
                None => panic!("undecodable repartition record"),
            };
        let mut ship = |pre: &mut PreStage,
                        merges: &mut Vec<MergeState>,
                        finals: &mut BTreeMap<(i64, GroupKey), Agg>| {
            let d = pre.drain();
            pre.commit();
            // Stage 1's transaction: bundles, then markers to every partition.
            for (to, bytes) in bundles(d.partials, r as i32, 2_000) {
                logs[to as usize].push(bytes);
            }
            for (p, mk, idle) in d.marks {
                let bytes = Repartitioned::Marker {
                    partition: p,
                    watermark: mk.watermark,
                    idle,
                }
                .encode();
                for log in logs.iter_mut() {
                    log.push(bytes.clone());
                }
            }
            // Stage 2 reads everything new, closes, checkpoints; then crashes and restores.
            for (i, m) in merges.iter_mut().enumerate() {
                let from = m.next_offset() as usize;
                for (o, bytes) in logs[i].iter().enumerate().skip(from) {
                    apply(m, bytes, o as i64);
                }
                for w in m.close_at_most(cap) {
                    assert!(finals.insert((w.window_start, w.key), w.agg).is_none());
                }
                if let Some(cp) = m.checkpoint() {
                    checkpoints[i] = Some(cp);
                }
                let mut fresh = match &checkpoints[i] {
                    Some(cp) => {
                        let mut f = MergeState::from_checkpoint(c, inputs, cp);
                        for o in cp.replay_from..cp.next_offset {
                            apply(&mut f, &logs[i][o as usize], o);
                        }
                        f
                    }
                    None => MergeState::new(c, inputs),
                };
                fresh.restored();
                assert_eq!(fresh.next_offset(), m.next_offset());
                assert_eq!(fresh.open_panes(), m.open_panes());
                *m = fresh;
            }
        };
        for (i, (p, e)) in events.iter().enumerate() {
            if let Err(_l) = pre.observe(*p, e) {
                late.push(e.clone());
            }
            if (i + 1) % batch == 0 {
                ship(&mut pre, &mut merges, &mut finals);
            }
        }
        ship(&mut pre, &mut merges, &mut finals);
        for p in 0..inputs {
            pre.advance(p as i32, i64::MAX / 4);
        }
        // Ticks until every final window is out (a capped close leaves some for the next).
        loop {
            let before = finals.len();
            ship(&mut pre, &mut merges, &mut finals);
            if finals.len() == before {
                break;
            }
        }
        (finals, late)
    }

    fn direct(c: WinConfig, events: &[EnrichedEvent]) -> BTreeMap<(i64, GroupKey), Agg> {
        let mut out: BTreeMap<(i64, GroupKey), Agg> = BTreeMap::new();
        for e in events {
            for s in c.spec.windows_of(e.event_time) {
                for k in GroupKey::of(e) {
                    add_event(out.entry((s, k)).or_default(), e);
                }
            }
        }
        out
    }

    fn kind(i: u8) -> EventType {
        EventType::ALL[usize::from(i % 4)]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// Through both stages, several partitions, batches and restores: the final windows are
        /// exactly the direct computation over the on-time events, late + on-time = all events,
        /// and any order within the out-of-orderness gives the same result.
        #[test]
        fn two_stages_equal_a_direct_computation(
            raw in proptest::collection::vec((0i32..3, 0i64..3_000, 0i64..20, 0i64..8, 0u8..4), 1..150),
            slide in prop::sample::select(vec![50i64, 100, 250]),
            panes in 1i64..5,
            grace in 0i64..300,
            batch in 1usize..40,
            r in 1usize..4,
            cap in prop::sample::select(vec![1usize, 7, usize::MAX]),
            seed in any::<u64>(),
        ) {
            let c = cfg(slide * panes, slide, grace, 0);
            let events: Vec<(i32, EnrichedEvent)> = raw
                .iter()
                .enumerate()
                .map(|(i, (p, t, u, pr, k))| {
                    let mut e = ev(*t, *u, *pr, kind(*k));
                    e.event_id = format!("e{i}");
                    (*p, e)
                })
                .collect();
            let (finals, late) = pipeline(c, 3, r, &events, batch, cap);
            let late_ids: HashSet<&str> = late.iter().map(|e| e.event_id.as_str()).collect();
            let on_time: Vec<EnrichedEvent> = events
                .iter()
                .map(|(_, e)| e.clone())
                .filter(|e| !late_ids.contains(e.event_id.as_str()))
                .collect();
            prop_assert_eq!(on_time.len() + late.len(), events.len());
            let expect = direct(c, &on_time);
            prop_assert_eq!(&finals, &expect);
            // Sums conserved: each on-time event counts once per window per dimension.
            let views: i64 = finals.values().map(|a| a.views + a.carts + a.removals + a.purchases).sum();
            prop_assert_eq!(views, on_time.len() as i64 * c.spec.panes() * 5);

            // With an out-of-orderness covering the whole input nothing is late, and any
            // arrival order gives the same windows.
            let c2 = cfg(slide * panes, slide, grace, 10_000);
            let (a, late_a) = pipeline(c2, 3, r, &events, batch, cap);
            let mut shuffled = events.clone();
            let mut x = seed;
            for i in (1..shuffled.len()).rev() {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (x >> 33) as usize % (i + 1));
            }
            let (b, late_b) = pipeline(c2, 3, r, &shuffled, batch, usize::MAX);
            prop_assert!(late_a.is_empty() && late_b.is_empty());
            prop_assert_eq!(&a, &b);
            let all: Vec<EnrichedEvent> = events.iter().map(|(_, e)| e.clone()).collect();
            prop_assert_eq!(&a, &direct(c2, &all));
        }

        /// An event is late exactly when its first window was final under its partition's
        /// watermark when it arrived.
        #[test]
        fn late_verdicts_follow_the_partition_watermark(
            times in proptest::collection::vec(0i64..5_000, 1..100),
            grace in 0i64..500,
            ooo in 0i64..500,
        ) {
            let c = cfg(100, 100, grace, ooo);
            let mut s = PreStage::new(c);
            let mut max = i64::MIN;
            for t in times {
                let wm = if max == i64::MIN { i64::MIN } else { max - ooo };
                let end = (t.div_euclid(100) + 1) * 100;
                let late = wm >= end + grace;
                prop_assert_eq!(s.observe(0, &ev(t, 1, 1, EventType::View)).is_err(), late);
                if !late {
                    max = max.max(t);
                }
            }
        }
    }
}
