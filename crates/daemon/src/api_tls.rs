//! The TCP API over HTTPS (`--api-host`): TLS with the router's certificates (the API host's
//! from ACME or the cert store, self-signed until one is there), HTTP/1.1 by ALPN. A client
//! that speaks plain HTTP to the port gets a 400 that names the https URL to use instead of
//! a broken handshake.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_api::ErrorBody;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to send its first bytes and finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Connections whose TLS handshake is done, for `axum::serve`. Handshakes run in tasks of
/// their own, so one slow client does not hold up the others.
pub struct TlsListener {
    handshaken: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

/// Accepts connections on `listener` until `shutdown` resolves and completes their TLS
/// handshakes with the certificates of `certs`; `url` (the API's https URL) is what a client
/// speaking plain HTTP is told to use.
pub fn listen(
    listener: TcpListener,
    certs: Arc<berth_tls::CertStore>,
    url: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<TlsListener> {
    let local = listener.local_addr()?;
    // The API speaks HTTP/1.1 only, so that is all ALPN may agree on.
    let mut config = (*berth_tls::server_config(certs)).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (sender, handshaken) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: give the others a moment to close.
                    tracing::warn!("the API cannot accept a connection: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, sender, url) = (acceptor.clone(), sender.clone(), url.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    let mut first = [0u8; 1];
                    if stream.peek(&mut first).await.ok()? == 0 {
                        return None;
                    }
                    if first[0] != TLS_HANDSHAKE_RECORD {
                        refuse_plain_http(stream, &url).await;
                        return None;
                    }
                    match acceptor.accept(stream).await {
                        Ok(tls) => Some(tls),
                        Err(error) => {
                            tracing::debug!(%peer, "API TLS handshake failed: {error}");
                            None
                        }
                    }
                });
                if let Ok(Some(tls)) = handshake.await {
                    let _ = sender.send((tls, peer)).await;
                }
            });
        }
    });
    Ok(TlsListener { handshaken, local })
}

/// Answers a plain HTTP request with a 400 naming the https URL. The request's head is read
/// first: closing a socket with unread data would reset the connection and lose the answer.
async fn refuse_plain_http(mut stream: TcpStream, url: &str) {
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let error = ErrorBody { error: plain_http_message(url) };
    let body = serde_json::to_string(&error).unwrap_or_default();
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn plain_http_message(url: &str) -> String {
    format!("this port serves Berth's API over HTTPS only: use {url}")
}

/// The API's URL for people: `https://HOST/`, with the port unless it is 443.
pub fn api_url(host: &str, port: u16) -> String {
    if port == 443 { format!("https://{host}/") } else { format!("https://{host}:{port}/") }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(connection) => connection,
            // The accepting task ended (shutdown): no connection will come any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_url_leaves_out_the_https_port() {
        assert_eq!(api_url("api.example.com", 443), "https://api.example.com/");
        assert_eq!(api_url("api.example.com", 8443), "https://api.example.com:8443/");
        assert_eq!(
            plain_http_message("https://api.example.com/"),
            "this port serves Berth's API over HTTPS only: use https://api.example.com/"
        );
    }
}
