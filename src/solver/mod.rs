//! ODE solvers for sampling: dx/dt = v(x, t) from t0 to t1 (either direction).
//!
//! Fixed-step methods use the grid t_k = t0 + (t1 − t0)·k/N computed afresh at
//! every step (never accumulated), so the time fed to the model is exactly the
//! time integrated to and the last step ends exactly at t1. Dopri5 adapts its
//! step to meet `rtol`/`atol`. Every method counts its function evaluations (NFE).

mod dopri5;
pub mod likelihood;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::flow::Manifold;
use crate::model::VelocityField;
use crate::{Error, Result};

/// A velocity field projected onto a manifold's tangent spaces.
pub struct Tangent<'a> {
    field: &'a dyn VelocityField,
    manifold: Manifold,
}

impl<'a> Tangent<'a> {
    /// Wraps `field`: its velocity at x becomes the tangent part at x.
    pub fn new(field: &'a dyn VelocityField, manifold: Manifold) -> Self {
        Tangent { field, manifold }
    }
}

impl VelocityField for Tangent<'_> {
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let v = self.field.velocity(x, t)?;
        self.manifold.project_tangents(x, &v)
    }
}

/// The integration method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SolverKind {
    /// Forward Euler, order 1, 1 NFE per step.
    Euler,
    /// Explicit midpoint, order 2, 2 NFE per step.
    #[default]
    Midpoint,
    /// Heun (explicit trapezoid), order 2, 2 NFE per step.
    Heun,
    /// Classic Runge-Kutta, order 4, 4 NFE per step.
    Rk4,
    /// Adaptive Dormand-Prince 5(4) with error control (`rtol`, `atol`).
    Dopri5,
}

impl SolverKind {
    /// Every method, in display order.
    pub const ALL: [SolverKind; 5] = [
        SolverKind::Euler,
        SolverKind::Midpoint,
        SolverKind::Heun,
        SolverKind::Rk4,
        SolverKind::Dopri5,
    ];

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            SolverKind::Euler => "euler",
            SolverKind::Midpoint => "midpoint",
            SolverKind::Heun => "heun",
            SolverKind::Rk4 => "rk4",
            SolverKind::Dopri5 => "dopri5",
        }
    }

    /// Looks a method up by name.
    pub fn from_name(name: &str) -> Option<SolverKind> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Function evaluations per step of a fixed-step method (`None` for Dopri5).
    pub fn nfe_per_step(&self) -> Option<usize> {
        match self {
            SolverKind::Euler => Some(1),
            SolverKind::Midpoint | SolverKind::Heun => Some(2),
            SolverKind::Rk4 => Some(4),
            SolverKind::Dopri5 => None,
        }
    }

    /// Order of accuracy.
    pub fn order(&self) -> usize {
        match self {
            SolverKind::Euler => 1,
            SolverKind::Midpoint | SolverKind::Heun => 2,
            SolverKind::Rk4 => 4,
            SolverKind::Dopri5 => 5,
        }
    }
}

/// A solver and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SolverConfig {
    /// The method.
    pub kind: SolverKind,
    /// Number of steps N for fixed-step methods.
    pub steps: usize,
    /// Relative tolerance (Dopri5).
    pub rtol: f64,
    /// Absolute tolerance (Dopri5).
    pub atol: f64,
}

impl Default for SolverConfig {
    fn default() -> Self {
        SolverConfig {
            kind: SolverKind::Midpoint,
            steps: 20,
            rtol: 1e-5,
            atol: 1e-5,
        }
    }
}

impl SolverConfig {
    /// A fixed-step solver with `steps` steps.
    pub fn fixed(kind: SolverKind, steps: usize) -> Self {
        SolverConfig {
            kind,
            steps,
            ..Default::default()
        }
    }

    /// Dopri5 with the given tolerances.
    pub fn dopri5(rtol: f64, atol: f64) -> Self {
        SolverConfig {
            kind: SolverKind::Dopri5,
            rtol,
            atol,
            ..Default::default()
        }
    }

    /// Checks the settings are in range.
    pub fn validate(&self) -> Result<()> {
        if self.kind == SolverKind::Dopri5 {
            let ok = |v: f64| v.is_finite() && v > 0.0;
            if !ok(self.rtol) || !ok(self.atol) {
                return Err(Error::config(format!(
                    "dopri5 tolerances must be > 0, got rtol {} atol {}",
                    self.rtol, self.atol
                )));
            }
        } else if !(1..=100_000).contains(&self.steps) {
            return Err(Error::config(format!(
                "solver steps must be 1..=100000, got {}",
                self.steps
            )));
        }
        Ok(())
    }

    /// A short description, e.g. `midpoint, 20 steps` or `dopri5, rtol 1e-5`.
    pub fn describe(&self) -> String {
        match self.kind {
            SolverKind::Dopri5 => format!("dopri5, rtol {:e}, atol {:e}", self.rtol, self.atol),
            k => format!("{}, {} steps", k.name(), self.steps),
        }
    }
}

/// The result of an integration.
#[derive(Debug, Clone)]
pub struct OdeSolution {
    /// The state at t1, shaped like the initial state.
    pub x: Tensor,
    /// Number of evaluations of the velocity field.
    pub nfe: usize,
    /// Times of the kept states (t0 first, t1 last); empty unless intermediates were requested.
    pub times: Vec<f64>,
    /// States at `times`, each shaped like the initial state.
    pub states: Vec<Tensor>,
    /// Accepted steps.
    pub steps: usize,
    /// Rejected steps (Dopri5 only).
    pub rejected: usize,
}

/// Where and how to integrate.
#[derive(Debug, Clone, Copy, Default)]
pub struct Integration<'a> {
    /// Integrate on this manifold (Riemannian flow matching): every velocity is
    /// projected onto the tangent space at its point, and every stage and step
    /// is projected back onto the manifold (a retraction). `None`: flat R^d.
    pub manifold: Option<Manifold>,
    /// Start time.
    pub t0: f64,
    /// End time (may be smaller than `t0`: integration runs backwards).
    pub t1: f64,
    /// Keep the state after every step (for trajectories).
    pub keep_intermediates: bool,
    /// Checked between steps; when set, integration stops with [`Error::Interrupted`].
    pub stop: Option<&'a AtomicBool>,
}

impl Integration<'_> {
    /// From noise (t = 0) to data (t = 1).
    pub fn forward() -> Self {
        Integration {
            t0: 0.0,
            t1: 1.0,
            ..Default::default()
        }
    }

    /// From data (t = 1) back to noise (t = 0).
    pub fn backward() -> Self {
        Integration {
            t0: 1.0,
            t1: 0.0,
            ..Default::default()
        }
    }

    /// The same integration on `manifold` (or flat for `None`).
    pub fn on(mut self, manifold: Option<Manifold>) -> Self {
        self.manifold = manifold;
        self
    }

    /// `x` projected onto the manifold (unchanged when flat).
    pub(crate) fn retract(&self, x: Tensor) -> Result<Tensor> {
        match self.manifold {
            Some(m) => m.project_points(&x),
            None => Ok(x),
        }
    }

    /// The same integration keeping intermediate states.
    pub fn with_intermediates(mut self) -> Self {
        self.keep_intermediates = true;
        self
    }

    fn check_stop(&self) -> Result<()> {
        match self.stop {
            Some(s) if s.load(Ordering::Relaxed) => Err(Error::Interrupted),
            _ => Ok(()),
        }
    }
}

/// Counts evaluations of a field and builds the `(batch,)` time tensors it needs.
pub(crate) struct Counted<'a> {
    field: &'a dyn VelocityField,
    pub(crate) nfe: usize,
}

impl<'a> Counted<'a> {
    pub(crate) fn new(field: &'a dyn VelocityField) -> Self {
        Counted { field, nfe: 0 }
    }

    pub(crate) fn eval(&mut self, x: &Tensor, t: f64) -> Result<Tensor> {
        self.nfe += 1;
        let batch = x.dims().first().copied().unwrap_or(1);
        let tt = Tensor::full(t, batch, x.device())?.to_dtype(x.dtype())?;
        // Sampling needs no gradients: detaching stops candle from recording the
        // whole integration as one autograd graph (which kept every activation of
        // every step alive: gigabytes for a 4096-point batch).
        let v = self.field.velocity(&x.detach(), &tt)?.detach();
        if v.dims() != x.dims() {
            return Err(Error::config(format!(
                "velocity field returned shape {:?} for input {:?}",
                v.dims(),
                x.dims()
            )));
        }
        Ok(v)
    }
}

/// `x + h · k`.
pub(crate) fn axpy(x: &Tensor, h: f64, k: &Tensor) -> Result<Tensor> {
    Ok((x + k.affine(h, 0.0)?)?)
}

/// The time of grid point `k` of `n` between `t0` and `t1`: exactly `t1` at `k = n`.
pub fn grid_time(t0: f64, t1: f64, k: usize, n: usize) -> f64 {
    if k >= n {
        t1
    } else {
        t0 + (t1 - t0) * (k as f64 / n as f64)
    }
}

/// Integrates dx/dt = `field`(x, t) from `x_init` at `how.t0` to `how.t1`.
pub fn integrate(
    field: &dyn VelocityField,
    x_init: &Tensor,
    cfg: &SolverConfig,
    how: &Integration<'_>,
) -> Result<OdeSolution> {
    cfg.validate()?;
    let tangent;
    let field: &dyn VelocityField = match how.manifold {
        Some(m) => {
            tangent = Tangent::new(field, m);
            &tangent
        }
        None => field,
    };
    if cfg.kind == SolverKind::Dopri5 {
        return dopri5::integrate(field, x_init, cfg, how);
    }
    let mut f = Counted::new(field);
    let n = cfg.steps;
    let mut x = how.retract(x_init.clone())?;
    // A stage point x + h k, back on the manifold.
    let stage = |x: &Tensor, h: f64, k: &Tensor| how.retract(axpy(x, h, k)?);
    let mut times = Vec::new();
    let mut states = Vec::new();
    if how.keep_intermediates {
        times.push(how.t0);
        states.push(x.clone());
    }
    for k in 0..n {
        how.check_stop()?;
        let ta = grid_time(how.t0, how.t1, k, n);
        let tb = grid_time(how.t0, how.t1, k + 1, n);
        let h = tb - ta;
        x = match cfg.kind {
            SolverKind::Euler => stage(&x, h, &f.eval(&x, ta)?)?,
            SolverKind::Midpoint => {
                let k1 = f.eval(&x, ta)?;
                let k2 = f.eval(&stage(&x, 0.5 * h, &k1)?, ta + 0.5 * h)?;
                stage(&x, h, &k2)?
            }
            SolverKind::Heun => {
                let k1 = f.eval(&x, ta)?;
                let k2 = f.eval(&stage(&x, h, &k1)?, tb)?;
                stage(&x, 0.5 * h, &(k1 + k2)?)?
            }
            SolverKind::Rk4 => {
                let tm = ta + 0.5 * h;
                let k1 = f.eval(&x, ta)?;
                let k2 = f.eval(&stage(&x, 0.5 * h, &k1)?, tm)?;
                let k3 = f.eval(&stage(&x, 0.5 * h, &k2)?, tm)?;
                let k4 = f.eval(&stage(&x, h, &k3)?, tb)?;
                let sum = ((k1 + k4)? + (k2 + k3)?.affine(2.0, 0.0)?)?;
                stage(&x, h / 6.0, &sum)?
            }
            SolverKind::Dopri5 => return Err(Error::config("unreachable: dopri5 is adaptive")),
        };
        if how.keep_intermediates {
            times.push(tb);
            states.push(x.clone());
        }
    }
    Ok(OdeSolution {
        x,
        nfe: f.nfe,
        times,
        states,
        steps: n,
        rejected: 0,
    })
}
