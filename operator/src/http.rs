//! The operator's small HTTP server: `/metrics` for Prometheus, `/healthz` for liveness and `/readyz` for
//! readiness. It runs on every replica, leader or not, so probes and scrapes work while a replica waits
//! for the Lease.
//!
//! [`serve_limited`] is how the operator serves HTTP (this endpoint and the Event Grid one): a client that sends its
//! headers slowly, holds a request open or opens many connections gets cut off, rather than holding the process's
//! sockets and memory.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// The content type of the OpenMetrics text format that [`Metrics::encode`] writes.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// Binds `addr` for [`serve`]; returns the listener and the address it got (useful with port 0).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the metrics address {addr}"))?;
    let local = listener.local_addr().context("reading the bound metrics address")?;
    Ok((listener, local))
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` completes, then finishes
/// the requests in progress and returns. `/readyz` answers 200 while `ready` is true, else 503.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "serving /metrics, /healthz and /readyz");
    serve_limited(listener, router(AppState { metrics, ready }), Limits::default(), shutdown).await;
    Ok(())
}

/// What one HTTP server allows a client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to send a request's headers (and, on a kept-alive connection, to start the next request).
    pub header_timeout: Duration,
    /// Time from the headers to the end of the answer, reading the body included.
    pub request_timeout: Duration,
    /// Connections served at once; further ones are closed at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { header_timeout: Duration::from_secs(5), request_timeout: Duration::from_secs(10), max_connections: 64 }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then lets the requests in progress finish
/// (for at most the request timeout).
pub async fn serve_limited(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    let app = app.layer(tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        limits.request_timeout,
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(None);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("too many connections; closing a new one");
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(limits.request_timeout, graceful.shutdown()).await;
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], state.metrics.encode())
}

// Liveness only says the process serves requests; restarting a replica because the apiserver or a
// vault is unreachable would not help.
async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        sync::oneshot,
    };

    use super::*;

    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Response {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    /// One HTTP/1.0 request: the server closes the connection after answering, so the
    /// response is everything up to end of stream.
    async fn get(addr: SocketAddr, path: &str) -> Response {
        let mut stream = TcpStream::connect(addr).await.expect("connecting to the server");
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .expect("sending the request");
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
            .await
            .expect("the server answered in time")
            .expect("reading the response");
        let raw = String::from_utf8(raw).expect("a UTF-8 response");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header/body separator");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("a status line");
        let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status code");
        let headers =
            lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
        Response { status, headers, body: body.to_owned() }
    }

    async fn start() -> (SocketAddr, Arc<Metrics>, Arc<AtomicBool>, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let (listener, addr) = bind("127.0.0.1:0".parse().expect("an address")).await.expect("binding port 0");
        assert_ne!(addr.port(), 0, "bind reports the port it got");
        let metrics = Metrics::new();
        let ready = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let (metrics, ready) = (metrics.clone(), ready.clone());
            async move {
                serve(listener, metrics, ready, async move {
                    let _ = stopped.await;
                })
                .await
                .expect("the server runs until shut down");
            }
        });
        (addr, metrics, ready, stop, server)
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let (addr, metrics, ready, stop, server) = start().await;
        metrics.sync("synced");

        let scrape = get(addr, "/metrics").await;
        assert_eq!(scrape.status, 200);
        assert_eq!(scrape.header("content-type"), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(scrape.body.contains(r#"vaultsync_syncs_total{result="synced"} 1"#), "{}", scrape.body);
        assert!(scrape.body.ends_with("# EOF\n"), "{}", scrape.body);

        let health = get(addr, "/healthz").await;
        assert_eq!((health.status, health.body.as_str()), (200, "ok"));

        let not_ready = get(addr, "/readyz").await;
        assert_eq!((not_ready.status, not_ready.body.as_str()), (503, "not ready"));
        ready.store(true, Ordering::Relaxed);
        let now_ready = get(addr, "/readyz").await;
        assert_eq!((now_ready.status, now_ready.body.as_str()), (200, "ready"));

        assert_eq!(get(addr, "/nothing-here").await.status, 404);

        stop.send(()).expect("the server is still running");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops after shutdown")
            .expect("the server task did not panic");
        assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed after shutdown");
    }

    /// Serves `app` within `limits` on a free port; returns the address and a stop handle.
    async fn start_limited(app: Router, limits: Limits) -> (SocketAddr, oneshot::Sender<()>) {
        let (listener, addr) = bind("127.0.0.1:0".parse().expect("an address")).await.expect("binding port 0");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_limited(listener, app, limits, async move {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    /// Reads until the server closes the connection; returns what it sent and how long that took.
    async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
        let started = tokio::time::Instant::now();
        let mut raw = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("closed in time");
        (String::from_utf8_lossy(&raw).into_owned(), started.elapsed())
    }

    const TIGHT: Limits = Limits {
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        max_connections: 2,
    };

    #[tokio::test]
    async fn slow_headers_are_cut_off() {
        let (addr, _stop) =
            start_limited(router(AppState { metrics: Metrics::new(), ready: Arc::default() }), TIGHT).await;
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").await.expect("half a request");
        let (_, took) = read_until_closed(&mut stream).await;
        assert!(took < Duration::from_secs(2), "the connection was held for {took:?}");
    }

    #[tokio::test]
    async fn a_slow_body_or_handler_times_out() {
        let app = Router::new()
            .route("/slow", axum::routing::get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }))
            .route("/upload", axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }));
        let (addr, _stop) = start_limited(app, TIGHT).await;
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        stream.write_all(b"GET /slow HTTP/1.0\r\nHost: x\r\n\r\n").await.expect("request");
        let (answer, took) = read_until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.0 408"), "{answer}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        let mut stream = TcpStream::connect(addr).await.expect("connecting");
        stream
            .write_all(b"POST /upload HTTP/1.0\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly a part")
            .await
            .expect("a request whose body never completes");
        let (answer, took) = read_until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.0 408"), "{answer}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_the_server_recovers() {
        let state = AppState { metrics: Metrics::new(), ready: Arc::default() };
        let limits = Limits { header_timeout: Duration::from_secs(2), ..TIGHT };
        let (addr, _stop) = start_limited(router(state), limits).await;
        let idle = [TcpStream::connect(addr).await.expect("first"), TcpStream::connect(addr).await.expect("second")];
        tokio::time::sleep(Duration::from_millis(100)).await; // both accepted and holding a slot
        let mut third = TcpStream::connect(addr).await.expect("the kernel accepts the connection");
        let (answer, took) = read_until_closed(&mut third).await;
        assert!(answer.is_empty() && took < Duration::from_secs(1), "the third connection is closed at once");
        drop(idle);
        let served = async {
            loop {
                if get(addr, "/healthz").await.status == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), served).await.expect("served again once the slots are free");
    }
}
