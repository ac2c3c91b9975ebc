//! The flow view for data on a manifold: the sphere as a globe seen from far
//! away (orthographic; drag to turn it, the hemisphere facing away drawn
//! faint), the torus as its periodic square of angles (φ, ψ). Particles at t,
//! their paths along the surface, the data and the tangent velocity field.
//! Like every view it only draws what the app holds.

use std::f64::consts::PI;

use egui::{Color32, Pos2, Sense, Shape, Stroke, Vec2};
use egui_plot::{Arrows, Legend, Line, Plot, Points};

use super::FlowLabApp;
use super::views::bracket;
use crate::flow::Manifold;
use crate::flow::manifold::torus_angles;
use crate::train::worker::{Command, SampleSnapshot};

/// Paths drawn (the first particles of the preview batch).
const MAX_PATHS: usize = 150;
/// Points of the tangent field.
const FIELD_POINTS: usize = 324;
/// Radians of turn per pixel dragged.
const DRAG_SPEED: f64 = 0.01;

/// How the globe is turned: `yaw` about the polar (z) axis, then `pitch`
/// towards the viewer (positive: seen from above the equator).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Globe {
    /// Turn about the polar axis, radians.
    pub yaw: f64,
    /// Tilt, radians in [−π/2, π/2].
    pub pitch: f64,
}

impl Default for Globe {
    fn default() -> Self {
        Globe {
            yaw: 0.5,
            pitch: 0.4,
        }
    }
}

impl Globe {
    /// A point of R³ in view coordinates `[right, up, towards the viewer]`.
    /// The visible (front) hemisphere is where the third coordinate is ≥ 0.
    pub fn view(&self, p: [f64; 3]) -> [f64; 3] {
        let (sy, cy) = self.yaw.sin_cos();
        let (x, y, z) = (cy * p[0] - sy * p[1], sy * p[0] + cy * p[1], p[2]);
        let (right, up, depth) = (x, z, -y);
        let (sp, cp) = self.pitch.sin_cos();
        [right, cp * up - sp * depth, sp * up + cp * depth]
    }

    /// Turns the globe by a drag of `delta` pixels.
    pub fn drag(&mut self, delta: Vec2) {
        self.yaw = (self.yaw + f64::from(delta.x) * DRAG_SPEED).rem_euclid(2.0 * PI);
        self.pitch = (self.pitch + f64::from(delta.y) * DRAG_SPEED).clamp(-PI / 2.0, PI / 2.0);
    }
}

/// The states of snapshot `s` interpolated at `t` and put back on the
/// manifold, flattened `(n, ambient_dim)`.
pub fn manifold_points_at(s: &SampleSnapshot, m: Manifold, t: f64) -> Option<Vec<f32>> {
    let (k, w) = bracket(&s.times, t)?;
    let b = s.states.get(k)?;
    let raw: Vec<f64> = if k == 0 || w >= 1.0 {
        b.iter().map(|&v| f64::from(v)).collect()
    } else {
        let a = s.states.get(k - 1)?;
        a.iter()
            .zip(b)
            .map(|(&p, &q)| (1.0 - w) * f64::from(p) + w * f64::from(q))
            .collect()
    };
    let d = m.ambient_dim();
    Some(
        raw.chunks_exact(d)
            .flat_map(|p| m.project_point(p).into_iter().map(|v| v as f32))
            .collect(),
    )
}

/// The angular velocity (dφ/dt, dψ/dt) of a tangent vector `v` at torus point `p`.
pub fn torus_angular(p: &[f32], v: &[f32]) -> [f64; 2] {
    let g = |s: &[f32], i: usize| f64::from(s.get(i).copied().unwrap_or(0.0));
    [
        -g(p, 1) * g(v, 0) + g(p, 0) * g(v, 1),
        -g(p, 3) * g(v, 2) + g(p, 2) * g(v, 3),
    ]
}

/// Splits a path of angle pairs where it wraps around the square (a jump of
/// more than π in either angle), so no line crosses the whole view.
pub fn split_at_wraps(path: &[[f64; 2]]) -> Vec<Vec<[f64; 2]>> {
    let mut out: Vec<Vec<[f64; 2]>> = Vec::new();
    let mut cur: Vec<[f64; 2]> = Vec::new();
    for p in path {
        if let Some(last) = cur.last()
            && ((p[0] - last[0]).abs() > PI || (p[1] - last[1]).abs() > PI)
        {
            out.push(std::mem::take(&mut cur));
        }
        cur.push(*p);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out.retain(|l| l.len() > 1);
    out
}

fn f3(p: &[f32]) -> [f64; 3] {
    [0, 1, 2].map(|i| f64::from(p.get(i).copied().unwrap_or(0.0)))
}

impl FlowLabApp {
    /// The manifold of the current run (`None` for flat data).
    pub fn run_manifold(&self) -> Option<Manifold> {
        self.run_config.as_ref()?.dataset.manifold()
    }

    /// The preview particles at time `t` on the manifold, flattened `(n, ambient_dim)`.
    pub fn manifold_particles_at_t(&self) -> Option<Vec<f32>> {
        manifold_points_at(self.snapshot.as_ref()?, self.run_manifold()?, self.t)
    }

    /// Paths of the first particles from t = 0 up to `t`, each a list of
    /// points `(ambient_dim)` on the manifold.
    pub fn manifold_paths_to_t(&self) -> Vec<Vec<Vec<f32>>> {
        let (Some(s), Some(m), Some(now)) = (
            self.snapshot.as_ref(),
            self.run_manifold(),
            self.manifold_particles_at_t(),
        ) else {
            return Vec::new();
        };
        let Some((k, _)) = bracket(&s.times, self.t) else {
            return Vec::new();
        };
        let d = m.ambient_dim();
        (0..(now.len() / d).min(MAX_PATHS))
            .map(|i| {
                let mut line: Vec<Vec<f32>> = s
                    .states
                    .iter()
                    .take(k)
                    .filter_map(|st| st.get(d * i..d * (i + 1)).map(<[f32]>::to_vec))
                    .collect();
                if let Some(p) = now.get(d * i..d * (i + 1)) {
                    line.push(p.to_vec());
                }
                line
            })
            .collect()
    }

    /// Target points on the manifold for the current run (cached).
    fn ensure_manifold_data(&mut self) {
        let Some(cfg) = &self.run_config else {
            return;
        };
        let crate::data::DatasetKind::Manifold { set } = cfg.dataset else {
            return;
        };
        let key = (cfg.dataset.clone(), self.data_n, self.data_seed);
        if self.data_for.as_ref() == Some(&key) {
            return;
        }
        self.data_for = Some(key);
        let mut rng = crate::rng::stream_rng(self.data_seed, crate::rng::Stream::Eval, 0);
        self.manifold_data = set.draw_n(self.data_n.min(5000), &mut rng);
    }

    /// Asks for the tangent field when its layer is on and the shown one is stale.
    fn request_tangent_field(&mut self) {
        if self.field_due(self.tangent_field.as_ref().map(|f| f.t)) {
            self.send(Command::TangentField {
                t: self.t,
                n: FIELD_POINTS,
            });
        }
    }

    pub(super) fn manifold_ui(&mut self, ui: &mut egui::Ui, height: f32, m: Manifold) {
        ui.horizontal_wrapped(|ui| {
            match m {
                Manifold::Sphere => ui
                    .label("Flow on the sphere at time t")
                    .on_hover_text("Drag to turn the globe; the far side is drawn faint"),
                Manifold::Torus => ui.label("Flow on the torus at time t").on_hover_text(
                    "The torus cut open: angles φ (across) and ψ (up), each wrapping at ±π",
                ),
            };
            ui.checkbox(&mut self.layers.particles, "particles")
                .on_hover_text("The samples at time t");
            ui.checkbox(&mut self.layers.trajectories, "trajectories")
                .on_hover_text("Each sample's path along the surface from noise (t = 0) up to t");
            ui.checkbox(&mut self.layers.field, "velocity field")
                .on_hover_text("Tangent arrows of v(x, t) at time t");
            ui.checkbox(&mut self.layers.data, "data")
                .on_hover_text("The target distribution");
            if m == Manifold::Sphere && ui.button("Reset view").clicked() {
                self.globe = Globe::default();
            }
        });
        self.ensure_manifold_data();
        self.request_tangent_field();
        let plot_height = height - 114.0;
        match m {
            Manifold::Sphere => self.globe_ui(ui, plot_height),
            Manifold::Torus => self.torus_ui(ui, plot_height),
        }
        self.time_controls_ui(ui);
    }

    fn globe_ui(&mut self, ui: &mut egui::Ui, height: f32) {
        let side = ui.available_width().min(height).max(100.0);
        let (response, painter) =
            ui.allocate_painter(Vec2::new(ui.available_width(), side), Sense::drag());
        if response.dragged() {
            self.globe.drag(response.drag_delta());
        }
        let rect = response.rect;
        let centre = rect.center();
        let r = 0.46 * side;
        let globe = self.globe;
        let to_screen = |v: [f64; 3]| -> Pos2 {
            Pos2::new(centre.x + (v[0] as f32) * r, centre.y - (v[1] as f32) * r)
        };
        painter.rect_filled(rect, 0.0, Color32::from_gray(18));
        painter.circle_filled(centre, r, Color32::from_gray(32));
        // Graticule: parallels every 30°, meridians every 45°; far side dashed-faint.
        let front = Color32::from_gray(90);
        let back = Color32::from_gray(48);
        let draw_curve = |pts: Vec<[f64; 3]>| {
            for w in pts.windows(2) {
                let &[p, q] = w else { continue };
                let (a, b) = (globe.view(p), globe.view(q));
                let colour = if a[2] + b[2] >= 0.0 { front } else { back };
                painter.line_segment([to_screen(a), to_screen(b)], Stroke::new(1.0, colour));
            }
        };
        for lat in [-60.0f64, -30.0, 0.0, 30.0, 60.0] {
            let (sl, cl) = lat.to_radians().sin_cos();
            draw_curve(
                (0..=72)
                    .map(|i| {
                        let (s, c) = (f64::from(i) * 5f64.to_radians()).sin_cos();
                        [cl * c, cl * s, sl]
                    })
                    .collect(),
            );
        }
        for lon in 0..8 {
            let (s, c) = (f64::from(lon) * 45f64.to_radians()).sin_cos();
            draw_curve(
                (0..=36)
                    .map(|i| {
                        let (sl, cl) = (-90.0 + 5.0 * f64::from(i)).to_radians().sin_cos();
                        [cl * c, cl * s, sl]
                    })
                    .collect(),
            );
        }
        painter.circle_stroke(centre, r, Stroke::new(1.5, Color32::from_gray(140)));
        // Marks the north pole so the turn is readable.
        let north = globe.view([0.0, 0.0, 1.0]);
        painter.text(
            to_screen(north),
            egui::Align2::CENTER_BOTTOM,
            "N",
            egui::FontId::proportional(12.0),
            if north[2] >= 0.0 {
                Color32::from_gray(220)
            } else {
                Color32::from_gray(90)
            },
        );
        let mut dots: Vec<Shape> = Vec::new();
        let mut dot = |p: &[f32], colour: Color32, radius: f32| {
            let v = globe.view(f3(p));
            let (c, rad) = if v[2] >= 0.0 {
                (colour, radius)
            } else {
                (colour.gamma_multiply(0.22), radius * 0.7)
            };
            dots.push(Shape::circle_filled(to_screen(v), rad, c));
        };
        if self.layers.data {
            for p in self.manifold_data.chunks_exact(3) {
                dot(p, Color32::from_gray(170), 1.2);
            }
        }
        if self.layers.particles
            && let Some(pts) = self.manifold_particles_at_t()
        {
            for p in pts.chunks_exact(3) {
                dot(p, Color32::from_rgb(240, 90, 90), 1.8);
            }
        }
        if self.layers.trajectories {
            for path in self.manifold_paths_to_t() {
                for w in path.windows(2) {
                    let [p, q] = w else { continue };
                    let (a, b) = (globe.view(f3(p)), globe.view(f3(q)));
                    let alpha = if a[2] + b[2] >= 0.0 { 150 } else { 35 };
                    painter.line_segment(
                        [to_screen(a), to_screen(b)],
                        Stroke::new(1.3, Color32::from_rgba_unmultiplied(120, 200, 255, alpha)),
                    );
                }
            }
        }
        painter.extend(dots);
        if self.layers.field
            && let Some(f) = &self.tangent_field
            && f.manifold == Manifold::Sphere
        {
            let max = f
                .vectors
                .chunks_exact(3)
                .map(|v| v.iter().map(|a| a * a).sum::<f32>().sqrt())
                .fold(1e-6f32, f32::max);
            let k = 0.18 / f64::from(max);
            for (p, v) in f.points.chunks_exact(3).zip(f.vectors.chunks_exact(3)) {
                let a = f3(p);
                let tip = [0, 1, 2].map(|i| a[i] + k * f64::from(v.get(i).copied().unwrap_or(0.0)));
                let (va, vt) = (globe.view(a), globe.view(tip));
                if va[2] < 0.0 {
                    continue;
                }
                let (pa, pt) = (to_screen(va), to_screen(vt));
                painter.arrow(
                    pa,
                    pt - pa,
                    Stroke::new(1.2, Color32::from_rgb(250, 200, 80)),
                );
            }
        }
        response.on_hover_text("Drag to turn the globe");
    }

    fn torus_ui(&mut self, ui: &mut egui::Ui, height: f32) {
        let particles = self.manifold_particles_at_t();
        let paths = if self.layers.trajectories {
            self.manifold_paths_to_t()
        } else {
            Vec::new()
        };
        Plot::new("torus_plot")
            .data_aspect(1.0)
            .legend(Legend::default())
            .height(height)
            .x_axis_label("φ")
            .y_axis_label("ψ")
            .include_x(-PI)
            .include_x(PI)
            .include_y(-PI)
            .include_y(PI)
            .show(ui, |p| {
                let edge = vec![[-PI, -PI], [PI, -PI], [PI, PI], [-PI, PI], [-PI, -PI]];
                p.line(
                    Line::new("period", edge)
                        .color(Color32::from_gray(140))
                        .style(egui_plot::LineStyle::dashed_loose()),
                );
                if self.layers.data {
                    let pts: Vec<[f64; 2]> = self
                        .manifold_data
                        .chunks_exact(4)
                        .map(|q| torus_angles(q).map(f64::from))
                        .collect();
                    p.points(
                        Points::new("data", pts)
                            .radius(1.0)
                            .color(Color32::from_gray(150)),
                    );
                }
                for path in &paths {
                    let angles: Vec<[f64; 2]> = path
                        .iter()
                        .map(|q| torus_angles(q).map(f64::from))
                        .collect();
                    for piece in split_at_wraps(&angles) {
                        p.line(
                            Line::new("trajectories", piece)
                                .color(Color32::from_rgba_unmultiplied(120, 200, 255, 90)),
                        );
                    }
                }
                if self.layers.field
                    && let Some(f) = &self.tangent_field
                    && f.manifold == Manifold::Torus
                {
                    let pairs: Vec<([f64; 2], [f64; 2])> = f
                        .points
                        .chunks_exact(4)
                        .zip(f.vectors.chunks_exact(4))
                        .map(|(q, v)| (torus_angles(q).map(f64::from), torus_angular(q, v)))
                        .collect();
                    let max = pairs
                        .iter()
                        .map(|(_, v)| v[0].hypot(v[1]))
                        .fold(1e-6, f64::max);
                    let cell = 2.0 * PI / (pairs.len() as f64).sqrt().max(1.0);
                    let k = 0.9 * cell / max;
                    let (origins, tips): (Vec<[f64; 2]>, Vec<[f64; 2]>) = pairs
                        .iter()
                        .map(|(a, v)| (*a, [a[0] + k * v[0], a[1] + k * v[1]]))
                        .unzip();
                    p.arrows(
                        Arrows::new("velocity field", origins, tips)
                            .color(Color32::from_rgb(250, 200, 80)),
                    );
                }
                if self.layers.particles
                    && let Some(pts) = &particles
                {
                    let angles: Vec<[f64; 2]> = pts
                        .chunks_exact(4)
                        .map(|q| torus_angles(q).map(f64::from))
                        .collect();
                    p.points(
                        Points::new("samples at t", angles)
                            .radius(1.5)
                            .color(Color32::from_rgb(240, 90, 90)),
                    );
                }
            });
    }
}
