//! Prometheus counters, rendered in the text exposition format.
//!
//! A handful of labelled counters does not need a metrics framework: a
//! mutex-guarded map from series to value is enough and keeps the
//! dependency tree lean.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Counters and histograms-as-summaries, by series name with labels.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, String), u64>>,
    gauges: Mutex<BTreeMap<(&'static str, String), f64>>,
    latencies: Mutex<BTreeMap<&'static str, Vec<f64>>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    /// Adds to a counter.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], n: u64) {
        if let Ok(mut c) = self.counters.lock() {
            *c.entry((name, labels(pairs))).or_default() += n;
        }
    }

    /// Increments a counter.
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        if let Ok(mut g) = self.gauges.lock() {
            g.insert((name, labels(pairs)), v);
        }
    }

    /// Records a latency sample in seconds (the last 4096 are kept).
    pub fn observe(&self, name: &'static str, seconds: f64) {
        if let Ok(mut l) = self.latencies.lock() {
            let v = l.entry(name).or_default();
            if v.len() >= 4096 {
                v.remove(0);
            }
            v.push(seconds);
        }
    }

    /// A counter's value (tests, status).
    pub fn get(&self, name: &'static str, pairs: &[(&str, &str)]) -> u64 {
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&(name, labels(pairs))).copied())
            .unwrap_or(0)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        if let Ok(c) = self.counters.lock() {
            for ((name, l), v) in c.iter() {
                if *name != last {
                    let _ = writeln!(out, "# TYPE {name} counter");
                    last = name;
                }
                let _ = writeln!(out, "{name}{l} {v}");
            }
        }
        if let Ok(g) = self.gauges.lock() {
            for ((name, l), v) in g.iter() {
                if *name != last {
                    let _ = writeln!(out, "# TYPE {name} gauge");
                    last = name;
                }
                let _ = writeln!(out, "{name}{l} {v}");
            }
        }
        if let Ok(l) = self.latencies.lock() {
            for (name, samples) in l.iter() {
                let mut s = samples.clone();
                s.sort_by(f64::total_cmp);
                let _ = writeln!(out, "# TYPE {name} summary");
                for q in [0.5, 0.9, 0.99] {
                    let i = ((s.len() as f64 - 1.0) * q).round() as usize;
                    let v = s.get(i).copied().unwrap_or(0.0);
                    let _ = writeln!(out, "{name}{{quantile=\"{q}\"}} {v}");
                }
                let _ = writeln!(out, "{name}_count {}", s.len());
                let _ = writeln!(out, "{name}_sum {}", s.iter().sum::<f64>());
            }
        }
        out
    }
}
