//! The Avro contracts of `schemas/`, embedded at build time.
//!
//! Each [`Contract`] names one `.avsc` file. The schema text is what gets registered, so the registry
//! and the binary can never disagree about a version the binary was built with.

use std::sync::OnceLock;

use apache_avro::Schema;

/// One Avro schema file of `schemas/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contract {
    /// Raw shopper event, first version.
    PurchaseEventV1,
    /// Raw shopper event with the optional `channel` field (the current version).
    PurchaseEventV2,
    CleanEvent,
    EnrichedEvent,
    Product,
    User,
    KpiWindow,
    Session,
    Alert,
    DeadLetter,
    /// An enriched event later than the windower's grace (`purchases.late`).
    LateEvent,
}

impl Contract {
    pub const ALL: [Contract; 11] = [
        Contract::PurchaseEventV1,
        Contract::PurchaseEventV2,
        Contract::CleanEvent,
        Contract::EnrichedEvent,
        Contract::Product,
        Contract::User,
        Contract::KpiWindow,
        Contract::Session,
        Contract::Alert,
        Contract::DeadLetter,
        Contract::LateEvent,
    ];

    /// The current raw event contract, the one producers write.
    pub const RAW_CURRENT: Contract = Contract::PurchaseEventV2;

    /// File name under `schemas/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Contract::PurchaseEventV1 => "purchase_event.v1.avsc",
            Contract::PurchaseEventV2 => "purchase_event.v2.avsc",
            Contract::CleanEvent => "clean_event.avsc",
            Contract::EnrichedEvent => "enriched_event.avsc",
            Contract::Product => "product.avsc",
            Contract::User => "user.avsc",
            Contract::KpiWindow => "kpi_window.avsc",
            Contract::Session => "session.avsc",
            Contract::Alert => "alert.avsc",
            Contract::DeadLetter => "dead_letter.avsc",
            Contract::LateEvent => "late_event.avsc",
        }
    }

    /// The schema text, exactly as in the file.
    pub fn avsc(self) -> &'static str {
        match self {
            Contract::PurchaseEventV1 => include_str!("../../../schemas/purchase_event.v1.avsc"),
            Contract::PurchaseEventV2 => include_str!("../../../schemas/purchase_event.v2.avsc"),
            Contract::CleanEvent => include_str!("../../../schemas/clean_event.avsc"),
            Contract::EnrichedEvent => include_str!("../../../schemas/enriched_event.avsc"),
            Contract::Product => include_str!("../../../schemas/product.avsc"),
            Contract::User => include_str!("../../../schemas/user.avsc"),
            Contract::KpiWindow => include_str!("../../../schemas/kpi_window.avsc"),
            Contract::Session => include_str!("../../../schemas/session.avsc"),
            Contract::Alert => include_str!("../../../schemas/alert.avsc"),
            Contract::DeadLetter => include_str!("../../../schemas/dead_letter.avsc"),
            Contract::LateEvent => include_str!("../../../schemas/late_event.avsc"),
        }
    }

    /// The parsed schema, parsed once per process.
    ///
    /// The files are part of the build and covered by a test, so a parse failure here is a
    /// programming error, not a runtime condition.
    pub fn schema(self) -> &'static Schema {
        static PARSED: OnceLock<Vec<Schema>> = OnceLock::new();
        let all = PARSED.get_or_init(|| {
            Contract::ALL
                .iter()
                .map(|c| {
                    Schema::parse_str(c.avsc())
                        .unwrap_or_else(|e| panic!("schemas/{} does not parse: {e}", c.file_name()))
                })
                .collect()
        });
        let idx = Contract::ALL
            .iter()
            .position(|c| *c == self)
            .expect("every contract is in Contract::ALL");
        &all[idx]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_parses_and_is_a_named_record() {
        for c in Contract::ALL {
            match c.schema() {
                Schema::Record(r) => assert!(r.name.fullname(None).starts_with("io.cartstream.")),
                other => panic!("{} is not a record: {other:?}", c.file_name()),
            }
        }
    }

    #[test]
    fn raw_v2_only_adds_optional_fields_to_v1() {
        let (Schema::Record(v1), Schema::Record(v2)) = (
            Contract::PurchaseEventV1.schema(),
            Contract::PurchaseEventV2.schema(),
        ) else {
            panic!("raw events are records");
        };
        assert_eq!(v1.name, v2.name, "resolution needs the same full name");
        let v1_names: Vec<_> = v1.fields.iter().map(|f| f.name.as_str()).collect();
        let added: Vec<_> = v2
            .fields
            .iter()
            .filter(|f| !v1_names.contains(&f.name.as_str()))
            .collect();
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].name, "channel");
        assert!(added[0].default.is_some(), "an added field needs a default");
    }
}
