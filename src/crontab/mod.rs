//! Crontab import: reading the text of a crontab file the way cron (cronie, Debian's Vixie
//! cron) reads it, and turning each entry into the definition of a `sisy.jobs` row.
//!
//! This module owns the crontab syntax, what each cron variable becomes, the translation of
//! cron's `%` standard input and `SHELL` into a command `/bin/sh -c` runs the same way, and
//! the stable job names that let a file be imported again without duplicates. It is pure: it
//! reads no file and never touches the database. The CLI reads the file, shows the notes and
//! errors, and inserts the jobs only when there is no error. `lines.rs` splits one line
//! (assignments, an entry's fields and user column) and holds the pieces of the command's
//! translation (`%` standard input, sh quoting); this file reads the file line by line,
//! carries the variables and names the jobs.
//!
//! # How lines are read
//!
//! - Lines end with `\n` or `\r\n`; blank lines and lines whose first non-blank character is
//!   `#` are ignored. A `#` later in an entry belongs to the command, as in cron.
//! - A line starting with a digit, `*` or `@` is an entry (a minute field cannot start with
//!   anything else); a leading `-` (cronie's "do not log") is accepted and noted. Any other
//!   line must be `NAME=value`: blanks around `=` are skipped, trailing blanks dropped and one
//!   pair of matching `'` or `"` around the value removed, exactly as cronie does (no escape
//!   processing). A variable applies to the entries after it, never before.
//! - Entries have 5 time fields or one macro, then (system crontabs only) the user, then the
//!   command. The 6-field form with seconds is sisyphus's own, not crontab syntax, so a
//!   sixth field is part of the command here.
//!
//! # What the variables become
//!
//! | variable | effect |
//! |---|---|
//! | `CRON_TZ` | zone of the following schedules (checked; empty resets to UTC) |
//! | `SHELL` | other than `/bin/sh`: following commands become `exec SHELL -c '…'` |
//! | `MAILTO` `MAILFROM` `CONTENT_TYPE` `CONTENT_TRANSFER_ENCODING` | note: nothing is mailed |
//! | `HOME` `LOGNAME` `USER` | note: the guardian sets them from the job's user |
//! | `RANDOM_DELAY` | note: use the job's `jitter` column |
//! | anything else, `TZ` and `PATH` included | the job's `env` |
//!
//! `TZ` is an environment variable, as in cronie; only `CRON_TZ` moves the schedule. Without
//! `CRON_TZ` a schedule is read in UTC, sisyphus's default, where cron used the host's local
//! zone: a note says so, because `0 2 * * *` then runs at a different hour on a host that
//! was not on UTC.
//!
//! # Names
//!
//! `cron-{source}-{hash}`: 8 hex digits of FNV-1a 64 (stable across Rust versions, unlike
//! `DefaultHasher`) over user, schedule (blanks normalised), time zone and final command. The
//! line number is left out so that editing other lines does not rename a job. An identical
//! second entry is kept, since cron runs both, and named with a `-2` suffix (`-3`, …).

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::schedule::Schedule;

mod lines;
use lines::{
    sh_quote, shell_word, split_assignment, split_entry, split_percent, starts_entry, trim_command,
    with_stdin,
};

/// How to read a crontab and label what comes out of it.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// `/etc/crontab` or `/etc/cron.d/*` style: a user field between schedule and command.
    pub system: bool,
    /// A short label that goes into every job name: the file stem, or the crontab's user.
    pub source: String,
    /// The user a user crontab's jobs run as (None: the guardian's `default_user`). A system
    /// crontab names its users itself, so this is ignored there, with a note.
    pub run_as: Option<String>,
    /// The pool every job goes to.
    pub pool: String,
    /// The zone of the entries no `CRON_TZ` applies to (None: UTC). The caller checks it.
    pub timezone: Option<String>,
}

/// One job to insert into `sisy.jobs`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct JobDef {
    pub name: String,
    /// What `/bin/sh -c` runs, with `SHELL` and `%` already translated.
    pub command: String,
    pub schedule: String,
    pub timezone: String,
    pub run_as: Option<String>,
    pub env: Map<String, Value>,
    pub pool: String,
    /// The 1-based line of the crontab it came from.
    pub line: usize,
}

/// Something said about one line (line 0: the whole file).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Note {
    pub line: usize,
    pub message: String,
}

/// The outcome of reading one crontab.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Import {
    pub jobs: Vec<JobDef>,
    /// What was applied differently from cron, or ignored, and why.
    pub notes: Vec<Note>,
    /// Lines refused. The CLI imports nothing while this is non-empty, so every error of
    /// the file is collected rather than stopping at the first.
    pub errors: Vec<Note>,
}

/// Reads a crontab. Never fails as a whole: refused lines are in `errors`.
pub fn parse(text: &str, opts: &ImportOptions) -> Import {
    let mut reader = Reader::new(opts);
    if opts.system
        && let Some(user) = &opts.run_as
    {
        reader.note(
            0,
            format!("run-as {user} is ignored: a system crontab names the user of each entry"),
        );
    }
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        reader.line(index + 1, line);
    }
    reader.import
}

const DEFAULT_SHELL: &str = "/bin/sh";
const DEFAULT_TIMEZONE: &str = "UTC";
/// Longest part of a job name taken from `source`, so names stay readable in tables.
const MAX_LABEL: usize = 40;

/// What cron carries from one line to the next, and what has been collected so far.
struct Reader<'o> {
    opts: &'o ImportOptions,
    /// Set by `CRON_TZ`; None means the default zone.
    timezone: Option<String>,
    /// Set by a `SHELL` other than `/bin/sh`.
    shell: Option<String>,
    env: Map<String, Value>,
    /// Base name → (line of its first entry, entries so far), for the duplicate suffix.
    seen: HashMap<String, (usize, usize)>,
    /// Notes given once per file, so a hundred entries do not repeat them.
    said: HashSet<&'static str>,
    import: Import,
}

impl<'o> Reader<'o> {
    fn new(opts: &'o ImportOptions) -> Reader<'o> {
        Reader {
            opts,
            timezone: None,
            shell: None,
            env: Map::new(),
            seen: HashMap::new(),
            said: HashSet::new(),
            import: Import {
                jobs: Vec::new(),
                notes: Vec::new(),
                errors: Vec::new(),
            },
        }
    }

    fn line(&mut self, n: usize, line: &str) {
        let text = line.trim_start_matches([' ', '\t']);
        if text.trim().is_empty() || text.starts_with('#') {
            return;
        }
        let result = if starts_entry(text) {
            self.entry(n, text)
        } else {
            self.assignment(n, text)
        };
        if let Err(message) = result {
            self.import.errors.push(Note { line: n, message });
        }
    }

    fn note(&mut self, line: usize, message: String) {
        self.import.notes.push(Note { line, message });
    }

    fn note_once(&mut self, key: &'static str, line: usize, message: String) {
        if self.said.insert(key) {
            self.note(line, message);
        }
    }

    fn assignment(&mut self, n: usize, text: &str) -> Result<(), String> {
        let (name, value) = split_assignment(text)?;
        match name {
            "CRON_TZ" => return self.set_timezone(value),
            "SHELL" => self.set_shell(n, value),
            "MAILTO" | "MAILFROM" | "CONTENT_TYPE" | "CONTENT_TRANSFER_ENCODING" => self.note(
                n,
                format!(
                    "{name} is not applied: sisyphus mails nothing; each run's output and exit \
                     status are kept in sisy.runs (query it, or LISTEN to sisy_events)"
                ),
            ),
            "HOME" | "LOGNAME" | "USER" => {
                let workdir = if name == "HOME" {
                    "; to start the jobs in another directory, set their workdir column"
                } else {
                    ""
                };
                self.note(n, format!(
                    "{name} is ignored: the guardian sets HOME, USER and LOGNAME from the user the job runs as{workdir}"
                ));
            }
            "RANDOM_DELAY" => self.note(n, random_delay_note(value)),
            _ => {
                if name == "TZ" {
                    self.note(n, "TZ goes into the jobs' environment, as in cronie; the zone a schedule is read in is set by CRON_TZ".to_owned());
                }
                self.env
                    .insert(name.to_owned(), Value::String(value.to_owned()));
            }
        }
        Ok(())
    }

    fn set_timezone(&mut self, zone: &str) -> Result<(), String> {
        if zone.is_empty() {
            self.timezone = None;
            return Ok(());
        }
        // The schedule parser is the one judge of zones, so import and guardian agree.
        Schedule::parse("* * * * *", zone).map_err(|e| format!("CRON_TZ: {e}"))?;
        self.timezone = Some(zone.to_owned());
        Ok(())
    }

    fn set_shell(&mut self, n: usize, shell: &str) {
        if shell.is_empty() || shell == DEFAULT_SHELL {
            self.shell = None;
            self.env.remove("SHELL");
            return;
        }
        self.note(n, format!(
            "SHELL={shell}: sisyphus runs commands with /bin/sh, so the commands after this line are wrapped as exec {} -c '…'",
            shell_word(shell)
        ));
        // Cron also exports SHELL to the job; scripts that look at it see the same value.
        self.env
            .insert("SHELL".to_owned(), Value::String(shell.to_owned()));
        self.shell = Some(shell.to_owned());
    }

    fn entry(&mut self, n: usize, text: &str) -> Result<(), String> {
        let text = self.strip_dont_log(n, text);
        let raw = split_entry(text, self.opts.system)?;
        let timezone = self
            .timezone
            .as_deref()
            .or(self.opts.timezone.as_deref())
            .unwrap_or(DEFAULT_TIMEZONE)
            .to_owned();
        Schedule::parse(&raw.schedule, &timezone)
            .map_err(|e| format!("schedule \"{}\": {e}", raw.schedule))?;
        let run_as = raw
            .user
            .map(str::to_owned)
            .or_else(|| self.opts.run_as.clone());
        let command = self.command(n, raw.command)?;
        self.explain_defaults(n, run_as.as_deref());
        let name = self.name(
            n,
            &[
                run_as.as_deref().unwrap_or(""),
                &raw.schedule,
                &timezone,
                &command,
            ],
        );
        self.import.jobs.push(JobDef {
            name,
            command,
            schedule: raw.schedule,
            timezone,
            run_as,
            env: self.env.clone(),
            pool: self.opts.pool.clone(),
            line: n,
        });
        Ok(())
    }

    /// Cronie's leading `-` keeps an entry out of syslog; sisyphus records every run anyway.
    fn strip_dont_log<'t>(&mut self, n: usize, text: &'t str) -> &'t str {
        let Some(rest) = text.strip_prefix('-') else {
            return text;
        };
        self.note_once(
            "dont-log",
            n,
            "a leading - (do not log) has no effect: every run is recorded in sisy.runs".to_owned(),
        );
        rest
    }

    /// The command `/bin/sh -c` runs for the command text of an entry.
    fn command(&mut self, n: usize, text: &str) -> Result<String, String> {
        let (command, stdin) = split_percent(text);
        if command.trim().is_empty() {
            return Err(
                "no command before the %: the text after % is only the command's standard input"
                    .to_owned(),
            );
        }
        let mut command = trim_command(&command);
        if let Some(shell) = &self.shell {
            command = format!("exec {} -c {}", shell_word(shell), sh_quote(&command));
        }
        if let Some(stdin) = stdin {
            self.note_once(
                "stdin",
                n,
                "the text after % is given to the command's standard input through a here-document"
                    .to_owned(),
            );
            command = with_stdin(&command, &stdin);
        }
        Ok(command)
    }

    /// Notes, once per file, where the defaults differ from what cron did.
    fn explain_defaults(&mut self, n: usize, run_as: Option<&str>) {
        if self.timezone.is_none() && self.opts.timezone.is_none() {
            self.note_once("utc", n, format!(
                "no CRON_TZ before this entry: its schedule is read in {DEFAULT_TIMEZONE}, where cron used the host's local time zone; put CRON_TZ=Area/City at the top of the file, or pass --tz, to keep local times"
            ));
        }
        match run_as {
            None => self.note_once("default-user", n, "no user given: the jobs run as the guardian's default_user, not as the crontab's owner; pass --run-as to choose".to_owned()),
            Some("root") => self.note_once("root", n, "runs as root: a guardian runs it only where root is named in default_user or allowed_users".to_owned()),
            Some(_) => {}
        }
    }

    /// The job name: stable for the entry's content, unique within this file.
    fn name(&mut self, n: usize, parts: &[&str]) -> String {
        let hash = fnv1a64(parts);
        let folded = (hash ^ (hash >> 32)) as u32;
        let base = format!("cron-{}-{folded:08x}", label(&self.opts.source));
        let (first, count) = self.seen.entry(base.clone()).or_insert((n, 0));
        *count += 1;
        if *count == 1 {
            return base;
        }
        let (first, count) = (*first, *count);
        self.note(n, format!(
            "identical to the entry on line {first}: imported as a separate job, since cron runs both"
        ));
        format!("{base}-{count}")
    }
}

fn random_delay_note(value: &str) -> String {
    let example = match value.parse::<u32>() {
        Ok(minutes) => format!(", e.g. jitter = '{minutes} minutes'"),
        Err(_) => String::new(),
    };
    format!("RANDOM_DELAY is not applied: set the jobs' jitter column instead{example}")
}

/// `source` reduced to characters that are safe in a job name for SQL and the shell.
fn label(source: &str) -> String {
    let label: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(MAX_LABEL)
        .collect();
    let label = label.trim_matches('-');
    if label.is_empty() {
        "crontab".to_owned()
    } else {
        label.to_owned()
    }
}

/// FNV-1a 64 over the parts, each followed by 0xff, a byte UTF-8 never contains, so that
/// ("ab", "c") and ("a", "bc") differ.
fn fnv1a64(parts: &[&str]) -> u64 {
    fnv1a(
        parts
            .iter()
            .flat_map(|part| part.bytes().chain(std::iter::once(0xff))),
    )
}

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests;
