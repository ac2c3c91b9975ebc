//! Schedulers (alpha_t, sigma_t) of affine probability paths
//! `x_t = alpha_t x_1 + sigma_t x_0`, with t = 0 noise and t = 1 data.
//!
//! See Lipman et al., "Flow Matching Guide and Code" (arXiv 2412.06264), §4.

use serde::{Deserialize, Serialize};

/// alpha_t, sigma_t and their exact time derivatives at one time t.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerOutput {
    /// Weight of the data x_1.
    pub alpha: f64,
    /// Weight of the noise x_0.
    pub sigma: f64,
    /// d alpha / dt.
    pub d_alpha: f64,
    /// d sigma / dt.
    pub d_sigma: f64,
}

/// The scheduler of an affine path, chosen by name in configs and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
#[derive(Default)]
pub enum Scheduler {
    /// Conditional optimal transport: alpha = t, sigma = 1 − t (straight lines).
    #[default]
    CondOt,
    /// alpha = t^n, sigma = 1 − t^n.
    Polynomial {
        /// The exponent n > 0.
        n: f64,
    },
    /// Variance preserving (the diffusion VP-SDE): with
    /// T(t) = ½(1−t)²(β_max − β_min) + (1−t)β_min,
    /// alpha = exp(−T/2), sigma = sqrt(1 − exp(−T)). At t = 0, alpha ≈ 0.0066 (not exactly 0).
    Vp {
        /// β_min (0.1 by default).
        beta_min: f64,
        /// β_max (20 by default).
        beta_max: f64,
    },
    /// Linear variance preserving: alpha = t, sigma = sqrt(1 − t²).
    LinearVp,
    /// Cosine: alpha = sin(πt/2), sigma = cos(πt/2).
    Cosine,
}

impl Scheduler {
    /// The VP scheduler with the usual β_min = 0.1, β_max = 20.
    pub const VP_DEFAULT: Scheduler = Scheduler::Vp {
        beta_min: 0.1,
        beta_max: 20.0,
    };

    /// Every scheduler with default parameters, in display order.
    pub const ALL: [Scheduler; 5] = [
        Scheduler::CondOt,
        Scheduler::Polynomial { n: 2.0 },
        Scheduler::VP_DEFAULT,
        Scheduler::LinearVp,
        Scheduler::Cosine,
    ];

    /// The command-line name (`condot`, `polynomial`, `vp`, `linear-vp`, `cosine`).
    pub fn name(&self) -> &'static str {
        match self {
            Scheduler::CondOt => "condot",
            Scheduler::Polynomial { .. } => "polynomial",
            Scheduler::Vp { .. } => "vp",
            Scheduler::LinearVp => "linear-vp",
            Scheduler::Cosine => "cosine",
        }
    }

    /// Looks a scheduler up by its command-line name, with default parameters.
    pub fn from_name(name: &str) -> Option<Scheduler> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Checks the parameters are in range.
    pub fn validate(&self) -> crate::Result<()> {
        match *self {
            Scheduler::Polynomial { n } if !(n.is_finite() && n > 0.0) => Err(
                crate::Error::config(format!("polynomial scheduler: n must be > 0, got {n}")),
            ),
            Scheduler::Vp { beta_min, beta_max }
                if !(beta_min.is_finite()
                    && beta_max.is_finite()
                    && 0.0 <= beta_min
                    && beta_min <= beta_max) =>
            {
                Err(crate::Error::config(format!(
                    "vp scheduler: need 0 <= beta_min <= beta_max, got {beta_min}, {beta_max}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// alpha_t, sigma_t and their derivatives at time `t` in [0, 1].
    pub fn eval(&self, t: f64) -> SchedulerOutput {
        use std::f64::consts::FRAC_PI_2;
        match *self {
            Scheduler::CondOt => SchedulerOutput {
                alpha: t,
                sigma: 1.0 - t,
                d_alpha: 1.0,
                d_sigma: -1.0,
            },
            Scheduler::Polynomial { n } => {
                let tn = t.powf(n);
                let d = if t == 0.0 && n < 1.0 {
                    f64::INFINITY
                } else if t == 0.0 {
                    if n == 1.0 { 1.0 } else { 0.0 }
                } else {
                    n * t.powf(n - 1.0)
                };
                SchedulerOutput {
                    alpha: tn,
                    sigma: 1.0 - tn,
                    d_alpha: d,
                    d_sigma: -d,
                }
            }
            Scheduler::Vp { beta_min, beta_max } => {
                let s = 1.0 - t;
                let big_t = 0.5 * s * s * (beta_max - beta_min) + s * beta_min;
                let d_big_t = -s * (beta_max - beta_min) - beta_min;
                let alpha = (-0.5 * big_t).exp();
                let e = (-big_t).exp();
                let sigma = (1.0 - e).max(0.0).sqrt();
                SchedulerOutput {
                    alpha,
                    sigma,
                    d_alpha: -0.5 * d_big_t * alpha,
                    d_sigma: 0.5 * e * d_big_t / sigma,
                }
            }
            Scheduler::LinearVp => {
                let sigma = (1.0 - t * t).max(0.0).sqrt();
                SchedulerOutput {
                    alpha: t,
                    sigma,
                    d_alpha: 1.0,
                    d_sigma: -t / sigma,
                }
            }
            Scheduler::Cosine => {
                let (s, c) = (FRAC_PI_2 * t).sin_cos();
                SchedulerOutput {
                    alpha: s,
                    sigma: c,
                    d_alpha: FRAC_PI_2 * c,
                    d_sigma: -FRAC_PI_2 * s,
                }
            }
        }
    }

    /// The largest time used in training. Schedulers whose sigma has an infinite
    /// derivative at t = 1 (VP, linear VP) stop just short of it.
    pub fn t_max_train(&self) -> f64 {
        match self {
            Scheduler::Vp { .. } | Scheduler::LinearVp => 1.0 - 1e-3,
            _ => 1.0,
        }
    }
}
