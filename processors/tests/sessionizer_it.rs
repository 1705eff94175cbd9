//! The sessionizer through the real broker, against the producer's ground truth, with `kill -9`s.
//!
//! The producer simulates shoppers (simulated clock, inactivity gap 60 s, late and duplicated
//! events, malformed records) while the cleaner, the enricher and the sessionizer run as
//! binaries; the sessionizer is SIGKILLed and restarted again and again mid-run (and the cleaner
//! and enricher once each). At the end one far-future event on one session ("end of input") moves
//! the watermark of its partition; the other partitions go idle and follow it, which is the
//! idle-partition rule at work. Then `sessions.closed` (read committed) must equal, exactly and
//! field by field, the sessions computed here independently from the events of the enriched topic
//! (sort each session's events, split on gaps of 60 s or more), and agree with the producer's
//! ground truth (one session per `user_session`, converted sessions, event counts, revenue per
//! currency in cents). No event may be dead-lettered as `late_event` (the grace covers the
//! producer's lateness).
//!
//! Size: `CARTSTREAM_SESSION_EVENTS` (default 30 000 events).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod sessionizer_common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_equal_the_ground_truth_through_kill_9() {
    // The sessionizer killed five times, the cleaner and the enricher once each.
    let plan = [(2, 0), (0, 0), (2, 0), (2, 0), (1, 0), (2, 0), (2, 0)];
    sessionizer_common::run("sess", 1, &plan).await;
}
