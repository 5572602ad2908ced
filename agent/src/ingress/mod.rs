//! Kubernetes mode: routes come from Ingress objects. Two reflectors (Ingresses, and Services
//! for named ports) keep local copies current through list/watch — re-listing by themselves
//! after a broken watch or 410 Gone — and every change recomputes the route set with the pure
//! [`translate`]. Connected sessions then send the gateway the difference.
//!
//! The cluster sees what the gateway did: each Ingress with a published route gets the
//! gateway's name in `status.loadBalancer`, and a host the gateway refused becomes a Warning
//! Event on its Ingress, so `kubectl describe ingress` explains it.

pub mod detect;
pub mod translate;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::rules::{Rules, Target};
use crate::{AckReport, Shared};
use translate::{Skipped, UpstreamMode, in_class, translate};

/// Watches Ingresses and Services and publishes the routes they describe.
pub struct IngressSource {
    client: Client,
    namespaces: Vec<String>,
    class: Option<String>,
    mode: UpstreamMode,
    /// The ingress controller's Service (namespace, name), for detection.
    controller: (String, String),
    lb_wait: std::time::Duration,
    skip_if_public: bool,
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
            controller: config
                .detect_service
                .split_once('/')
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .ok_or("--detect-service must be NAMESPACE/NAME")?,
            lb_wait: config.detect_wait,
            skip_if_public: config.skip_if_public,
        })
    }

    /// Runs until the agent stops.
    pub async fn run(self, shared: Arc<Shared>, mut acks: mpsc::Receiver<AckReport>) {
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
        let mut feedback = Feedback::new(self.client.clone());
        let started = std::time::Instant::now();
        let mut detection = detect::Detection::Pending;
        // Re-judges a LoadBalancer still waiting for its address.
        let mut recheck = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            let ev = tokio::select! {
                _ = recheck.tick() => Ok(matches!(detection, detect::Detection::Pending)),
                ev = events.next() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
                Some(ack) = acks.recv() => {
                    feedback.report(&ingresses, ack).await;
                    continue;
                }
            };
            match ev {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Kubernetes watch failed; retrying with backoff");
                    continue;
                }
            }
            let judged = {
                let (ns, name) = &self.controller;
                let state = services.state();
                let svc = state.iter().find(|s| {
                    s.metadata.namespace.as_deref() == Some(ns.as_str())
                        && s.metadata.name.as_deref() == Some(name.as_str())
                });
                detect::classify(svc.map(|s| s.as_ref()), started.elapsed(), self.lb_wait)
            };
            if judged != detection {
                tracing::info!(detection = ?judged, "cluster type");
                detection = judged;
                shared.set_private(detection.is_private());
            }
            let (mut pairs, skipped) = self.routes(&ingresses, &services);
            if self.skip_if_public && matches!(detection, detect::Detection::Public(_)) {
                pairs.clear();
            }
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

/// Writes what the gateway did back into the cluster: Ingress status and Events.
struct Feedback {
    client: Client,
    recorder: Recorder,
    /// (namespace, name, host, reason) already reported, so an Event is recorded once.
    reported: HashSet<(String, String, String, String)>,
    accepted: HashSet<(String, String)>,
}

impl Feedback {
    fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: "tunnelgate-agent".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Feedback {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            reported: HashSet::new(),
            accepted: HashSet::new(),
        }
    }

    async fn report(&mut self, ingresses: &Store<Ingress>, ack: AckReport) {
        self.accepted
            .extend(ack.accepted.into_iter().map(|k| (k.host, k.path)));
        for ing in ingresses.state() {
            let (Some(ns), Some(name)) =
                (ing.metadata.namespace.clone(), ing.metadata.name.clone())
            else {
                continue;
            };
            let keys = ingress_keys(&ing);
            for r in ack
                .rejected
                .iter()
                .filter(|r| keys.contains(&(r.host.clone(), r.path.clone())))
            {
                let seen = (ns.clone(), name.clone(), r.host.clone(), r.reason.clone());
                if !self.reported.insert(seen) {
                    continue;
                }
                let ev = KubeEvent {
                    type_: EventType::Warning,
                    reason: "HostRejected".into(),
                    note: Some(format!(
                        "gateway refused {}{}: {}",
                        r.host, r.path, r.reason
                    )),
                    action: "Publish".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &ing.object_ref(&())).await {
                    tracing::warn!(namespace = %ns, ingress = %name, error = %e, "cannot record Event");
                }
            }
            let Some(hostname) = ack.public_host.as_deref() else {
                continue;
            };
            let published = keys.iter().any(|k| self.accepted.contains(k));
            let current = ing
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .and_then(|i| i.first())
                .and_then(|i| i.hostname.as_deref());
            if published && current != Some(hostname) {
                let api: Api<Ingress> = Api::namespaced(self.client.clone(), &ns);
                let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"hostname": hostname}]}}});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(namespace = %ns, ingress = %name, error = %e, "cannot write Ingress status");
                }
            }
        }
    }
}

/// The (host, path) pairs an Ingress describes, as routes name them.
fn ingress_keys(ing: &Ingress) -> Vec<(String, String)> {
    ing.spec
        .iter()
        .flat_map(|s| s.rules.iter().flatten())
        .filter_map(|r| Some((r.host.clone()?, r.http.as_ref()?)))
        .flat_map(|(h, http)| {
            http.paths
                .iter()
                .map(move |p| (h.clone(), p.path.clone().unwrap_or_else(|| "/".into())))
        })
        .collect()
}

/// Whether a watcher event changes what is published: the initial list counts once, when done.
fn relevant<K>(e: &watcher::Event<K>) -> bool {
    matches!(
        e,
        watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone
    )
}
