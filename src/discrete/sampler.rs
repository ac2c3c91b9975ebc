//! The discrete Euler sampler of a token flow, with an optional corrector.
//!
//! On the step from t to t + h every coordinate jumps to a draw from the
//! predicted posterior p(x_1 | x_t) with probability (κ_{t+h} − κ_t) / (1 − κ_t)
//! (the exact chance that the mixture path's jump falls in the step; 1 on the
//! last step, so the result holds no source tokens), and otherwise stays. With
//! corrector strength c > 0 the forward jumps are (1 + c) times as likely and
//! coordinates also jump back to the source with probability c h κ̇_t / κ_t:
//! the velocity (1 + c) û − c ǔ, whose backward part ǔ_t = κ̇_t / κ_t [δ(x_t) − p_0]
//! uses the source distribution p_0 (exact for the mask source), which lets
//! the sampler revise early mistakes.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{D, Device, Tensor};
use rand::RngExt as _;
use rand::rngs::StdRng;

use super::DiscreteConfig;
use crate::model::FlowModel;
use crate::rng::{Stream, stream_rng};
use crate::{Error, Result};

/// How to sample a token flow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscreteSampling {
    /// Euler steps from t = 0 to 1.
    pub steps: usize,
    /// Corrector strength c (0: none).
    pub corrector: f64,
    /// Guidance scale w on the logits for class-conditional models
    /// (l_uncond + w (l_cond − l_uncond); 1: conditional only).
    pub guidance: f64,
}

impl Default for DiscreteSampling {
    fn default() -> Self {
        DiscreteSampling {
            steps: 50,
            corrector: 0.0,
            guidance: 1.0,
        }
    }
}

impl DiscreteSampling {
    /// Checks the settings are in range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=100_000).contains(&self.steps) {
            return Err(Error::config(format!(
                "sampling steps must be 1..=100000, got {}",
                self.steps
            )));
        }
        if !(self.corrector.is_finite() && (0.0..=100.0).contains(&self.corrector)) {
            return Err(Error::config(format!(
                "corrector strength must be in [0, 100], got {}",
                self.corrector
            )));
        }
        if !self.guidance.is_finite() {
            return Err(Error::config("guidance must be finite"));
        }
        Ok(())
    }
}

/// Token samples.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSamples {
    /// The tokens at t = 1, `(n, d)` flattened.
    pub tokens: Vec<u32>,
    /// Number of network evaluations per sample.
    pub nfe: usize,
    /// Times of the kept states (t = 0 first; empty unless asked for).
    pub times: Vec<f64>,
    /// Tokens at `times`, each `(n, d)` flattened.
    pub states: Vec<Vec<u32>>,
}

/// Samples per network call.
const CHUNK_TOKENS: usize = 1 << 16;

/// Draws `n` samples of `d` tokens each: source tokens from draw 0 of `seed`'s
/// noise stream, then `sampling.steps` discrete Euler steps. `labels` (one
/// per sample) condition a class-conditional model; `stop` interrupts between
/// steps with [`Error::Interrupted`].
#[allow(clippy::too_many_arguments)]
pub fn sample_tokens(
    model: &dyn FlowModel,
    dc: &DiscreteConfig,
    d: usize,
    n: usize,
    seed: u64,
    sampling: &DiscreteSampling,
    labels: Option<&[u32]>,
    keep_intermediates: bool,
    stop: Option<&AtomicBool>,
    device: &Device,
) -> Result<TokenSamples> {
    sampling.validate()?;
    if model.token_levels() != dc.levels {
        return Err(Error::config(format!(
            "the model predicts {} levels but the flow has {}",
            model.token_levels(),
            dc.levels
        )));
    }
    let mut rng = stream_rng(seed, Stream::Noise, 0);
    let mut x = dc.source_tokens(n * d, &mut rng);
    let mut out = TokenSamples {
        tokens: Vec::new(),
        nfe: 0,
        times: Vec::new(),
        states: Vec::new(),
    };
    if keep_intermediates {
        out.times.push(0.0);
        out.states.push(x.clone());
    }
    let chunk = (CHUNK_TOKENS / d.max(1)).max(1);
    let steps = sampling.steps;
    for k in 0..steps {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        let t = k as f64 / steps as f64;
        let t1 = (k + 1) as f64 / steps as f64;
        let h = t1 - t;
        let (kt, kt1) = (dc.kappa(t), dc.kappa(t1));
        let last = k + 1 == steps;
        let mut p_fwd = if kt >= 1.0 || last {
            1.0
        } else {
            ((kt1 - kt) / (1.0 - kt)).clamp(0.0, 1.0)
        };
        let mut p_back = 0.0;
        if sampling.corrector > 0.0 && !last {
            p_fwd = ((1.0 + sampling.corrector) * p_fwd).min(1.0);
            if kt > 0.0 {
                p_back = (sampling.corrector * h * dc.d_kappa(t) / kt).min(1.0 - p_fwd);
            }
        }
        let mut evals = 0;
        for (i, part) in x.chunks_mut(chunk * d).enumerate() {
            let len = part.len() / d.max(1);
            let p1 = posterior(
                model,
                part,
                len,
                d,
                t,
                labels.and_then(|l| l.get(i * chunk..i * chunk + len)),
                sampling.guidance,
                device,
                &mut evals,
            )?;
            for (j, tok) in part.iter_mut().enumerate() {
                let u = rng.random::<f64>();
                if u < p_fwd {
                    if let Some(row) = p1.get(j * dc.levels..(j + 1) * dc.levels) {
                        *tok = categorical(row, &mut rng);
                    }
                } else if u < p_fwd + p_back {
                    *tok = dc
                        .source_tokens(1, &mut rng)
                        .first()
                        .copied()
                        .unwrap_or(dc.mask());
                }
            }
        }
        out.nfe += evals.min(2);
        if keep_intermediates {
            out.times.push(t1);
            out.states.push(x.clone());
        }
    }
    out.tokens = x;
    Ok(out)
}

/// p(x_1 | x_t) for `len` samples of `d` tokens, flattened `(len, d, levels)`.
#[allow(clippy::too_many_arguments)]
fn posterior(
    model: &dyn FlowModel,
    tokens: &[u32],
    len: usize,
    d: usize,
    t: f64,
    labels: Option<&[u32]>,
    guidance: f64,
    device: &Device,
    evals: &mut usize,
) -> Result<Vec<f32>> {
    let x = Tensor::from_vec(tokens.to_vec(), (len, d), device)?;
    let tt = Tensor::full(t as f32, len, device)?;
    let logits = match labels {
        Some(l) if model.classes() > 0 => {
            let lt = Tensor::from_vec(l.to_vec(), len, device)?;
            let cond = model.token_logits(&x, &tt, Some(&lt))?;
            *evals = 1;
            if guidance == 1.0 {
                cond
            } else {
                *evals = 2;
                let null = Tensor::full(model.classes() as u32, len, device)?;
                let uncond = model.token_logits(&x, &tt, Some(&null))?;
                (&uncond + ((cond - &uncond)? * guidance)?)?
            }
        }
        _ => {
            *evals = 1;
            model.token_logits(&x, &tt, None)?
        }
    };
    let p = candle_nn::ops::softmax(&logits.detach(), D::Minus1)?;
    Ok(p.flatten_all()?.to_vec1::<f32>()?)
}

/// A draw from the distribution `p` (non-negative, summing to about 1).
fn categorical(p: &[f32], rng: &mut StdRng) -> u32 {
    let total: f32 = p.iter().sum();
    let mut r = rng.random::<f32>() * total;
    for (i, &v) in p.iter().enumerate() {
        r -= v;
        if r <= 0.0 {
            return i as u32;
        }
    }
    p.len().saturating_sub(1) as u32
}

/// Like [`sample_tokens`], with the tokens turned into model-space values
/// (bin centres for 2D data, grey levels in [−1, 1] for images; NaN for masked
/// coordinates of intermediate states), as [`crate::sample::Samples`].
#[allow(clippy::too_many_arguments)]
pub fn sample_values(
    model: &dyn FlowModel,
    dc: &DiscreteConfig,
    sample_shape: &[usize],
    n: usize,
    seed: u64,
    sampling: &DiscreteSampling,
    labels: Option<&[u32]>,
    keep_intermediates: bool,
    device: &Device,
) -> Result<crate::sample::Samples> {
    let d: usize = sample_shape.iter().product();
    let s = sample_tokens(
        model,
        dc,
        d,
        n,
        seed,
        sampling,
        labels,
        keep_intermediates,
        None,
        device,
    )?;
    let tok = super::Tokenizer::for_shape(dc.levels, sample_shape);
    Ok(crate::sample::Samples {
        sample_shape: sample_shape.to_vec(),
        data: tok.values(&s.tokens),
        nfe: s.nfe,
        times: s.times,
        states: s.states.iter().map(|st| tok.values(st)).collect(),
    })
}
