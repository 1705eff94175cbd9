//! Dead letters that fit the dead-letter topic.
//!
//! A dead letter holds the whole rejected record, so a record close to (or over) the dead-letter
//! topic's `max.message.bytes` would make a dead letter the broker refuses: the batch's
//! transaction would fail with `MsgSizeTooLarge`, abort and be retried forever, and the
//! partition would stop. [`fit`] keeps every dead letter within
//! [`DLQ_MAX_MESSAGE_BYTES`] (the limit the topic is created with) less [`RECORD_OVERHEAD`]: one
//! that would not fit becomes an `oversized` dead letter with the first [`PREFIX_BYTES`] of the
//! value and of the key, the original sizes and reason in its message and in headers
//! ([`ORIGINAL_SIZE_HEADER`], [`ORIGINAL_KEY_SIZE_HEADER`], [`ORIGINAL_CODE_HEADER`]), and the
//! source topic, partition and offset, where the whole record still is.

use cartstream_events::types::DeadLetter;
pub use cartstream_kafka::topics::DLQ_MAX_MESSAGE_BYTES;

/// Error code of a dead letter whose record was too large to copy whole.
pub const OVERSIZED: &str = "oversized";
/// Bytes of the value, and of the key, that an oversized dead letter keeps.
pub const PREFIX_BYTES: usize = 64 * 1024;
/// Room kept in a dead-letter record for Kafka's record and batch framing, the headers, and
/// lz4's worst case on incompressible bytes (about 1/255 of the size).
pub const RECORD_OVERHEAD: usize = 16 * 1024;
/// Header: the size in bytes of the original record's value.
pub const ORIGINAL_SIZE_HEADER: &str = "cartstream-original-size";
/// Header: the size in bytes of the original record's key.
pub const ORIGINAL_KEY_SIZE_HEADER: &str = "cartstream-original-key-size";
/// Header: the error code the stage gave the record.
pub const ORIGINAL_CODE_HEADER: &str = "cartstream-original-error-code";

/// Characters of the original message an oversized dead letter keeps.
const MESSAGE_CHARS: usize = 1024;

/// What an oversized dead letter replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    pub value_size: usize,
    pub key_size: usize,
    pub code: String,
}

impl Oversized {
    /// The headers of the dead-letter record (name, value as text).
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (ORIGINAL_SIZE_HEADER, self.value_size.to_string()),
            (ORIGINAL_KEY_SIZE_HEADER, self.key_size.to_string()),
            (ORIGINAL_CODE_HEADER, self.code.clone()),
        ]
    }
}

/// Whether a dead letter encoded in `encoded_len` bytes with a key of `key_len` bytes fits the
/// dead-letter topic.
pub fn fits(encoded_len: usize, key_len: usize) -> bool {
    encoded_len.saturating_add(key_len) <= DLQ_MAX_MESSAGE_BYTES - RECORD_OVERHEAD
}

/// `d` unchanged if its encoding (`encoded_len` bytes) fits, else its `oversized` replacement and
/// what it replaced. The replacement's encoding is at most about 2 x [`PREFIX_BYTES`] plus the
/// fixed fields and 4 x [`MESSAGE_CHARS`] bytes of message, far within the limit.
pub fn fit(d: DeadLetter, encoded_len: usize) -> (DeadLetter, Option<Oversized>) {
    let key_len = d.key.as_ref().map_or(0, Vec::len);
    if fits(encoded_len, key_len) {
        return (d, None);
    }
    let value_size = d.payload.as_ref().map_or(0, Vec::len);
    let prefix = |b: Option<Vec<u8>>| {
        b.map(|mut b| {
            b.truncate(PREFIX_BYTES);
            b
        })
    };
    let original = Oversized {
        value_size,
        key_size: key_len,
        code: d.error_code.clone(),
    };
    let message = format!(
        "{}: {} [oversized: the record ({value_size} bytes of value, {key_len} of key) makes a \
         dead letter of {encoded_len} bytes, over the dead-letter limit of {} bytes; payload and \
         key hold their first {PREFIX_BYTES} bytes, the whole record is at {}[{}]@{}]",
        d.error_code,
        truncate_chars(&d.message, MESSAGE_CHARS),
        DLQ_MAX_MESSAGE_BYTES - RECORD_OVERHEAD,
        truncate_chars(&d.source_topic, 256),
        d.source_partition,
        d.source_offset,
    );
    let small = DeadLetter {
        error_code: OVERSIZED.to_string(),
        message,
        payload: prefix(d.payload),
        key: prefix(d.key),
        ..d
    };
    (small, Some(original))
}

fn truncate_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn letter(key: usize, value: usize, message: &str) -> DeadLetter {
        DeadLetter {
            error_code: "bad_magic".into(),
            message: message.into(),
            stage: "cleaner".into(),
            source_topic: "t.purchases.raw".into(),
            source_partition: 2,
            source_offset: 41,
            source_timestamp: Some(5),
            schema_id: None,
            key: (key > 0).then(|| (0..key).map(|i| (i % 251) as u8).collect()),
            payload: Some((0..value).map(|i| (i % 253) as u8).collect()),
            failed_at: 9,
        }
    }

    /// An upper bound of the Avro encoding (lengths as varints of at most 10 bytes).
    fn encoded(d: &DeadLetter) -> usize {
        let bytes = |b: &Option<Vec<u8>>| b.as_ref().map_or(1, |b| 11 + b.len());
        d.error_code.len()
            + d.message.len()
            + d.stage.len()
            + d.source_topic.len()
            + bytes(&d.key)
            + bytes(&d.payload)
            + 100
    }

    #[test]
    fn a_dead_letter_that_fits_is_unchanged() {
        let d = letter(10, 500_000, "no magic byte");
        let (same, info) = fit(d.clone(), encoded(&d));
        assert_eq!((same, info), (d, None));
    }

    #[test]
    fn an_oversized_one_keeps_a_prefix_its_sizes_and_its_reason() {
        let d = letter(20, 1_500_000, "no magic byte");
        let (small, info) = fit(d.clone(), encoded(&d));
        let info = info.expect("oversized");
        assert_eq!(small.error_code, OVERSIZED);
        assert_eq!(
            info,
            Oversized {
                value_size: 1_500_000,
                key_size: 20,
                code: "bad_magic".into()
            }
        );
        let payload = small.payload.as_deref().unwrap();
        assert_eq!(payload, &d.payload.as_deref().unwrap()[..PREFIX_BYTES]);
        assert_eq!(small.key, d.key, "a short key is kept whole");
        assert!(small
            .message
            .starts_with("bad_magic: no magic byte [oversized"));
        assert!(
            small.message.contains("1500000 bytes of value"),
            "{}",
            small.message
        );
        assert!(small.message.contains("t.purchases.raw[2]@41"));
        assert_eq!(
            (
                small.source_partition,
                small.source_offset,
                small.source_timestamp
            ),
            (2, 41, Some(5))
        );
        assert!(fits(encoded(&small), PREFIX_BYTES));
        let h = info.headers();
        assert_eq!(h[0], (ORIGINAL_SIZE_HEADER, "1500000".to_string()));
        assert_eq!(h[2], (ORIGINAL_CODE_HEADER, "bad_magic".to_string()));
    }

    #[test]
    fn the_limit_counts_the_key_and_the_overhead() {
        let limit = DLQ_MAX_MESSAGE_BYTES - RECORD_OVERHEAD;
        assert!(fits(limit, 0) && fits(limit - 10, 10));
        assert!(!fits(limit, 1) && !fits(limit + 1, 0));
        assert!(!fits(usize::MAX, usize::MAX), "no overflow");
    }

    proptest! {
        /// Whatever the sizes and the message (any UTF-8), the result fits and never panics; an
        /// oversized one keeps the reason, the sizes and a prefix of both key and value.
        #[test]
        fn every_dead_letter_fits(
            key in 0usize..1_200_000, value in 0usize..2_500_000, message in ".{0,2000}",
        ) {
            let d = letter(key, value, &message);
            let (out, info) = fit(d.clone(), encoded(&d));
            prop_assert!(fits(encoded(&out), out.key.as_ref().map_or(0, Vec::len)));
            match info {
                None => prop_assert_eq!(out, d),
                Some(o) => {
                    prop_assert_eq!(out.error_code.as_str(), OVERSIZED);
                    prop_assert_eq!((o.value_size, o.key_size), (value, key));
                    let p = out.payload.unwrap();
                    prop_assert_eq!(p.as_slice(), &d.payload.unwrap()[..value.min(PREFIX_BYTES)]);
                    prop_assert_eq!(out.key.map_or(0, |k| k.len()), key.min(PREFIX_BYTES));
                }
            }
        }
    }
}
