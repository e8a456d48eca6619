//! TLS to PostgreSQL with rustls: libpq's `sslmode` and `sslrootcert`, and errors a person
//! can act on.
//!
//! Owns turning the two settings (from the connection string, else `PGSSLMODE` and
//! `PGSSLROOTCERT`, else libpq's defaults) into the mode tokio-postgres understands and a
//! rustls `ClientConfig` that checks what the mode promises:
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
//! supported. Does not own connecting: `db` hands the connector to tokio-postgres.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres_rustls::MakeRustlsConnect;

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
    pub fn connector(&self) -> Result<MakeRustlsConnect> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.roots, self.mode) {
            (_, SslMode::Disable) | (Roots::None, _) => Arc::new(Unverified { algorithms }),
            (roots, SslMode::VerifyFull) => {
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(load(roots)?),
                    Arc::new(rustls::crypto::ring::default_provider()),
                )
                .build()
                .context("cannot set up TLS certificate verification")?
            }
            (roots, _) => Arc::new(ChainOnly {
                roots: Arc::new(load(roots)?),
                algorithms,
            }),
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// Why a connection failed, in words, when TLS is the reason; None for other failures.
pub(super) fn explain(error: &tokio_postgres::Error, host: &str) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(rustls) = as_rustls(e) {
            return Some(explain_rustls(rustls, host));
        }
        if e.to_string() == "server does not support TLS" {
            return Some(
                "the database server does not accept TLS connections: turn on ssl in its \
                 postgresql.conf, or lower sslmode"
                    .to_string(),
            );
        }
        cause = e.source();
    }
    None
}

/// The rustls error inside `e`: tokio-rustls wraps it in an io::Error, whose `source()`
/// skips the wrapped error itself, so look inside explicitly.
fn as_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    e.downcast_ref::<rustls::Error>().or_else(|| {
        e.downcast_ref::<std::io::Error>()?
            .get_ref()?
            .downcast_ref::<rustls::Error>()
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

/// verify-ca: the chain must lead to a trusted root; the name is not looked at, because
/// the CA is private and vouches for every server it signs.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// prefer/require without a known CA: encrypted against eavesdropping but not against a
/// man in the middle, exactly as libpq. The handshake signature is still checked, so the
/// server holds the key of the certificate it sent (which channel binding relies on).
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
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
