//! Connecting to a zhiku server: plain (`http://`) or TLS (`https://`), trusting the system
//! roots and, where given, a CA certificate of one's own.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// An endpoint for `address`; `https://` addresses speak TLS, verified against the system
/// roots and `ca_cert` (a PEM file) when given.
pub fn endpoint(address: &str, ca_cert: Option<&Path>) -> Result<Endpoint, String> {
    endpoint_for(address, ca_cert, None)
}

/// [`endpoint`], verifying TLS against `tls_domain` when given rather than the address's
/// host: for an address resolved from a name (a replica behind a headless service).
pub fn endpoint_for(
    address: &str,
    ca_cert: Option<&Path>,
    tls_domain: Option<&str>,
) -> Result<Endpoint, String> {
    let endpoint = Endpoint::from_shared(address.to_owned()).map_err(|e| e.to_string())?;
    if !address.starts_with("https://") {
        return Ok(endpoint);
    }
    let mut tls = ClientTlsConfig::new().with_native_roots();
    if let Some(path) = ca_cert {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read the CA certificate {}: {e}", path.display()))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    if let Some(domain) = tls_domain {
        tls = tls.domain_name(domain);
    }
    endpoint.tls_config(tls).map_err(|e| e.to_string())
}
