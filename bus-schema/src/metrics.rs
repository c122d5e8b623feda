//! Metrics as the processes exchange them (`Request::ReportMetrics`,
//! `Response::Metrics`) and their rendering in the Prometheus text
//! exposition format (version 0.0.4), which the supervisor serves. Pure data
//! and text: no I/O.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What a family's samples mean (Prometheus metric types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One sample: `<family name><suffix>{labels} value`. The suffix is empty
/// except for a histogram's `_bucket`, `_sum` and `_count`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    #[serde(default)]
    pub suffix: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A metric family: its name (counters end in `_total`), help text, type and
/// samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricFamily {
    pub name: String,
    pub help: String,
    pub kind: MetricKind,
    pub samples: Vec<MetricSample>,
}

impl MetricFamily {
    pub fn new(name: &str, help: &str, kind: MetricKind) -> Self {
        Self {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds a sample with these labels.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.samples.push(MetricSample {
            suffix: String::new(),
            labels: owned(labels),
            value,
        });
        self
    }

    /// Adds a histogram's samples with these labels.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: &Histogram) -> &mut Self {
        let mut cumulative = 0u64;
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i];
            let mut l = owned(labels);
            l.push(("le".into(), format_value(*bound)));
            self.samples.push(MetricSample {
                suffix: "_bucket".into(),
                labels: l,
                value: cumulative as f64,
            });
        }
        let mut l = owned(labels);
        l.push(("le".into(), "+Inf".into()));
        self.samples.push(MetricSample {
            suffix: "_bucket".into(),
            labels: l,
            value: h.count as f64,
        });
        self.samples.push(MetricSample {
            suffix: "_sum".into(),
            labels: owned(labels),
            value: h.sum,
        });
        self.samples.push(MetricSample {
            suffix: "_count".into(),
            labels: owned(labels),
            value: h.count as f64,
        });
        self
    }
}

fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A latency histogram with fixed bucket bounds (seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); `counts[i]` ≤ `bounds[i]`.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

/// Bucket bounds for request and commit latencies, seconds: 100 µs to 10 s.
pub const LATENCY_BOUNDS_SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Self::new(&LATENCY_BOUNDS_SECONDS)
    }
}

impl Histogram {
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.sum += seconds;
        self.count += 1;
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v == v.trunc() && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Renders families in the Prometheus text format. Families of the same
/// name (reported by several processes) are merged under one `HELP` and
/// `TYPE`; a series (name, suffix and labels) that appears twice keeps its
/// first value, so the output never repeats a series.
pub fn render(families: &[MetricFamily]) -> String {
    let mut merged: BTreeMap<&str, (&MetricFamily, Vec<&MetricSample>)> = BTreeMap::new();
    for f in families {
        let entry = merged.entry(&f.name).or_insert((f, Vec::new()));
        entry.1.extend(f.samples.iter());
    }
    let mut out = String::new();
    for (name, (first, samples)) in merged {
        let kind = match first.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&first.help));
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let mut seen = std::collections::HashSet::new();
        for s in samples {
            let mut labels = String::new();
            for (i, (k, v)) in s.labels.iter().enumerate() {
                if i > 0 {
                    labels.push(',');
                }
                let _ = write!(labels, "{k}=\"{}\"", escape_label(v));
            }
            let series = if labels.is_empty() {
                format!("{name}{}", s.suffix)
            } else {
                format!("{name}{}{{{labels}}}", s.suffix)
            };
            if seen.insert(series.clone()) {
                let _ = writeln!(out, "{series} {}", format_value(s.value));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_merge_and_render() {
        let mut a = MetricFamily::new("sm_x_total", "Things.", MetricKind::Counter);
        a.sample(&[("stream", "a\"b")], 3.0);
        let mut b = MetricFamily::new("sm_x_total", "Things.", MetricKind::Counter);
        b.sample(&[("stream", "c")], 4.5);
        b.sample(&[("stream", "c")], 9.0);
        let text = render(&[a, b]);
        assert_eq!(
            text,
            "# HELP sm_x_total Things.\n# TYPE sm_x_total counter\n\
             sm_x_total{stream=\"a\\\"b\"} 3\nsm_x_total{stream=\"c\"} 4.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::new(&[0.001, 0.01]);
        h.observe(0.0005);
        h.observe(0.005);
        h.observe(5.0);
        let mut f = MetricFamily::new("sm_t_seconds", "T.", MetricKind::Histogram);
        f.histogram(&[("op", "append")], &h);
        let text = render(&[f]);
        assert!(text.contains("sm_t_seconds_bucket{op=\"append\",le=\"0.001\"} 1\n"));
        assert!(text.contains("sm_t_seconds_bucket{op=\"append\",le=\"0.01\"} 2\n"));
        assert!(text.contains("sm_t_seconds_bucket{op=\"append\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("sm_t_seconds_count{op=\"append\"} 3\n"));
    }
}
