use std::{
    error::Error,
    fmt, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use tokio_rustls::rustls::{
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

/// The server's certificate chain and private key, swappable while the server runs.
///
/// Clones share one certificate: keep a clone, and [`reload_from_pem_files`] after the
/// files are renewed. Handshakes that start afterwards present the new certificate
/// (a client resuming an earlier session is shown none); connections already
/// established keep theirs. A reload that fails leaves the current
/// certificate in place.
///
/// It is also a rustls [`ResolvesServerCert`], for a `ServerConfig` built by hand
/// (`with_cert_resolver`) that should reload the same way.
///
/// [`reload_from_pem_files`]: Self::reload_from_pem_files
///
/// # Example
///
/// ```
/// use tower_bouncer::tls::ServerCertificate;
/// # let generated = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
/// # let (chain_pem, key_pem) = (generated.cert.pem(), generated.signing_key.serialize_pem());
/// # let generated = rcgen::generate_simple_self_signed(["localhost".to_owned()]).unwrap();
/// # let (renewed_chain_pem, renewed_key_pem) = (generated.cert.pem(), generated.signing_key.serialize_pem());
///
/// let certificate = ServerCertificate::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())?;
/// let handle = certificate.clone(); // for the task that reloads it
/// let first = certificate.current();
///
/// handle.reload_from_pem(renewed_chain_pem.as_bytes(), renewed_key_pem.as_bytes())?;
/// let renewed = certificate.current();
/// assert_ne!(renewed.cert, first.cert);
///
/// // A key that is not the certificate's is refused, and the renewed one stays.
/// assert!(handle.reload_from_pem(chain_pem.as_bytes(), renewed_key_pem.as_bytes()).is_err());
/// assert_eq!(certificate.current().cert, renewed.cert);
/// # Ok::<(), tower_bouncer::tls::CertificateError>(())
/// ```
#[derive(Clone)]
pub struct ServerCertificate {
    current: Arc<ArcSwap<CertifiedKey>>,
}

/// Why a certificate chain or private key cannot be used. It names the file (or says
/// the PEM was given in memory) and what is wrong with it.
#[derive(Debug)]
#[non_exhaustive]
pub enum CertificateError {
    /// The file could not be read, or is not a regular file of at most 1 MiB.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The certificate chain holds no certificate, or its PEM is malformed.
    Chain {
        /// The file, or `None` for PEM given in memory.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// The private key's PEM holds no key, is malformed, or holds a key of a kind that
    /// cannot sign a handshake.
    Key {
        /// The file, or `None` for PEM given in memory.
        path: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// The private key is not the key of the chain's first certificate.
    Mismatch {
        /// The certificate chain's file, or `None` for PEM given in memory.
        chain: Option<PathBuf>,
        /// The private key's file, or `None` for PEM given in memory.
        key: Option<PathBuf>,
    },
}

/// Where PEM came from, to name it in errors.
#[derive(Clone, Copy)]
struct Origin<'a> {
    chain: Option<&'a Path>,
    key: Option<&'a Path>,
}

impl ServerCertificate {
    /// Reads a PEM certificate chain (the server's certificate first, then its
    /// intermediates) and a PEM private key (PKCS#8, PKCS#1 or SEC1; not encrypted).
    ///
    /// Each must be a regular file, or a link to one, of at most 1 MiB: a FIFO, a
    /// device or a directory is refused at once, not waited on (a FIFO with no writer
    /// would hold the call, and a reload with it, for good).
    ///
    /// # Errors
    ///
    /// A [`CertificateError`] naming the file and what is wrong with it.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, CertificateError> {
        Ok(Self::new(load_files(chain.as_ref(), key.as_ref())?))
    }

    /// A certificate chain and private key given as PEM in memory.
    ///
    /// # Errors
    ///
    /// A [`CertificateError`] saying what is wrong.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, CertificateError> {
        Ok(Self::new(load(chain, key, Origin::IN_MEMORY)?))
    }

    /// Replaces the certificate with the one in these files, for the handshakes that
    /// start from now on. The files are read as
    /// [`from_pem_files`](Self::from_pem_files) reads them: regular files only.
    ///
    /// # Errors
    ///
    /// A [`CertificateError`] naming the file and what is wrong with it; the current
    /// certificate then stays.
    pub fn reload_from_pem_files(
        &self,
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<(), CertificateError> {
        self.current
            .store(Arc::new(load_files(chain.as_ref(), key.as_ref())?));
        Ok(())
    }

    /// Replaces the certificate with one given as PEM in memory, for the handshakes
    /// that start from now on.
    ///
    /// # Errors
    ///
    /// A [`CertificateError`] saying what is wrong; the current certificate then stays.
    pub fn reload_from_pem(&self, chain: &[u8], key: &[u8]) -> Result<(), CertificateError> {
        self.current
            .store(Arc::new(load(chain, key, Origin::IN_MEMORY)?));
        Ok(())
    }

    /// Puts `loaded`'s certificate in force here, for the handshakes that start from
    /// now on: a reload that reads its files before it changes anything else.
    pub(crate) fn replace_with(&self, loaded: &ServerCertificate) {
        self.current.store(loaded.current());
    }

    /// The certificate chain and key that new handshakes present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    fn new(key: CertifiedKey) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(key)),
        }
    }
}

impl ResolvesServerCert for ServerCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("chain_len", &self.current.load().cert.len())
            .finish_non_exhaustive()
    }
}

impl Origin<'_> {
    const IN_MEMORY: Origin<'static> = Origin {
        chain: None,
        key: None,
    };
}

fn load_files(chain: &Path, key: &Path) -> Result<CertifiedKey, CertificateError> {
    let read = |path: &Path| {
        read_pem_file(path).map_err(|source| CertificateError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let origin = Origin {
        chain: Some(chain),
        key: Some(key),
    };
    load(&read(chain)?, &read(key)?, origin)
}

/// The most a certificate chain or key file may hold, as a configuration file.
const MAX_PEM_FILE_LEN: u64 = 1024 * 1024;

/// The bytes of `path`, a regular file (a link to one too) of at most
/// [`MAX_PEM_FILE_LEN`] bytes. Anything else is refused without waiting on it: a FIFO
/// with no writer would hold a reload, and then the process's exit, for good. On Unix
/// it is opened without blocking (a FIFO's open waits for a writer) and looked at
/// once open, so that a FIFO swapped in after a look at the path cannot hold it either.
fn read_pem_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (a FIFO, a device or a directory): a certificate or key is \
             read from a file",
        ));
    }
    crate::bounded_read::read_at_most(file, MAX_PEM_FILE_LEN, "a certificate or key file")
}

/// Parses and checks a chain and its key: the key must be able to sign with the `ring`
/// provider, and be the first certificate's.
fn load(
    chain_pem: &[u8],
    key_pem: &[u8],
    origin: Origin<'_>,
) -> Result<CertifiedKey, CertificateError> {
    let chain_error = |reason: String| CertificateError::Chain {
        path: origin.chain.map(Path::to_owned),
        reason,
    };
    let key_error = |reason: String| CertificateError::Key {
        path: origin.key.map(Path::to_owned),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| chain_error(format!("malformed PEM: {error}")))?;
    if chain.is_empty() {
        return Err(chain_error(
            "no certificate found (a PEM `BEGIN CERTIFICATE` section)".to_owned(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|error| match error {
        tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => key_error(
            "no private key found (a PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or \
             `BEGIN EC PRIVATE KEY` section; encrypted keys are not supported)"
                .to_owned(),
        ),
        error => key_error(format!("malformed PEM: {error}")),
    })?;
    let signing_key =
        any_supported_type(&key).map_err(|error| key_error(format!("unusable key: {error}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    // `ring` always knows a key's public half, so a mismatch is always caught.
    certified
        .keys_match()
        .map_err(|_| CertificateError::Mismatch {
            chain: origin.chain.map(Path::to_owned),
            key: origin.key.map(Path::to_owned),
        })?;
    Ok(certified)
}

/// `path`, or what stands for PEM given in memory.
struct Named<'a>(&'a Option<PathBuf>, &'static str);

impl fmt::Display for Named<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => write!(f, "the {}", self.1),
        }
    }
}

impl fmt::Display for CertificateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertificateError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            CertificateError::Chain { path, reason } => {
                write!(f, "{}: {reason}", Named(path, "certificate chain"))
            }
            CertificateError::Key { path, reason } => {
                write!(f, "{}: {reason}", Named(path, "private key"))
            }
            CertificateError::Mismatch { chain, key } => write!(
                f,
                "{} does not hold the private key of {}'s first certificate",
                Named(key, "private key"),
                Named(chain, "certificate chain"),
            ),
        }
    }
}

impl Error for CertificateError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CertificateError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}
