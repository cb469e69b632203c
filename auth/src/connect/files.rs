//! The files a connection names (creds, nkey seed, TLS CA, certificate and key), read and
//! parsed before connecting, so that a wrong path or a broken file is an error naming the path
//! and the setting instead of a failed handshake.

use std::io::ErrorKind;
use std::path::Path;

use async_nats::rustls::pki_types::pem::PemObject;
use async_nats::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use async_nats::ConnectOptions;

use super::{ConnectionError, Field};

/// Reads a file, telling a missing one apart from an unreadable one.
fn read(field: Field, path: &Path) -> Result<Vec<u8>, ConnectionError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => ConnectionError::MissingFile {
            field,
            path: path.to_path_buf(),
        },
        _ => ConnectionError::Unreadable {
            field,
            path: path.to_path_buf(),
            source,
        },
    })
}

fn malformed(field: Field, path: &Path, what: &'static str, problem: String) -> ConnectionError {
    ConnectionError::Malformed {
        field,
        path: path.to_path_buf(),
        what,
        problem,
    }
}

fn read_text(field: Field, path: &Path, what: &'static str) -> Result<String, ConnectionError> {
    String::from_utf8(read(field, path)?)
        .map_err(|_| malformed(field, path, what, "it is not text".to_string()))
}

/// Adds the JWT and seed of a `.creds` file to `options`.
pub(super) fn creds(
    options: ConnectOptions,
    path: &Path,
) -> Result<ConnectOptions, ConnectionError> {
    const WHAT: &str = "a NATS credentials file (user JWT and nkey seed)";
    let text = read_text(Field::Creds, path, WHAT)?;
    options
        .credentials(&text)
        .map_err(|e| malformed(Field::Creds, path, WHAT, e.to_string()))
}

/// The user nkey seed (`SU...`) in a file, surrounding whitespace ignored.
pub(super) fn nkey_seed(path: &Path) -> Result<String, ConnectionError> {
    const WHAT: &str = "a file holding a user nkey seed (SU...)";
    let text = read_text(Field::Nkey, path, WHAT)?;
    let seed = text.trim();
    if !seed.starts_with("SU") {
        let problem = match seed.get(..2) {
            Some(start) if start.starts_with('S') => {
                format!("it holds a seed of another kind ({start}...), not a user's")
            }
            _ => "it does not start with SU".to_string(),
        };
        return Err(malformed(Field::Nkey, path, WHAT, problem));
    }
    nkeys::KeyPair::from_seed(seed)
        .map_err(|e| malformed(Field::Nkey, path, WHAT, e.to_string()))?;
    Ok(seed.to_string())
}

/// Checks that a PEM file holds at least one certificate.
pub(super) fn certificates(field: Field, path: &Path) -> Result<(), ConnectionError> {
    const WHAT: &str = "a PEM file of certificates";
    let bytes = read(field, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(field, path, WHAT, e.to_string()))?;
    if certs.is_empty() {
        return Err(malformed(
            field,
            path,
            WHAT,
            "it holds no CERTIFICATE block".to_string(),
        ));
    }
    Ok(())
}

/// Checks that a PEM file holds a private key.
pub(super) fn private_key(path: &Path) -> Result<(), ConnectionError> {
    const WHAT: &str = "a PEM file holding a private key";
    let bytes = read(Field::TlsKey, path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map(drop)
        .map_err(|e| malformed(Field::TlsKey, path, WHAT, e.to_string()))
}
