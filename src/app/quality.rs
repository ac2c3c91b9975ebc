//! The quality view: sample quality (exact W2 to fresh data) against the
//! number of function evaluations for every solver on the current model, with
//! the Euler curves of earlier measured runs kept beside it (e.g. exact-OT
//! against independent coupling). The worker measures; this view draws.

use egui::Color32;
use egui_plot::{Legend, Line, LineStyle, Plot, Points};

use super::FlowLabApp;
use crate::quality::QualityReport;
use crate::solver::SolverKind;
use crate::train::worker::Command;

/// Measured runs kept for comparison (the oldest is dropped first).
const MAX_KEPT: usize = 6;

/// One measurement of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct QualityEntry {
    /// What the run was (source, data, coupling).
    pub label: String,
    /// Training step of the weights measured.
    pub step: u64,
    /// The measurements.
    pub report: QualityReport,
}

/// Which view the left column shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LeftView {
    /// The loss curves.
    #[default]
    Loss,
    /// Quality against NFE.
    Quality,
}

fn solver_colour(kind: SolverKind) -> Color32 {
    match kind {
        SolverKind::Euler => Color32::from_rgb(240, 110, 110),
        SolverKind::Midpoint => Color32::from_rgb(100, 160, 240),
        SolverKind::Heun => Color32::from_rgb(120, 200, 120),
        SolverKind::Rk4 => Color32::from_rgb(230, 180, 60),
        SolverKind::Dopri5 => Color32::from_rgb(190, 120, 230),
    }
}

impl QualityEntry {
    /// `(log2 NFE, W2)` of one solver's points, cheapest first.
    pub fn curve(&self, kind: SolverKind) -> Vec<[f64; 2]> {
        let mut pts: Vec<[f64; 2]> = self
            .report
            .points
            .iter()
            .filter(|p| p.solver == kind && p.w2.is_finite() && p.nfe > 0)
            .map(|p| [(p.nfe as f64).log2(), p.w2])
            .collect();
        pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
        pts
    }

    /// W2 after `steps` Euler steps, if measured.
    pub fn euler_w2(&self, steps: usize) -> Option<f64> {
        self.report
            .points
            .iter()
            .find(|p| p.solver == SolverKind::Euler && p.steps == steps)
            .map(|p| p.w2)
    }
}

impl FlowLabApp {
    /// A short description of the current run for the quality legend.
    pub fn run_label(&self) -> String {
        self.run_config.as_ref().map_or_else(String::new, |c| {
            format!(
                "{} -> {}, {}{}",
                c.source.name(),
                c.dataset.name(),
                c.coupling.name(),
                if c.coupling_per_class {
                    " per class"
                } else {
                    ""
                }
            )
        })
    }

    /// Asks the worker to measure quality against NFE on the current weights.
    pub fn measure_quality(&mut self) {
        self.send(Command::Quality);
        self.quality_pending = true;
        self.left_view = LeftView::Quality;
    }

    /// Keeps a finished measurement.
    pub(super) fn add_quality(&mut self, step: u64, report: QualityReport) {
        self.quality_pending = false;
        if self.quality.len() >= MAX_KEPT {
            self.quality.remove(0);
        }
        let label = self.run_label();
        self.quality.push(QualityEntry {
            label,
            step,
            report,
        });
    }

    pub(super) fn quality_ui(&mut self, ui: &mut egui::Ui, height: f32) {
        ui.horizontal(|ui| {
            let enabled =
                !self.is_image_run() && !self.is_discrete_run() && !self.quality_pending;
            if ui
                .add_enabled(enabled, egui::Button::new("Measure"))
                .on_hover_text(
                    "Sample 600 points with every solver at 1-16 evaluations and compare them with fresh data (exact W2)",
                )
                .on_disabled_hover_text("Measured on 2D data, one measurement at a time")
                .clicked()
            {
                self.measure_quality();
            }
            if ui
                .button("Clear")
                .on_hover_text("Forget the kept measurements")
                .clicked()
            {
                self.quality.clear();
            }
            if self.quality_pending {
                ui.spinner();
                ui.label("measuring...");
            }
        });
        let entries = self.quality.clone();
        let latest = entries.last();
        Plot::new("quality_plot")
            .legend(Legend::default())
            .height((height - 110.0).max(80.0))
            .x_axis_label("function evaluations (NFE)")
            .y_axis_label("W2 to data (lower is better)")
            .x_grid_spacer(egui_plot::uniform_grid_spacer(|_| [1.0, 2.0, 4.0]))
            .x_axis_formatter(|mark, _| {
                if mark.value.fract() == 0.0 && mark.value >= 0.0 {
                    format!("{:.0}", 2f64.powf(mark.value))
                } else {
                    String::new()
                }
            })
            .label_formatter(|hover| match hover {
                egui_plot::HoverPosition::NearDataPoint {
                    plot_name,
                    position,
                    ..
                } => Some(format!(
                    "{plot_name}\nNFE {:.0}\nW2 {:.4}",
                    2f64.powf(position.x),
                    position.y
                )),
                egui_plot::HoverPosition::Elsewhere { .. } => None,
            })
            .show(ui, |p| {
                for older in entries.iter().rev().skip(1) {
                    p.line(
                        Line::new(
                            format!("{} @ {}: euler", older.label, older.step),
                            older.curve(SolverKind::Euler),
                        )
                        .color(Color32::from_gray(150))
                        .style(LineStyle::dashed_loose()),
                    );
                }
                if let Some(e) = latest {
                    for kind in SolverKind::ALL {
                        let pts = e.curve(kind);
                        let name = kind.name().to_string();
                        p.line(
                            Line::new(name.clone(), pts.clone())
                                .color(solver_colour(kind))
                                .width(2.0),
                        );
                        p.points(
                            Points::new(name, pts)
                                .color(solver_colour(kind))
                                .radius(3.0),
                        );
                    }
                    p.line(
                        Line::new(
                            "data floor",
                            vec![[0.0, e.report.floor], [6.0, e.report.floor]],
                        )
                        .color(Color32::from_gray(110))
                        .style(LineStyle::dotted_dense()),
                    );
                }
            });
        for e in entries.iter().rev() {
            let w2_2 = e.euler_w2(2).map_or("-".to_string(), |w| format!("{w:.3}"));
            ui.label(format!(
                "{} @ step {}: straightness {:.3}, W2 after 2 Euler steps {w2_2} (floor {:.3})",
                e.label, e.step, e.report.straightness, e.report.floor
            ));
        }
        if entries.is_empty() && !self.quality_pending {
            ui.label(
                "Measure the current model, change the coupling or source, train a new run and measure again: the runs' Euler curves stay for comparison.",
            );
        }
    }
}
