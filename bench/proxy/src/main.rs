//! The router alone for `bench/proxy.sh`: serves `berth_router::serve` on 127.0.0.1:0 with one
//! route to BACKEND_ADDR, prints the port it listens on, and runs until killed.
//!
//! This measures the router itself, not a whole `berth daemon` (no store, supervisor or API
//! in the process). Like the daemon it serves with a multi-threaded tokio runtime, one worker
//! thread per core. No tracing subscriber is installed, so the router logs nothing: the
//! equivalent of nginx's `access_log off`.
//!
//! `--per-core` instead runs one single-threaded runtime per core, each with its own
//! `serve` (so its own connection pool) on a listener of its own, all bound to one port with
//! SO_REUSEPORT so that the kernel spreads connections over them: nginx's worker model, to
//! measure what the runtime flavour costs.

use std::net::SocketAddr;
use std::sync::Arc;

use berth_router::{Backend, RouteTable, SharedRoutes, serve, shared_routes};
use tokio::net::TcpSocket;

fn main() -> std::io::Result<()> {
    let usage = "usage: bench-proxy [--per-core] BACKEND_ADDR [HOST]";
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let per_core = args.first().is_some_and(|arg| arg == "--per-core");
    if per_core {
        args.remove(0);
    }
    let backend: SocketAddr = args.first().expect(usage).parse().expect(usage);
    // wrk sends `Host: 127.0.0.1:PORT`, which the router normalises to this.
    let host = args.get(1).map_or("127.0.0.1", String::as_str);

    let mut table = RouteTable::new();
    table.insert(host, Arc::new(Backend::new("bench", vec![backend])));
    let routes = shared_routes();
    routes.store(Arc::new(table));

    let n_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !per_core {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n_cores)
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            let listener = listen("127.0.0.1:0".parse().unwrap(), false)?;
            println!("{}", listener.local_addr()?.port());
            serve(listener, routes, std::future::pending()).await
        });
    }

    // The first listener picks the port; the others join it.
    let first = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = first.local_addr()?;
    drop(first);
    let threads: Vec<_> = (0..n_cores)
        .map(|_| {
            let routes: SharedRoutes = Arc::clone(&routes);
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let listener = runtime.block_on(async { listen(addr, true) }).unwrap();
            std::thread::spawn(move || {
                runtime.block_on(serve(listener, routes, std::future::pending()))
            })
        })
        .collect();
    println!("{}", addr.port());
    for thread in threads {
        thread.join().expect("a runtime thread panicked")?;
    }
    Ok(())
}

fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(reuse_port)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
