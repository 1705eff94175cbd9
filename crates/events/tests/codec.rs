//! Codec behaviour without I/O: every contract round-trips, versions resolve both ways, and no
//! input makes the decoder panic.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use cartstream_events::types::*;
use cartstream_events::{Contract, DecodeError, Decoder, Encoder};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

fn raw_event() -> RawEvent {
    RawEvent {
        event_id: "e-1".into(),
        event_time: "2019-10-01 00:00:04 UTC".into(),
        event_type: "purchase".into(),
        product_id: 1_004_856,
        category_id: 2_053_013_555_631_882_655,
        category_code: Some("electronics.smartphone".into()),
        brand: None,
        price: 130.76,
        currency: "USD".into(),
        quantity: 2,
        user_id: 543_272_936,
        user_session: Some("8187d148-3c41-46d4-b0c0-9c08cd9dc564".into()),
        channel: Some("app".into()),
        source: SourceMeta {
            system: "simulator".into(),
            producer_id: "p-1".into(),
            file: None,
            line: Some(7),
            sent_at: 1_569_888_004_000,
        },
    }
}

/// The raw event as a processor built against v1 sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename = "PurchaseEvent")]
struct RawEventV1 {
    event_id: String,
    event_time: String,
    event_type: String,
    product_id: i64,
    category_id: i64,
    category_code: Option<String>,
    brand: Option<String>,
    price: f64,
    currency: String,
    quantity: i32,
    user_id: i64,
    user_session: Option<String>,
    source: SourceMeta,
}

impl AvroRecord for RawEventV1 {
    const CONTRACT: Contract = Contract::PurchaseEventV1;
}

fn round_trip<T: AvroRecord + PartialEq + std::fmt::Debug>(value: T) {
    let enc = Encoder::<T>::with_id(T::CONTRACT, 42);
    let bytes = enc.encode(&value).expect("encodes");
    assert_eq!(&bytes[..5], &[0, 0, 0, 0, 42]);
    let dec = Decoder::<T>::fixed([(42, T::CONTRACT)], T::CONTRACT);
    let back = dec
        .decode_cached(&bytes)
        .expect("fixed table")
        .expect("decodes");
    assert_eq!(back, value);
}

#[test]
fn every_contract_round_trips() {
    round_trip(raw_event());
    round_trip(CleanEvent {
        event_id: "e".into(),
        event_time: 1,
        event_type: EventType::RemoveFromCart,
        product_id: 2,
        category_id: 3,
        category_code: "unknown".into(),
        brand: "acme".into(),
        price: 9.5,
        currency: "EUR".into(),
        quantity: 1,
        user_id: 4,
        user_session: "s".into(),
        channel: None,
        source_system: "simulator".into(),
    });
    round_trip(EnrichedEvent {
        event_id: "e".into(),
        event_time: 1,
        event_type: EventType::Purchase,
        product_id: 2,
        category_id: 3,
        category_code: "a.b".into(),
        brand: "b".into(),
        price: 1.0,
        currency: "USD".into(),
        quantity: 3,
        user_id: 4,
        user_session: "s".into(),
        channel: Some("web".into()),
        source_system: "replay".into(),
        product_known: false,
        product_name: "unknown".into(),
        catalog_price: None,
        user_known: true,
        user_country: "DE".into(),
        user_device: "mobile".into(),
        user_segment: "vip".into(),
    });
    round_trip(Product {
        product_id: 730,
        name: "Counter-Strike 2".into(),
        category_id: 1,
        category_code: "games.action".into(),
        brand: "Valve".into(),
        price: 0.0,
        currency: "USD".into(),
        catalog: "steam".into(),
        release_date: Some(19_600),
        genres: vec!["Action".into(), "Free to Play".into()],
        tags: vec![],
        updated_at: 5,
    });
    round_trip(User {
        user_id: 1,
        country: "PL".into(),
        device: "console".into(),
        segment: "new".into(),
        updated_at: 6,
    });
    round_trip(KpiWindow {
        window_start: 0,
        window_end: 60_000,
        window_size_ms: 60_000,
        window_slide_ms: 60_000,
        dimension: Dimension::EventType,
        dimension_value: "view".into(),
        views: 10,
        carts: 3,
        removals: 1,
        purchases: 2,
        units: 4,
        revenue: 99.5,
        currency: "USD".into(),
        avg_price: Some(24.875),
        conversion_rate: Some(0.2),
        distinct_users: 7,
        is_final: true,
        emitted_at: 61_000,
    });
    round_trip(Session {
        session_id: "s".into(),
        user_id: 1,
        user_country: "unknown".into(),
        user_device: "unknown".into(),
        user_segment: "unknown".into(),
        session_start: 0,
        session_end: 10,
        duration_ms: 10,
        views: 1,
        carts: 0,
        removals: 0,
        purchases: 0,
        revenue: 0.0,
        currency: "USD".into(),
        converted: false,
        order_id: None,
    });
    round_trip(Alert {
        alert_id: "a".into(),
        alert_type: AlertType::Trend,
        severity: Severity::Warning,
        subject_kind: "category".into(),
        subject_id: "electronics".into(),
        window_start: 0,
        window_end: 60_000,
        observed: 50.0,
        baseline: 5.0,
        threshold: 20.0,
        message: "purchases 10x baseline".into(),
        detected_at: 60_001,
    });
    round_trip(DeadLetter {
        error_code: "bad_magic".into(),
        message: "magic byte is 0x01".into(),
        stage: "cleaner".into(),
        source_topic: "purchases.raw".into(),
        source_partition: 3,
        source_offset: 12,
        source_timestamp: Some(1),
        schema_id: None,
        key: Some(b"k".to_vec()),
        payload: Some(vec![1, 2, 3, 0, 255]),
        failed_at: 2,
    });
}

#[test]
fn a_v1_reader_decodes_v2_records() {
    let v2 = raw_event();
    let bytes = Encoder::<RawEvent>::with_id(Contract::PurchaseEventV2, 2)
        .encode(&v2)
        .unwrap();
    let dec =
        Decoder::<RawEventV1>::fixed([(2, Contract::PurchaseEventV2)], Contract::PurchaseEventV1);
    let v1 = dec.decode_cached(&bytes).unwrap().expect("v1 reads v2");
    assert_eq!(v1.event_id, v2.event_id);
    assert_eq!(v1.price, v2.price);
    assert_eq!(v1.user_session, v2.user_session);
    assert_eq!(v1.source, v2.source);
}

#[test]
fn a_v2_reader_decodes_v1_records_with_the_default() {
    let v2 = raw_event();
    let v1 = RawEventV1 {
        event_id: v2.event_id.clone(),
        event_time: v2.event_time.clone(),
        event_type: v2.event_type.clone(),
        product_id: v2.product_id,
        category_id: v2.category_id,
        category_code: v2.category_code.clone(),
        brand: v2.brand.clone(),
        price: v2.price,
        currency: v2.currency.clone(),
        quantity: v2.quantity,
        user_id: v2.user_id,
        user_session: v2.user_session.clone(),
        source: v2.source.clone(),
    };
    let bytes = Encoder::<RawEventV1>::with_id(Contract::PurchaseEventV1, 1)
        .encode(&v1)
        .unwrap();
    let dec =
        Decoder::<RawEvent>::fixed([(1, Contract::PurchaseEventV1)], Contract::PurchaseEventV2);
    let read = dec.decode_cached(&bytes).unwrap().expect("v2 reads v1");
    assert_eq!(
        read,
        RawEvent {
            channel: None,
            ..v2
        }
    );
}

#[test]
fn bad_records_get_typed_errors() {
    let dec =
        Decoder::<RawEvent>::fixed([(1, Contract::PurchaseEventV2)], Contract::PurchaseEventV2);
    let code = |b: &[u8]| dec.decode_cached(b).unwrap().unwrap_err().code();
    assert_eq!(code(b""), "empty_record");
    assert_eq!(code(b"\x00\x00"), "truncated_header");
    assert_eq!(code(b"{\"json\":true}"), "bad_magic");
    assert_eq!(code(b"\x00\x00\x00\x00\x63garbage"), "unknown_schema_id");
    assert_eq!(
        code(b"\x00\x00\x00\x00\x01\xff\xff\xff\xff\xff\xff"),
        "malformed_avro"
    );

    let mut good = Encoder::<RawEvent>::with_id(Contract::PurchaseEventV2, 1)
        .encode(&raw_event())
        .unwrap();
    good.push(0);
    let err = dec.decode_cached(&good).unwrap().unwrap_err();
    assert_eq!(err.code(), "malformed_avro");
    assert!(err.to_string().contains("trailing"), "{err}");
    assert!(!err.is_transient());
    assert_eq!(err.schema_id(), Some(1));

    // Truncated body: every prefix of a good record fails cleanly.
    good.pop();
    for cut in 5..good.len() {
        let e = dec.decode_cached(&good[..cut]).unwrap();
        assert!(
            matches!(e, Err(DecodeError::Body { .. })),
            "cut at {cut}: {e:?}"
        );
    }
}

#[test]
fn a_clean_reader_refuses_raw_records() {
    let bytes = Encoder::<RawEvent>::with_id(Contract::PurchaseEventV2, 1)
        .encode(&raw_event())
        .unwrap();
    let dec = Decoder::<CleanEvent>::fixed([(1, Contract::PurchaseEventV2)], Contract::CleanEvent);
    let err = dec.decode_cached(&bytes).unwrap().unwrap_err();
    assert_eq!(err.code(), "incompatible_schema", "{err}");
}

fn arb_raw() -> impl Strategy<Value = RawEvent> {
    (
        ".{0,40}",
        any::<i64>(),
        any::<f64>(),
        proptest::option::of(".{0,20}"),
        any::<i32>(),
        proptest::option::of("[a-z]{0,8}"),
    )
        .prop_map(|(id, pid, price, brand, qty, channel)| RawEvent {
            event_id: id,
            product_id: pid,
            price,
            brand,
            quantity: qty,
            channel,
            ..raw_event()
        })
}

proptest! {
    #[test]
    fn arbitrary_raw_events_round_trip(ev in arb_raw()) {
        let bytes = Encoder::<RawEvent>::with_id(Contract::PurchaseEventV2, 9).encode(&ev).unwrap();
        let dec = Decoder::<RawEvent>::fixed([(9, Contract::PurchaseEventV2)], Contract::PurchaseEventV2);
        let back = dec.decode_cached(&bytes).unwrap().unwrap();
        // NaN != NaN, so compare the encoded form.
        prop_assert_eq!(Encoder::<RawEvent>::with_id(Contract::PurchaseEventV2, 9).encode(&back).unwrap(), bytes);
    }

    #[test]
    fn the_decoder_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..300), framed in any::<bool>()) {
        let dec = Decoder::<RawEvent>::fixed(
            [(1, Contract::PurchaseEventV1), (2, Contract::PurchaseEventV2)],
            Contract::PurchaseEventV2,
        );
        let mut bytes = body.clone();
        if framed {
            bytes = vec![0, 0, 0, 0, 1 + (body.len() % 2) as u8];
            bytes.extend_from_slice(&body);
        }
        // Any outcome but a panic is acceptable; errors must be permanent and coded.
        if let Err(e) = dec.decode_cached(&bytes).unwrap() {
            prop_assert!(!e.is_transient());
            prop_assert!(!e.code().is_empty());
        }
    }

    #[test]
    fn mutated_good_records_never_panic(pos in 5usize..200, byte in any::<u8>()) {
        let mut bytes = Encoder::<RawEvent>::with_id(Contract::PurchaseEventV2, 2).encode(&raw_event()).unwrap();
        let i = pos % bytes.len();
        bytes[i] = byte;
        let dec = Decoder::<RawEvent>::fixed([(2, Contract::PurchaseEventV2)], Contract::PurchaseEventV2);
        let _ = dec.decode_cached(&bytes).unwrap();
    }
}
