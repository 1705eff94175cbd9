//! A game-store catalog from a CSV in the column layout of the public Steam store games dataset
//! (`appid,name,release_date,english,developer,publisher,platforms,required_age,categories,
//! genres,steamspy_tags,achievements,positive_ratings,negative_ratings,average_playtime,
//! median_playtime,owners,price`).
//!
//! Columns are found by header name, case- and punctuation-insensitively, so the other common
//! Steam export (`AppID,Name,Release date,Estimated owners,...,Price,...,Developers,...,Genres,
//! Tags`) loads too. Only the id, the name and the price are required; a row without them is
//! skipped and counted by reason, never fatal.
//!
//! Mapping: `appid` → `product_id`; the first genre → the category (`category_code`
//! `games.<genre>`, e.g. `games.action`, `category_id` derived from it); every genre → `genres`;
//! `steamspy_tags`/`tags` → `tags`; `developer` → `brand`. Rows are ordered by popularity
//! (ratings, else the lower bound of the owners range), most popular first, so the simulator's
//! Zipf popularity follows the real one.

use std::collections::BTreeMap;
use std::io::Read;

use cartstream_events::types::Product;

use crate::catalog::category_id;
use crate::clock::days_from_civil;

/// What loading found.
#[derive(Debug, Default)]
pub struct SteamCatalog {
    /// Most popular first.
    pub products: Vec<Product>,
    /// Rows skipped, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    pub rows: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SteamError {
    #[error("cannot read the steam csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("the steam csv has no {0} column (headers: {1})")]
    MissingColumn(&'static str, String),
}

/// Header name as a key: lower case, letters and digits only (`Release date` → `releasedate`).
fn norm(h: &str) -> String {
    h.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn find(headers: &[String], names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|n| headers.iter().position(|h| h == n))
}

/// `games.<slug>` for a genre name: lower case, runs of other characters become `_`.
pub fn genre_code(genre: &str) -> String {
    let mut slug = String::new();
    for c in genre.trim().chars() {
        if c.is_alphanumeric() {
            slug.extend(c.to_lowercase());
        } else if !slug.ends_with('_') && !slug.is_empty() {
            slug.push('_');
        }
    }
    let slug = slug.trim_end_matches('_');
    if slug.is_empty() {
        "games.other".to_string()
    } else {
        format!("games.{slug}")
    }
}

fn split_list(s: &str) -> Vec<String> {
    let sep = if s.contains(';') { ';' } else { ',' };
    s.split(sep)
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// `2000-11-01`, `Nov 1, 2000` or `1 Nov, 2000` as days since the epoch.
fn parse_date(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(days(d));
    }
    for fmt in ["%b %d, %Y", "%d %b, %Y", "%B %d, %Y", "%b %Y"] {
        if let Ok(d) = chrono::NaiveDate::parse_from_str(s, fmt) {
            return Some(days(d));
        }
    }
    None
}

fn days(d: chrono::NaiveDate) -> i32 {
    use chrono::Datelike;
    days_from_civil(i64::from(d.year()), d.month(), d.day()) as i32
}

/// Leading number of `10000-20000` or `10,000 - 20,000`.
fn owners_lower(s: &str) -> Option<f64> {
    let first = s.split('-').next()?.replace([',', ' '], "");
    first.parse().ok()
}

/// Loads products from a Steam-style CSV. `currency` is the currency of its `price` column.
pub fn load(reader: impl Read, currency: &str, now_ms: i64) -> Result<SteamCatalog, SteamError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(reader);
    let raw_headers = rdr.headers()?.clone();
    let headers: Vec<String> = raw_headers.iter().map(norm).collect();
    let shown = || raw_headers.iter().collect::<Vec<_>>().join(",");
    let id = find(&headers, &["appid", "id"])
        .ok_or_else(|| SteamError::MissingColumn("appid", shown()))?;
    let name = find(&headers, &["name", "title"])
        .ok_or_else(|| SteamError::MissingColumn("name", shown()))?;
    let price = find(&headers, &["price", "originalprice"])
        .ok_or_else(|| SteamError::MissingColumn("price", shown()))?;
    let release = find(&headers, &["releasedate", "release"]);
    let genres = find(&headers, &["genres", "genre"]);
    let tags = find(&headers, &["steamspytags", "tags"]);
    let brand = find(
        &headers,
        &["developer", "developers", "publisher", "publishers"],
    );
    let positive = find(&headers, &["positiveratings", "positive"]);
    let negative = find(&headers, &["negativeratings", "negative"]);
    let owners = find(&headers, &["owners", "estimatedowners"]);

    let mut out = SteamCatalog::default();
    let mut ranked: Vec<(f64, usize, Product)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut record = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.is_io_error() => {
                *out.skipped.entry("unreadable_rest_of_file").or_default() += 1;
                break;
            }
            Err(_) => {
                out.rows += 1;
                *out.skipped.entry("invalid_utf8").or_default() += 1;
                continue;
            }
        }
        out.rows += 1;
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).unwrap_or("");
        let Ok(product_id) = get(Some(id)).parse::<i64>() else {
            *out.skipped.entry("bad_appid").or_default() += 1;
            continue;
        };
        let title = get(Some(name));
        if title.is_empty() {
            *out.skipped.entry("missing_name").or_default() += 1;
            continue;
        }
        let price_text = get(Some(price));
        let p = if price_text.eq_ignore_ascii_case("free") {
            Some(0.0)
        } else {
            price_text
                .trim_start_matches(['$', '£', '€'])
                .parse::<f64>()
                .ok()
        };
        let Some(p) = p.filter(|p| p.is_finite() && *p >= 0.0) else {
            *out.skipped.entry("bad_price").or_default() += 1;
            continue;
        };
        if !seen.insert(product_id) {
            *out.skipped.entry("duplicate_appid").or_default() += 1;
            continue;
        }
        let genre_list = split_list(get(genres));
        let code = genre_list
            .first()
            .map_or_else(|| "games.other".to_string(), |g| genre_code(g));
        let rating = |i| get(i).parse::<f64>().ok();
        let popularity = match (rating(positive), rating(negative)) {
            (Some(a), Some(b)) => a + b,
            (Some(a), None) => a,
            _ => owners_lower(get(owners)).unwrap_or(0.0),
        };
        let developer = split_list(get(brand)).into_iter().next();
        let product = Product {
            product_id,
            name: title.to_string(),
            category_id: category_id(&code),
            category_code: code,
            brand: developer.unwrap_or_else(|| "unknown".into()),
            price: (p * 100.0).round() / 100.0,
            currency: currency.to_string(),
            catalog: "steam".into(),
            release_date: parse_date(get(release)),
            genres: genre_list,
            tags: split_list(get(tags)),
            updated_at: now_ms,
        };
        ranked.push((popularity, ranked.len(), product));
    }
    // Most popular first; ties keep file order, so the result is deterministic.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    out.products = ranked.into_iter().map(|(_, _, p)| p).collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIKDAVIS: &str = "appid,name,release_date,english,developer,publisher,platforms,required_age,categories,genres,steamspy_tags,achievements,positive_ratings,negative_ratings,average_playtime,median_playtime,owners,price\n\
10,Counter-Strike,2000-11-01,1,Valve,Valve,windows;mac;linux,0,Multi-player;Online Multi-Player,Action,Action;FPS;Multiplayer,0,124534,3339,17612,317,10000000-20000000,7.19\n\
20,Team Fortress Classic,1999-04-01,1,Valve,Valve,windows,0,Online Multi-Player,Action,Action;FPS,0,3318,633,277,62,5000000-10000000,3.99\n\
570,\"Dota 2, the game\",2013-07-09,1,Valve,Valve,windows,0,Multi-player,Action;Free to Play;Strategy,Free to Play;MOBA,0,863507,142079,23944,801,100000000-200000000,0.0\n\
abc,Broken,2000-01-01,1,X,X,windows,0,,Indie,,0,1,1,0,0,0-20000,1.0\n\
30,Day of Defeat,2003-05-01,1,Valve,Valve,windows,0,,Action,,0,3416,398,187,34,5000000-10000000,not-a-price\n\
40,No Genre Game,Nov 1 2000,1,Y,Y,windows,0,,,,0,10,1,0,0,0-20000,0.79\n";

    #[test]
    fn loads_the_steam_layout_by_header_name() {
        let c = load(NIKDAVIS.as_bytes(), "GBP", 5).unwrap();
        assert_eq!(c.rows, 6);
        assert_eq!(c.skipped.get("bad_appid"), Some(&1));
        assert_eq!(c.skipped.get("bad_price"), Some(&1));
        let ids: Vec<i64> = c.products.iter().map(|p| p.product_id).collect();
        // Ordered by ratings: Dota 2, Counter-Strike, TFC, then the unrated one.
        assert_eq!(ids, vec![570, 10, 20, 40]);
        let cs = &c.products[1];
        assert_eq!(cs.category_code, "games.action");
        assert_eq!(cs.category_id, category_id("games.action"));
        assert_eq!(cs.brand, "Valve");
        assert_eq!(cs.price, 7.19);
        assert_eq!(cs.currency, "GBP");
        assert_eq!(cs.catalog, "steam");
        assert_eq!(cs.release_date, Some(11_262));
        assert_eq!(cs.tags, vec!["Action", "FPS", "Multiplayer"]);
        let dota = &c.products[0];
        assert_eq!(dota.name, "Dota 2, the game");
        assert_eq!(dota.genres, vec!["Action", "Free to Play", "Strategy"]);
        assert_eq!(dota.price, 0.0);
        assert_eq!(c.products[3].category_code, "games.other");
        assert_eq!(c.products[3].release_date, None);
    }

    #[test]
    fn other_column_orders_and_names_load_too() {
        let csv = "Name,Price,Genres,AppID,Release date,Estimated owners,Developers,Tags\n\
Half-Life,9.99,\"Action,Shooter\",70,\"Nov 8, 1998\",10000000 - 20000000,Valve,\"FPS,Classic\"\n";
        let c = load(csv.as_bytes(), "USD", 0).unwrap();
        assert_eq!(c.products.len(), 1);
        let p = &c.products[0];
        assert_eq!((p.product_id, p.price), (70, 9.99));
        assert_eq!(p.category_code, "games.action");
        assert_eq!(p.tags, vec!["FPS", "Classic"]);
        assert!(p.release_date.is_some());
        let e = load("name,price\nx,1\n".as_bytes(), "USD", 0).unwrap_err();
        assert!(e.to_string().contains("appid"), "{e}");
    }

    #[test]
    fn genre_codes_are_dotted_slugs() {
        assert_eq!(genre_code("Action"), "games.action");
        assert_eq!(genre_code("Free to Play"), "games.free_to_play");
        assert_eq!(
            genre_code("Massively Multiplayer"),
            "games.massively_multiplayer"
        );
        assert_eq!(genre_code("  "), "games.other");
    }
}
