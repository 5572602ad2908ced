//! DNS lookups that prove a tenant controls a custom domain: a CNAME to the cluster's target,
//! or a TXT record `_tunnelgate.{hostname}` holding the domain's challenge. Through the
//! system's resolver, or `--dns-server HOST:PORT`; nothing is cached (a removed record must be
//! seen at the next check).

use std::net::SocketAddr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// `hostname` is a CNAME to the target.
    Cname,
    /// `_tunnelgate.{hostname}` holds the challenge.
    Txt,
    /// Neither: why, for the operator.
    None(String),
}

pub struct Dns {
    resolver: TokioResolver,
}

/// A name as an absolute DNS name (no search domains).
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn same(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

impl Dns {
    /// The resolver at `server`, or the system's.
    pub fn new(server: Option<SocketAddr>) -> Result<Dns, String> {
        let mut builder = match server {
            Some(addr) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
                Resolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => Resolver::builder_tokio()
                .map_err(|e| format!("the system's DNS configuration: {e}"))?,
        };
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Dns { resolver })
    }

    /// Whether `hostname` proves itself: a CNAME to `target`, or the TXT `challenge`.
    pub async fn prove(&self, hostname: &str, target: &str, challenge: &str) -> Proof {
        let mut why = Vec::new();
        match self
            .resolver
            .lookup(fqdn(hostname), RecordType::CNAME)
            .await
        {
            Ok(l) => {
                let found: Vec<String> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::CNAME(c) => Some(c.0.to_ascii()),
                        _ => None,
                    })
                    .collect();
                if found.iter().any(|c| same(c, target)) {
                    return Proof::Cname;
                }
                if !found.is_empty() {
                    why.push(format!(
                        "{hostname} is a CNAME to {}, not {target}",
                        found.join(", ").trim_end_matches('.')
                    ));
                }
            }
            Err(e) => tracing::debug!(%hostname, error = %e, "no CNAME"),
        }
        let txt_name = format!("_tunnelgate.{hostname}");
        match self.resolver.lookup(fqdn(&txt_name), RecordType::TXT).await {
            Ok(l) => {
                let found: Vec<String> = l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TXT(t) => Some(t.to_string()),
                        _ => None,
                    })
                    .collect();
                if found.iter().any(|t| t == challenge) {
                    return Proof::Txt;
                }
                if !found.is_empty() {
                    why.push(format!("{txt_name} does not hold the challenge"));
                }
            }
            Err(e) => tracing::debug!(%txt_name, error = %e, "no TXT"),
        }
        if why.is_empty() {
            why.push(format!(
                "no CNAME from {hostname} to {target} and no TXT record at {txt_name}"
            ));
        }
        Proof::None(why.join("; "))
    }
}
