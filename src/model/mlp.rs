//! MLP velocity field: v(x, t) = MLP([flatten(x), fourier(x), embed(t)]).
//!
//! The optional Fourier features `[sin(Bx), cos(Bx)]` (Tancik et al. 2020,
//! B fixed, Gaussian with standard deviation `fourier_scale`) let the network
//! fit fields that change quickly in x, such as a checkerboard on the sphere
//! or the torus, which a plain MLP of the coordinates learns very slowly.

use candle_core::{DType, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::{
    Activation, FlowModel, ModelConfig, TimeEmbedding, TimeEmbeddingConfig, VelocityField,
};
use crate::{Error, Result};

/// Hyperparameters of the MLP.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Units per hidden layer.
    pub width: usize,
    /// Number of hidden layers (the network has `depth + 1` linear layers).
    pub depth: usize,
    /// Activation after each hidden layer.
    pub activation: Activation,
    /// Time embedding concatenated to the input.
    pub time_embedding: TimeEmbeddingConfig,
    /// Number of random Fourier features of x (0: none); the input gains
    /// `2 · fourier_features` values.
    #[serde(default)]
    pub fourier_features: usize,
    /// Standard deviation of the Fourier frequencies B.
    #[serde(default = "default_fourier_scale")]
    pub fourier_scale: f64,
}

fn default_fourier_scale() -> f64 {
    4.0
}

/// Seed of the fixed Fourier frequencies (part of the architecture, not of a run).
const FOURIER_SEED: u64 = 0x0046_6F75_7269_6572;

impl Default for MlpConfig {
    fn default() -> Self {
        MlpConfig {
            width: 256,
            depth: 3,
            activation: Activation::Silu,
            time_embedding: TimeEmbeddingConfig::default(),
            fourier_features: 0,
            fourier_scale: default_fourier_scale(),
        }
    }
}

impl MlpConfig {
    /// Number of parameters for samples of `dim` values (computed, nothing is built).
    pub fn param_count(&self, dim: usize) -> usize {
        let (w, d) = (self.width, self.depth);
        let first = (dim + 2 * self.fourier_features + self.time_embedding.out_dim()) * w + w;
        let hidden = d.saturating_sub(1) * (w * w + w);
        first + hidden + w * dim + dim
    }

    /// Checks the hyperparameters are in range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=16_384).contains(&self.width) {
            return Err(Error::config(format!(
                "MLP width must be 1..=16384, got {}",
                self.width
            )));
        }
        if !(1..=64).contains(&self.depth) {
            return Err(Error::config(format!(
                "MLP depth must be 1..=64, got {}",
                self.depth
            )));
        }
        if self.fourier_features > 4096 {
            return Err(Error::config("at most 4096 Fourier features"));
        }
        if !(self.fourier_scale.is_finite()
            && self.fourier_scale > 0.0
            && self.fourier_scale <= 1e3)
        {
            return Err(Error::config(format!(
                "Fourier scale must be in (0, 1000], got {}",
                self.fourier_scale
            )));
        }
        if self.time_embedding.frequencies > 1024 {
            return Err(Error::config("time embedding: at most 1024 frequencies"));
        }
        Ok(())
    }
}

/// The MLP. Parameter names: `layers.{i}.weight` `(out, in)` and `layers.{i}.bias` `(out,)`.
#[derive(Debug, Clone)]
pub struct Mlp {
    cfg: MlpConfig,
    embed: TimeEmbedding,
    /// Fourier frequencies transposed, `(dim, fourier_features)`.
    fourier: Option<Tensor>,
    layers: Vec<Linear>,
    /// Outputs per sample (the input size unless built by [`Mlp::with_io`]).
    out_dim: usize,
}

impl Mlp {
    /// Builds an MLP for samples of shape `sample_shape` (flattened to `dim` inputs and outputs).
    pub fn new(cfg: MlpConfig, sample_shape: &[usize], vb: VarBuilder) -> Result<Self> {
        let dim: usize = sample_shape.iter().product();
        if dim == 0 {
            return Err(Error::config(format!(
                "empty sample shape {sample_shape:?}"
            )));
        }
        Self::with_io(cfg, dim, dim, vb)
    }

    /// An MLP from `dim` inputs (plus the time embedding) to `out_dim` outputs
    /// per sample; its output is `(batch, out_dim)` when the two differ.
    pub fn with_io(cfg: MlpConfig, dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        if dim == 0 || out_dim == 0 {
            return Err(Error::config("an MLP needs at least one input and output"));
        }
        let embed = TimeEmbedding::new(cfg.time_embedding, vb.device())?;
        let mut layers = Vec::with_capacity(cfg.depth + 1);
        let mut fan_in = dim + 2 * cfg.fourier_features + cfg.time_embedding.out_dim();
        let vb = vb.pp("layers");
        for i in 0..cfg.depth {
            layers.push(candle_nn::linear(fan_in, cfg.width, vb.pp(i))?);
            fan_in = cfg.width;
        }
        layers.push(candle_nn::linear(fan_in, out_dim, vb.pp(cfg.depth))?);
        // After the layers: a stored model whose shapes do not match has been
        // refused by then, before this (dim x features) matrix is made.
        let fourier = if cfg.fourier_features > 0 {
            let mut rng = crate::rng::stream_rng(FOURIER_SEED, crate::rng::Stream::Init, 0);
            let b: Vec<f32> = crate::rng::gaussian(dim * cfg.fourier_features, &mut rng)
                .into_iter()
                .map(|v| v * cfg.fourier_scale as f32)
                .collect();
            Some(Tensor::from_vec(
                b,
                (dim, cfg.fourier_features),
                vb.device(),
            )?)
        } else {
            None
        };
        Ok(Mlp {
            cfg,
            embed,
            fourier,
            layers,
            out_dim,
        })
    }

    /// The hyperparameters.
    pub fn mlp_config(&self) -> MlpConfig {
        self.cfg
    }
}

impl VelocityField for Mlp {
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let batch = x.dim(0)?;
        let xf = x.to_dtype(DType::F32)?.reshape((batch, ()))?;
        let te = self.embed.forward(t)?;
        let mut h = match &self.fourier {
            Some(b) => {
                let z = xf.matmul(b)?;
                Tensor::cat(&[&xf, &z.sin()?, &z.cos()?, &te], 1)?
            }
            None => Tensor::cat(&[&xf, &te], 1)?,
        };
        let n = self.layers.len();
        for (i, layer) in self.layers.iter().enumerate() {
            h = if i > 0 && self.cfg.activation == Activation::Silu {
                // The previous layer's SiLU, fused into this layer.
                super::ops::silu_linear(&h, layer)?
            } else {
                super::ops::linear(&h, layer)?
            };
            if i + 1 < n && self.cfg.activation != Activation::Silu {
                h = self.cfg.activation.apply(&h)?;
            }
        }
        let h = if h.dim(1)? * batch == x.elem_count() {
            h.reshape(x.shape())?
        } else {
            h.reshape((batch, self.out_dim))?
        };
        Ok(h.to_dtype(dtype)?)
    }
}

impl FlowModel for Mlp {
    fn config(&self) -> ModelConfig {
        ModelConfig::Mlp(self.cfg)
    }
}
