//! From `kpi.windows` records to one value per base period and series.
//!
//! [`Aggregator`] takes final tumbling windows of one size (dividing the period) for the chosen
//! dimensions, keeps the latest record per window (a re-delivered window replaces itself instead
//! of counting twice), and closes a period once every partition that is not at its end has
//! delivered a window starting at or after the period's end: partitions are read interleaved, so
//! one partition's progress alone does not close a period. [`History`] holds the closed periods
//! of every series aligned on one period index, bounded to a capacity.

use std::collections::{BTreeMap, HashMap};

use cartstream_events::types::{Dimension, KpiWindow};

/// One period's figures of one series.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Obs {
    pub purchases: f64,
    pub units: f64,
    pub revenue: f64,
}

impl Obs {
    fn add(&mut self, o: &Obs) {
        self.purchases += o.purchases;
        self.units += o.units;
        self.revenue += o.revenue;
    }
}

/// The series key of a window: `category/<value>` or `product/<value>`.
pub fn series_key(dimension: Dimension, value: &str) -> Option<String> {
    match dimension {
        Dimension::Category => Some(format!("category/{value}")),
        Dimension::Product => Some(format!("product/{value}")),
        _ => None,
    }
}

/// What became of one record (the label of `cartstream_model_input_records_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Used,
    NotFinal,
    OtherDimension,
    OtherWindowSize,
    /// Its period was already closed.
    Late,
    Invalid,
}

impl Accepted {
    pub fn label(self) -> &'static str {
        match self {
            Accepted::Used => "used",
            Accepted::NotFinal => "not_final",
            Accepted::OtherDimension => "other_dimension",
            Accepted::OtherWindowSize => "other_window_size",
            Accepted::Late => "late",
            Accepted::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Default)]
struct PartitionProgress {
    max_start: Option<i64>,
    at_end: bool,
    /// End of input declared for this partition: no event before this time will come
    /// (`i64::MAX`: nothing at all).
    end: Option<i64>,
    /// With the marks clock: the lowest window start still to come, from the windower's
    /// watermark records combined over its writers (`None` until every writer has sent one).
    marked: Option<i64>,
}

impl PartitionProgress {
    /// The lowest window start an end-of-input mark still allows: after a mark at `T` only
    /// windows ending after `T` can come.
    fn end_bound(&self, window_size_ms: i64) -> Option<i64> {
        self.end.map(|t| {
            if t == i64::MAX {
                i64::MAX
            } else {
                // the first window start s (a multiple of the size) with s + size > t
                let s = t.saturating_sub(window_size_ms - 1);
                s.div_euclid(window_size_ms) * window_size_ms
                    + if s.rem_euclid(window_size_ms) > 0 {
                        window_size_ms
                    } else {
                        0
                    }
            }
        })
    }

    /// The lowest window start this partition may still deliver, when known: by the windows
    /// seen (a partition delivers its windows in order) or, with the marks clock, by the
    /// watermark records (the windows seen say nothing when several writers share the
    /// partition); an end-of-input mark raises it.
    fn bound(&self, window_size_ms: i64, marks: bool) -> Option<i64> {
        let seen = if marks { self.marked } else { self.max_start };
        match (seen, self.end_bound(window_size_ms)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Open periods being filled.
#[derive(Debug)]
pub struct Aggregator {
    period_ms: i64,
    window_size_ms: i64,
    products: bool,
    /// period index -> series -> window start -> latest figures
    open: BTreeMap<i64, HashMap<String, HashMap<i64, Obs>>>,
    partitions: HashMap<i32, PartitionProgress>,
    /// Periods below this index are closed.
    closed_below: Option<i64>,
    /// Close periods by the windower's watermark records, not by the windows seen
    /// ([`Aggregator::use_marks`]).
    marks: bool,
}

impl Aggregator {
    /// `window_size_ms` must divide `period_ms`; `products` also keeps product series.
    pub fn new(period_ms: i64, window_size_ms: i64, products: bool) -> Result<Self, String> {
        if period_ms <= 0 || window_size_ms <= 0 || period_ms % window_size_ms != 0 {
            return Err(format!(
                "window size {window_size_ms} ms must divide the period {period_ms} ms"
            ));
        }
        Ok(Aggregator {
            period_ms,
            window_size_ms,
            products,
            open: BTreeMap::new(),
            partitions: HashMap::new(),
            closed_below: None,
            marks: false,
        })
    }

    pub fn period_ms(&self) -> i64 {
        self.period_ms
    }

    /// The marks clock: a period closes once every partition's watermark records (the
    /// windower's, combined over its writers by the caller) or end-of-input marks have passed
    /// it. Each kpi.windows partition is written by every windower merge partition, so its
    /// newest window says nothing about a writer that is behind: closing by the windows seen
    /// turns that writer's windows into late ones. Without it (`false`, the default), the
    /// windows seen and the partitions' ends close periods, for a topic written without
    /// watermark records.
    pub fn use_marks(&mut self, marks: bool) {
        self.marks = marks;
    }

    /// A combined watermark for `partition` (marks clock): every window starting before
    /// `before` has been written to it. Only moves forward.
    pub fn watermark_mark(&mut self, partition: i32, before: i64) {
        let size = self.window_size_ms;
        // the first window start at or after `before`
        let next = before
            .div_euclid(size)
            .saturating_mul(size)
            .saturating_add(if before.rem_euclid(size) > 0 { size } else { 0 });
        let p = self.partitions.entry(partition).or_default();
        p.marked = Some(p.marked.map_or(next, |m| m.max(next)));
    }

    /// Takes one record read from `partition`.
    pub fn accept(&mut self, partition: i32, w: &KpiWindow) -> Accepted {
        if !w.is_final {
            return Accepted::NotFinal;
        }
        // Final windows of any dimension show how far this partition's event time got.
        let progress = self.partitions.entry(partition).or_default();
        progress.at_end = false;
        if progress.end == Some(i64::MAX) {
            // Data after "nothing more will come": a new bounded input was appended.
            progress.end = None;
        }
        progress.max_start = Some(
            progress
                .max_start
                .map_or(w.window_start, |m| m.max(w.window_start)),
        );
        let key = match w.dimension {
            Dimension::Category => series_key(w.dimension, &w.dimension_value),
            Dimension::Product if self.products => series_key(w.dimension, &w.dimension_value),
            _ => None,
        };
        let Some(key) = key else {
            return Accepted::OtherDimension;
        };
        if w.window_size_ms != self.window_size_ms || w.window_slide_ms != w.window_size_ms {
            return Accepted::OtherWindowSize;
        }
        let valid = w.window_start.rem_euclid(self.window_size_ms) == 0
            && w.purchases >= 0
            && w.units >= 0
            && w.revenue.is_finite()
            && w.revenue >= 0.0
            && !w.dimension_value.is_empty()
            && w.dimension_value.len() <= 256;
        if !valid {
            return Accepted::Invalid;
        }
        let idx = w.window_start.div_euclid(self.period_ms);
        if self.closed_below.is_some_and(|c| idx < c) {
            return Accepted::Late;
        }
        self.open
            .entry(idx)
            .or_default()
            .entry(key)
            .or_default()
            .insert(
                w.window_start,
                Obs {
                    purchases: w.purchases as f64,
                    units: w.units as f64,
                    revenue: w.revenue,
                },
            );
        Accepted::Used
    }

    /// Partitions that will be read: until each has delivered a final window or reached its
    /// end, no period closes (a partition not heard from yet may hold any period).
    pub fn expect_partitions(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.partitions.entry(*p).or_default();
        }
    }

    /// The partition has no more records for now: it no longer holds periods open (while
    /// another partition is being read, or until it has records again).
    pub fn partition_at_end(&mut self, partition: i32) {
        self.partitions.entry(partition).or_default().at_end = true;
    }

    /// The partition has unread records after all (its end moved since it was reached): it
    /// holds periods open again until it delivers them.
    pub fn partition_busy(&mut self, partition: i32) {
        self.partitions.entry(partition).or_default().at_end = false;
    }

    /// Partitions currently counted as at their end.
    pub fn partitions_at_end(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, p)| p.at_end)
            .map(|(k, _)| *k)
            .collect();
        v.sort_unstable();
        v
    }

    /// An end-of-input mark for the partition: no window ending at or before `end` will come on
    /// it any more (`i64::MAX`: nothing at all). Ends only move forward.
    pub fn end_of_input(&mut self, partition: i32, end: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.end = Some(p.end.map_or(end, |e| e.max(end)));
    }

    /// True when every partition declared its end of input.
    pub fn input_ended(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.values().all(|p| p.end.is_some())
    }

    /// Start of the first period not known to be complete.
    ///
    /// While some partition is being read, every partition bounds it by the lowest window it
    /// may still deliver: its newest window (windows come in order within a partition), or what
    /// its end-of-input mark allows; a partition not heard from yet holds everything. A
    /// partition at its end holds at its newest window too: its end may have moved since it was
    /// reached (records committed after it, perhaps in the transaction that carried the records
    /// of another partition read since), so it never lets a period close that its own unread
    /// windows may still belong to. Only when no partition is being read (every one at its end
    /// or ended by a mark) do the ends count: periods up to the newest window seen close (that
    /// one may still be incomplete), bounded by the marks.
    fn watermark(&self) -> Option<i64> {
        if self.marks {
            // every partition must have a bound; the lowest of them
            return self
                .partitions
                .values()
                .map(|p| p.bound(self.window_size_ms, true))
                .collect::<Option<Vec<i64>>>()?
                .into_iter()
                .min();
        }
        let mut bounds = Vec::new();
        let mut busy = false;
        let mut unknown = false;
        let mut newest_at_end: Option<i64> = None;
        for p in self.partitions.values() {
            if p.end.is_some() {
                bounds.extend(p.bound(self.window_size_ms, false));
                continue;
            }
            if p.at_end {
                newest_at_end = newest_at_end.max(p.max_start);
            } else {
                busy = true;
            }
            match p.max_start {
                Some(m) => bounds.push(m),
                None => unknown = true,
            }
        }
        if busy {
            return if unknown {
                None
            } else {
                bounds.into_iter().min()
            };
        }
        let marked = self
            .partitions
            .values()
            .filter_map(|p| p.end.and(p.bound(self.window_size_ms, false)))
            .min();
        match (marked, newest_at_end) {
            (Some(l), Some(n)) => Some(l.min(n)),
            (l, n) => l.or(n),
        }
    }

    /// True when closing now relies on partitions being at their end (none is being read):
    /// the caller should check first that none has records again
    /// ([`Aggregator::partition_busy`]).
    pub fn relies_on_ends(&self) -> bool {
        if self.marks {
            return false;
        }
        let reading = self
            .partitions
            .values()
            .any(|p| p.end.is_none() && !p.at_end);
        !reading
            && self
                .partitions
                .values()
                .any(|p| p.end.is_none() && p.at_end)
    }

    /// True when [`Aggregator::drain_closed`] would close a period now.
    pub fn would_close(&self) -> bool {
        match (self.watermark(), self.open.first_key_value()) {
            (Some(wm), Some((&idx, _))) => idx < wm.div_euclid(self.period_ms),
            _ => false,
        }
    }

    /// Closes and returns every complete period, oldest first, with the figures of each series.
    pub fn drain_closed(&mut self) -> Vec<(i64, HashMap<String, Obs>)> {
        let Some(wm) = self.watermark() else {
            return Vec::new();
        };
        let limit = wm.div_euclid(self.period_ms); // periods < limit are complete
        let mut out = Vec::new();
        while let Some((&idx, _)) = self.open.first_key_value() {
            if idx >= limit {
                break;
            }
            let Some((idx, series)) = self.open.pop_first() else {
                break;
            };
            let summed = series
                .into_iter()
                .map(|(k, windows)| {
                    let mut o = Obs::default();
                    windows.values().for_each(|w| o.add(w));
                    (k, o)
                })
                .collect();
            out.push((idx, summed));
        }
        // After "nothing more will come" only what was closed counts as closed: a bounded input
        // appended later starts after it.
        let limit = if wm == i64::MAX {
            out.last()
                .map_or(self.closed_below.unwrap_or(i64::MIN), |(i, _)| i + 1)
        } else {
            limit
        };
        if self.closed_below.is_none_or(|c| c < limit) {
            self.closed_below = Some(limit);
        }
        out
    }
}

/// The closed history of one series: purchases, revenue and average unit price (NaN without
/// purchases) per period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesData {
    pub purchases: Vec<f64>,
    pub revenue: Vec<f64>,
    pub price: Vec<f64>,
}

impl SeriesData {
    fn push(&mut self, o: &Obs) {
        self.purchases.push(o.purchases);
        self.revenue.push(o.revenue);
        self.price.push(if o.units > 0.0 {
            o.revenue / o.units
        } else {
            f64::NAN
        });
    }

    fn trim_front(&mut self, n: usize) {
        self.purchases.drain(..n);
        self.revenue.drain(..n);
        self.price.drain(..n);
    }
}

/// Closed periods of every series, aligned: position `i` of every series is period `first + i`.
#[derive(Debug, Clone)]
pub struct History {
    pub period_ms: i64,
    pub first: i64,
    pub len: usize,
    pub capacity: usize,
    pub series: BTreeMap<String, SeriesData>,
}

impl History {
    pub fn new(period_ms: i64, capacity: usize) -> Self {
        History {
            period_ms,
            first: 0,
            len: 0,
            capacity: capacity.max(1),
            series: BTreeMap::new(),
        }
    }

    /// Index of the next period to be pushed.
    pub fn next_index(&self) -> i64 {
        self.first + self.len as i64
    }

    /// Appends closed period `idx`; missing periods in between are filled with zeros (nothing was
    /// sold), series absent from `obs` get zero, new series get zeros for the past. Periods older
    /// than the last one are ignored (returns false).
    pub fn push(&mut self, idx: i64, obs: &HashMap<String, Obs>) -> bool {
        if self.len == 0 {
            self.first = idx;
        } else if idx < self.next_index() {
            return false;
        }
        let zero = Obs::default();
        // A gap longer than the capacity restarts the history at `idx`.
        let gap = (idx - self.next_index()).max(0) as usize;
        if gap >= self.capacity {
            self.series.clear();
            self.first = idx;
            self.len = 0;
        } else {
            for _ in 0..gap {
                for s in self.series.values_mut() {
                    s.push(&zero);
                }
                self.len += 1;
            }
        }
        for k in obs.keys() {
            if !self.series.contains_key(k) {
                let mut s = SeriesData::default();
                for _ in 0..self.len {
                    s.push(&zero);
                }
                self.series.insert(k.clone(), s);
            }
        }
        for (k, s) in self.series.iter_mut() {
            s.push(obs.get(k).unwrap_or(&zero));
        }
        self.len += 1;
        if self.len > self.capacity + 64 {
            let excess = self.len - self.capacity;
            self.series.values_mut().for_each(|s| s.trim_front(excess));
            self.first += excess as i64;
            self.len -= excess;
        }
        true
    }

    /// Absolute period index of position `i`.
    pub fn index_of(&self, i: usize) -> i64 {
        self.first + i as i64
    }

    pub fn period_start_ms(&self, idx: i64) -> i64 {
        idx * self.period_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn window(dim: Dimension, value: &str, start: i64, size: i64, purchases: i64) -> KpiWindow {
        KpiWindow {
            window_start: start,
            window_end: start + size,
            window_size_ms: size,
            window_slide_ms: size,
            dimension: dim,
            dimension_value: value.into(),
            views: 10 * purchases,
            carts: 2 * purchases,
            removals: 0,
            purchases,
            units: purchases,
            revenue: 10.0 * purchases as f64,
            currency: "USD".into(),
            avg_price: Some(10.0),
            conversion_rate: None,
            distinct_users: purchases,
            is_final: true,
            emitted_at: start + size,
        }
    }

    #[test]
    fn sub_period_windows_sum_and_redeliveries_replace() {
        let mut a = Aggregator::new(60_000, 10_000, false).unwrap();
        for i in 0..6 {
            assert_eq!(
                a.accept(
                    0,
                    &window(Dimension::Category, "toys", i * 10_000, 10_000, 2)
                ),
                Accepted::Used
            );
        }
        // the same window again (a replay) replaces itself
        assert_eq!(
            a.accept(0, &window(Dimension::Category, "toys", 0, 10_000, 2)),
            Accepted::Used
        );
        assert!(a.drain_closed().is_empty(), "period 0 not complete yet");
        a.accept(0, &window(Dimension::Category, "toys", 60_000, 10_000, 1));
        let closed = a.drain_closed();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0, 0);
        assert_eq!(closed[0].1["category/toys"].purchases, 12.0);
        assert_eq!(closed[0].1["category/toys"].revenue, 120.0);
        // a record of a closed period is late
        assert_eq!(
            a.accept(0, &window(Dimension::Category, "toys", 0, 10_000, 2)),
            Accepted::Late
        );
    }

    #[test]
    fn filters_by_dimension_size_and_finality() {
        let mut a = Aggregator::new(60_000, 60_000, false).unwrap();
        assert_eq!(
            a.accept(0, &window(Dimension::Brand, "x", 0, 60_000, 1)),
            Accepted::OtherDimension
        );
        assert_eq!(
            a.accept(0, &window(Dimension::Product, "7", 0, 60_000, 1)),
            Accepted::OtherDimension
        );
        assert_eq!(
            a.accept(0, &window(Dimension::Category, "x", 0, 30_000, 1)),
            Accepted::OtherWindowSize
        );
        let mut early = window(Dimension::Category, "x", 0, 60_000, 1);
        early.is_final = false;
        assert_eq!(a.accept(0, &early), Accepted::NotFinal);
        let mut bad = window(Dimension::Category, "x", 0, 60_000, 1);
        bad.revenue = f64::NAN;
        assert_eq!(a.accept(0, &bad), Accepted::Invalid);
        assert!(Aggregator::new(60_000, 7_000, false).is_err());
        let mut p = Aggregator::new(60_000, 60_000, true).unwrap();
        assert_eq!(
            p.accept(0, &window(Dimension::Product, "7", 0, 60_000, 1)),
            Accepted::Used
        );
    }

    #[test]
    fn a_lagging_partition_holds_periods_open_until_it_ends() {
        let mut a = Aggregator::new(60_000, 60_000, false).unwrap();
        a.accept(0, &window(Dimension::Category, "a", 0, 60_000, 1));
        a.accept(1, &window(Dimension::Category, "b", 0, 60_000, 1));
        a.accept(0, &window(Dimension::Category, "a", 60_000, 60_000, 1));
        a.accept(0, &window(Dimension::Category, "a", 120_000, 60_000, 1));
        assert!(
            a.drain_closed().is_empty(),
            "partition 1 is still at period 0"
        );
        a.partition_at_end(1);
        assert!(
            a.drain_closed().is_empty(),
            "at its end, partition 1 still holds at its newest window while 0 is read"
        );
        a.partition_at_end(0);
        assert!(a.relies_on_ends());
        let closed = a.drain_closed();
        assert_eq!(closed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(closed[0].1.len(), 2);
    }

    #[test]
    fn an_expected_partition_not_heard_from_holds_every_period() {
        let mut a = Aggregator::new(60_000, 60_000, false).unwrap();
        a.expect_partitions(&[0, 1, 2]);
        a.accept(0, &window(Dimension::Category, "a", 0, 60_000, 1));
        a.accept(0, &window(Dimension::Category, "a", 60_000, 60_000, 1));
        assert!(a.drain_closed().is_empty());
        a.partition_at_end(2); // empty so far
        a.accept(1, &window(Dimension::Category, "b", 60_000, 60_000, 1));
        assert!(
            a.drain_closed().is_empty(),
            "an empty partition at its end may get records again: it holds while others are read"
        );
        a.partition_at_end(0);
        a.partition_at_end(1);
        assert_eq!(
            a.drain_closed().len(),
            1,
            "period 0 closes once every partition is at its end"
        );
    }

    #[test]
    fn an_end_reached_before_records_of_another_partition_never_closes_its_periods() {
        // Partition 0 reached its end at period 0; partition 1 then delivers a later period
        // (perhaps of a transaction that also wrote period-0 windows to partition 0, unread).
        let mut a = Aggregator::new(60_000, 60_000, false).unwrap();
        a.expect_partitions(&[0, 1]);
        a.accept(0, &window(Dimension::Category, "a", 0, 60_000, 1));
        a.accept(1, &window(Dimension::Category, "b", 0, 60_000, 1));
        a.partition_at_end(0);
        a.accept(1, &window(Dimension::Category, "b", 60_000, 60_000, 1));
        assert!(!a.would_close(), "partition 0 holds at its newest window");
        assert!(!a.relies_on_ends());
        // both at their end: closing relies on the ends, which the caller checks first
        a.partition_at_end(1);
        assert!(a.would_close() && a.relies_on_ends());
        assert_eq!(a.partitions_at_end(), vec![0, 1]);
        a.partition_busy(0);
        assert!(!a.would_close(), "partition 0 had records again");
        assert!(a.drain_closed().is_empty());
        // its record of period 0 is not late
        assert_eq!(
            a.accept(0, &window(Dimension::Category, "a", 0, 60_000, 2)),
            Accepted::Used
        );
    }

    #[test]
    fn with_the_marks_clock_a_writer_behind_loses_no_window() {
        // One kpi.windows partition, two windower writers: A is at period 2 while B still
        // writes period 0. By the windows seen, period 0 and 1 would close and B's window be
        // late; by the marks, nothing closes until both writers' marks pass.
        const P: i64 = 3_600_000;
        let mut by_windows = Aggregator::new(P, 60_000, false).unwrap();
        let mut by_marks = Aggregator::new(P, 60_000, false).unwrap();
        by_marks.use_marks(true);
        for a in [&mut by_windows, &mut by_marks] {
            a.expect_partitions(&[0]);
            a.accept(0, &window(Dimension::Category, "a", 2 * P, 60_000, 1));
            a.partition_at_end(0);
        }
        // the windows rule closes periods 0 and 1 (empty so far)
        assert!(by_windows.drain_closed().is_empty());
        assert!(
            by_marks.drain_closed().is_empty(),
            "no mark yet: nothing closes"
        );
        let late = window(Dimension::Category, "b", 0, 60_000, 3);
        assert_eq!(by_windows.accept(0, &late), Accepted::Late);
        assert_eq!(by_marks.accept(0, &late), Accepted::Used);
        // the combined mark (the lowest writer's) passes period 0 only
        by_marks.watermark_mark(0, P + 60_000);
        let closed = by_marks.drain_closed();
        assert_eq!(closed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0]);
        assert_eq!(closed[0].1["category/b"].purchases, 3.0);
        // marks only move forward; an end-of-input mark closes the rest
        by_marks.watermark_mark(0, 0);
        assert!(by_marks.drain_closed().is_empty());
        by_marks.end_of_input(0, i64::MAX);
        let closed = by_marks.drain_closed();
        assert_eq!(closed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn end_of_input_closes_what_the_mark_allows() {
        let mut a = Aggregator::new(3_600_000, 60_000, false).unwrap();
        a.expect_partitions(&[0, 1, 2]);
        for m in 0..150 {
            a.accept(0, &window(Dimension::Category, "a", m * 60_000, 60_000, 1));
        }
        a.accept(1, &window(Dimension::Category, "b", 60_000, 60_000, 1));
        // partition 2 never delivers: only its mark lets anything close
        assert!(a.drain_closed().is_empty());
        a.end_of_input(2, i64::MAX);
        assert!(!a.input_ended());
        // partition 1 declares its end at 2 h: period 0 and 1 can close, not period 2 (partition
        // 0 is still being read at minute 149)
        a.end_of_input(1, 2 * 3_600_000);
        let closed: Vec<i64> = a.drain_closed().iter().map(|c| c.0).collect();
        assert_eq!(closed, vec![0, 1]);
        a.end_of_input(0, i64::MAX);
        a.end_of_input(1, i64::MAX);
        assert!(a.input_ended());
        let closed = a.drain_closed();
        assert_eq!(closed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![2]);
        assert_eq!(
            closed[0].1["category/a"].purchases, 30.0,
            "the newest period too"
        );
        // a new input appended after the end: later periods are taken
        assert_eq!(
            a.accept(
                0,
                &window(Dimension::Category, "a", 3 * 3_600_000, 60_000, 1)
            ),
            Accepted::Used
        );
        assert!(!a.input_ended());
    }

    proptest::proptest! {
        /// Whatever the interleaving of partitions, every used window lands in exactly one closed
        /// period: the sums over closed periods equal the sums of the windows sent.
        #[test]
        fn interleaving_never_loses_or_double_counts(order in proptest::collection::vec(0usize..3, 1..200)) {
            let mut a = Aggregator::new(60_000, 20_000, false).unwrap();
            a.expect_partitions(&[0, 1, 2]);
            // partition p carries category p; each has 12 windows (4 periods) in order
            let mut next = [0i64; 3];
            let mut sent = 0.0;
            let mut got = 0.0;
            for p in order.into_iter().chain((0..3).flat_map(|p| std::iter::repeat_n(p, 12))) {
                if next[p] >= 12 {
                    continue;
                }
                let w = window(Dimension::Category, &format!("c{p}"), next[p] * 20_000, 20_000, 1 + next[p]);
                next[p] += 1;
                proptest::prop_assert_eq!(a.accept(p as i32, &w), Accepted::Used);
                sent += w.purchases as f64;
                got += a.drain_closed().iter().flat_map(|(_, m)| m.values()).map(|o| o.purchases).sum::<f64>();
            }
            for p in 0..3 {
                a.partition_at_end(p);
            }
            got += a.drain_closed().iter().flat_map(|(_, m)| m.values()).map(|o| o.purchases).sum::<f64>();
            // the newest period stays open until later windows arrive: 3 x (10 + 11 + 12)
            proptest::prop_assert_eq!(sent - got, 99.0);
        }
    }

    #[test]
    fn history_aligns_fills_gaps_and_is_bounded() {
        let mut h = History::new(3_600_000, 4);
        let obs = |k: &str, p: f64| {
            HashMap::from([(
                k.to_string(),
                Obs {
                    purchases: p,
                    units: p,
                    revenue: 2.0 * p,
                },
            )])
        };
        assert!(h.push(10, &obs("a", 1.0)));
        assert!(h.push(12, &obs("b", 3.0)));
        assert!(!h.push(11, &obs("a", 9.0)), "older than the last period");
        assert_eq!(h.len, 3);
        assert_eq!(h.series["a"].purchases, vec![1.0, 0.0, 0.0]);
        assert_eq!(h.series["b"].purchases, vec![0.0, 0.0, 3.0]);
        assert_eq!(h.series["b"].price[2], 2.0);
        assert!(h.series["b"].price[0].is_nan());
        for i in 13..100 {
            h.push(i, &obs("a", i as f64));
        }
        assert!(h.len <= 4 + 64);
        assert_eq!(h.next_index(), 100);
        assert_eq!(*h.series["a"].purchases.last().unwrap(), 99.0);
    }
}
