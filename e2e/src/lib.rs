//! Repository-wide checks that belong to no single crate.
//!
//! The library is empty on purpose; the checks are integration tests:
//!
//! - `tests/compose_file.rs` reads `docker-compose.yml`, `grafana/` and the Prometheus config for
//!   compose, and checks them against the workspace: pinned images, ports on 127.0.0.1 only, every
//!   referenced file present, every cartstream service running a binary this workspace builds with
//!   flags and environment variables that binary's `--help` lists, every service with metrics
//!   scraped, and every Grafana panel on the provisioned Prometheus datasource. It needs no Docker:
//!   the files are checked statically, the binaries are built (debug) and asked for `--help`.
