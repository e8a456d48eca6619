//! One line of a crontab, and the translation of its command.
//!
//! Owns the syntax of a single line: whether it is an entry, a `NAME=value` assignment (with
//! cronie's unquoting), an entry's time fields or macro, the user column of a system crontab
//! (which must look like a user name), and the pieces of the command's translation: cron's
//! `%` standard input as a here-document, the sh quoting the `SHELL` wrapper uses. Does not
//! own what the variables mean nor the names of jobs (the parent module reads the file line
//! by line and carries the variables).
//!
//! # Standard input
//!
//! An unescaped `%` ends the command; the rest is its standard input, each further unescaped
//! `%` a newline; `\%` is a literal `%` in both parts and a backslash before anything else is
//! kept. Sisyphus starts commands with stdin from `/dev/null`, so the data becomes a quoted
//! here-document *redirecting the shell's own stdin* before the command:
//!
//! ```text
//! 0 6 * * * mail -s hi ops%line one%line two     becomes     exec <<'SISY_STDIN'
//!                                                             line one
//!                                                             line two
//!                                                             SISY_STDIN
//!                                                             mail -s hi ops
//! ```
//!
//! The command stays last and verbatim, so a pipeline, a `;` list or a trailing `# comment`
//! reads the data exactly as under cron, where the data was the shell's stdin; a
//! `COMMAND <<'SISY_STDIN'` suffix would feed only the last command of a list, or be
//! swallowed by a comment. The delimiter gets a suffix until the data does not contain it.
//! A here-document always ends in a newline, where cron's pipe had none after the last line.

/// The here-document delimiter, suffixed until the data does not contain it.
const STDIN_DELIMITER: &str = "SISY_STDIN";

/// The fields of an entry, before anything is checked but their number.
pub(super) struct RawEntry<'t> {
    /// The 5 time fields joined by single spaces, or the macro.
    pub schedule: String,
    pub user: Option<&'t str>,
    pub command: &'t str,
}

pub(super) fn starts_entry(text: &str) -> bool {
    let text = text.strip_prefix('-').unwrap_or(text);
    text.starts_with(|c: char| c.is_ascii_digit() || c == '*' || c == '@')
}

pub(super) fn split_assignment(text: &str) -> Result<(&str, &str), String> {
    let not_assignment = || {
        "neither an entry nor a NAME=value line: an entry starts with 5 time fields or an @macro"
            .to_owned()
    };
    let (name, value) = text.split_once('=').ok_or_else(not_assignment)?;
    let name = unquote(name.trim_end_matches([' ', '\t']));
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(not_assignment());
    }
    Ok((name, unquote(value.trim_matches([' ', '\t']))))
}

/// Removes one pair of matching quotes, as cronie does; there is no escaping inside.
fn unquote(text: &str) -> &str {
    for quote in ['\'', '"'] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            return &text[1..text.len() - 1];
        }
    }
    text
}

pub(super) fn split_entry(text: &str, system: bool) -> Result<RawEntry<'_>, String> {
    let (first, mut rest) = next_field(text);
    let schedule = if first.starts_with('@') {
        if first.eq_ignore_ascii_case("@reboot") {
            return Err("@reboot is refused: sisyphus has no boot-time jobs; run the command from a systemd unit instead (Type=oneshot, WantedBy=multi-user.target)".to_owned());
        }
        first.to_owned()
    } else {
        let mut fields = vec![first];
        while fields.len() < 5 {
            let (field, after) = next_field(rest);
            if field.is_empty() {
                return Err(format!(
                    "expected 5 time fields (minute hour day-of-month month day-of-week) and a command, found {} fields",
                    fields.len()
                ));
            }
            fields.push(field);
            rest = after;
        }
        fields.join(" ")
    };
    let user = if system {
        let (user, after) = next_field(rest);
        if user.is_empty() || after.is_empty() {
            return Err(
                "too few fields: a system crontab entry is the schedule, a user and a command"
                    .to_owned(),
            );
        }
        check_user(user)?;
        rest = after;
        Some(user)
    } else {
        None
    };
    if rest.trim().is_empty() {
        return Err("no command after the schedule".to_owned());
    }
    Ok(RawEntry {
        schedule,
        user,
        command: rest,
    })
}

/// The first blank-separated field and the rest with its leading blanks removed.
fn next_field(text: &str) -> (&str, &str) {
    let text = text.trim_start_matches([' ', '\t']);
    let end = text.find([' ', '\t']).unwrap_or(text.len());
    (&text[..end], text[end..].trim_start_matches([' ', '\t']))
}

/// A user field must look like a user name; a path there means a user crontab was read
/// as a system one, which would otherwise run the command's first word as a user.
fn check_user(user: &str) -> Result<(), String> {
    let ok = !user.starts_with('-')
        && user
            .strip_suffix('$')
            .unwrap_or(user)
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "user field \"{user}\" is not a user name: a system crontab names the user between the schedule and the command (a user's own crontab has no user field)"
        ))
    }
}

/// Splits at the first unescaped `%`: (command, standard input), cron's rules.
pub(super) fn split_percent(text: &str) -> (String, Option<String>) {
    fn target<'s>(command: &'s mut String, stdin: &'s mut Option<String>) -> &'s mut String {
        match stdin {
            Some(data) => data,
            None => command,
        }
    }
    let mut command = String::new();
    let mut stdin: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            // A backslash escapes the next character; only before % does it go away.
            '\\' => {
                let out = target(&mut command, &mut stdin);
                match chars.next() {
                    Some('%') => out.push('%'),
                    Some(next) => {
                        out.push('\\');
                        out.push(next);
                    }
                    None => out.push('\\'),
                }
            }
            '%' if stdin.is_none() => stdin = Some(String::new()),
            '%' => target(&mut command, &mut stdin).push('\n'),
            _ => target(&mut command, &mut stdin).push(c),
        }
    }
    (command, stdin)
}

/// Drops trailing blanks (editors leave them), unless a backslash would then end the text.
pub(super) fn trim_command(command: &str) -> String {
    let trimmed = command.trim_end_matches([' ', '\t']);
    if trimmed.ends_with('\\') {
        command.to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Gives `data` to the shell's standard input, then runs `command` (see the module doc).
pub(super) fn with_stdin(command: &str, data: &str) -> String {
    let mut delimiter = STDIN_DELIMITER.to_owned();
    let mut suffix = 0;
    while data.contains(&delimiter) {
        suffix += 1;
        delimiter = format!("{STDIN_DELIMITER}_{suffix}");
    }
    let body = if data.is_empty() {
        String::new()
    } else {
        format!("{data}\n")
    };
    format!("exec <<'{delimiter}'\n{body}{delimiter}\n{command}")
}

/// `text` as one single-quoted sh word: `'` becomes `'\''`.
pub(super) fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A path as a sh word, quoted only when it needs to be, so the usual `/bin/bash` reads plainly.
pub(super) fn shell_word(path: &str) -> String {
    let plain = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
    if plain {
        path.to_owned()
    } else {
        sh_quote(path)
    }
}
