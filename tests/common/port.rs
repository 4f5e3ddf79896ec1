//! Loopback ports for servers that a test starts, stops and starts again.
//!
//! `bind(":0")` hands out a port from the kernel's ephemeral range and frees it at once; until
//! the test binds it again, any outgoing connection on the machine (our own sinks retrying a
//! dead receiver, say) may take it as its local port, and the later bind fails with
//! `AddrInUse`. So we pick ports below the ephemeral range (32768+ on Linux), where the kernel
//! never assigns client ports, and check that each is free now.
//!
//! A port checked free can still be held for a few milliseconds afterwards: a child process
//! that another test thread forks in that instant inherits the probe socket until it execs.
//! Servers that bind right after `free_port` therefore go through `bind_with_retry`.

use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback port that is free now and outside the kernel's ephemeral range.
pub fn free_port() -> u16 {
    // Spread by process id so parallel test binaries start in different places.
    let offset = (std::process::id() % 1_000) * 12;
    for _ in 0..2_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (20_000 + (offset + n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 20000..32000")
}

/// Calls `bind` until it succeeds, for up to 5 s (see the module note on forked children).
#[allow(dead_code)]
pub fn bind_with_retry<T, E: std::fmt::Display>(mut bind: impl FnMut() -> Result<T, E>) -> T {
    let t0 = std::time::Instant::now();
    loop {
        match bind() {
            Ok(v) => return v,
            Err(e) if t0.elapsed() > std::time::Duration::from_secs(5) => {
                panic!("cannot bind a loopback test server: {e}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}
