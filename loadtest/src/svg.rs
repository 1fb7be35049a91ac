//! The picture of a run: one panel per operation, each with the latency of every
//! region pair by percentile, as HdrHistogram's percentile plots draw it. The x
//! axis is logarithmic in 1 / (1 - percentile), so 90 %, 99 %, 99.9 % and
//! 99.99 % are evenly spaced and the tail gets as much room as the median; the y
//! axis is logarithmic in milliseconds. Plain SVG 1.1, no scripts or fonts.

use std::fmt::Write;

/// Points per curve.
pub const CURVE_POINTS: usize = 160;
/// The highest percentile drawn, as a fraction: 99.99 %.
pub const MAX_QUANTILE: f64 = 0.9999;

const WIDTH: f64 = 1120.0;
const PANEL_HEIGHT: f64 = 316.0;
const HEADER: f64 = 64.0;
const LEFT: f64 = 70.0;
const PLOT_WIDTH: f64 = 560.0;
const TOP: f64 = 44.0;
const PLOT_HEIGHT: f64 = 210.0;
const LEGEND_X: f64 = LEFT + PLOT_WIDTH + 24.0;
const PALETTE: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#393b79", "#637939",
];

/// One curve: latency (ms) at quantiles.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// (quantile in 0..1, milliseconds), quantiles ascending.
    pub points: Vec<(f64, f64)>,
    /// Drawn thicker and in black (the all-pairs curve).
    pub emphasis: bool,
}

/// One operation's panel.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Heading.
    pub title: String,
    /// What is measured.
    pub subtitle: String,
    /// Its curves.
    pub series: Vec<Series>,
}

/// The quantiles curves are sampled at: evenly spaced on the x axis.
pub fn quantiles() -> Vec<f64> {
    let top = x_of(MAX_QUANTILE);
    (0..=CURVE_POINTS)
        .map(|i| {
            let x = top * i as f64 / CURVE_POINTS as f64;
            1.0 - 10f64.powf(-x)
        })
        .collect()
}

fn x_of(q: f64) -> f64 {
    let q = q.clamp(0.0, MAX_QUANTILE);
    -(1.0 - q).log10()
}

/// Renders the panels under a title.
pub fn render(title: &str, subtitle: &str, panels: &[Panel]) -> String {
    let height = HEADER + PANEL_HEIGHT * panels.len().max(1) as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
<text x="{LEFT}" y="26" font-size="18" font-weight="bold">{}</text>
<text x="{LEFT}" y="46" fill="#444">{}</text>"##,
        escape(title),
        escape(subtitle)
    );
    if panels.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{LEFT}" y="{}" fill="#444">no latencies were measured</text>"##,
            HEADER + 30.0
        );
    }
    for (i, panel) in panels.iter().enumerate() {
        draw_panel(&mut out, panel, HEADER + PANEL_HEIGHT * i as f64);
    }
    out.push_str("</svg>\n");
    out
}

fn draw_panel(out: &mut String, panel: &Panel, y0: f64) {
    let top = y0 + TOP;
    let bottom = top + PLOT_HEIGHT;
    let right = LEFT + PLOT_WIDTH;
    let _ = writeln!(
        out,
        r##"<g>
<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{}</text>
<text x="{LEFT}" y="{}" fill="#444">{}</text>"##,
        y0 + 16.0,
        escape(&panel.title),
        y0 + 32.0,
        escape(&panel.subtitle)
    );
    // Y range: whole decades around every value.
    let values = panel
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        lo = 1.0;
        hi = 10.0;
    }
    let lo_dec = lo.log10().floor();
    let mut hi_dec = hi.log10().ceil();
    if hi_dec <= lo_dec {
        hi_dec = lo_dec + 1.0;
    }
    let x_max = x_of(MAX_QUANTILE);
    let px = |q: f64| LEFT + x_of(q) / x_max * PLOT_WIDTH;
    let py = |ms: f64| {
        let v = ms.max(10f64.powf(lo_dec)).log10();
        bottom - (v - lo_dec) / (hi_dec - lo_dec) * PLOT_HEIGHT
    };
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{PLOT_WIDTH}" height="{PLOT_HEIGHT}" fill="#fafafa" stroke="#999"/>"##
    );
    // Horizontal grid: decades labelled, 2 and 5 faint.
    let mut d = lo_dec;
    while d <= hi_dec + 1e-9 {
        let y = py(10f64.powf(d));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#ccc"/>
<text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 6.0,
            y + 4.0,
            escape(&ms_label(10f64.powf(d)))
        );
        if d < hi_dec {
            for m in [2.0, 5.0] {
                let y = py(m * 10f64.powf(d));
                let _ = writeln!(
                    out,
                    r##"<line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#eee"/>"##
                );
            }
        }
        d += 1.0;
    }
    // Vertical grid at the usual percentiles.
    for (q, label) in [
        (0.0, "0%"),
        (0.5, "50%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        let x = px(q);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#ddd"/>
<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            bottom + 16.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">percentile</text>
<text x="{}" y="{}" text-anchor="middle" fill="#444" transform="rotate(-90 {} {})">latency</text>"##,
        LEFT + PLOT_WIDTH / 2.0,
        bottom + 34.0,
        LEFT - 52.0,
        top + PLOT_HEIGHT / 2.0,
        LEFT - 52.0,
        top + PLOT_HEIGHT / 2.0
    );
    // Curves and legend.
    let mut colour = 0;
    for (i, s) in panel.series.iter().enumerate() {
        let (stroke, width) = if s.emphasis {
            ("#000", 2.5)
        } else {
            let c = PALETTE[colour % PALETTE.len()];
            colour += 1;
            (c, 1.5)
        };
        let mut points = String::new();
        for (q, ms) in &s.points {
            if ms.is_finite() && *ms > 0.0 {
                let _ = write!(points, "{:.1},{:.1} ", px(*q), py(*ms));
            }
        }
        if !points.is_empty() {
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{stroke}" stroke-width="{width}" points="{}"/>"#,
                points.trim_end()
            );
        }
        let ly = top + 4.0 + 16.0 * i as f64;
        if ly > bottom + 20.0 {
            let _ = writeln!(
                out,
                r##"<text x="{LEGEND_X}" y="{ly:.1}" fill="#444">... {} more</text>"##,
                panel.series.len() - i
            );
            break;
        }
        let _ = writeln!(
            out,
            r#"<line x1="{LEGEND_X}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{stroke}" stroke-width="{width}"/>
<text x="{}" y="{:.1}">{}</text>"#,
            ly - 4.0,
            LEGEND_X + 18.0,
            ly - 4.0,
            LEGEND_X + 24.0,
            ly,
            escape(&s.label)
        );
    }
    out.push_str("</g>\n");
}

/// `0.1 ms`, `1 ms`, `1 s`, ...
fn ms_label(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{} s", trim(ms / 1000.0))
    } else {
        format!("{} ms", trim(ms))
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A strict enough XML well-formedness check for generated SVG: balanced
    /// and properly nested elements, quoted attributes, escaped text, one root.
    pub(crate) fn well_formed(xml: &str) -> Result<(), String> {
        let mut rest = xml;
        if let Some(decl_end) = rest.strip_prefix("<?xml").and_then(|r| r.find("?>")) {
            rest = &rest[5 + decl_end + 2..];
        }
        let mut stack: Vec<String> = Vec::new();
        let mut roots = 0;
        while !rest.is_empty() {
            let Some(lt) = rest.find('<') else {
                check_text(rest)?;
                break;
            };
            check_text(&rest[..lt])?;
            if stack.is_empty() && !rest[..lt].trim().is_empty() {
                return Err("text outside the root".into());
            }
            rest = &rest[lt..];
            let gt = rest.find('>').ok_or("unterminated tag")?;
            let tag = &rest[1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or("closing tag without opening")?;
                if open != name.trim() {
                    return Err(format!("</{name}> closes <{open}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == ':') {
                return Err(format!("bad element name in <{tag}>"));
            }
            check_attributes(&body[name.len()..])?;
            if stack.is_empty() {
                roots += 1;
            }
            if !self_closing {
                stack.push(name);
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed <{}>", stack.join("> <")));
        }
        if roots != 1 {
            return Err(format!("{roots} root elements"));
        }
        Ok(())
    }

    fn check_text(text: &str) -> Result<(), String> {
        let mut rest = text;
        while let Some(amp) = rest.find('&') {
            rest = &rest[amp..];
            let semi = rest.find(';').ok_or("bare &")?;
            let entity = &rest[1..semi];
            if !["amp", "lt", "gt", "quot", "apos"].contains(&entity) {
                return Err(format!("unknown entity &{entity};"));
            }
            rest = &rest[semi + 1..];
        }
        if text.contains('>') {
            return Err("raw > in text".into());
        }
        Ok(())
    }

    fn check_attributes(mut attrs: &str) -> Result<(), String> {
        loop {
            attrs = attrs.trim_start();
            if attrs.is_empty() {
                return Ok(());
            }
            let eq = attrs
                .find('=')
                .ok_or(format!("attribute without value: {attrs}"))?;
            let name = attrs[..eq].trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("bad attribute name {name:?}"));
            }
            let after = &attrs[eq + 1..];
            let quote = after.chars().next().ok_or("missing attribute value")?;
            if quote != '"' && quote != '\'' {
                return Err(format!("unquoted attribute {name}"));
            }
            let close = after[1..].find(quote).ok_or("unterminated attribute")?;
            let value = &after[1..1 + close];
            if value.contains('<') {
                return Err(format!("< in attribute {name}"));
            }
            check_text(&value.replace('>', ""))?;
            attrs = &after[close + 2..];
        }
    }

    fn panel() -> Panel {
        let q = quantiles();
        Panel {
            title: "delivery".into(),
            subtitle: "scheduled send -> decrypted".into(),
            series: vec![
                Series {
                    label: "all (n=100)".into(),
                    points: q.iter().map(|q| (*q, 1.0 + 100.0 * q)).collect(),
                    emphasis: true,
                },
                Series {
                    label: "us-east -> eu-west <&\"'>".into(),
                    points: q.iter().map(|q| (*q, 0.2 + 10.0 * q)).collect(),
                    emphasis: false,
                },
            ],
        }
    }

    #[test]
    fn the_picture_is_well_formed_svg() {
        let svg = render(
            "Rossby load test <local>",
            "200/s & more",
            &[panel(), panel()],
        );
        well_formed(&svg).unwrap();
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("99.9%"));
        assert!(svg.contains("us-east -&gt; eu-west &lt;&amp;&quot;&apos;&gt;"));
        assert!(svg.contains("0.1 ms") && svg.contains("100 ms"));
        let empty = render("t", "s", &[]);
        well_formed(&empty).unwrap();
        assert!(empty.contains("no latencies"));
    }

    #[test]
    fn the_checker_catches_broken_xml() {
        for bad in [
            "<svg><g></svg>",
            "<svg a=b></svg>",
            "<svg>a & b</svg>",
            "<svg></svg><svg></svg>",
            "<svg><text>x</g></svg>",
        ] {
            assert!(well_formed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quantiles_span_the_axis() {
        let q = quantiles();
        assert_eq!(q.len(), CURVE_POINTS + 1);
        assert_eq!(q[0], 0.0);
        assert!((q[CURVE_POINTS] - MAX_QUANTILE).abs() < 1e-9);
        assert!(q.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(ms_label(0.1), "0.1 ms");
        assert_eq!(ms_label(1000.0), "1 s");
    }
}
