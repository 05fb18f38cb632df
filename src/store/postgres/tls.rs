//! TLS to PostgreSQL, with the `sslmode` semantics libpq defines, over rustls (the TLS stack
//! the rest of certline uses) through `tokio-postgres-rustls`.
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (the default, as in libpq) | if the server offers TLS | no |
//! | `require` | yes | no; with a CA file, its chain (as `verify-ca`, as libpq does) |
//! | `verify-ca` | yes | its chain, against the CA file or the system roots |
//! | `verify-full` | yes | its chain and that it names the host connected to |
//!
//! The CA file is `[store.postgres] ca_file` or `sslrootcert` in the URL (PEM, one or more
//! certificates); `sslrootcert=system` means the system roots, as in libpq 16. Without one
//! the system roots (rustls-native-certs: the operating system's store) are used. tokio-postgres
//! itself knows only `disable`, `prefer` and `require` and no `sslrootcert`, so both are
//! taken out of the URL here ([`take_ssl_params`]) and the connection asks it for `require`
//! when the mode verifies.
//!
//! `sslmode=allow` (plain first, TLS if refused) is refused: use `prefer` or stronger.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::store::StoreError;

/// The connector every connection of the store uses (the pool's and the listener's).
pub type Connector = tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, all of it but `allow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, StoreError> {
        Ok(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(config_error(
                    "sslmode=allow is not supported (it tries without TLS first): use prefer, \
                     require, verify-ca or verify-full",
                ));
            }
            other => {
                return Err(config_error(&format!(
                    "sslmode={other:?} is not one of disable, prefer, require, verify-ca, \
                     verify-full"
                )));
            }
        })
    }

    /// What tokio-postgres is told: whether TLS may be skipped.
    pub(super) fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            Self::Disable => T::Disable,
            Self::Prefer => T::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => T::Require,
        }
    }

    /// The mode as written in the URL.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// The operating system's store.
    System,
    /// A PEM file (`ca_file` or `sslrootcert`).
    File(PathBuf),
}

/// The TLS settings of a connection string, with what `[store.postgres]` adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// Set when a CA file or `sslrootcert=system` was given.
    pub roots: Option<Roots>,
}

fn config_error(problem: &str) -> StoreError {
    StoreError::Pool(format!("store.postgres.url: {problem}"))
}

/// Takes `sslmode` and `sslrootcert` out of a connection string (URL form,
/// `postgres://…?sslmode=verify-full&sslrootcert=/path`, or key/value form,
/// `host=… sslmode=verify-full`), returning the rest for tokio-postgres and the two values.
/// Errors never quote the string (it holds the password).
pub fn take_ssl_params(url: &str) -> Result<(String, Option<String>, Option<String>), StoreError> {
    let url = url.trim();
    let (mut mode, mut rootcert) = (None, None);
    let url_form = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if url_form {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_owned(), None, None));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match key {
                "sslmode" => &mut mode,
                "sslrootcert" => &mut rootcert,
                _ => {
                    kept.push(pair);
                    continue;
                }
            };
            let decoded = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| config_error(&format!("the value of {key} is not UTF-8")))?;
            *slot = Some(decoded.into_owned());
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, mode, rootcert));
    }
    // Key/value form: whitespace-separated `key=value` words; the two are cut out where they
    // stand, so quoted values elsewhere stay as written.
    let mut rest = String::with_capacity(url.len());
    let mut last = 0;
    for (start, word) in words(url) {
        let slot = if let Some(v) = word.strip_prefix("sslmode=") {
            Some((&mut mode, v))
        } else {
            word.strip_prefix("sslrootcert=")
                .map(|v| (&mut rootcert, v))
        };
        if let Some((slot, value)) = slot {
            let value = value.trim_matches('\'');
            *slot = Some(value.to_owned());
            rest.push_str(&url[last..start]);
            last = start + word.len();
        }
    }
    rest.push_str(&url[last..]);
    Ok((rest.trim().to_owned(), mode, rootcert))
}

/// The whitespace-separated words of `s` with their byte offsets.
fn words(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.split(char::is_whitespace)
        .scan(0usize, move |offset, word| {
            let start = *offset;
            *offset += word.len() + 1;
            Some((start, word))
        })
        .filter(|(_, w)| !w.is_empty())
}

/// The settings from the URL's `sslmode`/`sslrootcert` and the configured `ca_file`.
pub fn settings(
    sslmode: Option<&str>,
    sslrootcert: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<TlsSettings, StoreError> {
    let mode = sslmode.map_or(Ok(SslMode::Prefer), SslMode::parse)?;
    let roots = match (sslrootcert, ca_file) {
        (Some(_), Some(_)) => {
            return Err(config_error(
                "sslrootcert is in the URL and [store.postgres] ca_file is set: keep one",
            ));
        }
        (Some("system"), None) => Some(Roots::System),
        (Some(path), None) => Some(Roots::File(PathBuf::from(path))),
        (None, Some(path)) => Some(Roots::File(path.to_owned())),
        (None, None) => None,
    };
    Ok(TlsSettings { mode, roots })
}

/// The rustls connector for `settings`: reads the CA file (or the system roots) now, so that
/// a missing or empty one stops the start with what to fix.
pub fn connector(settings: &TlsSettings) -> Result<Connector, StoreError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, &settings.roots) {
        // libpq: require with a CA file checks the chain, as verify-ca.
        (SslMode::Require, Some(Roots::File(_))) | (SslMode::VerifyCa, _) => {
            Arc::new(ChainOnly(webpki(settings, &provider)?))
        }
        (SslMode::VerifyFull, _) => webpki(settings, &provider)?,
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) => {
            Arc::new(EncryptOnly(provider.clone()))
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Pool(format!("setting up TLS to PostgreSQL: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// rustls' standard verifier (chain and host name) over the configured roots.
fn webpki(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, StoreError> {
    let roots = Arc::new(root_store(
        settings.roots.as_ref().unwrap_or(&Roots::System),
    )?);
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| StoreError::Pool(format!("setting up TLS to PostgreSQL: {e}")))
}

fn root_store(roots: &Roots) -> Result<RootCertStore, StoreError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let unreadable = |e: &dyn std::fmt::Display| {
                StoreError::Pool(format!(
                    "store.postgres.ca_file (or sslrootcert): cannot read {}: {e}; it must be \
                     the PEM certificate of the CA that signed the PostgreSQL server's \
                     certificate",
                    path.display()
                ))
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| unreadable(&e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| unreadable(&e))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(unreadable(&"it holds no usable certificate"));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::Pool(
                    "TLS to PostgreSQL: no system root certificates were found to check the \
                     server's certificate with; set [store.postgres] ca_file to the CA that \
                     signed it"
                        .into(),
                ));
            }
        }
    }
    Ok(store)
}

/// What went wrong in a connection's TLS handshake, said with what to fix; `None` when the
/// error is not about TLS.
pub fn explain(error: &tokio_postgres::Error, settings: &TlsSettings) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(tls) = tls {
            return Some(describe(tls, settings));
        }
        source = e.source();
    }
    let text = error.to_string();
    (text.contains("server does not support TLS")).then(|| {
        format!(
            "the server does not offer TLS but sslmode={} requires it: turn ssl on in the \
             server's postgresql.conf, or (on a trusted network only) use sslmode=prefer",
            settings.mode.name()
        )
    })
}

fn describe(error: &rustls::Error, settings: &TlsSettings) -> String {
    let mode = settings.mode.name();
    let roots = match &settings.roots {
        Some(Roots::File(path)) => format!("the CA file {}", path.display()),
        Some(Roots::System) | None => "the system roots".to_owned(),
    };
    match error {
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "the server's TLS certificate does not name the host connected to \
             (sslmode={mode}): connect by a host name the certificate lists (the URL's host), \
             or use sslmode=verify-ca to check the chain only"
        ),
        rustls::Error::InvalidCertificate(reason) => format!(
            "the server's TLS certificate was refused ({reason:?}) with sslmode={mode}, \
             checked against {roots}: set [store.postgres] ca_file (or sslrootcert in the URL) \
             to the PEM certificate of the CA that signed the server's certificate"
        ),
        other => format!("the TLS handshake with the server failed ({other}) with sslmode={mode}"),
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first, then the name: a name error means the chain held.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a CA file: encrypted, the certificate not checked (libpq's
/// meaning; a man in the middle can read along). The handshake's signatures are still
/// checked, so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url_form() {
        let (rest, mode, root) = take_ssl_params(
            "postgres://u:p%40w@db.example:5432/certline?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p%40w@db.example:5432/certline?application_name=x"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
        let (rest, mode, root) = take_ssl_params("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!((mode.as_deref(), root), (Some("require"), None));
        let (rest, mode, _) = take_ssl_params("postgresql://u@h/db").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgresql://u@h/db", None));
    }

    #[test]
    fn sslmode_and_sslrootcert_leave_the_key_value_form() {
        let (rest, mode, root) = take_ssl_params(
            "host=db password='a  b' sslmode=verify-ca sslrootcert=/ca.pem dbname=x",
        )
        .unwrap();
        assert_eq!(rest, "host=db password='a  b'   dbname=x");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn modes_and_roots_are_checked() {
        assert_eq!(settings(None, None, None).unwrap().mode, SslMode::Prefer);
        let e = settings(Some("allow"), None, None).unwrap_err().to_string();
        assert!(e.contains("prefer"), "{e}");
        let e = settings(Some("verify_full"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
        let both = settings(Some("require"), Some("/a"), Some(Path::new("/b")))
            .unwrap_err()
            .to_string();
        assert!(both.contains("keep one"), "{both}");
        assert_eq!(
            settings(Some("verify-full"), Some("system"), None)
                .unwrap()
                .roots,
            Some(Roots::System)
        );
        let missing = connector(&TlsSettings {
            mode: SslMode::VerifyFull,
            roots: Some(Roots::File("/nonexistent/ca.pem".into())),
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            missing.contains("/nonexistent/ca.pem") && missing.contains("CA"),
            "{missing}"
        );
    }
}
