//! The report's plots (plotters), each written as PNG and SVG: the Pareto front of a campaign
//! (accuracy against parameters, every settled job shown, the front joined) and its progress
//! over time (jobs settled and best accuracy against wall-clock seconds).
//!
//! Text is drawn with an embedded font (DejaVu Sans Mono, `assets/`), so the plots look the
//! same on any machine and need no system font library.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            // The font is embedded and known to parse (a unit test draws with it).
            let _ = plotters::style::register_font(FAMILY, style, FONT);
        }
    });
}

/// Why a plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {reason}")]
pub struct PlotError {
    path: String,
    reason: String,
}

/// A settled job as the front plot sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Parameters.
    pub params: u64,
    /// Test accuracy.
    pub accuracy: f64,
    /// On the front.
    pub front: bool,
}

/// One sample of progress.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Seconds since the campaign was submitted.
    pub seconds: f64,
    /// Jobs settled so far.
    pub settled: usize,
    /// Best accuracy so far.
    pub best: f64,
}

/// Fills `root` white, draws on it and writes it out.
fn render<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    path: &Path,
    draw: impl FnOnce(&DrawingArea<DB, Shift>) -> Result<(), String>,
) -> Result<(), PlotError> {
    let err = |reason: String| PlotError {
        path: path.display().to_string(),
        reason,
    };
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    draw(&root).map_err(err)?;
    root.present().map_err(|e| err(e.to_string()))
}

fn front_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[Point],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let max_p = points.iter().map(|p| p.params).max().unwrap_or(1).max(1) as f64;
    let min_p = points.iter().map(|p| p.params).min().unwrap_or(1).max(1) as f64;
    let (lo, hi) = ((min_p * 0.8).max(1.0), max_p * 1.25);
    let (alo, ahi) = accuracy_range(points.iter().map(|p| p.accuracy));
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), alo..ahi)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("parameters (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("test accuracy")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(
            points
                .iter()
                .filter(|p| !p.front)
                .map(|p| Circle::new((p.params as f64, p.accuracy), 3, BLUE.mix(0.35).filled())),
        )
        .map_err(e)?
        .label("settled job")
        .legend(|(x, y)| Circle::new((x, y), 3, BLUE.mix(0.35).filled()));
    let mut front: Vec<&Point> = points.iter().filter(|p| p.front).collect();
    front.sort_by_key(|p| p.params);
    chart
        .draw_series(LineSeries::new(
            front.iter().map(|p| (p.params as f64, p.accuracy)),
            RED.stroke_width(2),
        ))
        .map_err(e)?;
    chart
        .draw_series(
            front
                .iter()
                .map(|p| Circle::new((p.params as f64, p.accuracy), 5, RED.filled())),
        )
        .map_err(e)?
        .label("Pareto front")
        .legend(|(x, y)| Circle::new((x, y), 5, RED.filled()));
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// The accuracy axis: the data's range with a margin, at least 0.1 wide, inside 0..1.
fn accuracy_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let (lo, hi) = ((lo - 0.05).max(0.0), (hi + 0.05).min(1.0));
    if hi - lo >= 0.1 {
        (lo, hi)
    } else {
        let lo = lo.min(0.9);
        (lo, lo + 0.1)
    }
}

fn progress_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    samples: &[Sample],
    total_jobs: usize,
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let t_max = samples.iter().map(|s| s.seconds).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&top)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0usize..total_jobs.max(1))
        .map_err(e)?;
    chart
        .configure_mesh()
        .y_desc("jobs settled")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(e)?;
    let mut steps = vec![(0.0, 0usize)];
    for s in samples {
        steps.push((s.seconds, steps.last().map_or(0, |l| l.1)));
        steps.push((s.seconds, s.settled));
    }
    chart
        .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))
        .map_err(e)?;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the campaign was submitted")
        .y_desc("best accuracy")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(
            samples.iter().map(|s| (s.seconds, s.best)),
            RED.stroke_width(2),
        ))
        .map_err(e)?;
    chart
        .draw_series(
            samples
                .iter()
                .map(|s| Circle::new((s.seconds, s.best), 4, RED.filled())),
        )
        .map_err(e)?;
    Ok(())
}

/// Writes `dir/front.png` and `dir/front.svg`.
pub fn front(dir: &Path, title: &str, points: &[Point]) -> Result<(), PlotError> {
    register_font();
    let (png, svg) = (dir.join("front.png"), dir.join("front.svg"));
    let size = (900, 600);
    render(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &png,
        |r| front_chart(r, title, points),
    )?;
    render(SVGBackend::new(&svg, size).into_drawing_area(), &svg, |r| {
        front_chart(r, title, points)
    })
}

/// Writes `dir/progress.png` and `dir/progress.svg`.
pub fn progress(
    dir: &Path,
    title: &str,
    samples: &[Sample],
    total_jobs: usize,
) -> Result<(), PlotError> {
    register_font();
    let (png, svg) = (dir.join("progress.png"), dir.join("progress.svg"));
    let size = (900, 700);
    render(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &png,
        |r| progress_chart(r, title, samples, total_jobs),
    )?;
    render(SVGBackend::new(&svg, size).into_drawing_area(), &svg, |r| {
        progress_chart(r, title, samples, total_jobs)
    })
}

/// One round of a `train` campaign as the rounds plot draws it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundPoint {
    /// The round.
    pub round: u32,
    /// The start model's validation accuracy, if agreed.
    pub accuracy: Option<f64>,
    /// The agreed segments' mean training loss, if any.
    pub train_loss: Option<f64>,
}

fn rounds_chart<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    points: &[RoundPoint],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let r_max = points.iter().map(|p| p.round).max().unwrap_or(0).max(1);
    let series = |f: fn(&RoundPoint) -> Option<f64>| -> Vec<(u32, f64)> {
        points
            .iter()
            .filter_map(|p| f(p).map(|v| (p.round, v)))
            .collect()
    };
    let acc = series(|p| p.accuracy);
    let loss = series(|p| p.train_loss);
    let mut chart = ChartBuilder::on(&top)
        .caption(title, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..r_max, 0.0..1.0)
        .map_err(e)?;
    chart
        .configure_mesh()
        .y_desc("start model accuracy (validation)")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(acc.iter().copied(), RED.stroke_width(2)))
        .map_err(e)?;
    let l_max = loss.iter().map(|l| l.1).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0u32..r_max, 0.0..l_max)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("round")
        .y_desc("training loss (agreed segments)")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(LineSeries::new(loss.iter().copied(), BLUE.stroke_width(2)))
        .map_err(e)?;
    Ok(())
}

/// Writes `dir/rounds.png` and `dir/rounds.svg`: a training campaign's accuracy and loss by
/// round.
pub fn rounds(dir: &Path, title: &str, points: &[RoundPoint]) -> Result<(), PlotError> {
    register_font();
    let (png, svg) = (dir.join("rounds.png"), dir.join("rounds.svg"));
    let size = (900, 700);
    render(
        BitMapBackend::new(&png, size).into_drawing_area(),
        &png,
        |r| rounds_chart(r, title, points),
    )?;
    render(SVGBackend::new(&svg, size).into_drawing_area(), &svg, |r| {
        rounds_chart(r, title, points)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_written_as_png_and_svg_with_text() {
        let dir = std::env::temp_dir().join(format!("hivemesh-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let points = vec![
            Point {
                params: 650,
                accuracy: 0.81,
                front: true,
            },
            Point {
                params: 2410,
                accuracy: 0.92,
                front: true,
            },
            Point {
                params: 2410,
                accuracy: 0.70,
                front: false,
            },
        ];
        front(&dir, "front", &points).expect("front");
        let samples = vec![
            Sample {
                seconds: 3.0,
                settled: 8,
                best: 0.8,
            },
            Sample {
                seconds: 7.5,
                settled: 16,
                best: 0.92,
            },
        ];
        progress(&dir, "progress", &samples, 24).expect("progress");
        let rounds_in = [
            (0, Some(0.11), Some(2.2)),
            (1, Some(0.85), Some(0.6)),
            (2, None, None),
        ]
        .map(|(round, accuracy, train_loss)| RoundPoint {
            round,
            accuracy,
            train_loss,
        });
        rounds(&dir, "rounds", &rounds_in).expect("rounds");
        let svg = std::fs::read_to_string(dir.join("rounds.svg")).expect("svg");
        assert!(svg.contains("training loss"), "the loss panel is labelled");
        for f in [
            "front.png",
            "front.svg",
            "progress.png",
            "progress.svg",
            "rounds.png",
            "rounds.svg",
        ] {
            let bytes = std::fs::read(dir.join(f)).expect(f);
            assert!(bytes.len() > 1000, "{f}: {} bytes", bytes.len());
        }
        let png = std::fs::read(dir.join("front.png")).expect("png");
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(dir.join("front.svg")).expect("svg");
        assert!(
            svg.contains("Pareto front") && svg.contains("parameters"),
            "labels drawn"
        );
        if std::env::var_os("KEEP_PLOTS").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
