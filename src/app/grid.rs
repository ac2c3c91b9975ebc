//! The image view: the preview grid of an image run (one row per digit when
//! the model is class-conditional) at time t, with the digit picker and the
//! guidance slider. It turns the worker's plain pixel vectors into a texture;
//! it computes no tensors.

use egui::{ColorImage, TextureOptions};
use image::GrayImage;

use super::FlowLabApp;
use super::views::states_around;
use crate::model::ModelConfig;
use crate::train::worker::{Command, SampleSnapshot};

/// Screen pixels per image pixel at most (the grid is scaled down to fit).
const MAX_SCALE: f32 = 4.0;
/// Width of the row-label column.
const LABEL_WIDTH: f32 = 22.0;
/// Image pixels per grid pixel in the exported PNG.
pub const PNG_SCALE: u32 = 4;

/// Grey of a masked pixel of a discrete flow (between the grey levels).
pub const MASK_GREY: f32 = 128.0;

/// The preview grid of `s` at time `t` (pixels 0-255), interpolated linearly
/// between the solver states around t (a discrete flow's tokens hold between
/// steps; masked pixels are [`MASK_GREY`]). `None` unless `s` holds
/// one-channel images `(1, rows, cols)`.
pub fn grid_at(s: &SampleSnapshot, t: f64) -> Option<GrayImage> {
    let &[1, rows, cols] = s.sample_shape.as_slice() else {
        return None;
    };
    let (lo, hi, w) = states_around(s, t)?;
    let w = w as f32;
    let px: Vec<f32> = lo
        .iter()
        .zip(hi)
        .map(|(a, b)| {
            let v = a + w * (b - a);
            if v.is_nan() { MASK_GREY } else { v }
        })
        .collect();
    Some(crate::plot::image_grid(&px, rows, cols, s.columns.max(1)))
}

/// The class of each grid row of `s` (empty when unconditional).
pub fn row_labels(s: &SampleSnapshot) -> Vec<u32> {
    s.labels
        .chunks(s.columns.max(1))
        .filter_map(|row| row.first().copied())
        .collect()
}

impl FlowLabApp {
    /// Whether the current run learns images (the image view replaces the 2D flow view).
    pub fn is_image_run(&self) -> bool {
        self.run_config
            .as_ref()
            .is_some_and(|c| c.dataset.is_image())
    }

    /// Classes the current run's model is conditioned on (0: unconditional).
    pub fn run_classes(&self) -> usize {
        match self.run_config.as_ref().map(|c| c.model.network()) {
            Some(ModelConfig::Unet(u)) => u.classes,
            _ => 0,
        }
    }

    /// Applies the live settings and asks for a fresh preview (the one being
    /// drawn, if any, is abandoned).
    pub fn resample(&mut self) {
        self.send(Command::SetLive(self.live));
        self.send(Command::SampleNow);
        self.preview_pending = true;
    }

    pub(super) fn grid_ui(&mut self, ui: &mut egui::Ui, height: f32) {
        let classes = self.run_classes();
        ui.horizontal(|ui| {
            ui.label("Samples at time t").on_hover_text(
                "A fixed batch of noise pushed through the flow: the same noise at every refresh, so what changes is the model",
            );
            if ui
                .button("Resample")
                .on_hover_text("Draw the grid again with the current weights and solver")
                .clicked()
            {
                self.resample();
            }
            if self.preview_pending {
                ui.spinner();
                ui.label("sampling...");
            }
        });
        ui.horizontal(|ui| {
            if classes > 0 {
                let before = (self.live.class, self.live.guidance);
                let text = match self.live.class {
                    None => "every digit".to_string(),
                    Some(c) => format!("digit {c}"),
                };
                egui::ComboBox::from_label("class")
                    .selected_text(text)
                    .height(320.0)
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut self.live.class, None, "every digit (a row each)");
                        for c in 0..classes as u32 {
                            ui.selectable_value(&mut self.live.class, Some(c), format!("digit {c}"));
                        }
                    })
                    .response
                    .on_hover_text("The class every sample is drawn from, or each class in its own row");
                ui.add(
                    egui::Slider::new(&mut self.live.guidance, 0.0..=8.0)
                        .text("guidance w")
                        .fixed_decimals(1),
                )
                .on_hover_text(
                    "Classifier-free guidance v = v_uncond + w (v_cond - v_uncond): 0 ignores the class, 1 is plain conditional, above 1 sharpens the class",
                );
                if (self.live.class, self.live.guidance) != before {
                    self.resample();
                }
            } else {
                ui.label("unconditional model: no class to pick");
            }
        });
        self.update_grid_texture(ui.ctx());
        let avail = egui::vec2(
            ui.available_width() - LABEL_WIDTH,
            (height - 115.0).max(64.0),
        );
        match (&self.grid_texture, &self.snapshot) {
            (Some((_, tex)), Some(s)) => {
                let size = tex.size_vec2();
                let scale = (avail.x / size.x).min(avail.y / size.y).min(MAX_SCALE);
                let shown = size * scale.max(0.1);
                let labels = row_labels(s);
                ui.horizontal(|ui| {
                    let (rect, _) = ui.allocate_exact_size(
                        egui::vec2(LABEL_WIDTH, shown.y),
                        egui::Sense::hover(),
                    );
                    let rows = labels.len().max(1) as f32;
                    for (r, l) in labels.iter().enumerate() {
                        let y = rect.top() + shown.y * (r as f32 + 0.5) / rows;
                        ui.painter().text(
                            egui::pos2(rect.center().x, y),
                            egui::Align2::CENTER_CENTER,
                            l.to_string(),
                            egui::FontId::monospace(14.0),
                            ui.visuals().text_color(),
                        );
                    }
                    ui.add(egui::Image::new((tex.id(), shown)))
                        .on_hover_text(format!(
                            "step {} · {} function evaluations{}",
                            s.step,
                            s.nfe,
                            s.guidance
                                .map_or(String::new(), |g| format!(" · guidance {g:.1}"))
                        ));
                });
            }
            _ => {
                ui.allocate_ui(avail, |ui| {
                    ui.label("No samples yet: train, or open a checkpoint.");
                });
            }
        }
        self.time_controls_ui(ui);
    }

    /// Rebuilds the grid texture when the preview or t changed.
    fn update_grid_texture(&mut self, ctx: &egui::Context) {
        let key = (self.snapshot_gen, self.t.to_bits());
        if self.grid_texture.as_ref().is_some_and(|(k, _)| *k == key) {
            return;
        }
        let Some(img) = self.snapshot.as_ref().and_then(|s| grid_at(s, self.t)) else {
            return;
        };
        let ci = ColorImage::from_gray([img.width() as usize, img.height() as usize], img.as_raw());
        match &mut self.grid_texture {
            Some((k, tex)) => {
                tex.set(ci, TextureOptions::NEAREST);
                *k = key;
            }
            None => {
                self.grid_texture = Some((
                    key,
                    ctx.load_texture("sample_grid", ci, TextureOptions::NEAREST),
                ));
            }
        }
    }

    /// The image grid at the current t, enlarged [`PNG_SCALE`] times.
    pub fn grid_image(&self) -> crate::Result<GrayImage> {
        let img = self
            .snapshot
            .as_ref()
            .and_then(|s| grid_at(s, self.t))
            .ok_or_else(|| crate::Error::config("there are no image samples to export yet"))?;
        Ok(image::imageops::resize(
            &img,
            img.width() * PNG_SCALE,
            img.height() * PNG_SCALE,
            image::imageops::FilterType::Nearest,
        ))
    }
}
