//! Control records: the end-of-input mark and the watermark.
//!
//! A bounded source (a replay of a file, `cartstream-admin end-input`) declares that no event
//! before a time `T` will come on a partition any more by writing a *control record* to it: no
//! key beyond [`CONTROL_KEY`], an empty payload, and two headers:
//!
//! | header | value |
//! |---|---|
//! | `cartstream-control` | `end-of-input` |
//! | `cartstream-watermark` | `T` in epoch milliseconds, or `max` (nothing more will come at all) |
//!
//! A stage that forwards a mark it received on input partition `p` writes one to every partition
//! of its output topic and adds where it came from, so the next stage knows when it has heard from
//! every upstream partition:
//!
//! | header | value |
//! |---|---|
//! | `cartstream-source-partition` | `p` |
//! | `cartstream-source-partitions` | the number of partitions of the input topic |
//!
//! [`EndMarks`] turns the marks one consumer partition received into that partition's own end of
//! input: the mark itself for a source topic, or the lowest of the marks of all upstream
//! partitions once each has sent one.
//!
//! A **watermark** record has the same form with `cartstream-control: watermark`: "every record
//! of the stream named by the `cartstream-stream` header that belongs before `T` has been written
//! to this partition" — progress, not an end: more records after `T` follow. A stage whose output
//! partitions are written by several of its own partitions (the windower's merge partitions all
//! write `kpi.windows`) sends them so that the next stage knows how far each output partition is
//! complete, which the newest record seen in it cannot tell (another writer may still be behind).
//! The stream core hands them to `Processor::on_watermark`; combining them is the receiver's.
//!
//! Consumers that do not know control records (a Kafka UI, a plain Avro consumer) see a record
//! with an empty value and can skip it; every cartstream stage and sink does.

use std::collections::HashMap;

use rdkafka::message::{Headers, Message, OwnedHeaders};

/// Header naming the kind of control record.
pub const CONTROL_HEADER: &str = "cartstream-control";
/// Value of [`CONTROL_HEADER`] for the end-of-input mark.
pub const END_OF_INPUT: &str = "end-of-input";
/// Value of [`CONTROL_HEADER`] for a watermark (progress) record.
pub const WATERMARK: &str = "watermark";
/// Header naming the stream a watermark record is about (e.g. `window/60000/60000`).
pub const STREAM_HEADER: &str = "cartstream-stream";
/// Header carrying the mark's time.
pub const WATERMARK_HEADER: &str = "cartstream-watermark";
/// Header: the upstream partition a forwarded mark comes from.
pub const SOURCE_PARTITION_HEADER: &str = "cartstream-source-partition";
/// Header: how many upstream partitions send marks.
pub const SOURCE_PARTITIONS_HEADER: &str = "cartstream-source-partitions";
/// Key of every control record.
pub const CONTROL_KEY: &[u8] = b"cartstream-control";

/// What a control record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MarkKind {
    /// "No event before `watermark` will come on this partition any more."
    #[default]
    EndOfInput,
    /// "Everything before `watermark` has been written to this partition" (progress).
    Watermark,
}

/// A control record: an end-of-input mark ([`MarkKind::EndOfInput`], the common case, hence
/// the alias [`EndOfInput`]) or a watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Epoch milliseconds; `i64::MAX` means nothing at all will come.
    pub watermark: i64,
    /// For a forwarded mark: (upstream partition, upstream partition count).
    pub source: Option<(i32, i32)>,
    pub kind: MarkKind,
}

/// The end-of-input mark (a [`Mark`] of kind [`MarkKind::EndOfInput`]).
pub type EndOfInput = Mark;

/// Why a record that claims to be a control record is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("unknown control record kind {0:?}")]
    UnknownKind(String),
    #[error("control record without a {WATERMARK_HEADER} header")]
    MissingWatermark,
    #[error("bad {0} header {1:?}")]
    BadHeader(&'static str, String),
}

impl Mark {
    /// An end-of-input mark at `watermark` from a source (not forwarded).
    pub fn at(watermark: i64) -> Self {
        Self {
            watermark,
            source: None,
            kind: MarkKind::EndOfInput,
        }
    }

    /// A watermark (progress) record at `watermark`.
    pub fn progress(watermark: i64) -> Self {
        Self {
            kind: MarkKind::Watermark,
            ..Self::at(watermark)
        }
    }

    pub fn is_end_of_input(&self) -> bool {
        self.kind == MarkKind::EndOfInput
    }

    /// The mark "nothing more will come".
    pub fn end() -> Self {
        Self::at(i64::MAX)
    }

    /// This mark as forwarded from upstream partition `partition` of `partitions`.
    pub fn forwarded(self, partition: i32, partitions: i32) -> Self {
        Self {
            source: Some((partition, partitions)),
            ..self
        }
    }

    /// The headers of the control record, as (name, value) pairs.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![
            (
                CONTROL_HEADER,
                match self.kind {
                    MarkKind::EndOfInput => END_OF_INPUT,
                    MarkKind::Watermark => WATERMARK,
                }
                .to_string(),
            ),
            (WATERMARK_HEADER, format_watermark(self.watermark)),
        ];
        if let Some((p, n)) = self.source {
            h.push((SOURCE_PARTITION_HEADER, p.to_string()));
            h.push((SOURCE_PARTITIONS_HEADER, n.to_string()));
        }
        h
    }

    /// Reads a control record from its headers. `Ok(None)`: not a control record.
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Option<Self>, ControlError> {
        let mut kind = None;
        let mut watermark = None;
        let mut sp = None;
        let mut sn = None;
        for (name, value) in headers {
            let value = || String::from_utf8_lossy(value.unwrap_or_default()).into_owned();
            match name {
                CONTROL_HEADER => kind = Some(value()),
                WATERMARK_HEADER => watermark = Some(value()),
                SOURCE_PARTITION_HEADER => sp = Some(value()),
                SOURCE_PARTITIONS_HEADER => sn = Some(value()),
                _ => {}
            }
        }
        let Some(kind) = kind else {
            return Ok(None);
        };
        let kind = match kind.as_str() {
            END_OF_INPUT => MarkKind::EndOfInput,
            WATERMARK => MarkKind::Watermark,
            _ => return Err(ControlError::UnknownKind(kind)),
        };
        let watermark = watermark.ok_or(ControlError::MissingWatermark)?;
        let watermark = parse_watermark(&watermark)
            .ok_or(ControlError::BadHeader(WATERMARK_HEADER, watermark))?;
        let int = |name: &'static str, v: String| -> Result<i32, ControlError> {
            v.trim()
                .parse::<i32>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or(ControlError::BadHeader(name, v))
        };
        let source = match (sp, sn) {
            (None, None) => None,
            (Some(p), Some(n)) => {
                let p = int(SOURCE_PARTITION_HEADER, p)?;
                let n = int(SOURCE_PARTITIONS_HEADER, n)?;
                if p >= n {
                    return Err(ControlError::BadHeader(
                        SOURCE_PARTITION_HEADER,
                        format!("{p} of {n}"),
                    ));
                }
                Some((p, n))
            }
            (Some(p), None) => return Err(ControlError::BadHeader(SOURCE_PARTITIONS_HEADER, p)),
            (None, Some(n)) => return Err(ControlError::BadHeader(SOURCE_PARTITION_HEADER, n)),
        };
        Ok(Some(Self {
            watermark,
            source,
            kind,
        }))
    }
}

/// The control record carried by `msg`, if it is one (`Ok(None)`: a data record).
pub fn control_of<M: Message>(msg: &M) -> Result<Option<EndOfInput>, ControlError> {
    let Some(h) = msg.headers() else {
        return Ok(None);
    };
    EndOfInput::from_headers(h.iter().map(|h| (h.key, h.value)))
}

/// The stream a watermark record of `msg` is about ([`STREAM_HEADER`]), if it names one.
pub fn stream_of<M: Message>(msg: &M) -> Option<String> {
    msg.headers()?
        .iter()
        .find(|h| h.key == STREAM_HEADER)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// `mark`'s headers for a record to produce.
pub fn owned_headers(mark: &Mark) -> OwnedHeaders {
    owned_headers_of_stream(mark, None)
}

/// The stream name of tumbling or hopping windows of `size_ms` every `slide_ms`, as the
/// windower names its watermark records ([`STREAM_HEADER`]) and its readers look for them.
pub fn window_stream(size_ms: i64, slide_ms: i64) -> String {
    format!("window/{size_ms}/{slide_ms}")
}

/// `mark`'s headers, naming `stream` ([`STREAM_HEADER`]) when given.
pub fn owned_headers_of_stream(mark: &Mark, stream: Option<&str>) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(5);
    for (k, v) in mark.headers() {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    if let Some(s) = stream {
        h = h.insert(rdkafka::message::Header {
            key: STREAM_HEADER,
            value: Some(s.as_bytes()),
        });
    }
    h
}

/// `max` or epoch milliseconds.
pub fn parse_watermark(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") {
        return Some(i64::MAX);
    }
    s.parse().ok()
}

/// The inverse of [`parse_watermark`].
pub fn format_watermark(w: i64) -> String {
    if w == i64::MAX {
        "max".to_string()
    } else {
        w.to_string()
    }
}

/// The end of input of the partitions one stage consumes, from the marks they received.
///
/// A mark without a source applies to its partition at once. Forwarded marks are collected per
/// upstream partition; the consumer partition's end is the lowest of them once every upstream
/// partition has sent one (a later, higher mark from the same upstream partition replaces its
/// earlier one). Ends only move forward.
#[derive(Debug, Default, Clone)]
pub struct EndMarks {
    parts: HashMap<(String, i32), PartMarks>,
}

#[derive(Debug, Default, Clone)]
struct PartMarks {
    upstream: HashMap<i32, i64>,
    expected: i32,
    end: Option<i64>,
}

impl EndMarks {
    /// Records `mark`, received on `topic`/`partition`. Returns the partition's end of input
    /// when this mark moved it. One `EndMarks` combines marks of one kind: a stage that follows
    /// watermark records keeps its own for them.
    pub fn observe(&mut self, topic: &str, partition: i32, mark: &EndOfInput) -> Option<i64> {
        let part = self
            .parts
            .entry((topic.to_string(), partition))
            .or_default();
        let new = match mark.source {
            None => Some(mark.watermark),
            Some((p, n)) => {
                let e = part.upstream.entry(p).or_insert(i64::MIN);
                *e = (*e).max(mark.watermark);
                part.expected = part.expected.max(n);
                if part.upstream.len() as i32 >= part.expected {
                    part.upstream.values().copied().min()
                } else {
                    None
                }
            }
        };
        match (new, part.end) {
            (Some(n), Some(old)) if n <= old => None,
            (Some(n), _) => {
                part.end = Some(n);
                Some(n)
            }
            (None, _) => None,
        }
    }

    /// The partition's end of input, if every upstream partition has declared one.
    pub fn end(&self, topic: &str, partition: i32) -> Option<i64> {
        self.parts
            .get(&(topic.to_string(), partition))
            .and_then(|p| p.end)
    }

    /// The state of one partition, to persist (a changelog value) so that marks already
    /// consumed are not lost on a restart. `None`: nothing recorded for it.
    pub fn encode_partition(&self, topic: &str, partition: i32) -> Option<Vec<u8>> {
        let p = self.parts.get(&(topic.to_string(), partition))?;
        // `v1;<expected>;<end or ->;<upstream>=<mark>,...`
        let mut up: Vec<_> = p.upstream.iter().collect();
        up.sort();
        let up: Vec<String> = up.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let end = p.end.map_or("-".to_string(), |e| e.to_string());
        Some(format!("v1;{};{end};{}", p.expected, up.join(",")).into_bytes())
    }

    /// Restores one partition from [`EndMarks::encode_partition`]'s bytes.
    pub fn restore_partition(
        &mut self,
        topic: &str,
        partition: i32,
        bytes: &[u8],
    ) -> Result<(), String> {
        let s = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        let bad = || format!("bad end-of-input state {s:?}");
        let mut it = s.split(';');
        if it.next() != Some("v1") {
            return Err(bad());
        }
        let expected: i32 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
        let end = match it.next().ok_or_else(bad)? {
            "-" => None,
            e => Some(e.parse::<i64>().map_err(|_| bad())?),
        };
        let mut upstream = HashMap::new();
        for kv in it
            .next()
            .ok_or_else(bad)?
            .split(',')
            .filter(|x| !x.is_empty())
        {
            let (k, v) = kv.split_once('=').ok_or_else(bad)?;
            upstream.insert(
                k.parse::<i32>().map_err(|_| bad())?,
                v.parse::<i64>().map_err(|_| bad())?,
            );
        }
        self.parts.insert(
            (topic.to_string(), partition),
            PartMarks {
                upstream,
                expected,
                end,
            },
        );
        Ok(())
    }

    /// Forgets a partition (revoked).
    pub fn forget(&mut self, topic: &str, partition: i32) {
        self.parts.remove(&(topic.to_string(), partition));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(h: &[(&'static str, String)]) -> Result<Option<EndOfInput>, ControlError> {
        EndOfInput::from_headers(h.iter().map(|(k, v)| (*k, Some(v.as_bytes()))))
    }

    #[test]
    fn headers_round_trip() {
        for m in [
            EndOfInput::at(1_700_000_000_000),
            EndOfInput::end(),
            EndOfInput::at(-5).forwarded(3, 12),
            Mark::progress(1_700_000_060_000).forwarded(1, 3),
        ] {
            assert_eq!(parse(&m.headers()).unwrap(), Some(m));
        }
        assert_eq!(EndOfInput::end().headers()[1].1, "max");
    }

    #[test]
    fn a_watermark_record_is_progress_not_an_end() {
        let m = parse(&[
            (CONTROL_HEADER, WATERMARK.into()),
            (WATERMARK_HEADER, "120000".into()),
            (SOURCE_PARTITION_HEADER, "0".into()),
            (SOURCE_PARTITIONS_HEADER, "2".into()),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(m, Mark::progress(120_000).forwarded(0, 2));
        assert!(!m.is_end_of_input());
        assert!(EndOfInput::at(5).is_end_of_input());
        assert_ne!(Mark::progress(5), EndOfInput::at(5));
    }

    #[test]
    fn records_without_the_header_are_data() {
        assert_eq!(parse(&[("trace", "x".into())]).unwrap(), None);
        assert_eq!(EndOfInput::from_headers(std::iter::empty()).unwrap(), None);
    }

    #[test]
    fn malformed_control_records_are_errors() {
        assert_eq!(
            parse(&[(CONTROL_HEADER, "pause".into())]),
            Err(ControlError::UnknownKind("pause".into()))
        );
        assert_eq!(
            parse(&[(CONTROL_HEADER, END_OF_INPUT.into())]),
            Err(ControlError::MissingWatermark)
        );
        assert!(matches!(
            parse(&[
                (CONTROL_HEADER, END_OF_INPUT.into()),
                (WATERMARK_HEADER, "soon".into())
            ]),
            Err(ControlError::BadHeader(WATERMARK_HEADER, _))
        ));
        assert!(parse(&[
            (CONTROL_HEADER, END_OF_INPUT.into()),
            (WATERMARK_HEADER, "1".into()),
            (SOURCE_PARTITION_HEADER, "4".into()),
            (SOURCE_PARTITIONS_HEADER, "4".into()),
        ])
        .is_err());
        assert!(parse(&[
            (CONTROL_HEADER, END_OF_INPUT.into()),
            (WATERMARK_HEADER, "1".into()),
            (SOURCE_PARTITION_HEADER, "1".into()),
        ])
        .is_err());
    }

    #[test]
    fn a_source_mark_applies_at_once_and_only_moves_forward() {
        let mut m = EndMarks::default();
        assert_eq!(m.observe("t", 0, &EndOfInput::at(10)), Some(10));
        assert_eq!(m.observe("t", 0, &EndOfInput::at(5)), None);
        assert_eq!(m.end("t", 0), Some(10));
        assert_eq!(m.end("t", 1), None);
        assert_eq!(m.observe("t", 0, &EndOfInput::end()), Some(i64::MAX));
    }

    #[test]
    fn forwarded_marks_wait_for_every_upstream_partition() {
        let mut m = EndMarks::default();
        assert_eq!(m.observe("t", 2, &EndOfInput::at(30).forwarded(0, 3)), None);
        assert_eq!(m.observe("t", 2, &EndOfInput::at(10).forwarded(1, 3)), None);
        // The same upstream partition again does not count twice.
        assert_eq!(m.observe("t", 2, &EndOfInput::at(40).forwarded(0, 3)), None);
        assert_eq!(m.end("t", 2), None);
        assert_eq!(
            m.observe("t", 2, &EndOfInput::at(20).forwarded(2, 3)),
            Some(10)
        );
        // A later mark of the slowest upstream partition moves the end.
        assert_eq!(
            m.observe("t", 2, &EndOfInput::at(50).forwarded(1, 3)),
            Some(20)
        );
        m.forget("t", 2);
        assert_eq!(m.end("t", 2), None);
    }

    #[test]
    fn partition_state_survives_encoding() {
        let mut m = EndMarks::default();
        m.observe("t", 2, &EndOfInput::at(30).forwarded(0, 3));
        m.observe("t", 2, &EndOfInput::at(10).forwarded(2, 3));
        let bytes = m.encode_partition("t", 2).unwrap();
        let mut r = EndMarks::default();
        r.restore_partition("t", 2, &bytes).unwrap();
        assert_eq!(r.end("t", 2), None);
        assert_eq!(
            r.observe("t", 2, &EndOfInput::at(20).forwarded(1, 3)),
            Some(10)
        );
        let done = r.encode_partition("t", 2).unwrap();
        let mut again = EndMarks::default();
        again.restore_partition("t", 2, &done).unwrap();
        assert_eq!(again.end("t", 2), Some(10));
        assert!(again.restore_partition("t", 2, b"v2;1;-;").is_err());
        assert!(again.restore_partition("t", 2, b"v1;x;-;").is_err());
        assert_eq!(m.encode_partition("t", 9), None);
    }

    proptest! {
        /// Whatever the order the marks of n upstream partitions arrive in (with repeats), the
        /// end is the minimum of each partition's highest mark, and only once all have arrived.
        #[test]
        fn end_is_the_min_over_upstream_once_complete(
            n in 1i32..6,
            marks in proptest::collection::vec((0i32..6, -1000i64..1000), 0..40),
        ) {
            let mut m = EndMarks::default();
            let mut best: HashMap<i32, i64> = HashMap::new();
            for (p, w) in marks {
                let p = p % n;
                m.observe("t", 0, &EndOfInput::at(w).forwarded(p, n));
                let b = best.entry(p).or_insert(i64::MIN);
                *b = (*b).max(w);
                let want = (best.len() as i32 == n).then(|| *best.values().min().unwrap());
                prop_assert_eq!(m.end("t", 0), want);
            }
        }
    }
}
