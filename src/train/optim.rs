//! AdamW on candle tensors, with its state exposed so it can be checkpointed
//! (candle-nn's AdamW keeps its moments private).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::config::OptimizerConfig;
use crate::{Error, Result};

/// AdamW (Loshchilov & Hutter 2019) with global-norm gradient clipping.
#[derive(Debug)]
pub struct AdamW {
    cfg: OptimizerConfig,
    params: Vec<Var>,
    /// First moments, one per parameter, same shapes.
    m: Vec<Tensor>,
    /// Second moments, one per parameter, same shapes.
    v: Vec<Tensor>,
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
        let m = params
            .iter()
            .map(|p| p.zeros_like())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW {
            cfg,
            params,
            m,
            v,
            t: 0,
        })
    }

    /// Number of updates applied.
    pub fn updates(&self) -> u64 {
        self.t
    }

    /// The first and second moments, aligned with the parameters.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.m, &self.v)
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
        self.m = m;
        self.v = v;
        self.t = t;
        Ok(())
    }

    /// Global L2 norm of the gradients of the parameters.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f32> {
        let mut sq = Vec::with_capacity(self.params.len());
        for p in &self.params {
            if let Some(g) = grads.get(p.as_tensor()) {
                sq.push(g.sqr()?.sum_all()?);
            }
        }
        if sq.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()?.sqrt())
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
        let decay = 1.0 - lr * self.cfg.weight_decay;
        for ((p, m), v) in self
            .params
            .iter()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
        {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let g = if clip_scale < 1.0 {
                g.affine(clip_scale, 0.0)?
            } else {
                g.clone()
            };
            *m = (m.affine(b1, 0.0)? + g.affine(1.0 - b1, 0.0)?)?;
            *v = (v.affine(b2, 0.0)? + g.sqr()?.affine(1.0 - b2, 0.0)?)?;
            let denom = v
                .affine(1.0 / bc2, 0.0)?
                .sqrt()?
                .affine(1.0, self.cfg.eps)?;
            let upd = (m.affine(lr / bc1, 0.0)? / denom)?;
            let base = if decay != 1.0 {
                p.affine(decay, 0.0)?
            } else {
                p.as_tensor().clone()
            };
            p.set(&(base - upd)?)?;
        }
        Ok(UpdateInfo { grad_norm })
    }
}
