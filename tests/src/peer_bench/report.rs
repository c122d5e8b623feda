//! The benchmark's table (markdown, medians of the rounds, goals of issue
//! 13 with pass/fail, memory and CPU of every process) and its chart (a
//! hand-written SVG).

use std::fmt::Write as _;

use super::{LegResult, Workload};

pub const SYSTEMS: [&str; 3] = ["stream-manager", "NATS JetStream", "Redis"];

/// One leg: which system, which durability, what it did.
pub struct Leg {
    /// Index into [`SYSTEMS`].
    pub system: usize,
    pub fsync: bool,
    pub result: LegResult,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The median of `f` over the legs of `system` with `fsync`.
fn med(
    legs: &[Leg],
    system: usize,
    fsync: bool,
    f: impl Fn(&LegResult) -> Option<f64>,
) -> Option<f64> {
    median(
        legs.iter()
            .filter(|l| l.system == system && l.fsync == fsync)
            .filter_map(|l| f(&l.result))
            .collect(),
    )
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if decimals == 0 => thousands(v),
        Some(v) => format!("{v:.decimals$}"),
        None => "—".into(),
    }
}

fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A figure of a leg, when it has it.
type Get = fn(&LegResult) -> Option<f64>;

/// The figures of the table: label, fsync legs?, decimals, value.
type Figure = (&'static str, bool, usize, Get);

/// A goal: what, the measured value, its unit, whether it passes.
/// One MB (the issue's memory goals are in MB) in MiB (what is measured).
const MB_IN_MIB: f64 = 1e6 / (1024.0 * 1024.0);

type Goal = (&'static str, Option<f64>, &'static str, fn(f64) -> bool);

const FIGURES: [Figure; 7] = [
    ("appends/s, default durability", false, 0, |r| {
        Some(r.appends_per_s)
    }),
    ("append p50 ms, default durability", false, 2, |r| {
        Some(r.p50_ms)
    }),
    ("append p99 ms, default durability", false, 2, |r| {
        Some(r.p99_ms)
    }),
    ("catch-up reads, messages/s", false, 0, |r| r.reads_per_s),
    ("appends/s, fsync per write", true, 0, |r| {
        Some(r.appends_per_s)
    }),
    ("append p50 ms, fsync per write", true, 2, |r| {
        Some(r.p50_ms)
    }),
    ("append p99 ms, fsync per write", true, 2, |r| {
        Some(r.p99_ms)
    }),
];

/// The whole report in markdown; `header` goes first (versions, command).
pub fn markdown(legs: &[Leg], w: &Workload, rounds: usize, header: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{header}");
    let _ = writeln!(
        o,
        "Workload: {} B payloads, {} TCP connections x {} requests in flight, {} streams (round robin), {:.1} s measured after {:.1} s of warm-up; catch-up reads of {} messages per request, one request per stream in flight; median of {rounds} round(s), systems alternating within each round.\n",
        w.payload,
        w.connections,
        w.in_flight,
        w.streams,
        w.measure.as_secs_f64(),
        w.warmup.as_secs_f64(),
        w.read_batch
    );
    let _ = writeln!(
        o,
        "Default durability: stream-manager without flushOnWrite (acknowledged once in its write-ahead log, synced ~50 ms later), JetStream with its default sync_interval (2 min), Redis appendfsync everysec. Fsync per write: flushOnWrite, JetStream sync_interval always, Redis appendfsync always.\n"
    );
    let _ = writeln!(
        o,
        "| figure | stream-manager | NATS JetStream | Redis | stream-manager / JetStream | stream-manager / Redis |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for (label, fsync, dec, f) in FIGURES {
        let v: Vec<Option<f64>> = (0..3).map(|s| med(legs, s, fsync, f)).collect();
        let _ = writeln!(
            o,
            "| {label} | {} | {} | {} | {} | {} |",
            fmt(v[0], dec),
            fmt(v[1], dec),
            fmt(v[2], dec),
            fmt(ratio(v[0], v[1]), 2),
            fmt(ratio(v[0], v[2]), 2)
        );
    }

    // Goals.
    let rate = |s, fsync| med(legs, s, fsync, |r| Some(r.appends_per_s));
    let p99 = |s| med(legs, s, false, |r| Some(r.p99_ms));
    let reads = |s| med(legs, s, false, |r| r.reads_per_s);
    let sm_legs: Vec<&LegResult> = legs
        .iter()
        .filter(|l| l.system == 0)
        .map(|l| &l.result)
        .collect();
    let mib = |k: u64| k as f64 / 1024.0;
    let store_peak = sm_legs
        .iter()
        .flat_map(|r| r.procs.iter().filter(|p| p.name == "store"))
        .map(|p| mib(p.peak_rss_kib))
        .reduce(f64::max);
    let system_peak = sm_legs
        .iter()
        .map(|r| {
            mib(r
                .procs
                .iter()
                .filter(|p| p.name != "load generator")
                .map(|p| p.peak_rss_kib)
                .sum())
        })
        .reduce(f64::max);
    let system_pss = sm_legs
        .iter()
        .map(|r| mib(r.peak_pss_total_kib))
        .reduce(f64::max);
    let check = |v: Option<f64>, ok: fn(f64) -> bool| match v {
        Some(v) if ok(v) => "pass",
        Some(_) => "FAIL",
        None => "not measured",
    };
    let goals: [Goal; 7] = [
        (
            "sustained appends >= 1.0 x JetStream (default sync)",
            ratio(rate(0, false), rate(1, false)),
            " x",
            |v| v >= 1.0,
        ),
        (
            "flushOnWrite appends >= 1.0 x Redis appendfsync always",
            ratio(rate(0, true), rate(2, true)),
            " x",
            |v| v >= 1.0,
        ),
        (
            "append p99 <= JetStream's (default sync)",
            ratio(p99(0), p99(1)),
            " x",
            |v| v <= 1.0,
        ),
        (
            "catch-up reads >= 1.5 x JetStream",
            ratio(reads(0), reads(1)),
            " x",
            |v| v >= 1.5,
        ),
        (
            "store RSS <= 64 MB (61.04 MiB) during the run (peak, all legs)",
            store_peak,
            " MiB",
            |v| v <= MB_IN_MIB * 64.0,
        ),
        (
            "whole system (all stream-manager processes, sum of peaks) <= 100 MB (95.37 MiB)",
            system_peak,
            " MiB",
            |v| v <= MB_IN_MIB * 100.0,
        ),
        (
            "whole system, peak of the summed PSS (each shared page once) <= 100 MB (95.37 MiB)",
            system_pss,
            " MiB",
            |v| v <= MB_IN_MIB * 100.0,
        ),
    ];
    let _ = writeln!(o, "\n| goal (issue 13) | measured | result |");
    let _ = writeln!(o, "|---|---:|---|");
    for (goal, v, unit, ok) in goals {
        let shown = v
            .map(|v| format!("{v:.2}{unit}"))
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(o, "| {goal} | {shown} | {} |", check(v, ok));
    }

    // Processes.
    let _ = writeln!(
        o,
        "\nMemory and CPU of every process (peak RSS: the highest of the rounds, from /proc VmRSS samples every 200 ms and VmHWM; mean RSS, cores used and CPU µs per append over the measured append window; CPU µs per message read over the catch-up reads; medians of the rounds):\n"
    );
    let _ = writeln!(
        o,
        "| durability | system | process | peak RSS MiB | mean RSS MiB | cores used | CPU µs per append | CPU µs per message read |"
    );
    let _ = writeln!(o, "|---|---|---|---:|---:|---:|---:|---:|");
    for fsync in [false, true] {
        for (s, sys) in SYSTEMS.iter().enumerate() {
            let mine: Vec<&LegResult> = legs
                .iter()
                .filter(|l| l.system == s && l.fsync == fsync)
                .map(|l| &l.result)
                .collect();
            let Some(first) = mine.first() else { continue };
            for p in &first.procs {
                let of = |f: &dyn Fn(&super::ProcFigures) -> Option<f64>| {
                    median(
                        mine.iter()
                            .flat_map(|r| r.procs.iter().filter(|q| q.name == p.name))
                            .filter_map(f)
                            .collect(),
                    )
                };
                let peak = mine
                    .iter()
                    .flat_map(|r| r.procs.iter().filter(|q| q.name == p.name))
                    .map(|q| mib(q.peak_rss_kib))
                    .reduce(f64::max);
                let _ = writeln!(
                    o,
                    "| {} | {sys} | {} | {} | {} | {} | {} | {} |",
                    if fsync { "fsync per write" } else { "default" },
                    p.name,
                    fmt(peak, 1),
                    fmt(of(&|q| Some(mib(q.mean_rss_kib))), 1),
                    fmt(of(&|q| Some(q.cores)), 2),
                    fmt(of(&|q| Some(q.us_per_append)), 1),
                    fmt(of(&|q| q.us_per_read), 2),
                );
            }
        }
    }
    o
}

/// A grouped bar chart of the main figures, each group scaled to its
/// largest bar.
pub fn svg(legs: &[Leg]) -> String {
    const COLORS: [&str; 3] = ["#2b6cb0", "#38a169", "#c53030"];
    let groups: [(&str, bool, Get, usize); 4] = [
        ("appends/s (default)", false, |r| Some(r.appends_per_s), 0),
        (
            "appends/s (fsync per write)",
            true,
            |r| Some(r.appends_per_s),
            0,
        ),
        ("catch-up reads/s", false, |r| r.reads_per_s, 0),
        (
            "append p99 ms (default; lower is better)",
            false,
            |r| Some(r.p99_ms),
            2,
        ),
    ];
    let (width, height, top, base) = (960.0, 420.0, 60.0, 340.0);
    let group_w = width / groups.len() as f64;
    let bar_w = 50.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="16">stream-manager vs NATS JetStream vs Redis (medians; each group scaled to its largest bar)</text>"#,
        width / 2.0
    );
    for (i, name) in SYSTEMS.iter().enumerate() {
        let x = 200.0 + i as f64 * 200.0;
        let _ = writeln!(
            o,
            r#"<rect x="{x}" y="36" width="12" height="12" fill="{}"/><text x="{}" y="46">{name}</text>"#,
            COLORS[i],
            x + 16.0
        );
    }
    for (g, (label, fsync, f, dec)) in groups.iter().enumerate() {
        let v: Vec<Option<f64>> = (0..3).map(|s| med(legs, s, *fsync, f)).collect();
        let max = v.iter().flatten().cloned().fold(0.0, f64::max);
        let x0 = g as f64 * group_w + (group_w - 3.0 * bar_w - 2.0 * 8.0) / 2.0;
        for (s, val) in v.iter().enumerate() {
            let x = x0 + s as f64 * (bar_w + 8.0);
            let Some(val) = val else { continue };
            let h = if max > 0.0 {
                val / max * (base - top - 20.0)
            } else {
                0.0
            };
            let _ = writeln!(
                o,
                r#"<rect x="{x:.1}" y="{:.1}" width="{bar_w}" height="{h:.1}" fill="{}"/>"#,
                base - h,
                COLORS[s]
            );
            let _ = writeln!(
                o,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"#,
                x + bar_w / 2.0,
                base - h - 4.0,
                fmt(Some(*val), *dec)
            );
        }
        let _ = writeln!(
            o,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            g as f64 * group_w + group_w / 2.0,
            base + 22.0
        );
    }
    let _ = writeln!(
        o,
        r#"<line x1="0" y1="{base}" x2="{width}" y2="{base}" stroke="black"/>"#
    );
    let _ = writeln!(o, "</svg>");
    o
}
