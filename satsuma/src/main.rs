//! `satsuma`: the all-in-one Satsuma server for trying it out and for small single-machine
//! installs. It runs the coordinator (rooms, E2EE handshake relay, join tokens, SFU proxy, web
//! client files) and the SFU (WebRTC media on one UDP port) in one process, sharing a generated
//! app secret, with defaults that work on a laptop: web on http://localhost:8080, media on UDP
//! 7881 announced on 127.0.0.1 and the machine's LAN addresses. Tokens: without `--dev` it needs
//! a token secret (`--token-secret`), and people join with a token (`satsuma token create`, or
//! your app through `POST /api/v1/tokens` with an API key) or a host's invite link; `--dev`
//! opens `POST /token` to anyone (for trying it; `scripts/run.sh` passes it).
//!
//! Configuration: flags over `SATSUMA_*` environment variables over a TOML file (`--config`);
//! see [`settings`]. On SIGTERM or SIGINT it stops accepting, tells clients to leave, drains and
//! exits 0 ([`stack::Stack::shutdown`]); a second signal exits at once.
//!
//! On start it prints one machine-readable line for scripts and tests:
//! `satsuma listening web=ADDR sfu=ADDR media=ADDR media_tcp=ADDR|off`, then the URL to open.
//!
//! `satsuma verify-client URL` does not serve: it checks that a deployment serves exactly the
//! local build of the web client ([`verify`]). `satsuma token create` mints a join token with
//! the configured secret ([`token`]).

mod announce;
mod settings;
mod stack;
mod tls;
mod token;
mod verify;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::settings::{Cli, Command, LogFormat, Settings};
use crate::stack::{Secrets, Stack};

/// jemalloc (with background purging) instead of glibc malloc, as in `satsuma-sfu`: the media
/// path allocates from several threads, and glibc kept its arenas at their high-water mark, so
/// RSS crept up under churn and was not returned after the load left (benches/README.md, "Soak").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    match cli.command.take() {
        Some(Command::VerifyClient(args)) => return verify_client(&args),
        Some(Command::Token(cmd)) => {
            return match token::run(&cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("satsuma token: {e:#}");
                    ExitCode::from(2)
                }
            };
        }
        None => {}
    }
    let check_only = cli.check_config;
    let settings = match Settings::from_cli(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("satsuma: {e:#}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        if let Err(e) = EnvFilter::try_new(&settings.log) {
            eprintln!("satsuma: invalid log filter {:?}: {e}", settings.log);
            return ExitCode::from(2);
        }
        println!("{}", settings.describe());
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    // Refused before anything starts: a missing token secret outside dev mode.
    let secrets = match Secrets::from_settings(&settings) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("satsuma: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging(&settings) {
        eprintln!("satsuma: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("satsuma: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, secrets)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("satsuma: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `satsuma verify-client`: 0 all files match, 1 some do not, 2 the check could not run.
fn verify_client(args: &verify::VerifyArgs) -> ExitCode {
    let Some(web_dir) = stack::find_web_dir(args.web_dir.as_deref(), &stack::default_web_dirs())
    else {
        eprintln!(
            "satsuma verify-client: no local build of the web client found; build it with \
             scripts/build-web.sh or give --web-dir"
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("satsuma verify-client: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(verify::verify(args, &web_dir)) {
        Ok(bad) if bad.is_empty() => {
            println!(
                "OK: {} serves the same web client as {}",
                args.url,
                web_dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(bad) => {
            eprintln!(
                "satsuma verify-client: FAILED: {} does not match the local build: {}",
                args.url,
                bad.join(", ")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("satsuma verify-client: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&settings.log)
        .with_context(|| format!("invalid log filter {:?}", settings.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// `println!` that ignores a closed stdout: whoever started us may stop reading after the
/// `satsuma listening` line, and a server must not die of that (`println!` would panic on EPIPE).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

async fn run(settings: Settings, secrets: Secrets) -> anyhow::Result<ExitCode> {
    // Install the signal handlers before binding anything, so a SIGTERM that arrives during
    // start-up is not lost (and does not kill the process with the default action).
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;

    let interfaces = if settings.detect_lan && settings.media.ip().is_unspecified() {
        announce::machine_interfaces().unwrap_or_else(|e| {
            tracing::warn!("cannot list network interfaces ({e}); announcing loopback only");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    let announce_ips = announce::announce_ips(
        settings.media,
        &settings.announce_ips,
        settings.detect_lan,
        &interfaces,
    );

    let web_dir = match stack::find_web_dir(settings.web_dir.as_deref(), &stack::default_web_dirs())
    {
        Some(dir) => dir,
        None => {
            let fallback = std::path::PathBuf::from("client/web/public");
            tracing::warn!(
                "no web client found (looked for index.html in ./client/web/public, \
                 <exe dir>/../share/satsuma/web and the source checkout); build it with \
                 scripts/build-web.sh or set --web-dir. The API still works."
            );
            fallback
        }
    };
    if !web_dir.join("pkg").is_dir() {
        tracing::warn!(
            web_dir = %web_dir.display(),
            "the web client's WASM (pkg/) is missing: run scripts/build-web.sh"
        );
    }

    let stack = Stack::start(&settings, &secrets, announce_ips.clone(), web_dir.clone()).await?;

    let url = stack::user_url(&settings, stack.web_addr());
    say!(
        "satsuma listening web={} sfu={} media={} media_tcp={}",
        stack.web_addr(),
        stack.sfu_api_addr(),
        stack.media_addr(),
        stack
            .media_tcp_addr()
            .map_or_else(|| "off".to_string(), |a| a.to_string())
    );
    let announced: Vec<String> = announce_ips.iter().map(ToString::to_string).collect();
    say!(
        "media announced on {} (UDP port {})",
        announced.join(", "),
        stack.media_addr().port()
    );
    say!("web client from {}", web_dir.display());
    if settings.dev {
        say!(
            "dev mode on (--dev): POST /token gives anyone who can reach the web port a token for \
             any room, host rights included; never in production"
        );
        tracing::warn!("dev mode: POST /token is open to anyone");
    } else {
        say!(
            "tokens: join links come from `satsuma token create`, POST /api/v1/tokens ({} API \
             key(s)) or a host's invite",
            settings.api_keys.len()
        );
    }
    if settings.test_hooks {
        say!("test hooks on: for test suites only, never in production");
    }
    say!("");
    say!("    Open {url} in your browser.");
    say!("");
    tracing::info!(%url, "satsuma ready");

    let which = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal = which, drain = ?settings.drain, "shutting down");
    tokio::select! {
        () = stack.shutdown(settings.drain) => {
            tracing::info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        _ = sigterm.recv() => {
            tracing::warn!("second signal: exiting without draining");
            Ok(ExitCode::from(130))
        }
        _ = sigint.recv() => {
            tracing::warn!("second signal: exiting without draining");
            Ok(ExitCode::from(130))
        }
    }
}
