//! The left settings panel. Settings marked (new run) need a new run; the others are live.

use super::FlowLabApp;
use crate::data::{DatasetKind, ManifoldSet, Toy2d};
use crate::flow::{Coupling, Scheduler, Source, TimeSampling};
use crate::model::{Activation, ModelConfig};
use crate::solver::SolverKind;
use crate::train::worker::Command;

impl FlowLabApp {
    pub(super) fn settings_ui(&mut self, ui: &mut egui::Ui) {
        ui.heading("Data (new run)");
        let current = self.config.dataset.name();
        egui::ComboBox::from_label("dataset")
            .selected_text(current)
            .height(440.0)
            .show_ui(ui, |ui| {
                for toy in Toy2d::ALL {
                    ui.horizontal(|ui| {
                        thumbnail_ui(ui, &toy);
                        if ui
                            .selectable_label(current == toy.name(), toy.name())
                            .clicked()
                        {
                            self.config = self.config.with_dataset(DatasetKind::Toy2d { toy });
                        }
                    });
                }
                ui.separator();
                ui.horizontal(|ui| {
                    digit_thumbnail_ui(ui);
                    if ui
                        .selectable_label(current == "mnist", "mnist")
                        .on_hover_text("60,000 handwritten digits, 28x28 (a UNet learns them)")
                        .clicked()
                    {
                        self.config = self.config.with_dataset(DatasetKind::Mnist { dir: None });
                    }
                });
                ui.separator();
                for set in ManifoldSet::ALL {
                    let hover = match set {
                        ManifoldSet::SphereVmf { .. } => {
                            "Four von Mises-Fisher clusters on the sphere"
                        }
                        ManifoldSet::SphereCheckerboard => {
                            "A checkerboard of 8 longitude x 4 latitude cells on the sphere"
                        }
                        ManifoldSet::TorusCheckerboard => {
                            "A 4x4 checkerboard on the torus (angles wrap at ±π)"
                        }
                        ManifoldSet::TorusProtein => {
                            "Wrapped Gaussians where protein backbone angles (φ, ψ) gather: β-sheet and helices"
                        }
                    };
                    if ui
                        .selectable_label(current == set.name(), set.name())
                        .on_hover_text(hover)
                        .clicked()
                    {
                        self.config = self.config.with_dataset(DatasetKind::Manifold { set });
                    }
                }
            })
            .response
            .on_hover_text(
                "The distribution to learn: a 2D set, MNIST digits, or a distribution on the sphere or the torus (needs a new run)",
            );
        if let DatasetKind::Manifold {
            set: ManifoldSet::SphereVmf { kappa },
        } = &mut self.config.dataset
        {
            ui.add(
                egui::Slider::new(kappa, 1.0..=500.0)
                    .logarithmic(true)
                    .text("concentration κ"),
            )
            .on_hover_text("How tight the clusters are");
        }
        if let DatasetKind::Toy2d { toy } = &mut self.config.dataset
            && let Some(mut noise) = toy.noise()
            && ui
                .add(egui::Slider::new(&mut noise, 0.0..=1.0).text("noise"))
                .on_hover_text("Spread of the data around its shape")
                .changed()
        {
            *toy = toy.with_noise(noise);
        }

        if self.config.dataset.is_image()
            && ui
                .button("Open the pretrained MNIST model")
                .on_hover_text("A class-conditional UNet trained with the CLI (see the README); it samples at once")
                .clicked()
        {
            self.open_pretrained(super::Pretrained::Mnist);
        }

        if self.config.dataset.manifold().is_none() {
            self.flow_kind_ui(ui);
        }

        ui.separator();
        ui.heading("Model (new run)");
        let discrete = self.config.discrete.is_some();
        match self.config.model.network_mut() {
            ModelConfig::Mlp(m) => {
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
                    })
                    .response
                    .on_hover_text("Nonlinearity between hidden layers (needs a new run)");
                ui.add(egui::Slider::new(&mut m.fourier_features, 0..=256).text("Fourier features"))
                    .on_hover_text(
                        "Inputs sin(Bx), cos(Bx) for random frequencies B: lets the network follow sharp patterns such as checkerboards on a manifold (0: off)",
                    );
                let dim = self
                    .config
                    .dataset
                    .manifold()
                    .map_or(2, |m| m.ambient_dim());
                if !discrete {
                    ui.label(format!(
                        "{} parameters with these settings",
                        m.param_count(dim)
                    ));
                }
            }
            ModelConfig::Unet(u) => {
                let sizes: [(&str, [usize; 3]); 3] = [
                    ("small", [16, 32, 64]),
                    ("default", [32, 64, 128]),
                    ("large", [64, 128, 256]),
                ];
                let name = sizes
                    .iter()
                    .find(|(_, c)| u.channels == c.as_slice())
                    .map_or("custom", |(n, _)| n);
                egui::ComboBox::from_label("UNet size")
                    .selected_text(format!("{name} {:?}", u.channels))
                    .show_ui(ui, |ui| {
                        for (n, c) in sizes {
                            if ui
                                .selectable_label(u.channels == c, format!("{n} {c:?}"))
                                .clicked()
                            {
                                u.channels = c.to_vec();
                            }
                        }
                    })
                    .response
                    .on_hover_text("Channels at 28x28, 14x14 and 7x7 (needs a new run)");
                ui.add(egui::Slider::new(&mut u.blocks, 1..=3).text("blocks per level"))
                    .on_hover_text("Residual blocks at each resolution, on each side");
                ui.checkbox(&mut u.attention, "self-attention at 7x7")
                    .on_hover_text("One attention layer at the lowest resolution");
                let mut conditional = u.classes > 0;
                if ui
                    .checkbox(&mut conditional, "class-conditional (digits)")
                    .on_hover_text(
                        "Learn v(x, t | digit) with a null class, so samples can be asked for by digit with classifier-free guidance",
                    )
                    .changed()
                {
                    u.classes = if conditional {
                        crate::train::config::MNIST_CLASSES
                    } else {
                        0
                    };
                }
                if conditional {
                    ui.add(
                        egui::Slider::new(&mut self.config.label_dropout, 0.0..=0.5)
                            .text("label dropout"),
                    )
                    .on_hover_text(
                        "Share of training samples shown with the null class, which teaches the unconditional velocity that guidance needs",
                    );
                }
            }
            ModelConfig::Tokens(_) => {}
        }
        ui.label(format!(
            "{} parameters in the current run",
            self.param_count
        ));

        ui.separator();
        ui.heading("Path (new run)");
        if let Some(m) = self.config.dataset.manifold() {
            ui.label(format!(
                "Geodesic path on the {0}: x_t = exp_x0(t log_x0(x1)), from the uniform distribution on the {0}, with independent pairs.",
                m.name()
            ));
        } else if let Some(dc) = self.config.discrete {
            ui.label(format!(
                "Mixture path of tokens: each coordinate jumps once from the {} source to the data, by time t with chance κ_t = t^{}.",
                dc.source.name(),
                dc.kappa_power
            ));
            ui.horizontal(|ui| {
                egui::ComboBox::from_label("time sampling")
                    .selected_text(self.config.time_sampling.name())
                    .show_ui(ui, |ui| {
                        for s in [TimeSampling::Uniform, TimeSampling::LOGIT_NORMAL] {
                            ui.selectable_value(&mut self.config.time_sampling, s, s.name());
                        }
                    });
            });
        } else {
            self.path_settings_ui(ui);
        }
        self.optimizer_ui(ui);
    }

    /// Continuous (ODE) or discrete (token) flow, and the discrete settings.
    fn flow_kind_ui(&mut self, ui: &mut egui::Ui) {
        use crate::discrete::{DiscreteConfig, DiscreteLoss, DiscreteSource};
        ui.horizontal(|ui| {
            let mut discrete = self.config.discrete.is_some();
            let a = ui
                .radio_value(&mut discrete, false, "continuous")
                .on_hover_text("An ODE flow of real values (velocity field)");
            let b = ui
                .radio_value(&mut discrete, true, "discrete")
                .on_hover_text("A flow of tokens (a continuous-time Markov chain): 2D points on a grid of bins, or a few grey levels per pixel");
            if a.changed() || b.changed() {
                let dc = discrete.then(|| {
                    if self.config.dataset.is_image() {
                        DiscreteConfig::for_images()
                    } else {
                        DiscreteConfig::default()
                    }
                });
                self.config = self.config.with_discrete(dc);
            }
        });
        let Some(mut dc) = self.config.discrete else {
            return;
        };
        egui::ComboBox::from_label("token source")
            .selected_text(dc.source.name())
            .show_ui(ui, |ui| {
                for s in DiscreteSource::ALL {
                    ui.selectable_value(&mut dc.source, s, s.name());
                }
            })
            .response
            .on_hover_text("Where tokens start: all masked (unmasking), or uniform (jumping)");
        let max = if self.config.dataset.is_image() {
            16
        } else {
            256
        };
        ui.add(egui::Slider::new(&mut dc.levels, 2..=max).text("levels"))
            .on_hover_text("Tokens per coordinate: bins per axis (2D) or grey levels (images)");
        ui.add(egui::Slider::new(&mut dc.kappa_power, 0.25..=4.0).text("κ power"))
            .on_hover_text(
                "The scheduler κ_t = t^n: the chance that a token has reached the data by time t",
            );
        egui::ComboBox::from_label("token loss")
            .selected_text(dc.loss.name())
            .show_ui(ui, |ui| {
                for l in DiscreteLoss::ALL {
                    ui.selectable_value(&mut dc.loss, l, l.name());
                }
            })
            .response
            .on_hover_text(
                "Cross-entropy of p(x_1 | x_t), or the generalised KL of the jump rates",
            );
        if Some(dc) != self.config.discrete {
            self.config = self.config.with_discrete(Some(dc));
        }
    }

    fn path_settings_ui(&mut self, ui: &mut egui::Ui) {
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
            })
            .response
            .on_hover_text(
                "How training times are drawn: uniform, or logit-normal (more weight mid-path)",
            );
        if !self.config.dataset.is_image() {
            egui::ComboBox::from_label("source")
                .selected_text(self.config.source.name())
                .height(400.0)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.config.source, Source::Gaussian, "gaussian");
                    for toy in Toy2d::ALL {
                        ui.selectable_value(
                            &mut self.config.source,
                            Source::Toy2d { toy },
                            toy.name(),
                        );
                    }
                })
                .response
                .on_hover_text(
                    "The distribution at t = 0: the Gaussian, or a 2D set (e.g. 8gaussians -> moons)",
                );
        }
        egui::ComboBox::from_label("coupling")
            .selected_text(self.config.coupling.name())
            .show_ui(ui, |ui| {
                for c in Coupling::ALL {
                    if ui
                        .selectable_label(self.config.coupling.name() == c.name(), c.name())
                        .clicked()
                    {
                        self.config.coupling = c;
                    }
                }
            })
            .response
            .on_hover_text(
                "How noise and data points are paired in a batch: independently, by exact optimal transport (straighter paths, fewer solver steps), or by entropic OT (Sinkhorn)",
            );
        if let Coupling::Sinkhorn { reg } = &mut self.config.coupling {
            ui.add(
                egui::Slider::new(reg, 0.005..=2.0)
                    .logarithmic(true)
                    .text("entropy"),
            )
            .on_hover_text("Sinkhorn's entropy relative to the mean squared distance: small is close to exact OT, large to independent pairs");
        }
        if self.config.dataset.is_image() && self.config.coupling != Coupling::Independent {
            ui.checkbox(
                &mut self.config.coupling_per_class,
                "pair within each class",
            )
            .on_hover_text("Only pair noise with digits of the same class");
        }
    }

    fn optimizer_ui(&mut self, ui: &mut egui::Ui) {
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
            // Live: the running model takes it too, so Train resumes it.
            if let Some(rc) = self.run_config.as_mut() {
                rc.optimizer.lr = lr;
            }
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
        ui.add(
            egui::Slider::new(&mut self.config.optimizer.weight_decay, 0.0..=0.1)
                .text("weight decay (new run)"),
        )
        .on_hover_text("Decoupled AdamW weight decay");
        let mut clip = self.config.optimizer.grad_clip.is_some();
        ui.horizontal(|ui| {
            ui.checkbox(&mut clip, "clip gradients")
                .on_hover_text("Clip the global gradient norm");
            let mut v = self.config.optimizer.grad_clip.unwrap_or(1.0);
            if clip {
                let l = ui.label("max norm");
                ui.add(egui::DragValue::new(&mut v).range(0.01..=100.0).speed(0.05))
                    .labelled_by(l.id);
            }
            self.config.optimizer.grad_clip = clip.then_some(v);
        });
        ui.add(
            egui::Slider::new(&mut self.config.optimizer.warmup_steps, 0..=2000)
                .text("warm-up steps (new run)"),
        )
        .on_hover_text("Linear warm-up, then cosine decay");
        let mut ema = self.config.ema_decay.is_some();
        ui.horizontal(|ui| {
            ui.checkbox(&mut ema, "EMA of weights")
                .on_hover_text("Sample from an exponential moving average of the weights");
            let mut d = self.config.ema_decay.unwrap_or(0.999);
            if ema {
                let l = ui.label("decay");
                ui.add(
                    egui::DragValue::new(&mut d)
                        .range(0.5..=0.9999)
                        .speed(0.0005)
                        .fixed_decimals(4),
                )
                .labelled_by(l.id);
            }
            self.config.ema_decay = ema.then_some(d);
        });
        ui.horizontal(|ui| {
            let l = ui.label("seed (new run)");
            ui.add(egui::DragValue::new(&mut self.config.seed))
                .labelled_by(l.id)
                .on_hover_text(
                    "Seed of every random draw: the same settings and seed give the same run",
                );
            ui.checkbox(&mut self.seed_locked, "lock").on_hover_text(
                "Locked: new runs keep this seed. Unlocked: each new run draws a fresh seed",
            );
        });

        ui.separator();
        ui.heading("Solver (live)");
        let before = self.live;
        if self.is_discrete_run() {
            ui.label("discrete Euler (token jumps)")
                .on_hover_text("Each step, every token jumps to a draw from the predicted p(x_1 | x_t) with the chance that the path's jump falls in the step");
            ui.add(egui::Slider::new(&mut self.live.solver.steps, 1..=200).text("steps"))
                .on_hover_text("Steps from t = 0 to 1");
            ui.add(egui::Slider::new(&mut self.live.corrector, 0.0..=10.0).text("corrector"))
                .on_hover_text(
                    "Corrector strength c: tokens also jump back towards the source, so the sampler can revise early choices (0: off)",
                );
        } else {
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
        }
        if self.run_manifold().is_none() && !self.is_discrete_run() {
            let trained = self.run_config.as_ref().map(|c| c.scheduler);
            let shown = match (self.live.sample_scheduler, trained) {
                (Some(s), _) => s.name().to_string(),
                (None, Some(t)) => format!("as trained ({})", t.name()),
                (None, None) => "as trained".to_string(),
            };
            egui::ComboBox::from_label("sample as")
                .selected_text(shown)
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut self.live.sample_scheduler, None, "as trained");
                    for s in Scheduler::ALL {
                        ui.selectable_value(&mut self.live.sample_scheduler, Some(s), s.name());
                    }
                })
                .response
                .on_hover_text(
                    "Sample as if the model had been trained with another scheduler: the same data at t = 1, other paths (scheduler change by SNR matching)",
                );
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
        ui.heading("Device");
        self.device_ui(ui);

        ui.separator();
        ui.heading("Autosave");
        self.autosave_settings_ui(ui);

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

/// A 36x36 preview of a toy set (drawn once from a fixed seed, kept in egui's memory).
fn thumbnail_ui(ui: &mut egui::Ui, toy: &Toy2d) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(36.0, 36.0), egui::Sense::hover());
    let id = egui::Id::NULL.with(("thumbnail", toy.name()));
    let pts: std::sync::Arc<Vec<[f32; 2]>> = ui.ctx().memory_mut(|m| {
        m.data
            .get_temp_mut_or_insert_with(id, || {
                let ds = crate::data::ToyDataset::new(*toy);
                let mut rng = crate::rng::stream_rng(0, crate::rng::Stream::Eval, 9);
                let v = crate::data::Dataset::sample_train(&ds, 300, &mut rng);
                std::sync::Arc::new(v.as_chunks::<2>().0.to_vec())
            })
            .clone()
    });
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, ui.visuals().extreme_bg_color);
    for &[x, y] in pts.iter() {
        // Model space is standardised: about [-2.5, 2.5] covers the sets.
        let p = rect.center() + egui::vec2(x * 7.0, -y * 7.0);
        if rect.contains(p) {
            painter.circle_filled(p, 0.8, egui::Color32::from_rgb(240, 110, 110));
        }
    }
}

/// A 36x36 digit "7" drawn with strokes (no data needs loading for the menu).
fn digit_thumbnail_ui(ui: &mut egui::Ui) {
    let (rect, _) = ui.allocate_exact_size(egui::vec2(36.0, 36.0), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    painter.rect_filled(rect, 3.0, egui::Color32::BLACK);
    let p = |x: f32, y: f32| rect.min + egui::vec2(x, y);
    let stroke = egui::Stroke::new(3.0, egui::Color32::WHITE);
    painter.line_segment([p(9.0, 9.0), p(27.0, 9.0)], stroke);
    painter.line_segment([p(27.0, 9.0), p(16.0, 29.0)], stroke);
}
