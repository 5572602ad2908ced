//! The claim policy, pure: which cluster a host names, and which hosts a cluster may publish —
//! its own names under the gateway's domain (nested `{name}.{cluster}.{domain}` or flat
//! `{name}--{cluster}.{domain}`) and the custom domains registered to it, never the gateway's
//! own names; then each route of an `ingress_routes` message vetted against that and the
//! field bounds.

use tunnelgate_proto::control::{RouteRejection, RoutesAck};
use tunnelgate_proto::routes::{RouteSpec, check_route_bounds, check_route_host};

/// The gateway's naming: its domain and its own names (`--public-host`), never a tenant's.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub domain: &'a str,
    pub reserved: &'a [String],
}

impl Names<'_> {
    /// The cluster whose names include `host`: the label just before the domain.
    /// Two naming schemes, both under the gateway's domain: nested, `{name}.{cluster}.{domain}`
    /// (the label before the domain; a wildcard certificate per cluster), and flat,
    /// `{name}--{cluster}.{domain}` (one label, so one `*.{domain}` certificate covers every
    /// tenant; cluster ids never contain `--`, which keeps it unambiguous).
    pub fn owner_label<'h>(&self, host: &'h str) -> Option<&'h str> {
        let rest = host.strip_suffix(self.domain)?.strip_suffix('.')?;
        if !rest.contains('.')
            && let Some((name, cluster)) = rest.rsplit_once("--")
        {
            return Some(cluster).filter(|c| !c.is_empty() && !name.is_empty());
        }
        Some(rest.rsplit('.').next().unwrap_or(rest)).filter(|c| !c.is_empty())
    }

    /// Why `cluster` may not publish `host`, if it may not.
    pub fn check(
        &self,
        cluster: &str,
        host: &str,
        registered_to: impl FnOnce(&str) -> Option<String>,
    ) -> Result<(), String> {
        check_route_host(host).map_err(|e| format!("invalid host: {e}"))?;
        let name = host.strip_prefix("*.").unwrap_or(host);
        let covers = |g: &String| match host.strip_prefix("*.") {
            Some(parent) => g == parent || g.split_once('.').is_some_and(|(_, p)| p == parent),
            None => g == host,
        };
        if self.reserved.iter().any(covers) {
            return Err(format!("{host} is a name of the gateway itself"));
        }
        let own = format!("{cluster}.{}", self.domain);
        let flat = host.strip_suffix(&format!("--{cluster}.{}", self.domain));
        let under_gateway = name == self.domain || name.ends_with(&format!(".{}", self.domain));
        if name == own
            || name.ends_with(&format!(".{own}"))
            || flat.is_some_and(|n| !n.is_empty() && !n.contains('.') && !n.starts_with('*'))
        {
            Ok(())
        } else if !under_gateway {
            // A custom domain: publishable once registered to this cluster, served only while
            // verified (`domains.rs`).
            match registered_to(host) {
                Some(c) if c == cluster => Ok(()),
                Some(_) => Err(format!("{host} is registered to another cluster")),
                None => Err(format!(
                    "{host} is not a domain of cluster {cluster:?}: register it first \
                     (admin API: POST /admin/v1/clusters/{cluster}/domains) and publish its DNS record"
                )),
            }
        } else {
            Err(format!(
                "cluster {cluster:?} may only publish {own}, names under it, and NAME--{cluster}.{}",
                self.domain
            ))
        }
    }

    /// Checks the routes of an `ingress_routes` message from `cluster`'s agent one by one:
    /// normalised, within the cluster's names, within the field bounds. Refused routes are
    /// listed in the acknowledgement and never stored.
    pub fn vet(
        &self,
        cluster: &str,
        routes: Vec<RouteSpec>,
        registered_to: impl Fn(&str) -> Option<String>,
    ) -> (Vec<RouteSpec>, RoutesAck) {
        let mut ack = RoutesAck::default();
        let mut good = Vec::with_capacity(routes.len());
        for mut r in routes {
            let verdict = check_route_bounds(&r).and_then(|()| {
                r.host = r.host.trim_end_matches('.').to_ascii_lowercase();
                if r.path.is_empty() {
                    r.path = "/".into();
                }
                if r.path_type != tunnelgate_proto::routes::PathType::Exact && r.path.len() > 1 {
                    r.path = r.path.trim_end_matches('/').to_string();
                }
                self.check(cluster, &r.host, &registered_to)?;
                let normal = tunnelgate_proto::routes::normalize_path(&r.path)
                    .map_err(|e| format!("invalid path: {e}"))?;
                if normal != r.path {
                    return Err(format!("path is not in normal form (would be {normal:?})"));
                }
                Ok(())
            });
            match verdict {
                Ok(()) => good.push(r),
                Err(reason) => {
                    let cut = |s: &str| s.chars().take(256).collect::<String>();
                    ack.rejected.push(RouteRejection {
                        host: cut(&r.host),
                        path: cut(&r.path),
                        reason,
                    })
                }
            }
        }
        (good, ack)
    }
}
