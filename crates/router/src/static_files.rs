//! Files the router serves itself, in place of nginx: piku's `static:` workers,
//! `NGINX_STATIC_PATHS` (URL prefixes mapped to directories) and `NGINX_CATCH_ALL` (one file
//! for every path nothing else answers, for apps that route on the client).
//!
//! A request path is percent-decoded, split into segments and matched segment-wise against
//! the backend's mounts, longest prefix first. Under a mount the path is refused outright if
//! any segment could climb or confuse a file system (`.`, `..`, a backslash, NUL), and with
//! a 404 if a segment starts with `.git` (unless the app sets `NGINX_ALLOW_GIT_FOLDERS`);
//! what is left is looked up on a blocking thread, where both the mount directory and the
//! file are canonicalised and the file must stay inside the directory, so a symlink cannot
//! lead out of it either.
//!
//! The look-up also chooses the representation, as nginx's `gzip_static` does: when
//! `FILE.gz` lies next to `FILE` (a regular file, inside the mount by the same rules) and the
//! client's `Accept-Encoding` takes gzip, its bytes are sent with `Content-Encoding: gzip`
//! and the type of `FILE`; either way the answer then carries `Vary: Accept-Encoding`.
//!
//! [`send_file`] turns one opened file into a response and is the single place that knows
//! the HTTP side of serving files: validators and conditional requests (304), and byte
//! ranges (206, 416, `If-Range`), which apply to the bytes sent, so to the `.gz` file when
//! that is what is sent, with that file's own validators.

use std::cmp::Reverse;
use std::fs;
use std::io::{Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED,
    LOCATION, RANGE, VARY,
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
    /// A segment starting with `.git`: the repository's internals are not served unless the
    /// app allows it (`NGINX_ALLOW_GIT_FOLDERS`). A 404, as piku's nginx answers.
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
/// `/staticfoo`. Empty segments (`//`) are skipped, as nginx merges slashes. Segments
/// starting with `.git` are refused unless `git_folders` allows them.
pub(crate) fn candidates(
    mounts: &[StaticMount],
    raw_path: &str,
    git_folders: bool,
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
        if !git_folders && segments.iter().any(|segment| is_git_segment(segment)) {
            return Err(Refusal::Hidden);
        }
    }
    Ok(found)
}

fn is_bad_segment(segment: &str) -> bool {
    segment == "." || segment == ".." || segment.contains(['\\', '\0'])
}

/// `.git` and its relatives (`.gitignore`, `.github`), as piku's `location ~ /\.git`.
fn is_git_segment(segment: &str) -> bool {
    segment.starts_with(".git")
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
}

/// The representation of a file the look-up chose for a request: the file itself, or its
/// precompressed `.gz` sibling.
#[derive(Debug)]
pub(crate) struct Chosen {
    /// The bytes to send.
    file: OpenFile,
    /// The type of the file asked for (never that of the `.gz`).
    content_type: &'static str,
    /// Whether `file` is the `.gz` sibling, sent with `Content-Encoding: gzip`.
    gzip: bool,
    /// Whether a `.gz` sibling exists, so that the answer depends on `Accept-Encoding`.
    has_gzip: bool,
}

/// What the disk has for a request path.
#[derive(Debug)]
pub(crate) enum Found {
    File(Chosen),
    /// A directory asked for without the trailing `/`: relative links in its index would
    /// resolve against the parent, so the client is sent to the URL with the slash.
    DirectoryWithoutSlash,
    /// Nothing to serve here; the request goes on to the app or the catch-all.
    Missing,
    /// Something is there but must not be served (it leads out of the mount, or into
    /// `.git`, or cannot be opened): a 404, never a fall-through that might mask it.
    Refused,
}

/// How a look-up goes for one request: what the app allows and what the client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lookup {
    /// Paths through `.git` may be served (`NGINX_ALLOW_GIT_FOLDERS`).
    pub(crate) git_folders: bool,
    /// The client takes gzip, so a `.gz` sibling is sent in place of the file.
    pub(crate) accepts_gzip: bool,
}

/// Looks `candidates` up on disk: the first whose mount directory exists decides. Blocking;
/// run it on a blocking thread.
pub(crate) fn find_file(candidates: &[Candidate], trailing_slash: bool, lookup: Lookup) -> Found {
    for candidate in candidates {
        // A mount directory that does not exist (yet) does not match at all.
        let root = match fs::canonicalize(&candidate.dir) {
            Ok(root) if root.is_dir() => root,
            _ => continue,
        };
        let mut path = root.clone();
        path.extend(&candidate.segments);
        return find_in(&root, &path, trailing_slash, lookup);
    }
    Found::Missing
}

fn find_in(root: &Path, path: &Path, trailing_slash: bool, lookup: Lookup) -> Found {
    let canonical = match confine(root, path, lookup.git_folders) {
        Ok(Some(canonical)) => canonical,
        Ok(None) => return Found::Missing,
        Err(()) => return Found::Refused,
    };
    let Ok(metadata) = fs::metadata(&canonical) else {
        return Found::Missing;
    };
    if metadata.is_dir() {
        if !trailing_slash {
            return Found::DirectoryWithoutSlash;
        }
        let index = canonical.join(INDEX_FILE);
        return match confine(root, &index, lookup.git_folders) {
            Ok(Some(canonical_index)) => choose(root, &index, &canonical_index, lookup),
            Ok(None) => Found::Missing,
            Err(()) => Found::Refused,
        };
    }
    // `/style.css/` names a directory that is not there, as nginx also decides.
    if trailing_slash { Found::Missing } else { choose(root, path, &canonical, lookup) }
}

/// The canonical form of `path` if it exists and stays inside `root` (already canonical)
/// without passing through `.git` (unless `git_folders`); `Ok(None)` if it does not exist;
/// `Err` if it escapes.
fn confine(root: &Path, path: &Path, git_folders: bool) -> Result<Option<PathBuf>, ()> {
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
    let is_hidden = !git_folders
        && inside.components().any(|component| match component {
            Component::Normal(name) => name.to_str().is_some_and(is_git_segment),
            _ => false,
        });
    if is_hidden { Err(()) } else { Ok(Some(canonical)) }
}

/// The representation of the file at `requested` (its canonical form is `canonical`) that
/// the client gets: `requested` + `.gz` when that is a regular file inside `root` by the
/// rules of [`confine`] and the client takes gzip, else the file itself.
///
/// The sibling is looked for next to the name asked for, not next to where a symlink
/// leads, as nginx's `gzip_static` does.
fn choose(root: &Path, requested: &Path, canonical: &Path, lookup: Lookup) -> Found {
    match fs::metadata(canonical) {
        Ok(metadata) if metadata.is_file() => {}
        _ => return Found::Missing,
    }
    let gzip_path = match confine(root, &with_gz_suffix(requested), lookup.git_folders) {
        Ok(Some(path)) if fs::metadata(&path).is_ok_and(|metadata| metadata.is_file()) => {
            Some(path)
        }
        _ => None,
    };
    let content_type = content_type(canonical);
    let has_gzip = gzip_path.is_some();
    if lookup.accepts_gzip
        && let Some(gzip_path) = gzip_path
    {
        // Should the sibling vanish or refuse to open in between, the file itself will do.
        if let Ok(file) = open_regular(&gzip_path) {
            return Found::File(Chosen { file, content_type, gzip: true, has_gzip });
        }
    }
    match open_regular(canonical) {
        Ok(file) => Found::File(Chosen { file, content_type, gzip: false, has_gzip }),
        Err(found) => found,
    }
}

/// `path` with `.gz` appended to its file name (`app.css` → `app.css.gz`).
fn with_gz_suffix(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// Opens `path` if it is a regular file, else says why not. Sockets and FIFOs are left
/// alone (opening a FIFO would wait for a writer); a file that exists but cannot be opened
/// is refused and logged, because the operator will want to know about the permissions.
fn open_regular(path: &Path) -> Result<OpenFile, Found> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_file() => {}
        _ => return Err(Found::Missing),
    }
    let opened = fs::File::open(path).and_then(|file| {
        let metadata = file.metadata()?;
        Ok((file, metadata))
    });
    match opened {
        Ok((file, metadata)) if metadata.is_file() => {
            Ok(OpenFile { file, len: metadata.len(), modified: metadata.modified().ok() })
        }
        Ok(_) => Err(Found::Missing),
        Err(error) => {
            tracing::warn!(path = %path.display(), "cannot open a static file: {error}");
            Err(Found::Refused)
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
    let git_folders = backend.git_folders();
    let candidates = match candidates(backend.static_mounts(), raw_path, git_folders) {
        Ok(candidates) if candidates.is_empty() => return Ok(None),
        Ok(candidates) => candidates,
        Err(Refusal::BadPath) => return Err(ProxyError::PathNotAllowed),
        Err(Refusal::Hidden) => return Err(ProxyError::NotFound { app: backend.app.clone() }),
    };
    let trailing_slash = percent_decode(raw_path).ends_with('/');
    let lookup = Lookup { git_folders, accepts_gzip: accepts_gzip(request_headers) };
    let found = blocking(move || find_file(&candidates, trailing_slash, lookup)).await?;
    let response = match found {
        Found::Missing => return Ok(None),
        Found::Refused => return Err(ProxyError::NotFound { app: backend.app.clone() }),
        _ if !is_get_or_head(method) => return Err(ProxyError::MethodNotAllowed),
        Found::DirectoryWithoutSlash => redirect_to_slash(uri),
        Found::File(chosen) => send_file(method, request_headers, chosen)?,
    };
    tracing::debug!(app = %backend.app, path = raw_path, status = response.status().as_u16(), "served from disk");
    Ok(Some(response))
}

/// Answers with the backend's catch-all file, which must be set. A `.gz` next to it is
/// served as for any file, if it stays in the catch-all's own directory.
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
    let lookup =
        Lookup { git_folders: backend.git_folders(), accepts_gzip: accepts_gzip(request_headers) };
    let found = blocking(move || {
        let (Ok(canonical), Some(Ok(dir))) =
            (fs::canonicalize(&path), path.parent().map(fs::canonicalize))
        else {
            return Found::Missing;
        };
        choose(&dir, &path, &canonical, lookup)
    });
    match found.await? {
        Found::File(chosen) => send_file(method, request_headers, chosen),
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

/// The response for the representation the look-up chose: 304 when the client's copy is
/// current; else the file with its type, encoding and validators, whole (200, with
/// `Accept-Ranges: bytes`) or the one byte range asked for (206), streamed (no body for
/// HEAD, which is answered the same way otherwise); or a 416 for a range outside the file.
///
/// The preconditions go in RFC 9110's order (section 13.2.2): `If-None-Match` or
/// `If-Modified-Since` first, then `If-Range`, which only decides whether `Range` counts.
pub(crate) fn send_file(
    method: &Method,
    request_headers: &HeaderMap,
    chosen: Chosen,
) -> Result<Response<ResponseBody>, ProxyError> {
    let Chosen { file, content_type, gzip, has_gzip } = chosen;
    let OpenFile { mut file, len, modified } = file;
    let etag = etag(len, modified, gzip);

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
    // A cache between us and the client must keep the two representations apart, and a
    // 304 carries Vary like the 200 it stands for (RFC 9110 section 15.4.5).
    if has_gzip {
        headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if is_not_modified(request_headers, &etag, modified) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return Ok(response);
    }
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let range = match request_headers.get(RANGE).map(HeaderValue::to_str) {
        Some(Ok(range)) if if_range_holds(request_headers, &etag, modified) => {
            parse_range(range, len)
        }
        _ => RangeAnswer::Full,
    };
    let (start, n_bytes) = match range {
        RangeAnswer::Full => {
            headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            (0, len)
        }
        RangeAnswer::Part { start, end } => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let content_range = format!("bytes {start}-{end}/{len}");
            if let Ok(value) = HeaderValue::try_from(content_range) {
                response.headers_mut().insert(CONTENT_RANGE, value);
            }
            (start, end - start + 1)
        }
        RangeAnswer::Unsatisfiable => return Err(ProxyError::RangeNotSatisfiable { len }),
    };
    response.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(n_bytes));
    if method != Method::HEAD {
        // A seek only moves the file's offset: no I/O that could hold up the runtime.
        file.seek(SeekFrom::Start(start)).map_err(|error| ProxyError::Internal {
            cause: format!("cannot seek in a static file: {error}"),
        })?;
        let file = tokio::fs::File::from_std(file).take(n_bytes);
        *response.body_mut() = ResponseBody::File(ReaderStream::with_capacity(file, CHUNK_SIZE));
    }
    Ok(response)
}

/// A strong validator from the size and modification time (in nanoseconds), as nginx makes
/// its own (which counts whole seconds): cheap, no hashing of content, changed by every
/// deploy that changes the file. Strong, because the bytes sent are exactly the file's, and
/// `If-Range` only ever matches a strong tag. The `.gz` representation's tag comes from
/// the `.gz` file and is marked, so that it differs from the plain file's even if the two
/// had the same size and time.
fn etag(len: u64, modified: Option<SystemTime>, gzip: bool) -> String {
    let nanos = modified
        .and_then(|modified| modified.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since_epoch| since_epoch.as_nanos());
    let marker = if gzip { "-gz" } else { "" };
    format!("\"{len:x}-{nanos:x}{marker}\"")
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

/// RFC 9110 section 13.1.5: whether a `Range` header counts. Without `If-Range` it does;
/// with one, only if the client's copy is the representation we have: an entity tag that
/// matches ours strongly (a weak tag never does), or a date equal to our Last-Modified.
/// Anything else means the client's copy is stale, and it gets the whole file (200).
fn if_range_holds(request_headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> bool {
    let Some(value) = request_headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str().map(str::trim) else {
        return false;
    };
    if value.starts_with('"') || value.starts_with("W/") {
        return !etag.starts_with("W/") && value == etag;
    }
    match (httpdate::parse_http_date(value), modified) {
        (Ok(date), Some(modified)) => whole_seconds(modified) == date,
        _ => false,
    }
}

/// What a `Range` header asks of a representation of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// Send everything (200): no usable range, a malformed header or a unit other than
    /// bytes (which RFC 9110 section 14.2 says to ignore), or several ranges.
    ///
    /// Several ranges would be a `multipart/byteranges` 206 for nginx; a 200 with the whole
    /// file is what RFC 9110 also allows (a server may ignore `Range`), and is what Berth
    /// sends: clients that ask for several ranges (PDF viewers, download managers) handle
    /// it, and the router keeps to one body shape.
    Full,
    /// Send bytes `start..=end` (206).
    Part { start: u64, end: u64 },
    /// No range overlaps the file (416).
    Unsatisfiable,
}

/// One range of a `Range` header, before the length of the file is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    /// `a-b`; `b` may lie beyond the end.
    Closed(u64, u64),
    /// `a-`: from `a` to the end.
    From(u64),
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// RFC 9110 section 14.1.2: `bytes=a-b`, `bytes=a-` or `bytes=-n` (several, comma
/// separated), against a representation of `len` bytes.
pub(crate) fn parse_range(value: &str, len: u64) -> RangeAnswer {
    let Some((unit, set)) = value.trim().split_once('=') else {
        return RangeAnswer::Full;
    };
    if !unit.trim_end().eq_ignore_ascii_case("bytes") {
        return RangeAnswer::Full;
    }
    let mut specs = Vec::new();
    // Empty list elements are allowed (RFC 9110 section 5.6.1), so `bytes=0-1,` is fine.
    for item in set.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        match parse_range_spec(item) {
            Some(spec) => specs.push(spec),
            // One invalid range makes the whole header invalid, and so ignored.
            None => return RangeAnswer::Full,
        }
    }
    match specs.as_slice() {
        [] => RangeAnswer::Full,
        [spec] => match (spec, resolve_range(*spec, len)) {
            (_, Some((start, end))) => RangeAnswer::Part { start, end },
            // The last n bytes of an empty file: nothing to cut, and no way to write the
            // range of zero bytes, so the whole (empty) file it is.
            (RangeSpec::Suffix(n), None) if *n > 0 => RangeAnswer::Full,
            (_, None) => RangeAnswer::Unsatisfiable,
        },
        several if several.iter().any(|spec| resolve_range(*spec, len).is_some()) => {
            RangeAnswer::Full
        }
        _ => RangeAnswer::Unsatisfiable,
    }
}

fn parse_range_spec(item: &str) -> Option<RangeSpec> {
    let (first, last) = item.split_once('-')?;
    match (parse_position(first)?, parse_position(last)?) {
        (Some(first), Some(last)) if first <= last => Some(RangeSpec::Closed(first, last)),
        (Some(first), None) => Some(RangeSpec::From(first)),
        (None, Some(suffix)) => Some(RangeSpec::Suffix(suffix)),
        // `b < a`, or `-` alone: invalid.
        _ => None,
    }
}

/// `Some(None)` for an absent position, `Some(Some(n))` for digits (a number too large for
/// u64 is the largest, which lies beyond any file), `None` for anything else.
fn parse_position(text: &str) -> Option<Option<u64>> {
    if text.is_empty() {
        return Some(None);
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(Some(text.parse().unwrap_or(u64::MAX)))
}

/// The bytes `start..=end` a range means for `len` bytes, or `None` if it lies outside.
fn resolve_range(spec: RangeSpec, len: u64) -> Option<(u64, u64)> {
    let last = len.checked_sub(1)?;
    match spec {
        RangeSpec::Closed(first, end) => (first <= last).then(|| (first, end.min(last))),
        RangeSpec::From(first) => (first <= last).then_some((first, last)),
        RangeSpec::Suffix(n) => (n > 0).then(|| (len - n.min(len), last)),
    }
}

/// Whether the client takes gzip, by its `Accept-Encoding` (RFC 9110 section 12.5.3): the
/// `q` of `gzip` (or `x-gzip`) if listed, else that of `*`; acceptable if above 0. No
/// header, or gzip not listed, means no: the file itself is always acceptable.
pub(crate) fn accepts_gzip(request_headers: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    let items = request_headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','));
    for item in items {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        // A `q` that is not a qvalue makes the coding unacceptable: the file itself is
        // never wrong.
        let mut quality = Some(1000);
        for parameter in parts {
            if let Some((name, value)) = parameter.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                quality = parse_qvalue(value.trim());
            }
        }
        let quality = quality.unwrap_or(0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(quality.max(gzip.unwrap_or(0)));
        } else if coding == "*" {
            any = Some(quality);
        }
    }
    gzip.or(any).is_some_and(|quality| quality > 0)
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` if it is not one (RFC 9110
/// section 12.4.2: at most three decimals, at most 1).
fn parse_qvalue(text: &str) -> Option<u32> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u32>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
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
    use crate::test_support::{Reply, echo_upstream, get, header_map, send, start_proxy};

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
            candidates(&mounts, path, false)
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
        assert!(candidates(&only_static, "/staticfoo/x", false).unwrap().is_empty());
        assert!(candidates(&only_static, "/", false).unwrap().is_empty());
        assert!(candidates(&only_static, "/other/static", false).unwrap().is_empty());
        // Not under a mount, so not refused either: such paths are the app's business.
        assert!(candidates(&only_static, "/x/../static", false).unwrap().is_empty());
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
            assert_eq!(candidates(&mounts, path, false), Err(expected), "{path:?}");
            // NGINX_ALLOW_GIT_FOLDERS lets .git through, never a path that climbs.
            match expected {
                Refusal::BadPath => {
                    assert_eq!(candidates(&mounts, path, true), Err(expected), "{path:?}")
                }
                Refusal::Hidden => assert!(candidates(&mounts, path, true).is_ok(), "{path:?}"),
            }
        }
        assert!(candidates(&mounts, "/static/.well-known/a..b", false).is_ok());
        assert!(candidates(&mounts, "/static/...", false).is_ok());
        assert!(candidates(&mounts, "/static/a.git/b", false).is_ok());
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
        let etag = etag(42, Some(modified), false);
        assert!(etag.starts_with("\"2a-"), "{etag}");
        let headers = header_map;
        let weak = format!("W/{etag}");
        let on_time = httpdate::fmt_http_date(modified);
        let earlier = httpdate::fmt_http_date(modified - Duration::from_secs(1));
        let cases = [
            (headers(&[]), false),
            (headers(&[("if-none-match", &etag)]), true),
            // If-None-Match compares weakly.
            (headers(&[("if-none-match", &weak)]), true),
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

    #[test]
    fn parse_range_table() {
        use RangeAnswer::{Full, Part, Unsatisfiable};
        let cases: &[(&str, u64, RangeAnswer)] = &[
            ("bytes=0-4", 10, Part { start: 0, end: 4 }),
            ("bytes=2-2", 10, Part { start: 2, end: 2 }),
            ("bytes=5-", 10, Part { start: 5, end: 9 }),
            ("bytes=-3", 10, Part { start: 7, end: 9 }),
            ("bytes=0-", 10, Part { start: 0, end: 9 }),
            // The end is cut to the file; a suffix longer than the file is all of it.
            ("bytes=8-100", 10, Part { start: 8, end: 9 }),
            ("bytes=-100", 10, Part { start: 0, end: 9 }),
            ("bytes=0-99999999999999999999999", 10, Part { start: 0, end: 9 }),
            // Case, spaces around the set and empty list elements are tolerated.
            ("Bytes=1-2", 10, Part { start: 1, end: 2 }),
            ("bytes= 1-2 ,", 10, Part { start: 1, end: 2 }),
            // Nothing of the file: 416.
            ("bytes=10-", 10, Unsatisfiable),
            ("bytes=10-20", 10, Unsatisfiable),
            ("bytes=99999999999999999999999-", 10, Unsatisfiable),
            ("bytes=-0", 10, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=10-, 20-30", 10, Unsatisfiable),
            // The last bytes of an empty file: the whole (empty) file.
            ("bytes=-5", 0, Full),
            // Several ranges: the whole file (see RangeAnswer::Full).
            ("bytes=0-1,5-6", 10, Full),
            ("bytes=0-1, 50-60", 10, Full),
            // Malformed, or another unit: ignored.
            ("bytes=5-2", 10, Full),
            ("bytes=-", 10, Full),
            ("bytes=a-b", 10, Full),
            ("bytes=1-2-3", 10, Full),
            ("bytes=+1-2", 10, Full),
            ("bytes=1 - 2", 10, Full),
            ("bytes=0-1,x", 10, Full),
            ("bytes=", 10, Full),
            ("bytes 0-1", 10, Full),
            ("items=0-1", 10, Full),
            ("", 10, Full),
        ];
        for (value, len, expected) in cases {
            assert_eq!(parse_range(value, *len), *expected, "{value:?} of {len} bytes");
        }
    }

    #[test]
    fn accept_encoding_table() {
        let cases = [
            ("gzip", true),
            ("gzip, deflate, br", true),
            ("br;q=1.0, GZIP;q=0.5", true),
            ("x-gzip", true),
            ("gzip;q=0.001", true),
            ("gzip ; Q = 1", true),
            ("*", true),
            ("br, *;q=0.1", true),
            ("gzip;q=0", false),
            ("gzip;q=0.0", false),
            ("gzip;q=0.000", false),
            ("gzip;q=0, *", false),
            ("*;q=0", false),
            ("*;q=0, gzip", true),
            ("br, deflate", false),
            ("identity", false),
            ("", false),
            ("gzipx", false),
            // Not a qvalue: not acceptable, the file itself is never wrong.
            ("gzip;q=2", false),
            ("gzip;q=0.5000", false),
            ("gzip;q=high", false),
            ("gzip;q=", false),
        ];
        for (value, expected) in cases {
            let headers = header_map(&[("accept-encoding", value)]);
            assert_eq!(accepts_gzip(&headers), expected, "Accept-Encoding: {value}");
        }
        assert!(!accepts_gzip(&HeaderMap::new()), "no Accept-Encoding");
        let two_lines = header_map(&[("accept-encoding", "br"), ("accept-encoding", "gzip")]);
        assert!(accepts_gzip(&two_lines), "{two_lines:?}");
    }

    #[test]
    fn if_range_table() {
        let modified = UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let ours = etag(42, Some(modified), false);
        let on_time = httpdate::fmt_http_date(modified);
        let earlier = httpdate::fmt_http_date(modified - Duration::from_secs(1));
        let later = httpdate::fmt_http_date(modified + Duration::from_secs(1));
        let cases = [
            (None, true),
            (Some(ours.clone()), true),
            (Some(format!(" {ours} ")), true),
            // A weak tag never matches strongly; nor does another representation's tag.
            (Some(format!("W/{ours}")), false),
            (Some(etag(42, Some(modified), true)), false),
            (Some("\"other\"".to_string()), false),
            (Some(on_time), true),
            (Some(earlier), false),
            (Some(later), false),
            (Some("yesterday".to_string()), false),
        ];
        for (if_range, expected) in cases {
            let headers = match &if_range {
                Some(value) => header_map(&[("if-range", value)]),
                None => HeaderMap::new(),
            };
            assert_eq!(if_range_holds(&headers, &ours, Some(modified)), expected, "{if_range:?}");
        }
        // No modification time: a date cannot match.
        let headers = header_map(&[("if-range", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(!if_range_holds(&headers, &ours, None));
    }

    #[test]
    fn the_gz_representation_has_its_own_etag() {
        let modified = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_ne!(etag(20, modified, false), etag(20, modified, true));
        assert_ne!(etag(20, modified, false), etag(21, modified, false));
        assert!(etag(20, modified, true).ends_with("-gz\""));
    }

    /// A site on disk: `site/` is mounted, `outside/` holds what must never be served.
    struct Site {
        _dir: TempDir,
        site: PathBuf,
        outside: PathBuf,
    }

    const SECRET: &str = "TOP SECRET outside the mount";
    const GZIPPED_BUNDLE: &str = "GZ(console.log('plain');)";

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
        // Precompressed siblings. The router never decodes them, so any bytes will do, and
        // text keeps the assertions readable.
        write(site.join("bundle.js"), "console.log('plain');\n");
        write(site.join("bundle.js.gz"), GZIPPED_BUNDLE);
        write(site.join("escape.txt"), "inside");
        std::os::unix::fs::symlink(outside.join("secret.txt"), site.join("escape.txt.gz")).unwrap();
        write(site.join("odd.txt"), "odd");
        write(site.join("odd.txt.gz/not-a-file"), "a directory named like a .gz");
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
        assert!(header(&reply, "etag").starts_with("\"14-"), "{}", reply.head);
        assert_eq!(header(&reply, "accept-ranges"), "bytes");
        // No .gz next to it: the answer does not depend on Accept-Encoding.
        assert!(!has_header(&reply, "vary"), "{}", reply.head);
        assert!(!has_header(&reply, "content-encoding"), "{}", reply.head);
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
            format!("If-None-Match: \"nope\", W/{etag}\r\n"),
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

    #[tokio::test]
    async fn byte_ranges_get_206_with_just_those_bytes() {
        let site = site();
        let proxy = start_proxy(static_only(&site, None)).await;
        // "body { color: red }\n", 20 bytes.
        let cases = [
            ("bytes=0-3", "bytes 0-3/20", "body"),
            ("bytes=7-11", "bytes 7-11/20", "color"),
            ("bytes=5-", "bytes 5-19/20", "{ color: red }\n"),
            ("bytes=-5", "bytes 15-19/20", "ed }\n"),
            ("bytes=10-100", "bytes 10-19/20", "or: red }\n"),
        ];
        for (range, content_range, body) in cases {
            let range_header = format!("Range: {range}\r\n");
            let reply = send(proxy.addr, request("GET", "/static/app.css", &range_header)).await;
            assert_eq!(reply.status, 206, "{range}: {}", reply.head);
            assert_eq!(header(&reply, "content-range"), content_range, "{range}");
            assert_eq!(header(&reply, "content-length"), body.len().to_string(), "{range}");
            assert_eq!(header(&reply, "content-type"), "text/css; charset=utf-8");
            assert!(has_header(&reply, "etag"), "{}", reply.head);
            assert_eq!(reply.body, body, "{range}");

            // HEAD answers the same, without the bytes.
            let reply = send(proxy.addr, request("HEAD", "/static/app.css", &range_header)).await;
            assert_eq!(reply.status, 206, "HEAD {range}: {}", reply.head);
            assert_eq!(header(&reply, "content-range"), content_range, "HEAD {range}");
            assert_eq!(header(&reply, "content-length"), body.len().to_string());
            assert_eq!(reply.body, "", "HEAD {range}");
        }

        for method in ["GET", "HEAD"] {
            for range in ["bytes=20-", "bytes=25-30", "bytes=-0"] {
                let range_header = format!("Range: {range}\r\n");
                let reply =
                    send(proxy.addr, request(method, "/static/app.css", &range_header)).await;
                assert_eq!(reply.status, 416, "{method} {range}: {}", reply.head);
                assert_eq!(header(&reply, "content-range"), "bytes */20", "{range}");
                assert!(!reply.body.contains("color"), "{}", reply.body);
            }
        }

        // Several ranges, a malformed header, another unit: the whole file, as a 200.
        for range in ["bytes=0-1,4-5", "bytes=5-2", "bytes=x-", "lines=1-2", "bytes 0-3"] {
            let range_header = format!("Range: {range}\r\n");
            let reply = send(proxy.addr, request("GET", "/static/app.css", &range_header)).await;
            assert_eq!(reply.status, 200, "{range}: {}", reply.head);
            assert_eq!(reply.body, "body { color: red }\n", "{range}");
            assert_eq!(header(&reply, "accept-ranges"), "bytes");
            assert!(!has_header(&reply, "content-range"), "{}", reply.head);
        }
    }

    #[tokio::test]
    async fn a_range_across_chunks_is_streamed_from_its_offset() {
        let site = site();
        let big: String = (0..CHUNK_SIZE * 3).map(|n| char::from(b'a' + (n % 26) as u8)).collect();
        fs::write(site.site.join("big.txt"), &big).unwrap();
        let proxy = start_proxy(static_only(&site, None)).await;
        let (start, end) = (CHUNK_SIZE - 10, 2 * CHUNK_SIZE + 10);
        let range_header = format!("Range: bytes={start}-{end}\r\n");
        let reply = send(proxy.addr, request("GET", "/static/big.txt", &range_header)).await;
        assert_eq!(reply.status, 206, "{}", reply.head);
        assert_eq!(header(&reply, "content-range"), format!("bytes {start}-{end}/{}", big.len()));
        assert_eq!(header(&reply, "content-length"), (end - start + 1).to_string());
        assert!(reply.body == big[start..=end], "the body differs from the slice");
    }

    #[tokio::test]
    async fn if_range_gives_the_part_only_for_the_current_file() {
        let site = site();
        let proxy = start_proxy(static_only(&site, None)).await;
        let first = send(proxy.addr, get("site.example.com", "/static/app.css")).await;
        let etag = header(&first, "etag").to_string();
        let last_modified = header(&first, "last-modified").to_string();

        let cases = [
            (etag.clone(), 206),
            (last_modified, 206),
            // A stale copy, or a weak tag, gets the whole file.
            ("\"stale\"".to_string(), 200),
            (format!("W/{etag}"), 200),
            ("Sun, 06 Nov 1994 08:49:37 GMT".to_string(), 200),
            ("not a validator".to_string(), 200),
        ];
        for (if_range, status) in cases {
            let conditional = format!("Range: bytes=0-3\r\nIf-Range: {if_range}\r\n");
            let reply = send(proxy.addr, request("GET", "/static/app.css", &conditional)).await;
            assert_eq!(reply.status, status, "If-Range: {if_range}: {}", reply.head);
            let body = if status == 206 { "body" } else { "body { color: red }\n" };
            assert_eq!(reply.body, body, "If-Range: {if_range}");
        }

        // If-None-Match comes first: a current copy gets 304, whatever the range.
        let conditional = format!("Range: bytes=0-3\r\nIf-None-Match: {etag}\r\n");
        let reply = send(proxy.addr, request("GET", "/static/app.css", &conditional)).await;
        assert_eq!(reply.status, 304, "{}", reply.head);
    }

    #[tokio::test]
    async fn a_gz_sibling_is_sent_to_clients_that_take_gzip() {
        let site = site();
        let proxy = start_proxy(static_only(&site, None)).await;
        let js = "text/javascript; charset=utf-8";

        let plain = send(proxy.addr, get("site.example.com", "/static/bundle.js")).await;
        assert_eq!(plain.status, 200, "{}", plain.head);
        assert_eq!(plain.body, "console.log('plain');\n");
        assert_eq!(header(&plain, "vary"), "Accept-Encoding");
        assert!(!has_header(&plain, "content-encoding"), "{}", plain.head);

        let gzip = "Accept-Encoding: br;q=1.0, gzip;q=0.8\r\n";
        let zipped = send(proxy.addr, request("GET", "/static/bundle.js", gzip)).await;
        assert_eq!(zipped.status, 200, "{}", zipped.head);
        assert_eq!(zipped.body, GZIPPED_BUNDLE);
        assert_eq!(header(&zipped, "content-encoding"), "gzip");
        assert_eq!(header(&zipped, "content-type"), js);
        assert_eq!(header(&zipped, "content-length"), GZIPPED_BUNDLE.len().to_string());
        assert_eq!(header(&zipped, "vary"), "Accept-Encoding");
        assert_ne!(header(&zipped, "etag"), header(&plain, "etag"));

        let head = send(proxy.addr, request("HEAD", "/static/bundle.js", gzip)).await;
        assert_eq!(header(&head, "content-encoding"), "gzip");
        assert_eq!(header(&head, "content-length"), GZIPPED_BUNDLE.len().to_string());
        assert_eq!(head.body, "");

        for refusing in ["gzip;q=0", "br, deflate", "identity", "*;q=0"] {
            let extra = format!("Accept-Encoding: {refusing}\r\n");
            let reply = send(proxy.addr, request("GET", "/static/bundle.js", &extra)).await;
            assert_eq!(reply.body, "console.log('plain');\n", "{refusing}");
            assert!(!has_header(&reply, "content-encoding"), "{refusing}: {}", reply.head);
            assert_eq!(header(&reply, "vary"), "Accept-Encoding", "{refusing}");
        }

        // Ranges apply to the bytes sent: the .gz ones, with the .gz's length.
        let range = format!("{gzip}Range: bytes=0-2\r\n");
        let reply = send(proxy.addr, request("GET", "/static/bundle.js", &range)).await;
        assert_eq!(reply.status, 206, "{}", reply.head);
        assert_eq!(reply.body, &GZIPPED_BUNDLE[..3]);
        assert_eq!(header(&reply, "content-encoding"), "gzip");
        let total = GZIPPED_BUNDLE.len();
        assert_eq!(header(&reply, "content-range"), format!("bytes 0-2/{total}"));
        // ... and If-Range names the .gz representation's tag.
        let stale = format!("{range}If-Range: {}\r\n", header(&plain, "etag"));
        let reply = send(proxy.addr, request("GET", "/static/bundle.js", &stale)).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, GZIPPED_BUNDLE));

        // Each representation is validated by its own tag, and the 304 keeps Vary.
        let current = format!("{gzip}If-None-Match: {}\r\n", header(&zipped, "etag"));
        let reply = send(proxy.addr, request("GET", "/static/bundle.js", &current)).await;
        assert_eq!(reply.status, 304, "{}", reply.head);
        assert_eq!(header(&reply, "vary"), "Accept-Encoding");
        let other = format!("If-None-Match: {}\r\n", header(&zipped, "etag"));
        let reply = send(proxy.addr, request("GET", "/static/bundle.js", &other)).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "console.log('plain');\n"));
    }

    #[tokio::test]
    async fn a_gz_sibling_keeps_to_the_mount_and_to_regular_files() {
        let site = site();
        fs::write(site.site.join("docs/index.html.gz"), "GZ(docs)").unwrap();
        fs::write(site.site.join("index.html.gz"), "GZ(client-side app)").unwrap();
        let proxy = start_proxy(static_only(&site, Some(site.site.join("index.html")))).await;
        let gzip = "Accept-Encoding: gzip\r\n";

        // A .gz that is a symlink out of the mount, or a directory, is not a sibling.
        let reply = send(proxy.addr, request("GET", "/static/escape.txt", gzip)).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "inside"));
        assert!(!has_header(&reply, "vary") && !has_header(&reply, "content-encoding"));
        let reply = send(proxy.addr, request("GET", "/static/odd.txt", gzip)).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "odd"));
        assert!(!has_header(&reply, "vary") && !has_header(&reply, "content-encoding"));

        // A directory's index and the catch-all have theirs too, typed as the page.
        for (target, body) in [("/static/docs/", "GZ(docs)"), ("/users/42", "GZ(client-side app)")]
        {
            let reply = send(proxy.addr, request("GET", target, gzip)).await;
            assert_eq!(reply.status, 200, "{target}: {}", reply.head);
            assert_eq!(reply.body, body, "{target}");
            assert_eq!(header(&reply, "content-type"), "text/html; charset=utf-8", "{target}");
            assert_eq!(header(&reply, "content-encoding"), "gzip", "{target}");
        }
    }

    #[tokio::test]
    async fn git_folders_are_served_only_when_the_app_allows_them() {
        let site = site();
        fs::write(site.site.join(".gitignore"), "target/\n").unwrap();
        std::os::unix::fs::symlink(site.site.join(".git"), site.site.join("repo")).unwrap();
        let with_git_folders = |enabled: bool| {
            let mounts = vec![StaticMount::new("/static", &site.site)];
            let backend = Backend::new("site", vec![]).with_static(mounts, None);
            routes_for(backend.with_git_folders(enabled))
        };
        let git_paths = [
            "/static/.git/config",
            "/static/%2egit/config",
            "/static/%2Egit%2Fconfig",
            "/static/.gitignore",
            // A symlink inside the mount into .git.
            "/static/repo/config",
        ];
        let refused = start_proxy(with_git_folders(false)).await;
        let allowed = start_proxy(with_git_folders(true)).await;
        for target in git_paths {
            for method in ["GET", "HEAD"] {
                let reply = send(refused.addr, request(method, target, "")).await;
                assert_eq!(reply.status, 404, "{method} {target}");
                assert!(!reply.body.contains("repositoryformatversion"), "{target}");
                assert!(!reply.body.contains("target/"), "{target}");
            }
            let reply = send(allowed.addr, request("GET", target, "")).await;
            assert_eq!(reply.status, 200, "{target}: {}", reply.head);
        }
        let reply = send(allowed.addr, get("site.example.com", "/static/.git/config")).await;
        assert!(reply.body.contains("repositoryformatversion"), "{}", reply.body);

        // Climbing and symlinks out of the mount stay refused.
        for (target, status) in [
            ("/static/.git/../../outside/secret.txt", 400),
            ("/static/%2e%2e/outside/secret.txt", 400),
            ("/static/link.txt", 404),
            ("/static/linkdir/secret.txt", 404),
        ] {
            let reply = send(allowed.addr, request("GET", target, "")).await;
            assert_eq!(reply.status, status, "{target}");
            assert!(!reply.body.contains("TOP SECRET"), "{target}: {}", reply.body);
        }
    }
}
