//! Classifier-free guidance (Ho & Salimans 2022) for class-conditional models:
//! `v = v_uncond + w (v_cond − v_uncond)`, where the unconditional velocity is
//! the model's velocity for the null class. w = 0 is unconditional, w = 1 plain
//! conditional, w > 1 sharpens samples towards their class.

use candle_core::Tensor;

use super::{FlowModel, VelocityField};
use crate::{Error, Result};

/// A class-conditional model with fixed labels and a guidance scale, usable as
/// a velocity field by the solvers.
pub struct Guided<'a> {
    model: &'a dyn FlowModel,
    labels: Tensor,
    null: Tensor,
    scale: f64,
}

impl<'a> Guided<'a> {
    /// Guides `model` towards `labels`: `(batch,)` u32, each in `0..classes`,
    /// with scale `scale` (w). Errors if the model is not class-conditional or a
    /// label is out of range.
    pub fn new(model: &'a dyn FlowModel, labels: &Tensor, scale: f64) -> Result<Self> {
        let classes = model.classes();
        if classes == 0 {
            return Err(Error::config("guidance needs a class-conditional model"));
        }
        let labels = labels.to_dtype(candle_core::DType::U32)?;
        let n = labels.dims1()?;
        if n > 0 && labels.max_all()?.to_scalar::<u32>()? as usize >= classes {
            return Err(Error::config(format!(
                "class labels must be in 0..{classes}"
            )));
        }
        if !scale.is_finite() {
            return Err(Error::config("the guidance scale must be finite"));
        }
        let null = Tensor::full(classes as u32, n, labels.device())?;
        Ok(Guided {
            model,
            labels,
            null,
            scale,
        })
    }
}

impl VelocityField for Guided<'_> {
    /// `x`: `(batch, ...)` with batch = the number of labels, `t`: `(batch,)`.
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        if self.scale == 1.0 {
            return self.model.velocity_with_labels(x, t, &self.labels);
        }
        if self.scale == 0.0 {
            return self.model.velocity_with_labels(x, t, &self.null);
        }
        // Both velocities in one batched evaluation.
        let n = x.dim(0)?;
        let v = self.model.velocity_with_labels(
            &Tensor::cat(&[x, x], 0)?,
            &Tensor::cat(&[t, t], 0)?,
            &Tensor::cat(&[&self.labels, &self.null], 0)?,
        )?;
        let (cond, uncond) = (v.narrow(0, 0, n)?, v.narrow(0, n, n)?);
        Ok((&uncond + ((cond - &uncond)? * self.scale)?)?)
    }
}
