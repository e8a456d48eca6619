//! TLS to PostgreSQL with rustls: libpq's `sslmode` and `sslrootcert`, and errors a person
//! can act on.
//!
//! Owns turning the two settings (from the connection string, else `PGSSLMODE` and
//! `PGSSLROOTCERT`, else libpq's defaults) into the mode tokio-postgres understands and a
//! connector whose rustls `ClientConfig` checks what the mode promises, and whose failed
//! handshakes read as sentences saying what to check:
//!
//! ```text
//!   sslmode        tokio-postgres   server certificate
//!   disable        disable          (no TLS)
//!   allow, prefer  prefer           chain checked if a root certificate is known, else not
//!   require        require          chain checked if a root certificate is known, else not
//!   verify-ca      require          chain checked against sslrootcert
//!   verify-full    require          chain and host name checked
//! ```
//!
//! A root certificate is known when `sslrootcert` names a file or `system` (the platform's
//! roots), or `~/.postgresql/root.crt` exists, as in libpq. Deliberate differences from
//! libpq: `allow` tries TLS first (tokio-postgres has no plaintext-first mode); a
//! `sslrootcert` that was given but cannot be read is an error in every mode (libpq ignores
//! it below verify-ca, silently turning verification off); `prefer` does not retry without
//! TLS after a failed handshake. Unix sockets never carry TLS (PostgreSQL refuses it there),
//! so any mode connects over them unencrypted, as with libpq. Client certificates are not
//! supported. Does not own connecting: `db` hands the connector to tokio-postgres. The
//! verifiers rustls lacks (chain only, none) are in `verify`.

mod verify;

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio_postgres::Socket;
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use verify::ChainOnly;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(value: &str) -> Result<SslMode> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => bail!(
                "sslmode {other:?} is not valid: use disable, allow, prefer, require, verify-ca or verify-full"
            ),
        })
    }

    /// The mode tokio-postgres is given: it knows disable, prefer and require, and the
    /// verification it does not know is in the connector.
    pub fn driver_mode(self) -> DriverMode {
        match self {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Allow | SslMode::Prefer => DriverMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverMode::Require,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Roots {
    /// None known: the server's certificate cannot be checked.
    None,
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The platform's trusted roots (`sslrootcert=system`).
    System,
}

/// The TLS half of a connection string, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    pub mode: SslMode,
    pub roots: Roots,
}

impl TlsSettings {
    /// libpq's rules for `mode` and `root` (the connection string's values, else
    /// `PGSSLMODE` and `PGSSLROOTCERT`: the caller picks): when unset, `prefer`, and
    /// `~/.postgresql/root.crt` if it exists (`home` is the user's home directory).
    pub fn resolve(
        mode: Option<&str>,
        root: Option<&str>,
        home: Option<&Path>,
    ) -> Result<TlsSettings> {
        let roots = match root {
            Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
            None => home
                .map(|h| h.join(".postgresql/root.crt"))
                .filter(|p| p.is_file())
                .map_or(Roots::None, Roots::File),
        };
        let mode = match mode {
            Some(mode) => SslMode::parse(mode)?,
            // libpq: naming the platform's roots asks for the full check by default.
            None if roots == Roots::System => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        if roots == Roots::System && mode != SslMode::VerifyFull {
            bail!(
                "sslmode {} may not be used with sslrootcert=system: use sslmode=verify-full (the platform's roots vouch for names, not for a private CA)",
                mode.as_str()
            );
        }
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && roots == Roots::None {
            bail!(
                "sslmode={} needs the CA certificate that signed the server's: set sslrootcert=<file> \
                 (or PGSSLROOTCERT), or sslrootcert=system for the platform's roots",
                mode.as_str()
            );
        }
        Ok(TlsSettings { mode, roots })
    }

    /// The mode tokio-postgres is given (see [`SslMode::driver_mode`]).
    pub fn driver_mode(&self) -> DriverMode {
        self.mode.driver_mode()
    }

    /// Whether the server's name is checked: only verify-full needs a host name.
    pub fn checks_name(&self) -> bool {
        self.mode == SslMode::VerifyFull
    }

    /// The connector for tokio-postgres; reads the root certificates now.
    pub fn connector(&self) -> Result<Connector> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.roots, self.mode) {
            (_, SslMode::Disable) | (Roots::None, _) => Arc::new(ChainOnly {
                roots: None,
                algorithms,
            }),
            (roots, SslMode::VerifyFull) => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(load(roots)?),
                    Arc::new(rustls::crypto::ring::default_provider()),
                )
                .build()
                .context("cannot set up TLS certificate verification")?
            }
            (roots, _) => Arc::new(ChainOnly {
                roots: Some(Arc::new(load(roots)?)),
                algorithms,
            }),
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Connector(MakeRustlsConnect::new(config)))
    }
}

/// The TLS stream of a connection.
pub(crate) type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// What tokio-postgres is given: rustls through tokio-postgres-rustls, with a failed
/// handshake's error replaced by a sentence saying what to check. Replacing it here, rather
/// than where a connection fails, words it alike on every path that connects: single
/// connections, the pool and the listener.
#[derive(Clone)]
pub(crate) struct Connector(MakeRustlsConnect);

impl MakeTlsConnect<Socket> for Connector {
    type Stream = Stream;
    type TlsConnect = Handshake;
    type Error = Infallible;

    fn make_tls_connect(&mut self, host: &str) -> Result<Handshake, Infallible> {
        Ok(Handshake {
            inner: MakeTlsConnect::<Socket>::make_tls_connect(&mut self.0, host)?,
            host: host.to_string(),
        })
    }
}

/// One TLS handshake with the server `host`.
pub(crate) struct Handshake {
    inner: <MakeRustlsConnect as MakeTlsConnect<Socket>>::TlsConnect,
    host: String,
}

impl TlsConnect<Socket> for Handshake {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        let Handshake { inner, host } = self;
        Box::pin(async move {
            inner.connect(socket).await.map_err(|e| {
                // tokio-rustls wraps the rustls error in an io::Error.
                let Some(rustls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
                else {
                    return e;
                };
                io::Error::new(e.kind(), Problem(explain_rustls(rustls, &host)))
            })
        })
    }
}

/// A failed handshake, as a sentence (which quotes the rustls error).
#[derive(Debug)]
struct Problem(String);

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Problem {}

/// How TLS made a connection attempt fail.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Failure {
    /// The handshake failed; the connector has put what to check into the error.
    Handshake,
    /// The server answered the request for TLS with "no".
    NotOffered,
}

/// Whether, and how, TLS is why `error` happened.
pub(super) fn failure(error: &tokio_postgres::Error) -> Option<Failure> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        // The io::Error's `source()` skips the error it wraps: look inside explicitly.
        let inner = e.downcast_ref::<io::Error>().and_then(|e| e.get_ref());
        if inner.is_some_and(|e| e.is::<Problem>()) {
            return Some(Failure::Handshake);
        }
        // tokio-postgres's words for the server's "no".
        if e.to_string() == "server does not support TLS" {
            return Some(Failure::NotOffered);
        }
        cause = e.source();
    }
    None
}

/// Whether a TLS handshake is why `error` (a connection attempt's, through the pool or not)
/// happened: the server's certificate was refused, or the handshake itself failed. Waiting
/// does not fix that (a certificate is replaced by a person), so it is no outage.
pub(super) fn handshake_failed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let driver = cause.downcast_ref::<tokio_postgres::Error>().or_else(|| {
            match cause.downcast_ref::<deadpool_postgres::PoolError>() {
                Some(deadpool_postgres::PoolError::Backend(e)) => Some(e),
                _ => None,
            }
        });
        driver.is_some_and(|e| failure(e) == Some(Failure::Handshake))
    })
}

fn explain_rustls(e: &rustls::Error, host: &str) -> String {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => {
            format!(
                "the database server's certificate is not valid for the host name {host:?} ({e}): \
                 connect by a name the certificate lists, or use sslmode=verify-ca to check only the CA"
            )
        }
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => format!(
            "the database server's certificate is outside its validity period ({e}): renew it, \
             or check this host's clock"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the database server's certificate is not trusted ({e}): check sslrootcert, it must \
             hold the CA certificate that signed the server's"
        ),
        _ => format!(
            "the TLS handshake with the database server failed ({e}): check sslmode and the \
             server's ssl settings"
        ),
    }
}

/// The CA certificates `roots` names.
fn load(roots: &Roots) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::None => {}
        Roots::File(path) => {
            let show = path.display();
            let pem = std::fs::read(path).map_err(|e| {
                anyhow!("cannot read sslrootcert {show}: {e}: check the path and its permissions")
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    anyhow!("sslrootcert {show} is not a valid PEM file ({e}): give a file of CA certificates")
                })?;
                store.add(cert).map_err(|e| {
                    anyhow!(
                        "sslrootcert {show} holds a certificate that cannot be used as a CA ({e})"
                    )
                })?;
            }
            if store.is_empty() {
                bail!(
                    "sslrootcert {show} holds no certificate: give a PEM file of CA certificates (-----BEGIN CERTIFICATE-----)"
                );
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                bail!(
                    "sslrootcert=system: no trusted root certificates found on this host{why}: \
                     install ca-certificates, or name a CA file in sslrootcert"
                );
            }
        }
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(mode: Option<&str>, root: Option<&str>) -> Result<TlsSettings> {
        TlsSettings::resolve(mode, root, None)
    }

    #[test]
    fn modes_map_to_what_the_driver_knows() {
        let driver = |mode| resolve(Some(mode), Some("/ca.pem")).unwrap().driver_mode();
        assert_eq!(driver("disable"), DriverMode::Disable);
        assert_eq!(driver("allow"), DriverMode::Prefer);
        assert_eq!(driver("prefer"), DriverMode::Prefer);
        for strict in ["require", "verify-ca", "verify-full"] {
            assert_eq!(driver(strict), DriverMode::Require, "{strict}");
        }
        assert_eq!(resolve(None, None).unwrap().mode, SslMode::Prefer);
        let err = resolve(Some("verify_full"), None).unwrap_err().to_string();
        assert!(err.contains("use disable, allow"), "{err}");
    }

    #[test]
    fn verification_needs_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let err = resolve(Some(mode), None).unwrap_err().to_string();
            assert!(err.contains("set sslrootcert="), "{err}");
        }
        assert_eq!(resolve(Some("require"), None).unwrap().roots, Roots::None);
    }

    #[test]
    fn system_roots_mean_verify_full() {
        assert_eq!(
            resolve(None, Some("system")).unwrap().mode,
            SslMode::VerifyFull
        );
        let err = resolve(Some("require"), Some("system"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("use sslmode=verify-full"), "{err}");
    }

    #[test]
    fn the_default_root_certificate_is_used_when_present() {
        let home = tempfile::tempdir().unwrap();
        let none = TlsSettings::resolve(Some("require"), None, Some(home.path())).unwrap();
        assert_eq!(none.roots, Roots::None);
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        let crt = home.path().join(".postgresql/root.crt");
        std::fs::write(&crt, "").unwrap();
        let found = TlsSettings::resolve(Some("require"), None, Some(home.path())).unwrap();
        assert_eq!(found.roots, Roots::File(crt));
    }

    #[test]
    fn an_unreadable_or_empty_root_file_is_an_error() {
        let missing = resolve(Some("require"), Some("/nonexistent/ca.pem")).unwrap();
        let err = missing.connector().err().unwrap().to_string();
        assert!(
            err.starts_with("cannot read sslrootcert /nonexistent/ca.pem"),
            "{err}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate\n").unwrap();
        let path = file.path().to_str().unwrap();
        let empty = resolve(Some("verify-ca"), Some(path)).unwrap();
        let err = empty.connector().err().unwrap().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        // Without a CA there is nothing to read.
        assert!(resolve(Some("require"), None).unwrap().connector().is_ok());
    }
}
