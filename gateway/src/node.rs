//! One gateway node as a value with a beginning and an end (mini-redis's shape): every socket
//! is bound first ([`Listeners::bind`], port 0 works and the caller reads the real addresses),
//! then [`run`] serves them until its `shutdown` future completes — then the node drains
//! (`drain.rs`), stops its servers and joins every background task it started, so nothing
//! outlives it. `main` passes SIGTERM/SIGINT as the shutdown; tests pass a channel.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::{App, HttpServer, web};

use crate::config::Config;
use crate::{AppState, acme, admin, cluster, drain, proxy, tls};

/// Every socket a node listens on, bound before it runs.
pub struct Listeners {
    /// Public HTTP (`--listen`).
    pub public: TcpListener,
    /// Public HTTPS (`--tls-listen`).
    pub tls: Option<TcpListener>,
    /// The internal listener (`--admin-listen`): admin API, probes, metrics.
    pub admin: TcpListener,
    /// Peer links (`--peer-listen`, with Redis only).
    pub peer: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener `config` asks for.
    pub fn bind(config: &Config) -> std::io::Result<Listeners> {
        let bind = |addr: SocketAddr, what: &str| {
            TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
            })
        };
        let peer = config.peer_listen.filter(|_| config.redis_url.is_some());
        Ok(Listeners {
            public: bind(config.listen, "--listen")?,
            tls: config
                .tls_listen
                .map(|a| bind(a, "--tls-listen"))
                .transpose()?,
            admin: bind(config.admin_listen, "--admin-listen")?,
            peer: peer.map(|a| bind(a, "--peer-listen")).transpose()?,
        })
    }

    /// The public listener's address.
    pub fn public_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin.local_addr()
    }
}

/// Runs a node on `listeners` (inside an actix system) until `shutdown` completes with the
/// reason to stop: then it drains, stops its servers and joins its background tasks.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = &'static str>,
) -> std::io::Result<()> {
    let Listeners {
        public,
        tls,
        admin,
        peer,
    } = listeners;
    let mut config = config;
    // With port 0 the real peer port is what other nodes must be told.
    if let (Some(l), None) = (&peer, &config.peer_advertise) {
        config.peer_advertise = Some(l.local_addr()?.to_string());
    }
    let workers = config.workers;
    let state = web::Data::new(AppState::new(config).map_err(std::io::Error::other)?);
    let mut tasks: Vec<actix_rt::task::JoinHandle<()>> = Vec::new();
    if state.registry.is_shared() {
        let st = state.clone().into_inner();
        tasks.push(actix_rt::spawn(async move {
            if let Err(e) = st.registry.sync_clusters().await {
                tracing::warn!(error = %e, "registry unreachable at start; retrying in the background");
            }
        }));
        tasks.push(actix_rt::spawn(cluster::run_membership(
            state.clone().into_inner(),
        )));
        tasks.push(actix_rt::spawn(state.registry.clone().listen_events()));
    }
    tasks.push(actix_rt::spawn(admin::reconcile(
        state.clone().into_inner(),
    )));
    tasks.push(actix_rt::spawn(admin::recheck(state.clone().into_inner())));
    tasks.push(actix_rt::spawn(acme::run(state.clone().into_inner())));
    if state.config.max_memory_mib > 0 {
        tasks.push(actix_rt::spawn(crate::overload::watch_memory(
            state.load.clone(),
            state.config.max_memory_mib << 20,
        )));
    }
    let servers = vec![admin_server(&state, admin)?];
    let (public, reload) = public_server(&state, public, tls, peer, workers)?;
    tasks.extend(reload);
    let handles: Vec<_> = servers.iter().map(|s| s.handle()).collect();
    let public_handle = public.handle();
    let mut running: Vec<_> = servers.into_iter().map(actix_rt::spawn).collect();
    // The server runs as its own task (dropping an actix server stops it at once, which would
    // cut the tunnels before the drain; awaiting its handle needs it polled elsewhere).
    let mut public = actix_rt::spawn(public);
    let ended = tokio::select! {
        r = &mut public => Some(r),
        why = shutdown => {
            drain::drain(&state, why).await;
            None
        }
    };
    // Stop what is still open (what the drain left is cut within the shutdown timeout), then
    // join everything this node started.
    public_handle.stop(true).await;
    let ended = match ended {
        Some(r) => r,
        None => public.await,
    }
    .unwrap_or_else(|e| Err(std::io::Error::other(format!("public server task: {e}"))));
    // Nothing is served through the peer and admin listeners once the tunnels are gone.
    for h in handles {
        h.stop(false).await;
    }
    for s in running.drain(..) {
        let _ = s.await;
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("node stopped");
    ended
}

/// The peer listener: `/v1/peer`, over mutual TLS when configured.
/// Adds the peer listener to the public server's builder: peer links live on the same workers
/// as tunnels and clients, so a forwarded request reaches a tunnel on its link's worker without
/// crossing threads (ADR 0013).
fn peer_listener(
    builder: actix_server::ServerBuilder,
    state: &web::Data<AppState>,
    listener: TcpListener,
) -> std::io::Result<actix_server::ServerBuilder> {
    let addr = listener.local_addr()?;
    let st = state.clone();
    let peer_app = move || {
        use actix_service::ServiceFactoryExt as _;
        let app = App::new()
            .app_data(st.clone())
            .route("/v1/peer", web::get().to(cluster::peer_server::accept));
        actix_service::map_config(
            actix_service::IntoServiceFactory::into_factory(app).map_err(|e: actix_web::Error| {
                actix_web::ResponseError::error_response(e.as_response_error())
            }),
            |_| actix_web::dev::AppConfig::default(),
        )
    };
    let builder = match &state.peer_tls {
        // Mutual TLS: only nodes with a certificate of the peer CA get a link (and they still
        // present the peer secret).
        Some(t) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(t.server.clone());
            builder.listen("peer", listener, move || {
                use actix_service::ServiceFactoryExt as _;
                let acceptor = acceptor.clone();
                let http = actix_http::HttpService::build().finish(peer_app());
                actix_service::fn_service(move |io: actix_web::rt::net::TcpStream| {
                    let acceptor = acceptor.clone();
                    async move {
                        let (tls, peer) = accept_tls(&acceptor, io, "peer").await?;
                        Ok((tls, actix_http::Protocol::Http1, peer))
                    }
                })
                .and_then(http)
            })?
        }
        // Plain: the upgrade is answered and the link framed here (`proxy::conn::serve_peer`,
        // ADR 0014).
        None => {
            let st = state.clone();
            builder.listen("peer", listener, move || {
                let st = st.clone();
                actix_service::fn_service(move |io: actix_web::rt::net::TcpStream| {
                    let st = st.clone();
                    async move {
                        let _ = io.set_nodelay(true);
                        proxy::conn::serve_peer(io, st).await;
                        Ok::<_, ()>(())
                    }
                })
            })?
        }
    };
    tracing::info!(addr = %addr, advertised = ?state.config.peer_advertise, tls = state.peer_tls.is_some(), "peer endpoint listening");
    Ok(builder)
}

/// The internal listener: admin API, `/healthz`, `/readyz`, `/metrics`.
fn admin_server(
    state: &web::Data<AppState>,
    listener: TcpListener,
) -> std::io::Result<actix_server::Server> {
    let addr = listener.local_addr()?;
    let st = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(st.clone())
            .route("/healthz", web::get().to(admin::healthz))
            .route("/readyz", web::get().to(admin::readyz_handler))
            .route("/metrics", web::get().to(admin::metrics_handler))
            .configure(admin::routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(2)
    .listen(listener)?
    .run();
    tracing::info!(addr = %addr, "admin endpoint listening");
    Ok(server)
}

/// The public listeners (HTTP, and HTTPS when configured): actix-web's App behind
/// actix-http, each connection's first request head seen first by `proxy::front` (upgrades
/// other than WebSocket; see there). With HTTPS, also the task that reloads certificate files.
fn public_server(
    state: &web::Data<AppState>,
    listener: TcpListener,
    tls: Option<TcpListener>,
    peer: Option<TcpListener>,
    workers: Option<usize>,
) -> std::io::Result<(actix_server::Server, Option<actix_rt::task::JoinHandle<()>>)> {
    // Signals are the node's (`run`'s shutdown); what is still open after the drain is cut
    // within 2 s.
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(2);
    if let Some(w) = workers {
        builder = builder.workers(w.max(1));
    }
    let mut reload = None;
    let tls = match tls {
        Some(l) => {
            let pairs = state
                .config
                .tls_certs
                .iter()
                .cloned()
                .zip(state.config.tls_keys.iter().cloned())
                .collect();
            let store =
                tls::CertStore::load(pairs, state.issued.clone()).map_err(std::io::Error::other)?;
            let config = Arc::new(store.server_config().map_err(std::io::Error::other)?);
            let watched = store.clone();
            reload = Some(actix_rt::spawn(async move {
                let mut tick = tokio::time::interval(tls::RELOAD_CHECK);
                loop {
                    tick.tick().await;
                    watched.reload_if_changed();
                }
            }));
            tracing::info!(addr = %l.local_addr()?, "https listening");
            Some((l, tokio_rustls::TlsAcceptor::from(config)))
        }
        None => None,
    };
    let app_state = state.clone();
    // One App per worker and listener: the proxy, with the request payload unbounded (the
    // stream's window bounds it).
    let app = move || {
        use actix_service::ServiceFactoryExt as _;
        let app = App::new()
            .app_data(app_state.clone())
            .app_data(web::PayloadConfig::new(usize::MAX))
            .default_service(web::to(proxy::dispatch));
        actix_service::map_config(
            actix_service::IntoServiceFactory::into_factory(app).map_err(|e: actix_web::Error| {
                actix_web::ResponseError::error_response(e.as_response_error())
            }),
            |_| actix_web::dev::AppConfig::default(),
        )
    };
    if let Some((l, acceptor)) = tls {
        let app = app.clone();
        let conns = state.load.clone();
        builder = builder.listen("tls", l, move || {
            let conns = conns.clone();
            use actix_service::ServiceFactoryExt as _;
            type Io = proxy::front::FirstHead<
                tokio_rustls::server::TlsStream<actix_web::rt::net::TcpStream>,
            >;
            let http = actix_http::HttpService::build()
                .on_connect_ext(move |io: &Io, ext: &mut actix_http::Extensions| {
                    let sni = io.get_ref().get_ref().1.server_name().map(str::to_string);
                    ext.insert(tls::Tls { sni });
                    ext.insert(io.crowded());
                })
                .finish(app());
            let acceptor = acceptor.clone();
            actix_service::fn_service(move |io: actix_web::rt::net::TcpStream| {
                let acceptor = acceptor.clone();
                let slot = conns.take();
                async move {
                    let (tls, peer) = accept_tls(&acceptor, io, "public").await?;
                    // HTTP/2 when the client chose it by ALPN; its requests are routed and
                    // streamed like HTTP/1.1 ones (upgrades are HTTP/1.1 only).
                    let protocol = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => actix_http::Protocol::Http2,
                        _ => actix_http::Protocol::Http1,
                    };
                    Ok((proxy::front::FirstHead::new(tls, slot), protocol, peer))
                }
            })
            .and_then(http)
        })?;
    }
    let conns = state.load.clone();
    let front_state = state.clone();
    if let Some(l) = peer {
        builder = peer_listener(builder, state, l)?;
    }
    let server = builder
        .listen("public", listener, move || {
            use actix_service::{Service as _, ServiceFactory as _};
            type Io = proxy::front::FirstHead<actix_web::rt::net::TcpStream>;
            let http = actix_http::HttpService::build()
                .on_connect_ext(move |io: &Io, ext: &mut actix_http::Extensions| {
                    ext.insert(io.crowded());
                })
                .finish(app());
            let (conns, state) = (conns.clone(), front_state.clone());
            // Plain HTTP/1.1: the gateway's own loop (`proxy::conn`) serves tenants' requests
            // and hands the rest of a connection to actix-http when it meets one it does not.
            actix_service::fn_factory(move || {
                let ready = http.new_service(());
                let (conns, state) = (conns.clone(), state.clone());
                async move {
                    let http = std::rc::Rc::new(ready.await?);
                    Ok::<_, ()>(actix_service::fn_service(
                        move |io: actix_web::rt::net::TcpStream| {
                            let (http, slot, state) = (http.clone(), conns.take(), state.clone());
                            async move {
                                // Tunnels and requests are many small writes: no Nagle delay.
                                let _ = io.set_nodelay(true);
                                let peer = io.peer_addr().ok();
                                match proxy::conn::serve(io, slot, state).await {
                                    proxy::conn::Served::Done => Ok(()),
                                    proxy::conn::Served::HandOff(rest) => {
                                        http.call((rest, actix_http::Protocol::Http1, peer)).await
                                    }
                                }
                            }
                        },
                    ))
                }
            })
        })?
        .run();
    Ok((server, reload))
}

/// A TLS connection accepted on `listener` (without Nagle's delay: tunnels and requests are
/// many small writes), with the client's address.
async fn accept_tls(
    acceptor: &tokio_rustls::TlsAcceptor,
    io: actix_web::rt::net::TcpStream,
    listener: &'static str,
) -> Result<
    (
        tokio_rustls::server::TlsStream<actix_web::rt::net::TcpStream>,
        Option<std::net::SocketAddr>,
    ),
    actix_http::error::DispatchError,
> {
    let _ = io.set_nodelay(true);
    let peer = io.peer_addr().ok();
    let tls = acceptor.accept(io).await.map_err(|e| {
        tracing::debug!(?peer, listener, error = %e, "TLS handshake failed");
        actix_http::error::DispatchError::Io(e)
    })?;
    Ok((tls, peer))
}
