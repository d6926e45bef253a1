//! A certificate chain and its private key, read from PEM files and checked before anything
//! serves them: every certificate of the chain parses, the key matches the first one, and that
//! one has not expired. The same code runs at start-up, at each reload and in `baton check`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::Serialize;

/// A certificate that expires sooner than this is logged as a warning at each load.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// What can be wrong with a pair; each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("{}: cannot read: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{}: no certificate found; expected a PEM file with \"-----BEGIN CERTIFICATE-----\" blocks, \
         the server's own certificate first",
        path.display()
    )]
    NoCertificate { path: PathBuf },
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error(
        "{}: certificate {index} of the chain is not a valid X.509 certificate: {reason}",
        path.display()
    )]
    BadCertificate {
        path: PathBuf,
        /// From 1, as a person counts the blocks in the file.
        index: usize,
        reason: String,
    },
    #[error(
        "{}: no private key found; expected a PEM block \"-----BEGIN PRIVATE KEY-----\" \
         (or RSA PRIVATE KEY, EC PRIVATE KEY)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error(
        "{} does not match the certificate in {} (subject {subject}); give the key the \
         certificate was issued for",
        key.display(),
        cert.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        subject: String,
    },
    #[error(
        "{}: the certificate (subject {subject}, serial {serial}) expired at {not_after}; \
         renew it and reload",
        path.display()
    )]
    Expired {
        path: PathBuf,
        subject: String,
        serial: String,
        not_after: String,
    },
}

/// What a person needs to know about the certificate in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// e.g. `CN=example.com`.
    pub subject: String,
    pub issuer: String,
    /// Hexadecimal, upper case, as `openssl x509 -noout -serial` prints it.
    pub serial: String,
    #[serde(serialize_with = "rfc3339")]
    pub not_after: SystemTime,
    /// Certificates in the chain, the server's own included.
    pub chain_length: usize,
}

impl Summary {
    /// One line for people: `subject CN=x, serial 0A1B, expires 2027-01-01T00:00:00Z (in 89 days)`.
    pub fn line(&self) -> String {
        let left = self
            .not_after
            .duration_since(SystemTime::now())
            .map(|left| format!("in {} days", left.as_secs() / 86_400))
            .unwrap_or_else(|_| "expired".to_owned());
        format!(
            "subject {}, issuer {}, serial {}, expires {} ({left})",
            self.subject,
            self.issuer,
            self.serial,
            humantime::format_rfc3339_seconds(self.not_after)
        )
    }

    /// Seconds since the Unix epoch, for `/metrics`.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    }

    /// Whether it expires within [`EXPIRY_WARNING`].
    pub fn expires_soon(&self) -> bool {
        self.not_after
            .duration_since(SystemTime::now())
            .map_or(true, |left| left < EXPIRY_WARNING)
    }
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*at).to_string())
}

/// A checked pair, ready to serve.
#[derive(Debug)]
pub(crate) struct Pair {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) summary: Summary,
    /// The key as read, to tell an unchanged pair from a new one at a reload.
    key_der: Vec<u8>,
}

impl Pair {
    /// Reads and checks the pair.
    pub(crate) fn load(
        cert: &Path,
        key: &Path,
        provider: &CryptoProvider,
    ) -> Result<Pair, PairError> {
        let chain = read_chain(cert)?;
        let summary = summarize(cert, key, &chain)?;
        let key_der = read_key(key)?;
        let private = provider
            .key_provider
            .load_private_key(key_der.clone_key())
            .map_err(|err| PairError::BadKey {
                path: key.to_owned(),
                reason: err.to_string(),
            })?;
        let certified = CertifiedKey::new(chain, private);
        match certified.keys_match() {
            // Unknown: the key type cannot say; the handshake's signature will tell the client.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => {
                return Err(PairError::Mismatch {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    subject: summary.subject,
                });
            }
        }
        Ok(Pair {
            certified: Arc::new(certified),
            summary,
            key_der: key_der.secret_der().to_vec(),
        })
    }

    /// Same certificates and same key: a reload has nothing to swap.
    pub(crate) fn same_as(&self, other: &Pair) -> bool {
        self.certified.cert == other.certified.cert
            && self.key_der == other.key_der
            && self.summary.cert == other.summary.cert
            && self.summary.key == other.summary.key
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PairError> {
    std::fs::read(path).map_err(|source| PairError::Unreadable {
        path: path.to_owned(),
        source,
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, PairError> {
    let text = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| PairError::Pem {
            path: path.to_owned(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(PairError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, PairError> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => PairError::NoKey {
            path: path.to_owned(),
        },
        other => PairError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// Parses every certificate of the chain and describes the first; refuses an expired one.
fn summarize(
    cert: &Path,
    key: &Path,
    chain: &[CertificateDer<'static>],
) -> Result<Summary, PairError> {
    let mut summary = None;
    for (i, der) in chain.iter().enumerate() {
        let (_, parsed) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|err| {
            PairError::BadCertificate {
                path: cert.to_owned(),
                index: i + 1,
                reason: err.to_string(),
            }
        })?;
        if i > 0 {
            continue;
        }
        let not_after = parsed.validity().not_after.timestamp();
        summary = Some(Summary {
            cert: cert.to_owned(),
            key: key.to_owned(),
            subject: parsed.subject().to_string(),
            issuer: parsed.issuer().to_string(),
            serial: serial_hex(parsed.raw_serial()),
            not_after: UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0)),
            chain_length: chain.len(),
        });
    }
    // The chain is not empty (checked by `read_chain`).
    let summary = summary.ok_or_else(|| PairError::NoCertificate {
        path: cert.to_owned(),
    })?;
    if summary.not_after <= SystemTime::now() {
        return Err(PairError::Expired {
            path: cert.to_owned(),
            subject: summary.subject,
            serial: summary.serial,
            not_after: humantime::format_rfc3339_seconds(summary.not_after).to_string(),
        });
    }
    Ok(summary)
}

/// The serial as `openssl x509 -serial` shows it: the integer's bytes in upper-case hex,
/// without the zero byte DER adds to keep a number positive.
fn serial_hex(raw: &[u8]) -> String {
    let trimmed = match raw {
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    trimmed.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_read_as_openssl_prints_them() {
        assert_eq!(serial_hex(&[0x00, 0x9A, 0x01]), "9A01");
        assert_eq!(serial_hex(&[0x0A]), "0A");
        assert_eq!(serial_hex(&[0x00]), "00");
    }
}
