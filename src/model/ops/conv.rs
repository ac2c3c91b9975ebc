//! 2D convolution (NCHW) for candle's CPU backend: im2col into a contiguous
//! buffer and one `gemm` product per sample for the forward pass, and a fused
//! backward that computes the input, kernel and bias gradients in one pass over
//! the batch (the input gradient by a product with the transposed kernel and a
//! col2im scatter). Samples run in parallel on rayon's pool; each product then
//! stays on one thread.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{Mat, Threads, chunk_len, contiguous_f32, fast_path, gemm, unpack};

/// Stride, zero padding and dilation of a 2D convolution (the same along both axes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dParams {
    /// Step between output positions, in input pixels (>= 1).
    pub stride: usize,
    /// Zero pixels added on every side.
    pub padding: usize,
    /// Spacing between kernel taps (>= 1; 1 is a dense kernel).
    pub dilation: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: 1,
            padding: 0,
            dilation: 1,
        }
    }
}

impl Conv2dParams {
    /// Stride 1 with `padding` pixels of zeros: a 3x3 kernel with padding 1 keeps the size.
    pub fn same(padding: usize) -> Self {
        Conv2dParams {
            padding,
            ..Default::default()
        }
    }

    /// Stride `stride` and padding `padding`.
    pub fn strided(stride: usize, padding: usize) -> Self {
        Conv2dParams {
            stride,
            padding,
            dilation: 1,
        }
    }
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    p: Conv2dParams,
}

impl Geometry {
    fn new(x: &Shape, k: &Shape, p: Conv2dParams) -> candle_core::Result<Self> {
        let (batch, c_in, h, w) = x.dims4()?;
        let (c_out, c_in_k, kh, kw) = k.dims4()?;
        if c_in != c_in_k {
            candle_core::bail!("conv2d: input has {c_in} channels, kernel expects {c_in_k}");
        }
        if p.stride == 0 || p.dilation == 0 || kh == 0 || kw == 0 {
            candle_core::bail!("conv2d: stride, dilation and kernel size must be positive");
        }
        let out = |n: usize, k: usize| {
            let span = p.dilation * (k - 1) + 1;
            (n + 2 * p.padding)
                .checked_sub(span)
                .map(|d| d / p.stride + 1)
        };
        let (Some(ho), Some(wo)) = (out(h, kh), out(w, kw)) else {
            candle_core::bail!("conv2d: kernel {kh}x{kw} does not fit a padded {h}x{w} input");
        };
        Ok(Geometry {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            ho,
            wo,
            p,
        })
    }

    /// Rows of the im2col matrix (kernel taps): c_in·kh·kw.
    fn taps(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    fn in_len(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }

    fn out_len(&self) -> usize {
        self.c_out * self.out_pixels()
    }

    /// A 1x1 kernel with stride 1 and no padding: the input itself is the im2col matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.p.stride == 1 && self.p.padding == 0
    }

    /// For kernel tap `k` along an axis with `n_out` outputs and `n_in` inputs:
    /// the output range `[lo, hi)` that reads inside the image, and the offset
    /// with input index = out · stride + offset.
    fn valid(&self, k: usize, n_out: usize, n_in: usize) -> (usize, usize, isize) {
        let s = self.p.stride as isize;
        let off = (k * self.p.dilation) as isize - self.p.padding as isize;
        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
        let room = n_in as isize - off;
        let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
        let hi = (hi as usize).min(n_out);
        ((lo as usize).min(hi), hi, off)
    }
}

/// Fills `col` (`taps x ho·wo`, row-major) with the input patches of one sample
/// `x` (`c_in x h x w`), zeros where a tap falls in the padding.
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let (s, npix) = (g.p.stride, g.out_pixels());
    let mut rows = col.chunks_exact_mut(npix);
    for plane in x.chunks_exact(g.h * g.w) {
        for ky in 0..g.kh {
            let (ylo, yhi, yoff) = g.valid(ky, g.ho, g.h);
            for kx in 0..g.kw {
                let (xlo, xhi, xoff) = g.valid(kx, g.wo, g.w);
                let Some(row) = rows.next() else { return };
                for (oy, dst) in row.chunks_exact_mut(g.wo).enumerate() {
                    if oy < ylo || oy >= yhi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = (oy * s) as isize + yoff;
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..xlo].fill(0.0);
                    dst[xhi..].fill(0.0);
                    let first = ((xlo * s) as isize + xoff) as usize;
                    if s == 1 {
                        dst[xlo..xhi].copy_from_slice(&src[first..first + (xhi - xlo)]);
                    } else {
                        for (d, v) in dst[xlo..xhi].iter_mut().zip(src[first..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds every entry of `col` to the input pixel it
/// was read from. `dx` (`c_in x h x w`) must start at zero.
fn col2im(g: &Geometry, col: &[f32], dx: &mut [f32]) {
    let (s, npix) = (g.p.stride, g.out_pixels());
    let mut rows = col.chunks_exact(npix);
    for plane in dx.chunks_exact_mut(g.h * g.w) {
        for ky in 0..g.kh {
            let (ylo, yhi, yoff) = g.valid(ky, g.ho, g.h);
            for kx in 0..g.kw {
                let (xlo, xhi, xoff) = g.valid(kx, g.wo, g.w);
                let Some(row) = rows.next() else { return };
                for (oy, src) in row.chunks_exact(g.wo).enumerate().take(yhi).skip(ylo) {
                    let iy = ((oy * s) as isize + yoff) as usize;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let first = ((xlo * s) as isize + xoff) as usize;
                    if s == 1 {
                        for (d, v) in dst[first..first + (xhi - xlo)]
                            .iter_mut()
                            .zip(&src[xlo..xhi])
                        {
                            *d += v;
                        }
                    } else {
                        for (d, v) in dst[first..].iter_mut().step_by(s).zip(&src[xlo..xhi]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward: `(x, kernel, bias)` -> output.
struct Conv2dOp {
    p: Conv2dParams,
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "flowlab-conv2d"
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
        let g = Geometry::new(l1.shape(), l2.shape(), self.p)?;
        let x = contiguous_f32(s1, l1, "conv2d")?;
        let k = contiguous_f32(s2, l2, "conv2d")?;
        let bias = contiguous_f32(s3, l3, "conv2d")?;
        if bias.len() != g.c_out {
            candle_core::bail!(
                "conv2d: {} bias values for {} channels",
                bias.len(),
                g.c_out
            );
        }
        let (npix, taps) = (g.out_pixels(), g.taps());
        let kernel = Mat::new(k, g.c_out, taps);
        let threads = Threads::for_tasks(g.batch);
        let col_len = if g.pointwise() { 0 } else { taps * npix };
        let mut out = vec![0f32; g.batch * g.out_len()];
        if g.batch > 0 && g.out_len() > 0 {
            out.par_chunks_mut(g.out_len())
                .zip(x.par_chunks(g.in_len().max(1)))
                .try_for_each_init(
                    || vec![0f32; col_len],
                    |col, (out, x)| {
                        for (row, &b) in out.chunks_exact_mut(npix).zip(bias) {
                            row.fill(b);
                        }
                        let patches = if g.pointwise() {
                            Mat::new(x, taps, npix)
                        } else {
                            im2col(&g, x, col);
                            Mat::new(col, taps, npix)
                        };
                        gemm(out, kernel, patches, true, threads)
                    },
                )?;
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.batch, g.c_out, g.ho, g.wo)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        k: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.apply_op3_no_bwd(k, &grad.contiguous()?, &Conv2dBackward { p: self.p })?;
        let mut parts = unpack(&packed, &[x.dims(), k.dims(), b.dims()])?.into_iter();
        Ok((parts.next(), parts.next(), parts.next()))
    }
}

/// Backward: `(x, kernel, grad_out)` -> packed `[dx, dkernel, dbias]`.
struct Conv2dBackward {
    p: Conv2dParams,
}

impl CustomOp3 for Conv2dBackward {
    fn name(&self) -> &'static str {
        "flowlab-conv2d-backward"
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
        let g = Geometry::new(l1.shape(), l2.shape(), self.p)?;
        let x = contiguous_f32(s1, l1, "conv2d-backward")?;
        let k = contiguous_f32(s2, l2, "conv2d-backward")?;
        let gy = contiguous_f32(s3, l3, "conv2d-backward")?;
        if gy.len() != g.batch * g.out_len() {
            candle_core::bail!("conv2d-backward: gradient has {} values", gy.len());
        }
        let (npix, taps) = (g.out_pixels(), g.taps());
        let (dk_len, dx_len) = (g.c_out * taps, g.batch * g.in_len());
        let mut packed = vec![0f32; dx_len + dk_len + g.c_out];
        if g.batch == 0 || g.out_len() == 0 || g.in_len() == 0 {
            let n = packed.len();
            return Ok((CpuStorage::F32(packed), Shape::from(n)));
        }
        let kernel = Mat::new(k, g.c_out, taps);
        let per = chunk_len(g.batch);
        let threads = Threads::for_tasks(g.batch.div_ceil(per));
        let col_len = if g.pointwise() { 0 } else { taps * npix };
        let (dx, rest) = packed.split_at_mut(dx_len);
        // Each chunk of samples returns its partial kernel and bias gradients;
        // they are summed below in chunk order.
        let partials = dx
            .par_chunks_mut(per * g.in_len())
            .zip(x.par_chunks(per * g.in_len()))
            .zip(gy.par_chunks(per * g.out_len()))
            .map(|((dx, x), gy)| {
                let mut dk = vec![0f32; dk_len];
                let mut db = vec![0f32; g.c_out];
                let mut col = vec![0f32; col_len];
                let mut dcol = vec![0f32; col_len];
                let samples = dx
                    .chunks_exact_mut(g.in_len())
                    .zip(x.chunks_exact(g.in_len()))
                    .zip(gy.chunks_exact(g.out_len()));
                for ((dx, x), gy) in samples {
                    for (d, row) in db.iter_mut().zip(gy.chunks_exact(npix)) {
                        *d += super::simd::sum(row);
                    }
                    let grad = Mat::new(gy, g.c_out, npix);
                    if g.pointwise() {
                        gemm(&mut dk, grad, Mat::new(x, taps, npix).t(), true, threads)?;
                        gemm(dx, kernel.t(), grad, false, threads)?;
                    } else {
                        im2col(&g, x, &mut col);
                        gemm(&mut dk, grad, Mat::new(&col, taps, npix).t(), true, threads)?;
                        gemm(&mut dcol, kernel.t(), grad, false, threads)?;
                        col2im(&g, &dcol, dx);
                    }
                }
                Ok((dk, db))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (dk, db) = rest.split_at_mut(dk_len);
        for (pk, pb) in &partials {
            dk.iter_mut().zip(pk).for_each(|(a, v)| *a += v);
            db.iter_mut().zip(pb).for_each(|(a, v)| *a += v);
        }
        let n = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(n)))
    }
}

/// 2D convolution of `x`: `(batch, c_in, h, w)` with `kernel`: `(c_out, c_in, kh, kw)`
/// plus an optional `bias`: `(c_out,)`. Returns `(batch, c_out, ho, wo)` with
/// `ho = (h + 2 padding − dilation (kh − 1) − 1) / stride + 1` (likewise `wo`).
///
/// On the CPU with f32 this is FlowLab's im2col + gemm kernel with a fused
/// backward; elsewhere candle's `conv2d`.
pub fn conv2d(
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    p: Conv2dParams,
) -> candle_core::Result<Tensor> {
    if fast_path(&[x, kernel]) {
        let bias = match bias {
            Some(b) => b.contiguous()?,
            None => Tensor::zeros(kernel.dim(0)?, x.dtype(), x.device())?,
        };
        return x
            .contiguous()?
            .apply_op3(&kernel.contiguous()?, &bias, Conv2dOp { p });
    }
    let y = x.conv2d(kernel, p.padding, p.stride, p.dilation, 1)?;
    match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?),
        None => Ok(y),
    }
}
