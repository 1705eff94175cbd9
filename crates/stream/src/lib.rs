//! The read-process-write loop of every cartstream processor, written once.
//!
//! # Commit protocol (exactly-once mode, the default)
//!
//! 1. Gather a batch: up to `--batch-size` records or `--batch-linger-ms`, whichever comes first.
//! 2. `begin_transaction`; hand each record to the [`Processor`], which appends output records
//!    and dead letters to an [`Output`]; produce them all inside the transaction.
//! 3. `send_offsets_to_transaction` with the next offset of every partition in the batch and the
//!    consumer's group metadata (KIP-447: a fenced or rebalanced instance cannot commit), then
//!    `commit_transaction`. Outputs and input offsets become visible together, or not at all.
//! 4. On success the processor's tentative state is committed ([`Processor::commit`]). On any
//!    failure the transaction is aborted, the processor rolls back ([`Processor::rollback`]), the
//!    consumer seeks back to the batch's first offsets, and the loop backs off and retries.
//!    If seeking back fails, the loop exits with an error: a restart resumes from the committed
//!    offsets, which is always safe.
//!
//! # Ticks
//!
//! [`Processor::on_tick`] runs after every batch's records, inside the batch's transaction, and
//! when no record arrives at least every `--batch-linger-ms`. A tick on an empty batch that emits
//! records gets its own transaction, which re-sends the offsets this instance last committed so
//! the group-metadata fencing of step 3 still applies; a tick that emits nothing needs none.
//!
//! Downstream consumers read with `isolation.level=read_committed`, so they see each output once.
//!
//! # Idleness and end of input
//!
//! A partition is idle only when it has had no unread records for the idle timeout ([`idle`]):
//! the loop samples every partition's position against its end once a second and hands the
//! result to [`Processor::on_progress`] before each tick. A partition with a backlog is never
//! idle. Control records (the end-of-input mark of `cartstream_kafka::control`) are not given
//! to [`Processor::process`] but to [`Processor::on_end_of_input`], which closes what the mark
//! allows and forwards it with [`Output::forward_end`]; the loop writes a forwarded mark to
//! every partition of the output topic, tagged with its input partition and their count, after
//! the records produced before it, in the same transaction.
//!
//! # Rebalances
//!
//! No transaction is open while the consumer polls, so a rebalance never interrupts one. Records
//! of a partition revoked while a batch was being gathered are dropped from the batch (the new
//! owner reads them from the committed offset); a newly assigned partition's state is restored
//! ([`Processor::on_assigned`]) before any of its records is processed.
//!
//! # At-least-once mode (for comparison)
//!
//! No transactions: outputs are produced and flushed, then offsets are committed. A crash between
//! the two replays the batch, so outputs may be duplicated; nothing is lost.
//!
//! # Dead letters
//!
//! A record the processor rejects goes to the dead-letter topic with a stable error code, a
//! message, the stage, the original key and bytes, the writer schema id if known, and the source
//! topic/partition/offset/timestamp, in the same transaction as everything else. A dead letter
//! that would exceed the dead-letter topic's `max.message.bytes`
//! (`cartstream_kafka::topics::DLQ_MAX_MESSAGE_BYTES`, set when the topic is created) is written
//! as an `oversized` one instead ([`dead`]): the first 64 KiB of the value and key, the original
//! sizes and code in its message and in headers, so the batch commits and the partition goes on.

mod args;
pub mod dead;
pub mod idle;
mod metrics;
mod run;

pub use args::ProcessorArgs;
pub use cartstream_kafka::control::EndOfInput;
pub use idle::Progress;
pub use metrics::StageMetrics;
pub use run::{run, Input, LoopArgs, Mode, Output, ProcessError, Processor, Topology};
