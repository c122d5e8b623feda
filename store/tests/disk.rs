//! The store on a full or failing disk, for real: a store root on a small
//! tmpfs mounted by the test (the tests run as root, as CI does), filled up
//! by the store and by a filler file; and a failing `fdatasync` injected
//! with an `LD_PRELOAD` shim compiled by the test.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus::BusError;
use bus_schema::{ErrorKind, Request, Response, StrategyOnFull, StreamDefinition};
use common::*;

/// A tmpfs of `mib` MiB mounted on a temporary directory; unmounted when
/// dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: these tests need root, as CI has"
        );
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn append_request(stream: &str, payload: &[u8]) -> Request {
    Request::Append {
        stream: stream.into(),
        payload: payload.to_vec(),
    }
}

/// An append's answer: its sequence number, or the message of a refusal
/// (which must be StoreWriteError); anything else (silence included: an
/// error is an answer, silence is not) fails the test.
fn append_outcome(answer: Result<Response, BusError>) -> Result<i64, String> {
    match answer {
        Ok(Response::Appended {
            sequence_number, ..
        }) => Ok(sequence_number),
        Err(BusError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::StoreWriteError, "{e:?}");
            Err(e.message)
        }
        other => panic!("unexpected answer to an append: {other:?}"),
    }
}

/// Appends `payload` and says how it went (see [`append_outcome`]).
fn try_append(c: &bus::BusClient, stream: &str, payload: &[u8]) -> Result<i64, String> {
    append_outcome(call(c, append_request(stream, payload)))
}

/// Message `i`: 16 KiB that do not compress (fjall compresses blobs).
fn payload(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..16 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Fills the file system of `dir` with a file until it is full.
fn fill_up(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
    path
}

/// Waits up to 10 s for `store` to exit, which must be with code 3 (a
/// storage failure: restart me); `hang` is the failure message otherwise.
fn expect_exit_3(store: &mut StoreProcess, hang: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = store.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "{hang}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3), "{status:?}");
    store.child = None;
}

/// A store restarted as the supervisor would when it exits with code 3
/// (a storage failure: fjall fails a flush or compaction that meets the
/// full disk; the next open must work on the full disk).
struct Supervised {
    root: PathBuf,
    store: StoreProcess,
    client: bus::BusClient,
    restarts: u32,
}

impl Supervised {
    fn start(root: &Path) -> Supervised {
        let store = StoreProcess::start(root);
        let client = store.client();
        Supervised {
            root: root.to_path_buf(),
            store,
            client,
            restarts: 0,
        }
    }

    /// `req`'s answer; a request lost because the store stopped (exit 3)
    /// is sent again once it is back. Any other exit, or silence, fails.
    fn call(&mut self, req: Request) -> Result<Response, BusError> {
        for _ in 0..3 {
            match call(&self.client, req.clone()) {
                Err(BusError::PeerLost) | Err(BusError::Timeout(_)) => {}
                answer => return answer,
            }
            expect_exit_3(&mut self.store, "the store neither answers nor exits");
            self.store = StoreProcess::start(&self.root);
            self.client = self.store.client();
            self.restarts += 1;
        }
        panic!("the store keeps stopping");
    }

    /// Appends `payload`: the sequence number, or the refusal's message
    /// (a full disk is refused with StoreWriteError).
    fn append(&mut self, stream: &str, payload: &[u8]) -> Result<i64, String> {
        append_outcome(self.call(append_request(stream, payload)))
    }

    fn read_all(&mut self, stream: &str) -> Vec<bus_schema::Message> {
        // A restart in the middle of a read starts it again.
        let before = self.restarts;
        let all = read_all(&self.client, stream);
        assert_eq!(before, self.restarts);
        all
    }
}

#[test]
fn a_full_disk_refuses_appends_keeps_serving_reads_and_recovers_by_itself() {
    let fs = Tmpfs::mount(128);
    let root = fs.path().join("root");
    let mut sm = Supervised::start(&root);
    for name in ["s", "t"] {
        let mut d = StreamDefinition::new(name, StrategyOnFull::RejectNewData);
        d.max_size_bytes = Some(1 << 30);
        let r = sm.call(Request::CreateStream { definition: d });
        assert!(matches!(r, Ok(Response::Created)), "{r:?}");
    }
    let mut acked = 0u64;
    while acked < 100 {
        assert_eq!(sm.append("s", &payload(acked)), Ok(acked as i64));
        acked += 1;
    }

    // 1. The store fills the disk itself (stream t): appends are refused,
    // clearly, before the card is full; the store does not stop.
    let mut in_t = 0u64;
    let refusal = loop {
        match sm.append("t", &payload(in_t)) {
            Ok(_) => {
                in_t += 1;
                assert!(in_t < 10_000, "128 MiB cannot hold 160 MiB");
            }
            Err(message) => break message,
        }
    };
    assert!(
        refusal.contains("disk") && refusal.contains("full"),
        "{refusal}"
    );
    assert!(in_t > 100, "only {in_t} appends before the disk was full");
    assert!(sm.append("s", &payload(acked)).is_err());
    assert_eq!(sm.restarts, 0, "the store refused in time, it never failed");
    // A Memory stream writes nothing to the disk: it still takes appends.
    let mut m = StreamDefinition::new("m", StrategyOnFull::OverwriteOldestData);
    m.persistence = Some(bus_schema::Persistence::Memory);
    let r = sm.call(Request::CreateStream { definition: m });
    assert!(matches!(r, Ok(Response::Created)), "{r:?}");
    assert_eq!(sm.append("m", b"in memory"), Ok(0));

    // 2. Someone else fills what is left, to the last block. fjall may be
    // flushing or compacting at that moment and fail: then the store exits
    // (code 3) and reopens on the full disk. Either way every request is
    // answered and everything acknowledged reads back.
    std::thread::sleep(Duration::from_secs(1));
    let filler = fill_up(fs.path());
    // An append that still fits in the log's preallocated room is stored
    // (those blocks are the log's already) and may be acknowledged; that
    // room is less than one reservation step, and then appends are refused.
    let fit_max = store::wal::LOG_RESERVE_STEP_BYTES / payload(0).len() as u64 + 1;
    let mut fitted = 0;
    let refused = loop {
        let started = Instant::now();
        let answer = sm.append("s", &payload(acked));
        assert!(started.elapsed() < Duration::from_secs(5));
        match answer {
            Err(e) => break e,
            Ok(seq) => {
                assert_eq!(seq as u64, acked);
                acked += 1;
                fitted += 1;
                assert!(
                    fitted <= fit_max,
                    "{fitted} appends acknowledged on a full disk ({} bytes free, {} store restarts): more than the log's reserved room holds",
                    store::wal::free_bytes(fs.path()).unwrap_or(0),
                    sm.restarts
                );
            }
        }
    };
    assert!(refused.contains("full"), "{refused}");
    let all = sm.read_all("s");
    assert_eq!(all.len() as u64, acked);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64), "message {i}");
    }
    assert_eq!(sm.read_all("t").len() as u64, in_t);
    let r = sm.call(Request::DescribeStream { name: "s".into() });
    assert!(matches!(r, Ok(Response::Described(_))), "{r:?}");
    assert!(sm.restarts <= 1, "{} restarts on a full disk", sm.restarts);

    // 3. Space comes back (the filler goes, stream t is deleted): appends
    // resume by themselves within seconds.
    std::fs::remove_file(filler).unwrap();
    let r = sm.call(Request::DeleteStream { name: "t".into() });
    assert!(matches!(r, Ok(Response::Deleted)), "{r:?}");
    let freed = Instant::now();
    loop {
        match sm.append("s", &payload(acked)) {
            Ok(seq) => {
                assert_eq!(seq as u64, acked, "no sequence number was skipped");
                acked += 1;
                break;
            }
            Err(e) => {
                if freed.elapsed() >= Duration::from_secs(10) {
                    let _ = Command::new("sh")
                        .arg("-c")
                        .arg(format!(
                            "df -k {0}; ls -l /proc/{1}/fd | grep deleted | head; ls -l /proc/{1}/fd | grep -c deleted",
                            fs.path().display(),
                            sm.store.pid()
                        ))
                        .status();
                }
                assert!(
                    freed.elapsed() < Duration::from_secs(10),
                    "appends did not resume within 10 s of freeing space: {e}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    assert!(sm.store.terminate().success(), "a clean stop");

    // 4. Nothing acknowledged was lost.
    let store = StoreProcess::start(&root);
    let c = store.client();
    let all = read_all(&c, "s");
    assert_eq!(all.len() as u64, acked);
    for (i, m) in all.iter().enumerate() {
        assert_eq!(m.payload, payload(i as u64), "message {i} after restart");
    }
}

#[test]
fn deleting_a_stream_frees_its_files_within_5_s() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = StoreProcess::start(&root);
    let c = store.client();
    let mut d = StreamDefinition::new("s", StrategyOnFull::RejectNewData);
    d.max_size_bytes = Some(1 << 30);
    create(&c, d);
    let before = du(&root);
    for i in 0..1024 {
        append(&c, "s", &payload(i)).unwrap();
    }
    let grown = du(&root);
    assert!(
        grown > before + 12 * 1024 * 1024,
        "16 MiB appended: {before} -> {grown}"
    );
    let r = call(&c, Request::DeleteStream { name: "s".into() });
    assert!(matches!(r, Ok(Response::Deleted)), "{r:?}");
    let deleted = Instant::now();
    loop {
        let now = du(&root);
        if now <= before + 4 * 1024 * 1024 {
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(5),
            "5 s after the delete the store still uses {now} bytes (before the stream: {before}; with it: {grown})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Bytes the files under `dir` occupy on disk.
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let Ok(m) = e.metadata() else { continue };
        total += if m.is_dir() {
            du(&e.path())
        } else {
            m.blocks() * 512
        };
    }
    total
}

const SHIM_SOURCE: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
/* fdatasync fails with EIO while the file named by SHIM_FAIL_SYNC exists. */
int fdatasync(int fd) {
    const char *trigger = getenv("SHIM_FAIL_SYNC");
    if (trigger && access(trigger, F_OK) == 0) {
        errno = EIO;
        return -1;
    }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#;

#[test]
fn a_failing_sync_is_an_error_and_a_clean_exit_never_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("shim.c");
    let lib = dir.path().join("shim.so");
    std::fs::write(&src, SHIM_SOURCE).unwrap();
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(cc.success(), "compiling the fdatasync shim failed");
    let trigger = dir.path().join("fail-sync");
    let root = dir.path().join("root");
    let child = Command::new(env!("CARGO_BIN_EXE_store"))
        .env("STREAM_MANAGER_STORE_ROOT_DIR", &root)
        .env("LOG_LEVEL", "WARN")
        .env("LD_PRELOAD", &lib)
        .env("SHIM_FAIL_SYNC", &trigger)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn store");
    let mut store = StoreProcess {
        root: root.clone(),
        child: Some(child),
    };
    store.wait_ready();
    let c = store.client();
    let mut d = StreamDefinition::new("s", StrategyOnFull::RejectNewData);
    d.flush_on_write = Some(true);
    create(&c, d);
    for i in 0..10 {
        assert_eq!(append(&c, "s", &payload(i)).unwrap(), i as i64);
    }
    std::fs::write(&trigger, b"").unwrap();
    let failed = try_append(&c, "s", &payload(10)).unwrap_err();
    assert!(
        failed.contains("sync"),
        "the error names the cause: {failed}"
    );
    // The store stops by itself (exit 3: restart me), promptly.
    expect_exit_3(&mut store, "the store hangs after a failed sync");

    // Restarted on a healthy disk: every acknowledged append, and not the
    // refused one.
    std::fs::remove_file(&trigger).unwrap();
    let store = StoreProcess::start(&root);
    let c = store.client();
    let all = read_all(&c, "s");
    assert_eq!(all.len(), 10, "the refused append is not stored");
    assert_eq!(append(&c, "s", &payload(10)).unwrap(), 10);
}

/// Bytes in use on the file system of `path` (exact on a tmpfs: the test's
/// own, nothing else writes there).
fn used_bytes(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%b %f %S"])
        .arg(path)
        .output()
        .expect("run stat");
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    (v[0] - v[1]) * v[2]
}

/// The disk use ARCHITECTURE.md and README promise on top of the streams'
/// `maxSize` (log: active file and changes waiting for the applier; the
/// reserve; a chunk per stream; fjall's metadata), in bytes, for the 3
/// streams of the test below.
const DISK_BOUND_BYTES: u64 = (8 + 8 + 8 + 3 + 4) * 1024 * 1024;

#[test]
fn under_sustained_overwrite_disk_use_stays_within_max_size_plus_the_bound() {
    let fs = Tmpfs::mount(256);
    let root = fs.path().join("root");
    let store = StoreProcess::start(&root);
    let c = store.client();
    let max_size = 8 * 1024 * 1024;
    for name in ["a", "b", "c"] {
        let mut d = StreamDefinition::new(name, StrategyOnFull::OverwriteOldestData);
        d.max_size_bytes = Some(max_size);
        d.segment_size_bytes = Some(1024 * 1024);
        create(&c, d);
    }
    let baseline = used_bytes(fs.path());
    let mut peak = 0;
    // 120 MiB through three 8 MiB streams: each is overwritten five times.
    for i in 0..7680u64 {
        let stream = ["a", "b", "c"][(i % 3) as usize];
        append(&c, stream, &payload(i)).unwrap();
        if i % 64 == 0 {
            peak = peak.max(used_bytes(fs.path()) - baseline);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    peak = peak.max(used_bytes(fs.path()) - baseline);
    let limit = 3 * max_size as u64 + DISK_BOUND_BYTES;
    eprintln!(
        "peak disk use {} MiB (limit {} MiB)",
        peak >> 20,
        limit >> 20
    );
    assert!(
        peak <= limit,
        "the store used {} MiB for 24 MiB of maxSize (limit {} MiB)",
        peak >> 20,
        limit >> 20
    );
    let info = call(&c, Request::DescribeStream { name: "a".into() }).unwrap();
    let Response::Described(info) = info else {
        panic!("{info:?}")
    };
    assert!(info.storage.oldest_sequence_number > 0, "a was overwritten");
}
