//! The `webhook-relay` binary: logging, the crypto provider, then the CLI.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// glibc's malloc cost a tenth of the relay's CPU in profiles of ingest and
/// forwarding (its arena locks and `malloc_consolidate` on hyper's buffers).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    init_logging();
    // One rustls crypto provider for the whole process (ingress and client).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    webhook_relay::cli::run(webhook_relay::cli::Cli::parse())
}

/// `RUST_LOG` sets the filter (default `info`); `LOG_FORMAT=json` for JSON lines.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if std::env::var("LOG_FORMAT").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
