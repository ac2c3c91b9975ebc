//! Nearest-neighbour upsampling by an integer factor (NCHW), with a backward
//! that sums each factor x factor block (candle's backward for
//! `upsample_nearest2d` runs a grouped convolution, one group per channel).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, fast_path};

/// Repeats every pixel `factor` times along both axes.
struct Upsample {
    factor: usize,
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "flowlab-upsample-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let x = contiguous_f32(s, l, "upsample")?;
        let f = self.factor;
        let (wo, plane_out) = (w * f, h * f * w * f);
        let mut y = vec![0f32; b * c * plane_out];
        if plane_out > 0 {
            y.par_chunks_mut(plane_out)
                .zip(x.par_chunks(h * w))
                .for_each(|(y, x)| {
                    for (rows, src) in y.chunks_exact_mut(wo * f).zip(x.chunks_exact(w)) {
                        let mut rows = rows.chunks_exact_mut(wo);
                        if let Some(first) = rows.next() {
                            for (d, &v) in first.chunks_exact_mut(f).zip(src) {
                                d.fill(v);
                            }
                            for r in rows {
                                r.copy_from_slice(first);
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(y), Shape::from((b, c, h * f, w * f))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&BlockSum {
            factor: self.factor,
        })?))
    }
}

/// Sums every `factor x factor` block: the adjoint of [`Upsample`].
struct BlockSum {
    factor: usize,
}

impl CustomOp1 for BlockSum {
    fn name(&self) -> &'static str {
        "flowlab-block-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, hf, wf) = l.shape().dims4()?;
        let f = self.factor;
        if f == 0 || hf % f != 0 || wf % f != 0 {
            candle_core::bail!("block-sum: {hf}x{wf} is not a multiple of {f}");
        }
        let g = contiguous_f32(s, l, "block-sum")?;
        let (h, w) = (hf / f, wf / f);
        let mut x = vec![0f32; b * c * h * w];
        if h * w > 0 {
            x.par_chunks_mut(h * w)
                .zip(g.par_chunks(hf * wf))
                .for_each(|(x, g)| {
                    for (dst, rows) in x.chunks_exact_mut(w).zip(g.chunks_exact(wf * f)) {
                        for row in rows.chunks_exact(wf) {
                            for (d, block) in dst.iter_mut().zip(row.chunks_exact(f)) {
                                *d += block.iter().sum::<f32>();
                            }
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(x), Shape::from((b, c, h, w))))
    }
}

/// Nearest-neighbour upsampling of `x`: `(batch, c, h, w)` to
/// `(batch, c, h·factor, w·factor)`. FlowLab's kernel on the CPU with f32,
/// candle's `upsample_nearest2d` elsewhere.
pub fn upsample_nearest(x: &Tensor, factor: usize) -> candle_core::Result<Tensor> {
    if factor == 0 {
        candle_core::bail!("upsample: the factor must be positive");
    }
    if fast_path(&[x]) {
        return x.contiguous()?.apply_op1(Upsample { factor });
    }
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(h * factor, w * factor)
}
