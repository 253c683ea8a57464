//! The bench's output: one table per section (title, how it was measured, rows with
//! units in the headers, notes) on stdout, and the same figures as JSON.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};

/// One section of the report.
#[derive(Debug, Default)]
pub struct Section {
    pub key: &'static str,
    pub title: String,
    /// How it was measured, one line each.
    pub method: Vec<String>,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub notes: Vec<String>,
    pub json: Value,
}

impl Section {
    pub fn new(key: &'static str, title: &str, header: &[&str]) -> Self {
        Self {
            key,
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            json: Value::Null,
            ..Self::default()
        }
    }

    pub fn method(&mut self, line: impl Into<String>) {
        self.method.push(line.into());
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, line: impl Into<String>) {
        self.notes.push(line.into());
    }
}

#[derive(Debug)]
pub struct Report {
    quick: bool,
    kernel: String,
    cpu: String,
    cpus: usize,
    pub sections: Vec<Section>,
    elapsed: Duration,
}

impl Report {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            kernel: String::new(),
            cpu: String::new(),
            cpus: 0,
            sections: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Reads the kernel release and the CPU model.
    pub fn machine(&mut self) {
        self.kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        self.cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned());
        self.cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
    }

    pub fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
    }

    pub fn print(&self) {
        println!(
            "netfence bench{} — kernel {}, CPU {} × {}, {:.1} s",
            if self.quick {
                " --quick (small sizes; figures are not comparable with a full run)"
            } else {
                ""
            },
            self.kernel,
            self.cpu,
            self.cpus,
            self.elapsed.as_secs_f64()
        );
        for section in &self.sections {
            println!("\n== {} ==", section.title);
            for line in &section.method {
                println!("   {line}");
            }
            print_table(&section.header, &section.rows);
            for line in &section.notes {
                println!("   * {line}");
            }
        }
    }

    pub fn json(&self) -> Value {
        let sections: serde_json::Map<String, Value> = self
            .sections
            .iter()
            .map(|s| {
                (
                    s.key.to_owned(),
                    json!({
                        "title": s.title,
                        "method": s.method,
                        "header": s.header,
                        "rows": s.rows,
                        "notes": s.notes,
                        "data": s.json,
                    }),
                )
            })
            .collect();
        json!({
            "quick": self.quick,
            "kernel": self.kernel,
            "cpu": self.cpu,
            "cpus": self.cpus,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "sections": sections,
        })
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let text = serde_json::to_string_pretty(&self.json())?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
        Ok(())
    }
}

fn print_table(header: &[String], rows: &[Vec<String>]) {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        format!("   {}", text.join("  "))
    };
    println!("{}", line(header));
    println!(
        "   {}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("  ")
    );
    for row in rows {
        println!("{}", line(row));
    }
}

/// Formatting helpers with fixed precision.
pub fn f1(x: f64) -> String {
    format!("{x:.1}")
}

pub fn f2(x: f64) -> String {
    format!("{x:.2}")
}

pub fn int(x: usize) -> String {
    let s = x.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The q-quantile (0..=1) of unsorted samples, nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A field of `/proc/PROCESS/status` in kB (`process`: a pid, or `self`); 0 when it
/// cannot be read.
pub fn status_kib(process: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|l| {
            l.trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}
