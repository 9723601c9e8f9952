//! Listening sockets, and how the runtimes of [`spawn_per_core`] share one.
//!
//! When several threads accept from one socket, the kernel wakes them all for each new
//! connection and the first awake takes it, and usually the ones after it too: a burst of
//! 64 connections could land 40 on one thread and 24 on the other, and the busier one then
//! answers each of its requests later. nginx avoids this with `EPOLLEXCLUSIVE`, which
//! tokio cannot ask for. Instead each runtime here counts its open connections, and one
//! that holds more than the least busy runtime lets that one accept; see
//! [`Turn::may_accept`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// How long a runtime leaves accepting to a less busy one before it accepts anyway: a
/// runtime stuck in a long poll must not stop the others from taking connections. After a
/// quiet spell a busier runtime is thus back among the acceptors; the counts are kept level
/// within a burst, which is when an uneven spread costs.
const YIELD_AT_MOST: Duration = Duration::from_millis(50);

/// A listening socket for [`crate::serve`] and the others: a tokio listener (`.into()`), or
/// one runtime's share of a socket that [`spawn_per_core`] spreads over several.
pub struct Listener {
    pub(crate) socket: TcpListener,
    pub(crate) turn: Option<Turn>,
}

impl From<TcpListener> for Listener {
    fn from(socket: TcpListener) -> Listener {
        Listener { socket, turn: None }
    }
}

impl Listener {
    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts one connection, when it is this runtime's turn (see [`Turn::may_accept`]).
    pub(crate) async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        if let Some(turn) = &self.turn {
            turn.wait().await;
        }
        let accepted = self.socket.accept().await;
        if let (Ok(_), Some(turn)) = (&accepted, &self.turn) {
            turn.opened();
        }
        accepted
    }

    /// Notes that a connection [`Listener::accept`] returned has closed.
    pub(crate) fn closed(&self) {
        if let Some(turn) = &self.turn {
            turn.closed();
        }
    }
}

/// The open connections of every runtime that accepts from one socket.
struct Runtimes {
    open: Box<[AtomicUsize]>,
    /// Told when a runtime's count rises, which may make it another's turn.
    accepted: Notify,
}

/// One runtime's place among those sharing a socket.
pub(crate) struct Turn {
    runtimes: Arc<Runtimes>,
    me: usize,
}

/// What a runtime that has stopped accepting counts as: never the least busy.
const GONE: usize = usize::MAX;

impl Turn {
    /// Whether this runtime should accept now: when it holds no more open connections than
    /// the least busy runtime (a tie lets both accept, and whichever is first takes it).
    fn may_accept(&self) -> bool {
        let open = &self.runtimes.open;
        let mine = open[self.me].load(Ordering::Relaxed);
        may_accept(mine, open.iter().map(|count| count.load(Ordering::Relaxed)))
    }

    /// Returns when this runtime may accept: at once, when another runtime's accept makes
    /// it its turn, or after [`YIELD_AT_MOST`].
    async fn wait(&self) {
        let accepted = self.runtimes.accepted.notified();
        let mut accepted = std::pin::pin!(accepted);
        loop {
            // Registered before the counts are read, so that no accept in between is missed.
            accepted.as_mut().enable();
            if self.may_accept() {
                return;
            }
            if tokio::time::timeout(YIELD_AT_MOST, accepted.as_mut()).await.is_err() {
                return;
            }
            accepted.set(self.runtimes.accepted.notified());
        }
    }

    fn opened(&self) {
        self.runtimes.open[self.me].fetch_add(1, Ordering::Relaxed);
        self.runtimes.accepted.notify_waiters();
    }

    fn closed(&self) {
        self.runtimes.open[self.me].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Turn {
    /// A runtime that stopped accepting (its server ended) leaves the others to it.
    fn drop(&mut self) {
        self.runtimes.open[self.me].store(GONE, Ordering::Relaxed);
        self.runtimes.accepted.notify_waiters();
    }
}

/// The rule of [`Turn::may_accept`], given this runtime's count and everyone's.
fn may_accept(mine: usize, all: impl Iterator<Item = usize>) -> bool {
    all.min().is_none_or(|least| mine <= least)
}

/// Runs `serve` on `threads` single-threaded runtimes, one a thread, each accepting from the
/// same listening socket: nginx's worker model, with the connections spread evenly (see the
/// module's documentation). Each runtime has its own connection pool and none of them waits
/// on another's locks, which carries about twice the requests of one multi-threaded runtime
/// on a small machine (`bench/proxy.sh`). The route table, in-flight counters and caches are
/// shared as they are with one runtime. Returns the threads, which end when their `serve`
/// does.
///
/// With one runtime for each CPU the process may use, each runtime is kept on a CPU of its
/// own (see [`cpu_for`]).
pub fn spawn_per_core<F, Fut>(
    listener: std::net::TcpListener,
    threads: usize,
    serve: F,
) -> io::Result<Vec<std::thread::JoinHandle<io::Result<()>>>>
where
    F: Fn(Listener) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<()>>,
{
    listener.set_nonblocking(true)?;
    let threads = threads.max(1);
    let serve = Arc::new(serve);
    let cpus = allowed_cpus();
    let runtimes = Arc::new(Runtimes {
        open: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
        accepted: Notify::new(),
    });
    (0..threads)
        .map(|me| {
            let listener = listener.try_clone()?;
            let serve = serve.clone();
            // One runtime alone needs no turns.
            let turn = (threads > 1).then(|| Turn { runtimes: Arc::clone(&runtimes), me });
            let cpu = cpu_for(me, threads, &cpus);
            let mut runtime = tokio::runtime::Builder::new_current_thread();
            runtime.enable_all();
            if cpu.is_some() {
                // The threads of its blocking pool (password hashes, file lookups) start from
                // the pinned thread and would inherit its one CPU: they get them all back.
                let cpus = cpus.clone();
                runtime.on_thread_start(move || {
                    let _ = pin_to(&cpus);
                });
            }
            let runtime = runtime.build()?;
            std::thread::Builder::new().name(format!("berth-router-{me}")).spawn(move || {
                if let Some(cpu) = cpu
                    && let Err(error) = pin_to(&[cpu])
                {
                    tracing::debug!(cpu, "router runtime {me} left unpinned: {error}");
                }
                runtime.block_on(async move {
                    let socket = TcpListener::from_std(listener)?;
                    serve(Listener { socket, turn }).await
                })
            })
        })
        .collect()
}

/// The CPU runtime `me` of `threads` is kept on, given the CPUs the process may use: the
/// `me`-th of them when there is a runtime for each, none otherwise (fewer runtimes than
/// CPUs, as under a CPU quota, are left to the scheduler).
///
/// Left to itself the kernel now and then runs two busy runtimes on one CPU for a few
/// milliseconds while the other CPU runs the apps or the clients, and every connection of
/// the runtime that waits is late by that much. Kept apart, they halve the router's p99 at
/// 64 connections in `bench/proxy.sh`; nginx's `worker_cpu_affinity auto` does the same.
/// The kernel still moves the other processes around them.
fn cpu_for(me: usize, threads: usize, cpus: &[usize]) -> Option<usize> {
    (threads > 1 && threads == cpus.len()).then(|| cpus[me])
}

/// The CPUs this process may run on (all of them, or those `taskset` or a cpuset allows),
/// in order; none when the kernel does not say.
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    use nix::unistd::Pid;

    let Ok(set) = sched_getaffinity(Pid::from_raw(0)) else {
        return Vec::new();
    };
    (0..CpuSet::count()).filter(|&cpu| set.is_set(cpu).unwrap_or(false)).collect()
}

/// Keeps the calling thread on `cpus`.
fn pin_to(cpus: &[usize]) -> nix::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;

    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu)?;
    }
    // Pid 0 is the calling thread, not the whole process.
    sched_setaffinity(Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_busy_runtimes_accept() {
        // (mine, everyone's including mine, may accept)
        let table: &[(usize, &[usize], bool)] = &[
            (0, &[0, 0], true),
            (3, &[3, 3], true),
            (4, &[4, 3], false),
            (3, &[4, 3], true),
            (5, &[5, 1, 9], false),
            (1, &[5, 1, 9], true),
            // A runtime that stopped accepting is never the least busy.
            (7, &[7, GONE], true),
            (GONE, &[GONE, GONE], true),
        ];
        for &(mine, all, expected) in table {
            assert_eq!(may_accept(mine, all.iter().copied()), expected, "{mine} of {all:?}");
        }
    }

    #[test]
    fn a_runtime_for_each_cpu_gets_one_of_its_own() {
        let four = [0, 1, 2, 3];
        let pinned: Vec<_> = (0..4).map(|me| cpu_for(me, 4, &four)).collect();
        assert_eq!(pinned, [Some(0), Some(1), Some(2), Some(3)]);
        // Under `taskset -c 2,5`.
        assert_eq!(cpu_for(0, 2, &[2, 5]), Some(2));
        assert_eq!(cpu_for(1, 2, &[2, 5]), Some(5));
        // Fewer runtimes than CPUs (a CPU quota), more, one alone, and CPUs unknown.
        assert_eq!(cpu_for(0, 2, &four), None);
        assert_eq!(cpu_for(5, 8, &four), None);
        assert_eq!(cpu_for(0, 1, &[3]), None);
        assert_eq!(cpu_for(0, 2, &[]), None);
    }

    /// The CPUs each of `threads` runtimes' threads may run on, as they see it, and those
    /// a thread of its blocking pool may.
    fn affinities(threads: usize) -> Vec<(Vec<usize>, Vec<usize>)> {
        use std::sync::Mutex;

        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let seen = Arc::new(Mutex::new(vec![(Vec::new(), Vec::new()); threads]));
        let handles = {
            let seen = Arc::clone(&seen);
            spawn_per_core(socket, threads, move |listener| {
                let seen = Arc::clone(&seen);
                async move {
                    let me = listener.turn.as_ref().map_or(0, |turn| turn.me);
                    let blocking = tokio::task::spawn_blocking(allowed_cpus).await.unwrap();
                    seen.lock().unwrap()[me] = (allowed_cpus(), blocking);
                    Ok(())
                }
            })
            .unwrap()
        };
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    }

    #[test]
    fn runtimes_run_on_cpus_of_their_own_and_their_blocking_work_anywhere() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty(), "the kernel told no CPU this process may use");
        if cpus.len() > 1 {
            let one_each: Vec<_> = cpus.iter().map(|&cpu| (vec![cpu], cpus.clone())).collect();
            assert_eq!(affinities(cpus.len()), one_each);
        }
        // A runtime alone is left to the scheduler, on any CPU.
        assert_eq!(affinities(1), [(cpus.clone(), cpus)]);
    }

    /// Two runtimes sharing a socket, connected to 40 times at once, end up holding about
    /// 20 connections each, however the kernel woke them. (Exactly 20 unless one was kept
    /// from running for longer than [`YIELD_AT_MOST`], which a busy test machine can do.)
    #[test]
    fn a_burst_of_connections_is_spread_evenly() {
        use std::sync::Mutex;

        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let held: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(vec![0, 0]));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let threads = {
            let held = Arc::clone(&held);
            spawn_per_core(socket, 2, move |listener| {
                let (held, mut stopped) = (Arc::clone(&held), stopped.clone());
                async move {
                    let me = listener.turn.as_ref().unwrap().me;
                    let mut streams = Vec::new();
                    loop {
                        tokio::select! {
                            accepted = listener.accept() => {
                                streams.push(accepted?.0);
                                held.lock().unwrap()[me] += 1;
                            }
                            _ = stopped.wait_for(|stop| *stop) => return Ok(()),
                        }
                    }
                }
            })
            .unwrap()
        };
        let clients: Vec<_> =
            (0..40).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while held.lock().unwrap().iter().sum::<usize>() < 40 {
            assert!(std::time::Instant::now() < deadline, "accepted {:?}", held.lock().unwrap());
            std::thread::sleep(Duration::from_millis(5));
        }
        let held = held.lock().unwrap().clone();
        assert!(held[0].abs_diff(held[1]) <= 4, "connections per runtime: {held:?}");
        stop.send_replace(true);
        drop(clients);
        for thread in threads {
            thread.join().unwrap().unwrap();
        }
    }
}
