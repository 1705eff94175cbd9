//! The catalog the simulator shops in: products (synthetic, or loaded from a Steam-style CSV by
//! [`crate::steam`]), users with country, device and segment, and the currencies they pay in.
//!
//! Products are kept in popularity order: index 0 is the most popular, which is the rank the Zipf
//! sampler draws.

use cartstream_events::types::{Product, User};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Category paths of the synthetic shop, REES46 style, with a typical price range each.
const CATEGORIES: &[(&str, f64, f64)] = &[
    ("electronics.smartphone", 90.0, 1200.0),
    ("electronics.audio.headphone", 15.0, 400.0),
    ("electronics.video.tv", 150.0, 2500.0),
    ("computers.notebook", 300.0, 3000.0),
    ("computers.peripherals.mouse", 5.0, 150.0),
    ("appliances.kitchen.refrigerators", 250.0, 2200.0),
    ("appliances.environment.vacuum", 40.0, 700.0),
    ("apparel.shoes", 20.0, 250.0),
    ("furniture.living_room.sofa", 200.0, 2000.0),
    ("kids.toys", 5.0, 120.0),
    ("sport.bicycle", 150.0, 3000.0),
    ("auto.accessories.player", 20.0, 300.0),
];
const BRANDS: &[&str] = &[
    "samsung", "apple", "xiaomi", "huawei", "lg", "sony", "lenovo", "acer", "bosch", "nike",
    "adidas", "lego", "philips", "asus", "hp",
];
const COUNTRIES: &[(&str, u32)] = &[
    ("US", 30),
    ("DE", 12),
    ("GB", 10),
    ("FR", 8),
    ("PL", 6),
    ("BR", 8),
    ("JP", 7),
    ("IN", 9),
    ("CA", 5),
    ("ES", 5),
];
const DEVICES: &[(&str, u32)] = &[
    ("mobile", 55),
    ("desktop", 35),
    ("tablet", 7),
    ("console", 3),
];
const SEGMENTS: &[(&str, u32)] = &[("new", 40), ("regular", 50), ("vip", 10)];

/// The catalog the simulator shops in.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Most popular first.
    pub products: Vec<Product>,
    pub users: Vec<User>,
}

/// Units per US dollar of the currencies the simulator knows (fixed rates: the point is
/// plausible local prices, not finance).
const FX_PER_USD: &[(&str, f64)] = &[
    ("USD", 1.0),
    ("EUR", 0.92),
    ("GBP", 0.79),
    ("PLN", 4.0),
    ("BRL", 5.0),
    ("JPY", 150.0),
    ("INR", 83.0),
    ("CAD", 1.36),
];

/// The local currency of a user's country.
pub fn local_currency(country: &str) -> &'static str {
    match country {
        "DE" | "FR" | "ES" | "IT" | "NL" => "EUR",
        "GB" => "GBP",
        "PL" => "PLN",
        "BR" => "BRL",
        "JP" => "JPY",
        "IN" => "INR",
        "CA" => "CAD",
        _ => "USD",
    }
}

/// Whether the simulator can convert prices to and from `code`.
pub fn is_known_currency(code: &str) -> bool {
    FX_PER_USD.iter().any(|(c, _)| *c == code)
}

pub fn known_currencies() -> Vec<&'static str> {
    FX_PER_USD.iter().map(|(c, _)| *c).collect()
}

fn per_usd(code: &str) -> f64 {
    FX_PER_USD
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(1.0, |(_, r)| *r)
}

/// `price` in `from` converted to `to`, rounded to the minor unit of `to` (JPY has none).
pub fn convert_price(price: f64, from: &str, to: &str) -> f64 {
    if from == to || price <= 0.0 {
        return price;
    }
    let v = price / per_usd(from) * per_usd(to);
    if to == "JPY" {
        v.round().max(1.0)
    } else {
        ((v * 100.0).round() / 100.0).max(0.01)
    }
}

fn weighted<'a>(rng: &mut impl Rng, items: &'a [(&'a str, u32)]) -> &'a str {
    let total: u32 = items.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0..total);
    for (item, w) in items {
        if x < *w {
            return item;
        }
        x -= w;
    }
    items[items.len() - 1].0
}

/// Category id as REES46 has them: large, stable numbers derived from the path.
pub fn category_id(code: &str) -> i64 {
    // FNV-1a, masked to a positive i64: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in code.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

impl Catalog {
    /// `n_products` products over the built-in categories and `n_users` users, from `seed`.
    pub fn synthetic(seed: u64, n_products: usize, n_users: usize, now_ms: i64) -> Catalog {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x00ca_7a10_9000);
        let products = (0..n_products)
            .map(|i| {
                let (code, lo, hi) = CATEGORIES[rng.random_range(0..CATEGORIES.len())];
                let brand = BRANDS[rng.random_range(0..BRANDS.len())];
                // Log-uniform prices: many cheap items, few expensive ones.
                let price = (lo.ln() + rng.random::<f64>() * (hi.ln() - lo.ln())).exp();
                let leaf = code.rsplit('.').next().unwrap_or(code);
                Product {
                    product_id: 1_000_000 + i as i64,
                    name: format!("{brand} {leaf} {}", 100 + i),
                    category_id: category_id(code),
                    category_code: code.to_string(),
                    brand: brand.to_string(),
                    price: (price * 100.0).round() / 100.0,
                    currency: "USD".to_string(),
                    catalog: "synthetic".to_string(),
                    release_date: None,
                    genres: Vec::new(),
                    tags: Vec::new(),
                    updated_at: now_ms,
                }
            })
            .collect();
        let users = (0..n_users)
            .map(|i| User {
                user_id: 500_000_000 + i as i64,
                country: weighted(&mut rng, COUNTRIES).to_string(),
                device: weighted(&mut rng, DEVICES).to_string(),
                segment: weighted(&mut rng, SEGMENTS).to_string(),
                updated_at: now_ms,
            })
            .collect();
        Catalog { products, users }
    }

    /// Synthetic users only, for catalogs loaded from files.
    pub fn synthetic_users(seed: u64, n_users: usize, now_ms: i64) -> Vec<User> {
        Catalog::synthetic(seed, 0, n_users, now_ms).users
    }
}

/// What [`Catalog::take_prices`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PriceSync {
    /// Products of the catalog found among the records.
    pub matched: usize,
    /// Of those, products whose price or currency differed from the catalog's.
    pub changed: usize,
}

impl Catalog {
    /// Takes the current price (and currency) of each product from `records`, the product
    /// dimension as published (in publication order: the last record of an id wins). Products the
    /// records do not hold keep their price; records of products not in the catalog are ignored.
    ///
    /// Why: a simulation that follows another one (the demo's live run after its history) must
    /// price from the catalog the enricher and the detector see — the first run's price changes
    /// included — or every purchase of a product whose price moved looks like an anomaly.
    pub fn take_prices(&mut self, records: impl IntoIterator<Item = Product>) -> PriceSync {
        let mut latest: std::collections::HashMap<i64, Product> = Default::default();
        for p in records {
            latest.insert(p.product_id, p);
        }
        let mut sync = PriceSync::default();
        for p in &mut self.products {
            let Some(l) = latest.get(&p.product_id) else {
                continue;
            };
            sync.matched += 1;
            if l.price != p.price || l.currency != p.currency {
                sync.changed += 1;
                p.price = l.price;
                p.currency.clone_from(&l.currency);
                p.updated_at = l.updated_at;
            }
        }
        sync
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_taken_from_the_latest_published_record() {
        let mut c = Catalog::synthetic(1, 3, 0, 0);
        let (a, b) = (c.products[0].clone(), c.products[1].clone());
        let moved = |p: &Product, price: f64| Product {
            price,
            updated_at: 7,
            ..p.clone()
        };
        let stranger = Product {
            product_id: 42,
            ..moved(&a, 1.0)
        };
        let sync = c.take_prices([moved(&a, 1.5), moved(&a, 2.5), b.clone(), stranger]);
        assert_eq!(
            sync,
            PriceSync {
                matched: 2,
                changed: 1
            }
        );
        assert_eq!(c.products[0].price, 2.5, "the last record of an id wins");
        assert_eq!(c.products[0].updated_at, 7);
        assert_eq!(c.products[1], b, "unchanged");
        assert_eq!(c.products.len(), 3, "records of other products are ignored");
    }

    #[test]
    fn same_seed_same_catalog_and_sane_values() {
        let a = Catalog::synthetic(1, 200, 100, 0);
        let b = Catalog::synthetic(1, 200, 100, 0);
        assert_eq!(a.products, b.products);
        assert_eq!(a.users, b.users);
        assert_ne!(a.products, Catalog::synthetic(2, 200, 100, 0).products);
        assert!(a
            .products
            .iter()
            .all(|p| p.price > 0.0 && p.category_id > 0));
        let ids: std::collections::HashSet<_> = a.products.iter().map(|p| p.product_id).collect();
        assert_eq!(ids.len(), 200);
        assert_eq!(category_id("kids.toys"), category_id("kids.toys"));
        assert_ne!(category_id("kids.toys"), category_id("sport.bicycle"));
    }

    #[test]
    fn prices_convert_to_minor_units() {
        assert_eq!(convert_price(10.0, "USD", "USD"), 10.0);
        assert_eq!(convert_price(10.0, "USD", "EUR"), 9.2);
        assert_eq!(convert_price(10.0, "USD", "JPY"), 1500.0);
        assert_eq!(convert_price(0.001, "USD", "EUR"), 0.01);
        assert_eq!(convert_price(0.0, "USD", "EUR"), 0.0);
        assert_eq!(local_currency("DE"), "EUR");
        assert!(known_currencies().iter().all(|c| is_known_currency(c)));
    }
}
