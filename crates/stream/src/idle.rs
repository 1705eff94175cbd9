//! Idle means caught up: the one idleness rule of every stage.
//!
//! A partition counts as *idle* only when it has had no unread records for the idle timeout:
//! its consumed position has reached its end (the last stable offset in exactly-once mode, the
//! high watermark otherwise) and stayed there, and no record of it arrived, for that long. A
//! partition this process has simply not got to yet — a backlog behind other partitions, a slow
//! batch, a replay at full speed — is never idle, however long it waits: its records are unread.
//!
//! Positions and ends come from librdkafka's statistics (`app_offset` against `ls_offset` /
//! `hi_offset`, which step over transaction markers), sampled every second by the loop;
//! [`Progress`] keeps the rule itself free of I/O so it can be tested exhaustively.
//!
//! Why not "no record for the timeout" (wall-clock silence): when a consumer is behind, the
//! fetcher serves partitions unevenly; a partition with thousands of unread records can go
//! without a record for longer than any timeout while the others are read, be judged idle, adopt
//! the others' watermark, and then have its own in-order records judged late. Two replays of the
//! same file then disagree. Counting only partitions with nothing left to read removes that.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// One partition's position against its end, as sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Records not yet handed to the application (0: caught up).
    pub unread: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Part {
    /// Since when every sample has shown the partition caught up (`None`: not caught up, or no
    /// sample yet since it was assigned).
    caught_up_since: Option<Instant>,
    /// The last record of the partition handed to the processor.
    last_record: Option<Instant>,
    /// Unread records in the latest sample.
    unread: Option<i64>,
}

/// The progress of every partition a consumer owns; answers "is this partition idle?".
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// topic -> partition -> progress; looked up by `&str` on every record, without allocating.
    parts: HashMap<String, HashMap<i32, Part>>,
}

impl Progress {
    fn part(&self, topic: &str, partition: i32) -> Option<&Part> {
        self.parts.get(topic)?.get(&partition)
    }

    fn part_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Part> {
        self.parts.get_mut(topic)?.get_mut(&partition)
    }

    /// A partition was assigned: not caught up until a sample shows it.
    pub fn assign(&mut self, topic: &str, partition: i32) {
        self.parts
            .entry(topic.to_string())
            .or_default()
            .insert(partition, Part::default());
    }

    /// A partition was revoked.
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        if let Some(t) = self.parts.get_mut(topic) {
            t.remove(&partition);
        }
    }

    /// A record of the partition arrived at `now`: it had unread records until now.
    pub fn record(&mut self, topic: &str, partition: i32, now: Instant) {
        if let Some(p) = self.part_mut(topic, partition) {
            p.caught_up_since = None;
            p.last_record = Some(now);
        }
    }

    /// A statistics sample taken at `at`. Partitions missing from it keep their state.
    pub fn sample(&mut self, at: Instant, topic: &str, partition: i32, s: Sample) {
        if let Some(p) = self.part_mut(topic, partition) {
            p.unread = Some(s.unread);
            if s.unread > 0 {
                p.caught_up_since = None;
            } else if p.caught_up_since.is_none() {
                p.caught_up_since = Some(at);
            }
        }
    }

    /// True when the partition has had nothing to read for `timeout` at `now`: every sample
    /// for that long showed it caught up, and no record arrived in it.
    pub fn is_idle(&self, topic: &str, partition: i32, timeout: Duration, now: Instant) -> bool {
        let Some(p) = self.part(topic, partition) else {
            return false;
        };
        let long_enough = |t: Instant| now.saturating_duration_since(t) >= timeout;
        p.unread == Some(0)
            && p.caught_up_since.is_some_and(long_enough)
            && p.last_record.is_none_or(long_enough)
    }

    /// Which of `partitions` of `topic` are idle at `now` ([`Progress::is_idle`]): what a stage
    /// keeps from each sample for its next tick.
    pub fn idle_partitions(
        &self,
        topic: &str,
        partitions: impl IntoIterator<Item = i32>,
        timeout: Duration,
        now: Instant,
    ) -> HashSet<i32> {
        partitions
            .into_iter()
            .filter(|p| self.is_idle(topic, *p, timeout, now))
            .collect()
    }

    /// Unread records of the partition in the latest sample.
    pub fn unread(&self, topic: &str, partition: i32) -> Option<i64> {
        self.part(topic, partition).and_then(|p| p.unread)
    }

    /// True when every owned partition of `topic` is caught up in the latest sample (nothing
    /// left to read right now), and there is at least one.
    pub fn all_caught_up(&self, topic: &str) -> bool {
        self.parts.get(topic).is_some_and(|t| {
            !t.is_empty()
                && t.values()
                    .all(|p| p.unread == Some(0) && p.caught_up_since.is_some())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: &str = "in";

    #[test]
    fn idle_only_after_caught_up_for_the_timeout() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Progress::default();
        p.assign(T, 0);
        assert!(!p.is_idle(T, 0, ms(100), t0 + ms(10_000)), "no sample yet");
        p.sample(t0, T, 0, Sample { unread: 0 });
        assert!(!p.is_idle(T, 0, ms(100), t0 + ms(99)));
        assert!(p.is_idle(T, 0, ms(100), t0 + ms(100)));
        // A record resets it, also when a sample older than the record still says caught up.
        p.record(T, 0, t0 + ms(200));
        p.sample(t0 + ms(150), T, 0, Sample { unread: 0 });
        assert!(!p.is_idle(T, 0, ms(100), t0 + ms(260)));
        assert!(p.is_idle(T, 0, ms(100), t0 + ms(300)));
        assert!(!p.is_idle(T, 1, ms(100), t0 + ms(300)), "not assigned");
    }

    #[test]
    fn a_backlog_is_never_idle_however_long_it_waits() {
        let t0 = Instant::now();
        let mut p = Progress::default();
        p.assign(T, 0);
        p.assign(T, 1);
        p.sample(t0, T, 0, Sample { unread: 30_000 });
        p.sample(t0, T, 1, Sample { unread: 0 });
        let later = t0 + Duration::from_secs(3600);
        assert!(!p.is_idle(T, 0, Duration::from_millis(1), later));
        assert!(p.is_idle(T, 1, Duration::from_millis(1), later));
        assert_eq!(
            p.idle_partitions(T, [0, 1, 2], Duration::from_millis(1), later),
            HashSet::from([1])
        );
        assert!(!p.all_caught_up(T));
        p.sample(later, T, 0, Sample { unread: 0 });
        assert!(p.all_caught_up(T));
        assert!(!p.is_idle(T, 0, Duration::from_secs(1), later));
        p.revoke(T, 0);
        assert_eq!(p.unread(T, 0), None);
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Record,
        Sample(i64),
        Wait(u64),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            Just(Ev::Record),
            (0i64..3).prop_map(Ev::Sample),
            (0u64..500).prop_map(Ev::Wait),
        ]
    }

    proptest! {
        /// Whatever happens, a partition whose latest sample shows unread records is not idle,
        /// and an idle partition has been caught up in every sample and without records for the
        /// whole timeout.
        #[test]
        fn unread_records_are_never_idle(evs in proptest::collection::vec(ev(), 0..60), timeout in 0u64..400) {
            let timeout = Duration::from_millis(timeout);
            let t0 = Instant::now();
            let mut now = t0;
            let mut p = Progress::default();
            p.assign(T, 0);
            // Reference: time of the last record, of the last sample with unread records, and
            // of the first sample after both.
            let mut last_busy: Option<Instant> = None;
            let mut first_clean: Option<Instant> = None;
            let mut latest: Option<i64> = None;
            for e in evs {
                match e {
                    Ev::Record => {
                        p.record(T, 0, now);
                        last_busy = Some(now);
                        first_clean = None;
                    }
                    Ev::Sample(u) => {
                        p.sample(now, T, 0, Sample { unread: u });
                        latest = Some(u);
                        if u > 0 {
                            last_busy = Some(now);
                            first_clean = None;
                        } else if first_clean.is_none() {
                            first_clean = Some(now);
                        }
                    }
                    Ev::Wait(ms) => now += Duration::from_millis(ms),
                }
                let idle = p.is_idle(T, 0, timeout, now);
                if latest != Some(0) {
                    prop_assert!(!idle);
                }
                let want = latest == Some(0)
                    && first_clean.is_some_and(|c| now - c >= timeout)
                    && last_busy.is_none_or(|b| now - b >= timeout);
                prop_assert_eq!(idle, want);
            }
        }
    }
}
