//! The serialisable description of a training run: a run is reproducible from
//! its [`TrainConfig`] (which includes the seed).

use serde::{Deserialize, Serialize};

use crate::data::{DatasetKind, Toy2d};
use crate::discrete::{DiscreteConfig, TokenConfig};
use crate::flow::{Coupling, Scheduler, Source, TimeSampling};
use crate::model::{ModelConfig, UnetConfig};
use crate::solver::SolverConfig;
use crate::{Error, Result};

/// AdamW hyperparameters and the learning-rate schedule (linear warm-up, then
/// cosine decay from `lr` to `lr · min_lr_ratio` at the last step).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Exponential decay of the first moment.
    pub beta1: f64,
    /// Exponential decay of the second moment.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Decoupled weight decay (AdamW): `p ← p − lr · weight_decay · p`.
    pub weight_decay: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr` (1 disables the decay).
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 100,
            min_lr_ratio: 0.01,
            grad_clip: Some(1.0),
        }
    }
}

impl OptimizerConfig {
    /// The learning rate used for step `step` (0-based) of a `total`-step run.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = total.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine)
    }

    /// Checks the values are in range.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| Err(Error::config(format!("{what} is out of range: {v}")));
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return bad("learning rate (must be in (0, 10])", self.lr);
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1 (must be in [0, 1))", self.beta1);
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2 (must be in [0, 1))", self.beta2);
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps (must be > 0)", self.eps);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay (must be >= 0)", self.weight_decay);
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("min_lr_ratio (must be in [0, 1])", self.min_lr_ratio);
        }
        if let Some(c) = self.grad_clip
            && !(c.is_finite() && c > 0.0)
        {
            return bad("gradient clip (must be > 0)", c);
        }
        Ok(())
    }
}

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The data.
    pub dataset: DatasetKind,
    /// The velocity network.
    pub model: ModelConfig,
    /// The probability path's scheduler.
    pub scheduler: Scheduler,
    /// How training times are drawn.
    pub time_sampling: TimeSampling,
    /// Samples per step.
    pub batch_size: usize,
    /// Total training steps.
    pub steps: u64,
    /// Optimiser and learning-rate schedule.
    pub optimizer: OptimizerConfig,
    /// Decay of the exponential moving average of the weights (`None`: no EMA).
    /// Sampling uses the EMA weights when present.
    pub ema_decay: Option<f64>,
    /// Seed of every random draw (initial weights, batches, times, noise).
    pub seed: u64,
    /// Size of the fixed held-out batch whose loss is reported.
    pub held_out_size: usize,
    /// Compute the held-out loss every this many steps (0: never).
    pub held_out_every: u64,
    /// The solver used for samples and the end-of-training evaluation.
    pub solver: SolverConfig,
    /// For class-conditional models: the probability that a training sample's
    /// label is replaced by the null class, so that the same network also learns
    /// the unconditional velocity (classifier-free guidance).
    pub label_dropout: f64,
    /// The source distribution p_0 (t = 0).
    pub source: Source,
    /// How source and data points are paired in each batch.
    pub coupling: Coupling,
    /// Pair points only within a class (labelled data).
    pub coupling_per_class: bool,
    /// Images: add uniform noise of one grey level to every pixel, so the
    /// model learns a density whose bits/dim are meaningful.
    pub dequantize: bool,
    /// Discrete flow matching over tokens (`None`: a continuous flow). The
    /// model must then be a [`ModelConfig::Tokens`] network with the same levels.
    pub discrete: Option<DiscreteConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            dataset: DatasetKind::Toy2d {
                toy: Toy2d::Moons { noise: 0.05 },
            },
            model: ModelConfig::default(),
            scheduler: Scheduler::CondOt,
            time_sampling: TimeSampling::Uniform,
            batch_size: 512,
            steps: 4000,
            optimizer: OptimizerConfig::default(),
            ema_decay: Some(0.999),
            seed: 0,
            held_out_size: 1024,
            held_out_every: 100,
            solver: SolverConfig::default(),
            label_dropout: 0.1,
            source: Source::Gaussian,
            coupling: Coupling::Independent,
            coupling_per_class: false,
            dequantize: false,
            discrete: None,
        }
    }
}

/// Fourier features of the MLP's input for data on a manifold (see
/// [`crate::model::MlpConfig::fourier_features`]).
pub const MANIFOLD_FOURIER_FEATURES: usize = 64;

/// Largest held-out batch.
pub const MAX_HELD_OUT: usize = 1 << 16;
/// Largest batch of images (a 28x28 UNet batch of 4096 already needs gigabytes).
pub const MAX_IMAGE_BATCH: usize = 4096;

/// Classes of MNIST (the digits), which a UNet for MNIST is conditioned on by default.
pub const MNIST_CLASSES: usize = 10;

impl TrainConfig {
    /// This config moved to `dataset`. Switching between 2D points and images
    /// also switches the model (MLP, or a UNet conditioned on the digits), the
    /// batch size and the steps to that kind of data's defaults (batch 128 and
    /// 2000 steps for images). Moving onto a manifold makes the source uniform
    /// on it, with independent pairs and the geodesic (cond-ot) path; moving
    /// off one restores the Gaussian. The seed and every other setting stay.
    pub fn with_dataset(&self, dataset: DatasetKind) -> TrainConfig {
        let mut c = self.clone();
        let (was_image, is_image) = (c.dataset.is_image(), dataset.is_image());
        let was_manifold = c.dataset.manifold().is_some();
        let manifold = dataset.manifold();
        c.dataset = dataset;
        if is_image && !was_image {
            c.model = ModelConfig::Unet(UnetConfig {
                classes: MNIST_CLASSES,
                ..UnetConfig::default()
            });
            c.batch_size = 128;
            c.steps = 2000;
        } else if was_image && !is_image {
            let d = TrainConfig::default();
            c.model = d.model;
            c.batch_size = d.batch_size;
            c.steps = d.steps;
        }
        if let Some(dc) = c.discrete {
            // Discrete flows re-wrap the (new) network with this data's levels.
            c.discrete = None;
            c.model = c.model.network().clone();
            if manifold.is_none() {
                let levels = if is_image {
                    crate::discrete::IMAGE_LEVELS
                } else {
                    crate::discrete::BINS_2D
                };
                let levels = if is_image == was_image {
                    dc.levels
                } else {
                    levels
                };
                c = c.with_discrete(Some(DiscreteConfig { levels, ..dc }));
            }
        }
        match manifold {
            Some(manifold) => {
                c.source = Source::Uniform { manifold };
                if let ModelConfig::Mlp(m) = &mut c.model
                    && !was_manifold
                {
                    m.fourier_features = MANIFOLD_FOURIER_FEATURES;
                }
                c.coupling = Coupling::Independent;
                c.scheduler = Scheduler::CondOt;
                c.dequantize = false;
            }
            None if was_manifold || c.source.manifold().is_some() => {
                c.source = Source::Gaussian;
                if let ModelConfig::Mlp(m) = &mut c.model {
                    m.fourier_features = 0;
                }
            }
            None => {}
        }
        c
    }

    /// This config as a discrete flow (`Some`: the network is wrapped to read
    /// and predict tokens of `levels` levels) or as a continuous one (`None`:
    /// the inner network alone). Sources, couplings and dequantisation go back
    /// to their defaults for a discrete flow.
    pub fn with_discrete(&self, discrete: Option<DiscreteConfig>) -> TrainConfig {
        let mut c = self.clone();
        let network = c.model.network().clone();
        c.discrete = discrete;
        c.model = match discrete {
            Some(dc) => {
                c.source = Source::Gaussian;
                c.coupling = Coupling::Independent;
                c.coupling_per_class = false;
                c.dequantize = false;
                ModelConfig::Tokens(TokenConfig {
                    levels: dc.levels,
                    inner: Box::new(network),
                })
            }
            None => network,
        };
        c
    }

    /// Checks every value is in range, with a message naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if let DatasetKind::Toy2d { toy } = &self.dataset {
            toy.validate()?;
        }
        self.validate_manifold()?;
        self.validate_discrete()?;
        self.model.validate()?;
        self.scheduler.validate()?;
        self.optimizer.validate()?;
        self.solver.validate()?;
        self.coupling.validate()?;
        if !(1..=1 << 20).contains(&self.batch_size) {
            return Err(Error::config(format!(
                "batch size must be 1..=1048576, got {}",
                self.batch_size
            )));
        }
        if self.steps == 0 {
            return Err(Error::config("steps must be at least 1"));
        }
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            return Err(Error::config(format!(
                "EMA decay must be in [0, 1), got {d}"
            )));
        }
        if let crate::flow::TimeSampling::LogitNormal { mean, std } = self.time_sampling
            && !(mean.is_finite() && std.is_finite() && std > 0.0)
        {
            return Err(Error::config(
                "logit-normal time sampling needs a finite mean and std > 0",
            ));
        }
        if !(0.0..=1.0).contains(&self.label_dropout) {
            return Err(Error::config(format!(
                "label dropout must be in [0, 1], got {}",
                self.label_dropout
            )));
        }
        if self.held_out_size > MAX_HELD_OUT {
            return Err(Error::config(format!(
                "held-out size must be at most {MAX_HELD_OUT}, got {}",
                self.held_out_size
            )));
        }
        if self.dataset.is_image() && self.batch_size > MAX_IMAGE_BATCH {
            return Err(Error::config(format!(
                "batch size for images must be at most {MAX_IMAGE_BATCH}, got {}",
                self.batch_size
            )));
        }
        if self.held_out_size == 0 && self.held_out_every > 0 {
            return Err(Error::config(
                "held-out size must be at least 1 when held-out loss is on",
            ));
        }
        Ok(())
    }

    /// A manifold dataset needs the uniform source on its manifold, the
    /// geodesic (cond-ot) path, independent pairs and an MLP; other data must
    /// not use a manifold source.
    fn validate_manifold(&self) -> Result<()> {
        let Some(m) = self.dataset.manifold() else {
            if let Some(m) = self.source.manifold() {
                return Err(Error::config(format!(
                    "the uniform source on the {} is only for data on the {0}",
                    m.name()
                )));
            }
            return Ok(());
        };
        let set = self.dataset.name();
        if self.source.manifold() != Some(m) {
            return Err(Error::config(format!(
                "{set} lies on the {}: its source must be uniform-{0}, not {}",
                m.name(),
                self.source.name()
            )));
        }
        if self.scheduler != Scheduler::CondOt {
            return Err(Error::config(format!(
                "{set} trains on the geodesic path, whose scheduler is cond-ot (not {})",
                self.scheduler.name()
            )));
        }
        if self.coupling != Coupling::Independent {
            return Err(Error::config(format!(
                "{set}: only independent pairs are supported on a manifold"
            )));
        }
        if !matches!(self.model, ModelConfig::Mlp(_)) {
            return Err(Error::config(format!("{set} needs an MLP")));
        }
        if let DatasetKind::Manifold { set } = &self.dataset {
            set.validate()?;
        }
        Ok(())
    }

    /// A discrete flow needs a token network with its levels, 2D or image
    /// data, the Gaussian (unused) source and independent pairs.
    fn validate_discrete(&self) -> Result<()> {
        let Some(dc) = &self.discrete else {
            if matches!(self.model, ModelConfig::Tokens(_)) {
                return Err(Error::config(
                    "a token network needs a discrete flow (set \"discrete\")",
                ));
            }
            return Ok(());
        };
        dc.validate()?;
        match &self.model {
            ModelConfig::Tokens(t) if t.levels == dc.levels => {}
            ModelConfig::Tokens(t) => {
                return Err(Error::config(format!(
                    "the token network has {} levels but the discrete flow {}",
                    t.levels, dc.levels
                )));
            }
            _ => {
                return Err(Error::config(
                    "a discrete flow needs a token network (the model config of kind \"tokens\")",
                ));
            }
        }
        if self.dataset.manifold().is_some() {
            return Err(Error::config(
                "discrete flows are for 2D and image data, not for a manifold",
            ));
        }
        if self.coupling != Coupling::Independent || self.source != Source::Gaussian {
            return Err(Error::config(
                "a discrete flow has its own source (mask or uniform tokens) and independent pairs",
            ));
        }
        if self.dequantize {
            return Err(Error::config(
                "a discrete flow learns the grey levels themselves: no dequantisation",
            ));
        }
        Ok(())
    }

    /// Parses a JSON config (missing fields take their defaults) and validates it.
    pub fn from_json(text: &str) -> Result<TrainConfig> {
        let cfg: TrainConfig = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("bad JSON config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The config as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}
