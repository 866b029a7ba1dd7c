//! The `pluto2` binary: parse the command line, set up logs, run the library.

use std::process::ExitCode;

use pluto2::config::{self, Command, EX_USAGE};
use pluto2::{daemon, logging, spool};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = std::env::args_os().map(|a| a.to_string_lossy().into_owned());
    let cli = match config::parse(args) {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(&config::one_line(&e)),
    };
    match cli.command {
        Some(Command::Queue(args)) => queue(args),
        None => {
            let config = match cli.daemon.validate() {
                Ok(c) => c,
                Err(e) => return usage_error(&e.to_string()),
            };
            logging::init(config.ops.debug);
            if let Some(info) = &config.export_node_info {
                return export_node_info(&config, info);
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("pluto2: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(config, CancellationToken::new())) {
                Ok(()) => ExitCode::SUCCESS,
                // A data dir pluto2 cannot create or write is a setting to
                // fix, like any other bad flag.
                Err(e @ (daemon::DaemonError::DataDir(_) | daemon::DaemonError::Mixnet(_))) => {
                    usage_error(&e.to_string())
                }
                Err(e) => {
                    eprintln!("pluto2: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints this node's `nodes.json` entry as one JSON object on stdout
/// (logs stay on stderr) and exits; nothing is started or bound.
fn export_node_info(config: &config::Config, info: &config::NodeInfo) -> ExitCode {
    match daemon::export_node_info(config, info) {
        Ok(entry) => match serde_json::to_string(&entry) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pluto2: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => usage_error(&e.to_string()),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("pluto2: {message}");
    ExitCode::from(EX_USAGE as u8)
}

fn queue(args: config::QueueArgs) -> ExitCode {
    match spool::queue_report(&args.data_dir, &pluto2::time::system_clock()) {
        Ok(report) if args.json => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("pluto2: {e}");
                ExitCode::FAILURE
            }
        },
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pluto2: {e}");
            ExitCode::FAILURE
        }
    }
}
