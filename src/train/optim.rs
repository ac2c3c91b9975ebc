//! AdamW on candle tensors, with its state exposed so it can be checkpointed
//! (candle-nn's AdamW keeps its moments private).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::config::OptimizerConfig;
use crate::model::ops::{AdamWStep, adamw_update, sum_squares};
use crate::{Error, Result};

/// AdamW (Loshchilov & Hutter 2019) with global-norm gradient clipping.
#[derive(Debug)]
pub struct AdamW {
    cfg: OptimizerConfig,
    params: Vec<Var>,
    /// The first and second moments of each parameter, stacked: `(2, ...shape)`.
    state: Vec<Tensor>,
    /// Number of updates applied so far.
    t: u64,
}

/// What one update did.
#[derive(Debug, Clone, Copy)]
pub struct UpdateInfo {
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f32,
}

impl AdamW {
    /// A fresh optimiser for `params` (moments zero).
    pub fn new(params: Vec<Var>, cfg: OptimizerConfig) -> Result<Self> {
        let state = params
            .iter()
            .map(|p| {
                let mut dims = vec![2];
                dims.extend_from_slice(p.dims());
                Tensor::zeros(dims, p.dtype(), p.device())
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(AdamW {
            cfg,
            params,
            state,
            t: 0,
        })
    }

    /// Number of updates applied.
    pub fn updates(&self) -> u64 {
        self.t
    }

    /// The first and second moments (views), aligned with the parameters.
    pub fn moments(&self) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut m = Vec::with_capacity(self.state.len());
        let mut v = Vec::with_capacity(self.state.len());
        for s in &self.state {
            m.push(s.get(0)?);
            v.push(s.get(1)?);
        }
        Ok((m, v))
    }

    /// Restores moments and update count (from a checkpoint). Shapes must match.
    pub fn restore(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, t: u64) -> Result<()> {
        if m.len() != self.params.len() || v.len() != self.params.len() {
            return Err(Error::config(
                "optimizer state does not match the parameters",
            ));
        }
        for ((p, a), b) in self.params.iter().zip(&m).zip(&v) {
            if p.dims() != a.dims() || p.dims() != b.dims() {
                return Err(Error::config(format!(
                    "optimizer moment of shape {:?} does not match parameter {:?}",
                    a.dims(),
                    p.dims()
                )));
            }
        }
        self.state = m
            .iter()
            .zip(&v)
            .map(|(a, b)| Tensor::stack(&[a, b], 0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.t = t;
        Ok(())
    }

    /// Global L2 norm of the gradients of the parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f32> {
        let mut sq = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.as_tensor()) {
                sq += sum_squares(g)?;
            }
        }
        Ok(sq.sqrt() as f32)
    }

    /// Applies one update at learning rate `lr`. Returns an error, leaving the
    /// parameters untouched, if the gradient norm is not finite.
    pub fn step(&mut self, grads: &GradStore, lr: f64, step: u64) -> Result<UpdateInfo> {
        let grad_norm = self.grad_norm(grads)?;
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite {
                step,
                last_good_step: step,
                what: "gradient norm",
                value: grad_norm,
            });
        }
        let clip_scale = match self.cfg.grad_clip {
            Some(c) if f64::from(grad_norm) > c => c / f64::from(grad_norm),
            _ => 1.0,
        };
        self.t += 1;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(self.t as i32);
        let bc2 = 1.0 - b2.powi(self.t as i32);
        let s = AdamWStep {
            lr,
            beta1: b1,
            beta2: b2,
            eps: self.cfg.eps,
            bias_correction: (bc1, bc2),
            decay: 1.0 - lr * self.cfg.weight_decay,
            grad_scale: clip_scale,
        };
        for (p, state) in self.params.iter().zip(self.state.iter_mut()) {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let (new_p, new_state) = adamw_update(p.as_tensor(), g, state, s)?;
            p.set(&new_p)?;
            *state = new_state;
        }
        Ok(UpdateInfo { grad_norm })
    }
}
