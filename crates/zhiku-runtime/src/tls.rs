//! TLS of a server's listeners: `--tls-cert` / `--tls-key` serve every one of them (gRPC,
//! the HTTP side, `/metrics`) over TLS with the same identity.
//!
//! tonic's own TLS serves the gRPC listener ([`Identity::grpc`]); the HTTP listeners take
//! [`Identity::acceptor`] (rustls with the ring provider, the stack tonic already builds) and
//! [`incoming`], which runs each handshake on its own task so that a slow or silent client
//! holds up nobody else.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
pub use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
pub use tokio_rustls::server::TlsStream;

use crate::config::TlsArgs;
use crate::error::RuntimeError;

/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// Handshakes at once; past it, accepting waits for one to end.
const MAX_HANDSHAKES: usize = 256;

/// The PEM certificate chain and private key of `--tls-cert` / `--tls-key`.
#[derive(Clone)]
pub struct Identity {
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identity { .. }")
    }
}

impl Identity {
    /// The identity of the flags; None when they are unset (the listeners speak plain TCP).
    pub async fn from_args(args: &TlsArgs) -> Result<Option<Self>, RuntimeError> {
        let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
            return Ok(None);
        };
        Ok(Some(Self {
            cert: read(cert, "--tls-cert").await?,
            key: read(key, "--tls-key").await?,
        }))
    }

    /// tonic's TLS configuration of a gRPC listener.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            self.cert.clone(),
            self.key.clone(),
        ))
    }

    /// An acceptor for an HTTP/1.1 listener.
    pub fn acceptor(&self) -> Result<TlsAcceptor, RuntimeError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RuntimeError::Tls(format!("--tls-cert: {e}")))?;
        if certs.is_empty() {
            return Err(RuntimeError::Tls("--tls-cert holds no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| RuntimeError::Tls(format!("--tls-key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| RuntimeError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| RuntimeError::Tls(format!("--tls-cert / --tls-key: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// The acceptor of an HTTP listener for the flags; None when they are unset (plain TCP).
pub async fn http_acceptor(args: &TlsArgs) -> Result<Option<TlsAcceptor>, RuntimeError> {
    match Identity::from_args(args).await? {
        Some(identity) => identity.acceptor().map(Some),
        None => Ok(None),
    }
}

async fn read(path: &Path, what: &str) -> Result<Vec<u8>, RuntimeError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| RuntimeError::Tls(format!("cannot read {what} {}: {e}", path.display())))
}

/// Accepts on `listener` and hands over the connections whose TLS handshake succeeded
/// (TCP_NODELAY set, as on the gRPC side). A failed handshake is logged at debug level and
/// dropped. At most [`MAX_HANDSHAKES`] run at once. The accepting stops once the receiver is
/// dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                permit = handshakes.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = tx.closed() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as hyper does.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    rx
}
