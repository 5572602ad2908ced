//! The Tunnelgate gateway node: serves public HTTP, accepts agent tunnels on `/v1/tunnel`, and
//! streams each request through the tunnel of the cluster that owns its host.
//!
//! # Layout
//! - [`config`]: command line and environment, validated.
//! - [`registry`]: clusters, tokens and routes; who may claim which host.
//! - [`tunnel`]: the agent endpoint, `TunnelActor` per agent, `StreamActor` per request, hub.
//! - [`cluster`]: peer links to other nodes, the peer endpoint, membership.
//! - [`ratelimit`]: per-cluster request rate limits, shared by every node through Redis.
//! - [`proxy`]: the public HTTP handler: checks, routing, header rewriting, streaming.
//! - [`error`]: proxy-path errors and the one place they become responses.
//! - [`admin`]: the internal listener: the admin API (`/admin/v1/…`: tenants, tokens,
//!   domains, access tokens at run time) and `/healthz`, `/readyz`, `/metrics`.
//! - [`guard`]: throttling of failed authentications per source address.
//! - [`telemetry`]: metric names and log set-up.
//! - [`tls`]: HTTPS at the edge: certificates by SNI, reloaded when their files change.

pub mod acme;
pub mod admin;
pub mod cluster;
pub mod config;
pub mod dns;
pub mod drain;
pub mod error;
pub mod guard;
pub mod proxy;
pub mod ratelimit;
pub mod registry;
pub mod telemetry;
pub mod tls;
pub mod tunnel;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{App, HttpServer, web};

use config::Config;
use registry::Registry;
use telemetry::metrics::Metrics;
use tunnel::Hub;

/// What every worker shares.
pub struct AppState {
    pub config: Config,
    pub registry: Arc<Registry>,
    pub hub: Hub,
    pub peers: cluster::PeerPool,
    pub metrics: Metrics,
    /// Failed authentications per source, for the agent and peer endpoints.
    pub auth_guard: guard::AuthGuard,
    /// Per-cluster budgets for what agents send.
    pub limits: tunnel::limits::ClusterLimits,
    /// Mutual TLS for peer links, when configured.
    pub peer_tls: Option<tls::PeerTls>,
    /// Per-cluster request rate limits.
    pub rate_limits: ratelimit::RateLimits,
    /// The resolver custom-domain checks use (none when the system's cannot be read).
    pub dns: Option<dns::Dns>,
    /// ACME for verified custom domains (`--acme-directory`).
    pub acme: Option<acme::Acme>,
    /// The certificates ACME issued, served by SNI on the TLS listener.
    pub issued: Arc<tls::IssuedCerts>,
    /// Set on SIGTERM: `/readyz` fails and new tunnels are refused (`drain.rs`).
    pub draining: std::sync::atomic::AtomicBool,
}

impl AppState {
    pub fn new(config: Config) -> Result<Self, String> {
        let metrics = Metrics::default();
        let registry = match &config.redis_url {
            None => Registry::in_memory(&config.domain, &config.clusters),
            Some(url) => {
                let (calls, cache) = (metrics.backend_calls.clone(), metrics.route_cache.clone());
                let count: registry::redis::CallCounter = Arc::new(move |op| {
                    if let Some(outcome) = op.strip_prefix("cache_") {
                        let reason = if outcome == "hit" { "hit" } else { "miss" };
                        cache
                            .get_or_create(&telemetry::metrics::ReasonLabels { reason })
                            .inc();
                    } else {
                        calls
                            .get_or_create(&telemetry::metrics::OpLabels { op })
                            .inc();
                    }
                });
                Registry::with_redis(
                    &config.domain,
                    config.node_id(),
                    &config.clusters,
                    url,
                    count,
                )
                .map_err(|e| e.to_string())?
            }
        };
        let registry = registry.with_policy(
            registry::Quotas {
                max_routes: config.max_routes_per_cluster,
                max_bytes: config.max_route_bytes_per_cluster,
            },
            config.public_hosts.clone(),
        );
        let limits = tunnel::limits::ClusterLimits::new(config.cluster_connect_rate.max(1));
        let peer_tls = match (&config.peer_cert, &config.peer_key, &config.peer_ca) {
            (Some(c), Some(k), Some(ca)) => Some(tls::PeerTls::load(c, k, ca)?),
            _ => None,
        };
        let dns = match dns::Dns::new(config.dns_server) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "custom domains cannot be verified until --dns-server is given");
                None
            }
        };
        let acme = match &config.acme_directory {
            None => None,
            Some(dir) => {
                if config.redis_url.is_some() && config.state_key.is_none() {
                    return Err("--acme-directory with --redis-url needs --state-key (openssl rand -hex 32): certificate keys are stored sealed with it".into());
                }
                let sealer = acme::Sealer::new(config.state_key.as_ref().map(|k| k.expose()))?;
                Some(acme::Acme::new(
                    dir.clone(),
                    config.acme_email.clone(),
                    config.acme_ca.clone(),
                    sealer,
                ))
            }
        };
        Ok(AppState {
            acme,
            issued: Arc::default(),
            draining: Default::default(),
            dns,
            rate_limits: ratelimit::RateLimits::default(),
            peer_tls,
            limits,
            config,
            registry,
            hub: Hub::default(),
            peers: cluster::PeerPool::default(),
            metrics,
            auth_guard: guard::AuthGuard::default(),
        })
    }
}

/// Builds the node on an already bound public listener; binds the admin listener
/// (`--admin-listen`) and, with Redis, the peer listener.
/// Await the returned [`Server`] inside an actix system; its handle stops it.
pub fn run(config: Config, listener: TcpListener) -> std::io::Result<actix_server::Server> {
    let workers = config.workers;
    let peer_listen = config.peer_listen.filter(|_| config.redis_url.is_some());
    // Bind the peer listener first: with port 0 the real port is what other nodes must be told.
    let peer_listener = match peer_listen {
        Some(addr) => Some(TcpListener::bind(addr)?),
        None => None,
    };
    let mut config = config;
    if let (Some(l), None) = (&peer_listener, &config.peer_advertise) {
        config.peer_advertise = Some(l.local_addr()?.to_string());
    }
    let state = web::Data::new(AppState::new(config).map_err(std::io::Error::other)?);
    if state.registry.is_shared() {
        let st = state.clone().into_inner();
        actix_rt::spawn(async move {
            if let Err(e) = st.registry.sync_clusters().await {
                tracing::warn!(error = %e, "registry unreachable at start; retrying in the background");
            }
        });
        actix_rt::spawn(cluster::run_membership(state.clone().into_inner()));
        actix_rt::spawn(state.registry.clone().listen_events());
    }
    if let Some(listener) = peer_listener {
        let addr = listener.local_addr()?;
        let st = state.clone();
        let peer_app = move || {
            use actix_service::ServiceFactoryExt as _;
            let app = App::new()
                .app_data(st.clone())
                .route("/v1/peer", web::get().to(cluster::peer_server::accept));
            actix_service::map_config(
                actix_service::IntoServiceFactory::into_factory(app).map_err(
                    |e: actix_web::Error| {
                        actix_web::ResponseError::error_response(e.as_response_error())
                    },
                ),
                |_| actix_web::dev::AppConfig::default(),
            )
        };
        let builder = actix_server::Server::build().workers(1).disable_signals();
        let peer = match &state.peer_tls {
            // Mutual TLS: only nodes with a certificate of the peer CA get a link (and they
            // still present the peer secret).
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
            None => builder.listen("peer", listener, move || {
                use actix_service::ServiceFactoryExt as _;
                let http = actix_http::HttpService::build().finish(peer_app());
                actix_service::fn_service(|io: actix_web::rt::net::TcpStream| async move {
                    let _ = io.set_nodelay(true);
                    let peer = io.peer_addr().ok();
                    Ok::<_, actix_http::error::DispatchError>((
                        io,
                        actix_http::Protocol::Http1,
                        peer,
                    ))
                })
                .and_then(http)
            })?,
        }
        .run();
        tracing::info!(addr = %addr, advertised = ?state.config.peer_advertise, tls = state.peer_tls.is_some(), "peer endpoint listening");
        actix_rt::spawn(peer);
    }
    actix_rt::spawn(admin::reconcile(state.clone().into_inner()));
    actix_rt::spawn(admin::recheck(state.clone().into_inner()));
    actix_rt::spawn(acme::run(state.clone().into_inner()));
    let admin_listener = TcpListener::bind(state.config.admin_listen)?;
    let admin_addr = admin_listener.local_addr()?;
    let st = state.clone();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(st.clone())
            .route("/healthz", web::get().to(admin::healthz))
            .route("/readyz", web::get().to(admin::readyz_handler))
            .route("/metrics", web::get().to(admin::metrics_handler))
            .configure(admin::routes)
    })
    .workers(1)
    .disable_signals()
    .listen(admin_listener)?
    .run();
    tracing::info!(addr = %admin_addr, "admin endpoint listening");
    actix_rt::spawn(admin);
    // The public listener: actix-web's App behind actix-http, each connection's first request
    // head seen first by `proxy::front` (upgrades other than WebSocket; see there).
    // Signals are the drain's (`drain.rs`); what is still open after it is cut within 2 s.
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(2);
    if let Some(w) = workers {
        builder = builder.workers(w.max(1));
    }
    let tls = match state.config.tls_listen {
        Some(addr) => {
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
            actix_rt::spawn(async move {
                let mut tick = tokio::time::interval(tls::RELOAD_CHECK);
                loop {
                    tick.tick().await;
                    watched.reload_if_changed();
                }
            });
            let l = TcpListener::bind(addr)?;
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
        builder = builder.listen("tls", l, move || {
            use actix_service::ServiceFactoryExt as _;
            type Io = proxy::front::FirstHead<
                tokio_rustls::server::TlsStream<actix_web::rt::net::TcpStream>,
            >;
            let http = actix_http::HttpService::build()
                .on_connect_ext(|io: &Io, ext: &mut actix_http::Extensions| {
                    let sni = io.get_ref().get_ref().1.server_name().map(str::to_string);
                    ext.insert(tls::Tls { sni });
                })
                .finish(app());
            let acceptor = acceptor.clone();
            actix_service::fn_service(move |io: actix_web::rt::net::TcpStream| {
                let acceptor = acceptor.clone();
                async move {
                    let (tls, peer) = accept_tls(&acceptor, io, "public").await?;
                    // HTTP/2 when the client chose it by ALPN; its requests are routed and
                    // streamed like HTTP/1.1 ones (upgrades are HTTP/1.1 only).
                    let protocol = match tls.get_ref().1.alpn_protocol() {
                        Some(b"h2") => actix_http::Protocol::Http2,
                        _ => actix_http::Protocol::Http1,
                    };
                    Ok((proxy::front::FirstHead::new(tls), protocol, peer))
                }
            })
            .and_then(http)
        })?;
    }
    let server = builder
        .listen("public", listener, move || {
            use actix_service::ServiceFactoryExt as _;
            let http = actix_http::HttpService::build().finish(app());
            actix_service::fn_service(|io: actix_web::rt::net::TcpStream| async move {
                // Tunnels and requests are many small writes: no Nagle delay.
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    proxy::front::FirstHead::new(io),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })?
        .run();
    actix_rt::spawn(drain::on_signal(
        state.clone().into_inner(),
        server.handle(),
    ));
    Ok(server)
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
