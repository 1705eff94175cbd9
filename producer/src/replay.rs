//! Replay of event files in the REES46 layout
//! (`event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session`),
//! plain or gzip (detected by its magic bytes, not the file name), and of other exports (an order
//! history) mapped onto it.
//!
//! Columns are found by header name, so any column order works; `--column target=source` maps a
//! differently named column of the user's export and `--set target=value` gives a column one
//! value on every row (an order export has no `event_type`: `--set event_type=purchase`).
//! Optional extra columns are used when present: `event_id`, `currency`, `quantity`, `channel`.
//!
//! Real files are messy; no row stops a replay. Each row is either **sent** as an event or
//! **skipped** with a reason ([`Skip`]):
//! - Rows that the raw Avro schema can carry are sent, even when a cleaner must reject them (a
//!   zero or negative price or quantity, an empty `user_session`, an unknown event type, an
//!   unparseable time): judging them is the cleaner's job, and it dead-letters them with a reason.
//! - Rows that cannot form an event at all are skipped: a field count different from the header
//!   (a truncated last line), a repeated header line, invalid UTF-8 in a column that is used, or
//!   an empty or unparseable `product_id`, `category_id`, `user_id`, `price` or `quantity`, and
//!   with `--guest-users reject` a row without a user (`guest_user`). A read error (e.g. a gzip
//!   stream cut short) ends the replay with what was read, reported as `unreadable_rest`.
//! - Blank lines are ignored. CRLF line ends and blanks around fields are trimmed. Invalid UTF-8
//!   in a column no target uses (a Latin-1 description) does not matter.
//!
//! **Product ids.** `--product-ids number` (default): the column holds integers. `--product-ids
//! sku`: it holds SKU strings (`85123A`, `POST`), each mapped to [`sku_product_id`], a stable id
//! in the reserved range `[2^52, 2^53)`, whatever the file or the run (numeric SKUs too, so one
//! file's ids all come from one rule).
//!
//! **Guests.** A row whose `user_id` is empty is a guest checkout. `--guest-users anonymous`
//! (default) gives it [`guest_user_id`] of its `user_session` (the invoice of an order export): a
//! stable id in the reserved range `[2^51, 2^52)`, one per session, the same in every replay.
//! `--guest-users reject` skips the row as `guest_user`. Integral decimals (`17850.0`, as
//! spreadsheets write ids) are read as integers.
//!
//! **event_id**: the file's own `event_id` column when present and not blank; otherwise
//! `UUIDv5(REPLAY_NAMESPACE, canonical row)`, where the canonical row is the nine REES46 fields in
//! that fixed order, trimmed (numbers as parsed: `product_id`, `category_id` and `user_id` in
//! decimal — a SKU's or a guest's derived id —, `price` in Rust's shortest round-trip form), then
//! `name=value` for each of `currency`, `quantity` and `channel` that the row has a source for (a
//! column or a constant), all joined with the unit separator `\x1f`. Every mapped column that can
//! tell two events apart is in it: two order lines that differ only in quantity get two ids. A
//! REES46 file without those columns keeps the ids of the nine fields alone. The id depends only on
//! the row's content and the mapping: not on the file name, the line number, the column order or
//! the line ends. Exact duplicate rows therefore get the same `event_id` — in REES46 they are
//! double-logged events, and the cleaner drops the repeats — and a file replayed twice yields the
//! same ids, so a Kappa replay of the same data deduplicates. (Caveat: two genuinely separate
//! identical actions within the same second of the same session collapse into one.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

use cartstream_events::types::{RawEvent, SourceMeta};

use crate::clock::{format_rfc3339, parse_event_time};

/// Namespace of replay event ids (a fixed random UUID; changing it changes every id).
pub const REPLAY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a0f_3b2e_9c41_4d7a_8e15_c2b9_70d4_1f63);
/// Namespace of the ids of SKUs (a fixed random UUID).
pub const SKU_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x0b7e_52c4_1d93_4f0a_a6e2_5c18_93fd_70b1);
/// Namespace of the ids of guest users (a fixed random UUID).
pub const GUEST_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x93c1_0e5f_7a24_4b86_b1d7_2e60_c4a9_38f5);
/// First id of the range SKUs are mapped to: `[2^52, 2^53)`, exact in a double (JSON, Grafana).
pub const SKU_ID_BASE: i64 = 1 << 52;
/// First id of the range guest users are mapped to: `[2^51, 2^52)`.
pub const GUEST_ID_BASE: i64 = 1 << 51;

/// The REES46 columns, in their canonical order.
pub const REES46: [&str; 9] = [
    "event_time",
    "event_type",
    "product_id",
    "category_id",
    "category_code",
    "brand",
    "price",
    "user_id",
    "user_session",
];
/// Columns without which no row can be replayed.
const REQUIRED: [&str; 6] = [
    "event_time",
    "event_type",
    "product_id",
    "price",
    "user_id",
    "user_session",
];
const OPTIONAL: [&str; 7] = [
    "category_id",
    "category_code",
    "brand",
    "event_id",
    "currency",
    "quantity",
    "channel",
];
/// Columns beyond the nine REES46 ones that enter the content id when the row has a source for
/// them, in this order.
const ID_EXTRAS: [&str; 3] = ["currency", "quantity", "channel"];

/// How the `product_id` column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProductIds {
    /// Integers, used as they are.
    #[default]
    Number,
    /// SKU strings, each mapped to a stable id in `[2^52, 2^53)`.
    Sku,
}

/// What to do with a row whose `user_id` is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GuestUsers {
    /// Send it as an anonymous user, one stable id per session.
    #[default]
    Anonymous,
    /// Skip it as `guest_user`.
    Reject,
}

/// How the columns of a file become the fields of an event.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    /// (target, the file's column name).
    pub columns: Vec<(String, String)>,
    /// (target, the value every row gets).
    pub constants: Vec<(String, String)>,
    pub product_ids: ProductIds,
    pub guests: GuestUsers,
    /// A chrono `strftime` pattern of the file's times (UTC unless it has an offset): matching
    /// times are sent as RFC 3339.
    pub time_format: Option<String>,
}

/// Why a row was skipped. Stable codes: report keys and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// Fewer fields than the header (typically a truncated last line).
    TooFewFields,
    TooManyFields,
    RepeatedHeader,
    InvalidUtf8,
    BadProductId,
    BadCategoryId,
    BadUserId,
    BadPrice,
    BadQuantity,
    /// No user, with `--guest-users reject`.
    GuestUser,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::TooFewFields => "too_few_fields",
            Skip::TooManyFields => "too_many_fields",
            Skip::RepeatedHeader => "repeated_header",
            Skip::InvalidUtf8 => "invalid_utf8",
            Skip::BadProductId => "bad_product_id",
            Skip::BadCategoryId => "bad_category_id",
            Skip::BadUserId => "bad_user_id",
            Skip::BadPrice => "bad_price",
            Skip::BadQuantity => "bad_quantity",
            Skip::GuestUser => "guest_user",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ColumnError {
    #[error("the file has no {missing} column (its header: {header}); map one with --column {missing}=<name> or give it a value with --set {missing}=<value>")]
    Missing { missing: String, header: String },
    #[error("--column/--set {0}: unknown target column (known: {1})")]
    UnknownTarget(String, String),
    #[error("{0} is given both by --column and by --set")]
    Twice(String),
    #[error("--column {target}={name}: the file has no column {name} (its header: {header})")]
    NoSuchColumn {
        target: String,
        name: String,
        header: String,
    },
}

/// Where one target field comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A column of the file: its index and its name in the header.
    Column(usize, String),
    /// The same value on every row.
    Constant(String),
}

/// Where each field is in a row.
#[derive(Debug, Clone)]
pub struct Columns {
    width: usize,
    idx: BTreeMap<&'static str, usize>,
    consts: BTreeMap<&'static str, String>,
    header: Vec<String>,
    product_ids: ProductIds,
    guests: GuestUsers,
    time_format: Option<String>,
}

fn norm(s: &str) -> String {
    s.trim().trim_start_matches('\u{feff}').to_ascii_lowercase()
}

fn known_targets() -> String {
    [REQUIRED.as_slice(), OPTIONAL.as_slice()]
        .concat()
        .join(", ")
}

fn target(name: &str) -> Option<&'static str> {
    REQUIRED
        .iter()
        .chain(OPTIONAL.iter())
        .find(|t| **t == name)
        .copied()
}

impl Columns {
    /// Finds the columns in `header` as `mapping` says.
    pub fn from_header(header: &[&str], mapping: &Mapping) -> Result<Self, ColumnError> {
        let names: Vec<String> = header.iter().map(|h| norm(h)).collect();
        let mut idx = BTreeMap::new();
        let mut consts = BTreeMap::new();
        for (t, _) in mapping.columns.iter().chain(mapping.constants.iter()) {
            if target(t).is_none() {
                return Err(ColumnError::UnknownTarget(t.clone(), known_targets()));
            }
        }
        for (t, v) in &mapping.constants {
            if mapping.columns.iter().any(|(c, _)| c == t) {
                return Err(ColumnError::Twice(t.clone()));
            }
            if let Some(t) = target(t) {
                consts.insert(t, v.trim().to_string());
            }
        }
        for col in REQUIRED.iter().chain(OPTIONAL.iter()) {
            if consts.contains_key(col) {
                continue;
            }
            let renamed = mapping.columns.iter().find(|(t, _)| t == col);
            let wanted = renamed.map_or_else(|| col.to_string(), |(_, s)| norm(s));
            if let Some(i) = names.iter().position(|n| *n == wanted) {
                idx.insert(*col, i);
            } else if let Some((t, name)) = renamed {
                return Err(ColumnError::NoSuchColumn {
                    target: t.clone(),
                    name: name.clone(),
                    header: header.join(","),
                });
            } else if REQUIRED.contains(col) {
                return Err(ColumnError::Missing {
                    missing: col.to_string(),
                    header: header.join(","),
                });
            }
        }
        Ok(Columns {
            width: header.len(),
            idx,
            consts,
            header: header.iter().map(|h| h.trim().to_string()).collect(),
            product_ids: mapping.product_ids,
            guests: mapping.guests,
            time_format: mapping.time_format.clone(),
        })
    }

    fn get<'a>(&'a self, fields: &[&'a str], col: &str) -> Option<&'a str> {
        if let Some(c) = self.consts.get(col) {
            return Some(c.as_str());
        }
        self.idx.get(col).and_then(|i| fields.get(*i)).copied()
    }

    /// Whether the row has a source (a column or a constant) for `col`.
    pub fn has(&self, col: &str) -> bool {
        self.consts.contains_key(col) || self.idx.contains_key(col)
    }

    /// Whether a target reads the file's column `i`.
    pub fn uses(&self, i: usize) -> bool {
        self.idx.values().any(|j| *j == i)
    }

    /// Every target with its source, in the canonical order (for `--dry-run`).
    pub fn sources(&self) -> Vec<(&'static str, Option<Source>)> {
        REES46
            .iter()
            .chain(OPTIONAL.iter().filter(|c| !REES46.contains(c)))
            .map(|t| {
                let s = match (self.consts.get(t), self.idx.get(t)) {
                    (Some(v), _) => Some(Source::Constant(v.clone())),
                    (None, Some(i)) => Some(Source::Column(*i, self.header[*i].clone())),
                    (None, None) => None,
                };
                (*t, s)
            })
            .collect()
    }

    /// The file's columns no target uses.
    pub fn unused(&self) -> Vec<&str> {
        (0..self.header.len())
            .filter(|i| !self.uses(*i))
            .map(|i| self.header[i].as_str())
            .collect()
    }

    pub fn product_ids(&self) -> ProductIds {
        self.product_ids
    }
}

/// A row that forms an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub event_id: String,
    pub event_time: String,
    /// Parsed event time, when the text is a timestamp.
    pub time_ms: Option<i64>,
    pub event_type: String,
    pub product_id: i64,
    /// The SKU the product id was derived from (`--product-ids sku`).
    pub sku: Option<String>,
    pub category_id: i64,
    pub category_code: Option<String>,
    pub brand: Option<String>,
    pub price: f64,
    pub currency: Option<String>,
    pub quantity: i32,
    pub user_id: i64,
    /// The row had no user: `user_id` is the session's anonymous id.
    pub guest: bool,
    pub user_session: Option<String>,
    pub channel: Option<String>,
}

fn opt(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn top_bits(ns: &uuid::Uuid, text: &str) -> u64 {
    let b = uuid::Uuid::new_v5(ns, text.as_bytes()).into_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// The stable id of a SKU (trimmed, case kept): `2^52 + the first 52 bits of
/// UUIDv5(SKU_NAMESPACE, sku)`.
pub fn sku_product_id(sku: &str) -> i64 {
    SKU_ID_BASE + (top_bits(&SKU_NAMESPACE, sku.trim()) >> 12) as i64
}

/// The stable id of the guest of a session (trimmed; rows without a session share the id of
/// the empty one): `2^51 + the first 51 bits of UUIDv5(GUEST_NAMESPACE, session)`.
pub fn guest_user_id(session: Option<&str>) -> i64 {
    GUEST_ID_BASE + (top_bits(&GUEST_NAMESPACE, session.unwrap_or("").trim()) >> 13) as i64
}

/// An integer, or a decimal whose fraction is zeros (`17850.0`).
fn parse_id(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let (int, frac) = s.split_once('.')?;
    if frac.is_empty() || !frac.bytes().all(|b| b == b'0') {
        return None;
    }
    int.parse().ok()
}

/// The deterministic id of a row whose extra columns (`currency`, `quantity`, `channel`) are in
/// `extras` when the mapping has a source for them (see the module docs).
pub fn derive_event_id(r: &Row, extras: &[&str]) -> uuid::Uuid {
    let mut fields = vec![
        r.event_time.trim().to_string(),
        r.event_type.trim().to_string(),
        r.product_id.to_string(),
        r.category_id.to_string(),
        r.category_code.clone().unwrap_or_default(),
        r.brand.clone().unwrap_or_default(),
        r.price.to_string(),
        r.user_id.to_string(),
        r.user_session.clone().unwrap_or_default(),
    ];
    for e in ID_EXTRAS.iter().filter(|e| extras.contains(e)) {
        let v = match *e {
            "currency" => r.currency.clone().unwrap_or_default(),
            "quantity" => r.quantity.to_string(),
            _ => r.channel.clone().unwrap_or_default(),
        };
        fields.push(format!("{e}={v}"));
    }
    uuid::Uuid::new_v5(&REPLAY_NAMESPACE, fields.join("\x1f").as_bytes())
}

/// The event time as sent, and its parsed value: with a time format, a matching time becomes
/// RFC 3339; any other text is sent as written (the cleaner judges it).
fn event_time(text: &str, format: Option<&str>) -> (String, Option<i64>) {
    if let Some(f) = format {
        let parsed = chrono::DateTime::parse_from_str(text, f)
            .map(|t| t.timestamp_millis())
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(text, f)
                    .map(|t| t.and_utc().timestamp_millis())
            });
        if let Ok(ms) = parsed {
            return (format_rfc3339(ms), Some(ms));
        }
    }
    (text.to_string(), parse_event_time(text))
}

/// Parses one row's fields (already split by the CSV reader).
pub fn parse_row(cols: &Columns, fields: &[&str]) -> Result<Row, Skip> {
    if fields.len() < cols.width {
        return Err(Skip::TooFewFields);
    }
    if fields.len() > cols.width {
        return Err(Skip::TooManyFields);
    }
    let get = |c: &str| cols.get(fields, c).map(str::trim).unwrap_or("");
    // A header line repeated inside the file: its mapped columns hold their own names.
    let named = |c: &str| {
        cols.idx
            .get(c)
            .is_some_and(|i| get(c).eq_ignore_ascii_case(cols.header[*i].trim()))
    };
    if named("event_time") && (named("event_type") || named("product_id")) {
        return Err(Skip::RepeatedHeader);
    }
    let (product_id, sku) = match cols.product_ids {
        ProductIds::Number => (
            get("product_id")
                .parse::<i64>()
                .map_err(|_| Skip::BadProductId)?,
            None,
        ),
        ProductIds::Sku => match get("product_id") {
            "" => return Err(Skip::BadProductId),
            s => (sku_product_id(s), Some(s.to_string())),
        },
    };
    let category_id = if cols.has("category_id") {
        get("category_id")
            .parse::<i64>()
            .map_err(|_| Skip::BadCategoryId)?
    } else {
        0
    };
    let user_session = opt(cols.get(fields, "user_session"));
    let (user_id, guest) = match get("user_id") {
        "" => match cols.guests {
            GuestUsers::Anonymous => (guest_user_id(user_session.as_deref()), true),
            GuestUsers::Reject => return Err(Skip::GuestUser),
        },
        u => (parse_id(u).ok_or(Skip::BadUserId)?, false),
    };
    let price = get("price")
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or(Skip::BadPrice)?;
    let quantity = match get("quantity") {
        "" if !cols.has("quantity") => 1,
        q => q.parse::<i32>().map_err(|_| Skip::BadQuantity)?,
    };
    let (event_time, time_ms) = event_time(get("event_time"), cols.time_format.as_deref());
    let mut row = Row {
        event_id: String::new(),
        time_ms,
        event_time,
        event_type: get("event_type").to_string(),
        product_id,
        sku,
        category_id,
        category_code: opt(cols.get(fields, "category_code")),
        brand: opt(cols.get(fields, "brand")),
        price,
        currency: opt(cols.get(fields, "currency")),
        quantity,
        user_id,
        guest,
        user_session,
        channel: opt(cols.get(fields, "channel")),
    };
    row.event_id = match opt(cols.get(fields, "event_id")) {
        Some(id) => id,
        None => {
            let extras: Vec<&str> = ID_EXTRAS.iter().copied().filter(|e| cols.has(e)).collect();
            derive_event_id(&row, &extras).to_string()
        }
    };
    Ok(row)
}

impl Row {
    /// The raw event of this row. `currency` is used when the file has none.
    pub fn into_event(self, currency: &str, meta: SourceMeta) -> RawEvent {
        RawEvent {
            event_id: self.event_id,
            event_time: self.event_time,
            event_type: self.event_type,
            product_id: self.product_id,
            category_id: self.category_id,
            category_code: self.category_code,
            brand: self.brand,
            price: self.price,
            currency: self.currency.unwrap_or_else(|| currency.to_string()),
            quantity: self.quantity,
            user_id: self.user_id,
            user_session: self.user_session,
            channel: self.channel,
            source: meta,
        }
    }
}

/// Opens `reader` as plain text or gzip, by its first two bytes.
pub fn decompress(reader: impl Read + Send + 'static) -> std::io::Result<Box<dyn Read + Send>> {
    let mut buf = BufReader::with_capacity(1 << 16, reader);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(buf)))
    } else {
        Ok(Box::new(buf))
    }
}

/// One line of input: an event, a skipped row, or the end of what could be read.
#[derive(Debug)]
pub enum Item {
    Row {
        line: u64,
        row: Box<Row>,
    },
    Skipped {
        line: u64,
        reason: Skip,
    },
    /// The rest of the input cannot be read (e.g. a truncated gzip stream).
    Unreadable {
        line: u64,
        error: String,
    },
}

/// Iterates the rows of a REES46-layout CSV.
pub struct Rows<R: Read> {
    reader: csv::Reader<R>,
    columns: Columns,
    record: csv::ByteRecord,
    done: bool,
}

impl<R: Read> Rows<R> {
    /// Reads the header and maps the columns.
    pub fn new(input: R, mapping: &Mapping) -> anyhow::Result<Self> {
        // Lines end at `\n` only: the csv crate's CRLF handling counts a `\r\n` line end as
        // the start of the next record, which shifts reported line numbers. A `\r` left at
        // the end of the last field is trimmed with the other blanks.
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .has_headers(true)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(input);
        let header = reader.byte_headers()?.clone();
        let header: Vec<String> = header
            .iter()
            .map(|h| String::from_utf8_lossy(h).trim().to_string())
            .collect();
        if header.len() <= 1 && header.iter().all(|h| h.trim().is_empty()) {
            anyhow::bail!("the file is empty: no header line");
        }
        let refs: Vec<&str> = header.iter().map(String::as_str).collect();
        let columns = Columns::from_header(&refs, mapping)?;
        Ok(Rows {
            reader,
            columns,
            record: csv::ByteRecord::new(),
            done: false,
        })
    }

    /// How the file's columns are mapped.
    pub fn columns(&self) -> &Columns {
        &self.columns
    }
}

impl<R: Read> Iterator for Rows<R> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        loop {
            let line = self.reader.position().line();
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Ok(true) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Item::Unreadable {
                        line,
                        error: e.to_string(),
                    });
                }
            }
            let line = self.record.position().map_or(line, |p| p.line());
            // A blank line (or one of blanks) is no row.
            if self.record.len() == 1 && self.record[0].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let mut fields: Vec<&str> = Vec::with_capacity(self.record.len());
            for (i, f) in self.record.iter().enumerate() {
                match std::str::from_utf8(f) {
                    Ok(s) => fields.push(s),
                    // A column nothing reads (a Latin-1 description) may hold anything.
                    Err(_) if !self.columns.uses(i) => fields.push(""),
                    Err(_) => {
                        return Some(Item::Skipped {
                            line,
                            reason: Skip::InvalidUtf8,
                        })
                    }
                }
            }
            return Some(match parse_row(&self.columns, &fields) {
                Ok(row) => Item::Row {
                    line,
                    row: Box::new(row),
                },
                Err(reason) => Item::Skipped { line, reason },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEADER: &str =
        "event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session";

    fn rows(text: &str) -> Vec<Item> {
        Rows::new(
            std::io::Cursor::new(text.as_bytes().to_vec()),
            &Mapping::default(),
        )
        .unwrap()
        .collect()
    }

    fn ok(items: &[Item]) -> Vec<(u64, &Row)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Row { line, row } => Some((*line, row.as_ref())),
                _ => None,
            })
            .collect()
    }

    fn skipped(items: &[Item]) -> Vec<(u64, Skip)> {
        items
            .iter()
            .filter_map(|i| match i {
                Item::Skipped { line, reason } => Some((*line, *reason)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_messy_case_is_sent_or_skipped_with_a_reason() {
        let text = format!(
            "{HEADER}\r\n\
2019-10-01 00:00:00 UTC,view,44600062,2103807459595387724,,shiseido,35.79,541312140,72d76fde-8bb3-4e00-8c23-a032dfb2b4f5\r\n\
2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\r\n\
2019-10-01 00:00:00 UTC,view,3900821,2053013552326770905,appliances.environment.water_heater,aqua,33.20,554748717,9333dfbd-b87a-4708-9857-6336556b0fcc\r\n\
\r\n\
2019-10-01 00:00:01 UTC,purchase,17200506,2053013559792632471,furniture.living_room.sofa,,0,513649734,0bd7f91f-2d5c-4ddb-b2a6-3b5b2a29bbd4\n\
2019-10-01 00:00:01 UTC,cart,1307067,2053013558920217191,computers.notebook,lenovo,251.74,550050854,\n\
2019-10-01 00:00:02 UTC,view,,2053013558920217191,computers.notebook,lenovo,251.74,550050854,7c90fc70-0e80-4590-96f3-7a5a3f7e1b8a\n\
2019-10-01 00:00:02 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,abc,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n\
{HEADER}\n\
2019-10-01 00:00:03 UTC,viewed,1004237,2053013555631882655,\"electronics.smartphone\",\"apple, inc\",1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d\n\
2019-10-01 00:00:03 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,535871217,c6bd7419-2748-4c56-95b4-8cec9ff8b80d,extra\n\
2019-10-01 00:00:04 UTC,view,1004237,2053013555631882655,electronics.smartphone,apple,1081.98,5358"
        );
        let items = rows(&text);
        let good = ok(&items);
        let lines: Vec<u64> = good.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 3, 4, 6, 7, 11]);
        assert_eq!(good[0].1.category_code, None, "empty field is null");
        assert_eq!(
            good[0].1.user_session.as_deref(),
            Some("72d76fde-8bb3-4e00-8c23-a032dfb2b4f5")
        );
        assert_eq!(
            good[1].1.event_id, good[2].1.event_id,
            "exact duplicates share an id"
        );
        assert_ne!(good[0].1.event_id, good[1].1.event_id);
        assert_eq!(
            good[3].1.price, 0.0,
            "zero price is sent for the cleaner to judge"
        );
        assert_eq!(
            good[4].1.user_session, None,
            "missing session is sent as null"
        );
        assert_eq!(good[5].1.brand.as_deref(), Some("apple, inc"));
        assert_eq!(good[5].1.event_type, "viewed");
        assert_eq!(good[0].1.time_ms, Some(1_569_888_000_000));
        assert_eq!(
            skipped(&items),
            vec![
                (8, Skip::BadProductId),
                (9, Skip::BadPrice),
                (10, Skip::RepeatedHeader),
                (12, Skip::TooManyFields),
                (13, Skip::TooFewFields),
            ]
        );
    }

    #[test]
    fn columns_are_found_by_name_in_any_order_and_can_be_renamed() {
        let text = "user_session,price,ts,event_type,product_id,user_id,quantity,currency\n\
s1,9.5,2019-10-01 00:00:00 UTC,purchase,5,6,2,EUR\n";
        let renames = Mapping {
            columns: vec![("event_time".to_string(), "TS".to_string())],
            ..Mapping::default()
        };
        let items: Vec<Item> = Rows::new(std::io::Cursor::new(text.as_bytes().to_vec()), &renames)
            .unwrap()
            .collect();
        let good = ok(&items);
        assert_eq!(good.len(), 1);
        let r = good[0].1;
        assert_eq!(
            (r.product_id, r.user_id, r.quantity, r.category_id),
            (5, 6, 2, 0)
        );
        assert_eq!(r.currency.as_deref(), Some("EUR"));
        let missing = Rows::new(
            std::io::Cursor::new(text.as_bytes().to_vec()),
            &Mapping::default(),
        );
        let e = missing.err().unwrap().to_string();
        assert!(e.contains("event_time") && e.contains("--column"), "{e}");
    }

    #[test]
    fn event_ids_ignore_column_order_line_ends_and_blanks() {
        let a = format!("{HEADER}\n2019-10-01 00:00:00 UTC,view,1,2,a.b,x,1.50,3,s\n");
        let b = "user_session,price,brand,category_code,category_id,product_id,event_type,event_time,user_id\r\n s ,1.5,x,a.b,2,1,view,2019-10-01 00:00:00 UTC,3\r\n";
        let (ia, ib) = (rows(&a), rows(b));
        assert_eq!(ok(&ia)[0].1.event_id, ok(&ib)[0].1.event_id);
        let own = "event_id,event_time,event_type,product_id,price,user_id,user_session\nmine-1,t,view,1,1,1,s\n";
        assert_eq!(ok(&rows(own))[0].1.event_id, "mine-1");
    }

    #[test]
    fn gzip_is_detected_and_a_truncated_stream_ends_the_replay_cleanly() {
        use std::io::Write;
        let text = format!(
            "{HEADER}\n{}",
            (0..2000)
                .map(|i| format!("2019-10-01 00:00:00 UTC,view,{i},2,a.b,x,1.5,3,s{i}\n"))
                .collect::<String>()
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        let bytes = gz.finish().unwrap();
        let whole: Vec<Item> = Rows::new(
            decompress(std::io::Cursor::new(bytes.clone())).unwrap(),
            &Mapping::default(),
        )
        .unwrap()
        .collect();
        assert_eq!(ok(&whole).len(), 2000);
        let cut = bytes[..bytes.len() * 2 / 3].to_vec();
        let part: Vec<Item> = Rows::new(
            decompress(std::io::Cursor::new(cut)).unwrap(),
            &Mapping::default(),
        )
        .unwrap()
        .collect();
        assert!(
            matches!(part.last(), Some(Item::Unreadable { .. })),
            "{:?}",
            part.last()
        );
        assert!(ok(&part).len() < 2000);
        let plain: Vec<Item> = Rows::new(
            decompress(std::io::Cursor::new(text.into_bytes())).unwrap(),
            &Mapping::default(),
        )
        .unwrap()
        .collect();
        assert_eq!(ok(&plain).len(), 2000);
    }

    /// An order export in the layout of the UCI Online Retail file.
    const ORDERS_HEADER: &str =
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country";

    fn order_mapping() -> Mapping {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        Mapping {
            columns: pairs(&[
                ("event_time", "InvoiceDate"),
                ("product_id", "StockCode"),
                ("quantity", "Quantity"),
                ("price", "UnitPrice"),
                ("user_id", "CustomerID"),
                ("user_session", "InvoiceNo"),
            ]),
            constants: pairs(&[("event_type", "purchase"), ("currency", "GBP")]),
            product_ids: ProductIds::Sku,
            guests: GuestUsers::Anonymous,
            time_format: Some("%m/%d/%Y %H:%M".into()),
        }
    }

    fn order_rows(bytes: &[u8], mapping: &Mapping) -> Vec<Item> {
        Rows::new(std::io::Cursor::new(bytes.to_vec()), mapping)
            .unwrap()
            .collect()
    }

    fn orders() -> Vec<u8> {
        let mut b = format!(
            "{ORDERS_HEADER}\n\
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom\n\
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,12/1/2010 8:26,2.55,17850.0,United Kingdom\n\
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,12/1/2010 8:26,2.55,17850.0,United Kingdom\n\
536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,,United Kingdom\n\
536366,22632,\"HAND WARMER, RED\",6,12/1/2010 8:28,1.85,,United Kingdom\n\
536367,POST,POSTAGE,1,12/1/2010 8:34,18,,France\n"
        )
        .into_bytes();
        // A Latin-1 description (not UTF-8) in a column nothing reads.
        b.extend_from_slice(
            b"536368,21730,CAF\xc9 GLASS,3,12/1/2010 9:01,4.25,13047,United Kingdom\n",
        );
        b
    }

    #[test]
    fn an_order_export_keeps_every_line_apart_but_exact_duplicates() {
        let items = order_rows(&orders(), &order_mapping());
        assert_eq!(skipped(&items), vec![]);
        let good = ok(&items);
        assert_eq!(good.len(), 7, "every line forms an event");
        let r: Vec<&Row> = good.iter().map(|(_, r)| *r).collect();
        assert_ne!(r[0].event_id, r[1].event_id, "same SKU, other quantity");
        assert_eq!(r[0].event_id, r[2].event_id, "exact duplicate");
        let ids: std::collections::HashSet<&str> = r.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids.len(), 6, "every line but the exact duplicate");
        assert_eq!((r[0].quantity, r[1].quantity), (6, 2));
        assert_eq!(r[0].event_type, "purchase");
        assert_eq!(r[0].currency.as_deref(), Some("GBP"));
        assert_eq!(r[0].event_time, "2010-12-01T08:26:00.000Z");
        assert_eq!(r[0].time_ms, Some(1_291_191_960_000));
        assert_eq!(r[6].time_ms, Some(1_291_194_060_000));
        assert_eq!(r[0].user_session.as_deref(), Some("536365"));
        // SKUs: one stable id per SKU in the reserved range, the SKU kept.
        assert_eq!(r[0].product_id, r[1].product_id);
        assert_eq!(r[0].product_id, sku_product_id("85123A"));
        assert_eq!(r[0].sku.as_deref(), Some("85123A"));
        assert_eq!(r[5].sku.as_deref(), Some("POST"));
        for row in &r {
            assert!(
                (SKU_ID_BASE..2 * SKU_ID_BASE).contains(&row.product_id),
                "{}",
                row.product_id
            );
        }
        assert_ne!(r[3].product_id, r[4].product_id);
        // Users: 17850.0 is 17850; guests get one id per invoice.
        assert_eq!((r[0].user_id, r[0].guest), (17850, false));
        assert!(r[3].guest && r[4].guest && r[5].guest);
        assert_eq!(r[3].user_id, r[4].user_id, "one guest per invoice");
        assert_ne!(r[3].user_id, r[5].user_id);
        assert_eq!(r[3].user_id, guest_user_id(Some("536366")));
        assert!((GUEST_ID_BASE..SKU_ID_BASE).contains(&r[3].user_id));
        assert_eq!(r[6].user_id, 13047);
        // Replaying the file again gives the same ids.
        let again = order_rows(&orders(), &order_mapping());
        let again: Vec<&str> = ok(&again)
            .iter()
            .map(|(_, r)| r.event_id.as_str())
            .collect();
        let first: Vec<&str> = r.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(again, first);
    }

    #[test]
    fn guests_can_be_rejected_and_skus_need_the_sku_mode() {
        let reject = Mapping {
            guests: GuestUsers::Reject,
            ..order_mapping()
        };
        let items = order_rows(&orders(), &reject);
        assert_eq!(
            skipped(&items),
            vec![
                (5, Skip::GuestUser),
                (6, Skip::GuestUser),
                (7, Skip::GuestUser)
            ]
        );
        assert_eq!(ok(&items).len(), 4);
        let numbers = Mapping {
            product_ids: ProductIds::Number,
            ..order_mapping()
        };
        let items = order_rows(&orders(), &numbers);
        let bad: Vec<u64> = skipped(&items)
            .iter()
            .filter(|(_, s)| *s == Skip::BadProductId)
            .map(|(l, _)| *l)
            .collect();
        assert_eq!(bad, vec![2, 3, 4, 7], "85123A and POST are not numbers");
        // A Latin-1 byte in a column that is read still skips its row.
        let read_description = Mapping {
            columns: [
                order_mapping().columns,
                vec![("brand".to_string(), "Description".to_string())],
            ]
            .concat(),
            ..order_mapping()
        };
        let items = order_rows(&orders(), &read_description);
        assert_eq!(skipped(&items), vec![(8, Skip::InvalidUtf8)]);
    }

    #[test]
    fn constants_and_mappings_are_checked() {
        let header = ORDERS_HEADER.split(',').collect::<Vec<_>>();
        assert!(Columns::from_header(&header, &order_mapping()).is_ok());
        let mut m = order_mapping();
        m.constants.push(("price".into(), "1".into()));
        assert_eq!(
            Columns::from_header(&header, &m).err(),
            Some(ColumnError::Twice("price".into()))
        );
        let mut m = order_mapping();
        m.constants.push(("colour".into(), "red".into()));
        assert!(matches!(
            Columns::from_header(&header, &m),
            Err(ColumnError::UnknownTarget(..))
        ));
        let mut m = order_mapping();
        m.columns[0].1 = "Date".into();
        assert!(matches!(
            Columns::from_header(&header, &m),
            Err(ColumnError::NoSuchColumn { .. })
        ));
        let mut m = order_mapping();
        m.constants.retain(|(t, _)| t != "event_type");
        let e = Columns::from_header(&header, &m).err().unwrap().to_string();
        assert!(e.contains("event_type") && e.contains("--set"), "{e}");
        let cols = Columns::from_header(&header, &order_mapping()).unwrap();
        assert_eq!(cols.unused(), vec!["Description", "Country"]);
        let sources = cols.sources();
        assert_eq!(
            sources[1],
            ("event_type", Some(Source::Constant("purchase".into())))
        );
        assert_eq!(
            sources[0],
            ("event_time", Some(Source::Column(4, "InvoiceDate".into())))
        );
    }

    #[test]
    fn rees46_ids_stay_those_of_the_nine_fields() {
        // The id rule of REES46 files without extra columns is unchanged (earlier replays of the
        // same file deduplicate against new ones).
        let line = "2019-10-01 00:00:00 UTC,view,1,2,a.b,x,1.50,3,s";
        let items = rows(&format!("{HEADER}\n{line}\n"));
        let want = uuid::Uuid::new_v5(
            &REPLAY_NAMESPACE,
            "2019-10-01 00:00:00 UTC\x1fview\x1f1\x1f2\x1fa.b\x1fx\x1f1.5\x1f3\x1fs".as_bytes(),
        );
        assert_eq!(ok(&items)[0].1.event_id, want.to_string());
        // With a quantity column the quantity is part of the id.
        let items = rows(&format!(
            "{HEADER},quantity\n{line},1\n{line},2\n{line},1\n"
        ));
        let ids: Vec<&str> = ok(&items)
            .iter()
            .map(|(_, r)| r.event_id.as_str())
            .collect();
        assert_ne!(ids[0], want.to_string());
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0], ids[2]);
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_sent_rows_have_numbers(fields in proptest::collection::vec("[ -~]{0,12}", 0..12)) {
            let cols = Columns::from_header(&REES46, &Mapping::default()).unwrap();
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            if let Ok(row) = parse_row(&cols, &refs) {
                prop_assert_eq!(refs.len(), 9);
                prop_assert!(row.price.is_finite());
                prop_assert!(!row.event_id.is_empty());
            }
        }

        /// Rows that differ in any one mapped extra column get different ids; equal rows equal ids.
        #[test]
        fn every_mapped_column_is_in_the_id(
            q1 in 1i32..50, q2 in 1i32..50,
            c1 in "[A-Z]{3}", c2 in "[A-Z]{3}",
            h1 in "[a-z]{1,6}", h2 in "[a-z]{1,6}",
        ) {
            let header: Vec<&str> = REES46.iter().copied().chain(["quantity", "currency", "channel"]).collect();
            let cols = Columns::from_header(&header, &Mapping::default()).unwrap();
            let id = |q: i32, c: &str, h: &str| {
                let q = q.to_string();
                let f = ["2019-10-01 00:00:00 UTC", "purchase", "5", "1", "", "", "2.5", "9", "s", q.as_str(), c, h];
                parse_row(&cols, &f).unwrap().event_id
            };
            prop_assert_eq!(id(q1, &c1, &h1), id(q1, &c1, &h1));
            prop_assert_eq!(q1 == q2, id(q1, &c1, &h1) == id(q2, &c1, &h1));
            prop_assert_eq!(c1 == c2, id(q1, &c1, &h1) == id(q1, &c2, &h1));
            prop_assert_eq!(h1 == h2, id(q1, &c1, &h1) == id(q1, &c1, &h2));
        }

        /// SKU and guest ids stay in their ranges, apart from each other and from small ids.
        #[test]
        fn derived_ids_stay_in_their_ranges(sku in "[ -~]{1,16}", session in "[ -~]{0,16}") {
            let p = sku_product_id(&sku);
            prop_assert!((SKU_ID_BASE..2 * SKU_ID_BASE).contains(&p));
            prop_assert_eq!(p, sku_product_id(&sku));
            let g = guest_user_id(Some(&session));
            prop_assert!((GUEST_ID_BASE..SKU_ID_BASE).contains(&g));
        }

        #[test]
        fn same_content_same_id_other_content_other_id(p in 1i64..1_000_000, q in 1i64..1_000_000, s in "[a-f0-9]{8}") {
            let cols = Columns::from_header(&REES46, &Mapping::default()).unwrap();
            let row = |pid: i64| {
                let pid = pid.to_string();
                let f = ["2019-10-01 00:00:00 UTC", "view", pid.as_str(), "1", "", "", "2.5", "9", s.as_str()];
                parse_row(&cols, &f).unwrap().event_id
            };
            prop_assert_eq!(row(p), row(p));
            if p != q {
                prop_assert_ne!(row(p), row(q));
            }
        }
    }
}
