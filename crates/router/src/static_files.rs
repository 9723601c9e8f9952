//! Files the router serves itself, in place of nginx: piku's `static:` workers,
//! `NGINX_STATIC_PATHS` (URL prefixes mapped to directories) and `NGINX_CATCH_ALL` (one file
//! for every path nothing else answers, for apps that route on the client).
//!
//! A request path is percent-decoded, split into segments and matched segment-wise against
//! the backend's mounts, longest prefix first. Under a mount the path is refused outright if
//! any segment could climb or confuse a file system (`.`, `..`, a backslash, NUL) or starts
//! with `.git`; what is left is looked up on a blocking thread, where both the mount
//! directory and the file are canonicalised and the file must stay inside the directory, so
//! a symlink cannot lead out of it either.
//!
//! [`send_file`] turns one opened file into a response and is the single place that knows
//! the HTTP side of serving files; byte ranges and precompressed `.gz` siblings belong there
//! (and in [`find_file`] for choosing the sibling) when they come.

use std::cmp::Reverse;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
    LAST_MODIFIED, LOCATION,
};
use http::{Method, Response, StatusCode, Uri};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::body::ResponseBody;
use crate::error::ProxyError;
use crate::table::Backend;

/// How much of a file is read at a time: large enough that a big download is not thousands
/// of tiny writes, small enough that many downloads at once stay cheap.
const CHUNK_SIZE: usize = 64 * 1024;

/// The file served for a directory whose URL ends in `/`.
const INDEX_FILE: &str = "index.html";

/// The methods a static file answers; `Allow` on a 405 lists them.
const ALLOWED_METHODS: &str = "GET, HEAD";

/// A URL path prefix served from a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticMount {
    /// Always starts with `/`; has no trailing `/` unless it is the root `/` itself.
    pub prefix: String,
    /// The directory the prefix maps to. A relative path is taken relative to the daemon's
    /// working directory, so callers resolve it first (see [`parse_static_paths`]).
    pub dir: PathBuf,
}

impl StaticMount {
    /// A mount of `dir` at `prefix`, which gets a leading `/` and loses any trailing ones:
    /// `"static/"` becomes `"/static"`, and `""` or `"/"` the root `"/"`.
    pub fn new(prefix: &str, dir: impl Into<PathBuf>) -> StaticMount {
        StaticMount { prefix: format!("/{}", prefix.trim_matches('/')), dir: dir.into() }
    }

    fn prefix_segments(&self) -> impl Iterator<Item = &str> {
        self.prefix.split('/').filter(|segment| !segment.is_empty())
    }
}

/// Sorts mounts so that the longest prefix comes first; among equal prefixes the first
/// given stays first. A prefix that matches a path segment-wise is a prefix of every longer
/// prefix that also matches, so the longest string is also the most specific mount.
pub(crate) fn longest_prefix_first(mut mounts: Vec<StaticMount>) -> Vec<StaticMount> {
    mounts.sort_by_key(|mount| Reverse(mount.prefix.len()));
    mounts
}

/// Parses piku's `NGINX_STATIC_PATHS`, `"/url:path,/other:dir2"`, into mounts; a relative
/// path is resolved against `base`, the release directory.
///
/// Whitespace around items and empty items (a trailing comma) are tolerated. The first bad
/// item is returned as an error that names it and shows the expected form, in lower case
/// and without the variable's name, which the caller puts in front.
pub fn parse_static_paths(value: &str, base: &Path) -> Result<Vec<StaticMount>, String> {
    const EXPECTED: &str = "expected /url:path, as in /static:public";
    let mut mounts = Vec::new();
    for item in value.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let Some((url, path)) = item.split_once(':') else {
            return Err(format!("item {item:?} has no ':'; {EXPECTED}"));
        };
        let (url, path) = (url.trim(), path.trim());
        if !url.starts_with('/') {
            return Err(format!("item {item:?}: the url must start with '/'; {EXPECTED}"));
        }
        if path.is_empty() {
            return Err(format!("item {item:?} has no path; {EXPECTED}"));
        }
        // Collecting the components drops `.` segments, so "./public" and "public" give the
        // same directory; `..` is kept, because what it means depends on symlinks.
        let dir: PathBuf = base.join(path).components().collect();
        mounts.push(StaticMount::new(url, dir));
    }
    Ok(mounts)
}

/// Why a path under a mount is refused before the disk is even looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A segment that could climb out of the directory or mean something else to a file
    /// system: `.`, `..`, a backslash or NUL. A 400: no browser sends these.
    BadPath,
    /// A segment starting with `.git`: the repository's internals are never served.
    Hidden,
}

/// A mount a request path falls under, and the path's segments inside it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) dir: PathBuf,
    pub(crate) segments: Vec<String>,
}

/// The mounts `raw_path` falls under, most specific first, each with the path's segments
/// below its prefix; or why the path is refused. Empty when no mount matches, in which case
/// nothing is refused either: the path is for the app.
///
/// Matching is by whole segments, so `/static` covers `/static` and `/static/x` but not
/// `/staticfoo`. Empty segments (`//`) are skipped, as nginx merges slashes.
pub(crate) fn candidates(
    mounts: &[StaticMount],
    raw_path: &str,
) -> Result<Vec<Candidate>, Refusal> {
    let decoded = percent_decode(raw_path);
    let segments: Vec<&str> = decoded.split('/').filter(|segment| !segment.is_empty()).collect();
    let mut found = Vec::new();
    for mount in mounts {
        let n_prefix = mount.prefix_segments().count();
        let is_under = segments.len() >= n_prefix
            && mount.prefix_segments().zip(&segments).all(|(prefix, segment)| prefix == *segment);
        if is_under {
            let rest = segments[n_prefix..].iter().map(|segment| segment.to_string()).collect();
            found.push(Candidate { dir: mount.dir.clone(), segments: rest });
        }
    }
    // The whole path is checked, not only the part below the prefix, so that every
    // candidate is safe whichever of them is served.
    if !found.is_empty() {
        if segments.iter().any(|segment| is_bad_segment(segment)) {
            return Err(Refusal::BadPath);
        }
        if segments.iter().any(|segment| segment.starts_with(".git")) {
            return Err(Refusal::Hidden);
        }
    }
    Ok(found)
}

fn is_bad_segment(segment: &str) -> bool {
    segment == "." || segment == ".." || segment.contains(['\\', '\0'])
}

/// Decodes `%XX` escapes; a `%` not followed by two hex digits stays as it is. Bytes that
/// do not form UTF-8 become U+FFFD, which no sensible file name contains, so such a path
/// simply finds nothing.
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%'
            && let Some(&[high, low]) = bytes.get(at + 1..at + 3)
            && let (Some(high), Some(low)) = (hex_value(high), hex_value(low))
        {
            decoded.push(high << 4 | low);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// A regular file, opened, with the facts its validators come from, taken from the open
/// handle (not from the path, which could have been replaced in between).
#[derive(Debug)]
pub(crate) struct OpenFile {
    file: fs::File,
    len: u64,
    modified: Option<SystemTime>,
    /// The canonical path; its extension decides the content type.
    path: PathBuf,
}

/// What the disk has for a request path.
#[derive(Debug)]
pub(crate) enum Found {
    File(OpenFile),
    /// A directory asked for without the trailing `/`: relative links in its index would
    /// resolve against the parent, so the client is sent to the URL with the slash.
    DirectoryWithoutSlash,
    /// Nothing to serve here; the request goes on to the app or the catch-all.
    Missing,
    /// Something is there but must not be served (it leads out of the mount, or into
    /// `.git`, or cannot be opened): a 404, never a fall-through that might mask it.
    Refused,
}

/// Looks `candidates` up on disk: the first whose mount directory exists decides. Blocking;
/// run it on a blocking thread.
pub(crate) fn find_file(candidates: &[Candidate], trailing_slash: bool) -> Found {
    for candidate in candidates {
        // A mount directory that does not exist (yet) does not match at all.
        let root = match fs::canonicalize(&candidate.dir) {
            Ok(root) if root.is_dir() => root,
            _ => continue,
        };
        let mut path = root.clone();
        path.extend(&candidate.segments);
        return find_in(&root, &path, trailing_slash);
    }
    Found::Missing
}

fn find_in(root: &Path, path: &Path, trailing_slash: bool) -> Found {
    let path = match confine(root, path) {
        Ok(Some(path)) => path,
        Ok(None) => return Found::Missing,
        Err(()) => return Found::Refused,
    };
    let Ok(metadata) = fs::metadata(&path) else {
        return Found::Missing;
    };
    if metadata.is_dir() {
        if !trailing_slash {
            return Found::DirectoryWithoutSlash;
        }
        return match confine(root, &path.join(INDEX_FILE)) {
            Ok(Some(index)) => open_regular(&index),
            Ok(None) => Found::Missing,
            Err(()) => Found::Refused,
        };
    }
    // `/style.css/` names a directory that is not there, as nginx also decides.
    if trailing_slash { Found::Missing } else { open_regular(&path) }
}

/// The canonical form of `path` if it exists and stays inside `root` (already canonical)
/// without passing through `.git`; `Ok(None)` if it does not exist; `Err` if it escapes.
fn confine(root: &Path, path: &Path) -> Result<Option<PathBuf>, ()> {
    let canonical = match fs::canonicalize(path) {
        Ok(canonical) => canonical,
        // Not found, or a file used as a directory on the way (`a.txt/b`).
        Err(_) => return Ok(None),
    };
    let Ok(inside) = canonical.strip_prefix(root) else {
        tracing::debug!(path = %path.display(), target = %canonical.display(), "refusing a path that leads out of its mount");
        return Err(());
    };
    // The request's own segments were checked already; this catches a symlink inside the
    // mount that points into a `.git` directory that is also inside it.
    let is_hidden = inside.components().any(|component| match component {
        Component::Normal(name) => name.as_encoded_bytes().starts_with(b".git"),
        _ => false,
    });
    if is_hidden { Err(()) } else { Ok(Some(canonical)) }
}

/// Opens `path` if it is a regular file. Sockets and FIFOs are left alone (opening a FIFO
/// would wait for a writer); a file that exists but cannot be opened is refused and logged,
/// because the operator will want to know about the permissions.
pub(crate) fn open_regular(path: &Path) -> Found {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => {}
        _ => return Found::Missing,
    }
    let opened = fs::File::open(path).and_then(|file| {
        let metadata = file.metadata()?;
        Ok((file, metadata))
    });
    match opened {
        Ok((file, metadata)) if metadata.is_file() => {
            let (len, modified) = (metadata.len(), metadata.modified().ok());
            Found::File(OpenFile { file, len, modified, path: path.to_path_buf() })
        }
        Ok(_) => Found::Missing,
        Err(error) => {
            tracing::warn!(path = %path.display(), "cannot open a static file: {error}");
            Found::Refused
        }
    }
}

/// Runs a blocking look-up off the runtime's worker threads.
async fn blocking(lookup: impl FnOnce() -> Found + Send + 'static) -> Result<Found, ProxyError> {
    tokio::task::spawn_blocking(lookup).await.map_err(|error| ProxyError::Internal {
        cause: format!("the static file look-up failed: {error}"),
    })
}

/// Answers from the backend's mounts if the path falls under one and the disk has it;
/// `Ok(None)` lets the request go on to the app or the catch-all.
pub(crate) async fn serve_from_mounts(
    backend: &Backend,
    method: &Method,
    uri: &Uri,
    request_headers: &HeaderMap,
) -> Result<Option<Response<ResponseBody>>, ProxyError> {
    if backend.static_mounts().is_empty() {
        return Ok(None);
    }
    let raw_path = uri.path();
    let candidates = match candidates(backend.static_mounts(), raw_path) {
        Ok(candidates) if candidates.is_empty() => return Ok(None),
        Ok(candidates) => candidates,
        Err(Refusal::BadPath) => return Err(ProxyError::PathNotAllowed),
        Err(Refusal::Hidden) => return Err(ProxyError::NotFound { app: backend.app.clone() }),
    };
    let trailing_slash = percent_decode(raw_path).ends_with('/');
    let found = blocking(move || find_file(&candidates, trailing_slash)).await?;
    let response = match found {
        Found::Missing => return Ok(None),
        Found::Refused => return Err(ProxyError::NotFound { app: backend.app.clone() }),
        _ if !is_get_or_head(method) => return Err(ProxyError::MethodNotAllowed),
        Found::DirectoryWithoutSlash => redirect_to_slash(uri),
        Found::File(file) => send_file(method, request_headers, file),
    };
    tracing::debug!(app = %backend.app, path = raw_path, status = response.status().as_u16(), "served from disk");
    Ok(Some(response))
}

/// Answers with the backend's catch-all file, which must be set.
pub(crate) async fn serve_catch_all(
    backend: &Backend,
    catch_all: &Path,
    method: &Method,
    request_headers: &HeaderMap,
) -> Result<Response<ResponseBody>, ProxyError> {
    if !is_get_or_head(method) {
        return Err(ProxyError::MethodNotAllowed);
    }
    let path = catch_all.to_path_buf();
    match blocking(move || open_regular(&path)).await? {
        Found::File(file) => Ok(send_file(method, request_headers, file)),
        _ => {
            tracing::warn!(app = %backend.app, path = %catch_all.display(), "the catch-all file is missing");
            Err(ProxyError::NotFound { app: backend.app.clone() })
        }
    }
}

fn is_get_or_head(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// `Allow` for a 405 from a static path.
pub(crate) fn allow_header() -> HeaderValue {
    HeaderValue::from_static(ALLOWED_METHODS)
}

/// A 301 to the same URL with `/` added to the path, keeping the query.
fn redirect_to_slash(uri: &Uri) -> Response<ResponseBody> {
    // Leading slashes are collapsed: `//host/dir` would send the client to another site.
    let mut location = format!("/{}/", uri.path().trim_start_matches('/'));
    if let Some(query) = uri.query() {
        location.push('?');
        location.push_str(query);
    }
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    // Made of the request's own URI, which hyper only accepts as visible ASCII.
    if let Ok(location) = HeaderValue::try_from(location) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

/// The response for one opened file: 304 when the client's copy is current, else the file
/// with its type, length and validators, streamed (no body for HEAD).
///
/// This is where a later `Range` header would be answered (a 206 reading a `take` of the
/// file after a seek, with the same validators checked against `If-Range`), and where a
/// precompressed sibling chosen by the look-up would add `Content-Encoding` and `Vary`.
pub(crate) fn send_file(
    method: &Method,
    request_headers: &HeaderMap,
    file: OpenFile,
) -> Response<ResponseBody> {
    let (len, modified) = (file.len, file.modified);
    let etag = weak_etag(len, modified);

    let mut response = Response::new(ResponseBody::empty());
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::try_from(&etag) {
        headers.insert(ETAG, value);
    }
    if let Some(modified) = modified
        && let Ok(value) = HeaderValue::try_from(httpdate::fmt_http_date(modified))
    {
        headers.insert(LAST_MODIFIED, value);
    }
    if is_not_modified(request_headers, &etag, modified) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&file.path)));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    if method != Method::HEAD {
        let file = tokio::fs::File::from_std(file.file).take(len);
        *response.body_mut() = ResponseBody::File(ReaderStream::with_capacity(file, CHUNK_SIZE));
    }
    response
}

/// A weak validator from the size and modification time: cheap (no hashing of content) and
/// changed by every deploy that changes the file. Weak, because two different contents
/// written within one timestamp tick would share it.
fn weak_etag(len: u64, modified: Option<SystemTime>) -> String {
    let nanos = modified
        .and_then(|modified| modified.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since_epoch| since_epoch.as_nanos());
    format!("W/\"{len:x}-{nanos:x}\"")
}

/// RFC 9110 section 13.2.2: `If-None-Match`, when present, decides alone (with the weak
/// comparison); otherwise a file not modified after `If-Modified-Since` is current.
fn is_not_modified(request_headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    let mut none_match = request_headers.get_all(IF_NONE_MATCH).iter().peekable();
    if none_match.peek().is_some() {
        let ours = etag.trim_start_matches("W/");
        return none_match
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours);
    }
    let since = request_headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok());
    match (since, modified) {
        // HTTP dates have whole seconds, so the file's time is cut to whole seconds too;
        // otherwise a file would always look a fraction of a second newer than its own date.
        (Some(since), Some(modified)) => whole_seconds(modified) <= since,
        _ => false,
    }
}

fn whole_seconds(time: SystemTime) -> SystemTime {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs()),
        Err(_) => time,
    }
}

/// The `Content-Type` for a file, by its extension; text types say they are UTF-8.
fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|extension| extension.to_str()).unwrap_or("");
    match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml; charset=utf-8",
        "svg" => "image/svg+xml; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use berth_testkit::TempDir;

    use crate::table::{RouteTable, SharedRoutes, shared_routes};
    use crate::test_support::{Reply, echo_upstream, get, send, start_proxy};

    #[test]
    fn static_mount_new_normalises_the_prefix() {
        let cases = [
            ("/static", "/static"),
            ("static", "/static"),
            ("/static/", "/static"),
            ("static//", "/static"),
            ("/a/b/", "/a/b"),
            ("/", "/"),
            ("", "/"),
        ];
        for (raw, expected) in cases {
            assert_eq!(StaticMount::new(raw, "/d").prefix, expected, "StaticMount::new({raw:?})");
        }
    }

    #[test]
    fn parse_static_paths_table() {
        let base = Path::new("/srv/releases/app/3");
        let mount = |prefix: &str, dir: &str| StaticMount::new(prefix, dir);
        let cases: &[(&str, Result<Vec<StaticMount>, &str>)] = &[
            ("", Ok(vec![])),
            (" , ", Ok(vec![])),
            ("/static:static", Ok(vec![mount("/static", "/srv/releases/app/3/static")])),
            (
                " /static/ : ./public , /media:/var/media,",
                Ok(vec![
                    mount("/static", "/srv/releases/app/3/public"),
                    mount("/media", "/var/media"),
                ]),
            ),
            ("/:dist/web", Ok(vec![mount("/", "/srv/releases/app/3/dist/web")])),
            ("/static", Err("item \"/static\" has no ':'; expected /url:path")),
            ("/a:a,static:public", Err("item \"static:public\": the url must start with '/'")),
            ("/static: ", Err("item \"/static:\" has no path")),
        ];
        for (value, expected) in cases {
            let parsed = parse_static_paths(value, base);
            match (expected, &parsed) {
                (Ok(expected), Ok(parsed)) => assert_eq!(parsed, expected, "{value:?}"),
                (Err(needle), Err(message)) => {
                    assert!(message.contains(needle), "{value:?}: {message}");
                    assert!(message.starts_with("item \""), "{message}");
                    assert!(message.contains("expected /url:path"), "{message}");
                }
                _ => panic!("{value:?}: expected {expected:?}, got {parsed:?}"),
            }
        }
    }

    #[test]
    fn percent_decode_table() {
        let cases = [
            ("/plain/path", "/plain/path"),
            ("/a%20b", "/a b"),
            ("/%2e%2E/%2F", "/..//"),
            ("/100%", "/100%"),
            ("/%zz%4", "/%zz%4"),
            ("/caf%C3%A9", "/café"),
            ("/bad%ff", "/bad\u{fffd}"),
        ];
        for (raw, expected) in cases {
            assert_eq!(percent_decode(raw), expected, "percent_decode({raw:?})");
        }
    }

    #[test]
    fn candidates_match_whole_segments_longest_first() {
        let mounts = longest_prefix_first(vec![
            StaticMount::new("/", "/root"),
            StaticMount::new("/static", "/static-dir"),
        ]);
        let dirs = |path: &str| -> Vec<(String, Vec<String>)> {
            candidates(&mounts, path)
                .unwrap()
                .into_iter()
                .map(|c| (c.dir.display().to_string(), c.segments))
                .collect()
        };
        let owned = |segments: &[&str]| segments.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            dirs("/static/css/app.css"),
            [
                ("/static-dir".into(), owned(&["css", "app.css"])),
                ("/root".into(), owned(&["static", "css", "app.css"])),
            ]
        );
        assert_eq!(
            dirs("/static"),
            [("/static-dir".into(), owned(&[])), ("/root".into(), owned(&["static"]))]
        );
        assert_eq!(dirs("/staticfoo"), [("/root".into(), owned(&["staticfoo"]))]);
        assert_eq!(dirs("//static//x"), dirs("/static/x"));

        let only_static = vec![StaticMount::new("/static", "/static-dir")];
        assert!(candidates(&only_static, "/staticfoo/x").unwrap().is_empty());
        assert!(candidates(&only_static, "/").unwrap().is_empty());
        assert!(candidates(&only_static, "/other/static").unwrap().is_empty());
        // Not under a mount, so not refused either: such paths are the app's business.
        assert!(candidates(&only_static, "/x/../static").unwrap().is_empty());
    }

    #[test]
    fn candidates_refuse_climbing_and_hidden_segments() {
        let mounts = vec![StaticMount::new("/static", "/static-dir")];
        let cases = [
            ("/static/../secret", Refusal::BadPath),
            ("/static/%2e%2e/secret", Refusal::BadPath),
            ("/static/%2E%2e%2fsecret", Refusal::BadPath),
            ("/static/a/%2e/b", Refusal::BadPath),
            ("/static/..%5csecret", Refusal::BadPath),
            ("/static/a%5c..%5csecret", Refusal::BadPath),
            ("/static/a%00.txt", Refusal::BadPath),
            ("/static/.git/config", Refusal::Hidden),
            ("/static/%2egit/config", Refusal::Hidden),
            ("/static/.gitignore", Refusal::Hidden),
            ("/static/sub/.git", Refusal::Hidden),
        ];
        for (path, expected) in cases {
            assert_eq!(candidates(&mounts, path), Err(expected), "{path:?}");
        }
        assert!(candidates(&mounts, "/static/.well-known/a..b").is_ok());
        assert!(candidates(&mounts, "/static/...").is_ok());
    }

    #[test]
    fn content_types_by_extension() {
        let cases = [
            ("index.html", "text/html; charset=utf-8"),
            ("APP.CSS", "text/css; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("mod.mjs", "text/javascript; charset=utf-8"),
            ("data.json", "application/json; charset=utf-8"),
            ("app.js.map", "application/json; charset=utf-8"),
            ("notes.txt", "text/plain; charset=utf-8"),
            ("logo.svg", "image/svg+xml; charset=utf-8"),
            ("feed.xml", "application/xml; charset=utf-8"),
            ("a.png", "image/png"),
            ("a.jpg", "image/jpeg"),
            ("a.jpeg", "image/jpeg"),
            ("a.gif", "image/gif"),
            ("a.webp", "image/webp"),
            ("favicon.ico", "image/x-icon"),
            ("app.wasm", "application/wasm"),
            ("f.woff", "font/woff"),
            ("f.woff2", "font/woff2"),
            ("doc.pdf", "application/pdf"),
            ("archive.tar.gz", "application/octet-stream"),
            ("Makefile", "application/octet-stream"),
        ];
        for (name, expected) in cases {
            assert_eq!(content_type(Path::new(name)), expected, "{name}");
        }
    }

    #[test]
    fn conditional_requests_follow_rfc_9110() {
        let modified = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let etag = weak_etag(42, Some(modified));
        assert!(etag.starts_with("W/\"2a-"), "{etag}");
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(*name, HeaderValue::from_str(value).unwrap());
            }
            map
        };
        let strong = etag.trim_start_matches("W/");
        let on_time = httpdate::fmt_http_date(modified);
        let earlier = httpdate::fmt_http_date(modified - Duration::from_secs(1));
        let cases = [
            (headers(&[]), false),
            (headers(&[("if-none-match", &etag)]), true),
            (headers(&[("if-none-match", strong)]), true),
            (headers(&[("if-none-match", &format!("\"x\", {etag}"))]), true),
            (headers(&[("if-none-match", "*")]), true),
            (headers(&[("if-none-match", "\"other\"")]), false),
            (headers(&[("if-modified-since", &on_time)]), true),
            (headers(&[("if-modified-since", &earlier)]), false),
            (headers(&[("if-modified-since", "not a date")]), false),
            // If-None-Match decides alone when present.
            (headers(&[("if-none-match", "\"other\""), ("if-modified-since", &on_time)]), false),
        ];
        for (request_headers, expected) in cases {
            assert_eq!(
                is_not_modified(&request_headers, &etag, Some(modified)),
                expected,
                "{request_headers:?}"
            );
        }
    }

    /// A site on disk: `site/` is mounted, `outside/` holds what must never be served.
    struct Site {
        _dir: TempDir,
        site: PathBuf,
        outside: PathBuf,
    }

    const SECRET: &str = "TOP SECRET outside the mount";

    fn site() -> Site {
        let dir = TempDir::new("router-static");
        let site = dir.path().join("site");
        let outside = dir.path().join("outside");
        let write = |path: PathBuf, contents: &str| {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        };
        write(site.join("app.css"), "body { color: red }\n");
        write(site.join("data.json"), "{\"ok\":true}");
        write(site.join("docs/index.html"), "<h1>docs</h1>");
        write(site.join("empty-dir/readme.txt"), "no index here");
        write(site.join(".well-known/security.txt"), "Contact: ops@example.com");
        write(site.join(".git/config"), "[core]\n\trepositoryformatversion = 0\n");
        write(site.join("index.html"), "<h1>client-side app</h1>");
        write(outside.join("secret.txt"), SECRET);
        std::os::unix::fs::symlink(outside.join("secret.txt"), site.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, site.join("linkdir")).unwrap();
        std::os::unix::fs::symlink(site.join("app.css"), site.join("inner-link.css")).unwrap();
        Site { _dir: dir, site, outside }
    }

    fn routes_for(backend: Backend) -> SharedRoutes {
        let mut table = RouteTable::new();
        table.insert("site.example.com", Arc::new(backend));
        let routes = shared_routes();
        routes.store(Arc::new(table));
        routes
    }

    fn static_only(site: &Site, catch_all: Option<PathBuf>) -> SharedRoutes {
        let mounts = vec![StaticMount::new("/static", &site.site)];
        routes_for(Backend::new("site", vec![]).with_static(mounts, catch_all))
    }

    fn request(method: &str, target: &str, extra_headers: &str) -> String {
        format!(
            "{method} {target} HTTP/1.1\r\nHost: site.example.com\r\n{extra_headers}\
             Connection: close\r\n\r\n"
        )
    }

    /// The value of the response header `name`, which must be there.
    fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
        reply
            .head
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.eq_ignore_ascii_case(name).then(|| value.trim())
            })
            .unwrap_or_else(|| panic!("no {name} header in {}", reply.head))
    }

    fn has_header(reply: &Reply, name: &str) -> bool {
        reply
            .head
            .lines()
            .any(|line| line.split_once(':').is_some_and(|(key, _)| key.eq_ignore_ascii_case(name)))
    }

    #[tokio::test]
    async fn serves_a_file_with_type_length_and_validators() {
        let site = site();
        let proxy = start_proxy(static_only(&site, None)).await;
        let reply = send(proxy.addr, get("site.example.com", "/static/app.css?v=3")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(reply.body, "body { color: red }\n");
        assert_eq!(header(&reply, "content-type"), "text/css; charset=utf-8");
        assert_eq!(header(&reply, "content-length"), "20");
        assert!(header(&reply, "etag").starts_with("W/\"14-"), "{}", reply.head);
        assert!(header(&reply, "last-modified").ends_with(" GMT"), "{}", reply.head);

        let reply = send(proxy.addr, get("site.example.com", "/static/data.json")).await;
        assert_eq!(header(&reply, "content-type"), "application/json; charset=utf-8");
        assert_eq!(reply.body, "{\"ok\":true}");

        // A symlink that stays inside the mount is fine; so is a dotfile other than .git.
        let reply = send(proxy.addr, get("site.example.com", "/static/inner-link.css")).await;
        assert_eq!(reply.body, "body { color: red }\n");
        let reply =
            send(proxy.addr, get("site.example.com", "/static/.well-known/security.txt")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(reply.body, "Contact: ops@example.com");
        let reply = send(proxy.addr, get("site.example.com", "/static/app%2ecss")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
    }

    #[tokio::test]
    async fn serves_a_file_larger_than_one_chunk_in_full() {
        let site = site();
        let big: String = (0..CHUNK_SIZE * 3).map(|n| char::from(b'a' + (n % 26) as u8)).collect();
        fs::write(site.site.join("big.txt"), &big).unwrap();
        let proxy = start_proxy(static_only(&site, None)).await;
        let reply = send(proxy.addr, get("site.example.com", "/static/big.txt")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(header(&reply, "content-length"), big.len().to_string());
        assert!(reply.body == big, "the body differs from the file");
    }

    #[tokio::test]
    async fn head_has_the_headers_and_no_body() {
        let site = site();
        let proxy = start_proxy(static_only(&site, None)).await;
        let reply = send(proxy.addr, request("HEAD", "/static/app.css", "")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(header(&reply, "content-length"), "20");
        assert_eq!(header(&reply, "content-type"), "text/css; charset=utf-8");
        assert_eq!(reply.body, "");
    }

    #[tokio::test]
    async fn directories_get_their_index_or_a_redirect_to_the_slash() {
        let site = site();
        let proxy = start_proxy(static_only(&site, None)).await;
        let reply = send(proxy.addr, get("site.example.com", "/static/docs/")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(reply.body, "<h1>docs</h1>");
        assert_eq!(header(&reply, "content-type"), "text/html; charset=utf-8");

        let reply = send(proxy.addr, get("site.example.com", "/static/docs?page=2")).await;
        assert_eq!(reply.status, 301, "{}", reply.head);
        assert_eq!(header(&reply, "location"), "/static/docs/?page=2");
        let reply = send(proxy.addr, get("site.example.com", "/static")).await;
        assert_eq!(reply.status, 301, "{}", reply.head);
        assert_eq!(header(&reply, "location"), "/static/");
        // A doubled slash must not turn the redirect into one to another host.
        let reply = send(proxy.addr, get("site.example.com", "//static/docs")).await;
        assert_eq!(header(&reply, "location"), "/static/docs/");

        // No index.html: nothing to serve, and this app has no instance to ask.
        let reply = send(proxy.addr, get("site.example.com", "/static/empty-dir/")).await;
        assert_eq!(reply.status, 404, "{}", reply.head);
        // A file named as if it were a directory is not there either.
        let reply = send(proxy.addr, get("site.example.com", "/static/app.css/")).await;
        assert_eq!(reply.status, 404, "{}", reply.head);
    }

    #[tokio::test]
    async fn unchanged_files_get_304() {
        let site = site();
        let proxy = start_proxy(static_only(&site, None)).await;
        let first = send(proxy.addr, get("site.example.com", "/static/app.css")).await;
        let etag = header(&first, "etag").to_string();
        let last_modified = header(&first, "last-modified").to_string();

        for conditional in [
            format!("If-None-Match: {etag}\r\n"),
            format!("If-None-Match: \"nope\", {}\r\n", etag.trim_start_matches("W/")),
            format!("If-Modified-Since: {last_modified}\r\n"),
        ] {
            let reply = send(proxy.addr, request("GET", "/static/app.css", &conditional)).await;
            assert_eq!(reply.status, 304, "{conditional}: {}", reply.head);
            assert_eq!(reply.body, "", "{conditional}");
            assert_eq!(header(&reply, "etag"), etag);
        }

        let long_ago = "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n";
        let reply = send(proxy.addr, request("GET", "/static/app.css", long_ago)).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        let reply =
            send(proxy.addr, request("GET", "/static/app.css", "If-None-Match: \"nope\"\r\n"))
                .await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(reply.body, "body { color: red }\n");
    }

    #[tokio::test]
    async fn traversal_never_reaches_outside_the_mount() {
        let site = site();
        assert_eq!(fs::read_to_string(site.outside.join("secret.txt")).unwrap(), SECRET);
        let catch_all = Some(site.site.join("index.html"));
        let mounts =
            vec![StaticMount::new("/static", &site.site), StaticMount::new("/", &site.site)];
        let both = routes_for(Backend::new("site", vec![]).with_static(mounts, catch_all));
        let proxy = start_proxy(both).await;

        let attempts = [
            ("/static/../outside/secret.txt", Some(400)),
            ("/static/%2e%2e/outside/secret.txt", Some(400)),
            ("/static/%2E%2e/outside/secret.txt", Some(400)),
            ("/static/%2E%2e%2Foutside%2Fsecret.txt", Some(400)),
            ("/static/docs/%2e%2e/%2e%2e/outside/secret.txt", Some(400)),
            ("/static/..%5coutside%5csecret.txt", Some(400)),
            ("/static/%5c..%5c..%5coutside%5csecret.txt", Some(400)),
            ("/static/app.css%00.txt", Some(400)),
            ("/../outside/secret.txt", Some(400)),
            ("/%2e%2e/outside/secret.txt", Some(400)),
            ("/static/link.txt", Some(404)),
            ("/static/linkdir/secret.txt", Some(404)),
            ("/linkdir/secret.txt", Some(404)),
            ("/static/.git/config", Some(404)),
            ("/.git/config", Some(404)),
            ("/static/%2egit/config", Some(404)),
            ("/static/.git/", Some(404)),
            // hyper may refuse a raw backslash itself; either way it is refused.
            ("/static/..\\outside\\secret.txt", None),
        ];
        for (target, expected) in attempts {
            for method in ["GET", "HEAD"] {
                let reply = send(proxy.addr, request(method, target, "")).await;
                match expected {
                    Some(status) => assert_eq!(reply.status, status, "{method} {target}"),
                    None => assert!([400, 404].contains(&reply.status), "{method} {target}"),
                }
                assert!(!reply.body.contains("TOP SECRET"), "{method} {target}: {}", reply.body);
                assert!(!reply.body.contains("repositoryformatversion"), "{target}");
            }
        }

        // The absolute form goes through the same checks.
        let absolute = "GET http://site.example.com/static/%2e%2e/outside/secret.txt HTTP/1.1\r\n\
                        Host: site.example.com\r\nConnection: close\r\n\r\n";
        let reply = send(proxy.addr, absolute.into()).await;
        assert_eq!(reply.status, 400);
        assert!(!reply.body.contains("TOP SECRET"), "{}", reply.body);
    }

    #[tokio::test]
    async fn a_static_mount_and_an_upstream_share_the_host() {
        let site = site();
        let upstream = echo_upstream("web.1").await;
        let mounts = vec![StaticMount::new("/static/", &site.site)];
        let backend = Backend::new("site", vec![upstream]).with_static(mounts, None);
        let proxy = start_proxy(routes_for(backend)).await;

        let reply = send(proxy.addr, get("site.example.com", "/static/app.css")).await;
        assert_eq!(reply.status, 200, "{}", reply.head);
        assert_eq!(reply.body, "body { color: red }\n");
        assert!(!has_header(&reply, "x-upstream"), "{}", reply.head);

        for target in ["/api/items?x=1", "/staticfoo", "/static/missing.css", "/"] {
            let reply = send(proxy.addr, get("site.example.com", target)).await;
            assert_eq!(reply.status, 200, "{target}: {}", reply.body);
            assert!(
                reply.body.starts_with(&format!("web.1\nGET {target} HTTP/1.1\r\n")),
                "{target}: {}",
                reply.body
            );
        }
        // A POST to a path that is not a file goes to the app, which may well handle it.
        let reply =
            send(proxy.addr, request("POST", "/static/upload", "Content-Length: 0\r\n")).await;
        assert!(reply.body.starts_with("web.1\nPOST /static/upload"), "{}", reply.body);
    }

    #[tokio::test]
    async fn prefixes_match_whole_segments() {
        let site = site();
        fs::write(site.site.join("x"), "x file").unwrap();
        let proxy = start_proxy(static_only(&site, None)).await;
        let reply = send(proxy.addr, get("site.example.com", "/static/x")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "x file"));
        for target in ["/staticfoo", "/staticx", "/stati/x", "/x"] {
            let reply = send(proxy.addr, get("site.example.com", target)).await;
            assert_eq!(reply.status, 404, "{target}");
            assert!(reply.body.contains("the app site has nothing at this address"), "{target}");
        }
    }

    #[tokio::test]
    async fn the_longest_existing_mount_wins() {
        let site = site();
        let nested = site.site.join("docs");
        let missing = site.site.join("no-such-dir");
        let mounts = vec![
            StaticMount::new("/", &site.site),
            StaticMount::new("/static", &nested),
            StaticMount::new("/static/missing", &missing),
        ];
        let proxy =
            start_proxy(routes_for(Backend::new("site", vec![]).with_static(mounts, None))).await;
        let reply = send(proxy.addr, get("site.example.com", "/static/index.html")).await;
        assert_eq!(reply.body, "<h1>docs</h1>");
        let reply = send(proxy.addr, get("site.example.com", "/app.css")).await;
        assert_eq!(reply.body, "body { color: red }\n");
        // The mount whose directory does not exist does not match, so the next one decides:
        // `docs/missing/` does not exist either.
        let reply = send(proxy.addr, get("site.example.com", "/static/missing/index.html")).await;
        assert_eq!(reply.status, 404);
    }

    #[tokio::test]
    async fn catch_all_answers_unknown_paths_of_a_static_only_app() {
        let site = site();
        let proxy = start_proxy(static_only(&site, Some(site.site.join("index.html")))).await;
        for target in ["/", "/users/42/settings", "/staticfoo"] {
            let reply = send(proxy.addr, get("site.example.com", target)).await;
            assert_eq!(reply.status, 200, "{target}");
            assert_eq!(reply.body, "<h1>client-side app</h1>", "{target}");
            assert_eq!(header(&reply, "content-type"), "text/html; charset=utf-8");
        }
        let reply = send(proxy.addr, get("site.example.com", "/static/app.css")).await;
        assert_eq!(reply.body, "body { color: red }\n");
        let reply = send(proxy.addr, request("HEAD", "/users/42", "")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, ""));
        let reply = send(proxy.addr, request("POST", "/users/42", "Content-Length: 0\r\n")).await;
        assert_eq!(reply.status, 405);
        assert_eq!(header(&reply, "allow"), "GET, HEAD");
    }

    #[tokio::test]
    async fn a_missing_catch_all_file_gets_404() {
        let site = site();
        let proxy = start_proxy(static_only(&site, Some(site.site.join("nope.html")))).await;
        let reply = send(proxy.addr, get("site.example.com", "/anything")).await;
        assert_eq!(reply.status, 404);
    }

    #[tokio::test]
    async fn other_methods_on_a_static_file_get_405() {
        let site = site();
        let upstream = echo_upstream("web.1").await;
        let mounts = vec![StaticMount::new("/static", &site.site)];
        let backend = Backend::new("site", vec![upstream]).with_static(mounts, None);
        let proxy = start_proxy(routes_for(backend)).await;
        for method in ["POST", "PUT", "DELETE"] {
            let reply =
                send(proxy.addr, request(method, "/static/app.css", "Content-Length: 0\r\n")).await;
            assert_eq!(reply.status, 405, "{method}");
            assert_eq!(header(&reply, "allow"), "GET, HEAD");
            assert!(!reply.body.contains("color: red"), "{}", reply.body);
        }
    }

    #[tokio::test]
    async fn a_stopped_app_without_static_files_still_gets_502() {
        let site = site();
        let missing_mount_dir = vec![StaticMount::new("/static", site.site.join("nope"))];
        let proxy = start_proxy(routes_for(Backend::new("plain", vec![]))).await;
        let reply = send(proxy.addr, get("site.example.com", "/static/app.css")).await;
        assert_eq!(reply.status, 502);
        assert!(reply.body.contains("the app plain is not running"), "{}", reply.body);

        // An app with mounts is a static site: a path it lacks is a 404, not a stopped app,
        // even when the mount directory is not there (yet).
        let backend = Backend::new("site", vec![]).with_static(missing_mount_dir, None);
        let proxy = start_proxy(routes_for(backend)).await;
        let reply = send(proxy.addr, get("site.example.com", "/static/app.css")).await;
        assert_eq!(reply.status, 404);
    }
}
