//! `cargo xtask bench`: runs every benchmark of the workspace (`<crate>/benches/*.rs`, each a
//! `harness = false` binary that measures Skog beside its reference in the same run), collects
//! the `BENCH {json}` lines they print, and reports them as one markdown table and a JSON file
//! under `bench-results/`.

use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{cargo, workspace_root};

const CRATES: &[(&str, &str)] = &[
    ("agent", "skog-agent"),
    ("bgp", "skog-bgp"),
    ("policy", "skog-policy"),
];

pub fn run(quick: bool) -> Result<()> {
    skog_testbed::require_root().context("the benchmarks run in network namespaces")?;
    let mut results: Vec<Value> = Vec::new();
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
        for name in names {
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
                match line.strip_prefix("BENCH ") {
                    Some(json) => results.push(
                        serde_json::from_str(json)
                            .with_context(|| format!("bad BENCH line: {line}"))?,
                    ),
                    None => println!("    {line}"),
                }
            }
            if !out.status.success() {
                bail!("benchmark {package}/{name} failed ({})", out.status);
            }
        }
    }
    if found == 0 {
        bail!(
            "no benchmarks found under {:?}",
            CRATES.iter().map(|c| c.0).collect::<Vec<_>>()
        );
    }
    println!("\n{}", table(&results));
    let dir = workspace_root().join("bench-results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("latest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results)?)?;
    println!("written to {}", path.display());
    Ok(())
}

fn number(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_f64)
        .map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "-".into())
}

/// One row per figure: Skog's median and p99, the reference's median, the ratio and the target.
fn table(results: &[Value]) -> String {
    let mut s = String::from(
        "| benchmark | unit | skog median | skog p99 | reference | reference median | ratio | target |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        let ratio = match (
            r.get("skog_median").and_then(Value::as_f64),
            r.get("reference_median").and_then(Value::as_f64),
        ) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            text("name"),
            text("unit"),
            number(r, "skog_median"),
            number(r, "skog_p99"),
            text("reference"),
            number(r, "reference_median"),
            ratio,
            text("target"),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_ratio_against_the_reference() {
        let r: Value = serde_json::from_str(
            r#"{"name":"program 10k routes","unit":"ms","skog_median":50.0,"skog_p99":60.0,
                "reference":"ip -batch","reference_median":100.0,"target":"<= 1.0x"}"#,
        )
        .unwrap();
        let t = table(&[r]);
        assert!(
            t.contains(
                "| program 10k routes | ms | 50.00 | 60.00 | ip -batch | 100.00 | 0.50x | <= 1.0x |"
            ),
            "{t}"
        );
    }
}
