//! Adaptive Dormand-Prince 5(4) with FSAL, PI-free step control and Hairer's
//! initial step size (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.4).

use candle_core::{DType, Tensor};

use super::{Counted, Integration, OdeSolution, SolverConfig, axpy};
use crate::model::VelocityField;
use crate::{Error, Result};

const C: [f64; 6] = [1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0, 1.0];
const A2: [f64; 1] = [1.0 / 5.0];
const A3: [f64; 2] = [3.0 / 40.0, 9.0 / 40.0];
const A4: [f64; 3] = [44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0];
const A5: [f64; 4] = [
    19372.0 / 6561.0,
    -25360.0 / 2187.0,
    64448.0 / 6561.0,
    -212.0 / 729.0,
];
const A6: [f64; 5] = [
    9017.0 / 3168.0,
    -355.0 / 33.0,
    46732.0 / 5247.0,
    49.0 / 176.0,
    -5103.0 / 18656.0,
];
/// 5th-order weights (also the 7th stage's row: FSAL).
const B: [f64; 6] = [
    35.0 / 384.0,
    0.0,
    500.0 / 1113.0,
    125.0 / 192.0,
    -2187.0 / 6784.0,
    11.0 / 84.0,
];
/// 5th minus 4th-order weights, for the 7 stages.
const E: [f64; 7] = [
    35.0 / 384.0 - 5179.0 / 57600.0,
    0.0,
    500.0 / 1113.0 - 7571.0 / 16695.0,
    125.0 / 192.0 - 393.0 / 640.0,
    -2187.0 / 6784.0 - -92097.0 / 339200.0,
    11.0 / 84.0 - 187.0 / 2100.0,
    -1.0 / 40.0,
];

/// Most accepted + rejected steps before giving up.
const MAX_STEPS: usize = 100_000;

/// `x + h Σ a_i k_i`.
fn combo(x: &Tensor, h: f64, a: &[f64], k: &[Tensor]) -> Result<Tensor> {
    let mut acc = x.clone();
    for (ai, ki) in a.iter().zip(k) {
        if *ai != 0.0 {
            acc = axpy(&acc, h * ai, ki)?;
        }
    }
    Ok(acc)
}

/// Root-mean-square of `v / (atol + rtol · max(|y0|, |y1|))`.
fn rms_scaled(v: &Tensor, y0: &Tensor, y1: &Tensor, rtol: f64, atol: f64) -> Result<f64> {
    let scale = y0.abs()?.maximum(&y1.abs()?)?.affine(rtol, atol)?;
    let r = (v / scale)?.to_dtype(DType::F64)?;
    let ms = r.sqr()?.mean_all()?.to_scalar::<f64>()?;
    Ok(ms.sqrt())
}

pub(super) fn integrate(
    field: &dyn VelocityField,
    x_init: &Tensor,
    cfg: &SolverConfig,
    how: &Integration<'_>,
) -> Result<OdeSolution> {
    let (rtol, atol) = (cfg.rtol, cfg.atol);
    let mut f = Counted::new(field);
    let span = how.t1 - how.t0;
    let dir = if span < 0.0 { -1.0 } else { 1.0 };
    let mut t = how.t0;
    let mut x = how.retract(x_init.clone())?;
    let mut times = Vec::new();
    let mut states = Vec::new();
    if how.keep_intermediates {
        times.push(t);
        states.push(x.clone());
    }
    if span == 0.0 {
        return Ok(OdeSolution {
            x,
            nfe: 0,
            times,
            states,
            steps: 0,
            rejected: 0,
        });
    }
    let mut k1 = f.eval(&x, t)?;

    // Initial step size (Hairer's heuristic).
    let d0 = rms_scaled(&x, &x, &x, rtol, atol)?;
    let d1 = rms_scaled(&k1, &x, &x, rtol, atol)?;
    let h0 = if d0 < 1e-5 || d1 < 1e-5 {
        1e-6
    } else {
        0.01 * d0 / d1
    };
    let h0 = h0.min(span.abs());
    let x1 = axpy(&x, dir * h0, &k1)?;
    let f1 = f.eval(&x1, t + dir * h0)?;
    let d2 = rms_scaled(&(&f1 - &k1)?, &x, &x, rtol, atol)? / h0;
    let h1 = if d1.max(d2) <= 1e-15 {
        (h0 * 1e-3).max(1e-6)
    } else {
        (0.01 / d1.max(d2)).powf(0.2)
    };
    let mut h = (100.0 * h0).min(h1).min(span.abs());

    let (mut steps, mut rejected) = (0usize, 0usize);
    loop {
        how.check_stop()?;
        if steps + rejected >= MAX_STEPS {
            return Err(Error::config(format!(
                "dopri5 gave up after {MAX_STEPS} steps at t = {t}: the tolerances (rtol {rtol:e}, atol {atol:e}) are too tight for this field"
            )));
        }
        let remaining = (how.t1 - t).abs();
        let last = h >= remaining;
        let hs = if last { how.t1 - t } else { dir * h };
        let mut k = vec![k1.clone()];
        for (c, a) in C.iter().zip([&A2[..], &A3, &A4, &A5, &A6]) {
            let xi = combo(&x, hs, a, &k)?;
            k.push(f.eval(&xi, t + c * hs)?);
        }
        let x_new = how.retract(combo(&x, hs, &B, &k)?)?;
        let t_new = if last { how.t1 } else { t + hs };
        let k7 = f.eval(&x_new, t_new)?;
        k.push(k7.clone());
        let err = combo(&x.zeros_like()?, hs, &E, &k)?;
        let err_norm = rms_scaled(&err, &x, &x_new, rtol, atol)?;
        if !err_norm.is_finite() {
            return Err(Error::config(format!(
                "dopri5: the state became non-finite at t = {t}"
            )));
        }
        let factor = if err_norm == 0.0 {
            10.0
        } else {
            (0.9 * err_norm.powf(-0.2)).clamp(0.2, 10.0)
        };
        if err_norm <= 1.0 {
            steps += 1;
            t = t_new;
            x = x_new;
            k1 = k7;
            if how.keep_intermediates {
                times.push(t);
                states.push(x.clone());
            }
            if last {
                break;
            }
            h = hs.abs() * factor;
        } else {
            rejected += 1;
            h = hs.abs() * factor.min(1.0);
        }
    }
    Ok(OdeSolution {
        x,
        nfe: f.nfe,
        times,
        states,
        steps,
        rejected,
    })
}
