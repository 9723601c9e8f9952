//! The certificates on disk (`certs/DOMAIN/{cert,key}.pem`) and their in-memory index, which
//! handshakes read without locking and which is replaced whole when a certificate arrives.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

use crate::certificate::{
    CertError, CertInfo, CertOrigin, ParsedCert, normalize_name, parse_pair, validate_domain,
};

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";
/// `acme` or `user`: whether Berth may renew the certificate.
const ORIGIN_FILE: &str = "origin";
/// Holds ACME account credentials; a leading dot keeps it apart from domain directories,
/// since no domain name starts with one.
pub(crate) const ACME_DIR: &str = ".acme";
/// A wildcard's directory: `*` is legal in a file name but a trap in every shell.
const WILDCARD_PREFIX: &str = "_wildcard.";

/// Certificates per domain, kept under one directory (`$BERTH_ROOT/certs`).
///
/// Readers (the TLS resolver, on every handshake) see one immutable snapshot; a new
/// certificate is written to disk first, then a new snapshot is swapped in, so a handshake
/// never sees a half-written pair and never waits for a writer.
///
/// The store also holds the certificates that answer pending TLS-ALPN-01 challenges, which
/// live only in memory for the few seconds a validation takes.
pub struct CertStore {
    dir: PathBuf,
    index: ArcSwap<Index>,
    /// Serialises writers, so two inserts cannot each build a snapshot from the same old one
    /// and lose the other's certificate.
    writer: Mutex<()>,
    tls_alpn_challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("dir", &self.dir)
            .field("certificates", &self.index.load().entries.len())
            .finish()
    }
}

#[derive(Default)]
struct Index {
    /// One per directory, sorted by directory name.
    entries: Vec<Arc<Entry>>,
    /// Every name of every certificate (wildcards as `*.example.com`), to the entry that
    /// expires last among those carrying that name.
    by_name: HashMap<String, Arc<Entry>>,
}

struct Entry {
    dir_name: String,
    cert: ParsedCert,
}

impl Index {
    fn new(mut entries: Vec<Arc<Entry>>) -> Index {
        entries.sort_by(|a, b| a.dir_name.cmp(&b.dir_name));
        let mut by_name: HashMap<String, Arc<Entry>> = HashMap::new();
        for entry in &entries {
            for name in &entry.cert.info.names {
                let better = by_name
                    .get(name)
                    .is_none_or(|old| old.cert.info.not_after < entry.cert.info.not_after);
                if better {
                    by_name.insert(name.clone(), Arc::clone(entry));
                }
            }
        }
        Index { entries, by_name }
    }

    fn find(&self, name: &str) -> Option<&Arc<Entry>> {
        if let Some(entry) = self.by_name.get(name) {
            return Some(entry);
        }
        let (_, parent) = name.split_once('.')?;
        self.by_name.get(&format!("*.{parent}"))
    }
}

impl CertStore {
    /// Opens (creating it, mode 0700) the directory and loads every certificate in it.
    ///
    /// A certificate that cannot be loaded is logged and skipped: one bad file must not keep
    /// the router from serving every other site. Only an unreadable directory is an error.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<CertStore> {
        let dir = dir.into();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        let mut entries = Vec::new();
        for item in fs::read_dir(&dir)? {
            let item = item?;
            let dir_name = item.file_name().to_string_lossy().into_owned();
            if dir_name.starts_with('.') || !item.file_type()?.is_dir() {
                continue;
            }
            match load_entry(&item.path()) {
                Ok(cert) => {
                    if cert.info.not_after <= SystemTime::now() {
                        tracing::warn!(
                            domain = %dir_name,
                            "the certificate in {} expired on {}",
                            item.path().display(),
                            cert.info.not_after_text()
                        );
                    }
                    entries.push(Arc::new(Entry { dir_name, cert }));
                }
                Err(error) => {
                    tracing::warn!(
                        domain = %dir_name,
                        "skipping the certificate in {}: {error}",
                        item.path().display()
                    );
                }
            }
        }
        tracing::debug!(dir = %dir.display(), n_certificates = entries.len(), "certificates loaded");
        Ok(CertStore {
            dir,
            index: ArcSwap::from_pointee(Index::new(entries)),
            writer: Mutex::new(()),
            tls_alpn_challenges: RwLock::new(HashMap::new()),
        })
    }

    /// The directory the certificates are kept in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a certificate a user brought (`certs:add`), for `domains` (or, if empty, for the
    /// names in the certificate), replacing the one stored under the first domain.
    ///
    /// `cert_pem` is the chain, leaf first; `key_pem` the leaf's private key (PKCS#8, PKCS#1
    /// or SEC1). Refused, with a message that names the problem, when either is not PEM, the
    /// key is not the certificate's, the certificate has expired or is not valid yet, or it
    /// does not cover one of `domains`.
    pub fn insert(
        &self,
        domains: &[&str],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertInfo, CertError> {
        self.insert_with_origin(domains, cert_pem, key_pem, CertOrigin::User)
    }

    pub(crate) fn insert_with_origin(
        &self,
        domains: &[&str],
        cert_pem: &[u8],
        key_pem: &[u8],
        origin: CertOrigin,
    ) -> Result<CertInfo, CertError> {
        let domains =
            domains.iter().map(|domain| validate_domain(domain)).collect::<Result<Vec<_>, _>>()?;
        let cert = parse_pair(cert_pem, key_pem, origin, Some(SystemTime::now()))?;
        for domain in &domains {
            if !cert.info.covers(domain) {
                return Err(CertError::NameMismatch {
                    domain: domain.clone(),
                    names: cert.info.names.clone(),
                });
            }
        }
        let primary = match domains.first() {
            Some(domain) => domain.clone(),
            None => validate_domain(&cert.info.names[0])?,
        };
        let dir_name = dir_name_for(&primary);

        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        write_pair(&self.dir.join(&dir_name), cert_pem, key_pem, origin)?;
        let info = cert.info.clone();
        let old = self.index.load();
        let mut entries: Vec<Arc<Entry>> =
            old.entries.iter().filter(|entry| entry.dir_name != dir_name).cloned().collect();
        entries.push(Arc::new(Entry { dir_name, cert }));
        self.index.store(Arc::new(Index::new(entries)));
        tracing::info!(
            names = %info.names.join(","),
            issuer = %info.issuer,
            origin = %info.origin,
            "certificate stored; valid until {}",
            info.not_after_text()
        );
        Ok(info)
    }

    /// Removes the certificate stored under `domain` (the first domain it was added for).
    /// Returns whether there was one.
    pub fn remove(&self, domain: &str) -> Result<bool, CertError> {
        let dir_name = dir_name_for(&validate_domain(domain)?);
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.dir.join(&dir_name);
        match fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(CertError::Io { path, source }),
        }
        let old = self.index.load();
        let entries =
            old.entries.iter().filter(|entry| entry.dir_name != dir_name).cloned().collect();
        self.index.store(Arc::new(Index::new(entries)));
        Ok(true)
    }

    /// The certificate to serve for `name` (an SNI name): an exact match, else a wildcard
    /// one label up. Among several, the one that expires last.
    pub fn lookup(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = normalize_name(name);
        self.index.load().find(&name).map(|entry| Arc::clone(&entry.cert.certified))
    }

    /// What is known about the certificate served for `name`, if one is stored.
    pub fn covering(&self, name: &str) -> Option<CertInfo> {
        let name = normalize_name(name);
        self.index.load().find(&name).map(|entry| entry.cert.info.clone())
    }

    /// Every stored certificate, for `berth certs`.
    pub fn info(&self) -> Vec<CertInfo> {
        self.index.load().entries.iter().map(|entry| entry.cert.info.clone()).collect()
    }

    /// Whether a stored certificate is valid for all of `domains`.
    pub(crate) fn covering_all(&self, domains: &[String]) -> Option<CertInfo> {
        let index = self.index.load();
        let mut found: Option<CertInfo> = None;
        for domain in domains {
            let entry = index.find(domain)?;
            // The earliest expiry among the certificates that together cover the set is the
            // one that decides when the set needs renewing.
            if found.as_ref().is_none_or(|info| entry.cert.info.not_after < info.not_after) {
                found = Some(entry.cert.info.clone());
            }
        }
        found
    }

    pub(crate) fn set_tls_alpn_challenge(&self, domain: &str, key: Arc<CertifiedKey>) {
        let mut challenges =
            self.tls_alpn_challenges.write().unwrap_or_else(PoisonError::into_inner);
        challenges.insert(normalize_name(domain), key);
    }

    pub(crate) fn remove_tls_alpn_challenge(&self, domain: &str) {
        let mut challenges =
            self.tls_alpn_challenges.write().unwrap_or_else(PoisonError::into_inner);
        challenges.remove(&normalize_name(domain));
    }

    pub(crate) fn tls_alpn_challenge(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let challenges = self.tls_alpn_challenges.read().unwrap_or_else(PoisonError::into_inner);
        challenges.get(&normalize_name(name)).cloned()
    }
}

fn dir_name_for(domain: &str) -> String {
    match domain.strip_prefix("*.") {
        Some(parent) => format!("{WILDCARD_PREFIX}{parent}"),
        None => domain.to_string(),
    }
}

/// Loads one domain directory, first finishing a replacement that a crash interrupted.
///
/// A replacement writes `key.pem.new` and `cert.pem.new` (both synced), then renames the
/// key, then the certificate. So a lone `cert.pem.new` means the new key is already in
/// place and the certificate must follow; a `key.pem.new` means nothing was renamed yet,
/// and the old pair is still whole.
fn load_entry(dir: &Path) -> Result<ParsedCert, CertError> {
    let new_cert = dir.join(format!("{CERT_FILE}.new"));
    let new_key = dir.join(format!("{KEY_FILE}.new"));
    if new_key.exists() {
        let _ = fs::remove_file(&new_key);
        let _ = fs::remove_file(&new_cert);
    } else if new_cert.exists() {
        let cert_path = dir.join(CERT_FILE);
        fs::rename(&new_cert, &cert_path)
            .map_err(|source| CertError::Io { path: cert_path, source })?;
    }
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(|source| CertError::Io { path, source })
    };
    let origin = fs::read_to_string(dir.join(ORIGIN_FILE))
        .map(|text| CertOrigin::parse(&text))
        .unwrap_or(CertOrigin::User);
    parse_pair(&read(CERT_FILE)?, &read(KEY_FILE)?, origin, None)
}

fn write_pair(
    dir: &Path,
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: CertOrigin,
) -> Result<(), CertError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CertError::Io { path, source }
    };
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_error(dir))?;
    let new_key = dir.join(format!("{KEY_FILE}.new"));
    let new_cert = dir.join(format!("{CERT_FILE}.new"));
    write_private(&new_key, key_pem).map_err(io_error(&new_key))?;
    write_private(&new_cert, cert_pem).map_err(io_error(&new_cert))?;
    let origin_path = dir.join(ORIGIN_FILE);
    write_private(&origin_path, format!("{origin}\n").as_bytes())
        .map_err(io_error(&origin_path))?;
    let key = dir.join(KEY_FILE);
    fs::rename(&new_key, &key).map_err(io_error(&key))?;
    let cert = dir.join(CERT_FILE);
    fs::rename(&new_cert, &cert).map_err(io_error(&cert))?;
    // The renames are durable once the directory is synced; a failure here only risks the
    // recovery above, so it is not worth refusing the certificate over.
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// Writes a file only its owner can read, synced to disk before it is renamed into place.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file =
        fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_testkit::TempDir;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn inserted_certificates_are_found_and_survive_a_reload() {
        let temp = TempDir::new("tls-store");
        let dir = temp.path().join("certs");
        let store = CertStore::open(&dir).unwrap();
        let (cert, key) = pair(&["example.com", "www.example.com"]);
        let info = store.insert(&["example.com"], cert.as_bytes(), key.as_bytes()).unwrap();
        assert_eq!(info.names, ["example.com", "www.example.com"]);
        assert_eq!(info.origin, CertOrigin::User);
        let (wild_cert, wild_key) = pair(&["*.apps.example.com"]);
        store.insert(&[], wild_cert.as_bytes(), wild_key.as_bytes()).unwrap();

        assert!(dir.join("example.com/cert.pem").exists());
        assert!(dir.join("_wildcard.apps.example.com/key.pem").exists());
        let mode = fs::metadata(dir.join("example.com/key.pem")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);

        let reopened = CertStore::open(&dir).unwrap();
        for store in [&store, &reopened] {
            assert!(store.lookup("WWW.example.com").is_some());
            assert!(store.lookup("one.apps.example.com").is_some());
            assert!(store.lookup("apps.example.com").is_none());
            assert!(store.lookup("other.com").is_none());
            assert_eq!(store.info().len(), 2);
            assert!(store.info().iter().any(|info| info.covers("x.apps.example.com")));
        }
        assert_eq!(
            reopened.covering("www.example.com").unwrap().names,
            ["example.com", "www.example.com"]
        );

        assert!(store.remove("example.com").unwrap());
        assert!(store.lookup("example.com").is_none());
        assert!(!store.remove("example.com").unwrap());
    }

    #[test]
    fn a_certificate_for_other_names_is_refused() {
        let temp = TempDir::new("tls-store");
        let store = CertStore::open(temp.path()).unwrap();
        let (cert, key) = pair(&["other.com"]);
        let error = store.insert(&["example.com"], cert.as_bytes(), key.as_bytes()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the certificate does not cover example.com; it is for other.com"
        );
        assert!(store.info().is_empty());
    }

    #[test]
    fn an_interrupted_replacement_is_finished_or_undone() {
        let temp = TempDir::new("tls-store");
        let store = CertStore::open(temp.path()).unwrap();
        let (old_cert, old_key) = pair(&["example.com"]);
        store.insert(&["example.com"], old_cert.as_bytes(), old_key.as_bytes()).unwrap();
        let (new_cert, new_key) = pair(&["example.com"]);
        let dir = temp.path().join("example.com");

        // Crashed after the key was renamed: the certificate must follow it.
        fs::write(dir.join("key.pem"), &new_key).unwrap();
        fs::write(dir.join("cert.pem.new"), &new_cert).unwrap();
        let reopened = CertStore::open(temp.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.join("cert.pem")).unwrap(), new_cert);
        assert!(reopened.lookup("example.com").is_some());

        // Crashed before any rename: the old pair stays.
        fs::write(dir.join("key.pem.new"), &old_key).unwrap();
        fs::write(dir.join("cert.pem.new"), "partial").unwrap();
        let reopened = CertStore::open(temp.path()).unwrap();
        assert!(reopened.lookup("example.com").is_some());
        assert!(!dir.join("key.pem.new").exists() && !dir.join("cert.pem.new").exists());
    }

    #[test]
    fn a_broken_directory_is_skipped() {
        let temp = TempDir::new("tls-store");
        fs::create_dir(temp.path().join("broken.com")).unwrap();
        fs::write(temp.path().join("broken.com/cert.pem"), "nothing").unwrap();
        fs::write(temp.path().join("broken.com/key.pem"), "nothing").unwrap();
        let store = CertStore::open(temp.path()).unwrap();
        assert!(store.info().is_empty());
    }
}
