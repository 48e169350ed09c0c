//! Benchmarks, not tests: each binary measures something on the sandbox several times and
//! writes what it saw to `bench/results/<bench>.json` and `bench/results/<bench>.md`
//! (`make bench`). Figures are medians with min and max: the machines are shared and noisy,
//! so a single run says little and a ratio of medians says more than any absolute time.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The samples of one figure.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Figure {
    /// What was measured, e.g. `seed from snapshot, scale 50`.
    pub name: String,
    /// `s`, `MiB`, …
    pub unit: String,
    pub samples: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Figure {
    pub fn new(name: impl Into<String>, unit: impl Into<String>, samples: Vec<f64>) -> Figure {
        let (median, min, max) = summary(&samples);
        Figure {
            name: name.into(),
            unit: unit.into(),
            samples,
            median,
            min,
            max,
        }
    }
}

/// A ratio of two figures' medians (`numerator / denominator`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Ratio {
    pub name: String,
    pub numerator: String,
    pub denominator: String,
    pub value: f64,
}

/// A curve for the bench's plot (`bench/results/<bench>.png`, drawn by
/// `tests/bench/plot.py`): points `(x, y)`, dashed for a bound or a model rather than a
/// measurement. A report without series is plotted as its figures' medians with min–max bars.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub x_label: String,
    pub y_label: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

/// What one benchmark run writes.
#[derive(Serialize, Clone, Debug)]
pub struct Report {
    pub bench: String,
    /// RFC 3339, UTC.
    pub finished: String,
    /// Where it ran (CPUs, kernel), so numbers from different machines are not compared
    /// blindly.
    pub machine: String,
    /// How to run it again.
    pub rerun: String,
    pub notes: Vec<String>,
    pub figures: Vec<Figure>,
    pub ratios: Vec<Ratio>,
    /// Curves for the plot; empty: the figures are plotted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub series: Vec<Series>,
}

/// Median, min and max (NaN for no samples). The median of an even count is the mean of
/// the two middle samples.
pub fn summary(samples: &[f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

impl Report {
    pub fn new(bench: &str, rerun: &str) -> Report {
        Report {
            bench: bench.into(),
            finished: String::new(),
            machine: machine(),
            rerun: rerun.into(),
            notes: Vec::new(),
            figures: Vec::new(),
            ratios: Vec::new(),
            series: Vec::new(),
        }
    }

    /// Adds the ratio of two figures' medians, by name. Panics if either is missing (a
    /// benchmark names its own figures).
    pub fn ratio(&mut self, name: &str, numerator: &str, denominator: &str) -> f64 {
        let median = |n: &str| {
            self.figures
                .iter()
                .find(|f| f.name == n)
                .unwrap_or_else(|| panic!("no figure {n:?}"))
                .median
        };
        let value = median(numerator) / median(denominator);
        self.ratios.push(Ratio {
            name: name.into(),
            numerator: numerator.into(),
            denominator: denominator.into(),
            value,
        });
        value
    }

    /// The markdown table of the figures and the ratios.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# {}\n\nFinished {} on {}.\nRerun: `{}`\n\n| figure | median | min | max | runs |\n|---|---:|---:|---:|---:|\n",
            self.bench, self.finished, self.machine, self.rerun
        );
        for f in &self.figures {
            out.push_str(&format!(
                "| {} | {:.2} {u} | {:.2} {u} | {:.2} {u} | {} |\n",
                f.name,
                f.median,
                f.min,
                f.max,
                f.samples.len(),
                u = f.unit
            ));
        }
        if !self.ratios.is_empty() {
            out.push_str("\n| ratio | of medians | value |\n|---|---|---:|\n");
            for r in &self.ratios {
                out.push_str(&format!(
                    "| {} | {} / {} | {:.2} |\n",
                    r.name, r.numerator, r.denominator, r.value
                ));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("\n- {n}"));
        }
        if !self.notes.is_empty() {
            out.push('\n');
        }
        out
    }

    /// Writes `<dir>/<bench>.json` and `<dir>/<bench>.md`; returns their paths.
    pub fn write(&mut self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.finished = now_rfc3339();
        std::fs::create_dir_all(dir)?;
        let dir = &dir.canonicalize()?;
        let json = dir.join(format!("{}.json", self.bench));
        let md = dir.join(format!("{}.md", self.bench));
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")?;
        std::fs::write(&md, self.markdown())?;
        Ok((json, md))
    }
}

/// Where results go: `$PGML_BENCH_OUT`, else `bench/results` of the workspace.
pub fn results_dir() -> PathBuf {
    std::env::var_os("PGML_BENCH_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../bench/results")
                .components()
                .collect()
        })
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs, Linux {}", kernel.trim())
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(summary(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(summary(&[4.0, 1.0, 3.0, 2.0]), (2.5, 1.0, 4.0));
        assert!(summary(&[]).0.is_nan());
    }

    #[test]
    fn ratio_of_medians_and_table() {
        let mut r = Report::new("seed", "make bench");
        r.figures
            .push(Figure::new("a", "s", vec![10.0, 30.0, 20.0]));
        r.figures.push(Figure::new("b", "s", vec![4.0, 5.0, 6.0]));
        assert_eq!(r.ratio("a over b", "a", "b"), 4.0);
        let md = r.markdown();
        assert!(
            md.contains("| a | 20.00 s | 10.00 s | 30.00 s | 3 |"),
            "{md}"
        );
        assert!(md.contains("| a over b | a / b | 4.00 |"), "{md}");
    }
}
