//! Migrations and rows against the real CQL database of the local stack (Cassandra 5, the
//! ScyllaDB stand-in).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use cartstream_events::types::{EnrichedEvent, EventType};
use cartstream_sinks::cql::{self, CqlArgs};
use cartstream_sinks::rows;
use cartstream_testkit as kit;
use scylla::value::CqlTimestamp;

fn event(i: i64, user: i64) -> EnrichedEvent {
    EnrichedEvent {
        event_id: format!("e-{i}"),
        event_time: 1_795_500_000_000 + i * 1000,
        event_type: if i % 4 == 0 {
            EventType::Purchase
        } else {
            EventType::View
        },
        product_id: 100 + i,
        category_id: 1,
        category_code: "kids.toys".into(),
        brand: "lego".into(),
        price: 10.0 + i as f64,
        currency: "USD".into(),
        quantity: 1,
        user_id: user,
        user_session: "s".into(),
        channel: None,
        source_system: "it".into(),
        product_known: true,
        product_name: "brick".into(),
        catalog_price: Some(10.0),
        user_known: true,
        user_country: "DE".into(),
        user_device: "mobile".into(),
        user_segment: "new".into(),
    }
}

#[tokio::test]
async fn migrations_are_idempotent_and_rows_round_trip() {
    kit::require("the CQL database", &kit::scylla_uri());
    let mut args = CqlArgs::local(&kit::unique_ident("cql"));
    args.uri = kit::scylla_uri();
    let session = args.connect().await.expect("connects");

    let first = cql::migrate(&session, &args)
        .await
        .expect("first migration");
    assert_eq!(first.applied, vec!["0001_realtime_tables"]);
    let second = cql::migrate(&session, &args)
        .await
        .expect("second migration");
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, vec!["0001_realtime_tables"]);

    let insert = session
        .prepare(rows::insert_event_cql(&args.keyspace))
        .await
        .expect("prepares");
    let events: Vec<_> = (0..20).map(|i| event(i, 42)).collect();
    for e in &events {
        session
            .execute_unpaged(&insert, rows::event_row(e, 3600))
            .await
            .expect("insert");
    }
    // Writing the same events again is an upsert: no new rows.
    for e in &events[..5] {
        session
            .execute_unpaged(&insert, rows::event_row(e, 3600))
            .await
            .expect("re-insert");
    }

    let day = rows::day_bucket(events[0].event_time);
    let result = session
        .query_unpaged(
            format!(
                "SELECT event_id, event_time, event_type, price FROM {}.events_by_user WHERE user_id = ? AND day = ?",
                args.keyspace
            ),
            (42_i64, &day),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let rows: Vec<(String, CqlTimestamp, String, f64)> = result
        .rows::<(String, CqlTimestamp, String, f64)>()
        .expect("typed rows")
        .collect::<Result<_, _>>()
        .expect("decoded rows");
    assert_eq!(rows.len(), 20, "upserts left one row per event");
    // Newest first, as the table's clustering order says.
    assert_eq!(rows[0].0, "e-19");
    assert!(rows.windows(2).all(|w| w[0].1 .0 >= w[1].1 .0));
    assert_eq!(rows.iter().filter(|r| r.2 == "purchase").count(), 5);
    assert_eq!(rows[0].3, 29.0);

    // A changed migration file is refused rather than silently skipped.
    session
        .query_unpaged(
            format!("UPDATE {}.schema_migrations SET checksum = 'edited' WHERE name = '0001_realtime_tables'", args.keyspace),
            &[],
        )
        .await
        .unwrap();
    let err = cql::migrate(&session, &args).await.unwrap_err().to_string();
    assert!(err.contains("immutable"), "{err}");

    session
        .query_unpaged(format!("DROP KEYSPACE {}", args.keyspace), &[])
        .await
        .expect("cleanup");
}

#[tokio::test]
async fn a_bad_keyspace_name_is_refused_before_any_cql() {
    let args = CqlArgs::local("x; DROP KEYSPACE cartstream");
    let err = args.connect().await.unwrap_err().to_string();
    assert!(err.contains("must be 1-48 characters"), "{err}");
}
