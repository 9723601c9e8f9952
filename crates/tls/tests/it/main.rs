//! berth-tls against real sockets: rustls clients handshaking with the resolver, and a real
//! ACME server (pebble) validating real HTTP-01 and TLS-ALPN-01 responders on loopback.

mod acme;
mod pebble;
mod serving;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_tls::Http01Tokens;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// Every wait is bounded, so a bug fails a test instead of hanging it.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whom a test client believes.
pub enum Trust {
    /// Verify the chain against these roots and the name, as a browser would.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate, to look at what the server chose.
    Anything,
}

/// What a completed handshake showed the client.
pub struct Handshake {
    pub chain: Vec<CertificateDer<'static>>,
    pub alpn: Option<Vec<u8>>,
}

/// Connects to `addr` and completes a TLS handshake for `server_name` (no SNI is sent for an
/// IP address), offering `alpn`.
pub async fn handshake(
    addr: SocketAddr,
    server_name: &str,
    trust: Trust,
    alpn: &[&[u8]],
) -> io::Result<Handshake> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut config = match trust {
        Trust::Roots(roots) => {
            let mut store = RootCertStore::empty();
            for root in roots {
                store.add(root).unwrap();
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_string()).unwrap();
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let tls = connector.connect(name, stream).await?;
        let (_, connection) = tls.get_ref();
        Ok(Handshake {
            chain: connection.peer_certificates().unwrap_or_default().to_vec(),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
        })
    };
    timeout(DEADLINE, exchange).await.expect("the handshake finished in time")
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

/// A loopback port where nothing listens.
pub async fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port()
}

/// Parses PEM certificates.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().unwrap()
}

/// The subject alternative DNS names of a DER certificate and its organisation, if any.
pub fn names_of(der: &CertificateDer<'_>) -> (Vec<String>, Option<String>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(name) = name {
                names.push(name.to_string());
            }
        }
    }
    let organization =
        cert.subject().iter_organization().next().and_then(|o| o.as_str().ok()).map(String::from);
    (names, organization)
}

#[derive(Debug)]
struct AcceptAnything(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
