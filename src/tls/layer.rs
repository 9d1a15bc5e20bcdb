use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio_rustls::{
    TlsAcceptor,
    rustls::{ServerConfig, crypto::ring},
};
use tower_layer::Layer;

use super::{ServerCertificate, Tls, TlsError};
use crate::{
    ConfigError, config::nonzero, counter::Counter, deadline::Scaler,
    metrics::TLS_HANDSHAKE_ERRORS, throttle::LogThrottle,
};

const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Terminates TLS. See the [module documentation](super).
///
/// Clones share one configuration and one set of counters: keep a clone to read
/// [`stats`](Self::stats).
#[derive(Debug, Clone)]
pub struct TlsLayer {
    shared: Arc<Shared>,
}

/// Builds a [`TlsLayer`].
#[derive(Debug, Clone)]
#[must_use]
pub struct TlsBuilder {
    server: Server,
    handshake_timeout: Duration,
    alpn: Option<Vec<Vec<u8>>>,
    scaler: Scaler,
}

/// Where the server's TLS settings come from.
#[derive(Debug, Clone)]
enum Server {
    Certificate(ServerCertificate),
    Config(Arc<ServerConfig>),
}

/// What a [`TlsLayer`]'s handshakes came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsStats {
    /// Handshakes completed: their connections went on to the service.
    pub handshakes_completed: u64,
    /// Handshakes refused or broken off: not TLS, nothing in common with the server's
    /// settings, or the connection closed or failed before the end.
    pub handshakes_failed: u64,
    /// Handshakes not complete within the handshake timeout.
    pub handshakes_timed_out: u64,
    /// Handshakes broken off because their connection was asked to close (the
    /// server's drain): neither failed nor timed out.
    pub handshakes_closed: u64,
}

/// One line: `handshakes completed 40, failed 2, timed out 1, closed 0`.
impl std::fmt::Display for TlsStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "handshakes completed {}, failed {}, timed out {}, closed {}",
            self.handshakes_completed,
            self.handshakes_failed,
            self.handshakes_timed_out,
            self.handshakes_closed
        )
    }
}

impl TlsLayer {
    /// Presents `certificate` (reloadable through its clones), offers TLS 1.2 and 1.3
    /// with rustls' safe defaults on the `ring` provider, asks no client certificate,
    /// and offers `h2` and `http/1.1` through ALPN.
    pub fn builder(certificate: ServerCertificate) -> TlsBuilder {
        Self::builder_from(Server::Certificate(certificate))
    }

    /// Uses a rustls `ServerConfig` built by hand (client certificates, another crypto
    /// provider, session tickets), with its ALPN protocols unless
    /// [`alpn`](TlsBuilder::alpn) replaces them. For a reloadable certificate, give it a
    /// [`ServerCertificate`] as its certificate resolver.
    pub fn builder_with_config(config: impl Into<Arc<ServerConfig>>) -> TlsBuilder {
        Self::builder_from(Server::Config(config.into()))
    }

    fn builder_from(server: Server) -> TlsBuilder {
        TlsBuilder {
            server,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            alpn: None,
            scaler: Scaler::default(),
        }
    }

    /// Counters, read without locking.
    pub fn stats(&self) -> TlsStats {
        let shared = &self.shared;
        TlsStats {
            handshakes_completed: shared.completed.get(),
            handshakes_failed: shared.broken.get() + shared.failed_io.get(),
            handshakes_timed_out: shared.timed_out.get(),
            handshakes_closed: shared.closed.get(),
        }
    }
}

impl TlsBuilder {
    /// How long a client has for its whole handshake, from the connection's start: a
    /// client that sends half a ClientHello, or trickles one a byte at a time, is cut
    /// then. 10 s by default; `Duration::MAX` waits as good as forever.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Shrinks the handshake timeout as `overload`'s pressure rises. See the
    /// [`overload`](crate::overload) module.
    #[cfg(feature = "overload")]
    pub fn overload(mut self, overload: &crate::overload::Overload) -> Self {
        self.scaler = Scaler::new(overload);
        self
    }

    /// The application protocols offered through ALPN, in the server's order of
    /// preference; `["h2", "http/1.1"]` by default. A client that offers protocols, none
    /// of them in this list, is refused. An empty list negotiates none, and the HTTP
    /// adapter then detects the protocol from the first bytes.
    pub fn alpn<P: Into<Vec<u8>>>(mut self, protocols: impl IntoIterator<Item = P>) -> Self {
        self.alpn = Some(protocols.into_iter().map(Into::into).collect());
        self
    }

    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a zero handshake timeout or an empty ALPN protocol
    /// name; [`ConfigError::Inconsistent`] for an ALPN protocol name longer than 255
    /// bytes, which no client can send.
    pub fn build(self) -> Result<TlsLayer, ConfigError> {
        let handshake_timeout = nonzero(self.handshake_timeout, "handshake_timeout")?;
        if let Some(alpn) = &self.alpn {
            for protocol in alpn {
                nonzero(protocol.len(), "alpn")?;
                if protocol.len() > 255 {
                    return Err(ConfigError::Inconsistent {
                        reason: "an ALPN protocol name is at most 255 bytes",
                    });
                }
            }
        }
        let config = match self.server {
            Server::Certificate(certificate) => {
                // The provider is chosen here, not left to rustls' process-wide default,
                // which fails when a dependency compiles another provider in as well.
                let mut config =
                    ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
                        .with_safe_default_protocol_versions()
                        .expect("ring supports TLS 1.2 and 1.3")
                        .with_no_client_auth()
                        .with_cert_resolver(Arc::new(certificate));
                config.alpn_protocols = self
                    .alpn
                    .unwrap_or_else(|| vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
                Arc::new(config)
            }
            Server::Config(config) => match self.alpn {
                Some(alpn) => {
                    let mut config = Arc::unwrap_or_clone(config);
                    config.alpn_protocols = alpn;
                    Arc::new(config)
                }
                None => config,
            },
        };
        Ok(TlsLayer {
            shared: Arc::new(Shared {
                acceptor: TlsAcceptor::from(config),
                handshake_timeout,
                scaler: self.scaler,
                log: LogThrottle::new(Duration::from_secs(1)),
                completed: Counter::default(),
                broken: handshake_error("protocol"),
                failed_io: handshake_error("io"),
                timed_out: handshake_error("timeout"),
                closed: handshake_error("close_requested"),
            }),
        })
    }
}

impl<S> Layer<S> for TlsLayer {
    type Service = Tls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tls::new(inner, self.shared.clone())
    }
}

/// The configuration and the counters every clone shares.
pub(super) struct Shared {
    pub(super) acceptor: TlsAcceptor,
    pub(super) handshake_timeout: Duration,
    /// What shrinks the handshake timeout under load.
    pub(super) scaler: Scaler,
    log: LogThrottle,
    completed: Counter,
    /// Handshakes the client broke: `TlsError::Protocol`.
    broken: Counter,
    /// Handshakes that failed reading or writing: `TlsError::Io`.
    failed_io: Counter,
    timed_out: Counter,
    /// Handshakes ended by a close request: `TlsError::CloseRequested`.
    closed: Counter,
}

fn handshake_error(reason: &'static str) -> Counter {
    Counter::metric(TLS_HANDSHAKE_ERRORS, &[("reason", reason)])
}

impl Shared {
    pub(super) fn completed(&self) {
        self.completed.add();
    }

    /// Counts and logs a handshake that did not complete.
    pub(super) fn failed(&self, error: TlsError, peer: SocketAddr) -> TlsError {
        match error {
            TlsError::Timeout(_) => self.timed_out.add(),
            TlsError::Protocol(_) => self.broken.add(),
            TlsError::Io(_) => self.failed_io.add(),
            TlsError::CloseRequested => {
                // The server's own doing: no failure to tell the operator of.
                self.closed.add();
                tracing::debug!(%peer, %error, "TLS handshake ended by a close request");
                return error;
            }
        }
        if let Some(suppressed) = self.log.allow() {
            tracing::info!(%peer, %error, suppressed, "TLS handshake failed");
        }
        error
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("alpn", &self.acceptor.config().alpn_protocols)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_print_on_one_line() {
        let stats = TlsStats {
            handshakes_completed: 40,
            handshakes_failed: 2,
            handshakes_timed_out: 1,
            handshakes_closed: 3,
        };
        assert_eq!(
            stats.to_string(),
            "handshakes completed 40, failed 2, timed out 1, closed 3"
        );
    }
}
