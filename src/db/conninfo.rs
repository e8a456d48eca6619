//! libpq's connection strings and environment, read in one place: the key=value and URL
//! forms are tokenised here and nowhere else, and so are the `PG*` variables.
//!
//! - [`split`] takes the libpq keys tokio-postgres does not know out of a string: 0.7
//!   parses `sslmode` disable/prefer/require only and rejects any key it does not know,
//!   while libpq users write `sslmode=verify-full sslrootcert=ca.pem passfile=...`. It
//!   returns their values and leaves the rest exactly as written for tokio-postgres; it
//!   does not interpret the values (see `tls` and `pgpass`) and does not validate the rest:
//!   a string it cannot tokenise is passed on untouched, so the driver reports the error.
//! - [`redact_password`] hides the password of a string for display, however malformed.
//! - [`url_from_env`] builds a string from `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`…
//!   (the guardian's and the CLI's fallback); [`var`] reads any variable as libpq does.

use std::ops::Range;

use anyhow::{Result, anyhow};

/// The keys taken out of the string, as libpq spells them.
pub(super) const OUR_KEYS: [&str; 3] = ["sslmode", "sslrootcert", "passfile"];

/// The libpq variables that become keys of a connection string, with the key each becomes.
/// Others have no key here: `PGSSLROOTCERT` and `PGPASSFILE` are read when connecting (see
/// `db`), and `PGSERVICE` and the like have no tokio-postgres equivalent.
const LIBPQ_VARS: [(&str, &str); 14] = [
    ("PGHOST", "host"),
    ("PGHOSTADDR", "hostaddr"),
    ("PGPORT", "port"),
    ("PGDATABASE", "dbname"),
    ("PGUSER", "user"),
    ("PGPASSWORD", "password"),
    ("PGOPTIONS", "options"),
    ("PGAPPNAME", "application_name"),
    ("PGSSLMODE", "sslmode"),
    ("PGSSLNEGOTIATION", "sslnegotiation"),
    ("PGCONNECT_TIMEOUT", "connect_timeout"),
    ("PGTARGETSESSIONATTRS", "target_session_attrs"),
    ("PGCHANNELBINDING", "channel_binding"),
    ("PGLOADBALANCEHOSTS", "load_balance_hosts"),
];

/// A connection string split in two: what tokio-postgres parses, and our keys.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Split {
    /// The string without our keys, for `tokio_postgres::Config::from_str`.
    pub rest: String,
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub passfile: Option<String>,
}

impl Split {
    fn set(&mut self, key: &str, value: String) {
        // A later occurrence overrides an earlier one, as in tokio-postgres and libpq.
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            _ => self.passfile = Some(value),
        }
    }
}

/// Splits `url` (URL or key=value form, told apart as tokio-postgres does).
pub(super) fn split(url: &str) -> Result<Split> {
    if let Some((scheme, rest)) = url_form(url) {
        return split_url(scheme, rest);
    }
    Ok(split_key_value(url).unwrap_or_else(|| Split {
        rest: url.to_string(),
        ..Split::default()
    }))
}

/// Hides the password in a connection string, in URL form (`postgres://u:secret@h/db` →
/// `postgres://u:***@h/db`, also `?password=`) and key=value form (`password=secret` →
/// `password=***`), keeping everything else as written. Never fails: a malformed string is
/// redacted as far as it goes. Use it wherever a connection string is displayed or logged.
pub(crate) fn redact_password(url: &str) -> String {
    let trimmed = url.trim_start();
    if let Some((scheme, rest)) = url_form(trimmed) {
        let lead = &url[..url.len() - trimmed.len()];
        return format!("{lead}{scheme}{}", redact_url_rest(rest));
    }
    let mut out = String::with_capacity(url.len());
    let mut copied = 0;
    for param in Params::new(url).filter(|p| p.key == "password") {
        out.push_str(&url[copied..param.value.start]);
        out.push_str("***");
        copied = param.value.end;
    }
    out.push_str(&url[copied..]);
    out
}

/// A key=value connection string built from the libpq variables set in `env`, or None
/// when none is. Empty variables count as unset, as they do for libpq's host.
pub(crate) fn url_from_env(env: &[(String, String)]) -> Option<String> {
    let mut parts: Vec<String> = LIBPQ_VARS
        .iter()
        .filter_map(|(name, key)| Some(format!("{key}={}", quote(var(env, name)?))))
        .collect();
    if parts.is_empty() {
        return None;
    }
    // tokio-postgres has no default host, while libpq uses its Unix socket directory; this
    // is the directory Debian's libpq and PostgreSQL use.
    if var(env, "PGHOST").is_none() && var(env, "PGHOSTADDR").is_none() {
        parts.insert(0, "host=/var/run/postgresql".to_string());
    }
    Some(parts.join(" "))
}

/// The libpq variables [`url_from_env`] used, by name (for messages).
pub(crate) fn env_vars_set(env: &[(String, String)]) -> Vec<&'static str> {
    LIBPQ_VARS
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| var(env, name).is_some())
        .collect()
}

/// A variable of `env` (the last assignment wins); empty counts as unset, as for libpq.
pub(crate) fn var<'e>(env: &'e [(String, String)], name: &str) -> Option<&'e str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// libpq's quoting: single quotes, with `\` escaping `'` and `\`.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The scheme and the rest of a string in URL form, as tokio-postgres recognises it.
fn url_form(url: &str) -> Option<(&'static str, &str)> {
    ["postgres://", "postgresql://"]
        .into_iter()
        .find_map(|scheme| Some((scheme, url.strip_prefix(scheme)?)))
}

/// The URL form: our keys can only be query parameters.
fn split_url(scheme: &str, rest: &str) -> Result<Split> {
    // tokio-postgres ends the credentials at the first `@` (a `?` in a password is fine),
    // and the query starts at the first `?` after them.
    let creds_end = rest.find('@').map_or(0, |at| at + 1);
    let Some((base, query)) = split_query(rest, creds_end) else {
        return Ok(Split {
            rest: format!("{scheme}{rest}"),
            ..Split::default()
        });
    };
    let mut split = Split::default();
    let mut kept = Vec::new();
    for pair in query.split('&') {
        let ours = pair
            .split_once('=')
            .and_then(|(key, value)| Some((decode(key).ok()?, value)))
            .filter(|(key, _)| OUR_KEYS.contains(&key.as_str()));
        match ours {
            Some((key, value)) => {
                let value = decode(value)
                    .map_err(|_| anyhow!("the value of {key} in the database URL is not valid percent-encoded UTF-8: encode it like the rest of the URL"))?;
                split.set(&key, value);
            }
            None => kept.push(pair),
        }
    }
    split.rest = if kept.is_empty() {
        format!("{scheme}{base}")
    } else {
        format!("{scheme}{base}?{}", kept.join("&"))
    };
    Ok(split)
}

/// The part of a URL before its query and the query, the query starting at the first `?`
/// at or after `from`; None without a query.
fn split_query(rest: &str, from: usize) -> Option<(&str, &str)> {
    let at = from + rest[from..].find('?')?;
    Some((&rest[..at], &rest[at + 1..]))
}

/// The part of a URL after the scheme, with the password hidden. tokio-postgres ends the
/// credentials at the first `@`; people who forget to escape one mean the last: hiding up
/// to the last `@` covers both.
fn redact_url_rest(rest: &str) -> String {
    let rest = match rest.rsplit_once('@') {
        Some((creds, tail)) => match creds.split_once(':') {
            Some((user, _)) => format!("{user}:***@{tail}"),
            None => rest.to_string(),
        },
        None => rest.to_string(),
    };
    // Any `?` left starts the query: the password, which may hold one, is gone, and a
    // query parameter may hold an `@`.
    let Some((base, query)) = split_query(&rest, 0) else {
        return rest;
    };
    let params: Vec<&str> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some(("password", _)) => "password=***",
            _ => p,
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

fn decode(s: &str) -> Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|v| v.into_owned())
}

/// The key=value form, tokenised with tokio-postgres's grammar; None if it does not
/// tokenise (the driver will then report why).
fn split_key_value(s: &str) -> Option<Split> {
    let mut split = Split::default();
    let mut copied = 0;
    for param in Params::new(s) {
        if !param.well_formed {
            return None;
        }
        if OUR_KEYS.contains(&param.key) {
            split.rest.push_str(&s[copied..param.start]);
            copied = param.value.end;
            split.set(param.key, param.unescaped);
        }
    }
    split.rest.push_str(&s[copied..]);
    Some(split)
}

/// One `key = value` parameter as written. Values are bare (up to whitespace) or in single
/// quotes, `\` escaping the next character in either; whitespace is Unicode whitespace, as
/// for tokio-postgres, so no value can hide a password from [`redact_password`].
struct Param<'a> {
    /// Where the parameter starts.
    start: usize,
    key: &'a str,
    /// The value as written, quotes included (empty when missing).
    value: Range<usize>,
    unescaped: String,
    /// Whether tokio-postgres accepts it: a key, `=`, and a non-empty bare value or a
    /// closed quoted one.
    well_formed: bool,
}

/// The parameters of a key=value string. Lenient: a malformed parameter is returned as far
/// as it goes (marked not `well_formed`) and the scan goes on, which redaction needs.
struct Params<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Params<'a> {
    fn new(s: &'a str) -> Self {
        Params { s, at: 0 }
    }

    /// Reads a value at the cursor: (unescaped, whether it ended properly).
    fn value(&mut self) -> (String, bool) {
        let rest = &self.s[self.at..];
        let quoted = rest.starts_with('\'');
        let mut value = String::new();
        let mut chars = rest.char_indices().skip(usize::from(quoted));
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                '\'' if quoted => {
                    self.at += i + 1;
                    return (value, true);
                }
                c if !quoted && c.is_whitespace() => {
                    self.at += i;
                    return (value, true);
                }
                c => value.push(c),
            }
        }
        // The end of the string: fine for a bare value, unterminated for a quoted one.
        self.at = self.s.len();
        (value, !quoted)
    }

    fn skip_ws(&mut self) {
        self.at = self.s.len() - self.s[self.at..].trim_start().len();
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        self.skip_ws();
        if self.at == self.s.len() {
            return None;
        }
        let start = self.at;
        let rest = &self.s[start..];
        let key_len = rest.find(|c: char| c.is_whitespace() || c == '=');
        let key = &rest[..key_len.unwrap_or(rest.len())];
        self.at += key.len();
        self.skip_ws();
        let eq = self.s[self.at..].starts_with('=');
        if eq {
            self.at += 1;
            self.skip_ws();
        }
        let value_start = self.at;
        let quoted = self.s[value_start..].starts_with('\'');
        let (unescaped, ended) = self.value();
        Some(Param {
            start,
            key,
            value: value_start..self.at,
            well_formed: !key.is_empty() && eq && ended && (quoted || !unescaped.is_empty()),
            unescaped,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn ours(url: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        let s = split(url).unwrap();
        (s.rest, s.sslmode, s.sslrootcert, s.passfile)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn key_value_form() {
        assert_eq!(
            ours("host=h sslmode=verify-full  sslrootcert = '/a b/c\\'.pem' dbname=d"),
            (
                "host=h    dbname=d".into(),
                some("verify-full"),
                some("/a b/c'.pem"),
                None
            )
        );
        assert_eq!(
            ours("passfile=/p\\ q user=u"),
            (" user=u".into(), None, None, some("/p q"))
        );
        // Other keys, quoting and passwords are left exactly as written.
        let untouched = "host=h password='s3 cr\\'et' sslmode2=x";
        assert_eq!(ours(untouched), (untouched.into(), None, None, None));
        // The last occurrence wins.
        assert_eq!(ours("sslmode=require sslmode=disable").1, some("disable"));
    }

    #[test]
    fn a_string_that_does_not_tokenise_is_passed_on_untouched() {
        for bad in [
            "host=h sslmode",
            "sslmode='verify-full",
            "= x",
            "host=h sslmode= ",
        ] {
            assert_eq!(ours(bad), (bad.into(), None, None, None), "{bad}");
        }
    }

    #[test]
    fn url_form() {
        assert_eq!(
            ours(
                "postgres://u:p?w@h:5/d?sslmode=verify-ca&connect_timeout=3&sslrootcert=%2Fetc%2Fca.pem"
            ),
            (
                "postgres://u:p?w@h:5/d?connect_timeout=3".into(),
                some("verify-ca"),
                some("/etc/ca.pem"),
                None
            )
        );
        assert_eq!(
            ours("postgresql:///d?passfile=/x&sslmode=require"),
            ("postgresql:///d".into(), some("require"), None, some("/x"))
        );
        let untouched = "postgres://u:secret@h/d?application_name=a&bad";
        assert_eq!(ours(untouched), (untouched.into(), None, None, None));
        assert!(split("postgres://h/d?sslrootcert=%ff").is_err());
    }

    #[test]
    fn redacts_url_form() {
        let cases = [
            ("postgres://u:secret@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:s%40c:r@h1:5432,h2:5433/db",
                "postgresql://u:***@h1:5432,h2:5433/db",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db", "postgres://h/db"),
            (
                "postgres://h/db?user=u&password=secret&target_session_attrs=read-write",
                "postgres://h/db?user=u&password=***&target_session_attrs=read-write",
            ),
            ("  postgres://u:secret@h", "  postgres://u:***@h"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p?w@h/db", "postgres://u:***@h/db"),
            (
                "postgres://h/db?application_name=a@b",
                "postgres://h/db?application_name=a@b",
            ),
            (
                "postgres://h/db?password=s&application_name=a@b",
                "postgres://h/db?password=***&application_name=a@b",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_password(url), expected, "{url}");
        }
    }

    #[test]
    fn redacts_key_value_form() {
        let cases = [
            ("password=secret", "password=***"),
            (
                "host=h password=secret user=u",
                "host=h password=*** user=u",
            ),
            (
                "host=h password = 'se cret' user=u",
                "host=h password = *** user=u",
            ),
            (r"password='it\'s' user=u", "password=*** user=u"),
            (r"password=a\ b user=u", "password=*** user=u"),
            (
                "user=u password='unterminated secret",
                "user=u password=***",
            ),
            ("password=", "password=***"),
            ("host=h password hunter2", "host=h password ***"),
            ("host=h", "host=h"),
            ("application_name=password=x", "application_name=password=x"),
            ("host=h\u{a0}password=secret", "host=h\u{a0}password=***"),
            (
                "host='h é' password=sécret\tuser=u",
                "host='h é' password=***\tuser=u",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(redact_password(url), expected, "{url}");
        }
    }

    #[test]
    fn redaction_hides_every_quoted_password() {
        let passwords = [
            "s3cret",
            "with space",
            "it's",
            r"back\slash",
            "a=b c=d",
            "ünï\u{a0}code",
            "'",
        ];
        for password in passwords {
            let url = format!("host=h password = {} user=u", quote(password));
            let parsed = tokio_postgres::Config::from_str(&url).unwrap();
            assert_eq!(parsed.get_password(), Some(password.as_bytes()), "{url}");
            assert_eq!(
                redact_password(&url),
                "host=h password = *** user=u",
                "{url}"
            );
        }
    }

    #[test]
    fn libpq_environment() {
        let vars = env(&[
            ("PGHOST", "db1,db2"),
            ("PGPORT", "5432,5433"),
            ("PGUSER", "sisy"),
            ("PGPASSWORD", r"it's a \ secret"),
            ("PGDATABASE", "jobs"),
            ("PGSSLMODE", ""),
            ("PGUSER", "last"),
        ]);
        let url = url_from_env(&vars).unwrap();
        assert_eq!(
            url,
            r"host='db1,db2' port='5432,5433' dbname='jobs' user='last' password='it\'s a \\ secret'"
        );
        let parsed = tokio_postgres::Config::from_str(&url).unwrap();
        assert_eq!(parsed.get_password(), Some(&br"it's a \ secret"[..]));
        assert_eq!(
            env_vars_set(&vars),
            ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD"]
        );
        assert_eq!(url_from_env(&env(&[("PGPASSWORD", "")])), None);
        assert_eq!(
            url_from_env(&env(&[("PGHOSTADDR", "10.0.0.1")])).unwrap(),
            "hostaddr='10.0.0.1'",
            "no socket directory when an address is given"
        );
        assert_eq!(
            var(&env(&[("A", "1"), ("A", "")]), "A"),
            None,
            "empty is unset"
        );
    }
}
