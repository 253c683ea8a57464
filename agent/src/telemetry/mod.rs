//! The agent's HTTP telemetry endpoint (hyper, HTTP/1.1, plain text): `/healthz`
//! (liveness: the run loop is turning), `/readyz` (readiness: enforcing a state
//! built from complete lists) and `/metrics` (Prometheus, see [`metrics`]). Routing is
//! one `match` in [`route`]. [`eventlog`] limits the verdict events in the agent's
//! own log.

pub mod eventlog;
mod health;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use health::Health;
pub use metrics::Metrics;

/// Whether log lines on stderr get ANSI colours: only when stderr is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>). Files and pipes (`kubectl
/// logs`, journald) get plain text.
pub fn ansi(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// [`ansi`] for this process.
pub fn ansi_for_stderr() -> bool {
    use std::io::IsTerminal as _;
    ansi(
        std::io::stderr().is_terminal(),
        std::env::var("NO_COLOR").ok().as_deref(),
    )
}

/// What the endpoints read. Cheap to share: handlers only read atomics.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub health: Arc<Health>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the health endpoints: {source}")]
pub struct ServeError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// Binds `addr` and serves the health endpoints until the returned task is aborted.
/// Returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    telemetry: Telemetry,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    serve_with_metrics(addr, telemetry, None).await
}

/// `serve`, plus `/metrics` when `metrics` is given.
pub async fn serve_with_metrics(
    addr: SocketAddr,
    telemetry: Telemetry,
    metrics: Option<Arc<Metrics>>,
) -> Result<(SocketAddr, JoinHandle<()>), ServeError> {
    let error = |source| ServeError { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("health endpoint: accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let telemetry = telemetry.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let response = route(&telemetry, metrics.as_deref(), &request);
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(error) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, "health endpoint connection: {error}");
                }
            });
        }
    });
    Ok((bound, task))
}

fn route<B>(
    telemetry: &Telemetry,
    metrics: Option<&Metrics>,
    request: &Request<B>,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match request.uri().path() {
        "/healthz" | "/livez" => verdict(telemetry.health.liveness()),
        "/readyz" => verdict(telemetry.health.readiness()),
        "/metrics" if metrics.is_some() => {
            let body = metrics.map(Metrics::encode).unwrap_or_default();
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn verdict((ok, message): (bool, String)) -> Response<Full<Bytes>> {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, format!("{message}\n"))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod ansi_tests {
    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(super::ansi(true, None));
        assert!(super::ansi(true, Some("")));
        assert!(!super::ansi(true, Some("1")));
        assert!(!super::ansi(false, None), "a file or a pipe");
    }
}
