//! The architecture's invariants, checked on the source text (in the manner of
//! rust-analyzer's tidy tests): the rooms of `src/` import only what is below them, no
//! import cycle between the files of a room, SQL only in `db` and `migrate`, and a `//!`
//! paragraph at the top of every file. Cheap and blunt: it reads `crate::` paths and string
//! literals line by line, so a new room or a new exception is a deliberate edit here and in
//! ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The rooms, top to bottom: a room may use the rooms on the lines below it, never one
/// above it nor a peer on its own line (`allowed` in the test names deliberate exceptions:
/// none today).
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["guardian", "web"],
    &["service"],
    &["run"],
    &["migrate", "config", "crontab", "outage"],
    &["db", "schedule", "metrics", "logging", "plot"],
];

/// The source files, with their path under `src/`.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// The room of a file: its first path component (`service/heartbeat.rs` → `service`).
fn room(file: &str) -> String {
    let first = file.split('/').next().unwrap();
    first.trim_end_matches(".rs").to_string()
}

/// The module paths a file names through `crate::` (two components: `run::table`), from
/// code lines only.
fn imports(text: &str) -> BTreeSet<Vec<String>> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let paths: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                group[..end].split(',').map(str::trim).collect()
            } else {
                vec![rest]
            };
            for path in paths {
                let parts: Vec<String> = path
                    .split("::")
                    .take(2)
                    .map(|p| {
                        p.chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect::<String>()
                    })
                    .filter(|p| !p.is_empty() && p.starts_with(|c: char| c.is_ascii_lowercase()))
                    .collect();
                if !parts.is_empty() {
                    found.insert(parts);
                }
            }
        }
    }
    found
}

fn layer_of(room: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&room))
}

#[test]
fn the_checks_read_what_they_should() {
    let found = imports(
        "use crate::{db, run::table::RunTable};\n// crate::guardian\n x(crate::outage::ok)",
    );
    let want: BTreeSet<Vec<String>> = [vec!["db"], vec!["run", "table"], vec!["outage", "ok"]]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
    assert_eq!(found, want);
    let files = sources();
    assert!(files.len() > 40, "the walk found {} files", files.len());
    assert!(files.iter().any(|(f, _)| f == "service/dispatcher.rs"));
}

#[test]
fn a_room_imports_only_what_is_below_it() {
    // Peers on one line that do use each other (the lower of the two in the pair's second
    // place): each is a deliberate exception.
    let allowed: &[(&str, &str)] = &[];
    let mut wrong = Vec::new();
    for (file, text) in sources() {
        let from = room(&file);
        if from == "lib" || from == "main" || from == "layering" {
            continue;
        }
        let Some(from_layer) = layer_of(&from) else {
            wrong.push(format!(
                "{file}: room `{from}` is in no layer (add it to LAYERS)"
            ));
            continue;
        };
        for path in imports(&text) {
            let to = &path[0];
            if *to == from {
                continue;
            }
            match layer_of(to) {
                Some(l) if l > from_layer => {}
                Some(_) if allowed.contains(&(from.as_str(), to.as_str())) => {}
                Some(_) => wrong.push(format!("{file}: `{from}` imports `{to}`, not below it")),
                None => wrong.push(format!("{file}: imports `{to}`, in no layer")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn no_service_imports_the_guardian_and_no_file_cycle_within_a_room() {
    // Nodes: `room::module` (a file and its children count as its module).
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in sources() {
        let parts: Vec<&str> = file.trim_end_matches(".rs").split('/').collect();
        if parts.len() < 2 || parts[1] == "mod" {
            continue;
        }
        let node = format!("{}::{}", parts[0], parts[1]);
        for path in imports(&text) {
            assert!(
                !(parts[0] == "service" && path[0] == "guardian"),
                "{file}: a service imports the guardian"
            );
            if path.len() == 2 && path[0] == parts[0] {
                let to = format!("{}::{}", path[0], path[1]);
                if to != node {
                    edges.entry(node.clone()).or_default().insert(to);
                }
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == n) {
            panic!("import cycle: {} -> {n}", stack[at..].join(" -> "));
        }
        if done.contains(n) {
            return;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            visit(m, edges, stack, done);
        }
        stack.pop();
        done.insert(n.to_string());
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        visit(n, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn sql_lives_in_db_and_migrate_only() {
    let verbs = [
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE ",
        "\"LISTEN ",
        "\"WITH ",
    ];
    let mut wrong = Vec::new();
    for (file, text) in sources() {
        if file.starts_with("db/") || file == "migrate.rs" || file == "layering.rs" {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            if verbs.iter().any(|v| line.contains(v)) {
                wrong.push(format!("{file}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "SQL outside the catalogue:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(file, _)| file)
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` paragraph: {missing:?}"
    );
}
