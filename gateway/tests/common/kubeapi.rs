//! A faithful stand-in for the Kubernetes API server, for the resources the agent reads:
//! list and watch of Ingresses and Services with resourceVersion, watch events replayed from
//! history, bookmarks, and 410 Gone (reason Expired) for a version older than the compaction
//! point — so `kube-rs`' watcher and `kubectl` run against it unmodified.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

type Body = BoxBody<Bytes, Infallible>;

/// Kinds served: (URL path, kind, list kind, apiVersion).
const KINDS: &[(&str, &str, &str, &str)] = &[
    (
        "/apis/networking.k8s.io/v1/ingresses",
        "Ingress",
        "IngressList",
        "networking.k8s.io/v1",
    ),
    ("/api/v1/services", "Service", "ServiceList", "v1"),
];

#[derive(Default)]
struct Inner {
    rv: u64,
    compacted: u64,
    objects: BTreeMap<(String, String, String), Value>,
    /// (resourceVersion, kind, event type, object)
    history: Vec<(u64, String, &'static str, Value)>,
    /// Events (events.k8s.io/v1) clients recorded.
    posted_events: Vec<Value>,
}

/// What the server and the test share.
struct State {
    inner: Mutex<Inner>,
    events: broadcast::Sender<(u64, String, &'static str, Value)>,
}

impl State {
    /// Records a change under the same lock that gave it its resourceVersion, so a watch that
    /// snapshots history (and subscribes) under that lock sees each event exactly once: in its
    /// replay or live, never in neither.
    fn record(&self, g: &mut Inner, kind: String, kind_event: &'static str, obj: Value) {
        let rv = g.rv;
        g.history.push((rv, kind.clone(), kind_event, obj.clone()));
        let _ = self.events.send((rv, kind, kind_event, obj));
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers); returns it as stored.
    fn apply(&self, mut obj: Value) -> Value {
        let k = key(&obj);
        let mut g = self.inner.lock().unwrap();
        g.rv += 1;
        let rv = g.rv;
        let meta = obj["metadata"].as_object_mut().expect("metadata");
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.entry("uid")
            .or_insert(json!(format!("uid-{}-{}", k.1, k.2)));
        meta.entry("namespace").or_insert(json!("default"));
        let existed = g.objects.insert(key(&obj), obj.clone()).is_some();
        let event = if existed { "MODIFIED" } else { "ADDED" };
        self.record(&mut g, k.0, event, obj.clone());
        obj
    }
}

pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    generation: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

fn key(v: &Value) -> (String, String, String) {
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl KubeApi {
    pub async fn start() -> KubeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake apiserver");
        let addr = listener.local_addr().unwrap();
        let (events, _) = broadcast::channel(1024);
        let state = Arc::new(State {
            inner: Mutex::new(Inner::default()),
            events,
        });
        let (generation, _) = watch::channel(0u64);
        let (st, g) = (state.clone(), generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let (st, g) = (st.clone(), g.clone());
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| serve(req, st.clone(), g.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        KubeApi {
            addr,
            state,
            generation,
            task,
        }
    }

    /// A kubeconfig file pointing at this server; written under `dir`.
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig.yaml");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: agent\n  user:\n    token: test-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers).
    pub fn apply(&self, obj: Value) {
        self.state.apply(obj);
    }

    /// The stored object, if any.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        self.state
            .inner
            .lock()
            .unwrap()
            .objects
            .get(&(kind.into(), ns.into(), name.into()))
            .cloned()
    }

    /// Events clients recorded (events.k8s.io/v1).
    pub fn recorded_events(&self) -> Vec<Value> {
        self.state.inner.lock().unwrap().posted_events.clone()
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let mut g = self.state.inner.lock().unwrap();
        let Some(mut obj) = g.objects.remove(&(kind.into(), ns.into(), name.into())) else {
            return;
        };
        g.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        self.state.record(&mut g, kind.into(), "DELETED", obj);
    }

    /// Ends every open watch (as an apiserver restart or a proxy timeout would).
    pub fn break_watches(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Forgets history up to now: a watch from an older version gets 410 Gone.
    pub fn compact(&self) {
        let mut g = self.state.inner.lock().unwrap();
        g.compacted = g.rv;
        g.history.clear();
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Discovery documents, so `kubectl` finds the resources served.
fn discovery(path: &str) -> Option<Value> {
    let resource = |name: &str, kind: &str, ns: bool| {
        json!({"name": name, "singularName": "", "namespaced": ns, "kind": kind,
               "verbs": ["get", "list", "watch"]})
    };
    Some(match path {
        "/version" => json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-tunnelgate-test",
                             "platform": "linux/amd64"}),
        "/api" => json!({"kind": "APIVersions", "versions": ["v1"],
                         "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
            "name": "networking.k8s.io",
            "versions": [{"groupVersion": "networking.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "networking.k8s.io/v1", "version": "v1"}}]}),
        "/api/v1" => json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
                            "resources": [resource("services", "Service", true)]}),
        "/apis/networking.k8s.io/v1" => json!({"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "networking.k8s.io/v1",
            "resources": [resource("ingresses", "Ingress", true), resource("ingresses/status", "Ingress", true)]}),
        _ => return None,
    })
}

/// Writes: merge-patching an Ingress's status, and recording Events.
async fn write(req: Request<Incoming>, state: &State) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Ok(doc) = serde_json::from_slice::<Value>(&body) else {
        return json_response(400, &status(400, "BadRequest", "body is not JSON"));
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        (
            "PATCH",
            [
                "apis",
                "networking.k8s.io",
                "v1",
                "namespaces",
                ns,
                "ingresses",
                name,
                "status",
            ],
        ) => {
            let found = state
                .inner
                .lock()
                .unwrap()
                .objects
                .get(&("Ingress".into(), ns.to_string(), name.to_string()))
                .cloned();
            let Some(mut obj) = found else {
                return json_response(
                    404,
                    &status(404, "NotFound", &format!("ingresses {name:?} not found")),
                );
            };
            obj["status"] = doc["status"].clone();
            json_response(200, &state.apply(obj))
        }
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            let mut ev = doc;
            ev["metadata"]["namespace"] = json!(ns);
            ev["metadata"]["resourceVersion"] = json!("1");
            state.inner.lock().unwrap().posted_events.push(ev.clone());
            json_response(201, &ev)
        }
        ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
            json_response(200, &doc)
        }
        _ => json_response(
            405,
            &status(
                405,
                "MethodNotAllowed",
                &format!("{method} {path} is not served"),
            ),
        ),
    }
}

async fn serve(
    req: Request<Incoming>,
    state: Arc<State>,
    generation: watch::Sender<u64>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != hyper::Method::GET {
        return Ok(write(req, &state).await);
    }
    let inner = &state.inner;
    let events = &state.events;
    let path = req.uri().path().to_string();
    if let Some(doc) = discovery(&path) {
        return Ok(json_response(200, &doc));
    }
    let Some(&(_, kind, list_kind, api_version)) = KINDS.iter().find(|(p, ..)| *p == path) else {
        return Ok(json_response(
            404,
            &status(
                404,
                "NotFound",
                &format!("the server could not find the requested resource ({path})"),
            ),
        ));
    };
    if req.method() != hyper::Method::GET {
        return Ok(json_response(
            405,
            &status(405, "MethodNotAllowed", "only list and watch are served"),
        ));
    }
    let q = query(&req);
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let g = inner.lock().unwrap();
        let items: Vec<Value> = g
            .objects
            .iter()
            .filter(|((k, ..), _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect();
        let list = json!({"kind": list_kind, "apiVersion": api_version,
                          "metadata": {"resourceVersion": g.rv.to_string()}, "items": items});
        return Ok(json_response(200, &list));
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let line = |v: Value| Bytes::from(format!("{v}\n"));
    let (replay, current, gone, mut live) = {
        let g = inner.lock().unwrap();
        let gone = from != 0 && from < g.compacted;
        let replay: Vec<Value> = g
            .history
            .iter()
            .filter(|(rv, k, ..)| *rv > from && k == kind)
            .map(|(_, _, t, o)| json!({"type": t, "object": o}))
            .collect();
        // Subscribed under the lock that orders changes: nothing falls between replay and live.
        (replay, g.rv, gone, events.subscribe())
    };
    let mut gen_rx = generation.subscribe();
    gen_rx.borrow_and_update();
    tokio::spawn(async move {
        if gone {
            let msg = status(410, "Expired", &format!("too old resource version: {from}"));
            let _ = tx.send(line(json!({"type": "ERROR", "object": msg}))).await;
            return;
        }
        for ev in replay {
            if tx.send(line(ev)).await.is_err() {
                return;
            }
        }
        if bookmarks {
            let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version,
                             "metadata": {"resourceVersion": current.to_string()}}});
            let _ = tx.send(line(bm)).await;
        }
        loop {
            tokio::select! {
                _ = gen_rx.changed() => return,
                ev = live.recv() => match ev {
                    Ok((rv, k, t, o)) if rv > current && k == kind => {
                        if tx.send(line(json!({"type": t, "object": o}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}
