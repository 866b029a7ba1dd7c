//! The `pluto2` binary: parse the command line, set up logs, run the library.
//!
//! Every refusal is one line on stderr, `pluto2: ` and a message naming the
//! flag or file and what to do, and the exit status says its kind
//! (sysexits, see `config::sysexits` and README.md).

use std::process::ExitCode;

use pluto2::config::{self, Command, sysexits};
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
        // `pluto2 check` reports a flag clap refused as its own problem line.
        Err(e) if std::env::args().nth(1).as_deref() == Some("check") => {
            println!("problem flags: {}", config::one_line(&e));
            return ExitCode::FAILURE;
        }
        Err(e) => return fail(sysexits::USAGE, &config::one_line(&e)),
    };
    match cli.command {
        Some(Command::Queue(args)) => queue(args),
        Some(Command::Pki(command)) => pki(&command),
        Some(Command::Check(args)) => check(*args),
        Some(Command::Testnet(args)) => match pluto2::testnet::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e.status, &e.message),
        },
        None => {
            let config = match cli.daemon.validate() {
                Ok(c) => c,
                Err(e) => return fail(e.exit_status(), &e.to_string()),
            };
            logging::init(config.ops.debug);
            if let Some(info) = &config.export_node_info {
                return export_node_info(&config, info);
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    return fail(
                        sysexits::SOFTWARE,
                        &format!("cannot start the runtime: {e}"),
                    );
                }
            };
            match runtime.block_on(daemon::run(config, CancellationToken::new())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.exit_status(), &e.to_string()),
            }
        }
    }
}

/// Prints the one line of a refusal and returns its status. Messages are
/// written to be one line; this folds any line break a library error might
/// still carry, so the promise holds whatever the cause.
fn fail(status: u8, message: &str) -> ExitCode {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("pluto2: {line}");
    ExitCode::from(status)
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
        Err(e) => fail(e.exit_status(), &e.to_string()),
    }
}

/// `pluto2 check`: one line per check on stdout; exit 0 when every line
/// is `ok`, 1 otherwise.
fn check(args: config::DaemonArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                sysexits::SOFTWARE,
                &format!("cannot start the runtime: {e}"),
            );
        }
    };
    let findings = runtime.block_on(pluto2::check::run(args));
    for finding in &findings {
        println!("{finding}");
    }
    if findings.iter().all(|f| f.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `pluto2 queue` and its operations: one report on stdout (text, or one
/// JSON document with `-json`), refusals as one line on stderr. A deletion
/// is also logged on stderr, one line per queue id, as a drop of class
/// `operator` (the daemon logs the count when it notices).
fn queue(args: config::QueueArgs) -> ExitCode {
    use config::QueueOp;
    use spool::{QueueOpError, QueueOps, Selection};

    let dir = args.data_dir.display().to_string();
    let refuse = |e: QueueOpError| {
        let status = match &e {
            QueueOpError::Spool(e) => daemon::spool_exit_status(e),
            QueueOpError::UnknownIds(_) => sysexits::DATAERR,
            QueueOpError::OldSpool { .. } => sysexits::CONFIG,
        };
        match e {
            QueueOpError::UnknownIds(_) => fail(status, &e.to_string()),
            e => fail(
                status,
                &format!("-data-dir {dir}: cannot read the spool: {e}"),
            ),
        }
    };
    let select = |t: &config::QueueTargets| {
        if t.all {
            Selection::All
        } else {
            Selection::Ids(t.ids.clone())
        }
    };
    if let Some(QueueOp::Delete(d)) = &args.op
        && d.targets.all
        && !d.yes
    {
        return fail(
            sysexits::USAGE,
            "queue delete -all deletes every message in the spool; add -yes to confirm",
        );
    }
    let mut ops = match QueueOps::open(&args.data_dir) {
        Ok(ops) => ops,
        Err(e) => return refuse(e),
    };
    let now = pluto2::time::system_clock()();
    let printed = match &args.op {
        None => ops.report(now).map(|r| show(&r, args.json)),
        Some(QueueOp::List) => ops.list(now).map(|l| show(&l, args.json)),
        Some(QueueOp::Flush) => ops.flush(now).map(|r| show(&r, args.json)),
        Some(QueueOp::Hold(t)) => ops.hold(&select(t)).map(|r| show(&r, args.json)),
        Some(QueueOp::Release(t)) => ops.release(&select(t)).map(|r| show(&r, args.json)),
        Some(QueueOp::Delete(d)) => ops.delete(&select(&d.targets)).map(|r| {
            for id in &r.queue_ids {
                eprintln!("pluto2: [QUEUE] deleted {id} [class=operator]");
            }
            show(&r, args.json)
        }),
    };
    match printed {
        Ok(code) => code,
        Err(e) => refuse(e),
    }
}

/// Prints `value` as text or as one JSON document on stdout.
fn show<T: serde::Serialize + std::fmt::Display>(value: &T, json: bool) -> ExitCode {
    if !json {
        print!("{value}");
        return ExitCode::SUCCESS;
    }
    match serde_json::to_string(value) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(sysexits::SOFTWARE, &e.to_string()),
    }
}

/// `pluto2 pki …`: one line on stdout (a public key, or `ok`), notes and
/// refusals on stderr.
fn pki(command: &config::PkiCommand) -> ExitCode {
    match pluto2::pki_cli::run(command) {
        Ok(done) => {
            for note in &done.notes {
                eprintln!("pluto2: {note}");
            }
            println!("{}", done.stdout);
            ExitCode::SUCCESS
        }
        Err(f) => fail(f.status, &f.message),
    }
}
