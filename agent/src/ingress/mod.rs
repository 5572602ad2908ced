//! Kubernetes mode: routes come from Ingress objects. Two reflectors (Ingresses, and Services
//! for named ports) keep local copies current through list/watch — re-listing by themselves
//! after a broken watch or 410 Gone — and every change recomputes the route set with the pure
//! [`translate`]. Connected sessions then send the gateway the difference.

pub mod translate;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::Shared;
use crate::config::Config;
use crate::upstream::{Rules, Target};
use translate::{Skipped, UpstreamMode, in_class, translate};

/// Watches Ingresses and Services and publishes the routes they describe.
pub struct IngressSource {
    client: Client,
    namespaces: Vec<String>,
    class: Option<String>,
    mode: UpstreamMode,
}

impl IngressSource {
    /// A client from `--kubeconfig`, else in-cluster config, else `KUBECONFIG`.
    pub async fn connect(config: &Config) -> Result<IngressSource, String> {
        let kube_config = match &config.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                format!("no Kubernetes configuration (in-cluster or KUBECONFIG): {e}")
            })?,
        };
        let client =
            Client::try_from(kube_config).map_err(|e| format!("Kubernetes client: {e}"))?;
        Ok(IngressSource {
            client,
            namespaces: config.namespaces.clone(),
            class: config.ingress_class.clone(),
            mode: match &config.ingress_controller_url {
                Some(u) => UpstreamMode::Controller(u.clone()),
                None => UpstreamMode::Service,
            },
        })
    }

    /// Runs until the agent stops.
    pub async fn run(self, shared: Arc<Shared>) {
        let (ingresses, ing_writer) = reflector::store::<Ingress>();
        let (services, svc_writer) = reflector::store::<Service>();
        let ing_events = reflector::reflector(
            ing_writer,
            watcher(
                Api::<Ingress>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .map(|e| e.map(|e| relevant(&e)));
        let svc_events = reflector::reflector(
            svc_writer,
            watcher(
                Api::<Service>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .default_backoff(),
        )
        .map(|e| e.map(|e| relevant(&e)));
        let mut events = std::pin::pin!(futures_util::stream::select(ing_events, svc_events));
        let statics = Rules::pairs(&shared.config.routes).unwrap_or_default();
        let mut last_skipped: Vec<Skipped> = Vec::new();
        while let Some(ev) = events.next().await {
            match ev {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Kubernetes watch failed; retrying with backoff");
                    continue;
                }
            }
            let (pairs, skipped) = self.routes(&ingresses, &services);
            if skipped != last_skipped {
                for s in &skipped {
                    tracing::warn!(host = ?s.host, path = %s.path, reason = %s.reason, "ingress path not published");
                }
                last_skipped = skipped;
            }
            tracing::info!(routes = pairs.len(), "routes from Ingresses updated");
            let mut all = statics.clone();
            all.extend(pairs);
            shared.set_routes(all);
        }
    }

    /// Every published route from the current Ingresses.
    fn routes(
        &self,
        ingresses: &Store<Ingress>,
        services: &Store<Service>,
    ) -> (
        Vec<(tunnelgate_proto::routes::RouteSpec, Target)>,
        Vec<Skipped>,
    ) {
        let services = services.state();
        let by_name: HashMap<(&str, &str), &Service> = services
            .iter()
            .filter_map(|s| {
                Some((
                    (
                        s.metadata.namespace.as_deref()?,
                        s.metadata.name.as_deref()?,
                    ),
                    s.as_ref(),
                ))
            })
            .collect();
        let mut pairs = Vec::new();
        let mut skipped = Vec::new();
        let mut list = ingresses.state();
        // Stable order: the same objects always give the same route set.
        list.sort_by(|a, b| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        for ing in list {
            let ns = ing.metadata.namespace.as_deref().unwrap_or("default");
            if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == ns) {
                continue;
            }
            if !in_class(&ing, self.class.as_deref()) {
                continue;
            }
            let (routes, skip) = translate(
                &ing,
                |ns, name| by_name.get(&(ns, name)).copied(),
                &self.mode,
            );
            skipped.extend(skip);
            for r in routes {
                match Target::parse(&r.upstream) {
                    Ok(t) => pairs.push((r.spec, t)),
                    Err(e) => skipped.push(Skipped {
                        host: Some(r.spec.host),
                        path: r.spec.path,
                        reason: e,
                    }),
                }
            }
        }
        (pairs, skipped)
    }
}

/// Whether a watcher event changes what is published: the initial list counts once, when done.
fn relevant<K>(e: &watcher::Event<K>) -> bool {
    matches!(
        e,
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
    )
}
