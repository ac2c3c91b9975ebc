//! Scheduler change after training (Lipman et al., "Flow Matching Guide and
//! Code", arXiv 2412.06264, the section on scheduler change):
//! a velocity field learned for the path of one scheduler (α_t, σ_t) gives the
//! field of the path of any other scheduler (ᾱ_r, σ̄_r) with the same source
//! and data, without retraining. Matching signal-to-noise ratios
//! ρ(t) = α_t / σ_t gives the time t_r = ρ⁻¹(ρ̄(r)) and the scale
//! s_r = σ̄_r / σ_{t_r} (= ᾱ_r / α_{t_r}), with x̄_r = s_r x_{t_r}, and
//!
//! `ū_r(x) = (ṡ_r / s_r) x + s_r ṫ_r u_{t_r}(x / s_r)`.
//!
//! The marginals of the new path are those of the new scheduler exactly (the
//! test checks them for a Gaussian target); only the trajectories change.

use candle_core::Tensor;

use super::Scheduler;
use crate::Result;
use crate::model::VelocityField;

/// Times are kept inside [0, 1 − R_MAX_GAP]: at r = 1 the SNR is infinite.
const R_MAX_GAP: f64 = 1e-6;

/// A trained field re-timed and rescaled to follow another scheduler's path.
pub struct SchedulerChange<'a> {
    field: &'a dyn VelocityField,
    trained: Scheduler,
    target: Scheduler,
}

/// `(t_r, ṫ_r, s_r, ṡ_r)` of one target time `r`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retiming {
    /// The trained scheduler's time with the same SNR.
    pub t: f64,
    /// dt_r / dr.
    pub dt: f64,
    /// The scale s_r.
    pub s: f64,
    /// ds_r / dr.
    pub ds: f64,
}

fn snr(s: &Scheduler, t: f64) -> (f64, f64) {
    let o = s.eval(t);
    let rho = o.alpha / o.sigma;
    let d_rho = (o.d_alpha * o.sigma - o.alpha * o.d_sigma) / (o.sigma * o.sigma);
    (rho, d_rho)
}

impl<'a> SchedulerChange<'a> {
    /// `field` was trained with `trained`; the result follows `target`.
    pub fn new(field: &'a dyn VelocityField, trained: Scheduler, target: Scheduler) -> Self {
        SchedulerChange {
            field,
            trained,
            target,
        }
    }

    /// The time and scale of target time `r` (in [0, 1]).
    pub fn retiming(&self, r: f64) -> Retiming {
        let r = r.clamp(0.0, 1.0 - R_MAX_GAP);
        let (rho_bar, d_rho_bar) = snr(&self.target, r);
        // ρ is increasing: bisection for ρ(t) = ρ̄(r).
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        if snr(&self.trained, lo).0 >= rho_bar {
            hi = 0.0;
        } else {
            for _ in 0..100 {
                let mid = 0.5 * (lo + hi);
                if snr(&self.trained, mid).0 < rho_bar {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
        }
        let t = hi.clamp(0.0, 1.0 - R_MAX_GAP);
        let (_, d_rho) = snr(&self.trained, t);
        let dt = if d_rho > 0.0 && d_rho.is_finite() {
            d_rho_bar / d_rho
        } else {
            0.0
        };
        let (a, b) = (self.trained.eval(t), self.target.eval(r));
        // Divide by the larger of α, σ (both ratios agree where the SNRs match).
        let (s, ds) = if a.sigma >= a.alpha {
            let s = b.sigma / a.sigma;
            (
                s,
                (b.d_sigma * a.sigma - b.sigma * a.d_sigma * dt) / (a.sigma * a.sigma),
            )
        } else {
            let s = b.alpha / a.alpha;
            (
                s,
                (b.d_alpha * a.alpha - b.alpha * a.d_alpha * dt) / (a.alpha * a.alpha),
            )
        };
        Retiming { t, dt, s, ds }
    }
}

impl VelocityField for SchedulerChange<'_> {
    /// `x`: `(batch, ...)`, `t`: `(batch,)` (the target scheduler's time r).
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let rs: Vec<f32> = t.to_dtype(candle_core::DType::F32)?.to_vec1()?;
        // Solvers pass one time for the whole batch: invert the SNR once per distinct time.
        let mut ret: Vec<Retiming> = Vec::with_capacity(n);
        let mut last: Option<(f32, Retiming)> = None;
        for &r in &rs {
            let v = match last {
                Some((q, v)) if q == r => v,
                _ => self.retiming(f64::from(r)),
            };
            last = Some((r, v));
            ret.push(v);
        }
        let col = |f: &dyn Fn(&Retiming) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = ret.iter().map(|r| f(r) as f32).collect();
            let mut shape = vec![n];
            shape.extend(std::iter::repeat_n(1, x.rank().saturating_sub(1)));
            Ok(Tensor::from_vec(v, shape, x.device())?.to_dtype(x.dtype())?)
        };
        let s = col(&|r| r.s)?;
        let t_trained = Tensor::from_vec(
            ret.iter().map(|r| r.t as f32).collect::<Vec<_>>(),
            n,
            x.device(),
        )?
        .to_dtype(t.dtype())?;
        let u = self.field.velocity(&x.broadcast_div(&s)?, &t_trained)?;
        let drift = x.broadcast_mul(&col(&|r| r.ds / r.s)?)?;
        Ok((drift + u.broadcast_mul(&col(&|r| r.s * r.dt)?)?)?)
    }
}
