//! `-flags-file`: more daemon flags, one a line, read at start and again on
//! every SIGHUP (pluto2's `main.cf`). A file of its own because its syntax
//! (comments, `flag value`, `flag=value`) and its limits (a regular file,
//! at most 64 KiB) are rules of their own, apart from any flag group.

/// Largest `-flags-file`; a flags file is a few dozen lines.
const MAX_FLAGS_FILE: u64 = 64 * 1024;

/// Reads a flags file into command-line words: one flag a line, its value
/// after the first run of spaces (`-rate-limit 20`) or an `=`; blank lines
/// and lines starting with `#` are skipped.
pub(super) fn read_flags_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut text = String::new();
    file.take(MAX_FLAGS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_FLAGS_FILE {
        return Err(format!("is larger than {MAX_FLAGS_FILE} bytes"));
    }
    let mut words = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with('-') {
            return Err(format!(
                "line {}: a flag must start with - (e.g. -rate-limit 20)",
                i + 1
            ));
        }
        match line.split_once(char::is_whitespace) {
            Some((flag, value)) => words.extend([flag.to_string(), value.trim().to_string()]),
            None => words.push(line.to_string()),
        }
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::address::OnionName;
    use crate::config::testing::args;
    use crate::config::{Cli, one_line, parse};

    /// Parses `-name … -flags-file FILE` plus `extra` on the command line,
    /// with `text` in FILE; the error as the operator sees it.
    fn with_file(dir: &Path, text: &str, extra: &[&str]) -> Result<Cli, String> {
        let file = dir.join("flags");
        std::fs::write(&file, text).unwrap();
        let name = OnionName::from_seed(4).to_string();
        let mut all = vec![
            "-name",
            name.as_str(),
            "-flags-file",
            file.to_str().unwrap(),
        ];
        all.extend(extra);
        parse(args(&all)).map_err(|e| one_line(&e))
    }

    #[test]
    fn it_reads_one_flag_a_line_after_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = "# the public node\n\
                    -rate-limit 20\n\
                    \n\
                    \t-rate-window=2m  \n\
                    -anon-from   Relay of NAME <relay@NAME>\n\
                    -debug\n";
        let cli = with_file(dir.path(), text, &[]).unwrap();
        let argv = cli.daemon.origin.argv.clone();
        let values = cli.daemon.origin.values.clone();
        let cfg = cli.daemon.validate().unwrap();
        assert_eq!(cfg.listener.rate_limit.get(), 20);
        assert_eq!(cfg.listener.rate_window, Duration::from_secs(120));
        assert!(cfg.ops.debug);
        let name = cfg.name.to_string();
        assert_eq!(
            cfg.sanitize.anon_from,
            Some(format!("Relay of {name} <relay@{name}>"))
        );
        // A reload parses the command line again, which rereads the file:
        // the file's words are in the values compared, not in `argv`.
        assert_eq!(argv.len(), 5, "{argv:?}");
        assert_eq!(values["rate-limit"], ["20"]);
        assert_eq!(values["rate-window"], ["2m"]);
    }

    #[test]
    fn it_refuses_a_flag_given_both_on_the_command_line_and_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = with_file(dir.path(), "-rate-limit 20\n", &["-rate-limit", "5"]).unwrap_err();
        let file = dir.path().join("flags");
        assert!(
            e.starts_with(&format!("-flags-file {}: ", file.display())),
            "{e}"
        );
        assert!(e.contains("--rate-limit"), "{e}");
        assert!(!e.contains('\n'), "{e:?}");
    }

    #[test]
    fn it_refuses_a_file_that_is_not_a_small_list_of_flags() {
        let dir = tempfile::tempdir().unwrap();
        let largest = "#".repeat(super::MAX_FLAGS_FILE as usize);
        assert!(with_file(dir.path(), &largest, &[]).is_ok());
        let cases = [
            (
                "-debug\nrate-limit 20\n".to_string(),
                "line 2: a flag must start with -",
            ),
            (format!("{largest}\n"), "is larger than 65536 bytes"),
            ("-frobnicate\n".to_string(), "'--frobnicate'"),
        ];
        for (text, said) in cases {
            let e = with_file(dir.path(), &text, &[]).unwrap_err();
            assert!(e.starts_with("-flags-file "), "{e}");
            assert!(e.contains(said), "{said}: {e}");
            assert!(!e.contains('\n'), "{e:?}");
        }
        let name = OnionName::from_seed(4).to_string();
        let folder = dir.path().to_str().unwrap();
        let e = parse(args(&["-name", &name, "-flags-file", folder])).unwrap_err();
        assert_eq!(
            one_line(&e),
            format!(
                "-flags-file {folder}: is not a regular file; run `pluto2 --help` for the flags"
            )
        );
    }
}
