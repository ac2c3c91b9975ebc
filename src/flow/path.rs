//! Affine probability paths `x_t = alpha_t x_1 + sigma_t x_0` and the closed-form
//! conversions between the three ways a model can parameterise them:
//! velocity `v = d_alpha x_1 + d_sigma x_0`, data (x_1) prediction, and noise
//! (epsilon = x_0) prediction. Time convention: t = 0 is noise, t = 1 is data.

use candle_core::{Device, Tensor};

use super::scheduler::{Scheduler, SchedulerOutput};
use crate::Result;

/// A point on the path for a batch: the noisy sample and its target velocity.
#[derive(Debug, Clone)]
pub struct PathSample {
    /// x_t = alpha_t x_1 + sigma_t x_0, shaped like x_0.
    pub x_t: Tensor,
    /// dx_t/dt = d_alpha_t x_1 + d_sigma_t x_0, shaped like x_0.
    pub dx_t: Tensor,
}

/// The affine path of a [`Scheduler`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinePath {
    /// The scheduler giving alpha_t and sigma_t.
    pub scheduler: Scheduler,
}

/// Per-sample coefficients broadcastable against `like`: shape `(batch, 1, ..., 1)`.
fn coef(values: impl Iterator<Item = f64>, like: &Tensor) -> Result<Tensor> {
    let v: Vec<f64> = values.collect();
    let mut shape = vec![1usize; like.rank().max(1)];
    if let Some(first) = shape.first_mut() {
        *first = v.len();
    }
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?
        .to_dtype(like.dtype())?
        .to_device(like.device())?)
}

impl AffinePath {
    /// The path of `scheduler`.
    pub fn new(scheduler: Scheduler) -> Self {
        AffinePath { scheduler }
    }

    fn outs(&self, t: &[f64]) -> Vec<SchedulerOutput> {
        t.iter().map(|&t| self.scheduler.eval(t)).collect()
    }

    /// `a_i · x + b_i · y` for per-sample coefficients.
    fn lin(x: &Tensor, a: &[f64], y: &Tensor, b: &[f64]) -> Result<Tensor> {
        let a = coef(a.iter().copied(), x)?;
        let b = coef(b.iter().copied(), x)?;
        Ok((x.broadcast_mul(&a)? + y.broadcast_mul(&b)?)?)
    }

    fn check(x: &Tensor, t: &[f64]) -> Result<()> {
        if x.dims().first() != Some(&t.len()) {
            return Err(crate::Error::config(format!(
                "batch of shape {:?} does not match {} times",
                x.dims(),
                t.len()
            )));
        }
        Ok(())
    }

    /// Samples the path: `x_0` (noise) and `x_1` (data) are `(batch, ...)`, `t` has `batch` entries.
    pub fn sample(&self, x_0: &Tensor, x_1: &Tensor, t: &[f64]) -> Result<PathSample> {
        Self::check(x_0, t)?;
        let o = self.outs(t);
        let alpha: Vec<f64> = o.iter().map(|o| o.alpha).collect();
        let sigma: Vec<f64> = o.iter().map(|o| o.sigma).collect();
        let d_alpha: Vec<f64> = o.iter().map(|o| o.d_alpha).collect();
        let d_sigma: Vec<f64> = o.iter().map(|o| o.d_sigma).collect();
        Ok(PathSample {
            x_t: Self::lin(x_1, &alpha, x_0, &sigma)?,
            dx_t: Self::lin(x_1, &d_alpha, x_0, &d_sigma)?,
        })
    }

    /// Velocity from a data prediction: `v = (dσ/σ) x_t + (dα − α dσ/σ) x_1`.
    pub fn target_to_velocity(&self, x_1: &Tensor, x_t: &Tensor, t: &[f64]) -> Result<Tensor> {
        Self::check(x_t, t)?;
        let o = self.outs(t);
        let a: Vec<f64> = o.iter().map(|o| o.d_sigma / o.sigma).collect();
        let b: Vec<f64> = o
            .iter()
            .map(|o| o.d_alpha - o.alpha * o.d_sigma / o.sigma)
            .collect();
        Self::lin(x_t, &a, x_1, &b)
    }

    /// Velocity from a noise prediction: `v = (dα/α) x_t + (dσ − σ dα/α) ε`.
    pub fn epsilon_to_velocity(&self, eps: &Tensor, x_t: &Tensor, t: &[f64]) -> Result<Tensor> {
        Self::check(x_t, t)?;
        let o = self.outs(t);
        let a: Vec<f64> = o.iter().map(|o| o.d_alpha / o.alpha).collect();
        let b: Vec<f64> = o
            .iter()
            .map(|o| o.d_sigma - o.sigma * o.d_alpha / o.alpha)
            .collect();
        Self::lin(x_t, &a, eps, &b)
    }

    /// Data prediction from a velocity: `x_1 = (σ v − dσ x_t) / (σ dα − α dσ)`.
    pub fn velocity_to_target(&self, v: &Tensor, x_t: &Tensor, t: &[f64]) -> Result<Tensor> {
        Self::check(x_t, t)?;
        let o = self.outs(t);
        let den: Vec<f64> = o
            .iter()
            .map(|o| o.sigma * o.d_alpha - o.alpha * o.d_sigma)
            .collect();
        let a: Vec<f64> = o.iter().zip(&den).map(|(o, d)| o.sigma / d).collect();
        let b: Vec<f64> = o.iter().zip(&den).map(|(o, d)| -o.d_sigma / d).collect();
        Self::lin(v, &a, x_t, &b)
    }

    /// Noise prediction from a velocity: `ε = (α v − dα x_t) / (α dσ − σ dα)`.
    pub fn velocity_to_epsilon(&self, v: &Tensor, x_t: &Tensor, t: &[f64]) -> Result<Tensor> {
        Self::check(x_t, t)?;
        let o = self.outs(t);
        let den: Vec<f64> = o
            .iter()
            .map(|o| o.alpha * o.d_sigma - o.sigma * o.d_alpha)
            .collect();
        let a: Vec<f64> = o.iter().zip(&den).map(|(o, d)| o.alpha / d).collect();
        let b: Vec<f64> = o.iter().zip(&den).map(|(o, d)| -o.d_alpha / d).collect();
        Self::lin(v, &a, x_t, &b)
    }

    /// Noise prediction from a data prediction: `ε = (x_t − α x_1) / σ`.
    pub fn target_to_epsilon(&self, x_1: &Tensor, x_t: &Tensor, t: &[f64]) -> Result<Tensor> {
        Self::check(x_t, t)?;
        let o = self.outs(t);
        let a: Vec<f64> = o.iter().map(|o| 1.0 / o.sigma).collect();
        let b: Vec<f64> = o.iter().map(|o| -o.alpha / o.sigma).collect();
        Self::lin(x_t, &a, x_1, &b)
    }

    /// Data prediction from a noise prediction: `x_1 = (x_t − σ ε) / α`.
    pub fn epsilon_to_target(&self, eps: &Tensor, x_t: &Tensor, t: &[f64]) -> Result<Tensor> {
        Self::check(x_t, t)?;
        let o = self.outs(t);
        let a: Vec<f64> = o.iter().map(|o| 1.0 / o.alpha).collect();
        let b: Vec<f64> = o.iter().map(|o| -o.sigma / o.alpha).collect();
        Self::lin(x_t, &a, eps, &b)
    }
}
