//! Arrow schemas derived from Avro schemas, and Arrow record batches built from Avro values.
//! Pure: no I/O.
//!
//! | Avro | Arrow |
//! |---|---|
//! | `boolean`, `int`, `long`, `float`, `double` | `Boolean`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `string`, `enum`, `uuid` | `Utf8` (an enum as its symbol) |
//! | `bytes`, `fixed` | `Binary` |
//! | `timestamp-millis` / `-micros` | `Timestamp(ms / us, "UTC")` |
//! | `local-timestamp-millis` | `Timestamp(ms)` |
//! | `date` | `Date32` |
//! | `["null", T]` (either order) | `T`, nullable |
//! | `array<T>` | `List<T>` |
//! | `record` | `Struct` |
//!
//! Anything else (maps, unions of several non-null types, decimals) is refused with a clear
//! error when the schema is first seen, not in the middle of a file.
//!
//! Each Parquet file is written with the Arrow schema of its records' writer schema, so a new
//! optional Avro field becomes a new nullable column in new files, and old files keep their
//! columns: readers that merge schemas by name (pyarrow datasets, DuckDB `union_by_name`, Spark
//! `mergeSchema`) read both.

use std::sync::Arc;

use apache_avro::schema::Schema;
use apache_avro::types::Value;
use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StructArray, TimestampMicrosecondArray, TimestampMillisecondArray,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Fields, SchemaRef, TimeUnit};

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("avro type {0} has no Arrow mapping in the lake")]
    Unsupported(String),
    #[error("the top-level avro schema must be a record")]
    NotARecord,
    #[error("value {value} does not fit column type {column}")]
    Mismatch { column: String, value: String },
    #[error(transparent)]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// The Arrow schema of records written with `avro` (a record schema).
pub fn arrow_schema(avro: &Schema) -> Result<SchemaRef, MapError> {
    let Schema::Record(r) = avro else {
        return Err(MapError::NotARecord);
    };
    let fields = r
        .fields
        .iter()
        .map(|f| {
            let (dt, nullable) = field_type(&f.schema)?;
            Ok(Field::new(&f.name, dt, nullable))
        })
        .collect::<Result<Vec<_>, MapError>>()?;
    Ok(Arc::new(arrow_schema::Schema::new(fields)))
}

fn field_type(s: &Schema) -> Result<(DataType, bool), MapError> {
    Ok(match s {
        Schema::Union(u) => {
            let non_null: Vec<&Schema> = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Schema::Null))
                .collect();
            match non_null.as_slice() {
                [one] if u.variants().len() == 2 => (field_type(one)?.0, true),
                _ => return Err(MapError::Unsupported(format!("{s:?}"))),
            }
        }
        Schema::Boolean => (DataType::Boolean, false),
        Schema::Int => (DataType::Int32, false),
        Schema::Long => (DataType::Int64, false),
        Schema::Float => (DataType::Float32, false),
        Schema::Double => (DataType::Float64, false),
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => (DataType::Utf8, false),
        Schema::Bytes | Schema::Fixed(_) => (DataType::Binary, false),
        Schema::Date => (DataType::Date32, false),
        Schema::TimestampMillis => (
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Schema::TimestampMicros => (
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        Schema::LocalTimestampMillis => (DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Schema::Array(a) => {
            let (dt, nullable) = field_type(&a.items)?;
            (
                DataType::List(Arc::new(Field::new("item", dt, nullable))),
                false,
            )
        }
        Schema::Record(r) => {
            let fields = r
                .fields
                .iter()
                .map(|f| {
                    let (dt, nullable) = field_type(&f.schema)?;
                    Ok(Field::new(&f.name, dt, nullable))
                })
                .collect::<Result<Vec<_>, MapError>>()?;
            (DataType::Struct(Fields::from(fields)), false)
        }
        other => return Err(MapError::Unsupported(format!("{other:?}"))),
    })
}

/// A batch of `rows` (Avro records of the schema `schema` was derived from).
pub fn record_batch(schema: &SchemaRef, rows: &[&Value]) -> Result<RecordBatch, MapError> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let vals: Vec<Option<&Value>> = rows.iter().map(|r| record_field(r, i)).collect();
        columns.push(build(field, &vals)?);
    }
    if columns.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

fn record_field(v: &Value, i: usize) -> Option<&Value> {
    match unwrap_union(v)? {
        Value::Record(fs) => fs.get(i).and_then(|(_, v)| unwrap_union(v)),
        _ => None,
    }
}

/// `None` for null, the inner value of a union otherwise.
fn unwrap_union(v: &Value) -> Option<&Value> {
    match v {
        Value::Null => None,
        Value::Union(_, inner) => unwrap_union(inner),
        other => Some(other),
    }
}

fn mismatch(field: &Field, v: &Value) -> MapError {
    let mut value = format!("{v:?}");
    value.truncate(80);
    MapError::Mismatch {
        column: format!("{} {}", field.name(), field.data_type()),
        value,
    }
}

fn build(field: &Field, vals: &[Option<&Value>]) -> Result<ArrayRef, MapError> {
    macro_rules! prim {
        ($arr:ty, $($pat:pat => $e:expr),+) => {{
            let mut out = Vec::with_capacity(vals.len());
            for v in vals {
                out.push(match v.map(|v| unwrap_union(v)).flatten() {
                    None => None,
                    $(Some($pat) => Some($e),)+
                    Some(other) => return Err(mismatch(field, other)),
                });
            }
            Arc::new(<$arr>::from(out)) as ArrayRef
        }};
    }
    Ok(match field.data_type() {
        DataType::Boolean => prim!(BooleanArray, Value::Boolean(b) => *b),
        DataType::Int32 => prim!(Int32Array, Value::Int(i) => *i),
        DataType::Int64 => prim!(Int64Array, Value::Long(i) => *i, Value::TimestampMillis(i) => *i),
        DataType::Float32 => prim!(Float32Array, Value::Float(f) => *f),
        DataType::Float64 => {
            prim!(Float64Array, Value::Double(f) => *f, Value::Float(f) => f64::from(*f))
        }
        DataType::Date32 => prim!(Date32Array, Value::Date(d) => *d, Value::Int(d) => *d),
        DataType::Timestamp(TimeUnit::Millisecond, tz) => {
            let a = prim!(TimestampMillisecondArray,
                Value::TimestampMillis(t) => *t, Value::LocalTimestampMillis(t) => *t, Value::Long(t) => *t);
            match tz {
                Some(tz) => Arc::new(
                    a.as_any()
                        .downcast_ref::<TimestampMillisecondArray>()
                        .map(|x| x.clone().with_timezone(tz.as_ref()))
                        .ok_or_else(|| MapError::Unsupported("timestamp".into()))?,
                ),
                None => a,
            }
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let a = prim!(TimestampMicrosecondArray,
                Value::TimestampMicros(t) => *t, Value::Long(t) => *t);
            match tz {
                Some(tz) => Arc::new(
                    a.as_any()
                        .downcast_ref::<TimestampMicrosecondArray>()
                        .map(|x| x.clone().with_timezone(tz.as_ref()))
                        .ok_or_else(|| MapError::Unsupported("timestamp".into()))?,
                ),
                None => a,
            }
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::with_capacity(vals.len(), vals.len() * 16);
            for v in vals {
                match v.and_then(unwrap_union) {
                    None => b.append_null(),
                    Some(Value::String(s)) | Some(Value::Enum(_, s)) => b.append_value(s),
                    Some(Value::Uuid(u)) => b.append_value(u.to_string()),
                    Some(other) => return Err(mismatch(field, other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::with_capacity(vals.len(), vals.len() * 16);
            for v in vals {
                match v.and_then(unwrap_union) {
                    None => b.append_null(),
                    Some(Value::Bytes(x)) | Some(Value::Fixed(_, x)) => b.append_value(x),
                    Some(other) => return Err(mismatch(field, other)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::List(item) => {
            let mut offsets: Vec<i32> = Vec::with_capacity(vals.len() + 1);
            offsets.push(0);
            let mut items: Vec<Option<&Value>> = Vec::new();
            let mut valid = Vec::with_capacity(vals.len());
            for v in vals {
                match v.and_then(unwrap_union) {
                    None => valid.push(false),
                    Some(Value::Array(xs)) => {
                        valid.push(true);
                        items.extend(xs.iter().map(unwrap_union));
                    }
                    Some(other) => return Err(mismatch(field, other)),
                }
                let len = i32::try_from(items.len())
                    .map_err(|_| MapError::Unsupported("list over 2^31 items".into()))?;
                offsets.push(len);
            }
            let child = build(item, &items)?;
            let nulls = valid.iter().any(|v| !v).then(|| valid.clone().into());
            Arc::new(ListArray::try_new(
                item.clone(),
                OffsetBuffer::new(ScalarBuffer::from(offsets)),
                child,
                nulls,
            )?)
        }
        DataType::Struct(fields) => {
            let mut children = Vec::with_capacity(fields.len());
            for (i, f) in fields.iter().enumerate() {
                let child: Vec<Option<&Value>> = vals
                    .iter()
                    .map(|v| v.and_then(|v| record_field(v, i)))
                    .collect();
                children.push(build(f, &child)?);
            }
            let valid: Vec<bool> = vals
                .iter()
                .map(|v| v.and_then(unwrap_union).is_some())
                .collect();
            let nulls = valid.iter().any(|v| !v).then(|| valid.into());
            Arc::new(StructArray::try_new(fields.clone(), children, nulls)?)
        }
        other => return Err(MapError::Unsupported(other.to_string())),
    })
}

/// Epoch milliseconds of the first of `candidates` that is a top-level field of `avro`, as
/// `(field index)`: the event time the lake partitions by.
pub fn time_field(avro: &Schema, candidates: &[&str]) -> Option<usize> {
    let Schema::Record(r) = avro else {
        return None;
    };
    candidates.iter().find_map(|c| {
        r.fields.iter().position(|f| {
            f.name == *c
                && matches!(
                    f.schema,
                    Schema::TimestampMillis | Schema::Long | Schema::LocalTimestampMillis
                )
        })
    })
}

/// The index of the top-level boolean field `name` of `avro`.
pub fn bool_field(avro: &Schema, name: &str) -> Option<usize> {
    let Schema::Record(r) = avro else {
        return None;
    };
    r.fields
        .iter()
        .position(|f| f.name == name && matches!(f.schema, Schema::Boolean))
}

/// The boolean value of field `i` of a record.
pub fn bool_value(v: &Value, i: usize) -> Option<bool> {
    match record_field(v, i)? {
        Value::Boolean(b) => Some(*b),
        _ => None,
    }
}

/// The epoch-millisecond value of field `i` of a record.
pub fn time_value(v: &Value, i: usize) -> Option<i64> {
    match record_field(v, i)? {
        Value::TimestampMillis(t) | Value::Long(t) | Value::LocalTimestampMillis(t) => Some(*t),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use cartstream_events::types::{Product, RawEvent, SourceMeta};
    use cartstream_events::Contract;

    fn value_of<T: serde::Serialize>(v: &T, c: Contract) -> Value {
        apache_avro::to_value(v)
            .unwrap()
            .resolve(c.schema())
            .unwrap()
    }

    #[test]
    fn every_contract_maps_to_arrow() {
        for c in Contract::ALL {
            let s = arrow_schema(c.schema()).unwrap();
            assert!(!s.fields().is_empty(), "{}", c.file_name());
        }
        let s = arrow_schema(Contract::EnrichedEvent.schema()).unwrap();
        let f = s.field_with_name("event_time").unwrap();
        assert_eq!(
            f.data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert!(s.field_with_name("channel").unwrap().is_nullable());
        assert!(!s.field_with_name("price").unwrap().is_nullable());
        assert_eq!(
            s.field_with_name("event_type").unwrap().data_type(),
            &DataType::Utf8
        );
    }

    #[test]
    fn nested_records_lists_and_nulls_build_batches() {
        let p = |id: i64, genres: Vec<String>, release: Option<i32>| Product {
            product_id: id,
            name: format!("p{id}"),
            category_id: 1,
            category_code: "c".into(),
            brand: "b".into(),
            price: 2.5,
            currency: "USD".into(),
            catalog: "games".into(),
            release_date: release,
            genres,
            tags: vec![],
            updated_at: 7,
        };
        let rows = [
            value_of(
                &p(1, vec!["rpg".into(), "indie".into()], Some(19_000)),
                Contract::Product,
            ),
            value_of(&p(2, vec![], None), Contract::Product),
        ];
        let schema = arrow_schema(Contract::Product.schema()).unwrap();
        let refs: Vec<&Value> = rows.iter().collect();
        let b = record_batch(&schema, &refs).unwrap();
        assert_eq!(b.num_rows(), 2);
        let genres = b.column_by_name("genres").unwrap().as_list::<i32>();
        assert_eq!(genres.value(0).len(), 2);
        assert_eq!(genres.value(1).len(), 0);
        let release = b.column_by_name("release_date").unwrap();
        assert!(release.is_null(1) && !release.is_null(0));

        let raw = RawEvent {
            event_id: "e".into(),
            event_time: "t".into(),
            event_type: "view".into(),
            product_id: 1,
            category_id: 1,
            category_code: None,
            brand: Some("b".into()),
            price: 1.0,
            currency: "USD".into(),
            quantity: 1,
            user_id: 1,
            user_session: None,
            channel: Some("web".into()),
            source: SourceMeta {
                system: "s".into(),
                producer_id: "p".into(),
                file: None,
                line: Some(3),
                sent_at: 5,
            },
        };
        let v = value_of(&raw, Contract::PurchaseEventV2);
        let schema = arrow_schema(Contract::PurchaseEventV2.schema()).unwrap();
        let b = record_batch(&schema, &[&v]).unwrap();
        let src = b.column_by_name("source").unwrap().as_struct();
        assert_eq!(
            src.column_by_name("line")
                .unwrap()
                .as_primitive::<arrow_array::types::Int64Type>()
                .value(0),
            3
        );
        assert!(b.column_by_name("category_code").unwrap().is_null(0));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_not_a_panic() {
        let schema = arrow_schema(Contract::User.schema()).unwrap();
        let bad = Value::Record(vec![("user_id".into(), Value::String("x".into()))]);
        assert!(matches!(
            record_batch(&schema, &[&bad]),
            Err(MapError::Mismatch { .. })
        ));
        assert!(matches!(
            arrow_schema(&Schema::Long),
            Err(MapError::NotARecord)
        ));
    }
}
