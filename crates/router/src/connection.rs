//! What the server knows about one visitor connection beyond its requests: when a
//! byte last moved either way, since when it has waited for a request head, and how many
//! requests are under way, so that a connection idle for longer than
//! [`crate::ServerLimits::idle_timeout`], or slower to send a request head than
//! [`crate::ServerLimits::header_read_timeout`], can be closed.
//!
//! Nothing in hyper (HTTPS) closes an HTTP/2 connection that just sits there, nor an
//! HTTP/1.1 one sooner than its header timeout. hyper's own header timeout is kept for
//! HTTPS; on plain HTTP, served by [`crate::h1_server`], the router enforces it from here,
//! which costs nothing per request: no timer is set per request head.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::body::{BoxError, ResponseBody};

/// Activity on one connection, shared by its I/O wrapper, its requests and its watchdog.
#[derive(Debug)]
pub(crate) struct Activity {
    started: Instant,
    /// Milliseconds after `started` that a byte last moved or a request ended.
    last_ms: AtomicU64,
    /// Milliseconds after `started` that the connection last became ready for a request
    /// head: a request ended or a byte was written (bytes read do not count: they may be a
    /// head sent one byte at a time).
    ready_ms: AtomicU64,
    busy: AtomicUsize,
}

/// Why a connection's watchdog gave up on it; see [`Activity::expiry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No request under way and no byte moved for the idle timeout.
    Idle,
    /// No request under way, and none has arrived within the header timeout of the
    /// connection becoming ready for one.
    HeadTimeout,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
            ready_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes bytes read.
    #[inline]
    pub(crate) fn touch(&self) {
        self.last_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// Notes bytes written or a request ended: the connection is ready for the next head.
    #[inline]
    pub(crate) fn touch_ready(&self) {
        let now = self.now_ms();
        self.last_ms.fetch_max(now, Ordering::Relaxed);
        self.ready_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How long ago `ms` (one of the clocks above) was.
    fn since(&self, ms: &AtomicU64) -> Duration {
        let then = Duration::from_millis(ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(then)
    }

    fn quiet_for(&self) -> Duration {
        self.since(&self.last_ms)
    }

    /// Marks a request as under way until the guard is dropped.
    pub(crate) fn busy(self: &Arc<Self>) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(Arc::clone(self))
    }

    /// Resolves once no request has been under way and no byte has moved for
    /// `idle_timeout`, or no request has been under way and none has arrived for
    /// `head_timeout` since the connection became ready for one; a limit that is `None`
    /// does not apply (with neither, this never resolves).
    ///
    /// It looks at the clocks only when a deadline it computed comes, never per request: a
    /// request under way makes it look again a whole period later, so a connection is closed
    /// at most twice the limit after its last request.
    pub(crate) async fn expiry(
        &self,
        idle_timeout: Option<Duration>,
        head_timeout: Option<Duration>,
    ) -> Expiry {
        let period = match (idle_timeout, head_timeout) {
            (Some(idle), Some(head)) => idle.min(head),
            (Some(limit), None) | (None, Some(limit)) => limit,
            (None, None) => return std::future::pending().await,
        };
        loop {
            let mut wait = period;
            if self.busy.load(Ordering::SeqCst) == 0 {
                if let Some(limit) = idle_timeout {
                    let quiet = self.quiet_for();
                    if quiet >= limit {
                        return Expiry::Idle;
                    }
                    wait = wait.min(limit - quiet);
                }
                if let Some(limit) = head_timeout {
                    let waiting = self.since(&self.ready_ms);
                    if waiting >= limit {
                        return Expiry::HeadTimeout;
                    }
                    wait = wait.min(limit - waiting);
                }
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// One request under way on a connection; see [`Activity::busy`].
#[derive(Debug)]
pub(crate) struct BusyGuard(Arc<Activity>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.touch_ready();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's stream, noting each read or write that moved bytes in its [`Activity`]
/// (writes also as the connection being ready for its next request head).
///
/// Every read and write hyper makes (HTTPS) goes through this, and the wrapper alone (without the
/// clock reads) costs about 0.4k instructions a request, by what it changes in how hyper's
/// I/O code is compiled; `#[inline]` on its methods wins back half of that.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    #[inline]
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    #[inline]
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_ready();
        }
        polled
    }

    #[inline]
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch_ready();
        }
        polled
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as under way until it is done.
pub(crate) struct ServedBody {
    body: ResponseBody,
    _busy: BusyGuard,
}

impl ServedBody {
    pub(crate) fn new(body: ResponseBody, busy: BusyGuard) -> ServedBody {
        ServedBody { body, _busy: busy }
    }
}

impl Body for ServedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::DEADLINE;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_waits_for_requests_to_end_and_bytes_to_stop() {
        let activity = Activity::new();
        let limit = Duration::from_millis(50);
        let busy = activity.busy();
        let idle = tokio::time::timeout(limit * 3, activity.expiry(Some(limit), Some(limit))).await;
        assert!(idle.is_err(), "a connection with a request under way went idle");
        drop(busy);
        let started = Instant::now();
        let expiry = tokio::time::timeout(DEADLINE, activity.expiry(Some(limit), None));
        assert_eq!(expiry.await.unwrap(), Expiry::Idle);
        assert!(started.elapsed() >= limit, "idle before the limit: {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn bytes_read_do_not_hold_off_the_head_timeout_but_bytes_written_do() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut watched = Watched::new(server, Arc::clone(&activity));
        let head_timeout = Duration::from_millis(300);
        let expiry = activity.expiry(Some(DEADLINE), Some(head_timeout));
        let mut expiry = std::pin::pin!(expiry);

        // A head dripping in keeps the connection from going idle, not from timing out.
        let started = Instant::now();
        let drip = async {
            let mut byte = [0u8; 1];
            loop {
                client.write_all(b"G").await.unwrap();
                watched.read_exact(&mut byte).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let expired = tokio::select! {
            expired = expiry.as_mut() => expired,
            () = drip => unreachable!(),
        };
        assert_eq!(expired, Expiry::HeadTimeout);
        assert!(started.elapsed() >= head_timeout, "after {:?}", started.elapsed());

        // A response being written (here, one byte at a time) is no wait for a head.
        let activity = Activity::new();
        let mut watched = Watched::new(tokio::io::sink(), Arc::clone(&activity));
        let writing = async {
            loop {
                watched.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let expiry = activity.expiry(None, Some(head_timeout));
        let early = tokio::time::timeout(head_timeout * 2, async {
            tokio::select! {
                expired = expiry => expired,
                () = writing => unreachable!(),
            }
        });
        assert!(early.await.is_err(), "the head timeout ran while bytes were written");
    }

    #[tokio::test]
    async fn reads_and_writes_count_as_activity() {
        let (mut client, server) = tokio::io::duplex(64);
        let activity = Activity::new();
        let mut watched = Watched::new(server, Arc::clone(&activity));
        let quiet = Duration::from_millis(20);
        let become_quiet = || async {
            while activity.quiet_for() < quiet {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };

        tokio::time::timeout(DEADLINE, become_quiet()).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut byte = [0u8; 1];
        watched.read_exact(&mut byte).await.unwrap();
        assert!(activity.quiet_for() < quiet, "a read did not count");

        tokio::time::timeout(DEADLINE, become_quiet()).await.unwrap();
        watched.write_all(b"y").await.unwrap();
        assert!(activity.quiet_for() < quiet, "a write did not count");
    }
}
