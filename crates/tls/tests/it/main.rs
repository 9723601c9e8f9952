//! berth-tls against real sockets: rustls clients handshaking with the resolver, and a real
//! ACME server (pebble) validating real HTTP-01 and TLS-ALPN-01 responders on loopback.

mod acme;
mod serving;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_testkit::pebble::Pebble;
pub use berth_testkit::tls::{Handshake, Trust, certificates, names_of};
use berth_tls::{AcmeConfig, Http01Tokens};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// Every wait is bounded, so a bug fails a test instead of hanging it.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Connects to `addr` and completes a TLS handshake for `server_name` (no SNI is sent for an
/// IP address), offering `alpn`: testkit's blocking client, off the runtime's threads so
/// that the server under test keeps running on them.
pub async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    trust: Trust,
    alpn: &[&[u8]],
) -> io::Result<Handshake> {
    let server_name = server_name.to_string();
    let alpn: Vec<Vec<u8>> = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    tokio::task::spawn_blocking(move || {
        let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        berth_testkit::tls::handshake(addr, &server_name, trust, &alpn)
    })
    .await
    .expect("the handshake did not panic")
}

/// An ACME configuration for `pebble`, trusting its HTTPS.
pub fn acme_config(pebble: &Pebble) -> AcmeConfig {
    AcmeConfig {
        directory_url: pebble.directory_url.clone(),
        contact_email: Some("admin@berth.test".into()),
        trust_root_pem: Some(pebble.https_ca.clone()),
    }
}

/// Completes TLS handshakes on `listener` with `config` and closes each connection: enough
/// for clients that look at certificates, and for a CA validating TLS-ALPN-01.
pub fn serve_handshakes(listener: TcpListener, config: Arc<ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(Ok(mut tls)) = timeout(DEADLINE, acceptor.accept(stream)).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
}

/// Answers `GET /.well-known/acme-challenge/TOKEN` from `tokens`, as the router does on
/// plain HTTP; anything else gets a 404.
pub fn serve_http01(listener: TcpListener, tokens: Http01Tokens) {
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("");
                let answer = path
                    .strip_prefix("/.well-known/acme-challenge/")
                    .and_then(|token| tokens.key_authorization(token));
                let response = match answer {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    }
                };
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
}
