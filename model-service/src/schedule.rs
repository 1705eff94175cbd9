//! When to retrain, in event time: a pure function of the newest history and the service's
//! position in its input ([`due`]).
//!
//! Every period count here is event time: period indices of the history (the newest closed
//! period, the champion's training range end, the last attempt), never the wall clock. So a
//! year read in a minute and a year lived in a year take the same decisions at the same
//! history, and a backlog read at full speed cannot burn the cooldown or the schedule.
//!
//! Rules, in order:
//! 1. `end_of_input`: every partition declared its end of input and the history moved since the
//!    last end-of-input training: train once on everything (whatever the cooldown). The
//!    bounded input is complete, so this model is the rebuild of the replay (what `train` over
//!    the same topic gives).
//! 2. Nothing while the service is catching up (a partition that has not reached its end for
//!    the idle timeout: a backlog, see [`CatchUp`]): a challenger trained then would be
//!    outdated by the records behind it. The triggers below are evaluated once it is caught up
//!    (reading at the head, whether the topic is quiet or busy), on the newest history.
//! 3. Nothing within `cooldown_periods` of the last attempt.
//! 4. `initial` (no champion and enough history), `error` (live sMAPE of a target above the
//!    threshold over a full live window), `drift` (a feature's PSI above the threshold over a
//!    full drift window), `schedule` (the champion's training data ends `retrain_every_periods`
//!    or more before the newest period, and no scheduled attempt was made within that many
//!    periods).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// The trigger labels.
pub const INITIAL: &str = "initial";
pub const ERROR: &str = "error";
pub const DRIFT: &str = "drift";
pub const SCHEDULE: &str = "schedule";
pub const END_OF_INPUT: &str = "end_of_input";

/// Settings of [`due`] (from [`crate::monitor::MonitorConfig`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub cooldown_periods: i64,
    /// 0: no scheduled retraining.
    pub retrain_every_periods: i64,
    pub error_threshold: f64,
    pub psi_threshold: f64,
}

/// What [`due`] looks at. Period indices are absolute (`epoch ms / period ms`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct State {
    /// Index of the period after the newest closed one (the history's next index).
    pub now: i64,
    /// Periods in the history, and how many a training needs.
    pub history_len: usize,
    pub min_history: usize,
    /// Nothing unread on any partition for the idle timeout.
    pub caught_up: bool,
    /// Every partition declared its end of input.
    pub input_ended: bool,
    /// `now` at the last end-of-input training, if any.
    pub end_trained_at: Option<i64>,
    /// `now` at the last attempt (any trigger).
    pub last_attempt: Option<i64>,
    /// The champion's training range end as a period index (exclusive), if there is a champion.
    pub champion_trained_to: Option<i64>,
    /// `now` at the last scheduled attempt.
    pub schedule_from: Option<i64>,
    /// Live window full, and its highest sMAPE.
    pub live_full: bool,
    pub max_smape: Option<f64>,
    /// Drift window full, and its highest PSI.
    pub psi_full: bool,
    pub max_psi: Option<f64>,
}

/// The retrain due now, if any.
pub fn due(s: &State, p: &Policy) -> Option<&'static str> {
    let enough = s.history_len >= s.min_history;
    if s.input_ended && enough && s.end_trained_at != Some(s.now) {
        return Some(END_OF_INPUT);
    }
    if !s.caught_up {
        return None;
    }
    if s.last_attempt
        .is_some_and(|a| s.now - a < p.cooldown_periods)
    {
        return None;
    }
    let Some(trained_to) = s.champion_trained_to else {
        return enough.then_some(INITIAL);
    };
    if s.live_full && s.max_smape.is_some_and(|e| e > p.error_threshold) {
        return Some(ERROR);
    }
    if s.psi_full && s.max_psi.is_some_and(|v| v > p.psi_threshold) {
        return Some(DRIFT);
    }
    let every = p.retrain_every_periods;
    if every > 0
        && s.now - trained_to >= every
        && s.schedule_from.is_none_or(|f| s.now - f >= every)
    {
        return Some(SCHEDULE);
    }
    None
}

/// Whether the service reads at the head of kpi.windows (caught up), from when each partition
/// last reached its end. Pure: the caller supplies the clock and the broker's answer.
///
/// A partition reading a backlog does not reach its end until the backlog is read; one at the
/// head reaches it after every fetch, however busy the topic. So the service is caught up once
/// every partition has kept reaching its end (none went `idle` without) for `idle`, and a
/// broker check made while all were at their end found nothing unread; it is no longer caught
/// up as soon as one partition goes `idle` without reaching its end (a backlog again). A quiet
/// topic and a live one that never pauses are both caught up; a backlog, however it is split
/// across partitions, is not.
#[derive(Debug, Clone)]
pub struct CatchUp {
    partitions: Vec<i32>,
    idle: Duration,
    /// Partitions with nothing fetched since they last reached their end.
    at_end: HashSet<i32>,
    last_end: HashMap<i32, Instant>,
    current_since: Option<Instant>,
    last_check: Option<Instant>,
    confirmed: bool,
}

impl CatchUp {
    pub fn new(partitions: &[i32], idle: Duration) -> Self {
        Self {
            partitions: partitions.to_vec(),
            idle,
            at_end: HashSet::new(),
            last_end: HashMap::new(),
            current_since: None,
            last_check: None,
            confirmed: false,
        }
    }

    /// Partition `p` reached its end (the consumer's end-of-partition event).
    pub fn reached_end(&mut self, p: i32, now: Instant) {
        self.at_end.insert(p);
        self.last_end.insert(p, now);
    }

    /// A record of partition `p` was read: it is no longer at its end.
    pub fn read(&mut self, p: i32) {
        self.at_end.remove(&p);
    }

    /// True when every partition is at its end right now.
    pub fn all_at_end(&self) -> bool {
        self.partitions.iter().all(|p| self.at_end.contains(p))
    }

    /// Re-judges after a poll.
    pub fn update(&mut self, now: Instant) {
        let current = self.partitions.iter().all(|p| {
            self.at_end.contains(p)
                || self
                    .last_end
                    .get(p)
                    .is_some_and(|t| now.saturating_duration_since(*t) < self.idle)
        });
        if current {
            self.current_since.get_or_insert(now);
        } else {
            self.current_since = None;
            self.confirmed = false;
        }
    }

    /// True when the broker should be asked now: every partition current for `idle` and all at
    /// their end, not yet confirmed, and no check in the last `idle`.
    pub fn wants_check(&self, now: Instant) -> bool {
        !self.confirmed
            && self.all_at_end()
            && self
                .current_since
                .is_some_and(|s| now.saturating_duration_since(s) >= self.idle)
            && self
                .last_check
                .is_none_or(|c| now.saturating_duration_since(c) >= self.idle)
    }

    /// The broker's answer: `nothing_unread` on every partition.
    pub fn checked(&mut self, nothing_unread: bool, now: Instant) {
        self.last_check = Some(now);
        self.confirmed = nothing_unread && self.current_since.is_some();
    }

    pub fn caught_up(&self) -> bool {
        self.confirmed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drives a [`CatchUp`] over 3 partitions in 10 ms steps: `fetch(step)` says which
    /// partitions get records in that step (they leave their end and reach it again at the
    /// step's end unless `backlog(step, p)` keeps them reading). Returns the steps caught up.
    fn drive(
        steps: u32,
        fetch: impl Fn(u32) -> Vec<i32>,
        backlog: impl Fn(u32, i32) -> bool,
    ) -> Vec<bool> {
        let t0 = Instant::now();
        let mut c = CatchUp::new(&[0, 1, 2], Duration::from_millis(200));
        let mut at_end = HashSet::new();
        let mut out = Vec::new();
        for step in 0..steps {
            let now = t0 + Duration::from_millis(10 * u64::from(step));
            for p in fetch(step) {
                at_end.remove(&p);
                c.read(p);
            }
            for p in 0..3 {
                if !at_end.contains(&p) && !backlog(step, p) {
                    at_end.insert(p);
                    c.reached_end(p, now);
                }
            }
            // the broker agrees whenever all are at their end
            let all = at_end.len() == 3;
            c.update(now);
            if c.wants_check(now) {
                c.checked(all, now);
            }
            out.push(c.caught_up());
        }
        out
    }

    #[test]
    fn a_quiet_topic_is_caught_up_after_the_idle_timeout() {
        let up = drive(100, |_| vec![], |_, _| false);
        assert!(!up[10], "not before the idle timeout");
        assert!(up[25..].iter().all(|u| *u));
    }

    #[test]
    fn a_busy_live_topic_that_never_pauses_is_caught_up() {
        // every partition gets records in every step, and reads them at once
        let up = drive(200, |_| vec![0, 1, 2], |_, _| false);
        assert!(up[50..].iter().all(|u| *u), "live traffic is caught up");
    }

    #[test]
    fn a_backlog_on_one_partition_is_never_caught_up_and_ends_it() {
        // partition 2 reads a backlog from step 0 to 150; the others are idle
        let up = drive(300, |_| vec![], |s, p| p == 2 && s < 150);
        assert!(up[..150].iter().all(|u| !*u), "a backlog is not caught up");
        assert!(up[190..].iter().all(|u| *u), "caught up once it is read");
        // caught up, then a backlog for 50 steps (500 ms > idle): no longer caught up
        let up = drive(
            300,
            |s| if s == 100 { vec![1] } else { vec![] },
            |s, p| p == 1 && (100..150).contains(&s),
        );
        assert!(up[90] && !up[140] && up[200]);
    }

    #[test]
    fn a_failed_broker_check_is_repeated_after_the_idle_timeout() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut c = CatchUp::new(&[0], Duration::from_millis(100));
        c.reached_end(0, ms(0));
        c.update(ms(0));
        assert!(!c.wants_check(ms(50)));
        c.update(ms(100));
        assert!(c.wants_check(ms(100)));
        c.checked(false, ms(100));
        assert!(!c.caught_up());
        assert!(!c.wants_check(ms(150)), "not again at once");
        assert!(c.wants_check(ms(200)));
        c.checked(true, ms(200));
        assert!(c.caught_up());
    }

    fn policy() -> Policy {
        Policy {
            cooldown_periods: 6,
            retrain_every_periods: 168,
            error_threshold: 0.35,
            psi_threshold: 0.25,
        }
    }

    fn base(now: i64) -> State {
        State {
            now,
            history_len: 1000,
            min_history: 500,
            caught_up: true,
            ..State::default()
        }
    }

    #[test]
    fn rules_by_hand() {
        let p = policy();
        // no champion: initial once there is enough history, only when caught up
        assert_eq!(due(&base(100), &p), Some(INITIAL));
        assert_eq!(
            due(
                &State {
                    history_len: 499,
                    ..base(100)
                },
                &p
            ),
            None
        );
        assert_eq!(
            due(
                &State {
                    caught_up: false,
                    ..base(100)
                },
                &p
            ),
            None
        );
        // a champion trained to 100: the schedule at 268, not 267
        let champ = State {
            champion_trained_to: Some(100),
            ..base(267)
        };
        assert_eq!(due(&champ, &p), None);
        assert_eq!(due(&State { now: 268, ..champ }, &p), Some(SCHEDULE));
        // a rejected scheduled attempt at 268 waits a whole schedule period again
        let tried = State {
            now: 300,
            schedule_from: Some(268),
            last_attempt: Some(268),
            ..champ
        };
        assert_eq!(due(&tried, &p), None);
        assert_eq!(due(&State { now: 436, ..tried }, &p), Some(SCHEDULE));
        // error and drift need full windows, and respect the cooldown
        let err = State {
            live_full: true,
            max_smape: Some(0.5),
            ..champ
        };
        assert_eq!(due(&State { now: 150, ..err }, &p), Some(ERROR));
        assert_eq!(
            due(
                &State {
                    now: 150,
                    last_attempt: Some(145),
                    ..err
                },
                &p
            ),
            None
        );
        assert_eq!(
            due(
                &State {
                    now: 150,
                    last_attempt: Some(144),
                    ..err
                },
                &p
            ),
            Some(ERROR)
        );
        assert_eq!(
            due(
                &State {
                    now: 150,
                    live_full: false,
                    ..err
                },
                &p
            ),
            None
        );
        let drift = State {
            now: 150,
            psi_full: true,
            max_psi: Some(0.3),
            ..champ
        };
        assert_eq!(due(&drift, &p), Some(DRIFT));
        // the end of input: once per history, whatever the cooldown or catching up
        let ended = State {
            input_ended: true,
            caught_up: false,
            last_attempt: Some(150),
            ..drift
        };
        assert_eq!(due(&ended, &p), Some(END_OF_INPUT));
        assert_eq!(
            due(
                &State {
                    end_trained_at: Some(150),
                    ..ended
                },
                &p
            ),
            None,
            "catching up again after it: nothing"
        );
        assert_eq!(
            due(
                &State {
                    end_trained_at: Some(149),
                    ..ended
                },
                &p
            ),
            Some(END_OF_INPUT),
            "the history moved since"
        );
    }

    /// A service reading a backlog: `caught_up` is false for every period but the last.
    fn attempts(
        periods: i64,
        caught_up_at: &dyn Fn(i64) -> bool,
        p: &Policy,
    ) -> Vec<(i64, &'static str)> {
        let mut s = State {
            min_history: 200,
            ..State::default()
        };
        let mut out = Vec::new();
        for now in 1..=periods {
            s.now = now;
            s.history_len = now as usize;
            s.caught_up = caught_up_at(now);
            if let Some(t) = due(&s, p) {
                out.push((now, t));
                s.last_attempt = Some(now);
                if t == SCHEDULE {
                    s.schedule_from = Some(now);
                }
                // every attempt is promoted here: the champion is trained to now
                s.champion_trained_to = Some(now);
            }
        }
        out
    }

    #[test]
    fn a_backlog_trains_once_on_the_newest_history() {
        let p = policy();
        let year = 24 * 365;
        let a = attempts(year, &|now| now == year, &p);
        assert_eq!(a, vec![(year, INITIAL)]);
        // paced: the same year lived period by period trains on schedule, every 168 periods
        let paced = attempts(year, &|_| true, &p);
        assert_eq!(paced.first(), Some(&(200, INITIAL)));
        assert_eq!(paced.len() as i64, 1 + (year - 200) / 168);
    }

    proptest! {
        /// Whatever the catching-up pattern: no attempt while catching up (the end of input
        /// aside), attempts at least a cooldown apart, and the newest history is never left
        /// without a champion trained within a schedule period of it once caught up.
        #[test]
        fn never_while_catching_up_never_within_the_cooldown(
            caught in proptest::collection::vec(any::<bool>(), 400..1200),
            every in 0i64..300,
            cooldown in 0i64..30,
        ) {
            let p = Policy { cooldown_periods: cooldown, retrain_every_periods: every, ..policy() };
            let n = caught.len() as i64;
            let a = attempts(n, &|now| caught[(now - 1) as usize], &p);
            for (now, _) in &a {
                prop_assert!(caught[(*now - 1) as usize], "attempt at {} while catching up", now);
            }
            for w in a.windows(2) {
                prop_assert!(w[1].0 - w[0].0 >= cooldown.max(1));
            }
            if let (Some(&(last, _)), Some(true)) = (a.last(), caught.last()) {
                // caught up at the end: the champion is at most max(cooldown, every) behind,
                // unless there is no schedule
                if every > 0 {
                    prop_assert!(n - last < every.max(cooldown) + 1, "last attempt {} of {}", last, n);
                }
            }
        }
    }
}
