//! The central views: the loss curve and the flow at time t.

use egui_plot::{Legend, Line, Plot, Points};

use super::FlowLabApp;

impl FlowLabApp {
    pub(super) fn views_ui(&mut self, ui: &mut egui::Ui) {
        let width = ui.available_width();
        let height = ui.available_height();
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.set_width(width * 0.38);
                ui.label("Loss");
                Plot::new("loss_plot")
                    .legend(Legend::default())
                    .height(height - 30.0)
                    .show(ui, |p| {
                        p.line(Line::new("training loss", self.loss.clone()));
                        p.line(Line::new("held-out loss", self.held_out.clone()));
                    });
            });
            ui.vertical(|ui| {
                ui.label("Flow: samples at time t");
                Plot::new("flow_plot")
                    .data_aspect(1.0)
                    .legend(Legend::default())
                    .height(height - 60.0)
                    .show(ui, |p| {
                        if let Some(pts) = self.particles_at_t() {
                            p.points(Points::new("samples at t", pts).radius(1.5));
                        }
                    });
                ui.add(
                    egui::Slider::new(&mut self.t, 0.0..=1.0)
                        .text("t (noise -> data)")
                        .fixed_decimals(2),
                )
                .on_hover_text("Scrub the flow from noise (t = 0) to data (t = 1)");
            });
        });
    }

    /// The preview particles at time `t`, linearly interpolated between solver states.
    pub fn particles_at_t(&self) -> Option<Vec<[f64; 2]>> {
        let s = self.snapshot.as_ref()?;
        if s.sample_shape != [2] {
            return None;
        }
        let k = s
            .times
            .iter()
            .position(|&u| u >= self.t)
            .unwrap_or(s.times.len().saturating_sub(1));
        let (hi, lo) = (s.states.get(k)?, s.states.get(k.saturating_sub(1))?);
        let (t_hi, t_lo) = (*s.times.get(k)?, *s.times.get(k.saturating_sub(1))?);
        let w = if t_hi > t_lo {
            ((self.t - t_lo) / (t_hi - t_lo)).clamp(0.0, 1.0)
        } else {
            1.0
        };
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
}
