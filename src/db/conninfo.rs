//! Taking the libpq keys tokio-postgres does not know out of a connection string.
//!
//! tokio-postgres 0.7 parses `sslmode` disable/prefer/require only and rejects any key it
//! does not know, while libpq users write `sslmode=verify-full sslrootcert=ca.pem
//! passfile=...`. This module finds those keys in either form (`postgres://…?sslmode=…`
//! and `sslmode=… host=…`), returns their values, and leaves the rest of the string exactly
//! as written for tokio-postgres to parse. It does not interpret the values (see `tls` and
//! `pgpass`) and does not validate the rest: a string it cannot tokenise is passed on
//! untouched, so the driver reports the syntax error as it always has.

use anyhow::{Result, anyhow};

/// The keys taken out of the string, as libpq spells them.
pub(super) const OUR_KEYS: [&str; 3] = ["sslmode", "sslrootcert", "passfile"];

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
    for prefix in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(prefix) {
            return split_url(prefix, rest);
        }
    }
    Ok(split_key_value(url).unwrap_or_else(|| Split {
        rest: url.to_string(),
        ..Split::default()
    }))
}

/// The URL form: our keys can only be query parameters.
fn split_url(prefix: &str, rest: &str) -> Result<Split> {
    // tokio-postgres ends the credentials at the first `@` (a `?` in a password is fine),
    // and the query starts at the first `?` after them.
    let creds_end = rest.find('@').map_or(0, |at| at + 1);
    let Some(query_at) = rest[creds_end..].find('?').map(|q| creds_end + q) else {
        return Ok(Split {
            rest: format!("{prefix}{rest}"),
            ..Split::default()
        });
    };
    let mut split = Split::default();
    let mut kept = Vec::new();
    for pair in rest[query_at + 1..].split('&') {
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
    let base = &rest[..query_at];
    split.rest = if kept.is_empty() {
        format!("{prefix}{base}")
    } else {
        format!("{prefix}{base}?{}", kept.join("&"))
    };
    Ok(split)
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
    let mut tokens = Tokens { s, at: 0 };
    let mut copied_up_to = 0;
    while let Some((start, key, value)) = tokens.next_parameter()? {
        if OUR_KEYS.contains(&key) {
            split.rest.push_str(&s[copied_up_to..start]);
            copied_up_to = tokens.at;
            split.set(key, value);
        }
    }
    split.rest.push_str(&s[copied_up_to..]);
    Some(split)
}

/// A cursor over `key = value` parameters: values bare (up to whitespace) or in single
/// quotes, `\` escaping the next character in either.
struct Tokens<'a> {
    s: &'a str,
    at: usize,
}

impl<'a> Tokens<'a> {
    /// The next parameter as (its start, key, unescaped value); Ok(None) at the end, None
    /// on a syntax error.
    #[allow(clippy::type_complexity)]
    fn next_parameter(&mut self) -> Option<Option<(usize, &'a str, String)>> {
        self.skip_ws();
        let start = self.at;
        let key_len = self.rest().find(|c: char| c.is_whitespace() || c == '=');
        let key_len = key_len.unwrap_or(self.rest().len());
        if key_len == 0 {
            return if self.rest().is_empty() {
                Some(None)
            } else {
                None
            };
        }
        let key = &self.s[start..start + key_len];
        self.at += key_len;
        self.skip_ws();
        self.rest().starts_with('=').then_some(())?;
        self.at += 1;
        self.skip_ws();
        let value = self.value()?;
        Some(Some((start, key, value)))
    }

    fn value(&mut self) -> Option<String> {
        let quoted = self.rest().starts_with('\'');
        let mut value = String::new();
        let mut chars = self.rest().char_indices().skip(usize::from(quoted));
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '\'' if quoted => {
                    self.at += i + 1;
                    return Some(value);
                }
                c if !quoted && c.is_whitespace() => {
                    self.at += i;
                    return (!value.is_empty()).then_some(value);
                }
                c => value.push(c),
            }
        }
        // The end of the string: fine for a bare value, unterminated for a quoted one.
        self.at = self.s.len();
        (!quoted && !value.is_empty()).then_some(value)
    }

    fn rest(&self) -> &'a str {
        &self.s[self.at..]
    }

    fn skip_ws(&mut self) {
        self.at = self.s.len() - self.rest().trim_start().len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(url: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        let s = split(url).unwrap();
        (s.rest, s.sslmode, s.sslrootcert, s.passfile)
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
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
}
