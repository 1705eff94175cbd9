//! Encoding and decoding of [`AvroRecord`]s in the Confluent wire format.
//!
//! An [`Encoder`] writes one contract with the schema id the registry gave it. A [`Decoder`] reads
//! records written with *any* registered version of a contract and resolves them to the version
//! it was built with (Avro schema resolution): a v1 reader reads v2 records by skipping the fields
//! it does not know, a v2 reader reads v1 records by filling added fields with their defaults.
//! When the writer schema is the reader schema, decoding skips the intermediate value tree.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;

use crate::contracts::Contract;
use crate::registry::{Registry, RegistryError};
use crate::types::AvroRecord;
use crate::wire::{self, FrameError};

/// Upper bound for one allocation while decoding. Kafka records are at most a few MiB, so a
/// larger length prefix can only come from garbage; refusing it early keeps garbage from
/// reserving hundreds of MiB before the read fails.
const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// Why a record could not be decoded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("schema id {0} is not in the schema registry")]
    UnknownSchemaId(u32),
    #[error("schema id {id} could not be fetched: {source}")]
    Registry {
        id: u32,
        #[source]
        source: RegistryError,
    },
    #[error("avro body does not match its writer schema {id}: {reason}")]
    Body { id: u32, reason: String },
    #[error("writer schema {id} cannot be read as {reader}: {reason}")]
    Incompatible {
        id: u32,
        reader: &'static str,
        reason: String,
    },
}

impl DecodeError {
    /// Stable, machine-readable reason, used as the dead-letter `error_code` and metric label.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::Frame(FrameError::Empty) => "empty_record",
            DecodeError::Frame(FrameError::TooShort(_)) => "truncated_header",
            DecodeError::Frame(FrameError::BadMagic(_)) => "bad_magic",
            DecodeError::UnknownSchemaId(_) => "unknown_schema_id",
            DecodeError::Registry { .. } => "registry_error",
            DecodeError::Body { .. } => "malformed_avro",
            DecodeError::Incompatible { .. } => "incompatible_schema",
        }
    }

    /// A transient error says nothing about the record: retry it later instead of
    /// dead-lettering it.
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::Registry { source, .. } if source.is_transient())
    }

    /// The schema id of the header, when the header could be read.
    pub fn schema_id(&self) -> Option<u32> {
        match self {
            DecodeError::Frame(_) => None,
            DecodeError::UnknownSchemaId(id)
            | DecodeError::Registry { id, .. }
            | DecodeError::Body { id, .. }
            | DecodeError::Incompatible { id, .. } => Some(*id),
        }
    }
}

/// Why a value could not be encoded (a value outside its schema, e.g. a NaN is fine but a field
/// the schema does not have is not). This is a bug of the writer, not bad input.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {contract}: {reason}")]
pub struct EncodeError {
    pub contract: &'static str,
    pub reason: String,
}

/// Writes values of `T` with one registered schema.
pub struct Encoder<T> {
    schema_id: u32,
    contract: Contract,
    writer: GenericDatumWriter<'static>,
    _type: PhantomData<fn(&T)>,
}

impl<T: AvroRecord> Encoder<T> {
    /// Registers `T`'s contract under `subject` (idempotent) and encodes with the returned id.
    pub async fn register(registry: &Registry, subject: &str) -> Result<Self, RegistryError> {
        Self::register_contract(registry, subject, T::CONTRACT).await
    }

    /// Like [`Encoder::register`] with another contract than `T`'s own, for writing an older or
    /// newer version of a record type.
    pub async fn register_contract(
        registry: &Registry,
        subject: &str,
        contract: Contract,
    ) -> Result<Self, RegistryError> {
        let id = registry.register(subject, contract.avsc()).await?;
        registry.intern(id, contract.schema().clone());
        Ok(Self::with_id(contract, id))
    }

    /// An encoder for a schema id obtained elsewhere.
    pub fn with_id(contract: Contract, schema_id: u32) -> Self {
        let writer = GenericDatumWriter::builder(contract.schema())
            .human_readable(false)
            .build()
            .unwrap_or_else(|e| panic!("{} resolves: {e}", contract.file_name()));
        Encoder {
            schema_id,
            contract,
            writer,
            _type: PhantomData,
        }
    }

    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    /// Encodes into a new buffer.
    pub fn encode(&self, value: &T) -> Result<Vec<u8>, EncodeError> {
        let mut buf = Vec::with_capacity(256);
        self.encode_into(value, &mut buf)?;
        Ok(buf)
    }

    /// Appends the framed record to `buf` (which should be empty to get one record).
    pub fn encode_into(&self, value: &T, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        wire::write_header(buf, self.schema_id);
        self.writer
            .write_ser(buf, value)
            .map(|_| ())
            .map_err(|e| EncodeError {
                contract: self.contract.file_name(),
                reason: e.to_string(),
            })
    }
}

/// How records of one writer schema id are read.
enum Plan {
    /// Writer schema equals the reader schema: deserialize straight from the bytes.
    Direct(GenericDatumReader<'static>),
    /// Another version: decode with the writer schema, resolve to the reader schema.
    Resolve(GenericDatumReader<'static>),
}

/// Where writer schemas come from.
enum Source {
    Registry(Arc<Registry>),
    /// A fixed id → schema table, for decoding without a registry (unit tests, tools).
    Fixed(HashMap<u32, &'static Schema>),
}

/// Reads `T` from records written with any compatible version of its contract.
pub struct Decoder<T> {
    source: Source,
    contract: Contract,
    plans: RwLock<HashMap<u32, Arc<Plan>>>,
    _type: PhantomData<fn() -> T>,
}

impl<T: AvroRecord> Decoder<T> {
    /// Decodes as `T`'s own contract, fetching writer schemas from the registry.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self::build(Source::Registry(registry), T::CONTRACT)
    }

    /// Decodes as `reader` (a contract whose record `T` mirrors), fetching writer schemas from the
    /// registry.
    pub fn with_reader(registry: Arc<Registry>, reader: Contract) -> Self {
        Self::build(Source::Registry(registry), reader)
    }

    /// Decodes with a fixed table of writer schemas and no registry.
    pub fn fixed(writers: impl IntoIterator<Item = (u32, Contract)>, reader: Contract) -> Self {
        let table = writers
            .into_iter()
            .map(|(id, c)| (id, c.schema()))
            .collect();
        Self::build(Source::Fixed(table), reader)
    }

    fn build(source: Source, contract: Contract) -> Self {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        Decoder {
            source,
            contract,
            plans: RwLock::new(HashMap::new()),
            _type: PhantomData,
        }
    }

    /// Decodes one framed record. Fetches the writer schema from the registry the first time an
    /// id is seen; every later record of that id decodes without I/O.
    pub async fn decode(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let (id, body) = wire::split(bytes)?;
        let plan = match self.plan_cached(id) {
            Some(p) => p,
            None => self.plan_fetch(id).await?,
        };
        self.decode_body(id, &plan, body)
    }

    /// Decodes without I/O; `None` when the writer schema is not cached yet (call
    /// [`Decoder::decode`] then).
    pub fn decode_cached(&self, bytes: &[u8]) -> Option<Result<T, DecodeError>> {
        let (id, body) = match wire::split(bytes) {
            Ok(v) => v,
            Err(e) => return Some(Err(e.into())),
        };
        let plan = match self.plan_cached(id) {
            Some(p) => p,
            None => {
                let writer = match &self.source {
                    Source::Fixed(t) => match t.get(&id) {
                        Some(s) => *s,
                        None => return Some(Err(DecodeError::UnknownSchemaId(id))),
                    },
                    Source::Registry(r) => r.cached(id)?,
                };
                match self.insert_plan(id, writer) {
                    Ok(p) => p,
                    Err(e) => return Some(Err(e)),
                }
            }
        };
        Some(self.decode_body(id, &plan, body))
    }

    fn plan_cached(&self, id: u32) -> Option<Arc<Plan>> {
        self.plans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    async fn plan_fetch(&self, id: u32) -> Result<Arc<Plan>, DecodeError> {
        let writer = match &self.source {
            Source::Fixed(t) => *t.get(&id).ok_or(DecodeError::UnknownSchemaId(id))?,
            Source::Registry(r) => r.schema(id).await.map_err(|e| match e {
                RegistryError::NotFound(_) => DecodeError::UnknownSchemaId(id),
                source => DecodeError::Registry { id, source },
            })?,
        };
        self.insert_plan(id, writer)
    }

    fn insert_plan(&self, id: u32, writer: &'static Schema) -> Result<Arc<Plan>, DecodeError> {
        let reader_schema = self.contract.schema();
        let incompatible = |reason: String| DecodeError::Incompatible {
            id,
            reader: self.contract.file_name(),
            reason,
        };
        let plan = if writer.canonical_form() == reader_schema.canonical_form() {
            Plan::Direct(
                GenericDatumReader::builder(writer)
                    .human_readable(false)
                    .build()
                    .map_err(|e| incompatible(e.to_string()))?,
            )
        } else {
            Plan::Resolve(
                GenericDatumReader::builder(writer)
                    .human_readable(false)
                    .build()
                    .map_err(|e| incompatible(e.to_string()))?,
            )
        };
        let plan = Arc::new(plan);
        self.plans
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, plan.clone());
        Ok(plan)
    }

    fn decode_body(&self, id: u32, plan: &Plan, body: &[u8]) -> Result<T, DecodeError> {
        let mut rest = body;
        let value = match plan {
            Plan::Direct(reader) => {
                reader
                    .read_deser::<T>(&mut rest)
                    .map_err(|e| DecodeError::Body {
                        id,
                        reason: e.to_string(),
                    })?
            }
            Plan::Resolve(reader) => {
                let value = reader
                    .read_value(&mut rest)
                    .map_err(|e| DecodeError::Body {
                        id,
                        reason: e.to_string(),
                    })?;
                let value = value.resolve(self.contract.schema()).map_err(|e| {
                    DecodeError::Incompatible {
                        id,
                        reader: self.contract.file_name(),
                        reason: e.to_string(),
                    }
                })?;
                apache_avro::from_value::<T>(&value).map_err(|e| DecodeError::Incompatible {
                    id,
                    reader: self.contract.file_name(),
                    reason: e.to_string(),
                })?
            }
        };
        if !rest.is_empty() {
            return Err(DecodeError::Body {
                id,
                reason: format!("{} trailing bytes after the record", rest.len()),
            });
        }
        Ok(value)
    }
}

/// Decodes a record of any schema into a generic Avro value (for tools that show records of any
/// topic), returning the writer schema id with it.
pub async fn decode_value(
    registry: &Registry,
    bytes: &[u8],
) -> Result<(u32, apache_avro::types::Value), DecodeError> {
    let (id, body) = wire::split(bytes)?;
    let writer = registry.schema(id).await.map_err(|e| match e {
        RegistryError::NotFound(_) => DecodeError::UnknownSchemaId(id),
        source => DecodeError::Registry { id, source },
    })?;
    let mut rest = body;
    let body_error = |e: apache_avro::Error| DecodeError::Body {
        id,
        reason: e.to_string(),
    };
    let value = GenericDatumReader::builder(writer)
        .human_readable(false)
        .build()
        .and_then(|r| r.read_value(&mut rest))
        .map_err(body_error)?;
    if !rest.is_empty() {
        return Err(DecodeError::Body {
            id,
            reason: format!("{} trailing bytes after the record", rest.len()),
        });
    }
    Ok((id, value))
}
