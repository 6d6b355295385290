//! skogd, the per-node agent: `skogd --config FILE` runs it (see `skog_agent::daemon`);
//! `--check-config FILE` validates a configuration and exits 0, or 2 with the reason.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use skog_agent::config::{self, Config};
use skog_agent::daemon::{self, Exit};

#[derive(Debug, Parser)]
#[command(
    name = "skogd",
    version,
    about = "Skog: routes, security groups and BGP for VM taps"
)]
struct Args {
    /// Configuration file.
    #[arg(long, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    /// Validate this configuration file and exit: 0 if valid, 2 with the reason if not.
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
}

fn main() -> ExitCode {
    skog_agent::allocator::tune();
    let args = Args::parse();
    if let Some(path) = args.check_config {
        return match Config::load(&path) {
            Ok(_) => {
                println!("{}: ok", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("skogd: invalid configuration: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("skogd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = skog_agent::logging::init(config.log_level.as_deref()) {
        eprintln!("skogd: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("skogd")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skogd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(config, args.config)) {
        Ok(Exit::Stop) => ExitCode::SUCCESS,
        Ok(Exit::Failed) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("skogd: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
