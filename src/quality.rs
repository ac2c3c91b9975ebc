//! Sample quality against the number of function evaluations (NFE), for every
//! solver, on a 2D model: which solver to pick, and how straight the flow is
//! (a straight flow is already good at 1-2 Euler steps).
//!
//! Quality is the exact W2 between samples and fresh data points in model
//! space, next to the floor (W2 between two fresh data sets of the same size).

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};

use crate::data::Dataset;
use crate::flow::Source;
use crate::metrics::{straightness, w2_exact};
use crate::model::VelocityField;
use crate::rng::{Stream, stream_rng};
use crate::solver::{Integration, SolverConfig, SolverKind, integrate};
use crate::{Error, Result};

/// One solver setting's measurement.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QualityPoint {
    /// The solver.
    pub solver: SolverKind,
    /// Fixed steps (0 for the adaptive solver).
    pub steps: usize,
    /// Relative tolerance of the adaptive solver (0 for fixed steps).
    pub rtol: f64,
    /// Function evaluations used.
    pub nfe: usize,
    /// W2 to fresh data (model space).
    pub w2: f64,
}

/// Quality against NFE of one model.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QualityReport {
    /// Every measurement, grouped by solver, cheapest first.
    pub points: Vec<QualityPoint>,
    /// W2 between two fresh data sets of the same size.
    pub floor: f64,
    /// Straightness of the trajectories (0 = straight lines; Euler/100).
    pub straightness: f64,
    /// Samples per measurement.
    pub n: usize,
}

/// The solver settings measured: NFE budgets of 1 to 16 for the fixed-step
/// solvers, and three tolerances of Dopri5.
pub fn solver_grid() -> Vec<SolverConfig> {
    let mut v = Vec::new();
    for s in [1, 2, 4, 8, 16] {
        v.push(SolverConfig::fixed(SolverKind::Euler, s));
    }
    for kind in [SolverKind::Midpoint, SolverKind::Heun] {
        for s in [1, 2, 4, 8] {
            v.push(SolverConfig::fixed(kind, s));
        }
    }
    for s in [1, 2, 4] {
        v.push(SolverConfig::fixed(SolverKind::Rk4, s));
    }
    for rtol in [1e-2, 1e-3, 1e-4] {
        v.push(SolverConfig::dopri5(rtol, rtol));
    }
    v
}

/// Measures `model` (2D) with every setting of [`solver_grid`] on `n` points
/// from `source` (draw 0 of `seed`'s noise stream) against fresh data from
/// `data`. `stop` interrupts between solver steps.
pub fn quality_vs_nfe(
    model: &dyn VelocityField,
    source: &Source,
    data: &dyn Dataset,
    n: usize,
    seed: u64,
    stop: Option<&AtomicBool>,
) -> Result<QualityReport> {
    let shape = data.sample_shape();
    let manifold = data.manifold();
    if shape != [2] && manifold.is_none() {
        return Err(Error::config(
            "quality against NFE is measured on 2D data and on manifolds",
        ));
    }
    let dim = data.dim();
    let device = Device::Cpu;
    let x0: Tensor = source.noise(n, &shape, seed, 0, &device)?;
    let reference = data.sample_held_out(n, &mut stream_rng(seed, Stream::Eval, 0));
    let reference2 = data.sample_held_out(n, &mut stream_rng(seed, Stream::Eval, 1));
    let floor = w2_exact(&reference, &reference2, dim)?;
    let how = Integration {
        stop,
        ..Integration::forward().on(manifold)
    };
    let mut points = Vec::new();
    for cfg in solver_grid() {
        let sol = integrate(model, &x0, &cfg, &how)?;
        let x = sol.x.flatten_all()?.to_vec1::<f32>()?;
        let w2 = if x.iter().all(|v| v.is_finite()) {
            w2_exact(&x, &reference, dim)?
        } else {
            f64::INFINITY
        };
        points.push(QualityPoint {
            solver: cfg.kind,
            steps: if cfg.kind == SolverKind::Dopri5 {
                0
            } else {
                cfg.steps
            },
            rtol: if cfg.kind == SolverKind::Dopri5 {
                cfg.rtol
            } else {
                0.0
            },
            nfe: sol.nfe,
            w2,
        });
    }
    let fine = integrate(
        model,
        &x0,
        &SolverConfig::fixed(SolverKind::Euler, 100),
        &Integration {
            stop,
            ..Integration::forward().with_intermediates().on(manifold)
        },
    )?;
    let mut states = Vec::with_capacity(fine.states.len());
    for s in &fine.states {
        states.push(s.flatten_all()?.to_vec1::<f32>()?);
    }
    let (straight, _) = straightness(&fine.times, &states, dim)?;
    Ok(QualityReport {
        points,
        floor,
        straightness: straight,
        n,
    })
}
