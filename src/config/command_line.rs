//! From `argv` to a [`Cli`]: Go-style `-flag` rewriting (operators coming
//! from the Go implementation type `-name x` and `-name=x`, clap only knows
//! `--name`), merging the `-flags-file` in, recording every flag's value
//! for a reload, and cutting clap's reports down to one line.

use super::flags_file::read_flags_file;
use super::{Cli, CommandLine};

/// Rewrites Go-style `-flag` and `-flag=value` into `--flag`, leaving `-h`,
/// `--flag`, values and everything after `--` alone.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest_literal = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest_literal {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest_literal = true;
            out.push(arg);
            continue;
        }
        let bytes = arg.as_bytes();
        let is_single_dash_long =
            bytes.len() > 2 && bytes[0] == b'-' && bytes[1].is_ascii_alphabetic();
        if is_single_dash_long {
            out.push(format!("-{arg}"));
        } else {
            out.push(arg);
        }
    }
    out
}

/// Parses the command line and, with `-flags-file`, the flags in that file
/// after it. Help and version requests come back as `Err(clap::Error)` for
/// the caller to print; everything else is one line.
///
/// A flag may be given in one place only: on the command line or in the
/// file, never both (clap refuses a flag given twice), so no precedence
/// rule has to be remembered.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let argv: Vec<String> = args.into_iter().collect();
    let mut all = normalize_args(argv.clone());
    let mut matches = Cli::command().try_get_matches_from(&all)?;
    let first = Cli::from_arg_matches(&matches)?;
    if first.command.is_none()
        && let Some(path) = &first.daemon.ops.flags_file
    {
        let in_file = |reason: &str| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("-flags-file {}: {reason}\n", path.display()),
            )
        };
        let lines = read_flags_file(path).map_err(|reason| in_file(&reason))?;
        let words = normalize_args(std::iter::once(String::new()).chain(lines));
        all.extend(words.into_iter().skip(1));
        matches = Cli::command()
            .try_get_matches_from(&all)
            .map_err(|e| in_file(&first_line(&e)))?;
    }
    let mut cli = Cli::from_arg_matches(&matches)?;
    let command = Cli::command();
    // `pluto2 check` validates the daemon's flags too, so it must tell a
    // flag given from a default as the daemon does.
    if let Some(super::Command::Check(args)) = &mut cli.command
        && let Some((name, sub)) = matches.subcommand()
        && let Some(check) = command.find_subcommand(name)
    {
        args.origin = CommandLine {
            argv: argv.clone(),
            values: flag_values(sub, check),
            given: given_flags(sub, check),
        };
    }
    cli.daemon.origin = CommandLine {
        argv,
        values: flag_values(&matches, &command),
        given: given_flags(&matches, &command),
    };
    Ok(cli)
}

/// The long names of the flags written on the command line or in the
/// flags file (which is merged into the command line), defaults left out.
fn given_flags(
    matches: &clap::ArgMatches,
    command: &clap::Command,
) -> std::collections::BTreeSet<String> {
    command
        .get_arguments()
        .filter(|arg| {
            matches.value_source(arg.get_id().as_str())
                == Some(clap::parser::ValueSource::CommandLine)
        })
        .filter_map(|arg| arg.get_long().map(str::to_string))
        .collect()
}

/// Every daemon flag's values as written (defaults included), by long name.
fn flag_values(
    matches: &clap::ArgMatches,
    command: &clap::Command,
) -> std::collections::BTreeMap<String, Vec<String>> {
    command
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            let values = matches
                .try_get_raw(arg.get_id().as_str())
                .ok()
                .flatten()?
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            Some((long.to_string(), values))
        })
        .collect()
}

/// The first line of clap's report, without its `error: `.
fn first_line(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid flag")
        .trim()
        .to_string();
    first
        .strip_prefix("error: ")
        .map(str::to_string)
        .unwrap_or(first)
}

/// Reduces clap's multi-line report to its first line, which names the flag.
pub fn one_line(err: &clap::Error) -> String {
    let rendered = err.to_string();
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid command line")
        .trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first}; run `pluto2 --help` for the flags")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::args;

    use super::*;

    #[test]
    fn it_accepts_go_style_single_dash_flags() {
        let cli = parse(args(&[
            "-addr",
            "127.0.0.1:1",
            "-rate-window=2m",
            "--max-recipients",
            "3",
        ]))
        .unwrap();
        assert_eq!(cli.daemon.listener.addr.port(), 1);
        assert_eq!(cli.daemon.listener.rate_window, Duration::from_secs(120));
        assert_eq!(cli.daemon.listener.max_recipients, 3);
    }

    #[test]
    fn it_leaves_values_and_short_flags_alone() {
        let out = normalize_args(args(&["-h", "-debug", "--", "-x"]));
        assert_eq!(out, args(&["-h", "--debug", "--", "-x"]));
    }

    #[test]
    fn it_names_the_flag_of_a_bad_duration() {
        let err = parse(args(&["-idle-timeout", "soon"])).unwrap_err();
        let line = one_line(&err);
        assert!(line.contains("--idle-timeout"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn it_rejects_unknown_flags_in_one_line() {
        let err = parse(args(&["-frobnicate"])).unwrap_err();
        // clap's own report runs over several lines (tip, usage); only its
        // first line, which names the flag, may reach the operator.
        assert!(err.to_string().trim_end().contains('\n'));
        let line = one_line(&err);
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        assert_eq!(
            line,
            "unexpected argument '--frobnicate' found; run `pluto2 --help` for the flags"
        );
    }
}
