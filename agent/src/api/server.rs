//! The API server: axum on a Unix socket (mode 0660). Each request becomes an [`ApiRequest`]
//! for the task that owns the state; the server itself holds none.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use super::ApiRequest;
use super::types::{RouteFilter, TraceQuery};

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Preparing or binding the socket failed.
    #[error("API socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Binds `socket` (replacing a stale socket file, never another kind of file) with mode 0660.
pub fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Socket {
        path: socket.display().to_string(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(socket).map_err(err)?,
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    owner: mpsc::Sender<ApiRequest>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(owner))
        .with_graceful_shutdown(shutdown)
        .await
}

fn router(owner: mpsc::Sender<ApiRequest>) -> Router {
    Router::new()
        .route(
            "/v1/status",
            get(|State(o): State<Owner>| async move {
                respond(ask(&o, |reply| ApiRequest::Status { reply }).await.map(Ok))
            }),
        )
        .route(
            "/v1/peers",
            get(|State(o): State<Owner>| async move {
                respond(ask(&o, |reply| ApiRequest::Peers { reply }).await.map(Ok))
            }),
        )
        .route(
            "/v1/routes",
            get(
                |State(o): State<Owner>, Query(filter): Query<RouteFilter>| async move {
                    respond(ask(&o, |reply| ApiRequest::Routes { filter, reply }).await)
                },
            ),
        )
        .route(
            "/v1/endpoints",
            get(|State(o): State<Owner>| async move {
                respond(
                    ask(&o, |reply| ApiRequest::Endpoints { reply })
                        .await
                        .map(Ok),
                )
            }),
        )
        .route(
            "/v1/policy/{interface}",
            get(
                |State(o): State<Owner>, UrlPath(interface): UrlPath<String>| async move {
                    respond(ask(&o, |reply| ApiRequest::PolicyShow { interface, reply }).await)
                },
            ),
        )
        .route(
            "/v1/policy-trace",
            get(
                |State(o): State<Owner>, Query(query): Query<TraceQuery>| async move {
                    respond(ask(&o, |reply| ApiRequest::PolicyTrace { query, reply }).await)
                },
            ),
        )
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such API path (this is /v1)".into(),
            )
        })
        .with_state(owner)
}

type Owner = mpsc::Sender<ApiRequest>;

/// The owner task is gone (skogd is shutting down).
struct Unavailable;

/// Sends a request to the owner task and waits for its answer.
async fn ask<T>(
    owner: &Owner,
    request: impl FnOnce(oneshot::Sender<T>) -> ApiRequest,
) -> Result<T, Unavailable> {
    let (tx, rx) = oneshot::channel();
    owner.send(request(tx)).await.map_err(|_| Unavailable)?;
    rx.await.map_err(|_| Unavailable)
}

/// The answer as JSON; a refusal (unknown interface, bad address) is a 400, a gone owner a 503.
fn respond<T: Serialize>(answer: Result<Result<T, String>, Unavailable>) -> Response {
    match answer {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(message)) => error(StatusCode::BAD_REQUEST, message),
        Err(Unavailable) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "skogd is shutting down".into(),
        ),
    }
}

/// Errors are JSON too: `{"error": "..."}`.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
