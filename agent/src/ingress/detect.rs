//! Is this cluster private? Judged from the ingress controller's Service, as in the original
//! design: no such Service, a NodePort or ClusterIP one, or a LoadBalancer still without an
//! external address after the wait ⇒ private; a LoadBalancer with an external address ⇒ public.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;

/// Default controller Service, `namespace/name`.
pub const DEFAULT_CONTROLLER_SERVICE: &str = "ingress-nginx/ingress-nginx-controller";
/// How long a LoadBalancer may wait for an external address before the cluster counts as
/// private.
pub const DEFAULT_LB_WAIT: &str = "2m";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    Private(String),
    Public(String),
    /// A LoadBalancer is waiting for its address; not decided yet.
    Pending,
}

impl Detection {
    pub fn is_private(&self) -> Option<bool> {
        match self {
            Detection::Private(_) => Some(true),
            Detection::Public(_) => Some(false),
            Detection::Pending => None,
        }
    }
}

/// Classifies the cluster from its controller Service, `waited` after the agent started.
pub fn classify(svc: Option<&Service>, waited: Duration, wait: Duration) -> Detection {
    let Some(svc) = svc else {
        return Detection::Private("no ingress controller Service".into());
    };
    let kind = svc
        .spec
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("ClusterIP");
    if kind != "LoadBalancer" {
        return Detection::Private(format!("ingress controller Service is {kind}"));
    }
    let address = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|i| {
            i.iter()
                .find_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
        });
    match address {
        Some(a) => Detection::Public(a),
        None if waited >= wait => Detection::Private(format!(
            "LoadBalancer has no external address after {}s",
            wait.as_secs()
        )),
        None => Detection::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(yaml: &str) -> Service {
        yaml_serde::from_str(yaml).unwrap()
    }

    const WAIT: Duration = Duration::from_secs(120);

    #[test]
    fn every_case() {
        assert!(
            matches!(classify(None, Duration::ZERO, WAIT), Detection::Private(r) if r.contains("no ingress"))
        );
        let node_port = svc("metadata: {name: c}\nspec: {type: NodePort}\n");
        assert!(
            matches!(classify(Some(&node_port), Duration::ZERO, WAIT), Detection::Private(r) if r.contains("NodePort"))
        );
        let lb = svc("metadata: {name: c}\nspec: {type: LoadBalancer}\n");
        assert_eq!(
            classify(Some(&lb), Duration::from_secs(10), WAIT),
            Detection::Pending
        );
        assert!(
            matches!(classify(Some(&lb), WAIT, WAIT), Detection::Private(r) if r.contains("after 120s"))
        );
        let public = svc(
            "metadata: {name: c}\nspec: {type: LoadBalancer}\nstatus: {loadBalancer: {ingress: [{ip: 203.0.113.7}]}}\n",
        );
        assert_eq!(
            classify(Some(&public), Duration::ZERO, WAIT),
            Detection::Public("203.0.113.7".into())
        );
        let by_name = svc(
            "metadata: {name: c}\nspec: {type: LoadBalancer}\nstatus: {loadBalancer: {ingress: [{hostname: lb.example.com}]}}\n",
        );
        assert_eq!(
            classify(Some(&by_name), Duration::ZERO, WAIT).is_private(),
            Some(false)
        );
    }
}
