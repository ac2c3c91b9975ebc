//! 2D convolution (NCHW) for candle's CPU backend: im2col into a contiguous
//! buffer and one `gemm` product per chunk of samples for the forward pass, and
//! a fused backward that computes the input, kernel and bias gradients in one
//! pass over the batch (the input gradient by a product with the transposed
//! kernel and a col2im scatter). Chunks run in parallel on rayon's pool; each
//! product then stays on one thread. Small images are grouped several to a
//! chunk, so that every product is wide enough to run gemm at full speed.
//!
//! 3x3 stride-1 convolutions with channel counts that are multiples of 16 (all
//! of the UNet's but the first and last) take Winograd's method instead, forward
//! and backward (`super::winograd`).

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::winograd::{Winograd, transform_kernel};
use super::{Mat, Threads, chunk_len, contiguous_f32, fast_path, gemm, unpack, with_scratch};

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

    /// The Winograd form of this convolution, where it applies.
    fn winograd(&self) -> Option<Winograd> {
        Winograd::applies(
            self.kh,
            self.kw,
            self.p.stride,
            self.p.dilation,
            self.p.padding,
            self.c_in,
            self.c_out,
        )
        .then_some(Winograd {
            batch: self.batch,
            c_in: self.c_in,
            h: self.h,
            w: self.w,
            c_out: self.c_out,
            pad: self.p.padding,
        })
        .filter(Winograd::scratch_fits)
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

    fn out_shape(&self) -> Shape {
        Shape::from((self.batch, self.c_out, self.ho, self.wo))
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

/// Samples whose patches go side by side into one im2col matrix, so that each
/// product has about this many columns at most (small images would otherwise
/// give thin products that spend their time repacking the kernel) ...
const MAX_COLUMNS: usize = 1536;

/// ... and at least this many, where the samples allow it ...
const MIN_COLUMNS: usize = 256;

/// ... while the im2col matrix stays within about this many floats (1 MiB, the
/// L2 cache of one core here: it is written and then read back by the product).
const COLUMN_BUDGET: usize = 1 << 18;

/// Samples per chunk for `batch` samples with `taps` kernel taps and `pixels`
/// output pixels: fixed by the shapes alone, so results do not depend on the
/// number of threads. (Tuned with `flowlab bench --only conv`.)
fn samples_per_chunk(batch: usize, taps: usize, pixels: usize) -> usize {
    let columns = (COLUMN_BUDGET / taps.max(1)).clamp(MIN_COLUMNS, MAX_COLUMNS);
    (columns / pixels.max(1)).clamp(1, (batch / 4).max(1))
}

/// Zeros a short run of values (usually 0 or 1 at an image edge) without a
/// `memset` call.
#[inline(always)]
fn zero_short(v: &mut [f32]) {
    match v {
        [] => {}
        [a] => *a = 0.0,
        [a, b] => {
            *a = 0.0;
            *b = 0.0;
        }
        _ => v.fill(0.0),
    }
}

/// Fills this sample's columns `[off, off + ho·wo)` of every row of `col` (row
/// `r` starts at `r · ld`; rows are the kernel taps) with the patches of `x`
/// (`c_in x h x w`), zeros where a tap falls in the padding.
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
    let (s, npix, plane_len) = (g.p.stride, g.out_pixels(), g.h * g.w);
    let contiguous = s == 1 && g.wo == g.w;
    let mut tap = 0;
    for plane in x.chunks_exact(plane_len) {
        for ky in 0..g.kh {
            let (ylo, yhi, yoff) = g.valid(ky, g.ho, g.h);
            for kx in 0..g.kw {
                let (xlo, xhi, xoff) = g.valid(kx, g.wo, g.w);
                let Some(row) = col.get_mut(tap * ld + off..tap * ld + off + npix) else {
                    return;
                };
                tap += 1;
                if contiguous {
                    // Output pixel i reads input pixel i + shift: one copy for the
                    // valid rows, then zero the columns that wrapped around.
                    let shift = yoff * g.w as isize + xoff;
                    let (d0, d1) = (ylo * g.w, yhi * g.w);
                    let s0 = (d0 as isize + shift).max(0) as usize;
                    let s1 = ((d1 as isize + shift).max(0) as usize).min(plane_len);
                    let start = (s0 as isize - shift) as usize;
                    if s1 > s0 {
                        row[start..start + (s1 - s0)].copy_from_slice(&plane[s0..s1]);
                    }
                    row[..d0].fill(0.0);
                    row[d1..].fill(0.0);
                    if xlo > 0 || xhi < g.wo {
                        for r in row[d0..d1].chunks_exact_mut(g.wo) {
                            zero_short(&mut r[..xlo]);
                            zero_short(&mut r[xhi..]);
                        }
                    }
                    continue;
                }
                for (oy, dst) in row.chunks_exact_mut(g.wo).enumerate() {
                    if oy < ylo || oy >= yhi {
                        dst.fill(0.0);
                        continue;
                    }
                    let iy = ((oy * s) as isize + yoff) as usize;
                    let src = &plane[iy * g.w..(iy + 1) * g.w];
                    dst[..xlo].fill(0.0);
                    dst[xhi..].fill(0.0);
                    let first = ((xlo * s) as isize + xoff) as usize;
                    for (d, v) in dst[xlo..xhi].iter_mut().zip(src[first..].iter().step_by(s)) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds this sample's columns of `col` to the input
/// pixels they were read from, in `dx` (`c_in x h x w`, which must start at
/// zero). The padding entries of `col` are overwritten with zeros.
fn col2im(g: &Geometry, col: &mut [f32], ld: usize, off: usize, dx: &mut [f32]) {
    let (s, npix, plane_len) = (g.p.stride, g.out_pixels(), g.h * g.w);
    let contiguous = s == 1 && g.wo == g.w;
    let mut tap = 0;
    for plane in dx.chunks_exact_mut(plane_len) {
        for ky in 0..g.kh {
            let (ylo, yhi, yoff) = g.valid(ky, g.ho, g.h);
            for kx in 0..g.kw {
                let (xlo, xhi, xoff) = g.valid(kx, g.wo, g.w);
                let Some(row) = col.get_mut(tap * ld + off..tap * ld + off + npix) else {
                    return;
                };
                tap += 1;
                if contiguous {
                    // Zero the entries that read padding, then one contiguous add.
                    let shift = yoff * g.w as isize + xoff;
                    let (d0, d1) = (ylo * g.w, yhi * g.w);
                    if xlo > 0 || xhi < g.wo {
                        for r in row[d0..d1].chunks_exact_mut(g.wo) {
                            zero_short(&mut r[..xlo]);
                            zero_short(&mut r[xhi..]);
                        }
                    }
                    let s0 = (d0 as isize + shift).max(0) as usize;
                    let s1 = ((d1 as isize + shift).max(0) as usize).min(plane_len);
                    let start = (s0 as isize - shift) as usize;
                    if s1 > s0 {
                        for (d, v) in plane[s0..s1].iter_mut().zip(&row[start..]) {
                            *d += v;
                        }
                    }
                    continue;
                }
                for (oy, src) in row.chunks_exact(g.wo).enumerate().take(yhi).skip(ylo) {
                    let iy = ((oy * s) as isize + yoff) as usize;
                    let dst = &mut plane[iy * g.w..(iy + 1) * g.w];
                    let first = ((xlo * s) as isize + xoff) as usize;
                    for (d, v) in dst[first..].iter_mut().step_by(s).zip(&src[xlo..xhi]) {
                        *d += v;
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
        let (npix, taps, out_len, in_len) = (g.out_pixels(), g.taps(), g.out_len(), g.in_len());
        let mut out = vec![0f32; g.batch * out_len];
        if g.batch == 0 || out_len == 0 || in_len == 0 {
            return Ok((CpuStorage::F32(out), g.out_shape()));
        }
        if let Some(wg) = g.winograd() {
            let u = transform_kernel(k, g.c_out, g.c_in, false);
            wg.run(x, &u, Some(bias), &mut out)?;
            return Ok((CpuStorage::F32(out), g.out_shape()));
        }
        let kernel = Mat::new(k, g.c_out, taps);
        let per = samples_per_chunk(g.batch, taps, npix);
        let threads = Threads::for_tasks(g.batch.div_ceil(per));
        out.par_chunks_mut(per * out_len)
            .zip(x.par_chunks(per * in_len))
            .try_for_each(|(out, x)| {
                let ld = (x.len() / in_len) * npix;
                let single = ld == npix;
                with_scratch(taps * ld + if single { 0 } else { g.c_out * ld }, |buf| {
                    let (col, tmp) = buf.split_at_mut(taps * ld);
                    for (j, x) in x.chunks_exact(in_len).enumerate() {
                        im2col(&g, x, col, ld, j * npix);
                    }
                    let patches = Mat::new(col, taps, ld);
                    if single {
                        // One sample: the product goes straight into the output.
                        for (row, &b) in out.chunks_exact_mut(ld).zip(bias) {
                            row.fill(b);
                        }
                        return gemm(out, kernel, patches, true, threads);
                    }
                    for (row, &b) in tmp.chunks_exact_mut(ld).zip(bias) {
                        row.fill(b);
                    }
                    gemm(tmp, kernel, patches, true, threads)?;
                    // (c_out, samples · pixels) -> (samples, c_out, pixels).
                    for (co, row) in tmp.chunks_exact(ld).enumerate() {
                        for (j, part) in row.chunks_exact(npix).enumerate() {
                            let at = j * out_len + co * npix;
                            out[at..at + npix].copy_from_slice(part);
                        }
                    }
                    Ok::<(), candle_core::Error>(())
                })
            })?;
        Ok((CpuStorage::F32(out), g.out_shape()))
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
        let (npix, taps, out_len, in_len) = (g.out_pixels(), g.taps(), g.out_len(), g.in_len());
        if gy.len() != g.batch * out_len {
            candle_core::bail!("conv2d-backward: gradient has {} values", gy.len());
        }
        let (dk_len, dx_len) = (g.c_out * taps, g.batch * in_len);
        let mut packed = vec![0f32; dx_len + dk_len + g.c_out];
        if g.batch == 0 || out_len == 0 || in_len == 0 {
            let n = packed.len();
            return Ok((CpuStorage::F32(packed), Shape::from(n)));
        }
        let kernel = Mat::new(k, g.c_out, taps);
        // With Winograd's method, the input gradient is a convolution of the
        // output gradient (padding 2 − p, kernel flipped, channels swapped) and
        // the kernel gradient goes through the same transforms.
        if let Some(wg) = g.winograd() {
            let wg_dx = Winograd {
                c_in: wg.c_out,
                c_out: wg.c_in,
                h: g.ho,
                w: g.wo,
                pad: 2 - wg.pad,
                ..wg
            };
            let u = transform_kernel(k, g.c_out, g.c_in, true);
            wg_dx.run(gy, &u, None, &mut packed[..dx_len])?;
            let dk = wg.kernel_grad(x, gy)?;
            let (dk_slot, db) = packed[dx_len..].split_at_mut(dk_len);
            dk_slot.copy_from_slice(&dk);
            for (j, plane) in gy.chunks_exact(npix).enumerate() {
                if let Some(d) = db.get_mut(j % g.c_out) {
                    *d += super::simd::sum(plane);
                }
            }
            let n = packed.len();
            return Ok((CpuStorage::F32(packed), Shape::from(n)));
        }
        let per = samples_per_chunk(g.batch, taps, npix);
        // At most BATCH_CHUNKS groups run in parallel; each walks its chunks of
        // `per` samples in order, accumulating one partial kernel gradient.
        let group = chunk_len(g.batch.div_ceil(per)) * per;
        let threads = Threads::for_tasks(g.batch.div_ceil(group));
        let (dx, rest) = packed.split_at_mut(dx_len);
        // Each group returns its partial kernel and bias gradients; they are
        // summed below in group order.
        let partials = dx
            .par_chunks_mut(group * in_len)
            .zip(x.par_chunks(group * in_len))
            .zip(gy.par_chunks(group * out_len))
            .map(|((dx, x), gy)| {
                let mut dk = vec![0f32; dk_len];
                let mut db = vec![0f32; g.c_out];
                let chunks = dx
                    .chunks_mut(per * in_len)
                    .zip(x.chunks(per * in_len))
                    .zip(gy.chunks(per * out_len));
                for ((dx, x), gy) in chunks {
                    let ld = (x.len() / in_len) * npix;
                    let single = ld == npix;
                    let scratch = 2 * taps * ld + if single { 0 } else { g.c_out * ld };
                    with_scratch(scratch, |buf| {
                        let (col, rest) = buf.split_at_mut(taps * ld);
                        let (dcol, gbuf) = rest.split_at_mut(taps * ld);
                        // The output gradient as (c_out, samples · pixels).
                        let grad: &[f32] = if single {
                            gy
                        } else {
                            for (j, sample) in gy.chunks_exact(out_len).enumerate() {
                                for (co, part) in sample.chunks_exact(npix).enumerate() {
                                    let at = co * ld + j * npix;
                                    gbuf[at..at + npix].copy_from_slice(part);
                                }
                            }
                            gbuf
                        };
                        for (d, row) in db.iter_mut().zip(grad.chunks_exact(ld)) {
                            *d += super::simd::sum(row);
                        }
                        for (j, x) in x.chunks_exact(in_len).enumerate() {
                            im2col(&g, x, col, ld, j * npix);
                        }
                        let grad = Mat::new(grad, g.c_out, ld);
                        gemm(&mut dk, grad, Mat::new(col, taps, ld).t(), true, threads)?;
                        gemm(dcol, kernel.t(), grad, false, threads)?;
                        for (j, dx) in dx.chunks_exact_mut(in_len).enumerate() {
                            col2im(&g, dcol, ld, j * npix, dx);
                        }
                        Ok::<(), candle_core::Error>(())
                    })?;
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

/// Whether [`conv2d`] on the CPU computes the convolution of an input of shape
/// `(batch, c_in, h, w)` with a kernel of shape `(c_out, c_in, kh, kw)` and
/// parameters `p` by Winograd's F(2x2, 3x3) method (forward and backward; 2.25x
/// fewer multiplications than the direct product): 3x3 kernels at stride
/// 1, padding at most 2, channel counts that are multiples of 16, and images
/// whose transformed tiles take at most 128 MiB per sample.
pub fn uses_winograd(input: &[usize], kernel: &[usize], p: Conv2dParams) -> bool {
    Geometry::new(&Shape::from(input), &Shape::from(kernel), p)
        .ok()
        .and_then(|g| g.winograd())
        .is_some()
}

/// The gradients `(dx, dkernel, dbias)` of [`conv2d`] for an output gradient
/// `grad`: `(batch, c_out, ho, wo)` (CPU and f32 only; used by benchmarks and tests).
pub fn conv2d_backward(
    x: &Tensor,
    kernel: &Tensor,
    grad: &Tensor,
    p: Conv2dParams,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    if !fast_path(&[x, kernel, grad]) {
        candle_core::bail!("conv2d_backward: FlowLab's kernel runs on f32 CPU tensors only");
    }
    let x = x.contiguous()?;
    let kernel = kernel.contiguous()?;
    let packed = x.apply_op3_no_bwd(&kernel, &grad.contiguous()?, &Conv2dBackward { p })?;
    let c_out = kernel.dim(0)?;
    let mut parts = unpack(&packed, &[x.dims(), kernel.dims(), &[c_out]])?.into_iter();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(dx), Some(dk), Some(db)) => Ok((dx, dk, db)),
        _ => candle_core::bail!("conv2d_backward: missing gradients"),
    }
}
