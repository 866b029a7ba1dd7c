//! Tidy test: the import table in ARCHITECTURE.md holds for every file in
//! `src/`.
//!
//! The table is read from ARCHITECTURE.md itself, so the document and the
//! check cannot drift apart. Every `crate::` and `super::` path in a source
//! file is resolved to a module; the module owning the file must be allowed
//! to use the module owning the target. A new module must get a row, and a
//! row may only name modules of its own layer or below.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const LAYERS: [&str; 6] = ["values", "codecs", "storage", "transport", "node", "edges"];

#[derive(Debug)]
struct Row {
    module: String,
    layer: usize,
    may_use: BTreeSet<String>,
}

fn layer_index(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == name)
}

/// Parses the `| module | layer | may use |` table of ARCHITECTURE.md and
/// expands layer names into their modules.
fn table(architecture: &str) -> Vec<Row> {
    let mut lines = architecture
        .lines()
        .skip_while(|l| !l.starts_with("| module | layer | may use |"));
    assert!(
        lines.next().is_some(),
        "ARCHITECTURE.md has no `| module | layer | may use |` table"
    );
    lines.next(); // the |---| separator
    let raw: Vec<(String, usize, Vec<String>)> = lines
        .take_while(|l| l.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "table row {line:?} needs three cells");
            let module = cells[0].trim_matches('`').to_string();
            let layer = layer_index(cells[1])
                .unwrap_or_else(|| panic!("row {module}: unknown layer {:?}", cells[1]));
            let uses = cells[2]
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty() && *u != "—")
                .map(String::from)
                .collect();
            (module, layer, uses)
        })
        .collect();
    assert!(raw.len() > 10, "the table looks truncated: {raw:?}");
    let layer_of = |m: &str| raw.iter().find(|r| r.0 == m).map(|r| r.1);
    raw.iter()
        .map(|(module, layer, uses)| {
            let mut may_use = BTreeSet::new();
            for u in uses {
                if let Some(named) = u.strip_prefix('`').and_then(|u| u.strip_suffix('`')) {
                    let l = layer_of(named)
                        .unwrap_or_else(|| panic!("row {module} names unknown module {named}"));
                    assert!(
                        l <= *layer,
                        "row {module} ({}) may not use {named} ({}): it is a higher layer",
                        LAYERS[*layer],
                        LAYERS[l]
                    );
                    may_use.insert(named.to_string());
                } else {
                    let l = layer_index(u)
                        .unwrap_or_else(|| panic!("row {module}: unknown layer {u:?}"));
                    assert!(
                        l <= *layer,
                        "row {module} ({}) may not use layer {u}",
                        LAYERS[*layer]
                    );
                    may_use.extend(raw.iter().filter(|r| r.1 == l).map(|r| r.0.clone()));
                }
            }
            Row {
                module: module.clone(),
                layer: *layer,
                may_use,
            }
        })
        .collect()
}

/// The row owning a module path: the longest row name that is the path or
/// one of its ancestors.
fn owner<'a>(rows: &'a [Row], path: &str) -> Option<&'a Row> {
    rows.iter()
        .filter(|r| path == r.module || path.starts_with(&format!("{}::", r.module)))
        .max_by_key(|r| r.module.len())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/smtp/session/mod.rs` → `smtp::session`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    rel.components()
        .map(|c| c.as_os_str().to_str().unwrap().to_string())
        .filter(|c| c != "mod")
        .collect::<Vec<_>>()
        .join("::")
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Lower-case path segments after `start` in `line` (`a::b::Type` → a, b).
fn segments(line: &str, start: usize) -> Vec<String> {
    let bytes = line.as_bytes();
    let mut out = Vec::new();
    let mut i = start;
    loop {
        let begin = i;
        while i < bytes.len() && is_ident(bytes[i]) {
            i += 1;
        }
        let seg = &line[begin..i];
        if seg.is_empty() || !seg.as_bytes()[0].is_ascii_lowercase() {
            return out;
        }
        out.push(seg.to_string());
        if line[i..].starts_with("::") {
            i += 2;
        } else {
            return out;
        }
    }
}

/// Every module path a file refers to through `crate::` or `super::`, with
/// its line number. `super` in an inline `mod name {` block (tests) refers
/// to the file's own module.
fn references(module: &str, text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut inline_mod = false;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split("//").next().unwrap();
        let trimmed = line.trim_start();
        if (trimmed.starts_with("mod ") || trimmed.starts_with("pub(crate) mod "))
            && trimmed.trim_end().ends_with('{')
        {
            inline_mod = true;
        }
        let bytes = line.as_bytes();
        for (pos, _) in line.match_indices("crate::") {
            if pos > 0 && is_ident(bytes[pos - 1]) {
                continue;
            }
            let after = pos + "crate::".len();
            assert!(
                !line[after..].starts_with('{'),
                "{module}:{}: write one `use crate::module::…` per module, so the layer check can read it",
                n + 1
            );
            out.push((n + 1, segments(line, after).join("::")));
        }
        for (pos, _) in line.match_indices("super::") {
            if pos > 0 && (is_ident(bytes[pos - 1]) || line[..pos].ends_with("super::")) {
                continue;
            }
            // Outside an inline block the first `super` of `a::b` is `a`;
            // inside one (`mod tests {`) it is the file's module itself.
            // Each further `super` goes one level up.
            let mut base: Vec<&str> = module.split("::").collect();
            let mut rest = &line[pos + "super::".len()..];
            if !inline_mod {
                base.pop();
            }
            while let Some(r) = rest.strip_prefix("super::") {
                rest = r;
                base.pop();
            }
            let start = line.len() - rest.len();
            let mut path: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            path.extend(segments(line, start));
            out.push((n + 1, path.join("::")));
        }
    }
    out
}

#[test]
fn every_import_in_src_follows_the_table_in_architecture_md() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rows = table(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue; // the crate root and the binary wire everything
        }
        let own = owner(&rows, &module)
            .unwrap_or_else(|| panic!("{module} has no row in ARCHITECTURE.md's module table"));
        let text = std::fs::read_to_string(file).unwrap();
        for (line, target) in references(&module, &text) {
            if target.is_empty() {
                continue; // an item of the crate root, e.g. crate::BoxFuture
            }
            let Some(to) = owner(&rows, &target) else {
                broken.push(format!(
                    "{module}:{line}: uses {target}, which has no row in the table"
                ));
                continue;
            };
            if to.module != own.module && !own.may_use.contains(&to.module) {
                broken.push(format!(
                    "{module}:{line}: {} ({}) may not use {} ({})",
                    own.module, LAYERS[own.layer], to.module, LAYERS[to.layer]
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "imports that break ARCHITECTURE.md's table:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_checker_sees_a_forbidden_import() {
    let rows = table(include_str!("../ARCHITECTURE.md"));
    let refs = references(
        "smtp::server",
        "use crate::node::mail_cover::CoverKey;\nuse super::session::Step;\n",
    );
    assert_eq!(
        refs,
        vec![
            (1, "node::mail_cover".to_string()),
            (2, "smtp::session".to_string())
        ]
    );
    let server = owner(&rows, "smtp::server").unwrap();
    assert!(
        !server
            .may_use
            .contains(&owner(&rows, "node::mail_cover").unwrap().module)
    );
    assert!(server.may_use.contains("smtp::session"));
    // `super` inside an inline test module is the file's own module.
    let refs = references(
        "node::egress",
        "fn f() {}\nmod tests {\n    use super::*;\n    use super::super::mail_cover;\n}\n",
    );
    assert_eq!(
        refs,
        vec![
            (3, "node::egress".to_string()),
            (4, "node::mail_cover".to_string())
        ]
    );
}

/// What no codec may name: an async runtime, SQL, a socket, the file
/// system, or a clock read. A codec gets bytes and (where it needs one) a
/// time value from its caller; that is what lets it be tested and fuzzed
/// alone and keeps it from blocking a task.
const CODEC_FORBIDDEN: [&str; 11] = [
    "tokio",
    "rusqlite",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "UnixStream",
    "UnixListener",
    "std::fs",
    "SystemTime::now",
    "Instant::now",
    "system_clock",
];

fn codec_violations(module: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split("//").next().unwrap();
        for word in CODEC_FORBIDDEN {
            if line.contains(word) {
                out.push(format!("{module}:{}: a codec names `{word}`", n + 1));
            }
        }
    }
    out
}

#[test]
fn codecs_import_no_runtime_sql_socket_file_or_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rows = table(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let codecs = layer_index("codecs").unwrap();
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    let mut seen = 0;
    for file in &files {
        let module = module_of(&src, file);
        if owner(&rows, &module).is_none_or(|r| r.layer != codecs) {
            continue;
        }
        seen += 1;
        broken.extend(codec_violations(
            &module,
            &std::fs::read_to_string(file).unwrap(),
        ));
    }
    assert!(
        seen >= 15,
        "only {seen} codec files found; is the table right?"
    );
    assert!(
        broken.is_empty(),
        "codecs doing I/O:\n{}",
        broken.join("\n")
    );
    // The check itself sees what it must.
    assert_eq!(
        codec_violations("wire::frame", "use tokio::net::TcpStream; // tokio\n").len(),
        2
    );
}
