//! skogctl's side of the API: one HTTP/1.1 GET over the Unix socket, JSON back.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket: skogd is not running (or runs with another socket).
    #[error("cannot reach skogd at {socket}: {source} (is skogd running? --socket to use another)")]
    Unreachable {
        /// The socket path.
        socket: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed midway.
    #[error("talking to skogd: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a bad path).
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    /// skogd answered with an error.
    #[error("skogd: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// skogd's message.
        message: String,
    },
    /// The answer was not what this skogctl understands (a version mismatch).
    #[error("unexpected answer from skogd: {0}")]
    Decode(#[from] serde_json::Error),
}

/// GETs `path` (e.g. `/v1/peers`) from the skogd listening on `socket`.
pub async fn get<T: DeserializeOwned>(socket: &Path, path: &str) -> Result<T, ClientError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Unreachable {
            socket: socket.into(),
            source,
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", "skogd")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    driver.abort();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(ClientError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    Ok(serde_json::from_slice(&body)?)
}
