//! `cartstream-producer`: simulate shoppers, replay REES46 files, load catalogs. A thin shell
//! over the library: parse flags, start the service (logging, signals, `/metrics`), dispatch.

use std::process::ExitCode;

use cartstream_producer::cli::{Cli, Command};
use cartstream_producer::metrics::Metrics;
use cartstream_producer::run;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cartstream_runtime::exit_code(dispatch(cli).await)
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    let command = cli
        .command
        .unwrap_or(Command::Simulate(Box::new(cli.simulate)));
    let common = match &command {
        Command::Simulate(a) => &a.common,
        Command::Replay(a) => &a.common,
        Command::LoadCatalog(a) => &a.common,
    };
    let service = common.service.init("cartstream-producer").await?;
    let metrics = Metrics::register()?;
    let health = service.health.clone();
    let ready = move || health.set_ready(true);
    let shutdown = service.shutdown.clone();
    match command {
        Command::Simulate(a) => run::simulate(*a, shutdown, metrics, ready).await,
        Command::Replay(a) => run::replay(*a, shutdown, metrics, ready).await,
        Command::LoadCatalog(a) => run::load_catalog_cmd(*a, shutdown, metrics).await,
    }
}
