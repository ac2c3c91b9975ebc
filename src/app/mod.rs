//! The FlowLab desktop app (eframe/egui). Views draw state and queue commands
//! for the training worker; they never compute tensors.
//!
//! Layout: a top bar (run controls), a left settings panel, the central views
//! (loss curve, flow at time t) and a bottom status bar.

mod autosave;
mod device;
mod files;
pub mod frame_bench;
mod grid;
pub mod manifold_view;
mod quality;
mod settings;
mod views;

pub use autosave::{AutosaveSettings, default_autosave_dir};
pub use grid::{MASK_GREY, PNG_SCALE, grid_at, row_labels};
pub use quality::{LeftView, QualityEntry};
pub use views::{Layers, LossView, Playback, density, particles_at, smooth};

use std::sync::Arc;
use std::time::Duration;

use candle_core::Device;

use crate::data::DatasetKind;
use crate::train::worker::{
    Command, DensitySnapshot, Event, FieldSnapshot, LiveSettings, SampleSnapshot, Worker,
};
use crate::train::{StepReport, TrainConfig};
pub use device::DeviceChoice;

/// The pretrained moons model shown at start-up (made with the CLI; see the README).
const PRETRAINED_MOONS: &[u8] = include_bytes!("../../weights/moons.safetensors");
/// The pretrained class-conditional MNIST UNet (weights only; see the README).
const PRETRAINED_MNIST: &[u8] = include_bytes!("../../weights/mnist.safetensors");

/// The pretrained models that ship inside the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pretrained {
    /// An MLP trained on two moons.
    Moons,
    /// A class-conditional UNet trained on MNIST.
    Mnist,
}

impl Pretrained {
    /// Its name in messages and menus.
    pub fn name(self) -> &'static str {
        match self {
            Pretrained::Moons => "pretrained moons",
            Pretrained::Mnist => "pretrained MNIST",
        }
    }

    /// Looks a pretrained model up by its short name (`moons`, `mnist`).
    pub fn from_name(name: &str) -> Option<Pretrained> {
        match name {
            "moons" => Some(Pretrained::Moons),
            "mnist" => Some(Pretrained::Mnist),
            _ => None,
        }
    }

    fn bytes(self) -> &'static [u8] {
        match self {
            Pretrained::Moons => PRETRAINED_MOONS,
            Pretrained::Mnist => PRETRAINED_MNIST,
        }
    }
}

/// Longest time a frame spends taking worker events.
const DRAIN_BUDGET: Duration = Duration::from_millis(4);

/// Most loss points kept; older history is thinned to half when this is reached.
const MAX_LOSS_POINTS: usize = 20_000;

/// What the app remembers across restarts (eframe persistence).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// The edited training settings.
    pub config: TrainConfig,
    /// Live settings.
    pub live: LiveSettings,
    /// Flow-view layers.
    pub layers: Layers,
    /// Loss-view options.
    pub loss_view: LossView,
    /// Time playback.
    pub playback: Playback,
    /// Keep the seed for new runs (otherwise each new run draws a fresh one).
    pub seed_locked: bool,
    /// Autosave settings.
    pub autosave: AutosaveSettings,
}

impl Default for Persisted {
    fn default() -> Self {
        let config = TrainConfig::default();
        Persisted {
            live: LiveSettings::for_config(&config),
            config,
            layers: Layers::default(),
            loss_view: LossView::default(),
            playback: Playback::default(),
            seed_locked: true,
            autosave: AutosaveSettings::default(),
        }
    }
}

/// The app's state.
pub struct FlowLabApp {
    worker: Option<Worker>,
    dialog: Option<files::Dialog>,
    repaint: Arc<dyn Fn() + Send + Sync>,
    /// Whether the "start a new run?" question is showing.
    pub confirm_new_run: bool,
    /// Keep the seed for new runs.
    pub seed_locked: bool,
    /// Steps run by the Step button.
    pub step_n: u64,
    /// Whether the next loaded run's config replaces the edited settings
    /// (false only for the start-up model when settings were restored).
    adopt_config: bool,
    /// The settings being edited (applied on Train/Apply).
    pub config: TrainConfig,
    /// The config of the run the worker holds.
    pub run_config: Option<TrainConfig>,
    /// Live settings (solver, preview rate, lr).
    pub live: LiveSettings,
    /// (step, loss) of every reported step (thinned when long).
    pub loss: Vec<[f64; 2]>,
    /// (step, held-out loss).
    pub held_out: Vec<[f64; 2]>,
    /// The latest progress report.
    pub last: Option<StepReport>,
    /// The latest preview.
    pub snapshot: Option<SampleSnapshot>,
    /// Counts previews received (keys the image-grid texture).
    snapshot_gen: u64,
    /// Whether a requested preview has not arrived yet.
    pub preview_pending: bool,
    /// The image grid at t, keyed by (preview, t).
    grid_texture: Option<((u64, u64), egui::TextureHandle)>,
    /// What the left column shows.
    pub left_view: LeftView,
    /// Quality-against-NFE measurements, oldest first.
    pub quality: Vec<QualityEntry>,
    /// Whether a quality measurement is running.
    pub quality_pending: bool,
    /// The learned density on a grid (from the worker).
    pub learned: Option<DensitySnapshot>,
    /// Whether a learned density was asked for and has not arrived.
    pub learned_pending: bool,
    /// The time shown in the flow view, 0 = noise, 1 = data.
    pub t: f64,
    /// Whether the worker is training.
    pub running: bool,
    /// Steps done by the current run.
    pub step: u64,
    /// Parameters of the current run's model.
    pub param_count: usize,
    /// One line for the person (what just happened or what went wrong).
    pub status: String,
    /// Whether `status` is an error.
    pub status_is_error: bool,
    /// Which layers the flow view draws.
    pub layers: Layers,
    /// Loss-view options.
    pub loss_view: LossView,
    /// Time-slider playback.
    pub playback: Playback,
    /// The latest velocity field from the worker.
    pub field: Option<FieldSnapshot>,
    /// The latest velocity field on a manifold from the worker.
    pub tangent_field: Option<crate::train::worker::TangentFieldSnapshot>,
    /// How the sphere is turned in the manifold view.
    pub globe: manifold_view::Globe,
    field_pending: bool,
    field_step: u64,
    /// Target data points (data space) of the current run's dataset.
    pub data_points: Vec<[f64; 2]>,
    /// Target points of a manifold run, flattened `(n, ambient_dim)`.
    pub manifold_data: Vec<f32>,
    data_for: Option<(DatasetKind, usize, u64)>,
    /// Number of target points the data layer shows.
    pub data_n: usize,
    /// Seed of the shown target points (Regenerate draws the next).
    pub data_seed: u64,
    /// Data-space bounds of the flow view `[x_min, x_max, y_min, y_max]`.
    pub view_bounds: [f64; 4],
    /// The folder of this session's autosaves (`None`: autosave unavailable).
    pub autosave_dir: Option<std::path::PathBuf>,
    /// Autosave settings.
    pub autosave: AutosaveSettings,
    /// A run lost by a crash that the app offers to restore.
    pub restore_offer: Option<crate::train::autosave::CrashedSession>,
    /// Step of the newest autosave of the current run.
    pub last_autosave: Option<u64>,
    /// Steps of the autosaves this session still keeps, oldest first.
    pub autosaved_steps: Vec<u64>,
    /// Whether the current run diverged (the roll-back offer shows).
    pub diverged: bool,
    /// The device the worker runs on.
    device: DeviceChoice,
    /// A run on its way to another device.
    device_move: Option<device::DeviceMove>,
}

impl FlowLabApp {
    /// Builds the app and its worker; `repaint` wakes the GUI when events arrive.
    pub fn new(repaint: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self::with_settings(repaint, None)
    }

    /// Builds the app with settings restored from a previous session.
    pub fn with_settings(
        repaint: Arc<dyn Fn() + Send + Sync>,
        restored: Option<Persisted>,
    ) -> Self {
        let adopt_config = restored.is_none();
        let p = restored.unwrap_or_default();
        let (config, live) = (p.config.clone(), p.live);
        let (worker, status) = match Worker::spawn(Device::Cpu, repaint.clone()) {
            Ok(w) => {
                w.send(Command::SetLive(live)).ok();
                w.send(Command::LoadBytes {
                    name: Pretrained::Moons.name().into(),
                    bytes: Arc::from(PRETRAINED_MOONS),
                })
                .ok();
                (Some(w), "loading the pretrained moons model...".to_string())
            }
            Err(e) => (None, e.to_string()),
        };
        FlowLabApp {
            worker,
            dialog: None,
            repaint,
            confirm_new_run: false,
            seed_locked: p.seed_locked,
            step_n: 10,
            adopt_config,
            config,
            run_config: None,
            live,
            loss: Vec::new(),
            held_out: Vec::new(),
            last: None,
            snapshot: None,
            snapshot_gen: 0,
            preview_pending: true,
            grid_texture: None,
            left_view: LeftView::Loss,
            quality: Vec::new(),
            quality_pending: false,
            learned: None,
            learned_pending: false,
            t: 1.0,
            running: false,
            step: 0,
            param_count: 0,
            status,
            status_is_error: false,
            layers: p.layers,
            loss_view: p.loss_view,
            playback: p.playback,
            field: None,
            tangent_field: None,
            globe: manifold_view::Globe::default(),
            manifold_data: Vec::new(),
            field_pending: false,
            field_step: 0,
            data_points: Vec::new(),
            data_for: None,
            data_n: 1500,
            data_seed: 0,
            view_bounds: [-3.0, 3.0, -3.0, 3.0],
            autosave_dir: None,
            autosave: p.autosave,
            restore_offer: None,
            last_autosave: None,
            autosaved_steps: Vec::new(),
            diverged: false,
            device: DeviceChoice::Cpu,
            device_move: None,
        }
    }

    /// Queues a command; a failure becomes the status message.
    pub fn send(&mut self, cmd: Command) {
        let result = match &self.worker {
            Some(w) => w.send(cmd),
            None => Err(crate::Error::config("the training thread is not running")),
        };
        if let Err(e) = result {
            self.error(e.to_string());
        }
    }

    fn error(&mut self, msg: String) {
        self.status = msg;
        self.status_is_error = true;
    }

    fn info(&mut self, msg: String) {
        self.status = msg;
        self.status_is_error = false;
    }

    /// What to remember across restarts.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            config: self.config.clone(),
            live: self.live,
            layers: self.layers,
            loss_view: self.loss_view,
            playback: Playback {
                playing: false,
                ..self.playback
            },
            seed_locked: self.seed_locked,
            autosave: self.autosave,
        }
    }

    /// Restores every setting to its default (the current run is kept).
    pub fn reset_settings(&mut self) {
        let p = Persisted::default();
        self.config = p.config;
        self.live = p.live;
        self.layers = p.layers;
        self.loss_view = p.loss_view;
        self.playback = p.playback;
        self.seed_locked = p.seed_locked;
        self.autosave = p.autosave;
        self.send(Command::SetLive(self.live));
        self.apply_autosave();
        self.info("settings reset to their defaults".into());
    }

    /// Replaces the current run by one of the pretrained models in the app.
    pub fn open_pretrained(&mut self, which: Pretrained) {
        self.running = false;
        self.preview_pending = true;
        self.info(format!("opening the {} model...", which.name()));
        self.send(Command::LoadBytes {
            name: which.name().into(),
            bytes: Arc::from(which.bytes()),
        });
    }

    /// Starts a fresh run with the edited settings.
    pub fn train_new(&mut self) {
        if !self.seed_locked {
            use rand::RngExt as _;
            self.config.seed = rand::rng().random_range(0..1_000_000);
        }
        self.loss.clear();
        self.held_out.clear();
        self.last = None;
        self.send(Command::SetLive(self.live));
        self.send(Command::Start(Box::new(self.config.clone())));
        self.running = true;
        self.preview_pending = true;
        self.info("training...".into());
    }

    /// Play/pause: resumes the current run, or starts one when there is none
    /// or the settings that need a reset changed.
    pub fn toggle_training(&mut self) {
        if self.running {
            self.send(Command::Pause);
            self.running = false;
        } else if self.run_config.as_ref() == Some(&self.config) && self.step < self.config.steps {
            self.send(Command::Resume);
            self.running = true;
        } else if self.run_config.is_some() {
            // Settings that need a new run changed: ask before discarding the model.
            self.confirm_new_run = true;
        } else {
            self.train_new();
        }
    }

    /// Applies events from the worker (under a small time budget).
    pub fn poll(&mut self) {
        let events = match &self.worker {
            Some(w) => w.drain(DRAIN_BUDGET),
            None => return,
        };
        for e in events {
            self.apply(e);
        }
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::Ready {
                config,
                step,
                param_count,
                history,
            } => {
                self.diverged = false;
                if step == 0 {
                    // A fresh run: the worker dropped the old run's autosaves.
                    self.autosaved_steps.clear();
                }
                self.step = step;
                self.param_count = param_count;
                if self.adopt_config {
                    self.config = (*config).clone();
                    self.live.lr = config.optimizer.lr;
                }
                self.adopt_config = true;
                self.run_config = Some(*config);
                self.learned = None;
                self.loss = history
                    .iter()
                    .map(|h| [f64::from(h[0]), f64::from(h[1])])
                    .collect();
                self.held_out = history
                    .iter()
                    .filter(|h| h[2].is_finite())
                    .map(|h| [f64::from(h[0]), f64::from(h[2])])
                    .collect();
            }
            Event::Progress(reports) => {
                for r in &reports {
                    self.loss.push([r.step as f64, f64::from(r.loss)]);
                    if let Some(h) = r.held_out_loss {
                        self.held_out.push([r.step as f64, f64::from(h)]);
                    }
                }
                if self.loss.len() > MAX_LOSS_POINTS {
                    let half = self.loss.len() / 2;
                    let old: Vec<[f64; 2]> = self.loss.drain(..half).step_by(2).collect();
                    self.loss.splice(0..0, old);
                }
                if let Some(r) = reports.last() {
                    self.step = r.step;
                    self.last = Some(*r);
                }
            }
            Event::Samples(s) => {
                self.preview_pending = !s.complete;
                self.snapshot = Some(*s);
                self.snapshot_gen += 1;
            }
            Event::Field(f) => {
                self.field_pending = false;
                self.field = Some(*f);
            }
            Event::TangentField(f) => {
                self.field_pending = false;
                self.tangent_field = Some(*f);
            }
            Event::Paused { step } => {
                self.running = false;
                self.info(format!("paused at step {step}"));
            }
            Event::Finished { step } => {
                self.running = false;
                self.info(format!("finished {step} steps"));
            }
            Event::Quality { step, report } => self.add_quality(step, *report),
            Event::Density(d) => {
                self.learned_pending = false;
                self.learned = Some(*d);
            }
            Event::Saved(p) => {
                if !self.device_move_saved(&p) {
                    self.info(format!("saved {}", p.display()));
                }
            }
            Event::Autosaved { step } => {
                self.last_autosave = Some(step);
                self.autosaved_steps.push(step);
                let excess = self
                    .autosaved_steps
                    .len()
                    .saturating_sub(self.autosave.keep.max(1));
                self.autosaved_steps.drain(..excess);
            }
            Event::Diverged {
                last_good_step,
                message,
            } => {
                self.running = false;
                self.step = last_good_step;
                self.diverged = true;
                self.error(message);
            }
            Event::Loaded(p) => {
                if !self.device_move_loaded(&p) {
                    self.info(format!("opened {}", p.display()));
                }
            }
            Event::Error(msg) => {
                let kept = self.device_move_failed();
                self.running = false;
                self.field_pending = false;
                self.preview_pending = false;
                self.quality_pending = false;
                if self.learned_pending {
                    // Do not ask again every frame: the person turns the layer back on.
                    self.layers.learned_density = false;
                }
                self.learned_pending = false;
                match kept {
                    Some(path) => self.error(format!(
                        "{msg} (moving the run failed; it is saved in {})",
                        path.display()
                    )),
                    None => self.error(msg),
                }
            }
        }
    }

    /// The whole window's contents.
    pub fn ui(&mut self, ui: &mut egui::Ui) {
        self.poll();
        self.poll_dialog();
        self.file_input(ui);
        self.confirm_ui(ui);
        self.restore_offer_ui(ui);
        if ui.input(|i| i.key_pressed(egui::Key::Space)) && !ui.ctx().egui_wants_keyboard_input() {
            self.toggle_training();
        }
        egui::Panel::top("top_bar").show(ui, |ui| self.top_bar_ui(ui));
        egui::Panel::bottom("status_bar").show(ui, |ui| self.status_bar_ui(ui));
        egui::Panel::left("settings")
            .resizable(true)
            .default_size(280.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical().show(ui, |ui| self.settings_ui(ui));
            });
        egui::CentralPanel::default_margins().show(ui, |ui| self.views_ui(ui));
    }

    fn top_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("FlowLab");
            self.file_menu_ui(ui);
            ui.separator();
            let label = if self.running { "Pause" } else { "Train" };
            if ui
                .button(label)
                .on_hover_text("Start or pause training (Space)")
                .clicked()
            {
                self.toggle_training();
            }
            if ui
                .button("Step")
                .on_hover_text("Run this many training steps, then pause")
                .clicked()
            {
                self.send(Command::Step(self.step_n));
                self.running = true;
            }
            let l = ui.label("x");
            ui.add(egui::DragValue::new(&mut self.step_n).range(1..=100_000))
                .labelled_by(l.id)
                .on_hover_text("Steps run by the Step button");
            if ui
                .button("Reset")
                .on_hover_text("Start over from fresh weights (same seed)")
                .clicked()
            {
                self.send(Command::Reset);
                self.running = false;
            }
            ui.separator();
            let total = self
                .run_config
                .as_ref()
                .map_or(self.config.steps, |c| c.steps);
            let frac = (self.step as f32 / total.max(1) as f32).clamp(0.0, 1.0);
            let mut text = format!("step {} / {}", self.step, total);
            if let Some(r) = &self.last
                && self.running
                && r.steps_per_sec > 0.0
            {
                let eta = total.saturating_sub(self.step) as f64 / r.steps_per_sec;
                text.push_str(&format!(
                    "  {:.0} steps/s  {:.1} ms/step  ETA {:.0} s",
                    r.steps_per_sec,
                    1000.0 / r.steps_per_sec,
                    eta
                ));
            }
            ui.add(egui::ProgressBar::new(frac).text(text).desired_width(420.0));
        });
    }

    fn confirm_ui(&mut self, ui: &egui::Ui) {
        if !self.confirm_new_run {
            return;
        }
        egui::Window::new("Start a new run?")
            .collapsible(false)
            .resizable(false)
            .anchor(egui::Align2::CENTER_CENTER, [0.0, 0.0])
            .show(ui.ctx(), |ui| {
                let finished = self.run_config.as_ref() == Some(&self.config);
                ui.label(if finished {
                    "This run has done all its steps."
                } else {
                    "Settings marked (new run) changed."
                });
                ui.label("A new run starts from fresh weights; the current model is discarded unless you save it first.");
                ui.horizontal(|ui| {
                    if ui.button("Start a new run").clicked() {
                        self.confirm_new_run = false;
                        self.train_new();
                    }
                    if !finished && ui.button("Keep training the current run").clicked() {
                        self.confirm_new_run = false;
                        if let Some(c) = &self.run_config {
                            self.config = c.clone();
                        }
                        self.send(Command::Resume);
                        self.running = true;
                    }
                    if ui.button("Cancel").clicked() {
                        self.confirm_new_run = false;
                    }
                });
            });
    }

    fn status_bar_ui(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            let color = if self.status_is_error {
                ui.visuals().error_fg_color
            } else {
                ui.visuals().text_color()
            };
            ui.colored_label(color, &self.status);
            if let Some(step) = self.rollback_step()
                && ui
                    .button(format!("Roll back to the autosave of step {step}"))
                    .on_hover_text("Open the newest autosave from before the divergence")
                    .clicked()
            {
                self.roll_back();
            }
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                ui.label(format!(
                    "{} parameters · {}",
                    self.param_count,
                    self.device.name()
                ));
            });
        });
    }
}

impl eframe::App for FlowLabApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        FlowLabApp::ui(self, ui);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, eframe::APP_KEY, &self.persisted());
    }
}

/// A model to open as the app starts (after the settings are restored).
#[derive(Debug, Clone, PartialEq)]
pub enum Opening {
    /// One of the models in the app.
    Pretrained(Pretrained),
    /// A checkpoint file.
    File(std::path::PathBuf),
}

/// Opens the FlowLab window, with `open` opened in it, and runs until it is closed.
pub fn run(open: Option<Opening>) -> crate::Result<()> {
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("FlowLab")
            .with_inner_size([1280.0, 800.0]),
        ..Default::default()
    };
    eframe::run_native(
        "FlowLab",
        options,
        Box::new(|cc| {
            let ctx = cc.egui_ctx.clone();
            let restored = cc
                .storage
                .and_then(|s| eframe::get_value::<Persisted>(s, eframe::APP_KEY));
            let repaint: Arc<dyn Fn() + Send + Sync> = Arc::new(move || ctx.request_repaint());
            let mut app = FlowLabApp::with_settings(repaint, restored);
            if let Some(dir) = autosave::default_autosave_dir() {
                app.use_autosave_dir(dir);
            }
            match &open {
                Some(Opening::Pretrained(p)) => app.open_pretrained(*p),
                Some(Opening::File(f)) => app.open(f),
                None => {}
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| crate::Error::config(format!("cannot open the window: {e}")))
}
