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
use crate::rng::noise;
use crate::solver::{Integration, SolverConfig, integrate};
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
}

impl LiveSettings {
    /// Live settings matching a config, with `preview_n` previews every 100 steps.
    pub fn for_config(cfg: &TrainConfig) -> Self {
        LiveSettings {
            solver: cfg.solver,
            preview_every: 100,
            preview_n: 1000,
            lr: cfg.optimizer.lr,
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
    /// Draw a preview now.
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
    /// End the thread.
    Shutdown,
}

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
    /// A checkpoint was written.
    Saved(PathBuf),
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
        let state = State {
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
        };
        let handle = std::thread::Builder::new()
            .name("flowlab-trainer".into())
            .spawn(move || state.run())
            .map_err(|e| Error::config(format!("cannot start the training thread: {e}")))?;
        Ok(Worker {
            commands: cmd_tx,
            events: ev_rx,
            stop,
            handle: Some(handle),
        })
    }

    /// Queues a command without waiting; fails only if the queue is full or the thread is gone.
    pub fn send(&self, cmd: Command) -> Result<()> {
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
    trainer: Option<Trainer>,
    live: Option<LiveSettings>,
    running: bool,
    steps_left: Option<u64>,
    outbox: VecDeque<Event>,
    progress: Vec<StepReport>,
    samples: Option<SampleSnapshot>,
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
                let tr = Trainer::new(*cfg, &self.device)?;
                self.ready(tr);
                self.preview()?;
                self.running = true;
                self.steps_left = None;
            }
            Command::Pause => {
                if self.running {
                    self.running = false;
                    let step = self.trainer()?.step_count();
                    self.outbox.push_back(Event::Paused { step });
                }
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
                let tr = Trainer::new(cfg, &self.device)?;
                self.ready(tr);
                self.preview()?;
            }
            Command::SampleNow => self.preview()?,
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

    fn load(&mut self, ck: Checkpoint, path: PathBuf) -> Result<()> {
        let tr = ck.into_trainer(&self.device, &path)?;
        self.running = false;
        self.trainer = None;
        self.ready(tr);
        self.outbox.push_back(Event::Loaded(path));
        self.preview()
    }

    fn train_one(&mut self) -> Result<()> {
        let tr = self.trainer()?;
        if tr.step_count() >= tr.config().steps {
            let step = tr.step_count();
            self.running = false;
            self.outbox.push_back(Event::Finished { step });
            return self.preview();
        }
        let report = tr.step()?;
        self.progress.push(report);
        let every = self.live.map_or(0, |l| l.preview_every);
        if every > 0 && report.step.is_multiple_of(every) {
            self.preview()?;
        }
        if let Some(left) = self.steps_left.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.running = false;
                self.steps_left = None;
                self.outbox.push_back(Event::Paused { step: report.step });
                self.preview()?;
            }
        }
        Ok(())
    }

    /// Integrates the fixed preview noise with the sampling weights.
    fn preview(&mut self) -> Result<()> {
        let live = self.live;
        let stop = self.stop.clone();
        let tr = self.trainer()?;
        let live = live.unwrap_or_else(|| LiveSettings::for_config(tr.config()));
        let shape = tr.sample_shape().to_vec();
        let x0 = noise(
            live.preview_n.max(1),
            &shape,
            tr.config().seed,
            1,
            tr.device(),
        )?;
        let how = Integration {
            stop: Some(&stop),
            ..Integration::forward().with_intermediates()
        };
        let sol = integrate(tr.sampling_model(), &x0, &live.solver, &how)?;
        let mut states = Vec::with_capacity(sol.states.len());
        for s in &sol.states {
            let mut v = s.flatten_all()?.to_vec1::<f32>()?;
            tr.dataset().to_data_space(&mut v);
            states.push(v);
        }
        self.samples = Some(SampleSnapshot {
            step: tr.step_count(),
            sample_shape: shape,
            times: sol.times,
            states,
            nfe: sol.nfe,
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
