//! Sessions and migrations for ScyllaDB (production, docker compose) and Apache Cassandra
//! (the local stack). Only CQL both accept is used.
//!
//! Migrations are the `.cql` files of `sinks/cql/`, compiled into the binary and applied in file
//! name order. Each is recorded in `<keyspace>.schema_migrations` with a checksum; an applied
//! migration is skipped, and one whose file changed after it was applied is refused (write a new
//! migration instead). Statements use `IF NOT EXISTS`, so a crash mid-migration is repaired by
//! running it again.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::value::CqlTimestamp;

/// The migrations, in order: (name, text).
pub const MIGRATIONS: &[(&str, &str)] = &[(
    "0001_realtime_tables",
    include_str!("../cql/0001_realtime_tables.cql"),
)];

/// Where the database is and how to log in.
#[derive(Clone, clap::Args)]
pub struct CqlArgs {
    /// Contact points, comma-separated host:port.
    #[arg(
        id = "scylla_uri",
        long = "scylla-uri",
        env = "SCYLLA_URI",
        default_value = "127.0.0.1:9042"
    )]
    pub uri: String,
    /// Keyspace of the cartstream tables.
    #[arg(
        id = "scylla_keyspace",
        long = "scylla-keyspace",
        env = "SCYLLA_KEYSPACE",
        default_value = "cartstream"
    )]
    pub keyspace: String,
    /// User name, for a cluster with password authentication.
    #[arg(
        id = "scylla_username",
        long = "scylla-username",
        env = "SCYLLA_USERNAME"
    )]
    pub username: Option<String>,
    /// Password (prefer the environment variable).
    #[arg(
        id = "scylla_password",
        long = "scylla-password",
        env = "SCYLLA_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// Replication of the keyspace when the migration creates it, as a CQL map.
    #[arg(
        id = "scylla_replication",
        long = "scylla-replication",
        env = "SCYLLA_REPLICATION",
        default_value = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )]
    pub replication: String,
}

impl fmt::Debug for CqlArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CqlArgs")
            .field("uri", &self.uri)
            .field("keyspace", &self.keyspace)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("replication", &self.replication)
            .finish()
    }
}

/// Why a keyspace name is refused: it is spliced into CQL, so only plain identifiers pass.
#[derive(Debug, thiserror::Error)]
#[error("keyspace {0:?} must be 1-48 characters of [a-z0-9_], starting with a letter")]
pub struct BadKeyspace(pub String);

pub fn check_keyspace(name: &str) -> Result<(), BadKeyspace> {
    let ok = (1..=48).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(BadKeyspace(name.to_string()))
    }
}

impl CqlArgs {
    pub fn local(keyspace: &str) -> Self {
        CqlArgs {
            uri: "127.0.0.1:9042".into(),
            keyspace: keyspace.into(),
            username: None,
            password: None,
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
        }
    }

    /// Connects to the cluster (not to the keyspace, which may not exist yet).
    pub async fn connect(&self) -> anyhow::Result<Session> {
        check_keyspace(&self.keyspace)?;
        let mut b = SessionBuilder::new()
            .known_nodes(self.uri.split(',').map(str::trim).filter(|s| !s.is_empty()))
            .connection_timeout(Duration::from_secs(10));
        if let Some(user) = &self.username {
            b = b.user(user, self.password.clone().unwrap_or_default());
        }
        b.build()
            .await
            .with_context(|| format!("cannot connect to the CQL database at {}", self.uri))
    }
}

/// Splits a migration file into statements: `;`-terminated, `--` comments dropped.
pub fn statements(cql: &str, keyspace: &str) -> Vec<String> {
    let text: String = cql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{keyspace}", keyspace))
        .collect()
}

/// A stable checksum of a migration's text (FNV-1a), to notice edited migrations.
pub fn checksum(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What [`migrate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub already_applied: Vec<String>,
}

/// Creates the keyspace if needed and applies the migrations not applied yet.
pub async fn migrate(session: &Session, args: &CqlArgs) -> anyhow::Result<MigrationReport> {
    let ks = &args.keyspace;
    check_keyspace(ks)?;
    session
        .query_unpaged(
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
                args.replication
            ),
            &[],
        )
        .await
        .with_context(|| format!("creating keyspace {ks}"))?;
    session
        .query_unpaged(
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.schema_migrations \
                 (name text PRIMARY KEY, checksum text, applied_at timestamp)"
            ),
            &[],
        )
        .await
        .context("creating the migrations table")?;
    session.await_schema_agreement().await?;

    let mut report = MigrationReport::default();
    for (name, text) in MIGRATIONS {
        let sum = checksum(text);
        let rows = session
            .query_unpaged(
                format!("SELECT checksum FROM {ks}.schema_migrations WHERE name = ?"),
                (name,),
            )
            .await?
            .into_rows_result()?;
        if let Some((recorded,)) = rows.maybe_first_row::<(Option<String>,)>()? {
            anyhow::ensure!(
                recorded.as_deref() == Some(sum.as_str()),
                "migration {name} was applied with checksum {recorded:?} but the file now has {sum}: \
                 migrations are immutable, add a new one instead"
            );
            report.already_applied.push(name.to_string());
            continue;
        }
        for stmt in statements(text, ks) {
            session
                .query_unpaged(stmt.as_str(), &[])
                .await
                .with_context(|| format!("migration {name}: {stmt}"))?;
        }
        session.await_schema_agreement().await?;
        let now = CqlTimestamp(now_ms());
        session
            .query_unpaged(
                format!("INSERT INTO {ks}.schema_migrations (name, checksum, applied_at) VALUES (?, ?, ?)"),
                (name, &sum, now),
            )
            .await?;
        report.applied.push(name.to_string());
    }
    Ok(report)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_split_and_namespaced() {
        let s = statements(MIGRATIONS[0].1, "ks1");
        assert_eq!(s.len(), 5, "{s:#?}");
        assert!(s
            .iter()
            .all(|x| x.starts_with("CREATE TABLE IF NOT EXISTS ks1.")));
        assert!(s
            .iter()
            .all(|x| !x.contains("--") && !x.contains("{keyspace}")));
    }

    #[test]
    fn keyspace_names_are_checked() {
        assert!(check_keyspace("cartstream_it_1").is_ok());
        for bad in ["", "1abc", "Caps", "a;drop", &"x".repeat(49)] {
            assert!(check_keyspace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn checksum_changes_with_the_text() {
        assert_eq!(checksum("a"), checksum("a"));
        assert_ne!(checksum("a"), checksum("b"));
    }

    #[test]
    fn debug_hides_the_password() {
        let mut a = CqlArgs::local("ks");
        a.password = Some("pw-123".into());
        assert!(!format!("{a:?}").contains("pw-123"));
    }
}
