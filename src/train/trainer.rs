//! The training loop of conditional flow matching:
//! loss = E_{t, x_0, x_1} ‖v_θ(x_t, t) − (d_alpha_t x_1 + d_sigma_t x_0)‖².
//! On a manifold (Riemannian flow matching) x_t lies on the geodesic from x_0
//! to x_1, the target is `log_{x_t}(x_1) / (1 − t)`, and the network's output
//! is projected onto the tangent space at x_t before the loss.
//!
//! [`Trainer::step`] runs one step; [`Trainer::run`] loops and reports every
//! step through a callback that can stop it, so the CLI's progress bar and the
//! app's worker thread drive the same code.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::RngExt as _;

use super::config::TrainConfig;
use super::optim::AdamW;
use crate::data::Dataset;
use crate::flow::AffinePath;
use crate::model::{FlowModel, ModelConfig};
use crate::rng::{Stream, stream_rng};
use crate::{Error, Result};

/// Progress after one training step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Steps completed so far (1 after the first step).
    pub step: u64,
    /// Total steps of the run.
    pub total_steps: u64,
    /// Training loss of this step's batch.
    pub loss: f32,
    /// Loss on the fixed held-out batch, when it was computed this step.
    pub held_out_loss: Option<f32>,
    /// Learning rate used for this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Recent training speed.
    pub steps_per_sec: f64,
}

/// How [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// All configured steps are done.
    Finished,
    /// The callback asked to stop.
    Stopped,
}

/// A model's parameters by name, sorted by name (the safetensors keys).
#[derive(Debug, Clone)]
pub struct Params {
    /// Parameter names, sorted.
    pub names: Vec<String>,
    /// The variables, aligned with `names`.
    pub vars: Vec<Var>,
}

impl Params {
    /// Collects the variables of `map`, sorted by name.
    pub fn from_varmap(map: &VarMap) -> Result<Params> {
        let data = map
            .data()
            .lock()
            .map_err(|_| Error::config("parameter map lock poisoned"))?;
        let mut pairs: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, vars) = pairs.into_iter().unzip();
        Ok(Params { names, vars })
    }

    /// Builds a model from `cfg` with fresh variables on `device`.
    pub fn build(
        cfg: &ModelConfig,
        sample_shape: &[usize],
        device: &Device,
    ) -> Result<(Box<dyn FlowModel>, Params)> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, device);
        let model = cfg.build(sample_shape, vb)?;
        Ok((model, Params::from_varmap(&map)?))
    }

    /// Total number of scalar parameters.
    pub fn count(&self) -> usize {
        self.vars.iter().map(|v| v.elem_count()).sum()
    }

    /// Copies `values` (aligned with `names`) into the variables.
    pub fn set_all(&self, values: &[Tensor]) -> Result<()> {
        if values.len() != self.vars.len() {
            return Err(Error::config("parameter count mismatch"));
        }
        for (v, t) in self.vars.iter().zip(values) {
            v.set(t)?;
        }
        Ok(())
    }

    /// The current values (cheap clones of the tensors).
    pub fn tensors(&self) -> Vec<Tensor> {
        self.vars.iter().map(|v| v.as_tensor().clone()).collect()
    }
}

/// Seeded initialisation (candle's own initialisers use an unseedable RNG).
///
/// A weight with at least two dimensions `(out, in, ...)` gets U(−b, b) with
/// b = 1/sqrt(fan_in), fan_in = product of all but the first dimension (PyTorch's
/// default for linear and conv layers); a `*.bias` gets the bound of its sibling
/// `*.weight`. Other 1-D parameters keep their constructor's constant values.
pub fn init_params(params: &Params, seed: u64) -> Result<()> {
    let mut rng = stream_rng(seed, Stream::Init, 0);
    let fan_in = |v: &Var| -> usize { v.dims().iter().skip(1).product::<usize>().max(1) };
    for (name, var) in params.names.iter().zip(&params.vars) {
        let bound = if var.rank() >= 2 {
            Some(1.0 / (fan_in(var) as f32).sqrt())
        } else if let Some(stem) = name.strip_suffix(".bias") {
            let wname = format!("{stem}.weight");
            params
                .names
                .iter()
                .position(|n| *n == wname)
                .and_then(|i| params.vars.get(i))
                .filter(|w| w.rank() >= 2)
                .map(|w| 1.0 / (fan_in(w) as f32).sqrt())
        } else {
            None
        };
        if let Some(b) = bound {
            let vals: Vec<f32> = (0..var.elem_count())
                .map(|_| rng.random_range(-b..=b))
                .collect();
            var.set(&Tensor::from_vec(vals, var.shape(), var.device())?)?;
        }
    }
    Ok(())
}

/// One training batch.
struct Batch {
    /// Noise, `(n, ...)`.
    x_0: Tensor,
    /// Data, `(n, ...)`.
    x_1: Tensor,
    /// Times.
    t: Vec<f64>,
    /// Class labels `(n,)` u32 for class-conditional models.
    labels: Option<Tensor>,
    /// Discrete flows: the tokens x_t and x_1, each `(n, d)` u32.
    tokens: Option<(Tensor, Tensor)>,
}

/// Samples per forward pass when evaluating the held-out loss.
pub const HELD_OUT_SLICE: usize = 256;

/// A fixed held-out batch: noise, data and times, `(n, ...)`.
struct HeldOut {
    x_0: Tensor,
    x_1: Tensor,
    /// Class labels `(n,)` u32, for class-conditional models.
    labels: Option<Tensor>,
    t: Vec<f64>,
    /// Discrete flows: the tokens x_t and x_1, each `(n, d)` u32.
    tokens: Option<(Tensor, Tensor)>,
}

/// Owns a model, its optimiser and EMA, and runs training steps.
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    dataset: Arc<dyn Dataset>,
    sample_shape: Vec<usize>,
    model: Box<dyn FlowModel>,
    params: Params,
    ema: Option<(Box<dyn FlowModel>, Params)>,
    opt: AdamW,
    path: AffinePath,
    step: u64,
    held_out: Option<HeldOut>,
    recent: VecDeque<Instant>,
    history: Vec<[f32; 3]>,
}

/// Most loss-history entries kept; beyond this the older half is thinned 2x.
pub const MAX_HISTORY: usize = 8192;

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// Sets up a fresh run: loads the data, builds and initialises the model from the seed.
    pub fn new(cfg: TrainConfig, device: &Device) -> Result<Trainer> {
        cfg.validate()?;
        let dataset: Arc<dyn Dataset> = Arc::from(cfg.dataset.build()?);
        Self::with_dataset(cfg, dataset, device)
    }

    /// Like [`Trainer::new`] with an already loaded dataset (must match `cfg.dataset`).
    pub fn with_dataset(
        cfg: TrainConfig,
        dataset: Arc<dyn Dataset>,
        device: &Device,
    ) -> Result<Trainer> {
        cfg.validate()?;
        let sample_shape = dataset.sample_shape();
        let (model, params) = Params::build(&cfg.model, &sample_shape, device)?;
        init_params(&params, cfg.seed)?;
        let ema = match cfg.ema_decay {
            Some(_) => {
                let (m, p) = Params::build(&cfg.model, &sample_shape, device)?;
                p.set_all(&params.tensors())?;
                Some((m, p))
            }
            None => None,
        };
        let opt = AdamW::new(params.vars.clone(), cfg.optimizer)?;
        let classes = model.classes();
        cfg.source.validate_for(&sample_shape)?;
        if cfg.dequantize && !cfg.dataset.is_image() {
            return Err(Error::config("dequantisation is for image (pixel) data"));
        }
        if cfg.coupling_per_class && dataset.classes() == 0 {
            return Err(Error::config(
                "coupling within classes needs labelled data (e.g. MNIST)",
            ));
        }
        if classes > 0 && dataset.classes() != classes {
            return Err(Error::config(format!(
                "the model is conditioned on {classes} classes but the data has {}",
                dataset.classes()
            )));
        }
        let held_out = if cfg.held_out_size > 0 {
            let n = cfg.held_out_size;
            let mut rng = stream_rng(cfg.seed, Stream::HeldOut, 0);
            let (mut x_1, labels) = if classes > 0 || cfg.coupling_per_class {
                dataset.sample_held_out_labeled(n, &mut rng)
            } else {
                (dataset.sample_held_out(n, &mut rng), Vec::new())
            };
            if cfg.dequantize {
                dequantize(&mut x_1, &mut rng);
            }
            let d = x_1.len() / n.max(1);
            let mut x_0 = if cfg.discrete.is_some() {
                x_1.clone()
            } else {
                cfg.source.draw(n, d, &mut rng)
            };
            let pair_labels = cfg.coupling_per_class.then_some(labels.as_slice());
            cfg.coupling
                .pair(&mut x_0, &x_1, d, pair_labels, &mut rng)?;
            let t: Vec<f64> = (0..n)
                .map(|_| {
                    cfg.time_sampling
                        .draw(cfg.scheduler.t_max_train(), &mut rng)
                })
                .collect();
            let tokens = cfg
                .discrete
                .map(|dc| token_batch(&dc, &sample_shape, &x_1, &t, &mut rng, device))
                .transpose()?;
            let shape = batch_shape(n, &sample_shape);
            let labels = (classes > 0)
                .then(|| Tensor::from_vec(labels, n, device))
                .transpose()?;
            Some(HeldOut {
                x_0: Tensor::from_vec(x_0, shape.clone(), device)?,
                x_1: Tensor::from_vec(x_1, shape, device)?,
                labels,
                t,
                tokens,
            })
        } else {
            None
        };
        Ok(Trainer {
            path: AffinePath::new(cfg.scheduler),
            cfg,
            device: device.clone(),
            dataset,
            sample_shape,
            model,
            params,
            ema,
            opt,
            step: 0,
            held_out,
            recent: VecDeque::new(),
            history: Vec::new(),
        })
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Sets the total number of steps (e.g. to extend a resumed run).
    pub fn set_total_steps(&mut self, steps: u64) -> Result<()> {
        if steps == 0 {
            return Err(Error::config("steps must be at least 1"));
        }
        self.cfg.steps = steps;
        Ok(())
    }

    /// Sets the peak learning rate of the schedule (a live setting: takes effect at the next step).
    pub fn set_peak_lr(&mut self, lr: f64) -> Result<()> {
        let mut o = self.cfg.optimizer;
        o.lr = lr;
        o.validate()?;
        self.cfg.optimizer = o;
        Ok(())
    }

    /// Steps completed.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Shape of one sample, e.g. `[2]`.
    pub fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    /// The model with the training weights.
    pub fn model(&self) -> &dyn FlowModel {
        self.model.as_ref()
    }

    /// The model to sample from: the EMA weights when EMA is on, else the training weights.
    pub fn sampling_model(&self) -> &dyn FlowModel {
        match &self.ema {
            Some((m, _)) => m.as_ref(),
            None => self.model.as_ref(),
        }
    }

    /// The training parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The EMA parameters, when EMA is on.
    pub fn ema_params(&self) -> Option<&Params> {
        self.ema.as_ref().map(|(_, p)| p)
    }

    /// The loss history `(step, loss, held-out loss or NaN)`, oldest first; old
    /// entries are thinned so it stays under [`MAX_HISTORY`] entries.
    pub fn history(&self) -> &[[f32; 3]] {
        &self.history
    }

    /// Replaces the loss history (used by checkpoint loading).
    pub fn set_history(&mut self, history: Vec<[f32; 3]>) {
        self.history = history;
    }

    /// The optimiser.
    pub fn optimizer(&self) -> &AdamW {
        &self.opt
    }

    /// Restores weights, EMA, optimiser state and step count (used by checkpoint loading).
    pub fn restore(
        &mut self,
        weights: &[Tensor],
        ema: Option<&[Tensor]>,
        moments: Option<(Vec<Tensor>, Vec<Tensor>)>,
        step: u64,
    ) -> Result<()> {
        self.params.set_all(weights)?;
        match (&self.ema, ema) {
            (Some((_, p)), Some(e)) => p.set_all(e)?,
            (Some((_, p)), None) => p.set_all(weights)?,
            _ => {}
        }
        match moments {
            Some((m, v)) => self.opt.restore(m, v, step)?,
            None => {
                let zeros = weights
                    .iter()
                    .map(Tensor::zeros_like)
                    .collect::<candle_core::Result<Vec<_>>>()?;
                self.opt.restore(zeros.clone(), zeros, 0)?;
            }
        }
        self.step = step;
        Ok(())
    }

    /// Step `step`'s batch: noise, data, times, and for class-conditional
    /// models the labels, each replaced by the null class with probability
    /// `label_dropout`.
    fn batch(&self, step: u64) -> Result<Batch> {
        let b = self.cfg.batch_size;
        let classes = self.model.classes();
        let mut rng = stream_rng(self.cfg.seed, Stream::Batch, step);
        let (mut x_1, labels) = if classes > 0 || self.cfg.coupling_per_class {
            self.dataset.sample_train_labeled(b, &mut rng)
        } else {
            (self.dataset.sample_train(b, &mut rng), Vec::new())
        };
        if self.cfg.dequantize {
            dequantize(&mut x_1, &mut rng);
        }
        let dim = x_1.len() / b.max(1);
        let mut x_0 = if self.cfg.discrete.is_some() {
            x_1.clone()
        } else {
            self.cfg.source.draw(b, dim, &mut rng)
        };
        let pair_labels = self.cfg.coupling_per_class.then_some(labels.as_slice());
        self.cfg
            .coupling
            .pair(&mut x_0, &x_1, dim, pair_labels, &mut rng)?;
        let t_max = self.cfg.scheduler.t_max_train();
        let t: Vec<f64> = (0..b)
            .map(|_| self.cfg.time_sampling.draw(t_max, &mut rng))
            .collect();
        let tokens = self
            .cfg
            .discrete
            .map(|dc| token_batch(&dc, &self.sample_shape, &x_1, &t, &mut rng, &self.device))
            .transpose()?;
        let labels = if classes > 0 {
            let p = self.cfg.label_dropout;
            let dropped: Vec<u32> = labels
                .into_iter()
                .map(|l| {
                    if rng.random::<f64>() < p {
                        classes as u32
                    } else {
                        l
                    }
                })
                .collect();
            Some(Tensor::from_vec(dropped, b, &self.device)?)
        } else {
            None
        };
        let shape = batch_shape(b, &self.sample_shape);
        Ok(Batch {
            x_0: Tensor::from_vec(x_0, shape.clone(), &self.device)?,
            x_1: Tensor::from_vec(x_1, shape, &self.device)?,
            t,
            labels,
            tokens,
        })
    }

    fn loss(&self, model: &dyn FlowModel, b: &Batch) -> Result<Tensor> {
        if let (Some(dc), Some((x_t, x_1))) = (&self.cfg.discrete, &b.tokens) {
            let tt = Tensor::from_vec(
                b.t.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                b.t.len(),
                &self.device,
            )?;
            let logits = model.token_logits(x_t, &tt, b.labels.as_ref())?;
            return dc.loss(&logits, x_t, x_1, &b.t);
        }
        let manifold = self.cfg.source.manifold();
        let (x_t, target) = match manifold {
            Some(m) => m.geodesic_batch(&b.x_0, &b.x_1, &b.t)?,
            None => {
                let ps = self.path.sample(&b.x_0, &b.x_1, &b.t)?;
                (ps.x_t, ps.dx_t)
            }
        };
        let tt = Tensor::from_vec(
            b.t.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            b.t.len(),
            &self.device,
        )?;
        let v = match &b.labels {
            Some(l) => model.velocity_with_labels(&x_t, &tt, l)?,
            None => model.velocity(&x_t, &tt)?,
        };
        let v = match manifold {
            Some(m) => m.project_tangents(&x_t, &v)?,
            None => v,
        };
        Ok((v - target)?.sqr()?.mean_all()?)
    }

    /// The loss of the training weights on the fixed held-out batch. It is
    /// evaluated in slices of at most [`HELD_OUT_SLICE`] samples, so that a large
    /// held-out set of images does not hold every activation (and candle's graph
    /// of them) in memory at once; the slice means are combined exactly.
    pub fn held_out_loss(&self) -> Result<Option<f32>> {
        let Some(h) = &self.held_out else {
            return Ok(None);
        };
        let n = h.t.len();
        let mut total = 0f64;
        for (i, t) in h.t.chunks(HELD_OUT_SLICE).enumerate() {
            let (start, len) = (i * HELD_OUT_SLICE, t.len());
            let slice = Batch {
                x_0: h.x_0.narrow(0, start, len)?,
                x_1: h.x_1.narrow(0, start, len)?,
                t: t.to_vec(),
                labels: h
                    .labels
                    .as_ref()
                    .map(|l| l.narrow(0, start, len))
                    .transpose()?,
                tokens: match &h.tokens {
                    Some((a, b)) => Some((a.narrow(0, start, len)?, b.narrow(0, start, len)?)),
                    None => None,
                },
            };
            let l = self.loss(self.model.as_ref(), &slice)?;
            total += f64::from(l.to_scalar::<f32>()?) * len as f64;
        }
        Ok(Some((total / n.max(1) as f64) as f32))
    }

    /// Runs one training step. On a NaN or infinite loss or gradient it returns
    /// [`Error::NonFinite`] and leaves the weights of the last good step in place.
    pub fn step(&mut self) -> Result<StepReport> {
        let s = self.step;
        let lr = self.cfg.optimizer.lr_at(s, self.cfg.steps);
        let batch = self.batch(s)?;
        let loss = self.loss(self.model.as_ref(), &batch)?;
        let loss_val = loss.to_scalar::<f32>()?;
        if !loss_val.is_finite() {
            return Err(Error::NonFinite {
                step: s + 1,
                last_good_step: s,
                what: "loss",
                value: loss_val,
            });
        }
        let grads = loss.backward()?;
        let info = self.opt.step(&grads, lr, s + 1).map_err(|e| match e {
            Error::NonFinite { what, value, .. } => Error::NonFinite {
                step: s + 1,
                last_good_step: s,
                what,
                value,
            },
            other => other,
        })?;
        if let (Some((_, ema)), Some(decay)) = (&self.ema, self.cfg.ema_decay) {
            let n = (s + 1) as f64;
            let d = decay.min((1.0 + n) / (10.0 + n));
            for (e, p) in ema.vars.iter().zip(&self.params.vars) {
                e.set(&crate::model::ops::ema_update(
                    e.as_tensor(),
                    p.as_tensor(),
                    d,
                )?)?;
            }
        }
        self.step = s + 1;
        let held_out_loss = if self.cfg.held_out_every > 0
            && (self.step.is_multiple_of(self.cfg.held_out_every) || self.step == self.cfg.steps)
        {
            self.held_out_loss()?
        } else {
            None
        };
        self.history.push([
            self.step as f32,
            loss_val,
            held_out_loss.unwrap_or(f32::NAN),
        ]);
        if self.history.len() > MAX_HISTORY {
            let half = self.history.len() / 2;
            let mut thinned: Vec<[f32; 3]> =
                self.history.iter().take(half).step_by(2).copied().collect();
            thinned.extend_from_slice(self.history.get(half..).unwrap_or_default());
            self.history = thinned;
        }
        let now = Instant::now();
        self.recent.push_back(now);
        if self.recent.len() > 50 {
            self.recent.pop_front();
        }
        let steps_per_sec = match self.recent.front() {
            Some(first) if self.recent.len() > 1 => {
                let dt = now.duration_since(*first).as_secs_f64();
                if dt > 0.0 {
                    (self.recent.len() - 1) as f64 / dt
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        Ok(StepReport {
            step: self.step,
            total_steps: self.cfg.steps,
            loss: loss_val,
            held_out_loss,
            lr,
            grad_norm: info.grad_norm,
            steps_per_sec,
        })
    }

    /// Trains until the configured number of steps, calling `on_step` after every
    /// step; returning `ControlFlow::Break` from it stops between two steps.
    pub fn run(
        &mut self,
        mut on_step: impl FnMut(&StepReport) -> ControlFlow<()>,
    ) -> Result<RunEnd> {
        while self.step < self.cfg.steps {
            let report = self.step()?;
            if on_step(&report).is_break() {
                return Ok(RunEnd::Stopped);
            }
        }
        Ok(RunEnd::Finished)
    }
}

/// The tokens of a discrete batch: data values `x_1` (`n · d`, model space)
/// binned, and x_t drawn from the mixture path at times `t`; both `(n, d)` u32.
fn token_batch(
    dc: &crate::discrete::DiscreteConfig,
    sample_shape: &[usize],
    x_1: &[f32],
    t: &[f64],
    rng: &mut rand::rngs::StdRng,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let d: usize = sample_shape.iter().product();
    let n = t.len();
    let tok = crate::discrete::Tokenizer::for_shape(dc.levels, sample_shape);
    let x1 = tok.tokens(x_1);
    let xt = dc.path_sample(&x1, d, t, rng);
    Ok((
        Tensor::from_vec(xt, (n, d), device)?,
        Tensor::from_vec(x1, (n, d), device)?,
    ))
}

/// Uniform dequantisation of pixels in model units (`pixel / 127.5 − 1`): adds
/// U[0, 1) grey levels, so the data has a density over [0, 256)^d.
pub fn dequantize(x: &mut [f32], rng: &mut rand::rngs::StdRng) {
    for v in x {
        *v += rng.random::<f32>() / 127.5;
    }
}

/// `[n, sample_shape...]`.
pub(crate) fn batch_shape(n: usize, sample_shape: &[usize]) -> Vec<usize> {
    let mut s = vec![n];
    s.extend_from_slice(sample_shape);
    s
}
