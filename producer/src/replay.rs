//! Replay of event files in the REES46 layout
//! (`event_time,event_type,product_id,category_id,category_code,brand,price,user_id,user_session`),
//! plain or gzip (detected by its magic bytes, not the file name).
//!
//! Columns are found by header name, so any column order works, and `--column target=source`
//! maps a differently named column of the user's export. Optional extra columns are used when
//! present: `event_id`, `currency`, `quantity`, `channel`.
//!
//! Real files are messy; no row stops a replay. Each row is either **sent** as an event or
//! **skipped** with a reason ([`Skip`]):
//! - Rows that the raw Avro schema can carry are sent, even when a cleaner must reject them (a
//!   zero or negative price, an empty `user_session`, an unknown event type, an unparseable
//!   time): judging them is the cleaner's job, and it dead-letters them with a reason.
//! - Rows that cannot form an event at all are skipped: a field count different from the header
//!   (a truncated last line), a repeated header line, invalid UTF-8, or an empty or unparseable
//!   `product_id`, `category_id`, `user_id`, `price` or `quantity`. A read error (e.g. a gzip
//!   stream cut short) ends the replay with what was read, reported as `unreadable_rest`.
//! - Blank lines are ignored. CRLF line ends and blanks around fields are trimmed.
//!
//! **event_id**: the file's own `event_id` column when present and not blank; otherwise
//! `UUIDv5(REPLAY_NAMESPACE, canonical row)`, where the canonical row is the nine REES46 fields in
//! that fixed order, trimmed, joined with the unit separator `\x1f` (numbers as parsed: `product_id`,
//! `category_id` and `user_id` in decimal, `price` in Rust's shortest round-trip form). It depends
//! only on the row's content: not on the file name, the line number, the column order or the line
//! ends. Exact duplicate rows therefore get the same `event_id` — in REES46 they are double-logged
//! events, and the cleaner drops the repeats — and a file replayed twice yields the same ids,
//! so a Kappa replay of the same data deduplicates. (Caveat: two genuinely separate identical
//! actions within the same second of the same session collapse into one.)

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};

use cartstream_events::types::{RawEvent, SourceMeta};

use crate::clock::parse_event_time;

/// Namespace of replay event ids (a fixed random UUID; changing it changes every id).
pub const REPLAY_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a0f_3b2e_9c41_4d7a_8e15_c2b9_70d4_1f63);

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
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ColumnError {
    #[error("the file has no {missing} column (its header: {header}); map one with --column {missing}=<name>")]
    Missing { missing: String, header: String },
    #[error("--column {0}: unknown target column (known: {1})")]
    UnknownTarget(String, String),
}

/// Where each field is in a row.
#[derive(Debug, Clone)]
pub struct Columns {
    width: usize,
    idx: BTreeMap<&'static str, usize>,
}

fn norm(s: &str) -> String {
    s.trim().trim_start_matches('\u{feff}').to_ascii_lowercase()
}

impl Columns {
    /// Finds the columns in `header`; `renames` maps a target column to the file's name for it.
    pub fn from_header(header: &[&str], renames: &[(String, String)]) -> Result<Self, ColumnError> {
        let names: Vec<String> = header.iter().map(|h| norm(h)).collect();
        let mut idx = BTreeMap::new();
        for (target, _) in renames {
            if !REQUIRED.contains(&target.as_str()) && !OPTIONAL.contains(&target.as_str()) {
                let known = [REQUIRED.as_slice(), OPTIONAL.as_slice()]
                    .concat()
                    .join(", ");
                return Err(ColumnError::UnknownTarget(target.clone(), known));
            }
        }
        for col in REQUIRED.iter().chain(OPTIONAL.iter()) {
            let wanted = renames
                .iter()
                .find(|(t, _)| t == col)
                .map_or_else(|| col.to_string(), |(_, s)| norm(s));
            if let Some(i) = names.iter().position(|n| *n == wanted) {
                idx.insert(*col, i);
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
        })
    }

    fn get<'a>(&self, fields: &[&'a str], col: &str) -> Option<&'a str> {
        self.idx.get(col).and_then(|i| fields.get(*i)).copied()
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
    pub category_id: i64,
    pub category_code: Option<String>,
    pub brand: Option<String>,
    pub price: f64,
    pub currency: Option<String>,
    pub quantity: i32,
    pub user_id: i64,
    pub user_session: Option<String>,
    pub channel: Option<String>,
}

fn opt(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The deterministic id of a row (see the module docs).
pub fn derive_event_id(r: &Row) -> uuid::Uuid {
    let fields = [
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
    uuid::Uuid::new_v5(&REPLAY_NAMESPACE, fields.join("\x1f").as_bytes())
}

/// Parses one row's fields (already split by the CSV reader).
pub fn parse_row(cols: &Columns, fields: &[&str]) -> Result<Row, Skip> {
    if fields.len() < cols.width {
        return Err(Skip::TooFewFields);
    }
    if fields.len() > cols.width {
        return Err(Skip::TooManyFields);
    }
    let get = |c| cols.get(fields, c).map(str::trim).unwrap_or("");
    if get("event_time").eq_ignore_ascii_case("event_time")
        && get("event_type").eq_ignore_ascii_case("event_type")
    {
        return Err(Skip::RepeatedHeader);
    }
    let int = |c, skip| get(c).parse::<i64>().map_err(|_| skip);
    let product_id = int("product_id", Skip::BadProductId)?;
    let category_id = if cols.idx.contains_key("category_id") {
        int("category_id", Skip::BadCategoryId)?
    } else {
        0
    };
    let user_id = int("user_id", Skip::BadUserId)?;
    let price = get("price")
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or(Skip::BadPrice)?;
    let quantity = match get("quantity") {
        "" if !cols.idx.contains_key("quantity") => 1,
        q => q.parse::<i32>().map_err(|_| Skip::BadQuantity)?,
    };
    let event_time = get("event_time").to_string();
    let mut row = Row {
        event_id: String::new(),
        time_ms: parse_event_time(&event_time),
        event_time,
        event_type: get("event_type").to_string(),
        product_id,
        category_id,
        category_code: opt(cols.get(fields, "category_code")),
        brand: opt(cols.get(fields, "brand")),
        price,
        currency: opt(cols.get(fields, "currency")),
        quantity,
        user_id,
        user_session: opt(cols.get(fields, "user_session")),
        channel: opt(cols.get(fields, "channel")),
    };
    row.event_id = match opt(cols.get(fields, "event_id")) {
        Some(id) => id,
        None => derive_event_id(&row).to_string(),
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
    pub fn new(input: R, renames: &[(String, String)]) -> anyhow::Result<Self> {
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
        let columns = Columns::from_header(&refs, renames)?;
        Ok(Rows {
            reader,
            columns,
            record: csv::ByteRecord::new(),
            done: false,
        })
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
            for f in self.record.iter() {
                match std::str::from_utf8(f) {
                    Ok(s) => fields.push(s),
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
        Rows::new(std::io::Cursor::new(text.as_bytes().to_vec()), &[])
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
        let renames = vec![("event_time".to_string(), "TS".to_string())];
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
        let missing = Rows::new(std::io::Cursor::new(text.as_bytes().to_vec()), &[]);
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
            &[],
        )
        .unwrap()
        .collect();
        assert_eq!(ok(&whole).len(), 2000);
        let cut = bytes[..bytes.len() * 2 / 3].to_vec();
        let part: Vec<Item> = Rows::new(decompress(std::io::Cursor::new(cut)).unwrap(), &[])
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
            &[],
        )
        .unwrap()
        .collect();
        assert_eq!(ok(&plain).len(), 2000);
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_sent_rows_have_numbers(fields in proptest::collection::vec("[ -~]{0,12}", 0..12)) {
            let cols = Columns::from_header(&REES46, &[]).unwrap();
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            if let Ok(row) = parse_row(&cols, &refs) {
                prop_assert_eq!(refs.len(), 9);
                prop_assert!(row.price.is_finite());
                prop_assert!(!row.event_id.is_empty());
            }
        }

        #[test]
        fn same_content_same_id_other_content_other_id(p in 1i64..1_000_000, q in 1i64..1_000_000, s in "[a-f0-9]{8}") {
            let cols = Columns::from_header(&REES46, &[]).unwrap();
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
