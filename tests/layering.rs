//! The module layering of `src/`: imports point down. Every top-level module of the library has
//! one entry in [`LAYERS`] naming what it may import; a `crate::<module>` path in any of its files
//! (in `use` lines and in paths alike, test code included) must name one of those, and the
//! imports must form no cycle. A failure names the file, the line and the import.
//!
//! Paths are read from the source text with comments left out (string literals are kept: a
//! serde `default = "crate::..."` is a dependency too). Files that a module includes with
//! `#[path = "..."]` belong to it. An import that climbs out of a top-level module with
//! `super::` is refused: name the other module with `crate::`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Leaves: nothing from the crate (but the test settings). Every module may import them.
const LEAVES: &[&str] = &[
    "lifecycle",
    "secrets",
    "private_fs",
    "net",
    "logging",
    "metrics",
    "types",
    "outbound",
    "panel",
    "tls",
    "alert_events",
    TEST_PROPS,
];

/// Property-test settings, compiled for tests only: any module's tests may use them.
const TEST_PROPS: &str = "test_props";

/// What each module above the leaves may import besides them, bottom up.
const LAYERS: &[(&str, &[&str])] = &[
    ("store", &[]),
    ("leases", &["store"]),
    ("limits", &["store"]),
    ("usage", &["store"]),
    ("wire", &[]),
    // Refreshing tokens, shared by every OAuth provider: below the providers, whose credentials
    // hold its cells; the accounts it serves are known through a trait.
    ("credentials", &["store"]),
    ("providers", &["store", "usage", "wire", "credentials"]),
    ("convert", &["usage", "wire", "providers"]),
    // Client dialects: routes, error shapes, model lists.
    ("ingress", &["usage", "wire", "providers", "convert"]),
    // The one account type of relay.yaml, the store and the admin API, checked once.
    ("accounts", &["store", "credentials", "providers"]),
    // Migration from Claude Relay Service: maps its records to accounts and keys for the store.
    ("crs", &["store", "credentials", "providers", "accounts"]),
    // Accounts hold their provider's credential: the scheduler sits above the providers.
    ("scheduler", &["store", "leases", "credentials", "providers"]),
    (
        "config",
        &["store", "usage", "credentials", "providers", "accounts", "scheduler"],
    ),
    (
        "state",
        &["store", "credentials", "providers", "accounts", "scheduler", "config"],
    ),
    // Backups of the store and their restore: the store's records, and `backup:` of the config.
    ("backup", &["store", "config"]),
    // Alert delivery and the periodic checks: reads the snapshot, the key limits and the
    // coordination store (cross-instance deduplication).
    ("alerts", &["store", "limits", "scheduler", "config", "state"]),
    (
        "proxy",
        &[
            "store",
            "leases",
            "usage",
            "wire",
            "credentials",
            "providers",
            "convert",
            "ingress",
            "accounts",
            "scheduler",
            "config",
            "state",
        ],
    ),
    (
        "admin",
        &[
            "store",
            "leases",
            "limits",
            "usage",
            "credentials",
            "providers",
            "accounts",
            "scheduler",
            "config",
            "state",
            "proxy",
            "backup",
            "alerts",
            "crs",
        ],
    ),
    (
        "server",
        &[
            "store",
            "leases",
            "limits",
            "usage",
            "wire",
            "credentials",
            "providers",
            "convert",
            "ingress",
            "accounts",
            "scheduler",
            "config",
            "state",
            "proxy",
            "admin",
            "backup",
            "alerts",
            "crs",
        ],
    ),
];

/// The modules that must never import each other in a circle, whatever the table says.
const CORE: &[&str] = &[
    "server",
    "config",
    "state",
    "providers",
    "scheduler",
    "proxy",
    "admin",
    "credentials",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Module name → what it may import.
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let mut out = BTreeMap::new();
    for leaf in LEAVES {
        let may = if *leaf == TEST_PROPS {
            BTreeSet::new()
        } else {
            BTreeSet::from([TEST_PROPS])
        };
        assert!(out.insert(*leaf, may).is_none(), "`{leaf}` is listed twice");
    }
    for (module, deps) in LAYERS {
        let mut may: BTreeSet<&str> = LEAVES.iter().copied().collect();
        may.extend(deps.iter().copied());
        assert!(out.insert(*module, may).is_none(), "`{module}` is listed twice");
    }
    out
}

/// The top-level modules that `src/lib.rs` declares.
fn declared_modules() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    strip(&lib, true)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("pub mod ")
                .or_else(|| l.strip_prefix("pub(crate) mod "))
                .or_else(|| l.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').trim().to_string())
        })
        .collect()
}

/// The source text with comments replaced by spaces, and string and character literals too
/// unless `keep_literals`. Every character keeps its place (and line breaks stay), so positions
/// and line numbers agree between the two versions.
fn strip(text: &str, keep_literals: bool) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let literal = |out: &mut String, chars: &[char]| {
        if keep_literals {
            out.extend(chars);
        } else {
            out.extend(chars.iter().map(|c| blank(*c)));
        }
    };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && raw_prefix(&b, i) {
            // A raw string: r"..." or r#"..."# (or br"...").
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match b.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            let end = j.min(b.len());
            literal(&mut out, &b[i..end]);
            i = end;
        } else if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                j += if b[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            literal(&mut out, &b[i..end]);
            i = end;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), else a lifetime or label.
            let end = if next == Some('\\') {
                (i + 3..b.len()).find(|&k| b[k] == '\'').map(|k| k + 1)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            let end = end.unwrap_or(i + 1).min(b.len());
            literal(&mut out, &b[i..end]);
            i = end;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the `r` at `i` starts a raw string (`r"`, `br"`), not ends a name.
fn raw_prefix(b: &[char], i: usize) -> bool {
    match i.checked_sub(1).map(|k| b[k]) {
        Some('b') => !ident_char(i.checked_sub(2).map(|k| &b[k])),
        prev => !ident_char(prev.as_ref()),
    }
}

fn ident_char(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

fn ident_at(b: &[char], mut i: usize) -> (String, usize) {
    while b.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    let start = i;
    while ident_char(b.get(i)) {
        i += 1;
    }
    (b[start..i].iter().collect(), i)
}

/// Skips `::` (with spaces around); the index after it, or `None` when there is none.
fn path_sep(b: &[char], mut i: usize) -> Option<usize> {
    while b.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    (b.get(i) == Some(&':') && b.get(i + 1) == Some(&':')).then_some(i + 2)
}

/// The first segment of each item of a `{...}` group starting at `i` (just after the `{`).
fn group_heads(b: &[char], i: usize) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_item = true;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            '{' => {
                depth += 1;
                j += 1;
            }
            '}' if depth == 0 => break,
            '}' => {
                depth -= 1;
                j += 1;
            }
            ',' if depth == 0 => {
                at_item = true;
                j += 1;
            }
            c if c.is_whitespace() => j += 1,
            _ if at_item && depth == 0 => {
                let (name, end) = ident_at(b, j);
                heads.push(name);
                at_item = false;
                j = end.max(j + 1);
            }
            _ => j += 1,
        }
    }
    heads
}

/// A `crate::<module>` reference (or a `super::` that leaves the top-level module).
struct Import {
    line: usize,
    target: String,
    text: String,
}

/// The imports of a file `file_depth` deep in the module tree. `crate::` paths count in string
/// literals too; braces, inline modules and `super::` only in code.
fn imports(text: &str, file_depth: usize) -> Vec<Import> {
    let code = strip(text, true);
    let b: Vec<char> = code.chars().collect();
    let structure: Vec<char> = strip(text, false).chars().collect();
    let line_of = |i: usize| b[..i].iter().filter(|c| **c == '\n').count() + 1;
    let line_text = |i: usize| text.lines().nth(line_of(i) - 1).unwrap_or_default().trim().to_string();
    let mut out = Vec::new();
    // Brace depths at which an inline module opened.
    let mut inline_mods: Vec<usize> = Vec::new();
    let mut braces = 0usize;
    let mut pending_mod = false;
    let mut i = 0;
    while i < b.len() {
        let c = structure[i];
        if c == '{' {
            braces += 1;
            if pending_mod {
                inline_mods.push(braces);
                pending_mod = false;
            }
            i += 1;
            continue;
        }
        if c == '}' {
            if inline_mods.last() == Some(&braces) {
                inline_mods.pop();
            }
            braces = braces.saturating_sub(1);
            i += 1;
            continue;
        }
        if c == ';' {
            pending_mod = false;
        }
        if !ident_char(Some(&b[i])) || ident_char(i.checked_sub(1).map(|k| &b[k])) {
            i += 1;
            continue;
        }
        let (word, end) = ident_at(&b, i);
        let in_code = structure[i] == b[i];
        match word.as_str() {
            "mod" if in_code => pending_mod = true,
            "crate" => {
                if let Some(after) = path_sep(&b, end) {
                    let mut k = after;
                    while b.get(k).is_some_and(|c| c.is_whitespace()) {
                        k += 1;
                    }
                    let targets = if b.get(k) == Some(&'{') {
                        group_heads(&b, k + 1)
                    } else {
                        vec![ident_at(&b, k).0]
                    };
                    for target in targets.into_iter().filter(|t| !t.is_empty() && t != "self") {
                        out.push(Import {
                            line: line_of(i),
                            target,
                            text: line_text(i),
                        });
                    }
                }
            }
            "super" if in_code && path_sep(&b, end).is_some() && !(i >= 2 && b[i - 1] == ':' && b[i - 2] == ':') => {
                // A chain of `super::`: how far up it climbs from here.
                let depth = file_depth + inline_mods.len();
                let mut ups = 1;
                let mut k = end;
                while let Some(after) = path_sep(&b, k) {
                    let (next, next_end) = ident_at(&b, after);
                    if next != "super" {
                        break;
                    }
                    ups += 1;
                    k = next_end;
                }
                if ups >= depth {
                    out.push(Import {
                        line: line_of(i),
                        target: "super".into(),
                        text: line_text(i),
                    });
                }
                i = k;
                continue;
            }
            _ => {}
        }
        i = end;
    }
    out
}

/// Every `.rs` file under `dir`.
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

/// The library's files with their top-level module and their depth in the module tree
/// (`src/a.rs` and `src/a/mod.rs` are 1 deep, `src/a/b.rs` 2).
fn library_files(modules: &BTreeSet<String>) -> Vec<(PathBuf, String, usize)> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.sort();
    // Top-level files included by a module with `#[path = "..."]`.
    let mut included: BTreeMap<String, String> = BTreeMap::new();
    for m in modules {
        let Ok(text) = std::fs::read_to_string(root.join(format!("{m}.rs"))) else {
            continue;
        };
        for part in text.split("#[path = \"").skip(1) {
            if let Some(name) = part.split('"').next() {
                included.insert(name.to_string(), m.clone());
            }
        }
    }
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(&root).unwrap();
        let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let file = parts.last().cloned().unwrap_or_default();
        if parts.len() == 1 && (file == "lib.rs" || file == "main.rs") {
            continue; // the crate root and the binary
        }
        let mut depth = if file == "mod.rs" { parts.len() - 1 } else { parts.len() };
        let module = if parts.len() == 1 {
            let stem = file.trim_end_matches(".rs").to_string();
            if modules.contains(&stem) {
                stem
            } else {
                // A child of the module that includes it.
                depth = 2;
                included.get(&file).cloned().unwrap_or_else(|| {
                    panic!("src/{file} is no module of src/lib.rs and no module includes it with #[path]")
                })
            }
        } else {
            parts[0].clone()
        };
        assert!(
            modules.contains(&module),
            "src/{} is in `{module}`, which src/lib.rs does not declare",
            rel.display()
        );
        out.push((path, module, depth));
    }
    out
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn every_module_of_the_library_has_a_place_in_the_layers() {
    let declared = declared_modules();
    let table: BTreeSet<String> = allowed().keys().map(|m| m.to_string()).collect();
    let missing: Vec<&String> = declared.difference(&table).collect();
    let stale: Vec<&String> = table.difference(&declared).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "tests/layering.rs: src/lib.rs declares modules that LAYERS leaves out: {missing:?}; LAYERS names \
         modules that src/lib.rs does not declare: {stale:?}"
    );
    for (module, may) in allowed() {
        for dep in &may {
            assert!(
                table.contains(*dep),
                "`{module}` may import `{dep}`, which is no module"
            );
            assert_ne!(module, *dep, "`{module}` lists itself");
        }
    }
    let graph: BTreeMap<String, BTreeSet<String>> = allowed()
        .into_iter()
        .map(|(m, may)| (m.to_string(), may.into_iter().map(String::from).collect()))
        .collect();
    if let Some(cycle) = find_cycle(&graph) {
        panic!("tests/layering.rs: the table allows a cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn lower_modules_never_import_higher_ones() {
    let declared = declared_modules();
    let allowed = allowed();
    let mut graph: BTreeMap<String, BTreeSet<String>> = declared.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    let mut problems = String::new();
    for (path, module, depth) in library_files(&declared) {
        let text = std::fs::read_to_string(&path).unwrap();
        let rel = path
            .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .display()
            .to_string();
        for import in imports(&text, depth) {
            if import.target == "super" {
                let _ = writeln!(
                    problems,
                    "{rel}:{}: `{}` leaves module `{module}` through `super::`; name the other module with \
                     `crate::` instead",
                    import.line, import.text
                );
                continue;
            }
            if import.target == module {
                continue;
            }
            if !declared.contains(&import.target) {
                let _ = writeln!(
                    problems,
                    "{rel}:{}: `{}` names `crate::{}`, which is no module of src/lib.rs",
                    import.line, import.text, import.target
                );
                continue;
            }
            graph.entry(module.clone()).or_default().insert(import.target.clone());
            let may = allowed.get(module.as_str()).cloned().unwrap_or_default();
            if !may.contains(import.target.as_str()) {
                let list: Vec<&str> = may.iter().copied().collect();
                let _ = writeln!(
                    problems,
                    "{rel}:{}: `{module}` imports `crate::{}` (`{}`), but `{module}` may import only [{}]. \
                     Imports point down: move what both need to a lower module, or hand it in from above",
                    import.line,
                    import.target,
                    import.text,
                    list.join(", ")
                );
            }
        }
    }
    assert!(
        problems.is_empty(),
        "module layering (see tests/layering.rs):\n{problems}"
    );

    let core: BTreeMap<String, BTreeSet<String>> = graph
        .iter()
        .filter(|(m, _)| CORE.contains(&m.as_str()))
        .map(|(m, deps)| {
            let deps = deps.iter().filter(|d| CORE.contains(&d.as_str())).cloned().collect();
            (m.clone(), deps)
        })
        .collect();
    if let Some(cycle) = find_cycle(&core) {
        panic!("the imports among {CORE:?} form a cycle: {}", cycle.join(" → "));
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!("the module imports form a cycle: {}", cycle.join(" → "));
    }
}

#[test]
fn the_reader_finds_imports_and_skips_comments() {
    let code = String::from(
        "use crate::store::Store; // crate::admin in a comment\n\
         /* crate::server /* nested */ crate::proxy */\n\
         let s = \"// not a comment\"; let c = '\"'; fn f<'a>() {}\n\
         #[serde(default = \"crate::usage::x\")]\n\
         use crate::{config::Config, state::{self, Snapshot}};\n\
         mod tests { use super::super::Thing; }\n\
         let r = r#\"crate::wire\"#;\n",
    );
    let found: Vec<(usize, String)> = imports(&code, 1).into_iter().map(|i| (i.line, i.target)).collect();
    assert_eq!(
        found,
        [
            (1, "store".to_string()),
            (4, "usage".to_string()),
            (5, "config".to_string()),
            (5, "state".to_string()),
            (6, "super".to_string()),
            (7, "wire".to_string()),
        ]
    );
    // One `super::` from a file's own inline module stays in the module.
    assert!(imports("mod tests { use super::*; }\n", 1).is_empty());
    assert!(imports("pub(super) fn f() {}\n", 1).is_empty());
    // Braces in literals do not end an inline module early.
    assert_eq!(
        imports("mod t { let a = '}'; let b = \"}}\"; use super::super::X; }\n", 1).len(),
        1
    );
    assert!(imports("mod t { let a = '}'; use super::X; }\n", 1).is_empty());
}
