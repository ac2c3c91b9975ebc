//! A fused linear layer `y = x Wᵀ + b`: the forward is one gemm product into
//! an output pre-filled with the bias; the backward computes `dx = g W`,
//! `dW = gᵀ x` (directly in W's layout) and `db = Σ_rows g` in one op. candle
//! builds the same layer from a transpose, a matmul and a broadcast add, whose
//! backward passes allocate, zero-fill and add a gradient for each node.
//!
//! [`silu_linear`] also folds the SiLU of the previous layer into the op
//! (`y = silu(x) Wᵀ + b`): the activation is recomputed into scratch memory in
//! the backward pass instead of being a graph node of its own.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::elementwise::{add_bias, column_sums, mul_silu_grad, silu_into};
use super::{Mat, Threads, contiguous_f32, fast_path, gemm, unpack, with_scratch};

/// Sizes `(rows, in, out)` of a linear layer from its input and weight layouts.
fn dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (rows, n_in) = x.shape().dims2()?;
    let (n_out, w_in) = w.shape().dims2()?;
    if w_in != n_in {
        candle_core::bail!("linear: input has {n_in} features, the weight expects {w_in}");
    }
    Ok((rows, n_in, n_out))
}

/// Forward: `(x, W, b)` -> `act(x) Wᵀ + b`, with act = SiLU if `silu_input`,
/// else the identity.
struct LinearOp {
    silu_input: bool,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "flowlab-linear"
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
        let (rows, n_in, n_out) = dims(l1, l2)?;
        let x = contiguous_f32(s1, l1, "linear")?;
        let w = contiguous_f32(s2, l2, "linear")?;
        let b = contiguous_f32(s3, l3, "linear")?;
        if b.len() != n_out {
            candle_core::bail!("linear: {} bias values for {n_out} outputs", b.len());
        }
        let mut y = Vec::with_capacity(rows * n_out);
        for _ in 0..rows {
            y.extend_from_slice(b);
        }
        let wt = Mat::new(w, n_out, n_in).t();
        if self.silu_input {
            with_scratch(x.len(), |a| {
                silu_into(a, x);
                gemm(&mut y, Mat::new(a, rows, n_in), wt, true, Threads::All)
            })?;
        } else {
            gemm(&mut y, Mat::new(x, rows, n_in), wt, true, Threads::All)?;
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, n_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // No input gradient for inputs that no parameter depends on (the
        // first layer's input): it would be thrown away.
        let need_dx = x.track_op();
        let packed = x.apply_op3_no_bwd(
            w,
            &grad.contiguous()?,
            &LinearBackward {
                need_dx,
                silu_input: self.silu_input,
            },
        )?;
        let dx_dims: &[usize] = if need_dx { x.dims() } else { &[0] };
        let mut parts = unpack(&packed, &[dx_dims, w.dims(), b.dims()])?.into_iter();
        let dx = parts.next().filter(|_| need_dx);
        Ok((dx, parts.next(), parts.next()))
    }
}

/// Backward: `(x, W, g)` -> packed `[dx, dW, db]` (`dx` empty unless `need_dx`).
struct LinearBackward {
    need_dx: bool,
    silu_input: bool,
}

impl CustomOp3 for LinearBackward {
    fn name(&self) -> &'static str {
        "flowlab-linear-backward"
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
        let (rows, n_in, n_out) = dims(l1, l2)?;
        let x = contiguous_f32(s1, l1, "linear-backward")?;
        let w = contiguous_f32(s2, l2, "linear-backward")?;
        let g = contiguous_f32(s3, l3, "linear-backward")?;
        if g.len() != rows * n_out {
            candle_core::bail!("linear-backward: gradient has {} values", g.len());
        }
        let dx_len = if self.need_dx { rows * n_in } else { 0 };
        let mut packed = vec![0f32; dx_len + n_out * n_in + n_out];
        let (dx, rest) = packed.split_at_mut(dx_len);
        let (dw, db) = rest.split_at_mut(n_out * n_in);
        let gm = Mat::new(g, rows, n_out);
        if self.need_dx {
            gemm(dx, gm, Mat::new(w, n_out, n_in), false, Threads::All)?;
            if self.silu_input {
                mul_silu_grad(dx, x);
            }
        }
        if self.silu_input {
            with_scratch(x.len(), |a| {
                silu_into(a, x);
                gemm(dw, gm.t(), Mat::new(a, rows, n_in), false, Threads::All)
            })?;
        } else {
            gemm(dw, gm.t(), Mat::new(x, rows, n_in), false, Threads::All)?;
        }
        db.copy_from_slice(&column_sums(g, n_out));
        let n = packed.len();
        Ok((CpuStorage::F32(packed), Shape::from(n)))
    }
}

/// A linear layer `x Wᵀ + b` for `x`: `(batch, in)`, `W`: `(out, in)`, `b`: `(out,)`;
/// returns `(batch, out)`. One fused op with a fused backward on f32 CPU
/// tensors; candle's matmul and a bias add elsewhere.
pub fn linear(x: &Tensor, layer: &candle_nn::Linear) -> candle_core::Result<Tensor> {
    let (w, b) = (layer.weight(), layer.bias());
    match b {
        Some(b) if fast_path(&[x, w, b]) && x.rank() == 2 => x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            LinearOp { silu_input: false },
        ),
        Some(b) => add_bias(&x.matmul(&w.t()?)?, b),
        None => x.matmul(&w.t()?),
    }
}

/// `silu(x) Wᵀ + b`: SiLU then a linear layer, as one op on f32 CPU tensors
/// (shapes as in [`linear`]); [`super::silu`] then [`linear`] elsewhere.
pub fn silu_linear(x: &Tensor, layer: &candle_nn::Linear) -> candle_core::Result<Tensor> {
    let (w, b) = (layer.weight(), layer.bias());
    match b {
        Some(b) if fast_path(&[x, w, b]) && x.rank() == 2 => x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            LinearOp { silu_input: true },
        ),
        _ => linear(&super::silu(x)?, layer),
    }
}
