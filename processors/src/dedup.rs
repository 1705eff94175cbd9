//! Deduplication by `event_id` over an event-time horizon, with bounded memory.
//!
//! One [`Dedup`] holds the ids seen on one input partition (events are keyed by session, so all
//! copies of an event meet on one partition). It remembers an id until the partition's event time
//! has moved [`Dedup::horizon_ms`] past it, and never more than `max_entries` ids (the oldest go
//! first). A duplicate arriving after its original was forgotten passes as new: the horizon is the
//! documented limit of the guarantee, and such events are counted as `beyond_horizon` when their
//! own event time is already outside it.
//!
//! Changes are tentative until [`Dedup::commit`]: [`Dedup::rollback`] forgets the ids inserted
//! since, so a batch whose transaction aborted leaves no trace and is judged the same way again.

use std::collections::{BTreeMap, HashMap};

/// Event times are grouped in buckets of this size for eviction.
const BUCKET_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First time seen (or forgotten): pass it on.
    New,
    /// Seen within the horizon: drop it.
    Duplicate,
    /// Older than the horizon: cannot be checked, passed on.
    BeyondHorizon,
}

#[derive(Debug)]
pub struct Dedup {
    horizon_ms: i64,
    max_entries: usize,
    seen: HashMap<String, i64>,
    by_bucket: BTreeMap<i64, Vec<String>>,
    max_time: i64,
    pending: Vec<String>,
}

impl Dedup {
    pub fn new(horizon_ms: i64, max_entries: usize) -> Self {
        Dedup {
            horizon_ms,
            max_entries: max_entries.max(1),
            seen: HashMap::new(),
            by_bucket: BTreeMap::new(),
            max_time: i64::MIN,
            pending: Vec::new(),
        }
    }

    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn cutoff(&self) -> i64 {
        self.max_time.saturating_sub(self.horizon_ms)
    }

    /// Judges one event and remembers it (tentatively, until [`Dedup::commit`]).
    pub fn observe(&mut self, event_id: &str, event_time: i64) -> Verdict {
        if self.seen.contains_key(event_id) {
            return Verdict::Duplicate;
        }
        if event_time < self.cutoff() {
            return Verdict::BeyondHorizon;
        }
        self.insert(event_id.to_string(), event_time);
        self.pending.push(event_id.to_string());
        Verdict::New
    }

    /// Remembers an id read back from the changelog (no verdict, not pending).
    pub fn restore(&mut self, event_id: String, event_time: i64) {
        if event_time >= self.cutoff() && !self.seen.contains_key(&event_id) {
            self.insert(event_id, event_time);
        }
    }

    fn insert(&mut self, id: String, time: i64) {
        self.max_time = self.max_time.max(time);
        self.by_bucket
            .entry(time.div_euclid(BUCKET_MS))
            .or_default()
            .push(id.clone());
        self.seen.insert(id, time);
        self.evict();
    }

    fn evict(&mut self) {
        let cutoff_bucket = self.cutoff().div_euclid(BUCKET_MS);
        while let Some((&bucket, _)) = self.by_bucket.first_key_value() {
            if bucket >= cutoff_bucket && self.seen.len() <= self.max_entries {
                break;
            }
            let (_, ids) = self.by_bucket.pop_first().expect("non-empty");
            for id in ids {
                self.seen.remove(&id);
            }
        }
    }

    /// The batch was committed downstream: its ids stay.
    pub fn commit(&mut self) {
        self.pending.clear();
    }

    /// The batch was aborted: forget its ids. (`max_time` may stay ahead; it only moves the
    /// horizon, which the replayed batch moves the same way again.)
    pub fn rollback(&mut self) {
        for id in self.pending.drain(..) {
            if let Some(t) = self.seen.remove(&id) {
                if let Some(ids) = self.by_bucket.get_mut(&t.div_euclid(BUCKET_MS)) {
                    ids.retain(|x| *x != id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 10_000;

    #[test]
    fn duplicates_within_the_horizon_are_dropped() {
        let mut d = Dedup::new(H, 1000);
        assert_eq!(d.observe("a", 1_000), Verdict::New);
        assert_eq!(d.observe("a", 1_000), Verdict::Duplicate);
        assert_eq!(d.observe("b", 5_000), Verdict::New);
        assert_eq!(
            d.observe("a", 9_000),
            Verdict::Duplicate,
            "the copy's time does not matter"
        );
        // Time moves past the horizon of "a": it is forgotten.
        assert_eq!(d.observe("c", 12_500), Verdict::New);
        assert_eq!(d.observe("a", 12_600), Verdict::New);
        // An event older than the horizon cannot be judged.
        assert_eq!(d.observe("z", 1_000), Verdict::BeyondHorizon);
    }

    #[test]
    fn memory_is_bounded() {
        let mut d = Dedup::new(i64::MAX / 4, 100);
        for i in 0..10_000 {
            d.observe(&format!("e{i}"), i * BUCKET_MS);
        }
        assert!(d.len() <= 100, "{}", d.len());
    }

    #[test]
    fn rollback_forgets_the_uncommitted_batch() {
        let mut d = Dedup::new(H, 1000);
        d.observe("a", 1);
        d.commit();
        d.observe("b", 2);
        d.rollback();
        assert_eq!(d.observe("a", 3), Verdict::Duplicate);
        assert_eq!(d.observe("b", 3), Verdict::New, "b was rolled back");
    }

    #[test]
    fn restored_state_judges_like_the_original() {
        let mut a = Dedup::new(H, 1000);
        let mut log = Vec::new();
        for (id, t) in [("x", 100), ("y", 200), ("z", 20_000)] {
            if a.observe(id, t) == Verdict::New {
                log.push((id.to_string(), t));
            }
        }
        a.commit();
        let mut b = Dedup::new(H, 1000);
        for (id, t) in log {
            b.restore(id, t);
        }
        for (id, t) in [("x", 20_001), ("y", 20_001), ("z", 20_001), ("w", 20_001)] {
            assert_eq!(a.observe(id, t), b.observe(id, t), "{id}");
        }
    }

    proptest! {
        /// Against a model that remembers everything: within the horizon the verdicts agree.
        #[test]
        fn agrees_with_an_unbounded_model(events in proptest::collection::vec((0u8..40, 0i64..50_000), 1..400)) {
            let mut d = Dedup::new(H, 1_000_000);
            let mut model: HashMap<String, i64> = HashMap::new();
            let mut max_time = i64::MIN;
            for (id, t) in events {
                let id = format!("e{id}");
                let v = d.observe(&id, t);
                let cutoff_bucket = max_time.saturating_sub(H).div_euclid(BUCKET_MS);
                match model.get(&id) {
                    // Remembered and not yet evicted: must be a duplicate.
                    Some(&first) if first.div_euclid(BUCKET_MS) > cutoff_bucket => prop_assert_eq!(v, Verdict::Duplicate),
                    // Never seen: never called a duplicate.
                    None => prop_assert_ne!(v, Verdict::Duplicate),
                    _ => {}
                }
                if v == Verdict::New {
                    model.insert(id, t);
                    max_time = max_time.max(t);
                }
            }
        }
    }
}
