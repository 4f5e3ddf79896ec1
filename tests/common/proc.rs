//! Ending the `advguard` processes a test started.

#![allow(dead_code)]

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// SIGTERM (a graceful stop, as an operator's `systemctl stop`), then its exit status;
/// SIGKILL and a panic if it has not exited within 30 s.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the process did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
