//! The one error type the library shows its callers.
//!
//! Everything that can go wrong while *starting* the emulator (binding, TLS material, the
//! record file) is an [`EmulatorError`]. Errors while serving a request never escape: they
//! become HTTP responses shaped like the emulated provider's.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address that was asked for.
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Generating the CA or the server certificate failed.
    #[error("cannot generate TLS certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the generated certificate or key.
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// A file (CA output, record file) could not be written.
    #[error("cannot write {path}: {source}")]
    File {
        /// The file in question.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Other I/O failure at start-up (for example reading the bound address).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
