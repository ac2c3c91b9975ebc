//! Exact log-likelihoods of a flow (continuous normalising flow): along the ODE
//! dx/dt = v(x, t) the density obeys d/dt log p_t(x_t) = −div v(x_t, t), so
//!
//! `log p_1(x) = log p_0(x_0) − ∫_0^1 div v(x_t, t) dt`,
//!
//! where x_t runs *backwards* from x_1 = x at t = 1 to x_0 at t = 0. The state
//! (x, ∫ div) is integrated with classic RK4 on the grid t_k = 1 − (k/N)², whose
//! steps crowd towards t = 1, where the field of data on a thin set is stiffest.
//!
//! The divergence is exact (one backward pass per dimension, for 2D data) or
//! Hutchinson's estimate `E_ε[εᵀ (∂v/∂x) ε]` with Rademacher probes ε, fixed per
//! sample along the trajectory (one backward pass per probe, for images).

use candle_core::{DType, Tensor, Var};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};

use crate::model::VelocityField;
use crate::rng::{Stream, stream_rng};
use crate::{Error, Result};

/// How the divergence of the velocity is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Divergence {
    /// The trace of the Jacobian, one backward pass per dimension.
    Exact,
    /// Hutchinson's unbiased estimate averaged over `probes` Rademacher probes.
    Hutchinson {
        /// Probes per sample (at least 1).
        probes: usize,
    },
}

/// Settings of a likelihood computation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LikelihoodConfig {
    /// RK4 steps from t = 1 back to t = 0.
    pub steps: usize,
    /// How the divergence is computed.
    pub divergence: Divergence,
    /// Seed of Hutchinson's probes.
    pub seed: u64,
}

impl Default for LikelihoodConfig {
    fn default() -> Self {
        LikelihoodConfig {
            steps: 20,
            divergence: Divergence::Exact,
            seed: 0,
        }
    }
}

/// The velocity `v(x, t)` (detached) and its divergence per sample `(batch,)`
/// at `x`: `(batch, ...)`, `t`: `(batch,)`. `probes` are the Hutchinson probes
/// (each shaped like `x`), ignored for the exact divergence.
pub fn velocity_and_divergence(
    field: &dyn VelocityField,
    x: &Tensor,
    t: &Tensor,
    divergence: Divergence,
    probes: &[Tensor],
) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)?;
    let d = x.elem_count() / n.max(1);
    let var = Var::from_tensor(&x.detach())?;
    let v = field.velocity(var.as_tensor(), t)?;
    let grad_of = |scalar: &Tensor| -> Result<Tensor> {
        let grads = scalar.backward()?;
        let g = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::config("the velocity does not depend on x"))?;
        Ok(g.reshape((n, d))?)
    };
    let div = match divergence {
        Divergence::Exact => {
            let flat = v.reshape((n, d))?;
            let mut acc = Tensor::zeros(n, v.dtype(), v.device())?;
            for i in 0..d {
                let g = grad_of(&flat.narrow(1, i, 1)?.sum_all()?)?;
                acc = (acc + g.narrow(1, i, 1)?.squeeze(1)?)?;
            }
            acc
        }
        Divergence::Hutchinson { .. } => {
            if probes.is_empty() {
                return Err(Error::config(
                    "Hutchinson's estimate needs at least 1 probe",
                ));
            }
            let mut acc = Tensor::zeros(n, v.dtype(), v.device())?;
            for eps in probes {
                let g = grad_of(&(&v * eps)?.sum_all()?)?;
                let e = eps.reshape((n, d))?;
                acc = (acc + (g * e)?.sum(1)?)?;
            }
            (acc / probes.len() as f64)?
        }
    };
    Ok((v.detach(), div.detach()))
}

/// Rademacher probes (±1) shaped like `x`, from `seed`.
fn rademacher(x: &Tensor, count: usize, seed: u64) -> Result<Vec<Tensor>> {
    let mut rng = stream_rng(seed, Stream::Eval, 0x4855_5443);
    (0..count)
        .map(|_| {
            let v: Vec<f32> = (0..x.elem_count())
                .map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 })
                .collect();
            Ok(Tensor::from_vec(v, x.dims(), x.device())?.to_dtype(x.dtype())?)
        })
        .collect()
}

/// Log-density of the standard Gaussian per sample of `x`: `(batch, ...)` → `(batch,)`.
pub fn gaussian_log_density(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    let d = x.elem_count() / n.max(1);
    let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
    Ok(((x.reshape((n, d))?.sqr()?.sum(1)? * -0.5)? - d as f64 * half_log_2pi)?)
}

/// The result of [`log_likelihood`].
#[derive(Debug, Clone, PartialEq)]
pub struct Likelihood {
    /// log p_1(x) per sample, in the model's space (nats).
    pub log_p: Vec<f64>,
    /// The source points x_0 reached at t = 0, flattened.
    pub x0: Vec<f32>,
    /// Function (and divergence) evaluations per sample.
    pub nfe: usize,
}

/// log p_1(x) under the flow of `field` from the standard Gaussian source, for
/// `x`: `(batch, ...)`, by integrating backwards from t = 1 to t = 0 (RK4).
pub fn log_likelihood(
    field: &dyn VelocityField,
    x: &Tensor,
    cfg: &LikelihoodConfig,
) -> Result<Likelihood> {
    if cfg.steps == 0 {
        return Err(Error::config("likelihood: at least 1 step"));
    }
    let n = x.dim(0)?;
    let x = x.to_dtype(DType::F32)?;
    let probes = match cfg.divergence {
        Divergence::Exact => Vec::new(),
        Divergence::Hutchinson { probes } => rademacher(&x, probes.max(1), cfg.seed)?,
    };
    let eval = |x: &Tensor, t: f64| -> Result<(Tensor, Tensor)> {
        let tt = Tensor::full(t as f32, n, x.device())?;
        velocity_and_divergence(field, x, &tt, cfg.divergence, &probes)
    };
    let mut state = x.clone();
    // ∫_t^1 div v ds, accumulated backwards.
    let mut integral = Tensor::zeros(n, DType::F32, x.device())?;
    let steps = cfg.steps;
    for k in 0..steps {
        // Steps crowd towards t = 1, where the field is stiffest (data on a thin set).
        let t0 = 1.0 - (k as f64 / steps as f64).powi(2);
        let t1 = 1.0 - ((k + 1) as f64 / steps as f64).powi(2);
        let h = t1 - t0;
        let tm = t0 + 0.5 * h;
        let (v1, d1) = eval(&state, t0)?;
        let (v2, d2) = eval(&(&state + (&v1 * (0.5 * h))?)?, tm)?;
        let (v3, d3) = eval(&(&state + (&v2 * (0.5 * h))?)?, tm)?;
        let (v4, d4) = eval(&(&state + (&v3 * h)?)?, t1)?;
        let dv = ((&v1 + (&v2 * 2.0)?)? + ((&v3 * 2.0)? + &v4)?)?;
        state = (&state + (dv * (h / 6.0))?)?;
        let dd = ((&d1 + (&d2 * 2.0)?)? + ((&d3 * 2.0)? + &d4)?)?;
        // d/dt of ∫_t^1 div = −div, over a step of h < 0.
        integral = (&integral - (dd * (h / 6.0))?)?;
    }
    let log_p0 = gaussian_log_density(&state)?;
    let log_p: Vec<f32> = (log_p0 - integral)?.to_vec1()?;
    Ok(Likelihood {
        log_p: log_p.into_iter().map(f64::from).collect(),
        x0: state.flatten_all()?.to_vec1()?,
        nfe: 4 * steps,
    })
}
