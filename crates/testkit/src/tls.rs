//! A TLS client for tests (rustls with ring, blocking): handshakes that show which
//! certificate a server chose, and HTTPS requests, trusting given roots as a browser would or
//! anything at all, to look at what was served.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
    StreamOwned,
};

use crate::{DEADLINE, HttpResponse, parse_response, write_request};

/// A TLS connection to a test server, ready for reads and writes.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Whom a test client believes.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Verify the chain against these roots and the name, as a browser would.
    Roots(Vec<CertificateDer<'static>>),
    /// Accept any certificate, to look at what the server chose.
    Anything,
}

impl Trust {
    /// Trusts the certificates of a PEM text (a CA, or a self-signed certificate).
    pub fn pem(pem: &str) -> Trust {
        Trust::Roots(certificates(pem))
    }
}

/// What a completed handshake showed the client.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub chain: Vec<CertificateDer<'static>>,
    pub alpn: Option<Vec<u8>>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connects to `addr` and completes a TLS handshake for `server_name` (no SNI is sent for an
/// IP address), offering `alpn`. Reads and writes time out after [`DEADLINE`].
pub fn connect(
    addr: SocketAddr,
    server_name: &str,
    trust: Trust,
    alpn: &[&[u8]],
) -> io::Result<TlsStream> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let mut config = match trust {
        Trust::Roots(roots) => {
            let mut store = RootCertStore::empty();
            for root in roots {
                store.add(root).map_err(io::Error::other)?;
            }
            builder.with_root_certificates(store).with_no_client_auth()
        }
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let name = ServerName::try_from(server_name.to_string()).map_err(io::Error::other)?;
    let connection = ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    socket.set_read_timeout(Some(DEADLINE))?;
    socket.set_write_timeout(Some(DEADLINE))?;
    let mut stream = StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// [`connect`], then what the handshake showed: the server's chain and the protocol agreed.
pub fn handshake(
    addr: SocketAddr,
    server_name: &str,
    trust: Trust,
    alpn: &[&[u8]],
) -> io::Result<Handshake> {
    let stream = connect(addr, server_name, trust, alpn)?;
    Ok(Handshake {
        chain: stream.conn.peer_certificates().unwrap_or_default().to_vec(),
        alpn: stream.conn.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// An HTTP/1.1 request over TLS (`Host: server_name`, `Connection: close`, read to the end).
pub fn https_request(
    addr: SocketAddr,
    server_name: &str,
    trust: Trust,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<HttpResponse> {
    let mut stream = connect(addr, server_name, trust, &[b"http/1.1"])?;
    write_request(&mut stream, method, server_name, path, headers, body)?;
    let mut raw = Vec::new();
    match stream.read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify has still said everything it meant to.
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(error) => return Err(error.into()),
    }
    parse_response(&raw)
}

/// Parses PEM certificates (anything else in the text is skipped).
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok).collect()
}

/// The subject alternative DNS names of a DER certificate and its organisation, if any.
pub fn names_of(der: &CertificateDer<'_>) -> (Vec<String>, Option<String>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
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

/// The common name of a DER certificate's issuer.
pub fn issuer_of(der: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("a DER certificate");
    let name = cert.issuer().iter_common_name().next().and_then(|cn| cn.as_str().ok());
    name.unwrap_or_default().to_string()
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
