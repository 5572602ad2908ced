//! From Kubernetes Ingress objects to routes: a pure function, tested on fixtures.
//!
//! Each rule with a host and an `http` section gives one route per path. A Service port given
//! by name is resolved through the Service's `spec.ports`. Hosts listed under `spec.tls` are
//! marked TLS. Rules without a host, and `defaultBackend`, cannot name a public host and are
//! reported as skipped.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use tunnelgate_proto::routes::{PathType, RouteSpec};

/// The ingress-nginx annotation naming the backend protocol (`HTTPS` for TLS upstreams).
pub const BACKEND_PROTOCOL: &str = "nginx.ingress.kubernetes.io/backend-protocol";

/// Annotations never copied into routes (large, and of no use to the gateway).
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

/// Where translated routes send requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Straight to the Service: `http://{service}.{namespace}.svc:{port}`.
    Service,
    /// Through the ingress controller at this URL, keeping `Host`.
    Controller(String),
}

/// A route and the upstream URL the agent sends it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    pub spec: RouteSpec,
    pub upstream: String,
}

/// What a translation could not use, and why (for logs and Events on the Ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub host: Option<String>,
    pub path: String,
    pub reason: String,
}

/// Whether `ing` belongs to `class` (None: every Ingress).
pub fn in_class(ing: &Ingress, class: Option<&str>) -> bool {
    let Some(want) = class else {
        return true;
    };
    let named = ing
        .spec
        .as_ref()
        .and_then(|s| s.ingress_class_name.as_deref())
        .or_else(|| {
            ing.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("kubernetes.io/ingress.class"))
                .map(String::as_str)
        });
    named == Some(want)
}

/// The routes of one Ingress. `service` finds a Service by namespace and name.
pub fn translate<'a>(
    ing: &Ingress,
    service: impl Fn(&str, &str) -> Option<&'a Service>,
    mode: &UpstreamMode,
) -> (Vec<Translated>, Vec<Skipped>) {
    let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    let Some(spec) = &ing.spec else {
        return (out, skipped);
    };
    let tls_hosts: Vec<&str> = spec
        .tls
        .iter()
        .flatten()
        .flat_map(|t| t.hosts.iter().flatten())
        .map(String::as_str)
        .collect();
    // The annotation users already write for ingress-nginx picks an https:// upstream.
    let scheme = match ing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BACKEND_PROTOCOL))
    {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    let annotations: BTreeMap<String, String> = ing
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !DROPPED_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if spec.default_backend.is_some() {
        skipped.push(Skipped {
            host: None,
            path: "/".into(),
            reason: "defaultBackend names no host; it is not published".into(),
        });
    }
    for rule in spec.rules.iter().flatten() {
        let Some(http) = &rule.http else { continue };
        for p in &http.paths {
            let path = p.path.clone().unwrap_or_else(|| "/".into());
            let Some(host) = rule.host.clone() else {
                skipped.push(Skipped {
                    host: None,
                    path,
                    reason: "rule without a host is not published".into(),
                });
                continue;
            };
            let Some(backend) = &p.backend.service else {
                skipped.push(Skipped {
                    host: Some(host),
                    path,
                    reason: "only Service backends are supported".into(),
                });
                continue;
            };
            let port = match backend.port.as_ref() {
                Some(port) => match (port.number, port.name.as_deref()) {
                    (Some(n), _) => u16::try_from(n).ok(),
                    (None, Some(name)) => service(ns, &backend.name).and_then(|svc| {
                        svc.spec
                            .as_ref()?
                            .ports
                            .iter()
                            .flatten()
                            .find(|sp| sp.name.as_deref() == Some(name))
                            .and_then(|sp| u16::try_from(sp.port).ok())
                    }),
                    (None, None) => None,
                },
                None => None,
            };
            let Some(port) = port else {
                skipped.push(Skipped {
                    host: Some(host),
                    path,
                    reason: format!(
                        "port of Service {ns}/{} cannot be resolved (missing Service or port name)",
                        backend.name
                    ),
                });
                continue;
            };
            let path_type = match p.path_type.as_str() {
                "Exact" => PathType::Exact,
                "Prefix" => PathType::Prefix,
                _ => PathType::ImplementationSpecific,
            };
            let upstream = match mode {
                UpstreamMode::Service => {
                    format!("{scheme}://{}.{ns}.svc:{port}", backend.name)
                }
                UpstreamMode::Controller(url) => url.clone(),
            };
            out.push(Translated {
                spec: RouteSpec {
                    tls: tls_hosts.contains(&host.as_str()),
                    host,
                    path,
                    path_type,
                    service: Some(backend.name.clone()),
                    namespace: Some(ns.to_string()),
                    port: Some(port),
                    annotations: annotations.clone(),
                },
                upstream,
            });
        }
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(yaml: &str) -> Ingress {
        yaml_serde::from_str(yaml).expect("fixture")
    }

    const WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
  annotations:
    nginx.ingress.kubernetes.io/rewrite-target: /
    kubectl.kubernetes.io/last-applied-configuration: "{huge}"
spec:
  ingressClassName: nginx
  tls:
    - hosts: [secure.demo.localhost]
  rules:
    - host: app.demo.localhost
      http:
        paths:
          - path: /
            pathType: Prefix
            backend: {service: {name: web, port: {number: 80}}}
          - path: /api
            pathType: Exact
            backend: {service: {name: api, port: {name: http}}}
    - host: secure.demo.localhost
      http:
        paths:
          - pathType: ImplementationSpecific
            backend: {service: {name: web, port: {number: 8443}}}
    - http:
        paths:
          - path: /nohost
            pathType: Prefix
            backend: {service: {name: web, port: {number: 80}}}
"#;

    fn api_service() -> Service {
        yaml_serde::from_str(
            r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  ports:
    - {name: metrics, port: 9090}
    - {name: http, port: 8080, targetPort: 80}
"#,
        )
        .unwrap()
    }

    #[test]
    fn paths_ports_tls_and_annotations() {
        let svc = api_service();
        let (routes, skipped) = translate(
            &ingress(WEB),
            |ns, name| (ns == "shop" && name == "api").then_some(&svc),
            &UpstreamMode::Service,
        );
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].spec.host, "app.demo.localhost");
        assert_eq!(routes[0].upstream, "http://web.shop.svc:80");
        assert_eq!(routes[1].spec.path_type, PathType::Exact);
        assert_eq!(
            routes[1].spec.port,
            Some(8080),
            "named port resolved through the Service"
        );
        assert_eq!(routes[1].upstream, "http://api.shop.svc:8080");
        assert!(routes[2].spec.tls);
        assert!(!routes[0].spec.tls);
        assert_eq!(routes[2].spec.path, "/");
        assert!(
            routes[0]
                .spec
                .annotations
                .contains_key("nginx.ingress.kubernetes.io/rewrite-target")
        );
        assert!(
            !routes[0]
                .spec
                .annotations
                .contains_key("kubectl.kubernetes.io/last-applied-configuration")
        );
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].reason.contains("without a host"));
    }

    #[test]
    fn backend_protocol_https_makes_an_https_upstream() {
        let mut ing = ingress(WEB);
        ing.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(BACKEND_PROTOCOL.into(), "HTTPS".into());
        let svc = api_service();
        let (routes, _) = translate(
            &ing,
            |ns, name| (ns == "shop" && name == "api").then_some(&svc),
            &UpstreamMode::Service,
        );
        assert_eq!(routes[0].upstream, "https://web.shop.svc:80");
        assert_eq!(routes[1].upstream, "https://api.shop.svc:8080");
    }

    #[test]
    fn unresolvable_named_port_is_skipped_with_reason() {
        let (routes, skipped) = translate(&ingress(WEB), |_, _| None, &UpstreamMode::Service);
        assert_eq!(routes.len(), 2);
        assert!(skipped.iter().any(|s| s.reason.contains("shop/api")));
    }

    #[test]
    fn controller_mode_and_class_filter() {
        let ing = ingress(WEB);
        let (routes, _) = translate(
            &ing,
            |_, _| None,
            &UpstreamMode::Controller("http://ingress-nginx.ingress-nginx.svc:80".into()),
        );
        assert!(
            routes
                .iter()
                .all(|r| r.upstream == "http://ingress-nginx.ingress-nginx.svc:80")
        );
        assert!(in_class(&ing, Some("nginx")));
        assert!(!in_class(&ing, Some("traefik")));
        assert!(in_class(&ing, None));
    }
}
