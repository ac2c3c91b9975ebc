//! The left settings panel. Settings marked (new run) need a new run; the others are live.

use super::FlowLabApp;
use crate::data::{DatasetKind, Toy2d};
use crate::flow::{Scheduler, TimeSampling};
use crate::model::{Activation, ModelConfig};
use crate::solver::SolverKind;
use crate::train::worker::Command;

impl FlowLabApp {
    pub(super) fn settings_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Data (new run)");
        let current = self.config.dataset.name();
        egui::ComboBox::from_label("dataset")
            .selected_text(current)
            .show_ui(ui, |ui| {
                for toy in Toy2d::ALL {
                    if ui
                        .selectable_label(current == toy.name(), toy.name())
                        .clicked()
                    {
                        self.config.dataset = DatasetKind::Toy2d { toy };
                    }
                }
            })
            .response
            .on_hover_text("The 2D distribution to learn (needs a new run)");
        if let DatasetKind::Toy2d { toy } = &mut self.config.dataset
            && let Some(mut noise) = toy.noise()
            && ui
                .add(egui::Slider::new(&mut noise, 0.0..=1.0).text("noise"))
                .on_hover_text("Spread of the data around its shape")
                .changed()
        {
            *toy = toy.with_noise(noise);
        }

        ui.separator();
        ui.heading("Model (new run)");
        let ModelConfig::Mlp(m) = &mut self.config.model;
        ui.add(
            egui::Slider::new(&mut m.width, 16..=1024)
                .logarithmic(true)
                .text("width"),
        )
        .on_hover_text("Units per hidden layer");
        ui.add(egui::Slider::new(&mut m.depth, 1..=8).text("depth"))
            .on_hover_text("Number of hidden layers");
        egui::ComboBox::from_label("activation")
            .selected_text(m.activation.name())
            .show_ui(ui, |ui| {
                for a in Activation::ALL {
                    ui.selectable_value(&mut m.activation, a, a.name());
                }
            });
        ui.label(format!(
            "{} parameters in the current run",
            self.param_count
        ));

        ui.separator();
        ui.heading("Path (new run)");
        egui::ComboBox::from_label("scheduler")
            .selected_text(self.config.scheduler.name())
            .show_ui(ui, |ui| {
                for s in Scheduler::ALL {
                    ui.selectable_value(&mut self.config.scheduler, s, s.name());
                }
            })
            .response
            .on_hover_text(
                "alpha_t, sigma_t of x_t = alpha_t x_1 + sigma_t x_0 (t = 0 noise, t = 1 data)",
            );
        egui::ComboBox::from_label("time sampling")
            .selected_text(self.config.time_sampling.name())
            .show_ui(ui, |ui| {
                for s in [TimeSampling::Uniform, TimeSampling::LOGIT_NORMAL] {
                    ui.selectable_value(&mut self.config.time_sampling, s, s.name());
                }
            });

        ui.separator();
        ui.heading("Optimizer");
        let mut lr = self.live.lr;
        if ui
            .add(
                egui::Slider::new(&mut lr, 1e-5..=1e-1)
                    .logarithmic(true)
                    .text("learning rate"),
            )
            .on_hover_text("Peak learning rate; applies at the next step (live)")
            .changed()
        {
            self.live.lr = lr;
            self.config.optimizer.lr = lr;
            self.send(Command::SetLive(self.live));
        }
        ui.add(
            egui::Slider::new(&mut self.config.batch_size, 16..=4096)
                .logarithmic(true)
                .text("batch (new run)"),
        )
        .on_hover_text("Samples per step (needs a new run)");
        ui.add(
            egui::Slider::new(&mut self.config.steps, 100..=100_000)
                .logarithmic(true)
                .text("steps (new run)"),
        )
        .on_hover_text("Total training steps");
        ui.horizontal(|ui| {
            ui.label("seed (new run)");
            ui.add(egui::DragValue::new(&mut self.config.seed))
                .on_hover_text(
                    "Seed of every random draw: the same settings and seed give the same run",
                );
        });

        ui.separator();
        ui.heading("Solver (live)");
        let before = self.live;
        egui::ComboBox::from_label("method")
            .selected_text(self.live.solver.kind.name())
            .show_ui(ui, |ui| {
                for k in SolverKind::ALL {
                    ui.selectable_value(&mut self.live.solver.kind, k, k.name());
                }
            })
            .response
            .on_hover_text("ODE solver for samples and trajectories");
        if self.live.solver.kind == SolverKind::Dopri5 {
            ui.add(
                egui::Slider::new(&mut self.live.solver.rtol, 1e-7..=1e-2)
                    .logarithmic(true)
                    .text("rtol"),
            );
            self.live.solver.atol = self.live.solver.rtol;
        } else {
            ui.add(egui::Slider::new(&mut self.live.solver.steps, 1..=100).text("steps"))
                .on_hover_text("Fixed steps from t = 0 to 1 on the grid t_k = k/N");
        }
        if let Some(s) = &self.snapshot {
            ui.label(format!("NFE {}", s.nfe));
        }
        ui.add(
            egui::Slider::new(&mut self.live.preview_every, 10..=1000)
                .logarithmic(true)
                .text("preview every"),
        )
        .on_hover_text("Refresh the samples every this many steps");
        if self.live != before {
            self.send(Command::SetLive(self.live));
            self.send(Command::SampleNow);
        }

        ui.separator();
        let changed = self.run_config.as_ref() != Some(&self.config);
        let button = egui::Button::new(if changed {
            "Train a new run with these settings"
        } else {
            "New run"
        });
        if ui
            .add(button)
            .on_hover_text("Discard the current model and train from scratch")
            .clicked()
        {
            self.train_new();
        }
        if changed {
            ui.label("Settings marked (new run) changed: they apply to a new run.");
        }
    }
}
