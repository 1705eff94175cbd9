//! `cartstream-admin lake-query NAME`: one of the lake's SQL queries (`sql/NAME.sql`) run by
//! DuckDB over the Parquet lake, its result printed.
//!
//! The queries and their runner (`sql/lake_query.py`, which defines the star schema's views and
//! applies the lake's reader rule) live in `sql/`; DuckDB is the PyPI package, installed on first
//! use by `sql/setup.sh` into `.stack/sql-venv` (pinned; a no-op once installed). This command
//! only finds them and passes the lake, the topic prefix and the output format on: the same
//! queries run with `python sql/lake_query.py` or any DuckDB client.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

/// How the result is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

impl Format {
    fn as_str(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Csv => "csv",
            Format::Json => "json",
        }
    }
}

/// The repository's `sql/` folder (where this binary was built from).
pub fn default_sql_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../sql"))
}

/// One invocation of the runner.
#[derive(Debug, Clone)]
pub struct LakeQuery {
    pub sql_dir: PathBuf,
    /// A lake directory or `file://` URL.
    pub lake: String,
    /// Topic prefix of the pipeline that wrote the lake.
    pub prefix: String,
    pub format: Format,
}

impl LakeQuery {
    /// The venv's python with DuckDB (installing it if needed).
    fn python(&self) -> anyhow::Result<String> {
        let setup = self.sql_dir.join("setup.sh");
        let out = Command::new("bash")
            .arg(&setup)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running {}", setup.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} failed: DuckDB could not be installed from PyPI",
            setup.display()
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    fn runner(&self) -> anyhow::Result<Command> {
        let script = self.sql_dir.join("lake_query.py");
        anyhow::ensure!(
            script.exists(),
            "{} not found: pass --sql-dir (or CARTSTREAM_SQL_DIR) with the repository's sql/ folder",
            script.display()
        );
        let mut c = Command::new(self.python()?);
        c.arg(script);
        Ok(c)
    }

    /// Runs query `name`, its result on stdout; returns the runner's exit status.
    pub fn run(&self, name: &str) -> anyhow::Result<u8> {
        let status = self
            .runner()?
            .args(["--lake", &self.lake, "--prefix", &self.prefix])
            .args(["--format", self.format.as_str(), name])
            .status()
            .context("running DuckDB")?;
        Ok(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
    }

    /// Runs query `name` and returns what it printed (for tests and tools).
    pub fn output(&self, name: &str) -> anyhow::Result<String> {
        let out = self
            .runner()?
            .args(["--lake", &self.lake, "--prefix", &self.prefix])
            .args(["--format", self.format.as_str(), name])
            .output()
            .context("running DuckDB")?;
        anyhow::ensure!(
            out.status.success(),
            "query {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Prints the queries and what each computes.
    pub fn list(&self) -> anyhow::Result<u8> {
        let status = self.runner()?.arg("--list").status()?;
        Ok(status.code().map_or(1, |c| c.clamp(0, 255) as u8))
    }

    /// The names of the queries in the folder.
    pub fn names(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.sql_dir)
            .with_context(|| format!("reading {}", self.sql_dir.display()))?
        {
            let name = e?.file_name().to_string_lossy().to_string();
            if let Some(n) = name.strip_suffix(".sql") {
                out.push(n.to_string());
            }
        }
        out.sort();
        Ok(out)
    }
}
