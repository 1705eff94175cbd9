//! The ground truth judges records with the cleaner's rules: its verdicts must be the cleaner's
//! own (`cartstream-processors`), for any record, and every malformed kind the simulator injects
//! must be rejected with the code the producer announces. Pure: no I/O.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use cartstream_events::types::{RawEvent, SourceMeta};
use cartstream_processors::clean::{clean, Rules};
use cartstream_producer::catalog::Catalog;
use cartstream_producer::clock::format_rfc3339;
use cartstream_producer::faults::{FaultConfig, Injector, Kind, Malformed};
use cartstream_producer::sim::{blank_event, SimConfig, Simulator, Step};
use cartstream_producer::truth::validate;
use proptest::prelude::*;

fn any_event() -> impl Strategy<Value = RawEvent> {
    (
        prop_oneof!["", " ", "e-1", "[a-f0-9-]{36}"],
        prop_oneof![
            Just("2019-10-01 00:00:04 UTC".to_string()),
            Just("2019-10-01T00:00:04.123Z".to_string()),
            Just("2019-10-01 00:00:04".to_string()),
            Just("1569888004000".to_string()),
            Just("2030-01-01T00:00:00Z".to_string()),
            Just("garbage".to_string()),
            Just(String::new()),
        ],
        prop_oneof![
            "view",
            "cart",
            "remove_from_cart",
            "purchase",
            "PURCHASE",
            " view ",
            "click",
            ""
        ],
        (-2i64..3, -2i64..3),
        prop_oneof![
            Just(0.0),
            Just(-1.0),
            Just(f64::NAN),
            Just(12.5),
            Just(f64::INFINITY)
        ],
        -1i32..3,
        prop_oneof![
            Just(None),
            Just(Some(String::new())),
            Just(Some("s-1".to_string()))
        ],
        prop_oneof!["USD", "eur", "US", "E1R", ""],
        prop_oneof![
            Just(None),
            Just(Some("  Kids.Toys ".to_string())),
            Just(Some(String::new()))
        ],
    )
        .prop_map(
            |(id, time, kind, (pid, uid), price, qty, session, currency, category)| RawEvent {
                event_id: id,
                event_time: time,
                event_type: kind.to_string(),
                product_id: pid,
                category_id: 1,
                category_code: category,
                brand: None,
                price,
                currency: currency.to_string(),
                quantity: qty,
                user_id: uid,
                user_session: session,
                channel: None,
                source: SourceMeta {
                    system: "t".into(),
                    producer_id: "t".into(),
                    file: None,
                    line: None,
                    sent_at: 1_569_888_004_000,
                },
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn ground_truth_verdicts_are_the_cleaners(ev in any_event()) {
        let ours = validate(&ev);
        let theirs = clean(&ev, &Rules::default());
        match (&ours, &theirs) {
            (Ok((t, kind)), Ok(c)) => {
                prop_assert_eq!(*t, c.event_time);
                prop_assert_eq!(*kind, c.event_type);
            }
            (Err(code), Err(r)) => prop_assert_eq!(*code, r.code),
            _ => prop_assert!(false, "producer {:?} vs cleaner {:?}", ours, theirs.map(|_| ()).map_err(|r| r.code)),
        }
    }
}

#[test]
fn every_injected_malformed_record_gets_its_announced_rejection() {
    let mut sim = Simulator::new(Catalog::synthetic(1, 100, 50, 0), SimConfig::default()).unwrap();
    let mut inj = Injector::new(FaultConfig {
        malformed_ratio: 1.0,
        ..FaultConfig::default()
    });
    let mut out = Vec::new();
    let mut ev = blank_event();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        if let Step::Event { time_ms } = sim.next(&mut ev) {
            ev.event_time = format_rfc3339(time_ms);
            ev.source.sent_at = time_ms;
            inj.push(ev.clone(), time_ms, &mut out);
        }
    }
    for e in &out {
        let mut event = e.event.clone();
        event.source.sent_at = e.time_ms;
        match e.kind {
            Kind::Malformed(Malformed::GarbageBytes | Malformed::UnknownSchemaId) => {}
            Kind::Malformed(m) => {
                let code = clean(&event, &Rules::default()).err().map(|r| r.code);
                assert_eq!(code, Some(m.expected_rejection()), "{m:?}");
                seen.insert(m);
            }
            _ => assert!(clean(&event, &Rules::default()).is_ok(), "good events pass"),
        }
    }
    assert_eq!(seen.len(), 6);
}
