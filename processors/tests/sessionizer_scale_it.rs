//! Two sessionizer instances share the partitions; one is SIGKILLed and stays down past the
//! session timeout, so the other takes its partitions over (state rebuilt from the changelog on
//! assignment), then it comes back and takes them back (another rebalance); the other is killed
//! too. `sessions.closed` must still equal, field by field, the sessions computed independently
//! from the enriched events and the producer's ground truth (see `sessionizer_it.rs`).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod sessionizer_common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessionizers_hand_partitions_over_through_rebalances() {
    // s1 down for 12 s (taken over by s0), then s0 killed and back at once, then s1 again.
    let plan = [(3, 12), (2, 0), (3, 0)];
    sessionizer_common::run("sess2", 2, &plan).await;
}
