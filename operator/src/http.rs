//! The operator's small HTTP server: `/metrics` for Prometheus, `/healthz` for liveness and `/readyz` for
//! readiness. It runs on every replica, leader or not, so probes and scrapes work while a replica waits
//! for the Lease.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
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
    axum::serve(listener, router(AppState { metrics, ready }))
        .with_graceful_shutdown(shutdown)
        .await
        .context("serving metrics and health endpoints")
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
}
