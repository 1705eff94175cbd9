//! A hand-written Avro writer for the raw event, the producer's hot path.
//!
//! apache-avro's serde writer looks every field up by name in a hash map, which was a quarter of
//! the producer's CPU. This writes the same bytes directly, in the field order of
//! `schemas/purchase_event.v2.avsc`. It is only used after [`FastRawWriter::verified`] found it
//! byte-identical to the schema-driven [`Encoder`] on sample events, and a property test holds the
//! two equal on arbitrary events, so a schema change cannot go unnoticed: the producer would fall
//! back to the generic encoder and the test would fail.

use cartstream_events::types::RawEvent;
use cartstream_events::{wire, Encoder};

/// Writes framed v2 raw events with one schema id.
#[derive(Debug, Clone, Copy)]
pub struct FastRawWriter {
    schema_id: u32,
}

fn long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn string(buf: &mut Vec<u8>, s: &str) {
    long(buf, s.len() as i64);
    buf.extend_from_slice(s.as_bytes());
}

fn opt_string(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(2); // union index 1, zigzag-encoded
            string(buf, s);
        }
    }
}

impl FastRawWriter {
    /// Unchecked: prefer [`FastRawWriter::verified`].
    pub fn new(schema_id: u32) -> Self {
        FastRawWriter { schema_id }
    }

    /// A writer for `encoder`'s schema id, if it writes exactly what `encoder` writes for a set
    /// of sample events (covering nulls, unicode, extremes).
    pub fn verified(encoder: &Encoder<RawEvent>) -> Option<Self> {
        let fast = FastRawWriter::new(encoder.schema_id());
        let mut a = Vec::new();
        let mut b = Vec::new();
        for ev in samples() {
            a.clear();
            b.clear();
            encoder.encode_into(&ev, &mut a).ok()?;
            fast.encode_into(&ev, &mut b);
            if a != b {
                return None;
            }
        }
        Some(fast)
    }

    /// Appends the framed record to `buf`.
    pub fn encode_into(&self, ev: &RawEvent, buf: &mut Vec<u8>) {
        wire::write_header(buf, self.schema_id);
        string(buf, &ev.event_id);
        string(buf, &ev.event_time);
        string(buf, &ev.event_type);
        long(buf, ev.product_id);
        long(buf, ev.category_id);
        opt_string(buf, ev.category_code.as_deref());
        opt_string(buf, ev.brand.as_deref());
        buf.extend_from_slice(&ev.price.to_le_bytes());
        string(buf, &ev.currency);
        long(buf, i64::from(ev.quantity));
        long(buf, ev.user_id);
        opt_string(buf, ev.user_session.as_deref());
        opt_string(buf, ev.channel.as_deref());
        let s = &ev.source;
        string(buf, &s.system);
        string(buf, &s.producer_id);
        opt_string(buf, s.file.as_deref());
        match s.line {
            None => buf.push(0),
            Some(l) => {
                buf.push(2);
                long(buf, l);
            }
        }
        long(buf, s.sent_at);
    }
}

fn samples() -> Vec<RawEvent> {
    use cartstream_events::types::SourceMeta;
    let full = RawEvent {
        event_id: "0f8a3c1e-5b7d-4e2a-9c6f-1d2e3f4a5b6c".into(),
        event_time: "2026-11-24T10:00:00.000Z".into(),
        event_type: "purchase".into(),
        product_id: i64::MAX,
        category_id: i64::MIN,
        category_code: Some("électronique.téléphone".into()),
        brand: Some("ü".repeat(70)),
        price: -0.0,
        currency: "EUR".into(),
        quantity: i32::MIN,
        user_id: -1,
        user_session: Some(String::new()),
        channel: Some("web".into()),
        source: SourceMeta {
            system: "simulator".into(),
            producer_id: "p".into(),
            file: Some("f.csv".into()),
            line: Some(1 << 40),
            sent_at: 1_795_000_000_000,
        },
    };
    let mut empty = full.clone();
    empty.event_id.clear();
    empty.category_code = None;
    empty.brand = None;
    empty.price = f64::NAN;
    empty.quantity = 64;
    empty.user_session = None;
    empty.channel = None;
    empty.source.file = None;
    empty.source.line = None;
    empty.source.sent_at = -64;
    vec![full, empty]
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartstream_events::types::SourceMeta;
    use cartstream_events::Contract;
    use proptest::prelude::*;

    fn encoder() -> Encoder<RawEvent> {
        Encoder::with_id(Contract::RAW_CURRENT, 0x0102_0304)
    }

    #[test]
    fn verifies_against_the_schema_driven_encoder() {
        assert!(FastRawWriter::verified(&encoder()).is_some());
    }

    #[test]
    fn simulated_events_encode_identically() {
        use crate::catalog::Catalog;
        use crate::sim::{blank_event, SimConfig, Simulator, Step};
        let mut sim = Simulator::new(
            Catalog::synthetic(42, 2000, 5000, 0),
            SimConfig {
                currencies: vec!["USD".into(), "JPY".into()],
                price_change_every_ms: Some(1000),
                ..SimConfig::default()
            },
        )
        .unwrap();
        let (enc, fast) = (encoder(), FastRawWriter::new(0x0102_0304));
        let mut ev = blank_event();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..50_000 {
            if let Step::Event { time_ms } = sim.next(&mut ev) {
                ev.event_time = crate::clock::format_rfc3339(time_ms);
                ev.source.sent_at = time_ms;
                a.clear();
                b.clear();
                enc.encode_into(&ev, &mut a).unwrap();
                fast.encode_into(&ev, &mut b);
                assert_eq!(a, b);
            }
        }
    }

    fn opt(s: Option<String>) -> Option<String> {
        s
    }

    proptest! {
        #[test]
        fn writes_the_same_bytes_as_the_schema_driven_encoder(
            strings in proptest::collection::vec(".{0,40}", 9),
            opts in proptest::collection::vec(proptest::option::of(".{0,20}"), 5),
            ints in proptest::collection::vec(any::<i64>(), 5),
            qty in any::<i32>(),
            price in any::<f64>(),
        ) {
            let ev = RawEvent {
                event_id: strings[0].clone(),
                event_time: strings[1].clone(),
                event_type: strings[2].clone(),
                product_id: ints[0],
                category_id: ints[1],
                category_code: opt(opts[0].clone()),
                brand: opt(opts[1].clone()),
                price,
                currency: strings[3].clone(),
                quantity: qty,
                user_id: ints[2],
                user_session: opts[2].clone(),
                channel: opts[3].clone(),
                source: SourceMeta {
                    system: strings[4].clone(),
                    producer_id: strings[5].clone(),
                    file: opts[4].clone(),
                    line: if ints[3] % 2 == 0 { None } else { Some(ints[3]) },
                    sent_at: ints[4],
                },
            };
            let mut a = Vec::new();
            encoder().encode_into(&ev, &mut a).unwrap();
            let mut b = Vec::new();
            FastRawWriter::new(0x0102_0304).encode_into(&ev, &mut b);
            prop_assert_eq!(a, b);
        }
    }
}
