//! The join of clean events with the dimension tables.
//!
//! The tables are the latest value per key of the compacted `catalog.products` and
//! `catalog.users` topics. An event whose product or user is not (yet) known is still enriched,
//! with `unknown` values and `*_known = false`, and counted by the caller: never dropped.

use std::collections::HashMap;

use cartstream_events::types::{CleanEvent, EnrichedEvent, Product, User};

use crate::clean::UNKNOWN;

/// Latest dimension values by id.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    pub products: HashMap<i64, Product>,
    pub users: HashMap<i64, User>,
}

impl Tables {
    /// Applies an update from the product topic: a value replaces, a tombstone (`None`) deletes.
    pub fn apply_product(&mut self, id: i64, value: Option<Product>) {
        match value {
            Some(p) => {
                self.products.insert(id, p);
            }
            None => {
                self.products.remove(&id);
            }
        }
    }

    pub fn apply_user(&mut self, id: i64, value: Option<User>) {
        match value {
            Some(u) => {
                self.users.insert(id, u);
            }
            None => {
                self.users.remove(&id);
            }
        }
    }
}

/// Joins one event. The event's own category and brand win over the catalog's when it has
/// them; the catalog fills in what the event lacks.
pub fn enrich(e: CleanEvent, tables: &Tables) -> EnrichedEvent {
    let product = tables.products.get(&e.product_id);
    let user = tables.users.get(&e.user_id);
    let fill = |own: String, catalog: Option<&String>| match catalog {
        Some(c) if own == UNKNOWN && !c.is_empty() => c.to_lowercase(),
        _ => own,
    };
    EnrichedEvent {
        category_code: fill(e.category_code, product.map(|p| &p.category_code)),
        brand: fill(e.brand, product.map(|p| &p.brand)),
        event_id: e.event_id,
        event_time: e.event_time,
        event_type: e.event_type,
        product_id: e.product_id,
        category_id: e.category_id,
        price: e.price,
        currency: e.currency,
        quantity: e.quantity,
        user_id: e.user_id,
        user_session: e.user_session,
        channel: e.channel,
        source_system: e.source_system,
        product_known: product.is_some(),
        product_name: product.map_or_else(|| UNKNOWN.to_string(), |p| p.name.clone()),
        catalog_price: product.map(|p| p.price),
        user_known: user.is_some(),
        user_country: user.map_or_else(|| UNKNOWN.to_string(), |u| u.country.clone()),
        user_device: user.map_or_else(|| UNKNOWN.to_string(), |u| u.device.clone()),
        user_segment: user.map_or_else(|| UNKNOWN.to_string(), |u| u.segment.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartstream_events::types::EventType;

    fn event() -> CleanEvent {
        CleanEvent {
            event_id: "e".into(),
            event_time: 1,
            event_type: EventType::View,
            product_id: 7,
            category_id: 1,
            category_code: UNKNOWN.into(),
            brand: "acme".into(),
            price: 9.0,
            currency: "USD".into(),
            quantity: 1,
            user_id: 8,
            user_session: "s".into(),
            channel: None,
            source_system: "sim".into(),
        }
    }

    fn product(price: f64) -> Product {
        Product {
            product_id: 7,
            name: "Widget".into(),
            category_id: 1,
            category_code: "Tools.Hand".into(),
            brand: "other".into(),
            price,
            currency: "USD".into(),
            catalog: "synthetic".into(),
            release_date: None,
            genres: vec![],
            tags: vec![],
            updated_at: 0,
        }
    }

    #[test]
    fn unknown_dimensions_are_explicit() {
        let e = enrich(event(), &Tables::default());
        assert!(!e.product_known && !e.user_known);
        assert_eq!(
            (e.product_name.as_str(), e.user_country.as_str()),
            (UNKNOWN, UNKNOWN)
        );
        assert_eq!(e.catalog_price, None);
        assert_eq!(e.event_id, "e");
    }

    #[test]
    fn known_dimensions_fill_in_and_updates_are_seen() {
        let mut t = Tables::default();
        t.apply_product(7, Some(product(10.0)));
        t.apply_user(
            8,
            Some(User {
                user_id: 8,
                country: "DE".into(),
                device: "mobile".into(),
                segment: "vip".into(),
                updated_at: 0,
            }),
        );
        let e = enrich(event(), &t);
        assert!(e.product_known && e.user_known);
        assert_eq!(
            e.category_code, "tools.hand",
            "catalog fills a missing category"
        );
        assert_eq!(e.brand, "acme", "the event's own brand wins");
        assert_eq!(
            (e.catalog_price, e.user_country.as_str()),
            (Some(10.0), "DE")
        );

        t.apply_product(7, Some(product(12.5)));
        assert_eq!(
            enrich(event(), &t).catalog_price,
            Some(12.5),
            "a price change is seen by later events"
        );
        t.apply_product(7, None);
        assert!(!enrich(event(), &t).product_known, "a tombstone deletes");
    }
}
