//! `tg-chart`: draws latency against offered load from `results.json` (the `curves` the
//! side-by-side run measured with open-loop `tg-load`) as an SVG, one line per path.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(name = "tg-chart", version, about)]
struct Args {
    /// results.json written by load-tests/run.sh.
    #[arg(long, default_value = "load-tests/results.json")]
    input: PathBuf,
    #[arg(long, default_value = "load-tests/latency.svg")]
    output: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Results {
    meta: serde_json::Value,
    curves: Vec<Curve>,
}

/// One path measured at several open-loop rates.
#[derive(Debug, Deserialize)]
struct Curve {
    name: String,
    points: Vec<Point>,
}

#[derive(Debug, Deserialize)]
struct Point {
    /// Offered load, requests per second.
    rate: f64,
    p50_us: u64,
    p99_us: u64,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let text = std::fs::read_to_string(&a.input)
        .with_context(|| format!("cannot read {}", a.input.display()))?;
    let r: Results = serde_json::from_str(&text)
        .with_context(|| format!("{} has no latency curves", a.input.display()))?;
    anyhow::ensure!(
        r.curves.iter().any(|c| !c.points.is_empty()),
        "no points to draw"
    );
    let max_rate = r
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.rate))
        .fold(1.0, f64::max);
    let ms = |us: u64| (us.max(1) as f64) / 1000.0;
    let max_ms = r
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| ms(p.p99_us)))
        .fold(1.0, f64::max);
    let root = SVGBackend::new(&a.output, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!(
        "Latency vs offered load (open loop) — {}",
        r.meta
            .get("machine")
            .and_then(|m| m.as_str())
            .unwrap_or("this machine")
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate * 1.05, (0.05..max_ms * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered load (req/s)")
        .y_desc("latency (ms, log): solid p99, dashed p50")
        .draw()?;
    for (i, c) in r.curves.iter().enumerate() {
        let color = COLORS.get(i % COLORS.len()).copied().unwrap_or(BLACK);
        let p99: Vec<(f64, f64)> = c.points.iter().map(|p| (p.rate, ms(p.p99_us))).collect();
        let p50: Vec<(f64, f64)> = c.points.iter().map(|p| (p.rate, ms(p.p50_us))).collect();
        chart
            .draw_series(LineSeries::new(p99.clone(), color.stroke_width(2)))?
            .label(c.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
        chart.draw_series(p99.iter().map(|&pt| Circle::new(pt, 3, color.filled())))?;
        chart.draw_series(DashedLineSeries::new(p50, 4, 4, color.into()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    println!("wrote {}", a.output.display());
    Ok(())
}
