//! Winograd F(2x2, 3x3) convolution for 3x3 kernels at stride 1 (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Every 2x2 block of outputs (a *tile*) is read from a 4x4 patch `d` of the
//! padded input. With the kernel `g` transformed once to `U = G g Gᵀ` (4x4) and
//! each patch to `V = Bᵀ d B` (4x4), the tile is `Y = Aᵀ (Σ_ci U ⊙ V) A`. The
//! sum over input channels is, for each of the 16 positions ξ of the 4x4
//! transforms, one matrix product `M_ξ = U_ξ · V_ξ` with `U_ξ`: `(c_out, c_in)`
//! and `V_ξ`: `(c_in, tiles)`. That is 16 multiplications per tile and channel
//! pair where the direct (im2col) product needs 36: 2.25x fewer FLOPs, and the
//! transformed input is 4x the input where the im2col matrix is 9x.
//!
//! The input gradient of such a convolution is again one (of the output
//! gradient, with the kernel flipped and its channels swapped, and padding
//! `2 − padding`), so the backward pass uses the same routine. The kernel
//! gradient goes through the same transforms backwards: `dM = A dY Aᵀ` per
//! output-gradient tile, `dU_ξ = V_ξᵀ dM_ξ`, `dW = Gᵀ dU G`.
//!
//! The transforms use only additions and halvings, so the results agree with the
//! direct product to a few ulps of the summed magnitudes. They run on 16
//! channels at a time (one AVX-512 register): each sample is first copied into a
//! zero-padded channels-last buffer, the transformed tiles are stored
//! `(tile, ξ, channel)`, and the products read and write those with strides.

use rayon::prelude::*;

use super::simd::simd_dispatch;
use super::{Mat, Threads, gemm_strided, with_scratch};

/// Positions of the 4x4 transform domain: one matrix product each.
const XI: usize = 16;

/// Channels a transform handles at once (one AVX-512 register of f32).
const LANES: usize = 16;

/// Floats of scratch (transformed input and products) a chunk of samples aims
/// to stay within: 2 MiB, the L2 cache of one core on the machines measured.
const BUDGET: usize = 1 << 19;

/// Most floats of scratch one sample may need (128 MiB).
const MAX_SAMPLE_SCRATCH: usize = 1 << 25;

/// Sizes of one 3x3, stride-1 convolution computed by Winograd's method.
#[derive(Debug, Clone, Copy)]
pub(super) struct Winograd {
    /// Samples.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Zero padding on every side (0, 1 or 2).
    pub pad: usize,
}

impl Winograd {
    /// Whether a `kh x kw` convolution with this stride, dilation and padding
    /// from `c_in` to `c_out` channels runs here: 3x3, stride 1, no dilation,
    /// padding at most 2 (so that the input gradient is a convolution of the
    /// same kind), and channel counts that are multiples of 16 (the transforms'
    /// vector width; small counts are not worth the transforms anyway).
    /// `FLOWLAB_NO_WINOGRAD` in the environment turns it off (for benchmarks).
    pub fn applies(
        kh: usize,
        kw: usize,
        stride: usize,
        dilation: usize,
        pad: usize,
        c_in: usize,
        c_out: usize,
    ) -> bool {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let off = *OFF.get_or_init(|| std::env::var_os("FLOWLAB_NO_WINOGRAD").is_some());
        !off && kh == 3
            && kw == 3
            && stride == 1
            && dilation == 1
            && pad <= 2
            && c_in > 0
            && c_out > 0
            && c_in.is_multiple_of(LANES)
            && c_out.is_multiple_of(LANES)
    }

    /// Whether one sample's transformed input and products (`16·(c_in + c_out)`
    /// floats per tile, the scratch of the smallest chunk) stay under 128 MiB;
    /// larger images take the im2col path, whose chunks can be smaller.
    pub fn scratch_fits(&self) -> bool {
        let (th, tw) = self.tiles();
        XI.saturating_mul(self.c_in + self.c_out)
            .saturating_mul(th.saturating_mul(tw))
            <= MAX_SAMPLE_SCRATCH
    }

    /// Output height `h + 2·pad − 2`.
    fn ho(&self) -> usize {
        (self.h + 2 * self.pad).saturating_sub(2)
    }

    /// Output width `w + 2·pad − 2`.
    fn wo(&self) -> usize {
        (self.w + 2 * self.pad).saturating_sub(2)
    }

    /// Tile rows and columns (2x2 outputs each; the last may stick out).
    fn tiles(&self) -> (usize, usize) {
        (self.ho().div_ceil(2), self.wo().div_ceil(2))
    }

    /// Height and width of the padded channels-last copy of a sample: every
    /// tile's 4x4 patch lies inside it.
    fn padded(&self) -> (usize, usize) {
        let (th, tw) = self.tiles();
        (2 * th + 2, 2 * tw + 2)
    }

    /// Samples per parallel chunk: fixed by the shapes alone, so results do not
    /// depend on the number of threads.
    fn samples_per_chunk(&self) -> usize {
        let (th, tw) = self.tiles();
        let per_sample = XI * (self.c_in + self.c_out) * th * tw;
        (BUDGET / per_sample.max(1)).clamp(1, (self.batch / 4).max(1))
    }

    /// The convolution of `x`: `(batch, c_in, h, w)` with the transformed
    /// kernel `u` (from [`transform_kernel`]) into `out`: `(batch, c_out, ho, wo)`,
    /// plus `bias` per output channel if given. Every output value is written.
    pub fn run(
        &self,
        x: &[f32],
        u: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
    ) -> candle_core::Result<()> {
        let (ho, wo) = (self.ho(), self.wo());
        let (in_len, out_len) = (self.c_in * self.h * self.w, self.c_out * ho * wo);
        if x.len() != self.batch * in_len
            || out.len() != self.batch * out_len
            || u.len() != XI * self.c_out * self.c_in
            || bias.is_some_and(|b| b.len() != self.c_out)
            || !self.c_in.is_multiple_of(LANES)
            || !self.c_out.is_multiple_of(LANES)
        {
            candle_core::bail!("winograd: buffer sizes do not match the shapes");
        }
        if self.batch == 0 || in_len == 0 || out_len == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let per = self.samples_per_chunk();
        let threads = Threads::for_tasks(self.batch.div_ceil(per));
        let (th, tw) = self.tiles();
        let (hp, wp) = self.padded();
        let (c_in, c_out) = (self.c_in, self.c_out);
        out.par_chunks_mut(per * out_len)
            .zip(x.par_chunks(per * in_len))
            .try_for_each(|(out, x)| {
                let tiles = (x.len() / in_len) * th * tw;
                let (v_len, m_len) = (XI * c_in * tiles, XI * c_out * tiles);
                let p_len = (hp * wp * c_in).max(ho * wo * c_out);
                with_scratch(v_len + m_len + p_len, |buf| {
                    let (v, rest) = buf.split_at_mut(v_len);
                    let (m, padded) = rest.split_at_mut(m_len);
                    for (s, x) in x.chunks_exact(in_len).enumerate() {
                        let v = v.get_mut(s * th * tw * XI * c_in..).unwrap_or_default();
                        transform_input(self, x, padded, v);
                    }
                    for xi in 0..XI {
                        let a = xi_matrix(v, xi, tiles, c_in);
                        let b = Mat::new(
                            u.get(xi * c_in * c_out..(xi + 1) * c_in * c_out)
                                .unwrap_or_default(),
                            c_in,
                            c_out,
                        );
                        let dst = m.get_mut(xi * c_out..).unwrap_or_default();
                        gemm_strided(dst, XI * c_out, a, b, false, threads)?;
                    }
                    for (s, out) in out.chunks_exact_mut(out_len).enumerate() {
                        let m = m.get(s * th * tw * XI * c_out..).unwrap_or_default();
                        transform_output(self, m, bias, out, padded);
                    }
                    Ok::<(), candle_core::Error>(())
                })
            })
    }

    /// The kernel gradient `(c_out, c_in, 3, 3)` of this convolution for the
    /// input `x`: `(batch, c_in, h, w)` and the output gradient `gy`:
    /// `(batch, c_out, ho, wo)`. Through the same transforms: each output-gradient
    /// tile becomes `dM = A dY Aᵀ`, then `dU_ξ = Σ_tiles V_ξᵀ dM_ξ` (16 products
    /// of `(c_in x tiles) · (tiles x c_out)`), and `dW = Gᵀ dU G`. Chunks of
    /// samples form at most [`super::BATCH_CHUNKS`] groups whose partial sums
    /// are added in a fixed order, so the result does not depend on threads.
    pub fn kernel_grad(&self, x: &[f32], gy: &[f32]) -> candle_core::Result<Vec<f32>> {
        let (ho, wo) = (self.ho(), self.wo());
        let (c_in, c_out) = (self.c_in, self.c_out);
        let (in_len, out_len) = (c_in * self.h * self.w, c_out * ho * wo);
        if x.len() != self.batch * in_len
            || gy.len() != self.batch * out_len
            || !c_in.is_multiple_of(LANES)
            || !c_out.is_multiple_of(LANES)
        {
            candle_core::bail!("winograd: buffer sizes do not match the shapes");
        }
        let du_len = XI * c_in * c_out;
        if self.batch == 0 || in_len == 0 || out_len == 0 {
            return Ok(vec![0.0; c_out * c_in * 9]);
        }
        let per = self.samples_per_chunk();
        let group = super::chunk_len(self.batch.div_ceil(per)) * per;
        let threads = Threads::for_tasks(self.batch.div_ceil(group));
        let (th, tw) = self.tiles();
        let (hp, wp) = self.padded();
        let partials = x
            .par_chunks(group * in_len)
            .zip(gy.par_chunks(group * out_len))
            .map(|(x, gy)| {
                let mut du = vec![0f32; du_len];
                for (x, gy) in x.chunks(per * in_len).zip(gy.chunks(per * out_len)) {
                    let tiles = (x.len() / in_len) * th * tw;
                    let (v_len, m_len) = (XI * c_in * tiles, XI * c_out * tiles);
                    let p_len = (hp * wp * c_in).max(4 * th * tw * c_out);
                    with_scratch(v_len + m_len + p_len, |buf| {
                        let (v, rest) = buf.split_at_mut(v_len);
                        let (m, padded) = rest.split_at_mut(m_len);
                        for (s, (x, gy)) in x
                            .chunks_exact(in_len)
                            .zip(gy.chunks_exact(out_len))
                            .enumerate()
                        {
                            let v = v.get_mut(s * th * tw * XI * c_in..).unwrap_or_default();
                            transform_input(self, x, padded, v);
                            let m = m.get_mut(s * th * tw * XI * c_out..).unwrap_or_default();
                            transform_grad(self, gy, padded, m);
                        }
                        for xi in 0..XI {
                            let a = xi_matrix(v, xi, tiles, c_in).t();
                            let b = xi_matrix(m, xi, tiles, c_out);
                            let dst = du
                                .get_mut(xi * c_in * c_out..(xi + 1) * c_in * c_out)
                                .unwrap_or_default();
                            super::gemm(dst, a, b, true, threads)?;
                        }
                        Ok::<(), candle_core::Error>(())
                    })?;
                }
                Ok(du)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut du = vec![0f32; du_len];
        for part in &partials {
            du.iter_mut().zip(part).for_each(|(a, v)| *a += v);
        }
        Ok(untransform_kernel_grad(&du, c_out, c_in))
    }
}

simd_dispatch! {
    /// `dM = A dY Aᵀ` for every 2x2 tile of one sample's output gradient `gy`
    /// (`c_out x ho x wo`; zero where a tile sticks out), into `m` laid out
    /// `(tile, 16, c_out)`; `padded` is scratch for a channels-last copy.
    fn transform_grad(wg: &Winograd, gy: &[f32], padded: &mut [f32], m: &mut [f32]) => grad_kernel
}

simd_dispatch! {
    /// `V = Bᵀ d B` for every tile of one sample `x` (`c_in x h x w`), into `v`
    /// laid out `(tile, 16, c_in)`; `padded` is scratch for the zero-padded,
    /// channels-last copy of the sample.
    fn transform_input(wg: &Winograd, x: &[f32], padded: &mut [f32], v: &mut [f32]) => input_kernel
}

simd_dispatch! {
    /// `Y = Aᵀ M A` for every tile of one sample, from `m` laid out
    /// `(tile, 16, c_out)`, plus the bias, into `out` (`c_out x ho x wo`); `y`
    /// is scratch for a channels-last copy.
    fn transform_output(
        wg: &Winograd,
        m: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        y: &mut [f32],
    ) => output_kernel
}

/// Position `xi`'s `(tiles x c)` matrix in a `(tile, 16, c)` buffer (a strided view).
fn xi_matrix(buf: &[f32], xi: usize, tiles: usize, c: usize) -> Mat<'_> {
    Mat::strided(buf.get(xi * c..).unwrap_or_default(), tiles, c, XI * c)
}

/// `LANES` values of `buf` from `at`, as an array reference (`None` past the end).
#[inline(always)]
fn lanes_at(buf: &[f32], at: usize) -> Option<&[f32; LANES]> {
    buf.get(at..at + LANES)?.try_into().ok()
}

/// The 16 rows of one tile's block in a `(tile, 16, c)` buffer.
#[inline(always)]
fn tile_rows(tile: &mut [f32], c: usize) -> [&mut [f32]; XI] {
    let mut rows = tile.chunks_exact_mut(c.max(1));
    std::array::from_fn(|_| rows.next().unwrap_or_default())
}

/// Copies `x` (`c x h x w`) into `dst` (`h x w x c`, rows `wp` pixels apart,
/// starting at pixel `(pad, pad)`), in blocks of 16 channels by 16 pixels.
#[inline(always)]
fn to_channels_last(
    x: &[f32],
    c: usize,
    h: usize,
    w: usize,
    wp: usize,
    pad: usize,
    dst: &mut [f32],
) {
    let hw = h * w;
    if x.len() < c * hw || w == 0 {
        return;
    }
    let at = |q: usize| ((q / w + pad) * wp + q % w + pad) * c;
    for cb in (0..c).step_by(LANES) {
        let planes: [&[f32]; LANES] = std::array::from_fn(|l| &x[(cb + l) * hw..][..hw]);
        let blocks = hw / LANES * LANES;
        for p in (0..blocks).step_by(LANES) {
            let Some(block) = rows16(|l| lanes_at(planes[l], p)) else {
                return;
            };
            for (k, pixel) in transpose16(block).iter().enumerate() {
                let start = at(p + k) + cb;
                if let Some(d) = dst.get_mut(start..start + LANES) {
                    d.copy_from_slice(pixel);
                }
            }
        }
        for q in blocks..hw {
            let start = at(q) + cb;
            if let Some(d) = dst.get_mut(start..start + LANES) {
                for (d, plane) in d.iter_mut().zip(&planes) {
                    *d = plane[q];
                }
            }
        }
    }
}

/// 16 rows of 16 values, or `None` if any is missing.
#[inline(always)]
fn rows16<'a>(
    row: impl Fn(usize) -> Option<&'a [f32; LANES]>,
) -> Option<[&'a [f32; LANES]; LANES]> {
    let mut rows = [&[0f32; LANES]; LANES];
    for (i, r) in rows.iter_mut().enumerate() {
        *r = row(i)?;
    }
    Some(rows)
}

/// `out[j][i] = rows[i][j]` for a 16x16 block: AVX-512 shuffles where the CPU
/// has them, element by element otherwise.
#[inline(always)]
fn transpose16(rows: [&[f32; LANES]; LANES]) -> [[f32; LANES]; LANES] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU supports AVX-512F (checked at run time).
        return unsafe { avx512::transpose16(rows) };
    }
    std::array::from_fn(|j| std::array::from_fn(|i| rows[i][j]))
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_castpd_ps, _mm512_castps_pd, _mm512_loadu_ps, _mm512_shuffle_f32x4,
        _mm512_storeu_ps, _mm512_unpackhi_pd, _mm512_unpackhi_ps, _mm512_unpacklo_pd,
        _mm512_unpacklo_ps,
    };

    use super::LANES;

    /// `out[j][i] = rows[i][j]` in 64 shuffles: interleave 32-bit pairs of row
    /// pairs, then 64-bit pairs, then 128-bit lanes twice.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(super) fn transpose16(rows: [&[f32; LANES]; LANES]) -> [[f32; LANES]; LANES] {
        // SAFETY: each row holds 16 floats.
        let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(rows[i].as_ptr()) });
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[2 * (i / 2)], r[2 * (i / 2) + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let base = 4 * (i / 4);
            let (a, b) = match i % 4 {
                0 | 1 => (t[base], t[base + 2]),
                _ => (t[base + 1], t[base + 3]),
            };
            let (a, b) = (_mm512_castps_pd(a), _mm512_castps_pd(b));
            _mm512_castpd_ps(if i % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            })
        });
        let v: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (u[8 * (i / 8) + i % 4], u[8 * (i / 8) + 4 + i % 4]);
            if i % 8 < 4 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            }
        });
        let mut out = [[0f32; LANES]; LANES];
        for (i, o) in out.iter_mut().enumerate() {
            let (a, b) = (v[i % 8], v[8 + i % 8]);
            let x = if i < 8 {
                _mm512_shuffle_f32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_f32x4::<0xdd>(a, b)
            };
            // SAFETY: `o` holds 16 floats.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), x) };
        }
        out
    }
}

/// See [`transform_input`].
#[inline(always)]
fn input_kernel(wg: &Winograd, x: &[f32], padded: &mut [f32], v: &mut [f32]) {
    let (th, tw) = wg.tiles();
    let (hp, wp) = wg.padded();
    let (h, w, pad, c) = (wg.h, wg.w, wg.pad, wg.c_in);
    let Some(padded) = padded.get_mut(..hp * wp * c) else {
        return;
    };
    // Zero-padded channels-last copy (zero rows/columns also past the input
    // where the last tiles stick out): zero the border, copy the inside.
    for (y, row) in padded.chunks_exact_mut(wp * c).enumerate() {
        if y < pad || y >= pad + h {
            row.fill(0.0);
        } else {
            row[..pad * c].fill(0.0);
            row[(pad + w) * c..].fill(0.0);
        }
    }
    to_channels_last(x, c, h, w, wp, pad, padded);
    let padded = &*padded;
    for i in 0..th {
        for j in 0..tw {
            let t = i * tw + j;
            let Some(tile) = v.get_mut(t * XI * c..(t + 1) * XI * c) else {
                return;
            };
            let mut rows = tile_rows(tile, c);
            for cb in (0..c).step_by(LANES) {
                // d[4r + col]: the 4x4 patch, 16 channels each.
                let mut d = [&[0f32; LANES]; XI];
                for (rc, slot) in d.iter_mut().enumerate() {
                    let at = ((2 * i + rc / 4) * wp + 2 * j + rc % 4) * c + cb;
                    let Some(v) = lanes_at(padded, at) else {
                        return;
                    };
                    *slot = v;
                }
                let res = winograd_input_tile(&d);
                for (row, val) in rows.iter_mut().zip(&res) {
                    if let Some(dst) = row.get_mut(cb..cb + LANES) {
                        dst.copy_from_slice(val);
                    }
                }
            }
        }
    }
}

/// `Bᵀ d B` for one 4x4 patch of 16 channels: `d[4r + col]` in, `[4k + l]` out.
#[inline(always)]
fn winograd_input_tile(d: &[&[f32; LANES]; XI]) -> [[f32; LANES]; XI] {
    let mut o = [[0f32; LANES]; XI];
    for l in 0..LANES {
        let g = |rc: usize| d[rc][l];
        // Bᵀ d: rows d0 − d2, d1 + d2, d2 − d1, d1 − d3, per column.
        let t = [
            [g(0) - g(8), g(1) - g(9), g(2) - g(10), g(3) - g(11)],
            [g(4) + g(8), g(5) + g(9), g(6) + g(10), g(7) + g(11)],
            [g(8) - g(4), g(9) - g(5), g(10) - g(6), g(11) - g(7)],
            [g(4) - g(12), g(5) - g(13), g(6) - g(14), g(7) - g(15)],
        ];
        // (Bᵀ d) B: the same over the columns.
        for (k, [t0, t1, t2, t3]) in t.into_iter().enumerate() {
            o[4 * k][l] = t0 - t2;
            o[4 * k + 1][l] = t1 + t2;
            o[4 * k + 2][l] = t2 - t1;
            o[4 * k + 3][l] = t1 - t3;
        }
    }
    o
}

/// See [`transform_grad`].
#[inline(always)]
fn grad_kernel(wg: &Winograd, gy: &[f32], padded: &mut [f32], m: &mut [f32]) {
    let (th, tw) = wg.tiles();
    let (ho, wo, c) = (wg.ho(), wg.wo(), wg.c_out);
    let (hp, wp) = (2 * th, 2 * tw);
    let Some(padded) = padded.get_mut(..hp * wp * c) else {
        return;
    };
    // Channels-last copy, with a zero row/column where the last tiles stick out.
    for (y, row) in padded.chunks_exact_mut(wp * c).enumerate() {
        if y >= ho {
            row.fill(0.0);
        } else {
            row[wo * c..].fill(0.0);
        }
    }
    to_channels_last(gy, c, ho, wo, wp, 0, padded);
    let padded = &*padded;
    for i in 0..th {
        for j in 0..tw {
            let t = i * tw + j;
            let Some(tile) = m.get_mut(t * XI * c..(t + 1) * XI * c) else {
                return;
            };
            let mut rows = tile_rows(tile, c);
            for cb in (0..c).step_by(LANES) {
                let at = |a: usize, b: usize| ((2 * i + a) * wp + 2 * j + b) * c + cb;
                let (Some(y00), Some(y01), Some(y10), Some(y11)) = (
                    lanes_at(padded, at(0, 0)),
                    lanes_at(padded, at(0, 1)),
                    lanes_at(padded, at(1, 0)),
                    lanes_at(padded, at(1, 1)),
                ) else {
                    return;
                };
                let mut res = [[0f32; LANES]; XI];
                for l in 0..LANES {
                    // A dY: rows y0, y0 + y1, y0 − y1, −y1 (per column b).
                    let z = [
                        [y00[l], y01[l]],
                        [y00[l] + y10[l], y01[l] + y11[l]],
                        [y00[l] - y10[l], y01[l] - y11[l]],
                        [-y10[l], -y11[l]],
                    ];
                    // (A dY) Aᵀ: the same over the columns.
                    for (r, [z0, z1]) in z.into_iter().enumerate() {
                        res[4 * r][l] = z0;
                        res[4 * r + 1][l] = z0 + z1;
                        res[4 * r + 2][l] = z0 - z1;
                        res[4 * r + 3][l] = -z1;
                    }
                }
                for (row, val) in rows.iter_mut().zip(&res) {
                    if let Some(dst) = row.get_mut(cb..cb + LANES) {
                        dst.copy_from_slice(val);
                    }
                }
            }
        }
    }
}

/// The kernel gradient `(c_out, c_in, 3, 3)` from the gradient `du` of the
/// transformed kernel (`(16, c_in, c_out)`, as [`transform_kernel`] lays it
/// out): `dW = Gᵀ dU G` for every channel pair.
fn untransform_kernel_grad(du: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let plane = c_in * c_out;
    let mut dw = vec![0f32; c_out * c_in * 9];
    // Gᵀ applied to a column of 4 (or G's transpose on a row): 3 values.
    let gt = |v: [f32; 4]| {
        [
            v[0] + 0.5 * (v[1] + v[2]),
            0.5 * (v[1] - v[2]),
            0.5 * (v[1] + v[2]) + v[3],
        ]
    };
    for (idx, out) in dw.chunks_exact_mut(9).enumerate() {
        let (co, ci) = (idx / c_in, idx % c_in);
        let at = ci * c_out + co;
        let d = |xi: usize| du.get(xi * plane + at).copied().unwrap_or(0.0);
        // dU G: each row r of dU to 3 values, then Gᵀ over the rows.
        let h: [[f32; 3]; 4] =
            std::array::from_fn(|r| gt([d(4 * r), d(4 * r + 1), d(4 * r + 2), d(4 * r + 3)]));
        for b in 0..3 {
            let col = gt([h[0][b], h[1][b], h[2][b], h[3][b]]);
            for (a, v) in col.into_iter().enumerate() {
                out[3 * a + b] = v;
            }
        }
    }
    dw
}

/// See [`transform_output`]. The tiles are written channels-last into `y`
/// (scratch of `ho·wo·c_out` floats) and then copied into the planes of `out`.
#[inline(always)]
fn output_kernel(wg: &Winograd, m: &[f32], bias: Option<&[f32]>, out: &mut [f32], y: &mut [f32]) {
    let (th, tw) = wg.tiles();
    let (ho, wo, c) = (wg.ho(), wg.wo(), wg.c_out);
    let plane = ho * wo;
    if out.len() < c * plane || y.len() < c * plane {
        return;
    }
    let zero = [0f32; LANES];
    for i in 0..th {
        for j in 0..tw {
            let t = i * tw + j;
            let Some(tile) = m.get(t * XI * c..(t + 1) * XI * c) else {
                return;
            };
            for cb in (0..c).step_by(LANES) {
                let mut q = [&zero; XI];
                for (xi, slot) in q.iter_mut().enumerate() {
                    let Some(v) = lanes_at(tile, xi * c + cb) else {
                        return;
                    };
                    *slot = v;
                }
                let b = bias.and_then(|b| lanes_at(b, cb)).unwrap_or(&zero);
                let mut res = [[0f32; LANES]; 4];
                let [r00, r01, r10, r11] = &mut res;
                for l in 0..LANES {
                    let g = |xi: usize| q[xi][l];
                    // Aᵀ M: rows 0 + 1 + 2 and 1 − 2 − 3, per column; then the
                    // same over the columns.
                    let s = |col: usize| g(col) + g(4 + col) + g(8 + col);
                    let d = |col: usize| g(4 + col) - g(8 + col) - g(12 + col);
                    r00[l] = s(0) + s(1) + s(2) + b[l];
                    r01[l] = s(1) - s(2) - s(3) + b[l];
                    r10[l] = d(0) + d(1) + d(2) + b[l];
                    r11[l] = d(1) - d(2) - d(3) + b[l];
                }
                for (k, val) in res.iter().enumerate() {
                    let (oy, ox) = (2 * i + k / 2, 2 * j + k % 2);
                    if oy < ho && ox < wo {
                        let at = (oy * wo + ox) * c + cb;
                        if let Some(dst) = y.get_mut(at..at + LANES) {
                            dst.copy_from_slice(val);
                        }
                    }
                }
            }
        }
    }
    // Channels-last -> planes, in blocks of 16 pixels by 16 channels.
    let blocks = plane / LANES * LANES;
    for (cb, block) in out.chunks_exact_mut(LANES * plane).enumerate() {
        let cb = cb * LANES;
        let mut planes = tile_rows(block, plane);
        for p in (0..blocks).step_by(LANES) {
            let Some(rows) = rows16(|k| lanes_at(y, (p + k) * c + cb)) else {
                return;
            };
            for (dst, vals) in planes.iter_mut().zip(transpose16(rows).iter()) {
                if let Some(d) = dst.get_mut(p..p + LANES) {
                    d.copy_from_slice(vals);
                }
            }
        }
        for (l, dst) in planes.iter_mut().enumerate() {
            for p in blocks..plane {
                if let (Some(d), Some(v)) = (dst.get_mut(p), y.get(p * c + cb + l)) {
                    *d = *v;
                }
            }
        }
    }
}

/// The kernel `(c_out, c_in, 3, 3)` transformed to `U_ξ = (G g Gᵀ)_ξ`, laid out
/// `(16, c_in, c_out)`: for each ξ the right factor of `V_ξ · U_ξ`. With
/// `for_input_grad`, the kernel of the input gradient instead: flipped in both
/// axes with the channels swapped, `(16, c_out, c_in)`.
pub(super) fn transform_kernel(
    k: &[f32],
    c_out: usize,
    c_in: usize,
    for_input_grad: bool,
) -> Vec<f32> {
    let mut u = vec![0f32; XI * c_out * c_in];
    let plane = c_out * c_in;
    // Walk the destination in order (16 sequential write streams): for the
    // forward kernel input channel by input channel, for the input gradient's
    // output channel by output channel.
    let (outer, inner) = if for_input_grad {
        (c_out, c_in)
    } else {
        (c_in, c_out)
    };
    for a in 0..outer {
        for b in 0..inner {
            let (co, ci) = if for_input_grad { (a, b) } else { (b, a) };
            let Some(g) = k.get((co * c_in + ci) * 9..(co * c_in + ci + 1) * 9) else {
                return u;
            };
            let g: [f32; 9] = if for_input_grad {
                std::array::from_fn(|i| g[8 - i])
            } else {
                std::array::from_fn(|i| g[i])
            };
            // G g: 4x3, then (G g) Gᵀ: 4x4.
            let gg = |col: usize| -> [f32; 4] {
                let (a, b, c) = (g[col], g[3 + col], g[6 + col]);
                [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
            };
            let cols = [gg(0), gg(1), gg(2)];
            let at = a * inner + b;
            for (r, ((&a, &b), &c)) in cols[0].iter().zip(&cols[1]).zip(&cols[2]).enumerate() {
                let row = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                for (l, val) in row.into_iter().enumerate() {
                    if let Some(slot) = u.get_mut((4 * r + l) * plane + at) {
                        *slot = val;
                    }
                }
            }
        }
    }
    u
}
