//! A slow link for the tests: a TCP proxy on 127.0.0.1 that carries bytes
//! to an upstream port at a fixed rate in each direction (all connections
//! share it, as they would share a cellular uplink), counting what it
//! carried. It can also stall: accept and hold connections but move
//! nothing, as a link that dropped without closing does.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes moved per read/write step.
const STEP_BYTES: usize = 2048;
/// The proxy's receive buffer per connection, bytes (the kernel doubles it).
const RECEIVE_BUFFER_BYTES: libc::c_int = 32 * 1024;

/// Paces one direction: bytes leave no faster than `rate` per second, with
/// at most `STEP_BYTES` of burst.
struct Pacer {
    rate: u64,
    /// When the link is free again.
    free_at: Mutex<Instant>,
    carried: AtomicU64,
}

impl Pacer {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            free_at: Mutex::new(Instant::now()),
            carried: AtomicU64::new(0),
        }
    }

    /// Waits until `n` bytes may go.
    fn take(&self, n: usize) {
        let wait_until = {
            let mut free = self.free_at.lock().unwrap();
            let start = (*free).max(Instant::now());
            *free = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
            start
        };
        let now = Instant::now();
        if wait_until > now {
            std::thread::sleep(wait_until - now);
        }
        self.carried.fetch_add(n as u64, Ordering::Relaxed);
    }
}

pub struct SlowLink {
    pub port: u16,
    up: Arc<Pacer>,
    down: Arc<Pacer>,
    stalled: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl SlowLink {
    /// A link to 127.0.0.1:`upstream` carrying `bytes_per_s` each way.
    pub fn start(upstream: u16, bytes_per_s: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A small receive buffer, as a real bottleneck has: what the link
        // has not carried waits in the sender's send queue, not here.
        let small: libc::c_int = RECEIVE_BUFFER_BYTES;
        // SAFETY: setsockopt on our own listening socket with an int value;
        // accepted connections inherit it.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let link = SlowLink {
            port,
            up: Arc::new(Pacer::new(bytes_per_s)),
            down: Arc::new(Pacer::new(bytes_per_s)),
            stalled: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (up, down, stalled, stop) = (
            link.up.clone(),
            link.down.clone(),
            link.stalled.clone(),
            link.stop.clone(),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                for (from, to, pacer) in [
                    (&client, &server, up.clone()),
                    (&server, &client, down.clone()),
                ] {
                    let (from, to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    let (stalled, stop) = (stalled.clone(), stop.clone());
                    std::thread::spawn(move || pump(from, to, &pacer, &stalled, &stop));
                }
            }
        });
        link
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bytes carried from the clients to the upstream so far.
    pub fn bytes_up(&self) -> u64 {
        self.up.carried.load(Ordering::Relaxed)
    }

    /// Stops (`true`) or resumes moving bytes; connections stay open.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    pacer: &Pacer,
    stalled: &AtomicBool,
    stop: &AtomicBool,
) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; STEP_BYTES];
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                pacer.take(n);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
