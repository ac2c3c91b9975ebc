//! Discrete flow matching (Campbell et al. 2024; Gat et al. 2024): flows of
//! tokens by continuous-time Markov chains.
//!
//! Every coordinate of a sample is a token in `0..levels` (2D points: 128 bins
//! per axis; MNIST: a few grey levels), plus a mask token `levels` for the
//! mask source. The factorised mixture path keeps each token of the source x_0
//! until it jumps, once, to the data token x_1:
//! `p_t(x^i | x_0, x_1) = κ_t δ(x_1^i) + (1 − κ_t) δ(x_0^i)`, with the
//! polynomial scheduler κ_t = t^n (t = 0 source, t = 1 data).
//!
//! The network predicts the posterior p(x_1^i | x_t) of every coordinate
//! (logits `(n, D, levels)`), trained with cross-entropy or the generalised KL
//! loss; the sampler ([`sampler`]) is the discrete Euler method on the
//! probability velocity `u_t(y | x_t) = κ̇_t / (1 − κ_t) [p(x_1 = y | x_t) − δ(y = x_t)]`,
//! with an optional corrector that also jumps back towards the source.

pub mod model;
pub mod sampler;

use candle_core::{D, Tensor};
use rand::RngExt as _;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use model::{TokenConfig, TokenModel};
pub use sampler::{DiscreteSampling, TokenSamples, sample_tokens, sample_values};

/// The source distribution of the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscreteSource {
    /// Every token starts as the mask token; sampling unmasks them.
    #[default]
    Mask,
    /// Every token starts uniform over the levels; sampling makes tokens jump.
    Uniform,
}

impl DiscreteSource {
    /// Both sources.
    pub const ALL: [DiscreteSource; 2] = [DiscreteSource::Mask, DiscreteSource::Uniform];

    /// Its name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            DiscreteSource::Mask => "mask",
            DiscreteSource::Uniform => "uniform",
        }
    }

    /// Looks a source up by name.
    pub fn from_name(name: &str) -> Option<DiscreteSource> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The training loss of a discrete flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscreteLoss {
    /// Cross-entropy of the predicted posterior at the data token, −log p(x_1 | x_t).
    #[default]
    CrossEntropy,
    /// The generalised KL divergence between the true and the predicted
    /// probability velocities (Shaul et al. 2024), weighted by κ̇ / (1 − κ).
    GeneralizedKl,
}

impl DiscreteLoss {
    /// Both losses.
    pub const ALL: [DiscreteLoss; 2] = [DiscreteLoss::CrossEntropy, DiscreteLoss::GeneralizedKl];

    /// Its name on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            DiscreteLoss::CrossEntropy => "cross-entropy",
            DiscreteLoss::GeneralizedKl => "generalized-kl",
        }
    }

    /// Looks a loss up by name.
    pub fn from_name(name: &str) -> Option<DiscreteLoss> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The settings of a discrete flow.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscreteConfig {
    /// Where tokens start.
    pub source: DiscreteSource,
    /// Tokens per coordinate (bins per axis for 2D data, grey levels for images).
    pub levels: usize,
    /// The exponent n of the scheduler κ_t = t^n.
    pub kappa_power: f64,
    /// The training loss.
    pub loss: DiscreteLoss,
}

impl Default for DiscreteConfig {
    fn default() -> Self {
        DiscreteConfig {
            source: DiscreteSource::Mask,
            levels: BINS_2D,
            kappa_power: 1.0,
            loss: DiscreteLoss::CrossEntropy,
        }
    }
}

/// Bins per axis of 2D data, as in the discrete flow matching literature.
pub const BINS_2D: usize = 128;
/// Grey levels of discrete MNIST.
pub const IMAGE_LEVELS: usize = 4;
/// Half-width of the binned range of 2D data in model (standardised) units.
pub const RANGE_2D: f32 = 3.0;
/// Largest t at which training evaluates κ̇ / (1 − κ) (it diverges at 1).
const T_MAX: f64 = 0.999;

impl DiscreteConfig {
    /// The defaults for images: the mask source over [`IMAGE_LEVELS`] grey levels.
    pub fn for_images() -> Self {
        DiscreteConfig {
            levels: IMAGE_LEVELS,
            ..Default::default()
        }
    }

    /// Checks the values are in range.
    pub fn validate(&self) -> Result<()> {
        if !(2..=4096).contains(&self.levels) {
            return Err(Error::config(format!(
                "discrete levels must be 2..=4096, got {}",
                self.levels
            )));
        }
        if !(self.kappa_power.is_finite() && self.kappa_power > 0.0 && self.kappa_power <= 10.0) {
            return Err(Error::config(format!(
                "the scheduler exponent must be in (0, 10], got {}",
                self.kappa_power
            )));
        }
        Ok(())
    }

    /// κ_t = t^n.
    pub fn kappa(&self, t: f64) -> f64 {
        t.clamp(0.0, 1.0).powf(self.kappa_power)
    }

    /// dκ/dt = n t^(n − 1).
    pub fn d_kappa(&self, t: f64) -> f64 {
        let t = t.clamp(0.0, 1.0);
        if t == 0.0 && self.kappa_power < 1.0 {
            return f64::MAX;
        }
        self.kappa_power * t.powf(self.kappa_power - 1.0)
    }

    /// The mask token (one past the last level).
    pub fn mask(&self) -> u32 {
        self.levels as u32
    }

    /// `n · d` source tokens.
    pub fn source_tokens(&self, count: usize, rng: &mut StdRng) -> Vec<u32> {
        match self.source {
            DiscreteSource::Mask => vec![self.mask(); count],
            DiscreteSource::Uniform => (0..count)
                .map(|_| rng.random_range(0..self.levels as u32))
                .collect(),
        }
    }

    /// A training batch of the mixture path: for data tokens `x1` (`n · d`)
    /// and one time per sample, source tokens and `x_t` (each token is the data
    /// token with probability κ_t, else the source token).
    pub fn path_sample(&self, x1: &[u32], d: usize, t: &[f64], rng: &mut StdRng) -> Vec<u32> {
        let x0 = self.source_tokens(x1.len(), rng);
        x1.chunks(d.max(1))
            .zip(x0.chunks(d.max(1)))
            .zip(t)
            .flat_map(|((a, b), &ti)| {
                let k = self.kappa(ti);
                a.iter()
                    .zip(b)
                    .map(|(&one, &zero)| if rng.random::<f64>() < k { one } else { zero })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The loss of predicted `logits` `(n, d, levels)` at `x_t` (`(n, d)` u32)
    /// against the data tokens `x_1` (`(n, d)` u32), for times `t` (n values).
    pub fn loss(&self, logits: &Tensor, x_t: &Tensor, x_1: &Tensor, t: &[f64]) -> Result<Tensor> {
        let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let log_p_x1 = log_p.gather(&x_1.unsqueeze(2)?, 2)?.squeeze(2)?;
        match self.loss {
            DiscreteLoss::CrossEntropy => Ok(log_p_x1.mean_all()?.neg()?),
            DiscreteLoss::GeneralizedKl => {
                let dev = logits.device();
                let (n, d) = x_t.dims2()?;
                // p(x_1 = x_t | x_t): zero where x_t is the mask (never a data token).
                let last = (self.levels - 1) as u32;
                let xt_clamped = x_t.clamp(0u32, last)?;
                let is_token = x_t.le(last)?.to_dtype(logits.dtype())?;
                let p_xt = (log_p
                    .gather(&xt_clamped.unsqueeze(2)?, 2)?
                    .squeeze(2)?
                    .exp()?
                    * &is_token)?;
                let same = x_t.eq(x_1)?.to_dtype(logits.dtype())?;
                let weight: Vec<f32> = t
                    .iter()
                    .map(|&ti| {
                        let ti = ti.min(T_MAX);
                        (self.d_kappa(ti) / (1.0 - self.kappa(ti)).max(1e-6)) as f32
                    })
                    .collect();
                let weight = Tensor::from_vec(weight, (n, 1), dev)?.to_dtype(logits.dtype())?;
                // −λ [p(x_t) − δ + (1 − δ) log p(x_1)]
                let inner = ((p_xt - &same)? + (same.affine(-1.0, 1.0)? * log_p_x1)?)?;
                let _ = d;
                Ok(inner.broadcast_mul(&weight)?.neg()?.mean_all()?)
            }
        }
    }
}

/// Maps model-space values to tokens and back, one coordinate at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tokenizer {
    /// Number of tokens.
    pub levels: usize,
    /// Lowest value.
    pub lo: f32,
    /// Highest value.
    pub hi: f32,
    /// `true`: the levels include both ends (grey levels, `lo` and `hi` exact);
    /// `false`: the tokens are bins of equal width and stand for their centres.
    pub inclusive: bool,
}

impl Tokenizer {
    /// 2D data: `levels` bins over [−[`RANGE_2D`], [`RANGE_2D`]] (standardised units).
    pub fn bins_2d(levels: usize) -> Self {
        Tokenizer {
            levels,
            lo: -RANGE_2D,
            hi: RANGE_2D,
            inclusive: false,
        }
    }

    /// Images in [−1, 1]: `levels` grey levels from black to white.
    pub fn grey_levels(levels: usize) -> Self {
        Tokenizer {
            levels,
            lo: -1.0,
            hi: 1.0,
            inclusive: true,
        }
    }

    /// The tokenizer for samples of `sample_shape` (images have 3 dimensions).
    pub fn for_shape(levels: usize, sample_shape: &[usize]) -> Self {
        if sample_shape.len() > 1 {
            Self::grey_levels(levels)
        } else {
            Self::bins_2d(levels)
        }
    }

    /// The token of a value (values outside the range go to the end tokens).
    pub fn token(&self, v: f32) -> u32 {
        let last = self.levels.saturating_sub(1) as f32;
        let u = (v - self.lo) / (self.hi - self.lo);
        let k = if self.inclusive {
            (u * last).round()
        } else {
            (u * self.levels as f32).floor()
        };
        if k.is_nan() {
            0
        } else {
            k.clamp(0.0, last) as u32
        }
    }

    /// The value a token stands for (NaN for the mask and anything out of range).
    pub fn value(&self, k: u32) -> f32 {
        let k = k as usize;
        if k >= self.levels {
            return f32::NAN;
        }
        let span = self.hi - self.lo;
        if self.inclusive {
            self.lo + span * k as f32 / self.levels.saturating_sub(1).max(1) as f32
        } else {
            self.lo + span * (k as f32 + 0.5) / self.levels as f32
        }
    }

    /// Tokens of many values.
    pub fn tokens(&self, values: &[f32]) -> Vec<u32> {
        values.iter().map(|&v| self.token(v)).collect()
    }

    /// Values of many tokens (NaN for masks).
    pub fn values(&self, tokens: &[u32]) -> Vec<f32> {
        tokens.iter().map(|&k| self.value(k)).collect()
    }
}
