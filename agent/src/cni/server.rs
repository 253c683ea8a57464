//! The agent's end of the CNI plugin's socket (`--cni-socket`): a unix listener
//! (0600, its directory created, a stale socket file replaced) whose connections each
//! carry one request. Requests go to the run loop as [`CniCall`]s with a reply
//! channel; the connection waits for the reply (at most [`REPLY_TIMEOUT`]; the
//! plugin's own timeout is usually shorter) and writes it back.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netfence_cni::protocol::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Request, Response};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// How long a connection may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a connection waits for the run loop's answer before giving up.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Requests queued for the run loop at most; a full queue makes connections wait.
const QUEUE: usize = 64;

/// A connection closed without a request.
const EMPTY: &str = "connection closed without a request";

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("creating {dir}: {error}")]
    Dir { dir: PathBuf, error: std::io::Error },
    #[error("another process serves {path} (it accepts connections); not serving the CNI plugin")]
    InUse { path: PathBuf },
    #[error("removing the stale socket {path}: {error}")]
    Stale {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("listening on {path}: {error}")]
    Bind {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// One request and where its answer goes.
#[derive(Debug)]
pub struct CniCall {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The listening socket and the task accepting on it; the socket file is removed and
/// the task stopped on drop.
#[derive(Debug)]
pub struct CniServer {
    path: PathBuf,
    calls: mpsc::Receiver<CniCall>,
    task: tokio::task::JoinHandle<()>,
}

impl CniServer {
    /// Listens on `path`. Must run inside a tokio runtime.
    pub fn listen(path: &Path) -> Result<CniServer, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|error| ServerError::Dir {
                dir: dir.to_owned(),
                error,
            })?;
        }
        if std::fs::symlink_metadata(path).is_ok() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|error| ServerError::Stale {
                path: path.to_owned(),
                error,
            })?;
        }
        let bind = |error| ServerError::Bind {
            path: path.to_owned(),
            error,
        };
        let listener = UnixListener::bind(path).map_err(bind)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        let (tx, calls) = mpsc::channel(QUEUE);
        let task = tokio::spawn(accept(listener, tx));
        Ok(CniServer {
            path: path.to_owned(),
            calls,
            task,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next request; `None` once the accept task stopped.
    pub async fn next(&mut self) -> Option<CniCall> {
        self.calls.recv().await
    }
}

impl Drop for CniServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The next request of an optional server; never resolves without one.
pub async fn next_call(server: &mut Option<CniServer>) -> Option<CniCall> {
    match server {
        Some(server) => server.next().await,
        None => std::future::pending().await,
    }
}

async fn accept(listener: UnixListener, calls: mpsc::Sender<CniCall>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve(stream, calls.clone()));
            }
            Err(error) => {
                tracing::warn!("CNI socket: accepting a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(mut stream: UnixStream, calls: mpsc::Sender<CniCall>) {
    let response = match read_request(&mut stream).await {
        Ok(request) => {
            let (reply, answer) = oneshot::channel();
            if calls.send(CniCall { request, reply }).await.is_err() {
                Response::error("the agent is stopping")
            } else {
                match tokio::time::timeout(REPLY_TIMEOUT, answer).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(_)) => Response::error("the agent dropped the request"),
                    Err(_) => Response::error(format!(
                        "not programmed within {} s",
                        REPLY_TIMEOUT.as_secs()
                    )),
                }
            }
        }
        Err(message) if message == EMPTY => {
            // Another agent checking whether this socket is live (or a probe).
            tracing::debug!("CNI socket: {message}");
            return;
        }
        Err(message) => {
            tracing::warn!("CNI socket: {message}");
            Response::error(message)
        }
    };
    let written = match serde_json::to_vec(&response) {
        Ok(body) => stream.write_all(&body).await.and(stream.shutdown().await),
        Err(error) => Err(std::io::Error::other(error)),
    };
    if let Err(error) = written {
        // The plugin gave up (its timeout) before the answer: it has failed or passed
        // the ADD on its own terms.
        tracing::debug!("CNI socket: writing the response: {error}");
    }
}

async fn read_request(stream: &mut UnixStream) -> Result<Request, String> {
    let mut body = Vec::new();
    let mut limited = (&mut *stream).take(MAX_MESSAGE_BYTES + 1);
    match tokio::time::timeout(READ_TIMEOUT, limited.read_to_end(&mut body)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => return Err(format!("reading a request: {error}")),
        Err(_) => {
            return Err(format!(
                "no complete request within {} s",
                READ_TIMEOUT.as_secs()
            ));
        }
    }
    if body.is_empty() {
        return Err(EMPTY.to_owned());
    }
    if body.len() as u64 > MAX_MESSAGE_BYTES {
        return Err(format!("request longer than {MAX_MESSAGE_BYTES} bytes"));
    }
    // Check the version before the shape, so a newer plugin gets a clear answer.
    let version = serde_json::from_slice::<serde_json::Value>(&body)
        .map_err(|error| format!("request is not JSON: {error}"))?
        .get("version")
        .and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(format!(
            "protocol version {} is not supported (this agent speaks {PROTOCOL_VERSION})",
            version.map_or_else(|| "missing".to_owned(), |v| v.to_string())
        ));
    }
    serde_json::from_slice(&body).map_err(|error| format!("invalid request: {error}"))
}

#[cfg(test)]
mod tests {
    use netfence_cni::protocol::{Command, Enforcement, call};

    use super::*;

    fn request() -> Request {
        Request {
            version: PROTOCOL_VERSION,
            command: Command::Add,
            container_id: "c1".to_owned(),
            netns: String::new(),
            ifname: "eth0".to_owned(),
            ips: vec!["198.18.0.5".parse().unwrap()],
            host_interfaces: Vec::new(),
            pod_namespace: None,
            pod_name: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_reaches_the_loop_and_its_answer_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/netfence/cni.sock");
        // A stale socket file (no listener) is replaced.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let mut server = CniServer::listen(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            CniServer::listen(&path),
            Err(ServerError::InUse { .. })
        ));

        let client_path = path.clone();
        let client = tokio::task::spawn_blocking(move || {
            call(&client_path, &request(), Duration::from_secs(5))
        });
        let got = server.next().await.unwrap();
        assert_eq!(got.request, request());
        got.reply
            .send(Response::ok(Some(Enforcement::DefaultDeny), "programmed"))
            .unwrap();
        let response = client.await.unwrap().unwrap();
        assert_eq!(
            response,
            Response::ok(Some(Enforcement::DefaultDeny), "programmed")
        );

        // A plugin that times out first gets a timeout error, not a hang.
        let client_path = path.clone();
        let client = tokio::task::spawn_blocking(move || {
            call(&client_path, &request(), Duration::from_millis(200))
        });
        let pending = server.next().await.unwrap();
        let error = client.await.unwrap().unwrap_err();
        assert!(
            error.to_string().contains("did not confirm within 0.2 s"),
            "{error}"
        );
        drop(pending);

        drop(server);
        assert!(!path.exists(), "the socket file is removed with the server");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn another_protocol_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cni.sock");
        let _server = CniServer::listen(&path).unwrap();
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
            stream
                .write_all(br#"{"version":2,"command":"ADD","containerId":"c"}"#)
                .unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            text
        })
        .await
        .unwrap();
        assert_eq!(
            answer,
            r#"{"version":1,"ok":false,"message":"protocol version 2 is not supported (this agent speaks 1)"}"#
        );
    }
}
