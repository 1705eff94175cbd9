//! Synthetic products and users.

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
    pub products: Vec<Product>,
    pub users: Vec<User>,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
