//! The frame every dashboard page shares (head, navigation, footer) and the small pieces the
//! pages are built from: times in UTC with their age, a run's state as a coloured word, a
//! link with its query string encoded, a run's output made plain text. Everything here
//! takes values from rows and writes them through maud, which escapes them.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// How often a page reloads itself, in seconds.
pub const REFRESH: u32 = 15;

/// Which entry of the navigation is the current page.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Jobs,
    Runs,
    Flows,
    Missed,
    /// An error page.
    None,
}

/// A whole page: `title`, the navigation with `nav` marked, `body`; it reloads itself every
/// `refresh` seconds when given.
pub fn page(title: &str, nav: Nav, refresh: Option<u32>, body: Markup) -> Markup {
    let entries = [
        (Nav::Fleet, "/", "Fleet"),
        (Nav::Jobs, "/jobs", "Jobs"),
        (Nav::Runs, "/runs", "Runs"),
        (Nav::Flows, "/flows", "Flows"),
        (Nav::Missed, "/missed", "Missed"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(every) = refresh {
                    meta http-equiv="refresh" content=(every);
                }
                title { (title) " · sisyphus" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    span.brand { "sisyphus" }
                    nav {
                        @for (which, href, label) in entries {
                            @if which == nav {
                                a.current href=(href) aria-current="page" { (label) }
                            } @else {
                                a href=(href) { (label) }
                            }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
                footer {
                    "Read-only view of the database, as of "
                    (Utc::now().format("%Y-%m-%d %H:%M:%S UTC"))
                    @if let Some(every) = refresh {
                        "; reloads every " (every) " s"
                    }
                    "."
                }
            }
        }
    }
}

/// What a query string value may leave unencoded.
const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// `path?k=v&…` with each value percent-encoded; pairs whose value is None are left out.
pub fn link(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = path.to_string();
    let mut first = true;
    for (key, value) in pairs {
        let Some(value) = value else { continue };
        out.push(if first { '?' } else { '&' });
        first = false;
        out.push_str(key);
        out.push('=');
        out.extend(utf8_percent_encode(value, QUERY));
    }
    out
}

/// The page of a job.
pub fn job_link(name: &str) -> Markup {
    html! { a href=(link("/job", &[("name", Some(name))])) { (name) } }
}

/// The page of a run.
pub fn run_link(id: i64) -> Markup {
    html! { a href=(format!("/run?id={id}")) { (id) } }
}

/// A timestamp from a row (jsonb's text of a timestamptz is RFC 3339).
pub fn instant(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A timestamp in UTC with how long ago (or how far ahead) it is; "–" when there is none.
pub fn when(v: &Value) -> Markup {
    match instant(v) {
        Some(t) => html! {
            time datetime=(t.to_rfc3339()) title=(t.to_rfc3339()) {
                (t.format("%Y-%m-%d %H:%M:%S"))
            }
            " " span.age { (age(t)) }
        },
        None => html! { span.none { "–" } },
    }
}

/// "3 min ago", "in 2 h": the distance of `t` from now, roughly.
pub fn age(t: DateTime<Utc>) -> String {
    let secs = (Utc::now() - t).num_seconds();
    let span = span(secs.unsigned_abs());
    if secs >= 0 {
        format!("{span} ago")
    } else {
        format!("in {span}")
    }
}

/// A duration in seconds, roughly, in the largest unit that fits.
pub fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86400 => format!("{} h", secs / 3600),
        _ => format!("{} d", secs / 86400),
    }
}

/// A run's (or a flow's, a member's) state as a word with the colour of its kind.
pub fn state(v: &Value) -> Markup {
    let s = v.as_str().unwrap_or("–");
    let kind = match s {
        "succeeded" => "ok",
        "running" => "running",
        "pending" | "waiting" => "pending",
        "failed" | "timed_out" | "lost" | "killed" | "expired" | "upstream_failed" => "bad",
        _ => "other",
    };
    html! { span class=(format!("state {kind}")) { (s) } }
}

/// A text value of a row, or "–".
pub fn text(v: &Value) -> Markup {
    match v {
        Value::Null => html! { span.none { "–" } },
        Value::String(s) => html! { (s) },
        other => html! { (other.to_string()) },
    }
}

/// A run's output as plain text: colour, cursor and title escapes removed (read by `vte`, the
/// terminal parser of Alacritty), and of the control characters only newline and tab kept.
pub fn plain_output(raw: &str) -> String {
    struct Plain(String);
    impl vte::Perform for Plain {
        fn print(&mut self, c: char) {
            self.0.push(c);
        }
        fn execute(&mut self, byte: u8) {
            if byte == b'\n' || byte == b'\t' {
                self.0.push(byte as char);
            }
        }
    }
    let mut plain = Plain(String::with_capacity(raw.len()));
    vte::Parser::new().advance(&mut plain, raw.as_bytes());
    plain.0
}

/// A table's header row.
pub fn head(columns: &[&str]) -> Markup {
    html! { thead { tr { @for c in columns { th { (c) } } } } }
}

/// A link to the next page of a list, when there may be one.
pub fn pager(newest: &str, older: Option<String>) -> Markup {
    html! {
        p.pager {
            a href=(newest) { "« newest" }
            @if let Some(href) = older {
                " " a href=(href) rel="next" { "older »" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_loses_escapes_and_control_characters_but_keeps_lines() {
        let raw = "\u{1b}[31mred\u{1b}[0m done\r\n\tnext\u{7}\u{0}line";
        assert_eq!(plain_output(raw), "red done\n\tnextline");
    }

    #[test]
    fn links_encode_every_value() {
        assert_eq!(
            link("/job", &[("name", Some("a&b=<c> d/é")), ("x", None)]),
            "/job?name=a%26b%3D%3Cc%3E%20d%2F%C3%A9"
        );
        assert_eq!(
            link("/runs", &[("state", Some("failed")), ("host", Some("h1"))]),
            "/runs?state=failed&host=h1"
        );
    }

    #[test]
    fn postgres_timestamps_read() {
        let t = instant(&Value::String("2026-12-02T15:00:05.123456+00:00".into())).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-12-02T15:00:05.123456+00:00");
    }
}
