//! A client of the daemon's API over its unix socket, used by the CLI, the ssh entry and the
//! git hook.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::{ErrorBody, JobEvent};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Berth daemon at {socket}: {source}; start it with `berth daemon` \
         (or `systemctl start berth`)"
    )]
    Unreachable { socket: PathBuf, source: std::io::Error },
    /// The daemon answered with an error; the message is for the user as it is.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("unexpected answer from the Berth daemon: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    who: Option<String>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into(), who: None }
    }

    /// Names who asks (an ssh key's fingerprint) in every request, for release history.
    pub fn with_who(self, who: Option<String>) -> Client {
        Client { who, ..self }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(method, path, Some(body)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let response = self.request(method, path, body).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends a request whose answer is a stream of [`JobEvent`]s, calling `on_line` for each
    /// output line as it arrives. Returns the job's error message when it failed.
    pub async fn stream<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        on_line: impl FnMut(&str),
    ) -> Result<Result<(), String>, ClientError> {
        let (result, _) = self.stream_with_code(method, path, body, on_line).await?;
        Ok(result)
    }

    /// A `GET` whose answer is a stream of [`JobEvent`]s (`logs --follow`).
    pub async fn stream_get(
        &self,
        path: &str,
        on_line: impl FnMut(&str),
    ) -> Result<Result<(), String>, ClientError> {
        let (result, _) = self.stream_with_code(Method::GET, path, &None::<()>, on_line).await?;
        Ok(result)
    }

    /// Like [`Client::stream`], and also returns the exit status the job reported.
    pub async fn stream_with_code<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        mut on_line: impl FnMut(&str),
    ) -> Result<(Result<(), String>, Option<i32>), ClientError> {
        let mut body = self.request(method, path, Some(body)).await?.into_body();
        let mut buffer = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Protocol(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            buffer.extend_from_slice(&data);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                match serde_json::from_slice::<JobEvent>(&line) {
                    Ok(JobEvent::Line { text }) => on_line(&text),
                    Ok(JobEvent::End { ok: true, exit_code, .. }) => {
                        return Ok((Ok(()), exit_code));
                    }
                    Ok(JobEvent::End { ok: false, error, exit_code }) => {
                        let error = error.unwrap_or_else(|| "the job failed".to_owned());
                        return Ok((Err(error), exit_code));
                    }
                    Err(err) => return Err(ClientError::Protocol(err.to_string())),
                }
            }
        }
        Err(ClientError::Protocol("the daemon closed the stream before the job ended".to_owned()))
    }

    async fn request<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable { socket: self.socket.clone(), source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing_free_log(&err);
            }
        });
        let body = match body.filter(|_| method != Method::GET) {
            Some(body) => Bytes::from(
                serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?,
            ),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "berth")
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(who) = &self.who {
            request = request.header(crate::WHO_HEADER, who);
        }
        let request =
            request.body(Full::new(body)).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response =
            sender.send_request(request).await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?
            .to_bytes();
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => body.error,
            Err(_) => format!("{status}: {}", String::from_utf8_lossy(&bytes)),
        };
        Err(ClientError::Api { status, message })
    }
}

/// A connection error after the response arrived is not the caller's concern (the response
/// already says what happened); it is only worth a note when debugging.
fn tracing_free_log(err: &hyper::Error) {
    if std::env::var_os("BERTH_DEBUG").is_some() {
        eprintln!("berth: api connection: {err}");
    }
}
