//! Fused optimiser kernels: one pass per parameter tensor for an AdamW update,
//! an EMA update and a sum of squares (candle's ops take about fifteen passes,
//! each with its own allocation, for one AdamW update).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::simd::{LANES, simd_dispatch};
use super::{CHUNK, contiguous_f32, fast_path};

/// The scalars of one AdamW update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay β₁.
    pub beta1: f64,
    /// Second-moment decay β₂.
    pub beta2: f64,
    /// Added to the square root of the second moment.
    pub eps: f64,
    /// Bias corrections 1 − β₁ᵗ and 1 − β₂ᵗ.
    pub bias_correction: (f64, f64),
    /// Decoupled weight decay factor, 1 − lr · weight_decay.
    pub decay: f64,
    /// Factor applied to the gradient first (global-norm clipping).
    pub grad_scale: f64,
}

/// f32 copies of the scalars, in the order the kernel uses them.
#[derive(Clone, Copy)]
struct Coeffs {
    scale: f32,
    b1: f32,
    b2: f32,
    step: f32,
    inv_bc2: f32,
    eps: f32,
    decay: f32,
}

impl From<AdamWStep> for Coeffs {
    fn from(s: AdamWStep) -> Self {
        Coeffs {
            scale: s.grad_scale as f32,
            b1: s.beta1 as f32,
            b2: s.beta2 as f32,
            step: (s.lr / s.bias_correction.0) as f32,
            inv_bc2: (1.0 / s.bias_correction.1) as f32,
            eps: s.eps as f32,
            decay: s.decay as f32,
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn adamw_kernel(
    p_out: &mut [f32],
    m_out: &mut [f32],
    v_out: &mut [f32],
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    c: Coeffs,
) {
    let rows = p_out
        .iter_mut()
        .zip(m_out.iter_mut())
        .zip(v_out.iter_mut())
        .zip(p.iter().zip(g).zip(m.iter().zip(v)));
    for (((po, mo), vo), ((&p, &g), (&m, &v))) in rows {
        let g = g * c.scale;
        let m = c.b1 * m + (1.0 - c.b1) * g;
        let v = c.b2 * v + (1.0 - c.b2) * g * g;
        *mo = m;
        *vo = v;
        *po = p * c.decay - c.step * m / ((v * c.inv_bc2).sqrt() + c.eps);
    }
}

simd_dispatch!(
    #[allow(clippy::too_many_arguments)]
    fn adamw_best(
        p_out: &mut [f32],
        m_out: &mut [f32],
        v_out: &mut [f32],
        p: &[f32],
        g: &[f32],
        m: &[f32],
        v: &[f32],
        c: Coeffs,
    ) => adamw_kernel
);

/// `(param, grad, state = [m; v])` -> `[param'; m'; v']`, all flat.
struct AdamWOp(Coeffs);

impl CustomOp3 for AdamWOp {
    fn name(&self) -> &'static str {
        "flowlab-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = contiguous_f32(s1, l1, "adamw")?;
        let g = contiguous_f32(s2, l2, "adamw")?;
        let state = contiguous_f32(s3, l3, "adamw")?;
        let n = p.len();
        if g.len() != n || state.len() != 2 * n {
            candle_core::bail!(
                "adamw: {n} parameters, {} gradients, {} moments",
                g.len(),
                state.len()
            );
        }
        let (m, v) = state.split_at(n);
        let mut out = vec![0f32; 3 * n];
        let (po, rest) = out.split_at_mut(n);
        let (mo, vo) = rest.split_at_mut(n);
        po.par_chunks_mut(CHUNK)
            .zip(mo.par_chunks_mut(CHUNK))
            .zip(vo.par_chunks_mut(CHUNK))
            .zip(p.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|((((po, mo), vo), (p, g)), (m, v))| {
                adamw_best(po, mo, vo, p, g, m, v, self.0)
            });
        Ok((CpuStorage::F32(out), Shape::from(3 * n)))
    }
}

/// One AdamW update of `param` with gradient `grad` (same shape) and optimiser
/// `state` = `[m; v]`, shape `(2, ...param shape)`. Returns the new parameter
/// and the new state. One fused pass on f32 CPU tensors; candle's ops elsewhere.
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    state: &Tensor,
    s: AdamWStep,
) -> candle_core::Result<(Tensor, Tensor)> {
    if fast_path(&[param, grad, state]) {
        let n = param.elem_count();
        let out = param.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &state.contiguous()?,
            &AdamWOp(s.into()),
        )?;
        let p = out.narrow(0, 0, n)?.reshape(param.shape())?;
        let st = out.narrow(0, n, 2 * n)?.reshape(state.shape())?;
        return Ok((p, st));
    }
    let g = grad.affine(s.grad_scale, 0.0)?;
    let (m, v) = (state.get(0)?, state.get(1)?);
    let m = (m.affine(s.beta1, 0.0)? + g.affine(1.0 - s.beta1, 0.0)?)?;
    let v = (v.affine(s.beta2, 0.0)? + g.sqr()?.affine(1.0 - s.beta2, 0.0)?)?;
    let denom = v
        .affine(1.0 / s.bias_correction.1, 0.0)?
        .sqrt()?
        .affine(1.0, s.eps)?;
    let upd = (m.affine(s.lr / s.bias_correction.0, 0.0)? / denom)?;
    let p = (param.affine(s.decay, 0.0)? - upd)?;
    Ok((p, Tensor::stack(&[&m, &v], 0)?))
}

/// `e' = d e + (1 − d) p`.
struct EmaOp(f32);

impl CustomOp2 for EmaOp {
    fn name(&self) -> &'static str {
        "flowlab-ema"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let e = contiguous_f32(s1, l1, "ema")?;
        let p = contiguous_f32(s2, l2, "ema")?;
        if e.len() != p.len() {
            candle_core::bail!(
                "ema: {} averaged values for {} parameters",
                e.len(),
                p.len()
            );
        }
        let d = self.0;
        let mut out = vec![0f32; e.len()];
        out.par_chunks_mut(CHUNK)
            .zip(e.par_chunks(CHUNK).zip(p.par_chunks(CHUNK)))
            .for_each(|(o, (e, p))| {
                for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
                    *o = d * e + (1.0 - d) * p;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// The exponential moving average step `decay · avg + (1 − decay) · param`.
pub fn ema_update(avg: &Tensor, param: &Tensor, decay: f64) -> candle_core::Result<Tensor> {
    if fast_path(&[avg, param]) {
        return avg
            .contiguous()?
            .apply_op2_no_bwd(&param.contiguous()?, &EmaOp(decay as f32));
    }
    avg.affine(decay, 0.0)? + param.affine(1.0 - decay, 0.0)?
}

#[inline(always)]
fn sum_sq_kernel(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    chunks.remainder().iter().map(|v| v * v).sum::<f32>() + acc.iter().sum::<f32>()
}

simd_dispatch!(fn sum_sq(x: &[f32]) -> f32 => sum_sq_kernel);

/// Σ x² as a one-element tensor.
struct SumSquares;

impl CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "flowlab-sum-squares"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "sum-squares")?;
        // Chunks summed in order: deterministic whatever the scheduling.
        let parts: Vec<f32> = x.par_chunks(CHUNK).map(sum_sq).collect();
        let total: f64 = parts.iter().map(|&v| f64::from(v)).sum();
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }
}

/// Σ x² over all elements of `x`, as an f64.
pub fn sum_squares(x: &Tensor) -> candle_core::Result<f64> {
    if fast_path(&[x]) {
        return Ok(f64::from(
            x.contiguous()?
                .apply_op1_no_bwd(&SumSquares)?
                .to_scalar::<f32>()?,
        ));
    }
    x.sqr()?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()
}
