//! Hand-written SVG line charts for the benchmark series: one panel per chart, side by side,
//! both axes logarithmic with a tick and a grid line per decade, a legend, a title and units.
//! A pure function of its input (same series, same bytes), so it is tested against a golden
//! file.

use std::fmt::Write as _;

/// One line of a chart: its legend label and its (x, y) points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, what x counts, the unit of y, and its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub unit: String,
    pub series: Vec<Series>,
}

const PANEL_WIDTH: f64 = 560.0;
const PANEL_HEIGHT: f64 = 400.0;
/// Plot area inside a panel: margins left (y labels), right, top (title, legend), bottom.
const LEFT: f64 = 78.0;
const RIGHT: f64 = 32.0;
const TOP: f64 = 84.0;
const BOTTOM: f64 = 56.0;
const COLOURS: &[&str] = &["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// The charts as one SVG document, panels left to right.
pub fn render(charts: &[Chart]) -> String {
    let width = PANEL_WIDTH * charts.len().max(1) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{PANEL_HEIGHT:.0}" viewBox="0 0 {width:.0} {PANEL_HEIGHT:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{width:.0}" height="{PANEL_HEIGHT:.0}" fill="white"/>"#
    );
    for (i, chart) in charts.iter().enumerate() {
        panel(&mut s, chart, PANEL_WIDTH * i as f64);
    }
    s.push_str("</svg>\n");
    s
}

/// A logarithmic axis spanning whole decades, `10^lo ..= 10^hi`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decades {
    lo: i32,
    hi: i32,
}

impl Decades {
    /// The decades covering every positive value (1..10 when there is none).
    fn covering(values: impl Iterator<Item = f64>) -> Decades {
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && *v > 0.0) {
            min = min.min(v);
            max = max.max(v);
        }
        if !min.is_finite() {
            return Decades { lo: 0, hi: 1 };
        }
        let lo = min.log10().floor() as i32;
        let hi = (max.log10().ceil() as i32).max(lo + 1);
        Decades { lo, hi }
    }

    /// Where `v` falls, 0.0 at `10^lo` and 1.0 at `10^hi` (clamped; non-positive at 0.0).
    fn fraction(&self, v: f64) -> f64 {
        if v <= 0.0 || !v.is_finite() {
            return 0.0;
        }
        ((v.log10() - f64::from(self.lo)) / f64::from(self.hi - self.lo)).clamp(0.0, 1.0)
    }
}

/// `10^e` as people write it: 0.001, 1, 1,000, 10,000.
fn decade_label(e: i32) -> String {
    if e < 0 {
        format!("{:.*}", e.unsigned_abs() as usize, 10f64.powi(e))
    } else {
        let digits = format!("1{}", "0".repeat(e as usize));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    }
}

/// Text safe inside an XML element or attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn panel(s: &mut String, chart: &Chart, x0: f64) {
    let points = || chart.series.iter().flat_map(|l| l.points.iter());
    let xs = Decades::covering(points().map(|p| p.0));
    let ys = Decades::covering(points().map(|p| p.1));
    let (left, right) = (x0 + LEFT, x0 + PANEL_WIDTH - RIGHT);
    let (top, bottom) = (TOP, PANEL_HEIGHT - BOTTOM);
    let px = |v: f64| left + xs.fraction(v) * (right - left);
    let py = |v: f64| bottom - ys.fraction(v) * (bottom - top);

    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        x0 + PANEL_WIDTH / 2.0,
        escape(&chart.title)
    );
    // Grid and ticks, one per decade.
    for e in xs.lo..=xs.hi {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top:.1}" x2="{x:.1}" y2="{bottom:.1}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            bottom + 16.0,
            decade_label(e)
        );
    }
    for e in ys.lo..=ys.hi {
        let y = py(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#dddddd"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 6.0,
            y + 4.0,
            decade_label(e)
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="black"/>"#,
        right - left,
        bottom - top
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{} (log scale)</text>"#,
        (left + right) / 2.0,
        PANEL_HEIGHT - 14.0,
        escape(&chart.x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" transform="rotate(-90 {:.1} {:.1})">time ({}, log scale)</text>"#,
        x0 + 18.0,
        (top + bottom) / 2.0,
        x0 + 18.0,
        (top + bottom) / 2.0,
        escape(&chart.unit)
    );
    // Lines with a marker per point, then the legend above the plot.
    for (i, line) in chart.series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let coords: Vec<(f64, f64)> = line
            .points
            .iter()
            .filter(|p| p.0 > 0.0)
            .map(|&(x, y)| (px(x), py(y)))
            .collect();
        let path: Vec<String> = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (x, y) in &coords {
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{colour}"/>"#
            );
        }
        let ly = 44.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"/>"#,
            left,
            left + 24.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            left + 30.0,
            ly + 4.0,
            escape(&line.label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Chart> {
        let line = |label: &str, f: fn(f64) -> f64| Series {
            label: label.into(),
            points: [1.0, 10.0, 100.0, 1_000.0, 10_000.0]
                .into_iter()
                .map(|n| (n, f(n)))
                .collect(),
        };
        ["announce", "withdraw"]
            .into_iter()
            .map(|what| Chart {
                title: format!("Endpoint routes {what}"),
                x_label: "endpoints".into(),
                unit: "ms".into(),
                series: vec![
                    line("skog-bgp", |n| 0.02 + n * 0.005),
                    line("BIRD kernel path (Calico) & <friends>", |n| 0.03 + n * 0.35),
                ],
            })
            .collect()
    }

    /// Every opened tag is closed, in order; returns the names of the elements seen.
    fn balanced_elements(svg: &str) -> Vec<String> {
        let mut open: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = svg;
        while let Some(start) = rest.find('<') {
            let end = start + rest[start..].find('>').expect("an unterminated tag");
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            assert!(!tag.contains('<'), "a '<' inside a tag: {tag}");
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(
                    open.pop().as_deref(),
                    Some(name.trim()),
                    "mismatched </{name}>"
                );
                continue;
            }
            let name = tag
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_end_matches('/');
            seen.push(name.to_owned());
            if !tag.ends_with('/') {
                open.push(name.to_owned());
            }
        }
        assert!(open.is_empty(), "never closed: {open:?}");
        seen
    }

    #[test]
    fn charts_render_as_the_golden_file() {
        let svg = render(&sample());
        let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/convergence.svg");
        if std::env::var_os("SKOG_BLESS").is_some() {
            std::fs::write(golden, &svg).unwrap();
        }
        let want = std::fs::read_to_string(golden).unwrap();
        assert!(
            svg == want,
            "SVG differs from {golden}; SKOG_BLESS=1 regenerates it"
        );
    }

    #[test]
    fn the_svg_is_well_formed_with_a_line_per_series() {
        let svg = render(&sample());
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        let elements = balanced_elements(&svg);
        assert_eq!(elements.iter().filter(|e| *e == "polyline").count(), 4);
        assert_eq!(elements.iter().filter(|e| *e == "circle").count(), 20);
        // Labels are escaped; ticks are labelled per decade on both axes.
        assert!(svg.contains("BIRD kernel path (Calico) &amp; &lt;friends&gt;"));
        for tick in [
            ">1<", ">10<", ">100<", ">1,000<", ">10,000<", ">0.01<", ">0.1<",
        ] {
            assert!(svg.contains(tick), "no tick {tick}");
        }
        assert!(svg.contains("endpoints (log scale)") && svg.contains("time (ms, log scale)"));
    }

    #[test]
    fn axes_cover_the_data_in_whole_decades() {
        let d = Decades::covering([0.013, 3304.0].into_iter());
        assert_eq!(d, Decades { lo: -2, hi: 4 });
        assert_eq!(d.fraction(0.01), 0.0);
        assert_eq!(d.fraction(10_000.0), 1.0);
        assert_eq!(d.fraction(0.0), 0.0);
        // No positive value: a default decade, no panic.
        assert_eq!(
            Decades::covering([0.0, -1.0].into_iter()),
            Decades { lo: 0, hi: 1 }
        );
        assert!(balanced_elements(&render(&[])).contains(&"svg".to_owned()));
    }

    #[test]
    fn decade_labels_read_like_numbers() {
        let labels: Vec<String> = (-3..=4).map(decade_label).collect();
        assert_eq!(
            labels,
            ["0.001", "0.01", "0.1", "1", "10", "100", "1,000", "10,000"]
        );
    }
}
