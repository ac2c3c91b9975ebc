//! Fast CPU kernels written as candle custom ops, with candle's own ops used on
//! other devices and dtypes.
//!
//! candle 0.11's CPU convolutions run at ~10 GFLOP/s here and their backward is
//! about three times the forward; its elementwise ops make one pass (and one
//! allocation) per primitive. The ops in this module fuse what a UNet or MLP
//! training step does into few passes and put the products on the `gemm` crate
//! (the one candle's matmul uses), parallelised on rayon's pool, which is the
//! pool gemm uses too, so the threads do not fight.
//!
//! Every op works on contiguous f32 NCHW (or row-major) buffers and is
//! deterministic: parallel reductions are summed over fixed chunks in a fixed
//! order, so a seeded run repeats bit for bit.

mod conv;
mod elementwise;
mod group_norm;
mod linear;
mod optim;
mod simd;
mod upsample;
mod winograd;

use candle_core::{CpuStorage, Layout, Tensor};

pub use conv::{Conv2dParams, conv2d, conv2d_backward, uses_winograd};
pub use elementwise::{add_bias, fast_exp, silu};
pub use group_norm::{GroupNormParams, group_norm};
pub use linear::{linear, silu_linear};
pub use optim::{AdamWStep, adamw_update, ema_update, sum_squares};
pub use upsample::upsample_nearest;

/// Elements per parallel chunk for elementwise work (below this a tensor is done
/// on one thread).
pub(crate) const CHUNK: usize = 1 << 15;

/// Most chunks a batch is split into for reductions over the batch (fixed, so the
/// summation order does not depend on the number of threads).
pub(crate) const BATCH_CHUNKS: usize = 8;

/// Whether the fast kernels apply: f32 tensors on the CPU.
pub(crate) fn fast_path(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == candle_core::DType::F32)
}

/// The f32 values of a contiguous CPU tensor, or an error naming `op`.
pub(crate) fn contiguous_f32<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: expected an f32 tensor")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => v
            .get(a..b)
            .ok_or_else(|| candle_core::Error::Msg(format!("{op}: bad layout"))),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

/// Splits a packed 1-D gradient buffer into tensors of the given shapes (views,
/// no copies). Backward kernels that compute several gradients in one pass
/// return them packed, since a custom op yields one tensor.
pub(crate) fn unpack(packed: &Tensor, shapes: &[&[usize]]) -> candle_core::Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(shapes.len());
    let mut offset = 0;
    for &shape in shapes {
        let len: usize = shape.iter().product();
        out.push(packed.narrow(0, offset, len)?.reshape(shape)?);
        offset += len;
    }
    Ok(out)
}

/// Parallel chunks of `n` items: at most [`BATCH_CHUNKS`], as even as possible.
pub(crate) fn chunk_len(n: usize) -> usize {
    n.div_ceil(n.clamp(1, BATCH_CHUNKS)).max(1)
}

thread_local! {
    /// Per-thread scratch memory for kernels, kept between calls (rayon's
    /// threads live as long as the process), so that im2col buffers are neither
    /// allocated nor zero-filled on every call.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch memory. The contents are
/// arbitrary: `f` must write before it reads. Re-entrant calls (rayon may run
/// another task on this thread while `f` waits on a parallel product) get a
/// fresh buffer, since the buffer is taken out of its slot while in use.
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(buf.get_mut(..len).unwrap_or_default());
    SCRATCH.with(|s| {
        let other = s.take();
        s.set(if other.len() > buf.len() { other } else { buf });
    });
    r
}

/// A row-major or transposed view of a matrix in a slice, for [`gemm`].
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Mat<'a> {
    /// A `rows x cols` row-major matrix.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A `rows x cols` matrix whose rows start `row_stride` values apart.
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose (a view).
    pub(crate) fn t(self) -> Self {
        Mat {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    fn fits(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// How a single product may use threads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Threads {
    /// One thread (the caller already runs products in parallel).
    One,
    /// All of rayon's threads.
    All,
}

impl Threads {
    /// `One` when `tasks` parallel tasks already keep every thread busy.
    pub(crate) fn for_tasks(tasks: usize) -> Self {
        if tasks >= 2 * rayon::current_num_threads() {
            Threads::One
        } else {
            Threads::All
        }
    }
}

/// `dst (m x n, row-major) = a · b`, or `dst += a · b` when `accumulate`, through
/// the `gemm` crate.
pub(crate) fn gemm(
    dst: &mut [f32],
    a: Mat,
    b: Mat,
    accumulate: bool,
    threads: Threads,
) -> candle_core::Result<()> {
    if dst.len() != a.rows * b.cols {
        candle_core::bail!(
            "gemm: {} values for a {}x{} product",
            dst.len(),
            a.rows,
            b.cols
        );
    }
    gemm_strided(dst, b.cols, a, b, accumulate, threads)
}

/// [`gemm`] into an `m x n` destination whose rows start `dst_row_stride`
/// values apart in `dst`.
pub(crate) fn gemm_strided(
    dst: &mut [f32],
    dst_row_stride: usize,
    a: Mat,
    b: Mat,
    accumulate: bool,
    threads: Threads,
) -> candle_core::Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let fits_dst =
        m == 0 || n == 0 || ((m - 1) * dst_row_stride + n <= dst.len() && n <= dst_row_stride);
    if b.rows != k || !fits_dst || !a.fits() || !b.fits() {
        candle_core::bail!(
            "gemm: shapes {m}x{k} · {}x{n} into {} values",
            b.rows,
            dst.len()
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row.iter_mut().take(n).for_each(|v| *v = 0.0);
            }
        }
        return Ok(());
    }
    let parallelism = match threads {
        Threads::One => gemm::Parallelism::None,
        Threads::All => match rayon::current_num_threads() {
            0 | 1 => gemm::Parallelism::None,
            t => gemm::Parallelism::Rayon(t),
        },
    };
    // SAFETY: every index the product touches is in bounds: `fits` checked the
    // largest offset of `a` and `b`, `fits_dst` that of `dst` (rows of n values
    // at most `dst_row_stride` apart, so they do not overlap), and the strides
    // are the ones `Mat` describes. `dst` does not alias the inputs (it is a
    // unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
