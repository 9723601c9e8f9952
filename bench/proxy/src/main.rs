//! The router alone for `bench/proxy.sh`: serves `berth_router::serve` on 127.0.0.1:0 with one
//! route to BACKEND_ADDR, prints the port it listens on, and runs until killed.
//!
//! This measures the router itself, not a whole `berth daemon` (no store, supervisor or API
//! in the process), but runs it as the daemon does: one single-threaded runtime per core,
//! all accepting from one listening socket (`berth_router::spawn_per_core`). No tracing
//! subscriber is installed, so the router logs nothing: the equivalent of nginx's
//! `access_log off`.
//!
//! `--multi-thread` instead serves from one multi-threaded tokio runtime with a worker per
//! core, to measure what the runtime model is worth.

use std::sync::Arc;

use berth_router::{Backend, RouteTable, serve, shared_routes, spawn_per_core};

fn main() -> std::io::Result<()> {
    let usage = "usage: bench-proxy [--multi-thread] BACKEND_ADDR [HOST]";
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let multi_thread = args.first().is_some_and(|arg| arg == "--multi-thread");
    if multi_thread {
        args.remove(0);
    }
    let backend: std::net::SocketAddr = args.first().expect(usage).parse().expect(usage);
    // wrk sends `Host: 127.0.0.1:PORT`, which the router normalises to this.
    let host = args.get(1).map_or("127.0.0.1", String::as_str);

    let mut table = RouteTable::new();
    table.insert(host, Arc::new(Backend::new("bench", vec![backend])));
    let routes = shared_routes();
    routes.store(Arc::new(table));

    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let n_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if multi_thread {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n_cores)
            .enable_all()
            .build()?;
        return runtime.block_on(async {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            println!("{port}");
            serve(listener, routes, std::future::pending()).await
        });
    }
    let threads = spawn_per_core(listener, n_cores, move |listener| {
        serve(listener, Arc::clone(&routes), std::future::pending())
    })?;
    println!("{port}");
    for thread in threads {
        thread.join().expect("a runtime thread panicked")?;
    }
    Ok(())
}
