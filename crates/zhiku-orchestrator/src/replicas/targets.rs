//! Where a downstream service's replicas are: a comma-separated list of addresses, and
//! `dns://name:port` (or `dns+https://name:port`) for every address a name resolves to, as
//! a Kubernetes headless service gives one per ready pod.

use std::collections::BTreeSet;

/// One element of an address list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fixed address, `http://host:port` or `https://host:port`.
    Fixed(String),
    /// Every address `host` resolves to, on `port`, re-resolved periodically.
    Dns {
        host: String,
        port: u16,
        /// TLS, verified against `host` (not the resolved address).
        tls: bool,
    },
}

/// The targets of `list` (`http://a:1,http://b:1`, `dns://svc:50054`, or a mix). Empty
/// elements are ignored; an address list without any element is an error.
pub fn parse(list: &str) -> Result<Vec<Target>, String> {
    let mut targets = Vec::new();
    for element in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (rest, tls) = if let Some(rest) = element.strip_prefix("dns://") {
            (rest, false)
        } else if let Some(rest) = element.strip_prefix("dns+https://") {
            (rest, true)
        } else {
            targets.push(Target::Fixed(element.to_owned()));
            continue;
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{element}` names no port (dns://name:port)"))?;
        let port = port
            .parse::<u16>()
            .map_err(|e| format!("`{element}`: the port `{port}` is not a port: {e}"))?;
        if host.is_empty() {
            return Err(format!("`{element}` names no host (dns://name:port)"));
        }
        targets.push(Target::Dns {
            host: host.to_owned(),
            port,
            tls,
        });
    }
    if targets.is_empty() {
        return Err("no address given".into());
    }
    Ok(targets)
}

/// An address resolved from a DNS target: what to connect to, and the name to verify TLS
/// against.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Resolved {
    pub address: String,
    pub tls_domain: Option<String>,
}

/// The addresses of `targets` now: fixed ones as they are, DNS ones resolved (a name that
/// does not resolve contributes nothing, and the error is returned beside the rest).
pub async fn resolve(targets: &[Target]) -> (BTreeSet<Resolved>, Vec<String>) {
    let mut addresses = BTreeSet::new();
    let mut errors = Vec::new();
    for target in targets {
        match target {
            Target::Fixed(address) => {
                addresses.insert(Resolved {
                    address: address.clone(),
                    tls_domain: None,
                });
            }
            Target::Dns { host, port, tls } => {
                match tokio::net::lookup_host((host.as_str(), *port)).await {
                    Ok(found) => {
                        let scheme = if *tls { "https" } else { "http" };
                        for socket in found {
                            addresses.insert(Resolved {
                                address: format!("{scheme}://{socket}"),
                                tls_domain: tls.then(|| host.clone()),
                            });
                        }
                    }
                    Err(e) => errors.push(format!("dns://{host}:{port}: {e}")),
                }
            }
        }
    }
    (addresses, errors)
}

/// Whether `targets` name any DNS target (then they are re-resolved periodically).
pub fn dynamic(targets: &[Target]) -> bool {
    targets.iter().any(|t| matches!(t, Target::Dns { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_splits_on_commas_and_dns_names_carry_their_port() {
        let targets =
            parse("http://127.0.0.1:1, https://b:2,dns://gen.zhiku.svc:50054,dns+https://e:3")
                .unwrap();
        assert_eq!(
            targets,
            [
                Target::Fixed("http://127.0.0.1:1".into()),
                Target::Fixed("https://b:2".into()),
                Target::Dns {
                    host: "gen.zhiku.svc".into(),
                    port: 50054,
                    tls: false
                },
                Target::Dns {
                    host: "e".into(),
                    port: 3,
                    tls: true
                },
            ]
        );
        assert!(parse(" , ").is_err());
        assert!(parse("dns://nameonly").is_err());
        assert!(parse("dns://:50054").is_err());
        assert!(parse("dns://a:port").is_err());
    }

    #[tokio::test]
    async fn localhost_resolves_to_its_addresses_with_the_port() {
        let (found, errors) = resolve(&parse("dns://localhost:50054,http://x:1").unwrap()).await;
        assert!(errors.is_empty(), "{errors:?}");
        assert!(found.iter().any(|r| r.address == "http://127.0.0.1:50054"));
        assert!(found.iter().any(|r| r.address == "http://x:1"));
    }
}
