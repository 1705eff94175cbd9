//! Schema evolution against the real schema registry: both directions of compatibility through
//! registry-assigned ids, refusal of an incompatible change, and unknown ids.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use cartstream_events::registry::Compatibility;
use cartstream_events::types::{AvroRecord, RawEvent, SourceMeta};
use cartstream_events::{Contract, DecodeError, Decoder, Encoder, RegistryError};
use cartstream_testkit as kit;
use serde::{Deserialize, Serialize};

/// A processor built against v1 of the raw event.
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

fn v2_event(id: &str) -> RawEvent {
    RawEvent {
        event_id: id.into(),
        event_time: "2019-10-01 00:00:04 UTC".into(),
        event_type: "cart".into(),
        product_id: 5,
        category_id: 6,
        category_code: None,
        brand: Some("acme".into()),
        price: 12.5,
        currency: "EUR".into(),
        quantity: 1,
        user_id: 7,
        user_session: Some("s-1".into()),
        channel: Some("store".into()),
        source: SourceMeta {
            system: "it".into(),
            producer_id: "it".into(),
            file: None,
            line: None,
            sent_at: 1,
        },
    }
}

#[tokio::test]
async fn evolution_works_both_ways_and_incompatible_changes_are_refused() {
    let registry = kit::registry();
    let subject = format!("{}purchases.raw-value", kit::unique("evo"));

    let v1 =
        Encoder::<RawEventV1>::register_contract(&registry, &subject, Contract::PurchaseEventV1)
            .await
            .expect("v1 registers");
    registry
        .set_compatibility(&subject, Compatibility::Backward)
        .await
        .expect("compatibility is set");
    let v2 = Encoder::<RawEvent>::register(&registry, &subject)
        .await
        .expect("v2 (added optional field) is a compatible change");
    assert_ne!(v1.schema_id(), v2.schema_id());

    // Registering the same schema again is idempotent.
    let again = registry
        .register(&subject, Contract::PurchaseEventV2.avsc())
        .await
        .unwrap();
    assert_eq!(again, v2.schema_id());

    // Fresh decoders: writer schemas come from the registry by id, not from a local cache.
    let fresh = kit::registry();
    let v1_reader = Decoder::<RawEventV1>::with_reader(fresh.clone(), Contract::PurchaseEventV1);
    let v2_reader = Decoder::<RawEvent>::with_reader(fresh.clone(), Contract::PurchaseEventV2);

    // A v1 reader decodes v2 records (the new field is skipped).
    let ev = v2_event("a");
    let as_v1 = v1_reader
        .decode(&v2.encode(&ev).unwrap())
        .await
        .expect("v1 reads v2");
    assert_eq!(
        (as_v1.event_id.as_str(), as_v1.brand.as_deref(), as_v1.price),
        ("a", Some("acme"), 12.5)
    );

    // A v2 reader decodes v1 records (the new field takes its default).
    let old = RawEventV1 {
        event_id: "b".into(),
        event_time: ev.event_time.clone(),
        event_type: ev.event_type.clone(),
        product_id: ev.product_id,
        category_id: ev.category_id,
        category_code: None,
        brand: None,
        price: 3.0,
        currency: "USD".into(),
        quantity: 2,
        user_id: 8,
        user_session: None,
        source: ev.source.clone(),
    };
    let as_v2 = v2_reader
        .decode(&v1.encode(&old).unwrap())
        .await
        .expect("v2 reads v1");
    assert_eq!(as_v2.channel, None);
    assert_eq!(
        (as_v2.event_id.as_str(), as_v2.quantity, as_v2.user_id),
        ("b", 2, 8)
    );

    // An incompatible change: a new required field without a default.
    let mut v3: serde_json::Value = serde_json::from_str(Contract::PurchaseEventV2.avsc()).unwrap();
    v3["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "store_id", "type": "long"}));
    let v3 = v3.to_string();
    assert!(!registry
        .is_compatible(&subject, &v3)
        .await
        .expect("compatibility check answers"));
    match registry.register(&subject, &v3).await {
        Err(RegistryError::Rejected { status, .. }) => {
            assert_eq!(status, 409, "Confluent API answers 409 Conflict")
        }
        other => panic!("incompatible schema must be refused, got {other:?}"),
    }
    // A compatible one is still accepted by the check.
    assert!(registry
        .is_compatible(&subject, Contract::PurchaseEventV2.avsc())
        .await
        .unwrap());
}

#[tokio::test]
async fn unknown_schema_ids_are_typed_permanent_errors() {
    let registry = kit::registry();
    let dec = Decoder::<RawEvent>::new(registry);
    let bytes = [0u8, 0x7f, 0xff, 0xff, 0xf0, 2, 0x61];
    match dec.decode(&bytes).await {
        Err(e @ DecodeError::UnknownSchemaId(_)) => {
            assert_eq!(e.code(), "unknown_schema_id");
            assert!(!e.is_transient());
        }
        other => panic!("expected unknown_schema_id, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_registry_is_a_transient_error() {
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let registry = std::sync::Arc::new(
        cartstream_events::Registry::new(cartstream_events::RegistryConfig::new(
            "http://127.0.0.1:9/apis/ccompat/v7",
        ))
        .unwrap(),
    );
    let dec = Decoder::<RawEvent>::new(registry);
    let err = dec.decode(&[0, 0, 0, 0, 1, 0]).await.unwrap_err();
    assert_eq!(err.code(), "registry_error");
    assert!(err.is_transient(), "{err}");
}
