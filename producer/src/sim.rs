//! Shoppers with funnel behaviour: sessions that view popular products, add some to the cart,
//! remove some, check out or abandon, then end.

use std::collections::VecDeque;

use cartstream_events::types::{RawEvent, SourceMeta};
use chrono::{TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::catalog::Catalog;
use crate::zipf::Zipf;

/// Funnel probabilities per step of a session.
#[derive(Debug, Clone)]
pub struct Funnel {
    /// A session ends (abandoning any cart) with this probability per step.
    pub end: f64,
    /// With a non-empty cart: check out.
    pub checkout: f64,
    /// With a non-empty cart: remove one item.
    pub remove: f64,
    /// After a view: put the viewed product in the cart.
    pub cart: f64,
}

impl Default for Funnel {
    fn default() -> Self {
        Funnel {
            end: 0.05,
            checkout: 0.12,
            remove: 0.05,
            cart: 0.18,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Shoppers active at the same time.
    pub concurrent_sessions: usize,
    /// Zipf exponent of product popularity.
    pub popularity_skew: f64,
    pub funnel: Funnel,
    /// Written to `source.producer_id`.
    pub producer_id: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 42,
            concurrent_sessions: 1000,
            popularity_skew: 1.1,
            funnel: Funnel::default(),
            producer_id: "producer-0".into(),
        }
    }
}

#[derive(Debug)]
struct Shopper {
    session_id: String,
    user: usize,
    last_viewed: Option<usize>,
    cart: Vec<(usize, i32)>,
}

/// Generates events; deterministic for a seed and a sequence of `now_ms` values.
pub struct Simulator {
    rng: StdRng,
    catalog: Catalog,
    popularity: Zipf,
    shoppers: Vec<Shopper>,
    /// Purchases of a checkout not emitted yet: (session id, user, product, quantity).
    pending: VecDeque<(String, usize, usize, i32)>,
    config: SimConfig,
}

/// REES46-like text timestamp with milliseconds, always UTC.
pub fn format_event_time(ms: i64) -> String {
    match Utc.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => ms.to_string(),
    }
}

impl Simulator {
    pub fn new(catalog: Catalog, config: SimConfig) -> Self {
        assert!(
            !catalog.products.is_empty() && !catalog.users.is_empty(),
            "catalog is empty"
        );
        let mut rng = StdRng::seed_from_u64(config.seed);
        let popularity = Zipf::new(catalog.products.len(), config.popularity_skew);
        let n = config.concurrent_sessions.max(1);
        let shoppers = (0..n)
            .map(|_| new_shopper(&mut rng, catalog.users.len()))
            .collect();
        Simulator {
            rng,
            catalog,
            popularity,
            shoppers,
            pending: VecDeque::new(),
            config,
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The next event, stamped with `now_ms` as its event time.
    pub fn next_event(&mut self, now_ms: i64) -> RawEvent {
        if let Some((session, user, product, qty)) = self.pending.pop_front() {
            return self.event(&session, user, "purchase", product, qty, now_ms);
        }
        let i = self.rng.random_range(0..self.shoppers.len());
        let f = &self.config.funnel;
        let r: f64 = self.rng.random();
        let s = &self.shoppers[i];
        if r < f.end {
            self.shoppers[i] = new_shopper(&mut self.rng, self.catalog.users.len());
            return self.view(i, now_ms);
        }
        if !s.cart.is_empty() {
            if r < f.end + f.checkout {
                // Check out: one purchase event per cart item (as in REES46), then the session
                // ends and a new shopper takes the slot.
                let done = std::mem::replace(
                    &mut self.shoppers[i],
                    new_shopper(&mut self.rng, self.catalog.users.len()),
                );
                for (product, qty) in done.cart {
                    self.pending
                        .push_back((done.session_id.clone(), done.user, product, qty));
                }
                let (session, user, product, qty) =
                    self.pending.pop_front().expect("the cart was not empty");
                return self.event(&session, user, "purchase", product, qty, now_ms);
            }
            if r < f.end + f.checkout + f.remove {
                let k = self.rng.random_range(0..s.cart.len());
                let (product, qty) = self.shoppers[i].cart.swap_remove(k);
                return self.shopper_event(i, "remove_from_cart", product, qty, now_ms);
            }
        }
        if let Some(product) = s.last_viewed {
            if self.rng.random::<f64>() < f.cart {
                let qty = if self.rng.random::<f64>() < 0.1 {
                    self.rng.random_range(2..=4)
                } else {
                    1
                };
                self.shoppers[i].cart.push((product, qty));
                return self.shopper_event(i, "cart", product, qty, now_ms);
            }
        }
        self.view(i, now_ms)
    }

    fn view(&mut self, i: usize, now_ms: i64) -> RawEvent {
        let product = self.popularity.sample(&mut self.rng);
        self.shoppers[i].last_viewed = Some(product);
        self.shopper_event(i, "view", product, 1, now_ms)
    }

    fn shopper_event(
        &mut self,
        i: usize,
        kind: &str,
        product: usize,
        qty: i32,
        now_ms: i64,
    ) -> RawEvent {
        let session = std::mem::take(&mut self.shoppers[i].session_id);
        let user = self.shoppers[i].user;
        let ev = self.event(&session, user, kind, product, qty, now_ms);
        self.shoppers[i].session_id = session;
        ev
    }

    fn event(
        &mut self,
        session: &str,
        user: usize,
        kind: &str,
        product: usize,
        qty: i32,
        now_ms: i64,
    ) -> RawEvent {
        let p = &self.catalog.products[product];
        let user = &self.catalog.users[user];
        let id = uuid::Builder::from_random_bytes(self.rng.random()).into_uuid();
        RawEvent {
            event_id: id.to_string(),
            event_time: format_event_time(now_ms),
            event_type: kind.to_string(),
            product_id: p.product_id,
            category_id: p.category_id,
            category_code: Some(p.category_code.clone()),
            brand: Some(p.brand.clone()),
            price: p.price,
            currency: p.currency.clone(),
            quantity: qty,
            user_id: user.user_id,
            user_session: Some(session.to_string()),
            channel: Some(
                if user.device == "desktop" {
                    "web"
                } else {
                    "app"
                }
                .to_string(),
            ),
            source: SourceMeta {
                system: "simulator".into(),
                producer_id: self.config.producer_id.clone(),
                file: None,
                line: None,
                sent_at: now_ms,
            },
        }
    }
}

fn new_shopper(rng: &mut StdRng, n_users: usize) -> Shopper {
    Shopper {
        session_id: uuid::Builder::from_random_bytes(rng.random())
            .into_uuid()
            .to_string(),
        user: rng.random_range(0..n_users),
        last_viewed: None,
        cart: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn sim(seed: u64) -> Simulator {
        Simulator::new(
            Catalog::synthetic(seed, 500, 300, 0),
            SimConfig {
                seed,
                concurrent_sessions: 50,
                ..SimConfig::default()
            },
        )
    }

    #[test]
    fn deterministic_for_a_seed() {
        let (mut a, mut b) = (sim(3), sim(3));
        for t in 0..1000 {
            assert_eq!(a.next_event(t), b.next_event(t));
        }
    }

    #[test]
    fn funnel_shape_is_realistic() {
        let mut s = sim(5);
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut ids = HashSet::new();
        let mut carted: HashMap<(String, i64), i32> = HashMap::new();
        for t in 0..50_000 {
            let e = s.next_event(t);
            assert!(ids.insert(e.event_id.clone()), "event ids are unique");
            let key = (e.user_session.clone().unwrap(), e.product_id);
            match e.event_type.as_str() {
                "cart" => *carted.entry(key).or_default() += 1,
                // Nothing is bought or removed that was not in that session's cart.
                "purchase" | "remove_from_cart" => {
                    let n = carted
                        .get_mut(&key)
                        .expect("item was carted in this session");
                    assert!(*n > 0);
                    *n -= 1;
                }
                _ => {}
            }
            *counts.entry(e.event_type).or_default() += 1;
        }
        let (v, c, p) = (counts["view"], counts["cart"], counts["purchase"]);
        assert!(v > c && c > p && p > 0, "{counts:?}");
        let conversion = p as f64 / v as f64;
        assert!((0.01..0.3).contains(&conversion), "conversion {conversion}");
    }
}
