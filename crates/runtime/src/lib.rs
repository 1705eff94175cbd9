//! What every cartstream service shares, written once: structured logging, the Prometheus
//! registry, the `/metrics` + `/healthz` + `/readyz` endpoint, and shutdown on SIGINT/SIGTERM.
//!
//! A binary calls [`ServiceArgs::init`] first thing, which sets up logging and returns a
//! [`Service`]: a [`Shutdown`] token that fires on the first signal, the [`Health`] flags, and the
//! running HTTP endpoint. Libraries take a [`Shutdown`] instead of listening for signals, so tests
//! drive shutdown themselves.

pub mod http;
pub mod shutdown;
pub mod telemetry;

pub use http::Health;
pub use shutdown::Shutdown;
pub use telemetry::LogFormat;

use std::net::SocketAddr;

/// Flags every service has.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address of the HTTP endpoint serving /metrics, /healthz and /readyz ("off" disables it).
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9100")]
    pub metrics_addr: String,
    /// Log line format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A started service: its shutdown token, health flags and the address its endpoint listens on.
#[derive(Debug)]
pub struct Service {
    pub shutdown: Shutdown,
    pub health: Health,
    pub metrics_addr: Option<SocketAddr>,
}

impl ServiceArgs {
    /// Sets up logging, installs the signal handlers and starts the HTTP endpoint.
    pub async fn init(&self, name: &'static str) -> anyhow::Result<Service> {
        telemetry::init_logging(self.log_format);
        let shutdown = Shutdown::on_signals();
        let health = Health::new(name);
        let metrics_addr = if self.metrics_addr.eq_ignore_ascii_case("off") {
            None
        } else {
            let addr: SocketAddr = self.metrics_addr.parse().map_err(|e| {
                anyhow::anyhow!(
                    "--metrics-addr {:?} is not host:port: {e}",
                    self.metrics_addr
                )
            })?;
            Some(http::serve(addr, health.clone(), shutdown.clone()).await?)
        };
        tracing::info!(service = name, metrics = ?metrics_addr, "started");
        Ok(Service {
            shutdown,
            health,
            metrics_addr,
        })
    }
}

/// The exit of every binary: success, or the error chain on stderr and a non-zero code.
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
