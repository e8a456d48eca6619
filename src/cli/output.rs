//! How the CLI prints: human tables by default, JSON with `--json`.
//!
//! Owns rendering rows (as JSON objects, which is how the CLI reads them from PostgreSQL
//! with `to_jsonb`) into aligned columns, shortening timestamps and long cells for people;
//! `--json` prints the rows untouched. Does not query anything.

use serde_json::Value;

/// Longest cell shown in a table; the rest is cut with an ellipsis (use --json for all).
const MAX_CELL: usize = 60;

/// How a command prints its result: for people, or for programs (`--json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
}

impl Output {
    /// The output the `--json` flag asks for.
    pub fn from_json_flag(json: bool) -> Output {
        if json { Output::Json } else { Output::Human }
    }

    /// Prints `rows` as JSON (an array) or as a table of `columns` (key, heading).
    pub fn rows(self, rows: &[Value], columns: &[(&str, &str)]) {
        match self {
            Output::Json => outln!("{}", Value::Array(rows.to_vec())),
            Output::Human => out!("{}", table(rows, columns)),
        }
    }

    /// Prints one object as JSON or as `key: value` lines.
    pub fn record(self, row: &Value) {
        match self {
            Output::Json => outln!("{row}"),
            Output::Human => {
                if let Some(map) = row.as_object() {
                    let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
                    for (k, v) in map {
                        outln!("{k:width$}  {}", cell(v, usize::MAX));
                    }
                }
            }
        }
    }
}

/// [`Output::rows`] for a caller that still holds the `--json` flag as a bool (the crontab
/// import).
pub fn rows(rows: &[Value], columns: &[(&str, &str)], json: bool) {
    Output::from_json_flag(json).rows(rows, columns);
}

/// A table with a heading line; "(none)" when there are no rows.
pub fn table(rows: &[Value], columns: &[(&str, &str)]) -> String {
    if rows.is_empty() {
        return "(none)\n".to_string();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|(key, _)| cell(&r[*key], MAX_CELL))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, head))| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([head.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v}{}", " ".repeat(w.saturating_sub(v.chars().count()))))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    out.push_str(&line(columns.iter().map(|(_, h)| *h).collect()));
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// One value as a person reads it: timestamps to the second in UTC, NULL as "-", newlines
/// folded, long text cut.
pub fn cell(v: &Value, max: usize) -> String {
    let text = match v {
        Value::Null => "-".to_string(),
        Value::String(s) => short_timestamp(s).unwrap_or_else(|| s.clone()),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        other => other.to_string(),
    };
    let text = text.replace('\n', "⏎");
    if text.chars().count() > max {
        let cut: String = text.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// "2026-11-22T18:20:51.319484+00:00" → "2026-11-22 18:20:51".
fn short_timestamp(s: &str) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(
        t.with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
    )
}

/// Writes the command's output to stdout (see `outln!`): a closed pipe ends the process at
/// once with status 0, the way `head` expects its writer to stop; any other failure to
/// write is said and ends it with status 1.
pub fn write_out(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_shorten() {
        let rows = vec![
            json!({"name": "a", "at": "2026-11-22T18:20:51.319484+00:00", "n": 1}),
            json!({"name": "longer", "at": null, "n": 22}),
        ];
        let t = table(&rows, &[("name", "NAME"), ("at", "AT"), ("n", "N")]);
        assert_eq!(
            t,
            "NAME    AT                   N\na       2026-11-22 18:20:51  1\nlonger  -                    22\n"
        );
        assert_eq!(table(&[], &[("x", "X")]), "(none)\n");
    }

    #[test]
    fn long_cells_are_cut() {
        assert_eq!(cell(&json!("abcdef"), 4), "abc…");
        assert_eq!(cell(&json!("a\nb"), 10), "a⏎b");
    }
}
