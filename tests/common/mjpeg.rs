//! A real MJPEG-over-HTTP camera on 127.0.0.1 (tiny_http, multipart/x-mixed-replace),
//! streaming JPEG frames at 25 fps until `cut()` ends every open stream.

#![allow(dead_code)]

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An MJPEG HTTP server at http://127.0.0.1:PORT/video.mjpg.
pub struct MjpegServer {
    server: Arc<tiny_http::Server>,
    /// Streams opened before this generation end at their next frame.
    generation: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MjpegServer {
    /// Starts on a free port with `frames` distinct 320×240 JPEG frames, looped.
    pub fn start(frames: usize) -> MjpegServer {
        let jpegs: Arc<Vec<Vec<u8>>> = Arc::new((0..frames.max(1)).map(jpeg).collect());
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
        let generation = Arc::new(AtomicU64::new(0));
        let thread = {
            let server = server.clone();
            let generation = generation.clone();
            std::thread::spawn(move || {
                for req in server.incoming_requests() {
                    let body = Stream {
                        jpegs: jpegs.clone(),
                        next: 0,
                        buf: Vec::new(),
                        pos: 0,
                        due: Instant::now(),
                        generation: generation.clone(),
                        born: generation.load(Ordering::SeqCst),
                    };
                    let header = tiny_http::Header::from_bytes(
                        "Content-Type",
                        "multipart/x-mixed-replace; boundary=frame",
                    )
                    .unwrap();
                    let resp = tiny_http::Response::new(200.into(), vec![header], body, None, None);
                    std::thread::spawn(move || {
                        let _ = req.respond(resp);
                    });
                }
            })
        };
        MjpegServer {
            server,
            generation,
            thread: Some(thread),
        }
    }

    /// http://127.0.0.1:PORT/video.mjpg
    pub fn url(&self) -> String {
        let port = self
            .server
            .server_addr()
            .to_ip()
            .expect("ip listener")
            .port();
        format!("http://127.0.0.1:{port}/video.mjpg")
    }

    /// Ends every open stream (the client sees the response end); new requests still work.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for MjpegServer {
    fn drop(&mut self) {
        self.cut();
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A distinct test picture per index: a moving gradient.
fn jpeg(i: usize) -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([
            ((x as usize + 8 * i) % 256) as u8,
            (y % 256) as u8,
            ((x + y) as usize / 2 % 256) as u8,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// The endless multipart body, paced at 25 fps.
struct Stream {
    jpegs: Arc<Vec<Vec<u8>>>,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    due: Instant,
    generation: Arc<AtomicU64>,
    born: u64,
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.generation.load(Ordering::SeqCst) != self.born {
                return Ok(0);
            }
            let now = Instant::now();
            if self.due > now {
                std::thread::sleep(self.due - now);
            }
            self.due += Duration::from_millis(40);
            let j = &self.jpegs[self.next % self.jpegs.len()];
            self.next += 1;
            self.buf.clear();
            self.buf.extend_from_slice(
                format!(
                    "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                    j.len()
                )
                .as_bytes(),
            );
            self.buf.extend_from_slice(j);
            self.buf.extend_from_slice(b"\r\n");
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
