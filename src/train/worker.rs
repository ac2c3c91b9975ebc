//! The training worker: a named background thread that owns the model and
//! optimiser and runs the training loop, driven by [`Command`]s and reporting
//! [`Event`]s over bounded crossbeam channels. No candle tensor crosses the
//! channels (samples travel as plain `Vec<f32>`).
//!
//! The worker never blocks on the GUI: events go into an outbox that is flushed
//! with `try_send`; progress reports are batched and samples coalesced, so a
//! slow or minimised GUI loses nothing but stale previews. Commands are read
//! between any two training steps, so pause and stop take effect within one
//! step. A panic inside a step is caught and reported as an [`Event::Error`].

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use candle_core::Device;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError, bounded};

use super::{StepReport, TrainConfig, Trainer};
use crate::checkpoint::Checkpoint;
use crate::model::Guided;
use crate::quality::{QualityReport, quality_vs_nfe};
use crate::solver::{Integration, SolverConfig, SolverKind, integrate};
use crate::{Error, Result};

/// Settings that apply immediately, without resetting the run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LiveSettings {
    /// Solver for the preview samples and trajectories.
    pub solver: SolverConfig,
    /// Refresh the preview every this many steps (0: only on request).
    pub preview_every: u64,
    /// Number of preview samples (fixed noise).
    pub preview_n: usize,
    /// Peak learning rate (the schedule is rescaled to it).
    pub lr: f64,
    /// Classifier-free guidance scale w of class-conditional image previews
    /// (0: unconditional, 1: conditional, above 1: sharper classes).
    #[serde(default = "default_guidance")]
    pub guidance: f64,
    /// The class of every image preview sample; `None`: each class in turn,
    /// one grid row each.
    #[serde(default)]
    pub class: Option<u32>,
    /// Sample as if the model had been trained with this scheduler (`None`:
    /// the one it was trained with); see [`crate::flow::SchedulerChange`].
    #[serde(default)]
    pub sample_scheduler: Option<crate::flow::Scheduler>,
    /// Corrector strength of the discrete sampler (discrete flows; 0: none).
    #[serde(default)]
    pub corrector: f64,
}

fn default_guidance() -> f64 {
    2.0
}

/// Columns of the image preview grid.
pub const GRID_COLUMNS: usize = 6;
/// Rows of the image preview grid (one per MNIST digit when conditional).
pub const GRID_ROWS: usize = 10;
/// Rows of the image grid drawn (and shown) at a time: smaller parts show
/// progress sooner but run the network at a less efficient batch size.
pub const GRID_PART_ROWS: usize = 5;

/// Labels of the image preview grid for a model with `classes` classes:
/// every sample of class `class`, or row r of class r mod `classes` when
/// `class` is `None` (or out of range). Empty for an unconditional model.
pub fn grid_labels(classes: usize, class: Option<u32>) -> Vec<u32> {
    if classes == 0 {
        return Vec::new();
    }
    (0..GRID_ROWS * GRID_COLUMNS)
        .map(|i| match class {
            Some(c) if (c as usize) < classes => c,
            _ => ((i / GRID_COLUMNS) % classes) as u32,
        })
        .collect()
}

impl LiveSettings {
    /// Live settings matching a config, with `preview_n` previews every 100 steps.
    pub fn for_config(cfg: &TrainConfig) -> Self {
        LiveSettings {
            solver: cfg.solver,
            preview_every: 100,
            preview_n: 1000,
            lr: cfg.optimizer.lr,
            guidance: default_guidance(),
            class: None,
            sample_scheduler: None,
            corrector: 0.0,
        }
    }
}

/// What the GUI asks of the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Build a fresh run from the config (replacing any current one) and start training.
    Start(Box<TrainConfig>),
    /// Stop stepping; the model stays.
    Pause,
    /// Continue training the current run.
    Resume,
    /// Run this many steps, then pause.
    Step(u64),
    /// Rebuild the current run from its config (fresh weights), paused.
    Reset,
    /// Draw a preview now (a preview already being drawn is abandoned).
    SampleNow,
    /// Change the live settings.
    SetLive(LiveSettings),
    /// Save a checkpoint of the current run.
    Save(PathBuf),
    /// Replace the current run by a checkpoint's (weights, optimiser, config), paused.
    Load(PathBuf),
    /// Like [`Command::Load`] from checkpoint bytes (e.g. the pretrained model in the binary).
    LoadBytes {
        /// Name shown in messages.
        name: PathBuf,
        /// The safetensors file's bytes.
        bytes: Arc<[u8]>,
    },
    /// Evaluate the velocity field v(x, t) of the sampling model on a grid
    /// (2D data only), answered by [`Event::Field`].
    Field {
        /// The time.
        t: f64,
        /// Grid points per axis.
        n: usize,
        /// Data-space bounds `[x_min, x_max, y_min, y_max]`.
        bounds: [f64; 4],
    },
    /// Evaluate the velocity field of the sampling model at points spread over
    /// the manifold (manifold data only), answered by [`Event::TangentField`].
    TangentField {
        /// The time.
        t: f64,
        /// About this many points (a Fibonacci lattice on the sphere, a square
        /// grid of angles on the torus).
        n: usize,
    },
    /// Measure sample quality against NFE for every solver (2D data),
    /// answered by [`Event::Quality`].
    Quality,
    /// The learned density p_1(x) on a grid (2D data, Gaussian source), by
    /// integrating the divergence backwards; answered by [`Event::Density`].
    Density {
        /// Grid points per axis.
        n: usize,
        /// Data-space bounds `[x_min, x_max, y_min, y_max]`.
        bounds: [f64; 4],
    },
    /// Turn autosave on (or off with `None`) for the runs of this worker.
    Autosave(Option<super::autosave::AutosavePolicy>),
    /// End the thread.
    Shutdown,
}

/// RK4 steps of the learned-density view.
pub const DENSITY_STEPS: usize = 12;

/// Points per quality measurement (W2 is exact, O(n^3)).
pub const QUALITY_N: usize = 600;

/// The velocity field on a grid, in data space.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldSnapshot {
    /// The time.
    pub t: f64,
    /// Grid points.
    pub points: Vec<[f32; 2]>,
    /// v(x, t) at each point, in data units per unit time.
    pub vectors: Vec<[f32; 2]>,
}

/// The velocity field at points on a manifold.
#[derive(Debug, Clone, PartialEq)]
pub struct TangentFieldSnapshot {
    /// The time.
    pub t: f64,
    /// The manifold.
    pub manifold: crate::flow::Manifold,
    /// The points, flattened `(n, ambient_dim)`.
    pub points: Vec<f32>,
    /// The tangent velocity at each point, flattened `(n, ambient_dim)`.
    pub vectors: Vec<f32>,
}

/// About `n` points spread evenly over `m`, flattened `(n', ambient_dim)`: a
/// Fibonacci lattice on the sphere, a square grid of angles on the torus.
pub fn spread_points(m: crate::flow::Manifold, n: usize) -> Vec<f32> {
    use std::f64::consts::PI;
    match m {
        crate::flow::Manifold::Sphere => {
            let golden = PI * (3.0 - 5f64.sqrt());
            (0..n)
                .flat_map(|i| {
                    let z = 1.0 - (2.0 * i as f64 + 1.0) / n as f64;
                    let r = (1.0 - z * z).max(0.0).sqrt();
                    let (s, c) = (golden * i as f64).sin_cos();
                    [(r * c) as f32, (r * s) as f32, z as f32]
                })
                .collect()
        }
        crate::flow::Manifold::Torus => {
            let k = ((n as f64).sqrt().round() as usize).max(1);
            let step = 2.0 * PI / k as f64;
            (0..k * k)
                .flat_map(|i| {
                    let a = -PI + step * ((i % k) as f64 + 0.5);
                    let b = -PI + step * ((i / k) as f64 + 0.5);
                    crate::flow::manifold::torus_point(a, b)
                })
                .collect()
        }
    }
}

/// The learned density on a grid, in data space.
#[derive(Debug, Clone, PartialEq)]
pub struct DensitySnapshot {
    /// Training step of the weights used.
    pub step: u64,
    /// Grid points per axis.
    pub n: usize,
    /// Data-space bounds `[x_min, x_max, y_min, y_max]`.
    pub bounds: [f64; 4],
    /// log p(x) at the grid points, row by row from `y_min` (row-major `(n, n)`).
    pub log_p: Vec<f32>,
}

/// Preview samples: the fixed-noise batch integrated from t = 0 to t = 1.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleSnapshot {
    /// Training step of the weights used.
    pub step: u64,
    /// Shape of one sample, e.g. `[2]`.
    pub sample_shape: Vec<usize>,
    /// Times of the states, 0 first and 1 last.
    pub times: Vec<f64>,
    /// States at `times` in data space, each flattened `(n, dim)`.
    pub states: Vec<Vec<f32>>,
    /// Function evaluations used.
    pub nfe: usize,
    /// Class of each sample (class-conditional image previews; else empty).
    pub labels: Vec<u32>,
    /// Guidance scale used (class-conditional image previews).
    pub guidance: Option<f64>,
    /// Columns of the image grid (images only; 0 for 2D points).
    pub columns: usize,
    /// False for a partly drawn image grid (its later rows still show noise).
    pub complete: bool,
    /// Tokens of a discrete flow: states hold between steps (no interpolation),
    /// and NaN marks a masked coordinate.
    pub discrete: bool,
}

/// What the worker tells the GUI.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A run was built (by Start, Reset or Load).
    Ready {
        /// Its configuration.
        config: Box<TrainConfig>,
        /// Steps already done (non-zero after Load).
        step: u64,
        /// Number of model parameters.
        param_count: usize,
        /// Loss history so far `(step, loss, held-out loss or NaN)` (non-empty after Load).
        history: Vec<[f32; 3]>,
    },
    /// Training steps since the last progress event, oldest first.
    Progress(Vec<StepReport>),
    /// A fresh preview.
    Samples(Box<SampleSnapshot>),
    /// The velocity field asked for by [`Command::Field`].
    Field(Box<FieldSnapshot>),
    /// The velocity field asked for by [`Command::TangentField`].
    TangentField(Box<TangentFieldSnapshot>),
    /// Training stopped stepping (pause, end of a Step(N), or the step limit).
    Paused {
        /// Steps done.
        step: u64,
    },
    /// The configured number of steps is done.
    Finished {
        /// Steps done.
        step: u64,
    },
    /// The learned density asked for by [`Command::Density`].
    Density(Box<DensitySnapshot>),
    /// Quality against NFE of the sampling weights at `step`.
    Quality {
        /// Training step of the weights measured.
        step: u64,
        /// The measurements.
        report: Box<QualityReport>,
    },
    /// A checkpoint was written.
    Saved(PathBuf),
    /// Training diverged (NaN or infinite loss or gradient) and paused; the
    /// model is at its last good step.
    Diverged {
        /// The step whose weights were kept.
        last_good_step: u64,
        /// The explanation for the person.
        message: String,
    },
    /// The run was autosaved at this step.
    Autosaved {
        /// Steps in the autosave.
        step: u64,
    },
    /// A checkpoint was loaded.
    Loaded(PathBuf),
    /// Something failed; the message is for the person.
    Error(String),
}

/// Handle to the worker thread. Dropping it stops and joins the thread.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    stop: Arc<AtomicBool>,
    cancel_preview: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

/// Capacity of each channel.
const CHANNEL_CAPACITY: usize = 64;

impl Worker {
    /// Starts the thread `flowlab-trainer` on `device`; `repaint` is called after
    /// events are queued (the GUI passes its `request_repaint`).
    pub fn spawn(device: Device, repaint: Arc<dyn Fn() + Send + Sync>) -> Result<Worker> {
        let (cmd_tx, cmd_rx) = bounded(CHANNEL_CAPACITY);
        let (ev_tx, ev_rx) = bounded(CHANNEL_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let cancel_preview = Arc::new(AtomicBool::new(false));
        let state = State {
            cancel_preview: cancel_preview.clone(),
            device,
            commands: cmd_rx,
            events: ev_tx,
            repaint,
            stop: stop.clone(),
            trainer: None,
            live: None,
            running: false,
            steps_left: None,
            outbox: VecDeque::new(),
            progress: Vec::new(),
            samples: None,
            preview_wanted: false,
            autosave: None,
            last_autosave: std::time::Instant::now(),
            autosaved_step: None,
        };
        let handle = std::thread::Builder::new()
            .name("flowlab-trainer".into())
            .spawn(move || state.run())
            .map_err(|e| Error::config(format!("cannot start the training thread: {e}")))?;
        Ok(Worker {
            commands: cmd_tx,
            events: ev_rx,
            stop,
            cancel_preview,
            handle: Some(handle),
        })
    }

    /// Queues a command without waiting; fails only if the queue is full or the
    /// thread is gone. A command that makes the preview being drawn stale
    /// (a request for a fresh one, a new run) abandons it.
    pub fn send(&self, cmd: Command) -> Result<()> {
        if matches!(
            cmd,
            Command::SampleNow
                | Command::Start(_)
                | Command::Reset
                | Command::Load(_)
                | Command::LoadBytes { .. }
        ) {
            self.cancel_preview.store(true, Ordering::Relaxed);
        }
        self.commands.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => Error::config("the training thread is busy; try again"),
            TrySendError::Disconnected(_) => Error::config("the training thread has stopped"),
        })
    }

    /// The next event, if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits up to `timeout` for the next event (for tests and the CLI; the GUI uses [`Worker::drain`]).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Takes waiting events until none is left or `budget` has passed.
    pub fn drain(&self, budget: Duration) -> Vec<Event> {
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        while start.elapsed() < budget {
            match self.events.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => break,
            }
        }
        out
    }

    /// Whether the thread is still running.
    pub fn is_alive(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cancel_preview.store(true, Ordering::Relaxed);
        self.commands.try_send(Command::Shutdown).ok();
        if let Some(h) = self.handle.take() {
            h.join().ok();
        }
    }
}

/// The thread's state.
struct State {
    device: Device,
    commands: Receiver<Command>,
    events: Sender<Event>,
    repaint: Arc<dyn Fn() + Send + Sync>,
    stop: Arc<AtomicBool>,
    /// Set by the GUI side to abandon the preview being drawn.
    cancel_preview: Arc<AtomicBool>,
    trainer: Option<Trainer>,
    live: Option<LiveSettings>,
    running: bool,
    steps_left: Option<u64>,
    outbox: VecDeque<Event>,
    progress: Vec<StepReport>,
    samples: Option<SampleSnapshot>,
    /// A preview is due once the queued commands are handled (requests coalesce).
    preview_wanted: bool,
    /// Where and how often to autosave (`None`: off).
    autosave: Option<super::autosave::AutosavePolicy>,
    /// When the last autosave was written (or autosave turned on).
    last_autosave: std::time::Instant,
    /// The step of the newest autosave of the current run.
    autosaved_step: Option<u64>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl State {
    fn run(mut self) {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            // Take every waiting command; when idle, wait for one.
            let cmd = if self.running {
                match self.commands.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            } else {
                self.flush();
                let wait =
                    if self.outbox.is_empty() && self.progress.is_empty() && self.samples.is_none()
                    {
                        Duration::from_millis(200)
                    } else {
                        Duration::from_millis(10)
                    };
                match self.commands.recv_timeout(wait) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            };
            if let Some(cmd) = cmd {
                if cmd == Command::Shutdown {
                    return;
                }
                self.guarded(|s| s.handle(cmd));
            } else if self.running {
                self.guarded(|s| s.train_one());
            }
            if self.preview_wanted && self.commands.is_empty() {
                self.preview_wanted = false;
                self.flush();
                self.guarded(|s| s.preview());
            }
            self.flush();
        }
    }

    /// Runs `f`, turning errors and panics into an error event (and pausing).
    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> Result<()>) {
        match std::panic::catch_unwind(AssertUnwindSafe(|| f(self))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.running = false;
                self.outbox.push_back(Event::Error(e.to_string()));
            }
            Err(p) => {
                self.running = false;
                self.outbox.push_back(Event::Error(format!(
                    "internal error in the training thread: {}",
                    panic_message(p.as_ref())
                )));
            }
        }
    }

    fn ready(&mut self, tr: Trainer) {
        let live = self
            .live
            .unwrap_or_else(|| LiveSettings::for_config(tr.config()));
        self.live = Some(LiveSettings {
            lr: tr.config().optimizer.lr,
            ..live
        });
        self.outbox.push_back(Event::Ready {
            config: Box::new(tr.config().clone()),
            step: tr.step_count(),
            param_count: tr.params().count(),
            history: tr.history().to_vec(),
        });
        self.trainer = Some(tr);
    }

    fn trainer(&mut self) -> Result<&mut Trainer> {
        self.trainer
            .as_mut()
            .ok_or_else(|| Error::config("no model yet: start training or open a checkpoint first"))
    }

    fn handle(&mut self, cmd: Command) -> Result<()> {
        match cmd {
            Command::Start(cfg) => {
                self.running = false;
                self.trainer = None;
                self.new_autosave_run();
                let tr = Trainer::new(*cfg, &self.device)?;
                self.ready(tr);
                self.preview_wanted = true;
                self.running = true;
                self.steps_left = None;
            }
            Command::Pause => {
                if self.running {
                    self.running = false;
                    let step = self.trainer()?.step_count();
                    self.outbox.push_back(Event::Paused { step });
                    self.autosave_now();
                }
            }
            Command::Autosave(policy) => {
                if let Some(p) = &policy {
                    p.validate()?;
                }
                self.autosave = policy;
                self.last_autosave = std::time::Instant::now();
            }
            Command::Resume => {
                self.trainer()?;
                self.running = true;
                self.steps_left = None;
            }
            Command::Step(n) => {
                self.trainer()?;
                self.running = n > 0;
                self.steps_left = Some(n);
            }
            Command::Reset => {
                let cfg = self.trainer()?.config().clone();
                self.running = false;
                self.trainer = None;
                self.new_autosave_run();
                let tr = Trainer::new(cfg, &self.device)?;
                self.ready(tr);
                self.preview_wanted = true;
            }
            Command::SampleNow => self.preview_wanted = true,
            Command::SetLive(live) => {
                self.live = Some(live);
                if let Some(tr) = self.trainer.as_mut() {
                    tr.set_peak_lr(live.lr)?;
                }
            }
            Command::Save(path) => {
                let tr = self.trainer()?;
                Checkpoint::from_trainer(tr)?.save(&path)?;
                self.outbox.push_back(Event::Saved(path));
            }
            Command::Load(path) => {
                let ck = Checkpoint::load(&path, &self.device)?;
                self.load(ck, path)?;
            }
            Command::LoadBytes { name, bytes } => {
                let ck = Checkpoint::from_bytes(&bytes, &name, &self.device)?;
                self.load(ck, name)?;
            }
            Command::Field { t, n, bounds } => {
                let f = self.field(t, n, bounds)?;
                self.outbox.push_back(Event::Field(Box::new(f)));
            }
            Command::Quality => {
                let stop = self.stop.clone();
                let tr = self.trainer()?;
                let report = quality_vs_nfe(
                    tr.sampling_model(),
                    &tr.config().source,
                    tr.dataset().as_ref(),
                    QUALITY_N,
                    tr.config().seed,
                    Some(&stop),
                )?;
                let step = tr.step_count();
                self.outbox.push_back(Event::Quality {
                    step,
                    report: Box::new(report),
                });
            }
            Command::TangentField { t, n } => {
                let f = self.tangent_field(t, n)?;
                self.outbox.push_back(Event::TangentField(Box::new(f)));
            }
            Command::Density { n, bounds } => {
                let d = self.density(n, bounds)?;
                self.outbox.push_back(Event::Density(Box::new(d)));
            }
            Command::Shutdown => {}
        }
        Ok(())
    }

    fn field(&mut self, t: f64, n: usize, [x0, x1, y0, y1]: [f64; 4]) -> Result<FieldSnapshot> {
        let tr = self.trainer()?;
        let Some(std) = tr.dataset().standardizer() else {
            return Err(Error::config("the velocity field view is for 2D data"));
        };
        let n = n.clamp(2, 128);
        let mut points = Vec::with_capacity(n * n);
        for j in 0..n {
            for i in 0..n {
                let fx = x0 + (x1 - x0) * i as f64 / (n - 1) as f64;
                let fy = y0 + (y1 - y0) * j as f64 / (n - 1) as f64;
                points.push([fx as f32, fy as f32]);
            }
        }
        let mut model_xy: Vec<f32> = points.iter().flatten().copied().collect();
        std.to_model(&mut model_xy);
        let x = candle_core::Tensor::from_vec(model_xy, (n * n, 2), tr.device())?;
        let tt = candle_core::Tensor::full(t as f32, n * n, tr.device())?;
        let v = tr
            .sampling_model()
            .velocity(&x, &tt)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Velocities scale like positions: data units = model units × scale.
        let vectors = v
            .as_chunks::<2>()
            .0
            .iter()
            .map(|[a, b]| [a * std.scale, b * std.scale])
            .collect();
        Ok(FieldSnapshot { t, points, vectors })
    }

    fn tangent_field(&mut self, t: f64, n: usize) -> Result<TangentFieldSnapshot> {
        let tr = self.trainer()?;
        let Some(m) = tr.dataset().manifold() else {
            return Err(Error::config(
                "the tangent field view is for data on a manifold",
            ));
        };
        let points = spread_points(m, n.clamp(4, 4096));
        let d = m.ambient_dim();
        let count = points.len() / d;
        let x = candle_core::Tensor::from_vec(points.clone(), (count, d), tr.device())?;
        let tt = candle_core::Tensor::full(t as f32, count, tr.device())?;
        let v = tr.sampling_model().velocity(&x, &tt)?;
        let vectors = m
            .project_tangents(&x, &v)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(TangentFieldSnapshot {
            t,
            manifold: m,
            points,
            vectors,
        })
    }

    fn density(&mut self, n: usize, bounds: [f64; 4]) -> Result<DensitySnapshot> {
        let tr = self.trainer()?;
        let Some(std) = tr.dataset().standardizer() else {
            return Err(Error::config("the density view is for 2D data"));
        };
        if tr.config().source != crate::flow::Source::Gaussian {
            return Err(Error::config(format!(
                "the learned density needs the source's density: train with the gaussian source, not {}",
                tr.config().source.name()
            )));
        }
        let n = n.clamp(2, 128);
        let [x0, x1, y0, y1] = bounds;
        let mut pts = Vec::with_capacity(2 * n * n);
        for j in 0..n {
            for i in 0..n {
                // Cell centres.
                pts.push((x0 + (x1 - x0) * (i as f64 + 0.5) / n as f64) as f32);
                pts.push((y0 + (y1 - y0) * (j as f64 + 0.5) / n as f64) as f32);
            }
        }
        std.to_model(&mut pts);
        let x = candle_core::Tensor::from_vec(pts, (n * n, 2), tr.device())?;
        let l = crate::solver::likelihood::log_likelihood(
            tr.sampling_model(),
            &x,
            &crate::solver::likelihood::LikelihoodConfig {
                steps: DENSITY_STEPS,
                ..Default::default()
            },
        )?;
        // Data space: x_model = (x_data - mean) / scale, so log p_data = log p_model - 2 ln scale.
        let shift = 2.0 * f64::from(std.scale).ln();
        Ok(DensitySnapshot {
            step: tr.step_count(),
            n,
            bounds,
            log_p: l.log_p.iter().map(|v| (v - shift) as f32).collect(),
        })
    }

    /// A new run replaces the current one: the current run's autosaves go
    /// (the person confirmed replacing it), the next autosave starts afresh.
    fn new_autosave_run(&mut self) {
        if let Some(a) = &self.autosave {
            super::autosave::prune(&a.dir, std::process::id(), 0);
        }
        self.autosaved_step = None;
        self.last_autosave = std::time::Instant::now();
    }

    /// Writes an autosave of the current run if it has steps the newest
    /// autosave lacks, then prunes the old ones. A failure turns autosave off
    /// with one message (training goes on).
    fn autosave_now(&mut self) {
        let Some(policy) = self.autosave.clone() else {
            return;
        };
        let Some(tr) = self.trainer.as_ref() else {
            return;
        };
        let step = tr.step_count();
        if step == 0 || self.autosaved_step == Some(step) {
            return;
        }
        self.last_autosave = std::time::Instant::now();
        let pid = std::process::id();
        let path = super::autosave::autosave_path(&policy.dir, pid, step);
        let written = std::fs::create_dir_all(&policy.dir)
            .map_err(|e| Error::io("cannot create", &policy.dir, e))
            .and_then(|()| Checkpoint::from_trainer(tr))
            .and_then(|c| c.save(&path));
        match written {
            Ok(()) => {
                self.autosaved_step = Some(step);
                super::autosave::prune(&policy.dir, pid, policy.keep);
                self.outbox.push_back(Event::Autosaved { step });
            }
            Err(e) => {
                self.autosave = None;
                self.outbox.push_back(Event::Error(format!(
                    "autosave failed, so it is off for this session: {e}"
                )));
            }
        }
    }

    fn load(&mut self, ck: Checkpoint, path: PathBuf) -> Result<()> {
        let tr = ck.into_trainer(&self.device, &path)?;
        // Older autosaves are pruned as this run's own arrive.
        self.autosaved_step = Some(tr.step_count());
        self.running = false;
        self.trainer = None;
        self.ready(tr);
        self.outbox.push_back(Event::Loaded(path));
        self.preview_wanted = true;
        Ok(())
    }

    fn train_one(&mut self) -> Result<()> {
        let tr = self.trainer()?;
        if tr.step_count() >= tr.config().steps {
            let step = tr.step_count();
            self.running = false;
            self.outbox.push_back(Event::Finished { step });
            self.preview_wanted = true;
            self.autosave_now();
            return Ok(());
        }
        let report = match tr.step() {
            Ok(r) => r,
            Err(e @ Error::NonFinite { .. }) => {
                // The weights of the last good step stay; training pauses.
                if let Error::NonFinite { last_good_step, .. } = e {
                    self.running = false;
                    self.steps_left = None;
                    self.outbox.push_back(Event::Diverged {
                        last_good_step,
                        message: e.to_string(),
                    });
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.progress.push(report);
        if self
            .autosave
            .as_ref()
            .is_some_and(|a| self.last_autosave.elapsed() >= a.every)
        {
            self.autosave_now();
        }
        let every = self.live.map_or(0, |l| l.preview_every);
        if every > 0 && report.step.is_multiple_of(every) {
            self.preview_wanted = true;
        }
        if let Some(left) = self.steps_left.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.running = false;
                self.steps_left = None;
                self.outbox.push_back(Event::Paused { step: report.step });
                self.preview_wanted = true;
                self.autosave_now();
            }
        }
        Ok(())
    }

    /// Integrates the fixed preview noise with the sampling weights: `preview_n`
    /// 2D points, or a [`GRID_ROWS`] x [`GRID_COLUMNS`] grid of images (guided
    /// towards [`grid_labels`] for a class-conditional model). A preview
    /// abandoned for a newer command leaves the last one standing.
    fn preview(&mut self) -> Result<()> {
        let live = self.live;
        self.cancel_preview.store(false, Ordering::Relaxed);
        if self.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let cancel = self.cancel_preview.clone();
        let tr = self.trainer.as_ref().ok_or_else(|| {
            Error::config("no model yet: start training or open a checkpoint first")
        })?;
        let live = live.unwrap_or_else(|| LiveSettings::for_config(tr.config()));
        if let Some(dc) = tr.config().discrete {
            return self.discrete_preview(dc, live);
        }
        let shape = tr.sample_shape().to_vec();
        let dim: usize = shape.iter().product();
        let image = shape.len() > 1;
        let n = if image {
            GRID_ROWS * GRID_COLUMNS
        } else {
            live.preview_n.max(1)
        };
        let x0 = tr
            .config()
            .source
            .noise(n, &shape, tr.config().seed, 1, tr.device())?;
        let how = Integration {
            stop: Some(&cancel),
            ..Integration::forward()
                .with_intermediates()
                .on(tr.dataset().manifold())
        };
        let model = tr.sampling_model();
        let labels = if image {
            grid_labels(model.classes(), live.class)
        } else {
            Vec::new()
        };
        // An image grid is drawn a few rows at a time and each finished part is
        // shown at once (rows still to come show their noise). Adaptive steps
        // differ between parts, so an adaptive solver draws it in one go.
        let part = if image && live.solver.kind != SolverKind::Dopri5 {
            GRID_PART_ROWS * GRID_COLUMNS
        } else {
            n
        };
        let mut start_noise = x0.flatten_all()?.to_vec1::<f32>()?;
        tr.dataset().to_data_space(&mut start_noise);
        let mut snap = SampleSnapshot {
            step: tr.step_count(),
            sample_shape: shape,
            times: Vec::new(),
            states: Vec::new(),
            nfe: 0,
            guidance: (!labels.is_empty()).then_some(live.guidance),
            labels: labels.clone(),
            columns: if image { GRID_COLUMNS } else { 0 },
            complete: false,
            discrete: false,
        };
        let mut start = 0;
        while start < n {
            let len = part.min(n - start);
            let x = x0.narrow(0, start, len)?;
            let trained = tr.config().scheduler;
            let retimed = |f: &dyn crate::model::VelocityField| match live.sample_scheduler {
                Some(target) if target != trained && how.manifold.is_none() => integrate(
                    &crate::flow::SchedulerChange::new(f, trained, target),
                    &x,
                    &live.solver,
                    &how,
                ),
                _ => integrate(f, &x, &live.solver, &how),
            };
            let sol = match labels.get(start..start + len) {
                Some(l) if !l.is_empty() => {
                    let l = candle_core::Tensor::from_vec(l.to_vec(), len, tr.device())?;
                    let field = Guided::new(model, &l, live.guidance)?;
                    retimed(&field)
                }
                _ => retimed(model),
            };
            let sol = match sol {
                Err(Error::Interrupted) => return Ok(()),
                other => other?,
            };
            if snap.states.is_empty() {
                snap.times.clone_from(&sol.times);
                snap.states = vec![start_noise.clone(); sol.states.len()];
            }
            for (dst, s) in snap.states.iter_mut().zip(&sol.states) {
                let mut v = s.flatten_all()?.to_vec1::<f32>()?;
                tr.dataset().to_data_space(&mut v);
                if let Some(d) = dst.get_mut(start * dim..(start + len) * dim) {
                    d.copy_from_slice(&v);
                }
            }
            snap.nfe = snap.nfe.max(sol.nfe);
            start += len;
            if start < n {
                // Show the part done so far; a full channel just skips it.
                if self
                    .events
                    .try_send(Event::Samples(Box::new(snap.clone())))
                    .is_ok()
                {
                    (self.repaint)();
                }
            }
        }
        snap.complete = true;
        self.samples = Some(snap);
        Ok(())
    }

    /// The preview of a discrete flow: the token sampler from fixed source
    /// tokens, every step's tokens kept (as values, NaN for masks).
    fn discrete_preview(
        &mut self,
        dc: crate::discrete::DiscreteConfig,
        live: LiveSettings,
    ) -> Result<()> {
        let cancel = self.cancel_preview.clone();
        let tr = self.trainer.as_ref().ok_or_else(|| {
            Error::config("no model yet: start training or open a checkpoint first")
        })?;
        let shape = tr.sample_shape().to_vec();
        let d: usize = shape.iter().product();
        let image = shape.len() > 1;
        let n = if image {
            GRID_ROWS * GRID_COLUMNS
        } else {
            live.preview_n.max(1)
        };
        let model = tr.sampling_model();
        let labels = if image {
            grid_labels(model.classes(), live.class)
        } else {
            Vec::new()
        };
        let sampling = crate::discrete::DiscreteSampling {
            steps: if live.solver.kind == SolverKind::Dopri5 {
                crate::discrete::DiscreteSampling::default().steps
            } else {
                live.solver.steps
            },
            corrector: live.corrector,
            guidance: live.guidance,
        };
        let s = crate::discrete::sample_tokens(
            model,
            &dc,
            d,
            n,
            tr.config().seed,
            &sampling,
            (!labels.is_empty()).then_some(labels.as_slice()),
            true,
            Some(&cancel),
            tr.device(),
        );
        let s = match s {
            Err(Error::Interrupted) => return Ok(()),
            other => other?,
        };
        let tok = crate::discrete::Tokenizer::for_shape(dc.levels, &shape);
        let states = s
            .states
            .iter()
            .map(|st| {
                let mut v = tok.values(st);
                tr.dataset().to_data_space(&mut v);
                v
            })
            .collect();
        self.samples = Some(SampleSnapshot {
            step: tr.step_count(),
            sample_shape: shape,
            times: s.times,
            states,
            nfe: s.nfe,
            guidance: (!labels.is_empty()).then_some(live.guidance),
            labels,
            columns: if image { GRID_COLUMNS } else { 0 },
            complete: true,
            discrete: true,
        });
        Ok(())
    }

    /// Sends what it can without blocking; keeps the rest for later.
    fn flush(&mut self) {
        let mut sent = false;
        if !self.progress.is_empty() {
            let batch = std::mem::take(&mut self.progress);
            match self.events.try_send(Event::Progress(batch)) {
                Ok(()) => sent = true,
                Err(
                    TrySendError::Full(Event::Progress(b))
                    | TrySendError::Disconnected(Event::Progress(b)),
                ) => self.progress = b,
                Err(_) => {}
            }
        }
        while let Some(e) = self.outbox.pop_front() {
            match self.events.try_send(e) {
                Ok(()) => sent = true,
                Err(TrySendError::Full(e) | TrySendError::Disconnected(e)) => {
                    self.outbox.push_front(e);
                    break;
                }
            }
        }
        if let Some(s) = self.samples.take() {
            match self.events.try_send(Event::Samples(Box::new(s))) {
                Ok(()) => sent = true,
                Err(
                    TrySendError::Full(Event::Samples(s))
                    | TrySendError::Disconnected(Event::Samples(s)),
                ) => self.samples = Some(*s),
                Err(_) => {}
            }
        }
        if sent {
            (self.repaint)();
        }
    }
}
