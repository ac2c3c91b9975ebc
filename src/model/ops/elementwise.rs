//! Fused elementwise kernels: SiLU and the bias add of linear layers.
//!
//! candle's SiLU calls the scalar `expf` of libm once per element on one thread
//! and its gradient takes several more passes over memory. On the CPU FlowLab
//! uses a fused SiLU (forward and gradient each one pass) with a vectorised
//! exponential (AVX-512 or AVX2, chosen at run time), split across rayon's pool
//! (the one gemm already uses, so the threads do not fight). Other devices keep
//! candle's own op.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::simd::simd_dispatch;
use super::{CHUNK, contiguous_f32};

/// e^x for f32, written so the compiler vectorises it: range reduction
/// x = k ln2 + r with |r| <= ln2/2, a degree-6 polynomial for e^r, and 2^k built
/// from its exponent bits. Relative error below 3e-7 on [-87, 88]; saturates outside.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest by adding and subtracting 1.5·2^23 (vectorises, unlike
    // `round`); the integer k is then read from the low mantissa bits, since a
    // saturating `as i32` cast does not vectorise.
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let k = shifted - MAGIC;
    let ki = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    // Cody-Waite: ln2 = 0.693359375 (exact in f32) - 2.12194440e-4.
    let r = x - k * 0.693_359_4 + k * 2.121_944_4e-4;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^k from its exponent bits (k is in [-126, 127] after the clamp).
    let bits = ki.wrapping_add(127) << 23;
    p * f32::from_bits(bits)
}

#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// Writes `out[i] = x[i] σ(x[i])`.
#[inline(always)]
fn silu_kernel(out: &mut [f32], x: &[f32]) {
    for (o, &x) in out.iter_mut().zip(x) {
        *o = x * sigmoid(x);
    }
}

/// Writes `out[i] = g[i] σ(x[i]) (1 + x[i] (1 − σ(x[i])))`.
#[inline(always)]
fn silu_grad_kernel(out: &mut [f32], x: &[f32], g: &[f32]) {
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
        let s = sigmoid(x);
        *o = g * s * (1.0 + x * (1.0 - s));
    }
}

// The same kernels compiled for AVX-512 and AVX2, so the polynomial exponential
// runs 16 or 8 lanes wide.
simd_dispatch!(fn silu_best(out: &mut [f32], x: &[f32]) => silu_kernel);
simd_dispatch!(fn silu_grad_best(out: &mut [f32], x: &[f32], g: &[f32]) => silu_grad_kernel);

/// Multiplies `d[i]` by the SiLU derivative at `x[i]`, σ(x) (1 + x (1 − σ(x))).
#[inline(always)]
fn silu_grad_mul_kernel(d: &mut [f32], x: &[f32]) {
    for (d, &x) in d.iter_mut().zip(x) {
        let s = sigmoid(x);
        *d *= s * (1.0 + x * (1.0 - s));
    }
}

simd_dispatch!(fn silu_grad_mul(d: &mut [f32], x: &[f32]) => silu_grad_mul_kernel);

/// `out = silu(x)` on rayon's pool.
pub(crate) fn silu_into(out: &mut [f32], x: &[f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| silu_best(o, x));
}

/// `d *= silu'(x)` on rayon's pool.
pub(crate) fn mul_silu_grad(d: &mut [f32], x: &[f32]) {
    d.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, x)| silu_grad_mul(d, x));
}

/// SiLU x·σ(x) with a fused gradient.
struct Silu;

impl CustomOp1 for Silu {
    fn name(&self) -> &'static str {
        "flowlab-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "silu")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| silu_best(o, x));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&g, &SiluGrad)?))
    }
}

/// d/dx [x σ(x)] · g = g · σ(x) · (1 + x (1 − σ(x))).
struct SiluGrad;

impl CustomOp2 for SiluGrad {
    fn name(&self) -> &'static str {
        "flowlab-silu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "silu-grad")?;
        let g = contiguous_f32(s2, l2, "silu-grad")?;
        if x.len() != g.len() {
            candle_core::bail!("silu-grad: {} values vs {} gradients", x.len(), g.len());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(o, (x, g))| silu_grad_best(o, x, g));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// SiLU (x·σ(x)): the fused kernel for f32 tensors on the CPU, candle's op
/// otherwise. Same shape as `x`.
pub fn silu(x: &Tensor) -> candle_core::Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(Silu)
    } else {
        x.silu()
    }
}

/// `x + b` for `x`: `(rows, n)` and `b`: `(n,)`, whose gradient for `b` is one
/// contiguous pass of column sums (candle's broadcast add reduces the batch
/// dimension with a strided loop: a third of a small MLP's training step).
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "flowlab-add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "add-bias")?;
        let b = contiguous_f32(s2, l2, "add-bias")?;
        let n = b.len();
        if n == 0 || x.len() % n != 0 {
            candle_core::bail!("add-bias: {} values do not fill rows of {n}", x.len());
        }
        let mut out = x.to_vec();
        let rows_per_chunk = (CHUNK / n).max(1);
        out.par_chunks_mut(rows_per_chunk * n).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(n) {
                for (o, &bi) in row.iter_mut().zip(b) {
                    *o += bi;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let gb = g.apply_op1_no_bwd(&ColumnSum { n: b.elem_count() })?;
        Ok((Some(g), Some(gb)))
    }
}

/// Sums a contiguous `(rows, n)` tensor over its rows: `(n,)`.
struct ColumnSum {
    n: usize,
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "flowlab-column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, "column-sum")?;
        let n = self.n;
        if n == 0 || g.len() % n != 0 {
            candle_core::bail!("column-sum: {} values do not fill rows of {n}", g.len());
        }
        let sum = column_sums(g, n);
        Ok((CpuStorage::F32(sum), Shape::from(n)))
    }
}

/// Sums of the columns of a row-major `(rows, n)` buffer. Fixed chunks summed
/// in order: the result does not depend on how rayon schedules the work, so
/// training stays bit-reproducible.
pub(crate) fn column_sums(g: &[f32], n: usize) -> Vec<f32> {
    let mut sum = vec![0f32; n];
    if n == 0 {
        return sum;
    }
    let rows_per_chunk = (CHUNK / n).max(1);
    let partial: Vec<Vec<f32>> = g
        .par_chunks(rows_per_chunk * n)
        .map(|chunk| {
            let mut acc = vec![0f32; n];
            for row in chunk.chunks_exact(n) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v;
                }
            }
            acc
        })
        .collect();
    for p in &partial {
        sum.iter_mut().zip(p).for_each(|(s, v)| *s += v);
    }
    sum
}

/// `x + b` with `x`: `(rows, n)` and `b`: `(n,)` broadcast over rows: the fused
/// kernel for f32 on the CPU, candle's broadcast add otherwise.
pub fn add_bias(x: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    let fits = x.rank() == 2 && b.rank() == 1 && x.dims().get(1) == b.dims().first();
    if fits && x.device().is_cpu() && x.dtype() == DType::F32 && b.dtype() == DType::F32 {
        x.contiguous()?.apply_op2(&b.contiguous()?, AddBias)
    } else {
        x.broadcast_add(b)
    }
}
