//! Group normalisation fused with an optional per-sample scale/shift (the way a
//! UNet block takes its time embedding) and an optional SiLU:
//!
//! `y = act((γ_c x̂ + β_c)(1 + s_bc) + h_bc)`, with `x̂` the input normalised over
//! each group of channels of each sample. Forward is one read and one write of
//! `x` after the statistics; the backward computes the gradients of `x`, `γ`,
//! `β`, `s` and `h` in two more passes, on blocks small enough to stay in cache.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::elementwise::sigmoid;
use super::simd::{LANES, simd_dispatch, sum};
use super::{chunk_len, contiguous_f32, fast_path, unpack};

/// Number of groups and the variance epsilon of a group norm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupNormParams {
    /// Channels are split into this many groups (must divide the channel count).
    pub groups: usize,
    /// Added to the variance before the square root.
    pub eps: f32,
}

impl GroupNormParams {
    /// `groups` groups with eps 1e-5 (PyTorch's default).
    pub fn new(groups: usize) -> Self {
        GroupNormParams { groups, eps: 1e-5 }
    }
}

/// Sizes of one group norm.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    channels: usize,
    pixels: usize,
    per_group: usize,
}

impl Dims {
    fn new(x: &Shape, affine: &Shape, ss: &Shape, groups: usize) -> candle_core::Result<Self> {
        let dims = x.dims();
        let (batch, channels) = match dims {
            [b, c, ..] => (*b, *c),
            _ => candle_core::bail!("group-norm: input must be (batch, channels, ...)"),
        };
        let pixels = dims.iter().skip(2).product();
        if groups == 0 || channels % groups != 0 {
            candle_core::bail!("group-norm: {groups} groups do not divide {channels} channels");
        }
        if affine.dims() != [2, channels] {
            candle_core::bail!("group-norm: affine must be (2, {channels}), got {affine:?}");
        }
        if ss.dims() != [batch, 2 * channels] {
            candle_core::bail!(
                "group-norm: scale/shift must be ({batch}, {}), got {ss:?}",
                2 * channels
            );
        }
        Ok(Dims {
            batch,
            channels,
            pixels,
            per_group: channels / groups,
        })
    }

    fn sample_len(&self) -> usize {
        self.channels * self.pixels
    }
}

/// Mean and 1/sqrt(var + eps) of a group's values (two passes, for accuracy).
#[inline(always)]
fn stats_kernel(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len().max(1) as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            let d = v - mean;
            *a += d * d;
        }
    }
    let rem: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    let var = (acc.iter().sum::<f32>() + rem) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_dispatch!(fn stats(x: &[f32], eps: f32) -> (f32, f32) => stats_kernel);

/// `y = x a + b`, then SiLU if `silu`.
#[inline(always)]
fn affine_kernel(y: &mut [f32], x: &[f32], a: f32, b: f32, silu: bool) {
    if silu {
        for (y, &x) in y.iter_mut().zip(x) {
            let u = x * a + b;
            *y = u * sigmoid(u);
        }
    } else {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = x * a + b;
        }
    }
}

simd_dispatch!(fn affine(y: &mut [f32], x: &[f32], a: f32, b: f32, silu: bool) => affine_kernel);

/// First backward pass over one channel: writes `du = dy · act'(u)` with
/// `u = x a + b`, and returns (Σ du, Σ du·x̂) where `x̂ = (x − mean) rstd`.
#[inline(always)]
fn grad_u_kernel(
    du: &mut [f32],
    x: &[f32],
    dy: &[f32],
    ab: (f32, f32),
    mean_rstd: (f32, f32),
    silu: bool,
) -> (f32, f32) {
    let ((a, b), (mean, rstd)) = (ab, mean_rstd);
    let (mut s1, mut s2) = ([0f32; LANES], [0f32; LANES]);
    let mut t1 = 0f32;
    let mut t2 = 0f32;
    let n = du.len();
    let full = n - n % LANES;
    let (du_main, du_rem) = du.split_at_mut(full);
    let (x_main, x_rem) = x.split_at(full.min(x.len()));
    let (dy_main, dy_rem) = dy.split_at(full.min(dy.len()));
    let step = |x: f32, dy: f32| {
        let g = if silu {
            let u = x * a + b;
            let s = sigmoid(u);
            dy * s * (1.0 + u * (1.0 - s))
        } else {
            dy
        };
        (g, g * (x - mean) * rstd)
    };
    for ((d, x), dy) in du_main
        .chunks_exact_mut(LANES)
        .zip(x_main.chunks_exact(LANES))
        .zip(dy_main.chunks_exact(LANES))
    {
        for i in 0..LANES {
            let (g, gx) = step(x[i], dy[i]);
            d[i] = g;
            s1[i] += g;
            s2[i] += gx;
        }
    }
    for ((d, &x), &dy) in du_rem.iter_mut().zip(x_rem).zip(dy_rem) {
        let (g, gx) = step(x, dy);
        *d = g;
        t1 += g;
        t2 += gx;
    }
    (t1 + s1.iter().sum::<f32>(), t2 + s2.iter().sum::<f32>())
}

simd_dispatch!(fn grad_u(
    du: &mut [f32],
    x: &[f32],
    dy: &[f32],
    ab: (f32, f32),
    mean_rstd: (f32, f32),
    silu: bool,
) -> (f32, f32) => grad_u_kernel);

/// Second backward pass over one channel, in place: `d ← rstd (c d − p − x̂ q)`
/// with `x̂ = (x − mean) rstd`.
#[inline(always)]
fn grad_x_kernel(d: &mut [f32], x: &[f32], c: f32, pq: (f32, f32), mean_rstd: (f32, f32)) {
    let ((p, q), (mean, rstd)) = (pq, mean_rstd);
    for (d, &x) in d.iter_mut().zip(x) {
        let xh = (x - mean) * rstd;
        *d = rstd * (c * *d - p - xh * q);
    }
}

simd_dispatch!(fn grad_x(d: &mut [f32], x: &[f32], c: f32, pq: (f32, f32), mean_rstd: (f32, f32)) => grad_x_kernel);

/// Forward: `(x, affine (2, C) = [γ; β], ss (B, 2C) = [s, h])` -> y.
struct GroupNormOp {
    p: GroupNormParams,
    silu: bool,
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "flowlab-group-norm"
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
        let d = Dims::new(l1.shape(), l2.shape(), l3.shape(), self.p.groups)?;
        let x = contiguous_f32(s1, l1, "group-norm")?;
        let affine_p = contiguous_f32(s2, l2, "group-norm")?;
        let ss = contiguous_f32(s3, l3, "group-norm")?;
        let (gamma, beta) = affine_p.split_at(d.channels);
        let mut y = vec![0f32; x.len()];
        let (sample, group_len) = (d.sample_len(), d.per_group * d.pixels);
        if sample > 0 && d.pixels > 0 {
            y.par_chunks_mut(sample)
                .zip(x.par_chunks(sample))
                .zip(ss.par_chunks(2 * d.channels))
                .for_each(|((y, x), ss)| {
                    let (scale, shift) = ss.split_at(d.channels);
                    let groups = y.chunks_exact_mut(group_len).zip(x.chunks_exact(group_len));
                    for (gi, (y, x)) in groups.enumerate() {
                        let (mean, rstd) = stats(x, self.p.eps);
                        let channels = y.chunks_exact_mut(d.pixels).zip(x.chunks_exact(d.pixels));
                        for (j, (y, x)) in channels.enumerate() {
                            let c = gi * d.per_group + j;
                            let m = 1.0 + scale[c];
                            let a = gamma[c] * rstd * m;
                            let b = (beta[c] - gamma[c] * rstd * mean) * m + shift[c];
                            affine(y, x, a, b, self.silu);
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        ss: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(
            &Tensor::cat(&[&affine.flatten_all()?, &ss.flatten_all()?], 0)?,
            &grad.contiguous()?,
            &GroupNormBackward {
                p: self.p,
                silu: self.silu,
                batch: ss.dim(0)?,
            },
        )?;
        let mut parts = unpack(&packed, &[x.dims(), affine.dims(), ss.dims()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// Backward: `(x, [γ; β; ss flattened], dy)` -> packed `[dx, d(γ; β), d ss]`.
/// (γ, β and the scale/shift share one input because a custom op takes three.)
struct GroupNormBackward {
    p: GroupNormParams,
    silu: bool,
    batch: usize,
}

impl CustomOp3 for GroupNormBackward {
    fn name(&self) -> &'static str {
        "flowlab-group-norm-backward"
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
        let x = contiguous_f32(s1, l1, "group-norm-backward")?;
        let params = contiguous_f32(s2, l2, "group-norm-backward")?;
        let dy = contiguous_f32(s3, l3, "group-norm-backward")?;
        let channels = l1.dims().get(1).copied().unwrap_or(0);
        let d = Dims::new(
            l1.shape(),
            &Shape::from((2, channels)),
            &Shape::from((self.batch, 2 * channels)),
            self.p.groups,
        )?;
        if params.len() != 2 * channels * (1 + d.batch) || dy.len() != x.len() {
            candle_core::bail!("group-norm-backward: mismatched inputs");
        }
        let (affine_p, ss) = params.split_at(2 * channels);
        let (gamma, beta) = affine_p.split_at(channels);
        let mut packed = vec![0f32; x.len() + 2 * channels * (1 + d.batch)];
        let (sample, group_len) = (d.sample_len(), d.per_group * d.pixels);
        if sample == 0 || d.pixels == 0 {
            let n = packed.len();
            return Ok((CpuStorage::F32(packed), Shape::from(n)));
        }
        let (dx, rest) = packed.split_at_mut(x.len());
        let (daffine, dss) = rest.split_at_mut(2 * channels);
        let per = chunk_len(d.batch);
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(per * sample)
            .zip(dss.par_chunks_mut(per * 2 * channels))
            .zip(x.par_chunks(per * sample))
            .zip(dy.par_chunks(per * sample))
            .zip(ss.par_chunks(per * 2 * channels))
            .map(|((((dx, dss), x), dy), ss)| {
                // [dγ; dβ] summed over this chunk's samples.
                let mut acc = vec![0f32; 2 * channels];
                let samples = dx
                    .chunks_exact_mut(sample)
                    .zip(dss.chunks_exact_mut(2 * channels))
                    .zip(x.chunks_exact(sample))
                    .zip(dy.chunks_exact(sample))
                    .zip(ss.chunks_exact(2 * channels));
                for ((((dx, dss), x), dy), ss) in samples {
                    let (scale, shift) = ss.split_at(channels);
                    let (dscale, dshift) = dss.split_at_mut(channels);
                    let groups = dx
                        .chunks_exact_mut(group_len)
                        .zip(x.chunks_exact(group_len))
                        .zip(dy.chunks_exact(group_len));
                    for (gi, ((dx, x), dy)) in groups.enumerate() {
                        let (mean, rstd) = stats(x, self.p.eps);
                        let (mut p, mut q) = (0f32, 0f32);
                        let channels_of = dx
                            .chunks_exact_mut(d.pixels)
                            .zip(x.chunks_exact(d.pixels))
                            .zip(dy.chunks_exact(d.pixels));
                        for (j, ((du, x), dy)) in channels_of.enumerate() {
                            let c = gi * d.per_group + j;
                            let m = 1.0 + scale[c];
                            let a = gamma[c] * rstd * m;
                            let b = (beta[c] - gamma[c] * rstd * mean) * m + shift[c];
                            let (su, sux) = grad_u(du, x, dy, (a, b), (mean, rstd), self.silu);
                            // u = z m + h with z = γ x̂ + β.
                            dshift[c] = su;
                            dscale[c] = gamma[c] * sux + beta[c] * su;
                            acc[c] += m * sux;
                            acc[channels + c] += m * su;
                            // Σ dx̂ and Σ dx̂ x̂ over the group, dx̂ = du m γ.
                            p += m * gamma[c] * su;
                            q += m * gamma[c] * sux;
                        }
                        let n = group_len as f32;
                        let (p, q) = (p / n, q / n);
                        let channels_of =
                            dx.chunks_exact_mut(d.pixels).zip(x.chunks_exact(d.pixels));
                        for (j, (dx, x)) in channels_of.enumerate() {
                            let c = gi * d.per_group + j;
                            let m = 1.0 + scale[c];
                            grad_x(dx, x, m * gamma[c], (p, q), (mean, rstd));
                        }
                    }
                }
                acc
            })
            .collect();
        for part in &partials {
            daffine.iter_mut().zip(part).for_each(|(a, v)| *a += v);
        }
        let n = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(n)))
    }
}

/// Group norm of `x`: `(batch, channels, ...)` with per-channel `gamma`, `beta`:
/// `(channels,)`, then an optional per-sample modulation `scale_shift`:
/// `(batch, 2·channels)` (the first half is the scale s, applied as `1 + s`, the
/// second the shift), then an optional SiLU. Returns a tensor shaped like `x`.
///
/// On the CPU with f32 this is one fused kernel; elsewhere candle's ops.
pub fn group_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    scale_shift: Option<&Tensor>,
    silu: bool,
    p: GroupNormParams,
) -> candle_core::Result<Tensor> {
    let (batch, channels) = (x.dim(0)?, x.dim(1)?);
    let affine = Tensor::stack(&[gamma, beta], 0)?;
    if fast_path(&[x, gamma, beta]) {
        let ss = match scale_shift {
            Some(ss) => ss.contiguous()?,
            None => Tensor::zeros((batch, 2 * channels), x.dtype(), x.device())?,
        };
        return x
            .contiguous()?
            .apply_op3(&affine, &ss, GroupNormOp { p, silu });
    }
    // Reference path: candle's ops.
    if p.groups == 0 || channels % p.groups != 0 {
        candle_core::bail!(
            "group-norm: {} groups do not divide {channels} channels",
            p.groups
        );
    }
    let shape = x.shape().clone();
    let g = x.reshape((batch, p.groups, ()))?;
    let mean = g.mean_keepdim(2)?;
    let centred = g.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(2)?;
    let xhat = centred
        .broadcast_div(&(var + p.eps as f64)?.sqrt()?)?
        .reshape(&shape)?;
    let broadcast_dims = |lead: usize| {
        let mut dims = vec![lead, channels];
        dims.resize(shape.rank().max(2), 1);
        dims
    };
    let mut y = xhat
        .broadcast_mul(&gamma.reshape(broadcast_dims(1))?)?
        .broadcast_add(&beta.reshape(broadcast_dims(1))?)?;
    if let Some(ss) = scale_shift {
        let scale = ss.narrow(1, 0, channels)?.reshape(broadcast_dims(batch))?;
        let shift = ss
            .narrow(1, channels, channels)?
            .reshape(broadcast_dims(batch))?;
        y = y.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?;
    }
    if silu { y.silu() } else { Ok(y) }
}
