//! libpq's password file (`~/.pgpass`, `PGPASSFILE`, the `passfile` key).
//!
//! Owns reading the file and finding the password for one host, port, database and user,
//! by libpq's rules: lines `host:port:database:user:password`, `*` matching anything, `\`
//! escaping `:` and `\`, `#` starting a comment line, the first matching line winning; a
//! Unix socket in the default directory counts as `localhost`; and the file is ignored
//! unless it is a plain file that neither group nor others may access (mode 0600 or
//! stricter). Does not own when the file is consulted (only without a password from the
//! connection string or `PGPASSWORD`: see `db`), and never logs or returns a password
//! except to set it on the connection.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What reading the password file gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// A matching line's password.
    Found(String),
    /// No file, or no line matches.
    NotFound,
    /// The file exists but was not read; the reason is a sentence saying what to do.
    Ignored(String),
}

/// The key a line is matched against. `host` is a host name, an address or a socket
/// directory, as in the connection string.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key<'a> {
    pub host: &'a str,
    pub port: u16,
    pub dbname: &'a str,
    pub user: &'a str,
}

/// Socket directories libpq builds know as their default: a connection through one of
/// them matches the host name `localhost`. (libpq has exactly one, fixed when it is built:
/// `/tmp` upstream, `/var/run/postgresql` on Debian and Red Hat.)
const DEFAULT_SOCKET_DIRS: [&str; 3] = ["/var/run/postgresql", "/run/postgresql", "/tmp"];

/// Looks `key` up in the file at `path`.
pub(super) fn lookup(path: &Path, key: Key<'_>) -> Lookup {
    let show = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::NotFound,
        Err(e) => return Lookup::Ignored(format!("cannot read the password file {show}: {e}")),
    };
    if !meta.is_file() {
        return Lookup::Ignored(format!("the password file {show} is not a plain file"));
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Lookup::Ignored(format!(
            "the password file {show} has group or world access (mode {:04o}): \
             chmod 0600 {show}, as libpq requires",
            mode & 0o7777
        ));
    }
    match std::fs::read_to_string(path) {
        Ok(text) => find(&text, key).map_or(Lookup::NotFound, Lookup::Found),
        Err(e) => Lookup::Ignored(format!("cannot read the password file {show}: {e}")),
    }
}

/// The file libpq would read: `passfile`, else `PGPASSFILE`, else `~/.pgpass`.
pub(super) fn path(passfile: Option<&str>, home: Option<&Path>) -> Option<PathBuf> {
    match passfile {
        Some(p) => Some(PathBuf::from(p)),
        None => home.map(|h| h.join(".pgpass")),
    }
}

/// The password of the first line of `text` that matches `key`.
pub(super) fn find(text: &str, key: Key<'_>) -> Option<String> {
    let host = if key.host.is_empty()
        || (key.host.starts_with('/') && DEFAULT_SOCKET_DIRS.contains(&key.host))
    {
        "localhost"
    } else {
        key.host
    };
    let port = key.port.to_string();
    let wanted = [host, port.as_str(), key.dbname, key.user];
    text.lines()
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = Fields { rest: Some(line) };
            for want in wanted {
                let (value, wildcard) = fields.next()?;
                if !wildcard && value != want {
                    return None;
                }
            }
            // The password ends at the next unescaped `:` too, as in libpq.
            fields.next().map(|(password, _)| password)
        })
}

/// The `:`-separated fields of a line, unescaped, each with whether it was a bare `*`.
struct Fields<'a> {
    /// None after the last field.
    rest: Option<&'a str>,
}

impl Fields<'_> {
    fn next(&mut self) -> Option<(String, bool)> {
        let rest = self.rest?;
        let mut value = String::new();
        let mut escaped_any = false;
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, next)) => {
                        escaped_any = true;
                        value.push(next);
                    }
                    None => value.push(c),
                },
                ':' => {
                    self.rest = Some(&rest[i + 1..]);
                    return Some((value.clone(), value == "*" && !escaped_any));
                }
                c => value.push(c),
            }
        }
        self.rest = None;
        Some((value.clone(), value == "*" && !escaped_any))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = Key {
        host: "db.example",
        port: 5432,
        dbname: "sisy",
        user: "guardian",
    };

    #[test]
    fn the_first_matching_line_wins() {
        let text = "# comment\n\
                    other.example:5432:sisy:guardian:no\n\
                    db.example:5433:*:*:no\n\
                    *:5432:sisy:guardian:first\r\n\
                    db.example:5432:sisy:guardian:second\n";
        assert_eq!(find(text, KEY).as_deref(), Some("first"));
        assert_eq!(find("db.example:5432:sisy:other:x\n", KEY), None);
        assert_eq!(find("", KEY), None);
        // Too few fields never match.
        assert_eq!(find("db.example:5432:sisy:guardian\n", KEY), None);
    }

    #[test]
    fn escapes_and_literal_stars() {
        let text = "db.example:5432:sisy:guardian:p\\:a\\\\ss:ignored\n";
        assert_eq!(find(text, KEY).as_deref(), Some("p:a\\ss"));
        let star_user = Key { user: "*", ..KEY };
        assert_eq!(find("*:*:*:\\*:star\n", star_user).as_deref(), Some("star"));
        assert_eq!(find("*:*:*:\\*:star\n", KEY), None);
        let colon_db = Key {
            dbname: "a:b",
            ..KEY
        };
        assert_eq!(find("*:*:a\\:b:*:ok\n", colon_db).as_deref(), Some("ok"));
        assert_eq!(find("*:*:*:*:\n", KEY).as_deref(), Some(""));
    }

    #[test]
    fn default_socket_directories_are_localhost() {
        let text = "localhost:5432:*:*:local\n/srv/pg:5432:*:*:custom\n";
        let socket = |host| Key { host, ..KEY };
        assert_eq!(
            find(text, socket("/var/run/postgresql")).as_deref(),
            Some("local")
        );
        assert_eq!(find(text, socket("")).as_deref(), Some("local"));
        assert_eq!(find(text, socket("/srv/pg")).as_deref(), Some("custom"));
    }

    #[test]
    fn a_file_others_can_read_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        match lookup(&file, KEY) {
            Lookup::Ignored(why) => {
                assert!(why.contains("(mode 0644): chmod 0600"), "{why}");
                assert!(!why.contains("secret"), "{why}");
            }
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&file, KEY), Lookup::Found("secret".into()));
        assert_eq!(lookup(&dir.path().join("none"), KEY), Lookup::NotFound);
        assert!(matches!(lookup(dir.path(), KEY), Lookup::Ignored(_)));
    }
}
