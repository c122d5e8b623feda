//! `peer-bench run`: stream-manager side by side with NATS JetStream and
//! Redis (issue 13), driven by the same load generator. `bash scripts/bench`
//! builds, installs the servers and runs it; by hand:
//!
//! ```text
//! peer-bench run [--rounds N] [--seconds S] [--smoke] [--only sm,nats,redis]
//!     [--bin-dir DIR] [--nats PATH] [--nats-fsync PATH] [--redis PATH]
//!     [--tmp DIR] [--md FILE] [--svg FILE]
//! ```
//!
//! Each round runs every system with its default durability, then with an
//! fsync per write (sm, nats, redis, sm, nats, redis), each on a fresh server
//! and a fresh directory under `--tmp`; the default legs also read
//! everything back. `--smoke` runs stream-manager only, with tiny counts and
//! about a second per leg (the test `tests/tests/peer_bench.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use stream_manager_tests::peer_bench::nats::Nats;
use stream_manager_tests::peer_bench::redis::Redis;
use stream_manager_tests::peer_bench::report::{self, Leg, SYSTEMS};
use stream_manager_tests::peer_bench::sm::Sm;
use stream_manager_tests::peer_bench::{run_leg, Workload};

const USAGE: &str = "usage: peer-bench run [--rounds N] [--seconds S] [--smoke] [--only sm,nats,redis] [--bin-dir DIR] [--nats PATH] [--nats-fsync PATH] [--redis PATH] [--tmp DIR] [--md FILE] [--svg FILE]";

struct Args {
    rounds: usize,
    workload: Workload,
    systems: Vec<usize>,
    bin_dir: PathBuf,
    nats: PathBuf,
    nats_fsync: PathBuf,
    redis: PathBuf,
    tmp: PathBuf,
    md: Option<PathBuf>,
    svg: Option<PathBuf>,
}

fn parse() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let first = it.next();
    if matches!(first.as_deref(), Some("--help" | "-h" | "help")) {
        println!("{USAGE}");
        std::process::exit(0);
    }
    if first.as_deref() != Some("run") {
        bail!("{USAGE}");
    }
    let mut rounds = 3;
    let mut seconds = 20.0;
    let mut smoke = false;
    let mut only: Option<String> = None;
    let mut bin_dir = None;
    let mut nats = PathBuf::from("nats-server");
    let mut nats_fsync = None;
    let mut redis = PathBuf::from("redis-server");
    let mut tmp = None;
    let (mut md, mut svg) = (None, None);
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--rounds" => rounds = val()?.parse()?,
            "--seconds" => seconds = val()?.parse()?,
            "--smoke" => smoke = true,
            "--only" => only = Some(val()?),
            "--bin-dir" => bin_dir = Some(PathBuf::from(val()?)),
            "--nats" => nats = PathBuf::from(val()?),
            "--nats-fsync" => nats_fsync = Some(PathBuf::from(val()?)),
            "--redis" => redis = PathBuf::from(val()?),
            "--tmp" => tmp = Some(PathBuf::from(val()?)),
            "--md" => md = Some(PathBuf::from(val()?)),
            "--svg" => svg = Some(PathBuf::from(val()?)),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}\n{USAGE}"),
        }
    }
    let only = only.unwrap_or_else(|| if smoke { "sm" } else { "sm,nats,redis" }.into());
    let mut systems = Vec::new();
    for s in only.split(',') {
        systems.push(match s {
            "sm" => 0,
            "nats" => 1,
            "redis" => 2,
            _ => bail!("--only takes sm, nats, redis; not {s}"),
        });
    }
    systems.sort();
    systems.dedup();
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .to_path_buf(),
    };
    Ok(Args {
        rounds: if smoke { 1 } else { rounds },
        workload: if smoke {
            Workload::smoke()
        } else {
            Workload::full(seconds)
        },
        systems,
        bin_dir,
        nats_fsync: nats_fsync.unwrap_or_else(|| nats.clone()),
        nats,
        redis,
        tmp: tmp.unwrap_or_else(std::env::temp_dir),
        md,
        svg,
    })
}

/// The first line `program --version` prints.
fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| format!("{} (version unknown)", program.display()))
}

async fn leg(a: &Args, dir: &Path, system: usize, fsync: bool) -> Result<Leg> {
    let w = &a.workload;
    let read_back = !fsync;
    let result = match system {
        0 => {
            let sm = Sm::start(&a.bin_dir, dir, w, fsync).await?;
            let r = run_leg(&sm, w, sm.pids.clone(), read_back).await;
            sm.stop();
            r?
        }
        1 => {
            let server = if fsync { &a.nats_fsync } else { &a.nats };
            let n = Nats::start(server, dir, w, fsync).await?;
            let pids = vec![("nats-server".to_string(), n.proc.0.id())];
            run_leg(&n, w, pids, read_back).await?
        }
        _ => {
            let r = Redis::start(&a.redis, dir, w, fsync).await?;
            let pids = vec![("redis-server".to_string(), r.proc.0.id())];
            run_leg(&r, w, pids, read_back).await?
        }
    };
    Ok(Leg {
        system,
        fsync,
        result,
    })
}

async fn bench(a: &Args, base: &Path) -> Result<Vec<Leg>> {
    let mut legs = Vec::new();
    for round in 0..a.rounds {
        for fsync in [false, true] {
            for &s in &a.systems {
                let dir = base.join(format!(
                    "r{round}-{}-{}",
                    ["sm", "nats", "redis"][s],
                    if fsync { "fsync" } else { "default" }
                ));
                let leg = leg(a, &dir, s, fsync)
                    .await
                    .with_context(|| format!("{} (logs in {})", SYSTEMS[s], dir.display()))?;
                let r = &leg.result;
                eprintln!(
                    "round {}/{}: {} {}: {:.0} appends/s, p50 {:.2} ms, p99 {:.2} ms{}",
                    round + 1,
                    a.rounds,
                    SYSTEMS[s],
                    if fsync { "fsync per write" } else { "default" },
                    r.appends_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.reads_per_s
                        .map(|v| format!(", catch-up reads {v:.0}/s"))
                        .unwrap_or_default()
                );
                legs.push(leg);
                // The next leg must not pay for this one's writeback.
                let _ = std::fs::remove_dir_all(&dir);
                // SAFETY: sync(2) has no preconditions.
                unsafe { libc::sync() };
            }
        }
    }
    Ok(legs)
}

fn main() -> std::process::ExitCode {
    // An error is one message, never a backtrace (RUST_BACKTRACE may be set).
    let (result, code) = match parse() {
        Ok(a) => (run(a), 1),
        Err(e) => (Err(e), 2),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer-bench: {e:#}");
            std::process::ExitCode::from(code)
        }
    }
}

fn run(a: Args) -> Result<()> {
    let base = a.tmp.join(format!("peer-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A failed leg's directory stays: the error names it for its logs.
    let legs = rt.block_on(bench(&a, &base))?;
    let _ = std::fs::remove_dir_all(&base);
    let mut header = String::from("Versions: stream-manager (this build)");
    if a.systems.contains(&1) {
        header += &format!(", default legs {}", version(&a.nats));
        if a.nats_fsync != a.nats {
            header += &format!(", fsync legs {}", version(&a.nats_fsync));
        }
    }
    if a.systems.contains(&2) {
        header += &format!(", {}", version(&a.redis));
    }
    header += &format!(
        "; {} CPU cores, everything on 127.0.0.1, data on a temporary directory.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let table = report::markdown(&legs, &a.workload, a.rounds, &header);
    println!("{table}");
    if let Some(md) = &a.md {
        std::fs::write(md, &table)?;
    }
    if let Some(svg) = &a.svg {
        std::fs::write(svg, report::svg(&legs))?;
    }
    Ok(())
}
