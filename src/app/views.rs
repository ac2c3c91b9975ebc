//! The central views: the loss curve and the flow at time t. They draw what
//! the app state holds and queue worker commands; they compute no tensors.

use egui::Color32;
use egui_plot::{Arrows, Heatmap, Legend, Line, Plot, PlotPoint, Points};

use super::FlowLabApp;
use crate::train::worker::{Command, SampleSnapshot};

/// Trajectories drawn (the first particles of the preview batch).
const MAX_TRAJECTORIES: usize = 150;
/// Velocity-field grid points per axis.
const FIELD_GRID: usize = 17;
/// Density heat-map cells per axis.
const DENSITY_GRID: usize = 48;
/// Learned-density cells per axis.
const LEARNED_GRID: usize = 48;

/// Which layers the flow view draws.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Layers {
    /// The preview particles at time t.
    pub particles: bool,
    /// Each particle's path from t = 0 up to t.
    pub trajectories: bool,
    /// Arrows of v(x, t) on a grid.
    pub field: bool,
    /// Points of the target data.
    pub data: bool,
    /// A heat-map of the particles' density at t.
    pub density: bool,
    /// A heat-map of the model's own density p_1(x) (exact likelihood).
    #[serde(default)]
    pub learned_density: bool,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            particles: true,
            trajectories: false,
            field: false,
            data: false,
            density: false,
            learned_density: false,
        }
    }
}

/// Loss-view options.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossView {
    /// EMA smoothing factor of the bright curve, in [0, 0.999].
    pub smoothing: f64,
    /// Plot log10 of the loss.
    pub log_y: bool,
    /// Show only the most recent this many steps (0: the whole history).
    pub window: u64,
}

impl Default for LossView {
    fn default() -> Self {
        LossView {
            smoothing: 0.9,
            log_y: false,
            window: 0,
        }
    }
}

/// Time-slider playback.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Playback {
    /// Whether t is advancing.
    pub playing: bool,
    /// Start again from t = 0 at the end.
    pub looping: bool,
    /// Units of t per second.
    pub speed: f64,
}

impl Default for Playback {
    fn default() -> Self {
        Playback {
            playing: false,
            looping: true,
            speed: 0.5,
        }
    }
}

/// Exponential moving average of `points`' y values (`alpha` = weight of the past).
pub fn smooth(points: &[[f64; 2]], alpha: f64) -> Vec<[f64; 2]> {
    let mut acc: Option<f64> = None;
    points
        .iter()
        .map(|&[x, y]| {
            let s = acc.map_or(y, |a| alpha * a + (1.0 - alpha) * y);
            acc = Some(s);
            [x, s]
        })
        .collect()
}

impl FlowLabApp {
    pub(super) fn views_ui(&mut self, ui: &mut egui::Ui) {
        let width = ui.available_width();
        let height = ui.available_height();
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.set_width(width * 0.38);
                ui.horizontal(|ui| {
                    ui.selectable_value(&mut self.left_view, super::LeftView::Loss, "Loss curve");
                    ui.selectable_value(
                        &mut self.left_view,
                        super::LeftView::Quality,
                        "Quality vs NFE",
                    )
                    .on_hover_text("Sample quality against solver evaluations, for every solver");
                });
                match self.left_view {
                    super::LeftView::Loss => self.loss_ui(ui, height - 24.0),
                    super::LeftView::Quality => self.quality_ui(ui, height - 24.0),
                }
            });
            ui.vertical(|ui| {
                if self.is_image_run() {
                    self.grid_ui(ui, height);
                } else if let Some(m) = self.run_manifold() {
                    self.manifold_ui(ui, height, m);
                } else {
                    self.flow_ui(ui, height);
                }
            });
        });
    }

    fn loss_ui(&mut self, ui: &mut egui::Ui, height: f32) {
        ui.horizontal(|ui| {
            ui.label("Loss");
            ui.add(egui::Slider::new(&mut self.loss_view.smoothing, 0.0..=0.999).text("smoothing"))
                .on_hover_text("Weight of the past in the bright, smoothed curve");
            ui.checkbox(&mut self.loss_view.log_y, "log y")
                .on_hover_text("Logarithmic loss axis");
            egui::ComboBox::from_id_salt("loss_window")
                .selected_text(if self.loss_view.window == 0 {
                    "all steps".to_string()
                } else {
                    format!("last {}", self.loss_view.window)
                })
                .show_ui(ui, |ui| {
                    for w in [0u64, 500, 2000, 10_000] {
                        let label = if w == 0 {
                            "all steps".to_string()
                        } else {
                            format!("last {w}")
                        };
                        ui.selectable_value(&mut self.loss_view.window, w, label);
                    }
                })
                .response
                .on_hover_text("Show the whole history or only recent steps");
        });
        let v = self.loss_view;
        let from = if v.window == 0 {
            0.0
        } else {
            self.step.saturating_sub(v.window) as f64
        };
        let prep = |pts: &[[f64; 2]]| -> Vec<[f64; 2]> {
            pts.iter()
                .filter(|p| p[0] >= from && p[1] > 0.0)
                .map(|&[x, y]| [x, if v.log_y { y.log10() } else { y }])
                .collect()
        };
        let raw = prep(&self.loss);
        let smoothed = smooth(&raw, v.smoothing);
        let held = prep(&self.held_out);
        let log_y = v.log_y;
        let (raw_readout, smooth_readout) = (raw.clone(), smoothed.clone());
        Plot::new("loss_plot")
            .legend(Legend::default())
            .height(height - 36.0)
            .y_axis_formatter(move |mark, _| {
                if log_y {
                    format!("{:.3}", 10f64.powf(mark.value))
                } else {
                    format!("{:.3}", mark.value)
                }
            })
            .label_formatter(move |hover| {
                let unlog = |v: f64| if log_y { 10f64.powf(v) } else { v };
                match hover {
                    egui_plot::HoverPosition::NearDataPoint {
                        plot_name,
                        position,
                        index,
                    } => {
                        if *plot_name == "held-out loss" {
                            Some(format!(
                                "step {:.0}\nheld-out {:.4}",
                                position.x,
                                unlog(position.y)
                            ))
                        } else {
                            let raw = raw_readout.get(*index).map_or(f64::NAN, |p| unlog(p[1]));
                            let sm = smooth_readout.get(*index).map_or(f64::NAN, |p| unlog(p[1]));
                            Some(format!(
                                "step {:.0}\nraw {raw:.4}\nsmoothed {sm:.4}",
                                position.x
                            ))
                        }
                    }
                    egui_plot::HoverPosition::Elsewhere { .. } => None,
                }
            })
            .show(ui, |p| {
                p.line(
                    Line::new("loss (raw)", raw)
                        .color(Color32::from_rgba_unmultiplied(230, 120, 120, 60)),
                );
                p.line(
                    Line::new("loss (smoothed)", smoothed)
                        .color(Color32::from_rgb(240, 110, 110))
                        .width(2.0),
                );
                p.line(
                    Line::new("held-out loss", held)
                        .color(Color32::from_rgb(100, 160, 240))
                        .width(2.0),
                );
            });
    }

    fn flow_ui(&mut self, ui: &mut egui::Ui, height: f32) {
        let discrete = self.is_discrete_run();
        if discrete {
            // A token flow has no velocity field, density or continuous paths.
            self.layers.trajectories = false;
            self.layers.field = false;
            self.layers.learned_density = false;
        }
        ui.horizontal_wrapped(|ui| {
            if discrete {
                ui.label("Tokens at time t").on_hover_text(
                    "Each point is a pair of bins; a masked coordinate waits on the left (x) or bottom (y) edge",
                );
            } else {
                ui.label("Flow at time t")
                    .on_hover_text("Drag to pan, scroll to zoom, double-click to reset the view");
            }
            ui.checkbox(&mut self.layers.particles, "particles")
                .on_hover_text("The samples at time t");
            if !discrete {
                ui.checkbox(&mut self.layers.trajectories, "trajectories")
                    .on_hover_text("Each sample's path from noise (t = 0) up to t");
                ui.checkbox(&mut self.layers.field, "velocity field")
                    .on_hover_text("Arrows of v(x, t) on a grid at time t");
            }
            ui.checkbox(&mut self.layers.data, "data")
                .on_hover_text("The target distribution");
            ui.checkbox(&mut self.layers.density, "density")
                .on_hover_text("Heat-map of the samples' density at t");
            if !discrete {
                ui.checkbox(&mut self.layers.learned_density, "learned p(x)")
                    .on_hover_text(
                        "Heat-map of the model's exact density at t = 1, log p(x) by integrating the divergence back to the noise (computed by the worker)",
                    );
            }
            if self.layers.learned_density {
                if self.learned_pending {
                    ui.spinner();
                } else if self.learned_is_stale()
                    && ui
                        .button("recompute")
                        .on_hover_text("The weights or the view changed since the density was computed")
                        .clicked()
                {
                    self.request_learned_density();
                }
            }
        });
        if self.layers.data {
            ui.horizontal(|ui| {
                ui.add(
                    egui::Slider::new(&mut self.data_n, 100..=20_000)
                        .logarithmic(true)
                        .text("data points"),
                )
                .on_hover_text("How many target points the data layer shows");
                if ui
                    .button("Regenerate")
                    .on_hover_text("Draw a fresh set of target points")
                    .clicked()
                {
                    self.data_seed += 1;
                }
            });
        }
        self.ensure_data_points();
        self.request_field();
        // The learned density is computed when the layer is turned on; after
        // that only on request (the recompute button), as it takes a moment.
        if self.layers.learned_density && self.learned.is_none() && !self.learned_pending {
            self.request_learned_density();
        }
        let bounds = self.view_bounds;
        let pts_t = self.particles_at_t();
        Plot::new("flow_plot")
            .data_aspect(1.0)
            .legend(Legend::default())
            .height(height - 114.0)
            .include_x(bounds[0])
            .include_x(bounds[1])
            .include_y(bounds[2])
            .include_y(bounds[3])
            .show(ui, |p| {
                if self.layers.learned_density
                    && let Some(d) = &self.learned
                {
                    let b = d.bounds;
                    p.heatmap(
                        Heatmap::new(d.log_p.iter().map(|v| f64::from(*v).exp()).collect(), d.n)
                            .at(PlotPoint::new(b[0], b[2]))
                            .size((b[1] - b[0]) as f32, (b[3] - b[2]) as f32)
                            .show_labels(false)
                            .name("learned density"),
                    );
                }
                if self.layers.density
                    && let Some(pts) = &pts_t
                {
                    let (vals, cols) = density(pts, bounds, DENSITY_GRID);
                    p.heatmap(
                        Heatmap::new(vals, cols)
                            .at(PlotPoint::new(bounds[0], bounds[2]))
                            .size(
                                (bounds[1] - bounds[0]) as f32,
                                (bounds[3] - bounds[2]) as f32,
                            )
                            .show_labels(false)
                            .name("density"),
                    );
                }
                if self.layers.data {
                    p.points(
                        Points::new("data", self.data_points.clone())
                            .radius(1.0)
                            .color(Color32::from_gray(150)),
                    );
                }
                if self.layers.trajectories {
                    for line in self.trajectories_to_t() {
                        p.line(
                            Line::new("trajectories", line)
                                .color(Color32::from_rgba_unmultiplied(120, 200, 255, 90)),
                        );
                    }
                }
                if self.layers.field {
                    let (origins, tips): (Vec<[f64; 2]>, Vec<[f64; 2]>) =
                        self.field_arrows().into_iter().unzip();
                    p.arrows(
                        Arrows::new("velocity field", origins, tips)
                            .color(Color32::from_rgb(250, 200, 80)),
                    );
                }
                if self.layers.particles
                    && let Some(pts) = pts_t
                {
                    p.points(
                        Points::new("samples at t", pts)
                            .radius(1.5)
                            .color(Color32::from_rgb(240, 90, 90)),
                    );
                }
            });
        self.time_controls_ui(ui);
    }

    /// Play/stop, loop, speed and the time slider, shared by the flow and image views.
    pub(super) fn time_controls_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let label = if self.playback.playing {
                "Stop"
            } else {
                "Play"
            };
            if ui
                .button(label)
                .on_hover_text("Animate t from noise to data")
                .clicked()
            {
                self.playback.playing = !self.playback.playing;
                if self.playback.playing && self.t >= 1.0 {
                    self.t = 0.0;
                }
            }
            ui.checkbox(&mut self.playback.looping, "loop")
                .on_hover_text("Start again from noise when t reaches 1");
            ui.add(
                egui::Slider::new(&mut self.playback.speed, 0.05..=2.0)
                    .logarithmic(true)
                    .text("speed"),
            )
            .on_hover_text("Units of t per second");
        });
        ui.horizontal(|ui| {
            ui.spacing_mut().slider_width = (ui.available_width() - 190.0).max(100.0);
            ui.add(
                egui::Slider::new(&mut self.t, 0.0..=1.0)
                    .text("t (noise -> data)")
                    .fixed_decimals(2),
            )
            .on_hover_text(
                "Scrub the flow from noise (t = 0) to data (t = 1); keys: Left/Right, Home/End",
            );
        });
        self.advance_playback(ui);
    }

    fn advance_playback(&mut self, ui: &egui::Ui) {
        let (dt, keys) = ui.input(|i| {
            (
                f64::from(i.stable_dt.min(0.1)),
                [
                    i.key_pressed(egui::Key::ArrowLeft),
                    i.key_pressed(egui::Key::ArrowRight),
                    i.key_pressed(egui::Key::Home),
                    i.key_pressed(egui::Key::End),
                ],
            )
        });
        if !ui.ctx().egui_wants_keyboard_input() {
            let [left, right, home, end] = keys;
            if left {
                self.t = (self.t - 0.02).max(0.0);
            }
            if right {
                self.t = (self.t + 0.02).min(1.0);
            }
            if home {
                self.t = 0.0;
            }
            if end {
                self.t = 1.0;
            }
        }
        if self.playback.playing {
            self.t += self.playback.speed * dt;
            if self.t >= 1.0 {
                if self.playback.looping {
                    self.t = 0.0;
                } else {
                    self.t = 1.0;
                    self.playback.playing = false;
                }
            }
            ui.ctx().request_repaint();
        }
    }

    /// Whether the learned density shown is missing or from other weights or bounds.
    pub fn learned_is_stale(&self) -> bool {
        let step = self.snapshot.as_ref().map_or(0, |s| s.step);
        self.learned
            .as_ref()
            .is_none_or(|d| d.step != step || d.bounds != self.view_bounds)
    }

    /// Asks the worker for the learned density on the view's grid.
    pub fn request_learned_density(&mut self) {
        if self.run_config.is_none() || self.learned_pending {
            return;
        }
        self.learned_pending = true;
        self.send(Command::Density {
            n: LEARNED_GRID,
            bounds: self.view_bounds,
        });
    }

    /// Whether a velocity field should be asked for: its layer is on, none is
    /// on the way, and the one shown (drawn at time `shown_t`) is for another
    /// time or other weights. When due, it is marked as on the way.
    pub(super) fn field_due(&mut self, shown_t: Option<f64>) -> bool {
        if !self.layers.field || self.field_pending || self.run_config.is_none() {
            return false;
        }
        let step = self.snapshot.as_ref().map_or(0, |s| s.step);
        let fresh = shown_t.is_some_and(|t| (t - self.t).abs() < 1e-3) && self.field_step == step;
        if !fresh {
            self.field_pending = true;
            self.field_step = step;
        }
        !fresh
    }

    /// Asks the worker for v(x, t) when the field layer is on and the shown one is stale.
    fn request_field(&mut self) {
        if self.field_due(self.field.as_ref().map(|f| f.t)) {
            self.send(Command::Field {
                t: self.t,
                n: FIELD_GRID,
                bounds: self.view_bounds,
            });
        }
    }

    /// Target data points and view bounds for the current dataset (cached).
    fn ensure_data_points(&mut self) {
        let Some(cfg) = &self.run_config else {
            return;
        };
        let key = (cfg.dataset.clone(), self.data_n, self.data_seed);
        if self.data_for.as_ref() == Some(&key) {
            return;
        }
        self.data_for = Some(key);
        self.data_points.clear();
        if let crate::data::DatasetKind::Toy2d { toy } = &cfg.dataset {
            let mut rng = crate::rng::stream_rng(self.data_seed, crate::rng::Stream::Eval, 0);
            let pts = toy.draw_n(self.data_n, &mut rng);
            self.data_points = pts
                .as_chunks::<2>()
                .0
                .iter()
                .map(|&[x, y]| [f64::from(x), f64::from(y)])
                .collect();
            let (mut b0, mut b1, mut b2, mut b3) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
            for &[x, y] in &self.data_points {
                (b0, b1, b2, b3) = (b0.min(x), b1.max(x), b2.min(y), b3.max(y));
            }
            let (mx, my) = (0.25 * (b1 - b0), 0.25 * (b3 - b2));
            self.view_bounds = [b0 - mx, b1 + mx, b2 - my, b3 + my];
        }
    }

    /// Whether the current run is a discrete (token) flow.
    pub fn is_discrete_run(&self) -> bool {
        self.run_config
            .as_ref()
            .is_some_and(|c| c.discrete.is_some())
    }

    /// The preview particles at time `t`, linearly interpolated between solver
    /// states. A masked coordinate of a discrete flow is parked on the view's
    /// left (x) or bottom (y) edge, so unmasking shows as points leaving the edges.
    pub fn particles_at_t(&self) -> Option<Vec<[f64; 2]>> {
        let mut p = particles_at(self.snapshot.as_ref()?, self.t)?;
        let [x0, _, y0, _] = self.view_bounds;
        for q in &mut p {
            if q[0].is_nan() {
                q[0] = x0;
            }
            if q[1].is_nan() {
                q[1] = y0;
            }
        }
        Some(p)
    }

    /// The velocity-field arrows `(origin, tip)`, scaled so the longest spans 90%
    /// of a grid cell (empty until the worker has sent a field).
    pub fn field_arrows(&self) -> Vec<([f64; 2], [f64; 2])> {
        let Some(f) = &self.field else {
            return Vec::new();
        };
        let max = f
            .vectors
            .iter()
            .map(|[a, b]| (a * a + b * b).sqrt())
            .fold(1e-6f32, f32::max);
        let cell = (self.view_bounds[1] - self.view_bounds[0]) / FIELD_GRID as f64;
        let k = 0.9 * cell / f64::from(max);
        f.points
            .iter()
            .zip(&f.vectors)
            .map(|(&[x, y], &[a, b])| {
                let (x, y) = (f64::from(x), f64::from(y));
                ([x, y], [x + k * f64::from(a), y + k * f64::from(b)])
            })
            .collect()
    }

    /// Paths of the first particles from t = 0 up to `t`.
    pub fn trajectories_to_t(&self) -> Vec<Vec<[f64; 2]>> {
        let (Some(s), Some(now)) = (self.snapshot.as_ref(), self.particles_at_t()) else {
            return Vec::new();
        };
        let Some((k, _)) = bracket(&s.times, self.t) else {
            return Vec::new();
        };
        (0..now.len().min(MAX_TRAJECTORIES))
            .map(|i| {
                let mut line: Vec<[f64; 2]> = s
                    .states
                    .iter()
                    .take(k)
                    .filter_map(|st| st.get(2 * i..).and_then(|r| r.first_chunk::<2>()))
                    .map(|&[x, y]| [f64::from(x), f64::from(y)])
                    .collect();
                if let Some(p) = now.get(i) {
                    line.push(*p);
                }
                line
            })
            .collect()
    }
}

/// The index k of the first state at or after `t` and the weight of state k
/// against state k − 1.
pub(super) fn bracket(times: &[f64], t: f64) -> Option<(usize, f64)> {
    let last = times.len().checked_sub(1)?;
    let k = times.iter().position(|&u| u >= t).unwrap_or(last);
    let (t_hi, t_lo) = (*times.get(k)?, *times.get(k.saturating_sub(1))?);
    let w = if t_hi > t_lo {
        ((t - t_lo) / (t_hi - t_lo)).clamp(0.0, 1.0)
    } else {
        1.0
    };
    Some((k, w))
}

/// The states of `s` around time `t` and the weight of the later one: solver
/// states interpolate linearly; the tokens of a discrete flow hold from one
/// step to the next (the state of the last step at or before t, weight 0).
pub(super) fn states_around(s: &SampleSnapshot, t: f64) -> Option<(&[f32], &[f32], f64)> {
    if s.discrete {
        let j = s.times.iter().rposition(|&u| u <= t + 1e-9).unwrap_or(0);
        let st = s.states.get(j)?;
        return Some((st, st, 0.0));
    }
    let (k, w) = bracket(&s.times, t)?;
    Some((s.states.get(k.saturating_sub(1))?, s.states.get(k)?, w))
}

/// The 2D particles of `s` at time `t`, linearly interpolated between solver
/// states (held between the steps of a discrete flow; NaN for a masked coordinate).
pub fn particles_at(s: &SampleSnapshot, t: f64) -> Option<Vec<[f64; 2]>> {
    if s.sample_shape != [2] {
        return None;
    }
    let (lo, hi, w) = states_around(s, t)?;
    Some(
        lo.as_chunks::<2>()
            .0
            .iter()
            .zip(hi.as_chunks::<2>().0)
            .map(|([a, b], [c, d])| {
                let (a, b, c, d) = (f64::from(*a), f64::from(*b), f64::from(*c), f64::from(*d));
                [a + w * (c - a), b + w * (d - b)]
            })
            .collect(),
    )
}

/// A `(n x n)` histogram of `pts` over `bounds`, rows from the bottom; returns (values, columns).
pub fn density(pts: &[[f64; 2]], bounds: [f64; 4], n: usize) -> (Vec<f64>, usize) {
    let mut v = vec![0.0; n * n];
    let [x0, x1, y0, y1] = bounds;
    for &[x, y] in pts {
        let i = ((x - x0) / (x1 - x0) * n as f64).floor();
        let j = ((y - y0) / (y1 - y0) * n as f64).floor();
        if (0.0..n as f64).contains(&i)
            && (0.0..n as f64).contains(&j)
            && let Some(c) = v.get_mut(j as usize * n + i as usize)
        {
            *c += 1.0;
        }
    }
    (v, n)
}
