//! A caching client of a Confluent-compatible schema registry.
//!
//! Registration and look-ups go through `schema_registry_converter`; the compatibility
//! configuration endpoints (`/config/{subject}`), which that crate does not cover, are plain HTTP.
//! Writer schemas fetched by id are cached for the life of the process: ids are immutable in a
//! registry, and a deployment sees a handful of them, so each parsed schema is interned once and
//! handed out as `&'static` (which lets decoders keep no locks on the hot path).

use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;
use std::time::Duration;

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, get_schema_by_id, is_compatible_schema, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

/// Where the registry is and how to authenticate.
#[derive(Clone)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub timeout: Duration,
}

impl RegistryConfig {
    pub fn new(url: impl Into<String>) -> Self {
        RegistryConfig {
            url: url.into().trim_end_matches('/').to_string(),
            username: None,
            password: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Never prints the password.
impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Subject compatibility levels of the Confluent API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compatibility {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The subject, version or id does not exist.
    #[error("not found in the schema registry: {0}")]
    NotFound(String),
    /// The registry refused the request, e.g. a schema incompatible with the subject's history.
    #[error("schema registry refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    /// The registry could not be reached or failed; worth retrying.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry returned a schema that is not valid Avro.
    #[error("schema registry returned an invalid schema for id {id}: {reason}")]
    InvalidSchema { id: u32, reason: String },
}

impl RegistryError {
    /// Whether the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }

    fn from_src(e: SRCError) -> Self {
        let text = match &e.cause {
            Some(c) => format!("{}: {c}", e.error),
            None => e.error.clone(),
        };
        match http_status(&e.error) {
            Some(404) => RegistryError::NotFound(text),
            Some(s) if s >= 500 => RegistryError::Unavailable(text),
            Some(s) => RegistryError::Rejected {
                status: s,
                message: text,
            },
            None if e.retriable => RegistryError::Unavailable(text),
            None => RegistryError::Rejected {
                status: 0,
                message: text,
            },
        }
    }

    fn from_reqwest(e: reqwest::Error) -> Self {
        RegistryError::Unavailable(e.to_string())
    }
}

/// Extracts `NNN` from schema_registry_converter's "... failed with status NNN ..." messages.
fn http_status(msg: &str) -> Option<u16> {
    let rest = &msg[msg.find("status ")? + "status ".len()..];
    rest.get(..3)?.parse().ok()
}

/// A schema registry client with an id → schema cache.
pub struct Registry {
    config: RegistryConfig,
    settings: SrSettings,
    http: reqwest::Client,
    by_id: RwLock<HashMap<u32, &'static Schema>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        let mut builder = SrSettings::new_builder(config.url.clone());
        builder.set_timeout(config.timeout);
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_deref());
        }
        let settings = builder
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(RegistryError::from_reqwest)?;
        Ok(Registry {
            config,
            settings,
            http,
            by_id: RwLock::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// Registers `avsc` under `subject` (idempotent: an already registered schema returns its
    /// existing id) and returns the schema id.
    pub async fn register(&self, subject: &str, avsc: &str) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, avsc.to_string());
        let registered = post_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map_err(RegistryError::from_src)?;
        Ok(registered.id)
    }

    /// Whether `avsc` may be registered under `subject` given its compatibility level.
    pub async fn is_compatible(&self, subject: &str, avsc: &str) -> Result<bool, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, avsc.to_string());
        is_compatible_schema(&self.settings, subject.to_string(), supplied)
            .await
            .map_err(RegistryError::from_src)
    }

    /// Sets the compatibility level of one subject.
    pub async fn set_compatibility(
        &self,
        subject: &str,
        level: Compatibility,
    ) -> Result<(), RegistryError> {
        let url = format!("{}/config/{}", self.config.url, subject.replace('/', "%2F"));
        let mut req = self
            .http
            .put(url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(format!(r#"{{"compatibility":"{}"}}"#, level.as_str()));
        if let Some(user) = &self.config.username {
            req = req.basic_auth(user, self.config.password.as_deref());
        }
        let resp = req.send().await.map_err(RegistryError::from_reqwest)?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(());
        }
        let message = resp.text().await.unwrap_or_default();
        Err(match status {
            404 => RegistryError::NotFound(message),
            s if s >= 500 => RegistryError::Unavailable(format!("HTTP {s}: {message}")),
            s => RegistryError::Rejected { status: s, message },
        })
    }

    /// All subjects of the registry.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        get_all_subjects(&self.settings)
            .await
            .map_err(RegistryError::from_src)
    }

    /// The writer schema with this id, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<&'static Schema, RegistryError> {
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(RegistryError::from_src)?;
        let parsed =
            Schema::parse_str(&registered.schema).map_err(|e| RegistryError::InvalidSchema {
                id,
                reason: e.to_string(),
            })?;
        Ok(self.intern(id, parsed))
    }

    /// The writer schema with this id if it was fetched before.
    pub fn cached(&self, id: u32) -> Option<&'static Schema> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    /// Puts a schema in the cache under `id`, returning the interned copy. Also used after a
    /// registration, whose schema text the caller already holds.
    pub fn intern(&self, id: u32, schema: Schema) -> &'static Schema {
        let mut map = self.by_id.write().unwrap_or_else(|p| p.into_inner());
        // Leaked on purpose (see the module docs); a racing insert keeps the first copy.
        map.entry(id).or_insert_with(|| Box::leak(Box::new(schema)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_parsed_from_converter_messages() {
        assert_eq!(
            http_status("HTTP request to schema registry failed with status 404 Not Found"),
            Some(404)
        );
        assert_eq!(http_status("http call to schema registry failed"), None);
    }

    #[test]
    fn converter_errors_are_classified() {
        let nf = SRCError::new(
            "HTTP request to schema registry failed with status 404 Not Found",
            None,
            false,
        );
        assert!(matches!(
            RegistryError::from_src(nf),
            RegistryError::NotFound(_)
        ));
        let conflict = SRCError::new(
            "HTTP request to schema registry failed with status 409 Conflict",
            None,
            false,
        );
        assert!(matches!(
            RegistryError::from_src(conflict),
            RegistryError::Rejected { status: 409, .. }
        ));
        let down = SRCError::new("http call to schema registry failed", None, true);
        assert!(RegistryError::from_src(down).is_transient());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let mut c = RegistryConfig::new("http://r:8081/");
        c.username = Some("u".into());
        c.password = Some("hunter2".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(c.url, "http://r:8081");
    }
}

/// Registry flags every service shares.
#[derive(Clone, clap::Args)]
pub struct RegistryArgs {
    /// Base URL of the Confluent-compatible schema registry API.
    #[arg(
        long = "schema-registry-url",
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081/apis/ccompat/v7"
    )]
    pub url: String,
    /// Registry basic-auth user.
    #[arg(long = "schema-registry-username", env = "SCHEMA_REGISTRY_USERNAME")]
    pub username: Option<String>,
    /// Registry basic-auth password (prefer the environment variable).
    #[arg(
        long = "schema-registry-password",
        env = "SCHEMA_REGISTRY_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
}

impl fmt::Debug for RegistryArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config().fmt(f)
    }
}

impl RegistryArgs {
    pub fn config(&self) -> RegistryConfig {
        let mut c = RegistryConfig::new(&self.url);
        c.username = self.username.clone();
        c.password = self.password.clone();
        c
    }

    pub fn connect(&self) -> Result<std::sync::Arc<Registry>, RegistryError> {
        Registry::new(self.config()).map(std::sync::Arc::new)
    }
}
