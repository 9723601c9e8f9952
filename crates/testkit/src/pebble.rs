//! A real ACME server for tests: Debian's `pebble`, with `pebble-challtestsrv` (same package)
//! as its DNS server answering 127.0.0.1 for every name, each on free loopback ports. It
//! validates challenges for real: HTTP-01 at `127.0.0.1:HTTP_PORT`, TLS-ALPN-01 at
//! `127.0.0.1:TLS_PORT`, so the server under test must answer there.
//!
//! Debian does not ship pebble's test certificates, so each run makes its own CA and a
//! certificate for pebble's HTTPS listener, and the ACME client trusts that CA.

use std::fs;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::{Trust, https_request};
use crate::{DEADLINE, free_port};

#[derive(Debug)]
pub struct Pebble {
    pub directory_url: String,
    /// The CA that signed pebble's own HTTPS certificate (not the CA that issues).
    pub https_ca: PathBuf,
    management: SocketAddr,
    children: Vec<Child>,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 at `127.0.0.1:http_port` and TLS-ALPN-01 at
    /// `127.0.0.1:tls_port`. Its own ports are picked free; if one was taken meanwhile, it
    /// retries.
    pub fn start(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
        let mut last_log = String::new();
        for attempt in 0..3 {
            let dir = dir.join(format!("pebble-{attempt}"));
            fs::create_dir_all(&dir).unwrap();
            match Pebble::try_start(&dir, http_port, tls_port) {
                Ok(pebble) => return pebble,
                Err(log) => last_log = log,
            }
        }
        panic!("pebble did not start:\n{last_log}");
    }

    fn try_start(dir: &Path, http_port: u16, tls_port: u16) -> Result<Pebble, String> {
        for tool in ["pebble", "pebble-challtestsrv"] {
            let found = Command::new(tool)
                .arg("-h")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
            assert!(found, "{tool} is not installed: apt-get install pebble");
        }
        let https_ca = write_https_certificates(dir);
        let listen = free_port();
        let management = free_port();
        let dns = free_udp_port();
        let dns_management = free_port();
        let config = format!(
            r#"{{"pebble": {{
                "listenAddress": "127.0.0.1:{listen}",
                "managementListenAddress": "127.0.0.1:{management}",
                "certificate": "{dir}/pebble-cert.pem",
                "privateKey": "{dir}/pebble-key.pem",
                "httpPort": {http_port},
                "tlsPort": {tls_port},
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }}}}"#,
            dir = dir.display()
        );
        fs::write(dir.join("pebble.json"), config).unwrap();

        let log = |name: &str| fs::File::create(dir.join(name)).unwrap();
        let mut children = Vec::new();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .unwrap();
        children.push(dns_server);
        let pebble = Command::new("pebble")
            .args(["-config", &dir.join("pebble.json").display().to_string()])
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap();
        children.push(pebble);
        let mut pebble = Pebble {
            directory_url: format!("https://127.0.0.1:{listen}/dir"),
            https_ca,
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            children,
        };

        // Ready when both listen; a child that exited lost a port race.
        let deadline = Instant::now() + DEADLINE;
        let ports = [listen, management, dns_management];
        loop {
            let exited =
                pebble.children.iter_mut().any(|child| child.try_wait().unwrap().is_some());
            if exited || Instant::now() > deadline {
                let mut log = String::new();
                for name in ["pebble.log", "pebble.err", "challtestsrv.log", "challtestsrv.err"] {
                    let text = fs::read_to_string(dir.join(name)).unwrap_or_default();
                    log.push_str(&format!("--- {name}\n{text}"));
                }
                return Err(log);
            }
            let up = |port: u16| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if ports.iter().all(|port| up(*port)) {
                return Ok(pebble);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The root of the certificates pebble issues (made afresh on each start), as PEM, fetched
    /// from its management interface.
    pub fn issuing_root(&self) -> String {
        let https_ca = fs::read_to_string(&self.https_ca).unwrap();
        let answer = https_request(
            self.management,
            "127.0.0.1",
            Trust::pem(&https_ca),
            "GET",
            "/roots/0",
            &[],
            "",
        )
        .expect("pebble's management interface answers");
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Makes a CA and a certificate for 127.0.0.1 and localhost signed by it, for pebble's
/// HTTPS; returns the CA's path.
fn write_https_certificates(dir: &Path) -> PathBuf {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "berth test pebble https CA");
    ca_params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    fs::write(dir.join("pebble-cert.pem"), cert.pem()).unwrap();
    fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();
    let ca_path = dir.join("pebble-https-ca.pem");
    fs::write(&ca_path, ca.pem()).unwrap();
    ca_path
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
