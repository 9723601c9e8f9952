//! HTTP basic authentication per app (`auth:set`): users and salted slow hashes of their
//! passwords, checked by the router before a request reaches the app.
//!
//! Passwords are kept as PBKDF2-HMAC-SHA256 hashes in the PHC string format
//! (`$pbkdf2-sha256$i=600000$SALT$HASH`, base64 without padding), from `ring`, which rustls
//! already brings in. A slow hash per request would cost the router dearly, so a
//! [`BasicAuth`] remembers the credentials it verified: the next request with the same
//! `Authorization` header costs a SHA-256 and a constant-time comparison. The memory
//! belongs to one set of users: the daemon makes a new [`BasicAuth`] (and so forgets) when
//! a user is added, changed or removed, and publishes it in a new route table at once.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};
use ring::digest::{SHA256, digest};
use ring::pbkdf2::{PBKDF2_HMAC_SHA256, derive, verify};
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// OWASP's recommendation for PBKDF2-HMAC-SHA256 (2023). Each hash records its own count, so
/// raising this later leaves existing passwords valid.
const ITERATIONS: u32 = 600_000;
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
const SCHEME: &str = "pbkdf2-sha256";

/// How many verified credentials one app remembers; past that the memory starts over. Only
/// correct credentials are remembered, so this is reached only by many users or spellings.
const MAX_REMEMBERED: usize = 256;

/// How many slow hashes run at once in the whole process: a flood of wrong passwords must
/// not take every core from the apps and the daemon.
static VERIFY_SLOTS: Semaphore = Semaphore::const_new(2);

/// Why a password could not be hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashError(String);

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HashError {}

/// A salted PBKDF2-HMAC-SHA256 hash of `password` in the PHC string format, for the store.
/// Slow on purpose (about as long as a visitor's first request takes to verify): call it
/// off the async threads.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    hash_with_iterations(password.as_bytes(), NonZeroU32::new(ITERATIONS).expect("not zero"))
}

fn hash_with_iterations(password: &[u8], iterations: NonZeroU32) -> Result<String, HashError> {
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| HashError("the system's random number generator failed".into()))?;
    let mut hash = [0u8; HASH_LEN];
    derive(PBKDF2_HMAC_SHA256, iterations, &salt, password, &mut hash);
    Ok(format!(
        "${SCHEME}$i={iterations}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(hash)
    ))
}

/// A stored password hash, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
    /// As stored: part of the key of remembered credentials, so a new password for a user
    /// never matches what was remembered for the old one.
    text: String,
}

impl PasswordHash {
    /// Parses what [`hash_password`] made; `None` for anything else.
    pub(crate) fn parse(text: &str) -> Option<PasswordHash> {
        let rest = text.strip_prefix('$')?;
        let mut parts = rest.split('$');
        let (scheme, params, salt, hash) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if scheme != SCHEME || parts.next().is_some() {
            return None;
        }
        let iterations: u32 = params.strip_prefix("i=")?.parse().ok()?;
        let salt = STANDARD_NO_PAD.decode(salt).ok()?;
        let hash = STANDARD_NO_PAD.decode(hash).ok()?;
        if salt.is_empty() || hash.len() != HASH_LEN {
            return None;
        }
        Some(PasswordHash {
            iterations: NonZeroU32::new(iterations)?,
            salt,
            hash,
            text: text.to_owned(),
        })
    }

    /// Whether `password` is the one hashed (ring compares in constant time). Slow.
    fn verify(&self, password: &[u8]) -> bool {
        verify(PBKDF2_HMAC_SHA256, self.iterations, &self.salt, password, &self.hash).is_ok()
    }
}

/// The user name and password of a `Basic` `Authorization` value (RFC 7617): the scheme in
/// any case, then base64 (padded or not) of `USER:PASSWORD`. The user name is text without
/// a colon; the password is whatever follows the first colon.
pub(crate) fn parse_basic(value: &HeaderValue) -> Option<(String, Vec<u8>)> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let value = value.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = LENIENT.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

/// A `Basic` `Authorization` value for `user` and `password`, as a browser sends it.
#[cfg(test)]
pub(crate) fn basic_value(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// One app's users, for [`crate::Backend::with_basic_auth`]: requests without the
/// credentials of one of them get a 401 asking for them.
#[derive(Debug)]
pub struct BasicAuth {
    realm: String,
    /// The users whose hash could be read.
    users: HashMap<String, Arc<PasswordHash>>,
    /// Every user given, those with an unreadable hash included: they still close the app.
    n_users: usize,
    /// What an unknown user's password is checked against: a hash of no password with as
    /// many iterations as the slowest user's, so that an unknown name takes as long to refuse
    /// as a wrong password and names cannot be probed by timing.
    unknown_user: Arc<PasswordHash>,
    /// Credentials verified since this set of users was made: a fast keyed hash of the header value
    /// and the stored hash, to the SHA-256 of the header value, which a hit must match.
    verified: Mutex<HashMap<u64, [u8; 32]>>,
    /// Keys the fast hash with random keys, so nobody can aim for a collision.
    hasher: std::collections::hash_map::RandomState,
}

impl BasicAuth {
    /// `users` as (name, hash made by [`hash_password`]); the browser shows `realm` (the
    /// app's name) when it asks for them. A hash that cannot be read locks its user out
    /// (and is logged), but never opens the app.
    pub fn new(
        realm: impl Into<String>,
        users: impl IntoIterator<Item = (String, String)>,
    ) -> BasicAuth {
        let realm = realm.into();
        let users: Vec<(String, String)> = users.into_iter().collect();
        let n_users = users.len();
        let users = users
            .into_iter()
            .filter_map(|(user, text)| match PasswordHash::parse(&text) {
                Some(hash) => Some((user, Arc::new(hash))),
                None => {
                    tracing::warn!(realm, user, "the stored password hash is unreadable; set the password again with auth:set");
                    None
                }
            })
            .collect::<HashMap<_, _>>();
        let iterations = users.values().map(|hash| hash.iterations).max();
        let unknown_user = Arc::new(PasswordHash {
            iterations: iterations.unwrap_or(NonZeroU32::new(ITERATIONS).expect("not zero")),
            salt: vec![0; SALT_LEN],
            hash: vec![0; HASH_LEN],
            text: String::new(),
        });
        BasicAuth {
            realm,
            users,
            n_users,
            unknown_user,
            verified: Mutex::default(),
            hasher: Default::default(),
        }
    }

    /// Whether there are no users, in which case nothing is asked.
    pub fn is_empty(&self) -> bool {
        self.n_users == 0
    }

    /// What the browser is told to ask for: `Basic realm="APP"`.
    pub(crate) fn challenge(&self) -> HeaderValue {
        // App names are plain; anything else falls back to a realm that needs no quoting.
        HeaderValue::from_str(&format!("Basic realm=\"{}\"", self.realm.replace(['"', '\\'], "")))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"berth\""))
    }

    /// Whether the request carries the name and password of one of the users. The first
    /// time a credential is seen it is hashed on a blocking thread; a correct one is then
    /// remembered for as long as this set of users is.
    pub(crate) async fn allows(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else { return false };
        let Some((user, password)) = parse_basic(value) else { return false };
        let known = self.users.get(&user);
        let stored = Arc::clone(known.unwrap_or(&self.unknown_user));
        let key = self.hasher.hash_one((value.as_bytes(), stored.text.as_str()));
        let fingerprint: [u8; 32] =
            digest(&SHA256, value.as_bytes()).as_ref().try_into().expect("SHA-256 is 32 bytes");
        let is_remembered = || {
            let remembered = self.remembered();
            remembered.get(&key).is_some_and(|seen| bool::from(seen.ct_eq(&fingerprint)))
        };
        if is_remembered() {
            return known.is_some();
        }

        let Ok(_slot) = VERIFY_SLOTS.acquire().await else { return false };
        // A browser sends its first requests side by side: one of them may have verified the
        // same credential while this one waited for a slot.
        if is_remembered() {
            return known.is_some();
        }
        let correct =
            tokio::task::spawn_blocking(move || stored.verify(&password)).await.unwrap_or(false);
        if !(correct && known.is_some()) {
            return false;
        }
        let mut remembered = self.remembered();
        if remembered.len() >= MAX_REMEMBERED {
            remembered.clear();
        }
        remembered.insert(key, fingerprint);
        true
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<u64, [u8; 32]>> {
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many credentials are remembered now.
    #[cfg(test)]
    pub(crate) fn n_remembered(&self) -> usize {
        self.remembered().len()
    }
}

/// A hash with few iterations, for tests: the format and the checks are the same, the
/// tests fast.
#[cfg(test)]
pub(crate) fn quick_hash(password: &str) -> String {
    hash_with_iterations(password.as_bytes(), NonZeroU32::new(10).expect("not zero"))
        .expect("random salt")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::header_map;

    #[test]
    fn parse_basic_table() {
        type Case = (&'static str, Option<(&'static str, &'static [u8])>);
        let cases: &[Case] = &[
            ("Basic YWxpY2U6c2VjcmV0", Some(("alice", b"secret"))),
            ("basic YWxpY2U6c2VjcmV0", Some(("alice", b"secret"))),
            ("BASIC   YWxpY2U6c2VjcmV0  ", Some(("alice", b"secret"))),
            // "alice:secret!" with and without its padding.
            ("Basic YWxpY2U6c2VjcmV0IQ==", Some(("alice", b"secret!"))),
            ("Basic YWxpY2U6c2VjcmV0IQ", Some(("alice", b"secret!"))),
            // Only the first colon separates: "bob:a:b".
            ("Basic Ym9iOmE6Yg==", Some(("bob", b"a:b"))),
            // "alice:" and ":pw": empty parts are parsed (and then fail to verify).
            ("Basic YWxpY2U6", Some(("alice", b""))),
            ("Basic OnB3", Some(("", b"pw"))),
            // "bøb:x" in UTF-8.
            ("Basic YsO4Yjp4", Some(("bøb", b"x"))),
            ("Bearer YWxpY2U6c2VjcmV0", None),
            ("Basic", None),
            ("Basic ", None),
            ("BasicYWxpY2U6c2VjcmV0", None),
            ("Basic !!!!", None),
            // "alice" without a colon.
            ("Basic YWxpY2U=", None),
            // A user name that is not UTF-8: 0xff then ":x".
            ("Basic /zp4", None),
        ];
        for (value, expected) in cases {
            let parsed = parse_basic(&HeaderValue::from_static(value));
            let expected = expected.map(|(user, password)| (user.to_owned(), password.to_vec()));
            assert_eq!(parsed, expected, "{value:?}");
        }
        let value = HeaderValue::from_str(&basic_value("carol", "p@ss:word")).unwrap();
        assert_eq!(parse_basic(&value), Some(("carol".to_owned(), b"p@ss:word".to_vec())));
    }

    #[test]
    fn hashes_are_salted_and_verify_only_their_password() {
        let first = quick_hash("correct horse");
        let second = quick_hash("correct horse");
        assert_ne!(first, second, "two hashes of one password must differ by their salt");
        assert!(first.starts_with("$pbkdf2-sha256$i=10$"), "{first}");
        let parsed = PasswordHash::parse(&first).unwrap();
        assert!(parsed.verify(b"correct horse"));
        assert!(!parsed.verify(b"correct horse "));
        assert!(!parsed.verify(b""));
        assert!(!PasswordHash::parse(&second).unwrap().verify(b"Correct horse"));

        let real = hash_password("s3cret").unwrap();
        assert!(real.starts_with("$pbkdf2-sha256$i=600000$"), "{real}");
        assert!(PasswordHash::parse(&real).unwrap().verify(b"s3cret"));
    }

    #[test]
    fn unreadable_hashes_are_refused() {
        let good = quick_hash("pw");
        let parts: Vec<&str> = good.split('$').collect();
        let (salt, hash) = (parts[3], parts[4]);
        let cases = [
            String::new(),
            "plain".to_owned(),
            format!("$pbkdf2-sha1$i=10${salt}${hash}"),
            format!("$pbkdf2-sha256$i=0${salt}${hash}"),
            format!("$pbkdf2-sha256$n=10${salt}${hash}"),
            format!("$pbkdf2-sha256$i=10$${hash}"),
            format!("$pbkdf2-sha256$i=10${salt}$"),
            format!("$pbkdf2-sha256$i=10${salt}${hash}$"),
            format!("$pbkdf2-sha256$i=10${salt}$AAAA"),
            format!("$pbkdf2-sha256$i=10$!!${hash}"),
        ];
        for text in cases {
            assert_eq!(PasswordHash::parse(&text), None, "{text:?}");
        }
        assert!(PasswordHash::parse(&good).is_some());
    }

    fn auth_header(user: &str, password: &str) -> HeaderMap {
        header_map(&[("authorization", &basic_value(user, password))])
    }

    #[tokio::test]
    async fn only_a_user_with_the_right_password_is_allowed_and_then_remembered() {
        let auth = BasicAuth::new(
            "myapp",
            [
                ("alice".to_owned(), quick_hash("wonderland")),
                ("bob".to_owned(), quick_hash("builder")),
                ("mallory".to_owned(), "not a hash".to_owned()),
            ],
        );
        assert_eq!(auth.challenge(), "Basic realm=\"myapp\"");
        assert!(!auth.allows(&HeaderMap::new()).await);
        assert!(!auth.allows(&auth_header("alice", "wrong")).await);
        assert!(!auth.allows(&auth_header("alice", "")).await);
        assert!(!auth.allows(&auth_header("carol", "wonderland")).await);
        assert!(!auth.allows(&auth_header("mallory", "not a hash")).await);
        assert!(!auth.allows(&header_map(&[("authorization", "Bearer x")])).await);
        assert_eq!(auth.n_remembered(), 0, "wrong credentials are not remembered");

        assert!(auth.allows(&auth_header("alice", "wonderland")).await);
        assert!(auth.allows(&auth_header("bob", "builder")).await);
        assert_eq!(auth.n_remembered(), 2);
        // Remembered: allowed again without another hash, and a wrong one still is not.
        assert!(auth.allows(&auth_header("alice", "wonderland")).await);
        assert_eq!(auth.n_remembered(), 2);
        assert!(!auth.allows(&auth_header("alice", "wonderlanD")).await);
        let twice = header_map(&[
            ("authorization", &basic_value("alice", "wonderland")),
            ("authorization", &basic_value("alice", "wonderland")),
        ]);
        assert!(!auth.allows(&twice).await, "two Authorization headers are ambiguous");
    }

    #[tokio::test]
    async fn a_remembered_credential_needs_the_same_header_bytes() {
        let auth = BasicAuth::new("app", [("alice".to_owned(), quick_hash("pw"))]);
        assert!(auth.allows(&auth_header("alice", "pw")).await);
        // Forge a collision of the fast key: the fingerprint must still match.
        let other = HeaderValue::from_str(&basic_value("alice", "nope")).unwrap();
        let key = auth.hasher.hash_one((other.as_bytes(), auth.users["alice"].text.as_str()));
        auth.remembered().insert(key, [0u8; 32]);
        let headers = header_map(&[("authorization", other.to_str().unwrap())]);
        assert!(!auth.allows(&headers).await);
    }

    #[test]
    fn realms_never_break_the_header() {
        let auth = BasicAuth::new("we\"ird\\", []);
        assert_eq!(auth.challenge(), "Basic realm=\"weird\"");
        assert!(auth.is_empty());
    }

    #[tokio::test]
    async fn users_with_unreadable_hashes_still_close_the_app() {
        let auth = BasicAuth::new("app", [("alice".to_owned(), "garbage".to_owned())]);
        assert!(!auth.is_empty());
        assert!(!auth.allows(&auth_header("alice", "garbage")).await);
    }

    // Through the proxy, on real sockets.

    use crate::table::{Backend, RouteTable, shared_routes};
    use crate::test_support::{
        RecordingUpstream, get, header, recording_upstream, send, start_proxy,
    };

    fn request_with(authorization: &str) -> String {
        format!(
            "GET /private HTTP/1.1\r\nHost: myapp.example.com\r\nAuthorization: {authorization}\r\n\
             Connection: close\r\n\r\n"
        )
    }

    async fn protected_app(
        https_only: bool,
    ) -> (RecordingUpstream, crate::test_support::TestProxy) {
        let upstream = recording_upstream().await;
        let auth = BasicAuth::new("myapp", [("alice".to_owned(), quick_hash("wonderland"))]);
        let backend = Backend::new("myapp", vec![upstream.addr])
            .with_basic_auth(Arc::new(auth))
            .with_https_only(https_only);
        let mut table = RouteTable::new();
        table.insert("myapp.example.com", Arc::new(backend));
        let routes = shared_routes();
        routes.store(Arc::new(table));
        (upstream, start_proxy(routes).await)
    }

    #[tokio::test]
    async fn without_or_with_wrong_credentials_the_answer_is_401_asking_for_them() {
        let (upstream, proxy) = protected_app(false).await;
        let requests = [
            get("myapp.example.com", "/private"),
            request_with(&basic_value("alice", "wrong")),
            request_with(&basic_value("bob", "wonderland")),
            request_with("Basic not-base64"),
            request_with("Bearer wonderland"),
        ];
        for request in requests {
            let reply = send(proxy.addr, request.clone()).await;
            assert_eq!(reply.status, 401, "{request}: {}", reply.body);
            assert_eq!(
                header(&reply.head, "www-authenticate").as_deref(),
                Some("Basic realm=\"myapp\""),
                "{}",
                reply.head
            );
            assert_eq!(
                reply.body,
                "401 unauthorized: this app asks for a user name and password\n"
            );
        }
        assert!(upstream.seen().is_empty(), "the app was asked: {:?}", upstream.seen());
    }

    #[tokio::test]
    async fn with_the_right_credentials_the_request_goes_through_with_its_authorization() {
        let (upstream, proxy) = protected_app(false).await;
        let credentials = basic_value("alice", "wonderland");
        for _ in 0..2 {
            let reply = send(proxy.addr, request_with(&credentials)).await;
            assert_eq!((reply.status, reply.body.as_str()), (200, "ok"), "{}", reply.head);
        }
        let seen = upstream.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].line, "GET /private HTTP/1.1");
        assert_eq!(seen[0].headers["authorization"], credentials.as_str());
    }

    #[tokio::test]
    async fn an_https_only_app_redirects_before_asking_for_a_password() {
        let (upstream, proxy) = protected_app(true).await;
        let reply = send(proxy.addr, get("myapp.example.com", "/private")).await;
        assert_eq!(reply.status, 301, "{}", reply.body);
        assert!(upstream.seen().is_empty());
    }
}
