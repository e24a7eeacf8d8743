//! `satsuma-coordinator`: runs the coordinator from flags, `SATSUMA_COORD_*` env and a TOML file.
//! `satsuma-coordinator token create --room R --identity I [--host] [--ttl 1h]` mints a join
//! token with the same secret instead ([`satsuma_coordinator::token_cli`]).

use anyhow::Context as _;
use clap::Parser as _;
use satsuma_coordinator::{Cli, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `satsuma-coordinator token create ...`: a tool, not the server.
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        let args = std::env::args_os().skip(1);
        let cli = satsuma_coordinator::token_cli::TokenCli::parse_from(args);
        match satsuma_coordinator::token_cli::run(&cli) {
            Ok(text) => {
                println!("{text}");
                return Ok(());
            }
            Err(e) => {
                eprintln!("satsuma-coordinator token: {e}");
                std::process::exit(2);
            }
        }
    }
    let cli = Cli::parse();
    let filter = cli.log.clone().unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).context("bad --log filter")?)
        .with_writer(std::io::stderr)
        .init();
    let config = cli.resolve().context("configuration")?;
    if config.dev {
        tracing::warn!("dev mode: POST /token is open to anyone");
    }
    let handle = Server::bind(config).await.context("starting server")?;
    println!("satsuma-coordinator listening http={}", handle.local_addr());
    shutdown_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
