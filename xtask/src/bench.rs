//! `cargo xtask bench`: runs every benchmark of the workspace (`<crate>/benches/*.rs`, each a
//! `harness = false` binary that measures Skog beside its reference in the same run), collects
//! the lines they print, and reports them under `bench-results/`:
//! - `BENCH {json}`: one figure (a table row: name, unit, Skog's median and p99, the
//!   reference's median, target); printed as one markdown table with the ratio to the
//!   reference and whether a checkable target is met;
//! - `BENCH_SERIES {json}`: one chart (name, title, x_label, unit, file, series of labelled
//!   `[x, y]` points), drawn with the other charts of the same `file` into `<file>.svg`.
//!
//! Everything collected is written to `latest.json` (`{"figures": [..], "series": [..]}`).

use std::collections::BTreeMap;
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::svg::{self, Chart, Series};
use crate::{cargo, workspace_root};

const CRATES: &[(&str, &str)] = &[
    ("agent", "skog-agent"),
    ("bgp", "skog-bgp"),
    ("policy", "skog-policy"),
];

/// What the benchmarks printed.
#[derive(Debug, Default)]
struct Collected {
    figures: Vec<Value>,
    series: Vec<Value>,
}

impl Collected {
    /// Takes a `BENCH` or `BENCH_SERIES` line; returns `false` for any other line.
    fn take(&mut self, line: &str) -> Result<bool> {
        let (list, json) = if let Some(json) = line.strip_prefix("BENCH ") {
            (&mut self.figures, json)
        } else if let Some(json) = line.strip_prefix("BENCH_SERIES ") {
            (&mut self.series, json)
        } else {
            return Ok(false);
        };
        list.push(serde_json::from_str(json).with_context(|| format!("bad line: {line}"))?);
        Ok(true)
    }
}

pub fn run(quick: bool, only: Option<&str>) -> Result<()> {
    skog_testbed::require_root().context("the benchmarks run in network namespaces")?;
    let mut collected = Collected::default();
    let mut found = 0;
    for (dir, package) in CRATES {
        let benches = workspace_root().join(dir).join("benches");
        let Ok(entries) = std::fs::read_dir(&benches) else {
            continue;
        };
        // Each `benches/<name>.rs` is a bench target; folders hold their shared code.
        let mut names: Vec<String> = entries
            .filter_map(|e| {
                let path = e.ok()?.path();
                let is_bench = path.extension().is_some_and(|x| x == "rs");
                is_bench.then(|| path.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        names.sort();
        let selected = |name: &str| {
            only.is_none_or(|o| {
                o == name || o == format!("{package}/{name}") || o == format!("{dir}/{name}")
            })
        };
        for name in names.into_iter().filter(|n| selected(n)) {
            found += 1;
            println!("==> {package} / {name}");
            let mut cmd = cargo();
            cmd.args(["bench", "-q", "-p", package, "--bench", &name, "--"]);
            if quick {
                cmd.arg("--quick");
            }
            let out = cmd
                .stderr(Stdio::inherit())
                .output()
                .context("cannot run cargo bench")?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            for line in stdout.lines() {
                if !collected.take(line)? {
                    println!("    {line}");
                }
            }
            if !out.status.success() {
                bail!("benchmark {package}/{name} failed ({})", out.status);
            }
        }
    }
    if found == 0 {
        bail!(
            "no benchmarks{} found under {:?}",
            only.map(|o| format!(" named {o}")).unwrap_or_default(),
            CRATES.iter().map(|c| c.0).collect::<Vec<_>>()
        );
    }
    for figure in &mut collected.figures {
        let met = target_met(figure);
        if let Some(obj) = figure.as_object_mut() {
            obj.insert("target_met".into(), met.map_or(Value::Null, Value::Bool));
        }
    }
    println!("\n{}", table(&collected.figures));
    let dir = workspace_root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    for (file, charts) in charts_by_file(&collected.series)? {
        let path = dir.join(format!("{file}.svg"));
        std::fs::write(&path, svg::render(&charts))?;
        println!("graph written to {}", path.display());
    }
    let path = dir.join("latest.json");
    let json = serde_json::json!({"figures": collected.figures, "series": collected.series});
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("written to {}", path.display());
    Ok(())
}

/// The charts of the `BENCH_SERIES` lines, grouped by their `file` (default `series`).
fn charts_by_file(series: &[Value]) -> Result<BTreeMap<String, Vec<Chart>>> {
    let mut files: BTreeMap<String, Vec<Chart>> = BTreeMap::new();
    for v in series {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let name = text("name").unwrap_or_default();
        let lines = v
            .get("series")
            .and_then(Value::as_array)
            .with_context(|| format!("series {name:?} has no \"series\" array"))?;
        let series = lines
            .iter()
            .map(|l| {
                let points = l
                    .get("points")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .collect();
                Series {
                    label: l.get("label").and_then(Value::as_str).unwrap_or("-").into(),
                    points,
                }
            })
            .collect();
        let chart = Chart {
            title: text("title").unwrap_or_else(|| name.clone()),
            x_label: text("x_label").unwrap_or_default(),
            unit: text("unit").unwrap_or_default(),
            series,
        };
        files
            .entry(text("file").unwrap_or_else(|| "series".into()))
            .or_default()
            .push(chart);
    }
    Ok(files)
}

/// A figure with three significant digits or so: 0.013, 4.20, 51.2, 3304.
fn significant(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        a if a >= 1.0 => format!("{x:.2}"),
        a if a >= 0.01 || a == 0.0 => format!("{x:.3}"),
        a if a >= 0.001 => format!("{x:.4}"),
        _ => format!("{x:.1e}"),
    }
}

fn number(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or("-".into(), significant)
}

/// Skog's median over the reference's.
fn ratio(r: &Value) -> Option<f64> {
    match (
        r.get("skog_median").and_then(Value::as_f64),
        r.get("reference_median").and_then(Value::as_f64),
    ) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// How many of `unit` make one base unit of its kind (ms for time, MiB for memory).
fn unit_scale(unit: &str) -> Option<(&'static str, f64)> {
    Some(match unit {
        "us" | "µs" => ("time", 0.001),
        "ms" => ("time", 1.0),
        "s" => ("time", 1000.0),
        "KiB" => ("memory", 1.0 / 1024.0),
        "MiB" => ("memory", 1.0),
        "GiB" => ("memory", 1024.0),
        _ => return None,
    })
}

/// Whether a figure meets its target, when the target can be checked by machine:
/// `[median|p99] (<=|≤|<) <number> <unit>` (Skog's median, or its p99, against a bound in any
/// unit of the same kind as the figure's) or `(<=|≤|<) <number>x ...` (the ratio of Skog's
/// median to the reference's). `None` for anything else.
fn target_met(r: &Value) -> Option<bool> {
    let target = r.get("target")?.as_str()?;
    let mut words = target.split_whitespace().peekable();
    let stat = match words.peek() {
        Some(&"p99") => "skog_p99",
        Some(&"median") => "skog_median",
        _ => "",
    };
    if !stat.is_empty() {
        words.next();
    }
    let strict = match words.next()? {
        "<=" | "≤" => false,
        "<" => true,
        _ => return None,
    };
    let word = words.next()?;
    let split = word
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(word.len());
    let limit: f64 = word[..split].parse().ok()?;
    let suffix = &word[split..];
    let value = if suffix == "x" || suffix == "×" {
        if !stat.is_empty() && stat != "skog_median" {
            return None;
        }
        ratio(r)?
    } else {
        let unit = if suffix.is_empty() {
            words.next()?
        } else {
            suffix
        };
        let (kind, scale) = unit_scale(unit)?;
        let (row_kind, row_scale) = unit_scale(r.get("unit")?.as_str()?)?;
        if kind != row_kind {
            return None;
        }
        let stat = if stat.is_empty() { "skog_median" } else { stat };
        r.get(stat)?.as_f64()? * row_scale / scale
    };
    Some(if strict {
        value < limit
    } else {
        value <= limit
    })
}

/// One row per figure: Skog's median and p99, the reference's median, the ratio, the target
/// and whether it is met (`-` when the target cannot be checked by machine).
fn table(results: &[Value]) -> String {
    let mut s = String::from(
        "| benchmark | unit | skog median | skog p99 | reference | reference median | ratio | target | met |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let met = match target_met(r) {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {met} |\n",
            text("name"),
            text("unit"),
            number(r, "skog_median"),
            number(r, "skog_p99"),
            text("reference"),
            number(r, "reference_median"),
            ratio(r).map_or("-".into(), |x| format!("{}x", significant(x))),
            text("target"),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(json: &str) -> Value {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn table_shows_ratio_against_the_reference_and_the_verdict() {
        let r = figure(
            r#"{"name":"program 10k routes","unit":"ms","skog_median":50.0,"skog_p99":60.0,
                "reference":"ip -batch","reference_median":100.0,"target":"<= 1.0x"}"#,
        );
        let t = table(&[r]);
        assert!(
            t.contains(
                "| program 10k routes | ms | 50.0 | 60.0 | ip -batch | 100 | 0.500x | <= 1.0x | yes |"
            ),
            "{t}"
        );
    }

    #[test]
    fn figures_keep_about_three_significant_digits() {
        let shown: Vec<String> = [3304.07, 51.547, 4.2, 0.0131, 0.0, 0.00178, 0.00042]
            .into_iter()
            .map(significant)
            .collect();
        assert_eq!(
            shown,
            ["3304", "51.5", "4.20", "0.013", "0.000", "0.0018", "4.2e-4"]
        );
    }

    #[test]
    fn targets_are_checked_in_the_figures_unit() {
        let row = |median: f64, p99: f64, unit: &str, target: &str| {
            figure(&format!(
                r#"{{"unit":"{unit}","skog_median":{median},"skog_p99":{p99},
                    "reference_median":2.0,"target":"{target}"}}"#
            ))
        };
        let cases = [
            (row(5.0, 25.0, "ms", "p99 <= 20 ms"), Some(false)),
            (row(5.0, 15.0, "ms", "p99 ≤ 20 ms"), Some(true)),
            (row(400.0, 900.0, "ms", "<= 0.5 s"), Some(true)),
            (row(600.0, 600.0, "ms", "<= 500 ms"), Some(false)),
            (row(3000.0, 3000.0, "ms", "< 3000 ms"), Some(false)),
            (row(4.0, 9.0, "ms", "median <= 5 ms"), Some(true)),
            (row(2.0, 2.0, "ms", "<= 1.0x ip -batch"), Some(true)),
            (row(2.2, 2.2, "ms", "≤ 1.0× BIRD"), Some(false)),
            (row(5.0, 5.0, "MiB", "<= 3x BIRD"), Some(true)),
            (row(5.0, 5.0, "MiB", "<= 20 ms"), None),
            (row(5.0, 5.0, "ms", "-"), None),
            (row(5.0, 5.0, "ms", "as fast as possible"), None),
        ];
        for (r, want) in cases {
            assert_eq!(target_met(&r), want, "{r}");
        }
    }

    #[test]
    fn series_lines_become_charts_grouped_by_file() {
        let mut c = Collected::default();
        assert!(!c.take("skog-bgp: 10 endpoints").unwrap());
        assert!(c.take(r#"BENCH {"name":"a","unit":"ms"}"#).unwrap());
        for what in ["announce", "withdraw"] {
            let line = format!(
                r#"BENCH_SERIES {{"name":"{what} convergence","title":"T {what}","x_label":"endpoints","unit":"ms","file":"convergence","series":[{{"label":"skog-bgp","points":[[1,0.05],[10000,51.2]]}}]}}"#
            );
            assert!(c.take(&line).unwrap());
        }
        assert!(c.take("BENCH_SERIES {not json").is_err());
        let files = charts_by_file(&c.series).unwrap();
        let charts = &files["convergence"];
        assert_eq!(charts.len(), 2);
        assert_eq!(charts[1].title, "T withdraw");
        assert_eq!(
            charts[0].series[0].points,
            vec![(1.0, 0.05), (10000.0, 51.2)]
        );
        assert_eq!(c.figures.len(), 1);
    }
}
