//! Networks over tokens: an MLP or a UNet that reads the one-hot encoding of
//! every coordinate's token (the mask included) and returns, for every
//! coordinate, logits of the posterior p(x_1 | x_t) over the levels.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::model::{FlowModel, Mlp, ModelConfig, Unet, VelocityField};
use crate::{Error, Result};

/// A token network: the inner network and the number of levels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Tokens per coordinate (the mask is one more input token).
    pub levels: usize,
    /// The network that maps one-hot tokens to logits (an MLP or a UNet).
    pub inner: Box<ModelConfig>,
}

enum Inner {
    Mlp(Mlp),
    Unet(Box<Unet>),
}

/// A network over tokens (see the module docs).
pub struct TokenModel {
    cfg: TokenConfig,
    inner: Inner,
    /// Shape of one sample (`[2]`, `[1, 28, 28]`).
    sample_shape: Vec<usize>,
}

impl std::fmt::Debug for TokenModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenModel")
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl TokenModel {
    /// Builds the network for samples of `sample_shape` (2D points: an MLP on
    /// the concatenated one-hot tokens; images `[1, h, w]`: a UNet with one input
    /// channel per token and one output channel per level).
    pub fn new(cfg: TokenConfig, sample_shape: &[usize], vb: VarBuilder) -> Result<Self> {
        let levels = cfg.levels;
        if !(2..=4096).contains(&levels) {
            return Err(Error::config(format!(
                "token levels must be 2..=4096, got {levels}"
            )));
        }
        let d: usize = sample_shape.iter().product();
        let inner = match cfg.inner.as_ref() {
            ModelConfig::Mlp(m) => Inner::Mlp(Mlp::with_io(*m, d * (levels + 1), d * levels, vb)?),
            ModelConfig::Unet(u) => {
                let &[1, h, w] = sample_shape else {
                    return Err(Error::config(format!(
                        "a token UNet needs one-channel images, got samples of shape {sample_shape:?}"
                    )));
                };
                Inner::Unet(Box::new(Unet::with_io(
                    u.clone(),
                    &[levels + 1, h, w],
                    levels,
                    vb,
                )?))
            }
            ModelConfig::Tokens(_) => {
                return Err(Error::config("a token network cannot wrap another"));
            }
        };
        Ok(TokenModel {
            cfg,
            inner,
            sample_shape: sample_shape.to_vec(),
        })
    }

    /// One-hot encoding of `tokens` (`n · d` values in `0..=levels`): `(n, d · (levels + 1))`
    /// position-major for the MLP, `(n, levels + 1, h, w)` channel-major for the UNet.
    fn one_hot(&self, tokens: &[u32], n: usize, device: &candle_core::Device) -> Result<Tensor> {
        let v = self.cfg.levels + 1;
        let d = tokens.len() / n.max(1);
        let mut out = vec![0f32; tokens.len() * v];
        match self.inner {
            Inner::Mlp(_) => {
                for (i, &k) in tokens.iter().enumerate() {
                    if let Some(x) = out.get_mut(i * v + (k as usize).min(v - 1)) {
                        *x = 1.0;
                    }
                }
                Ok(Tensor::from_vec(out, (n, d * v), device)?)
            }
            Inner::Unet(_) => {
                for (i, &k) in tokens.iter().enumerate() {
                    let (b, p) = (i / d.max(1), i % d.max(1));
                    if let Some(x) = out.get_mut((b * v + (k as usize).min(v - 1)) * d + p) {
                        *x = 1.0;
                    }
                }
                let mut shape = vec![n, v];
                shape.extend(self.sample_shape.iter().skip(1));
                Ok(Tensor::from_vec(out, shape, device)?)
            }
        }
    }

    fn logits_impl(&self, tokens: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let (n, d) = tokens.dims2()?;
        let ids = tokens
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let x = self.one_hot(&ids, n, tokens.device())?;
        let k = self.cfg.levels;
        match &self.inner {
            Inner::Mlp(m) => {
                if labels.is_some() {
                    return Err(Error::config("the token MLP is not class-conditional"));
                }
                Ok(m.velocity(&x, t)?.reshape((n, d, k))?)
            }
            Inner::Unet(u) => {
                let out = match labels {
                    Some(l) => u.velocity_with_labels(&x, t, l)?,
                    None => u.velocity(&x, t)?,
                };
                // (n, k, h, w) → (n, d, k)
                Ok(out.reshape((n, k, d))?.transpose(1, 2)?.contiguous()?)
            }
        }
    }
}

impl VelocityField for TokenModel {
    fn velocity(&self, _x: &Tensor, _t: &Tensor) -> Result<Tensor> {
        Err(Error::config(
            "a discrete (token) model has no velocity field; it predicts tokens",
        ))
    }
}

impl FlowModel for TokenModel {
    fn config(&self) -> ModelConfig {
        ModelConfig::Tokens(self.cfg.clone())
    }

    fn classes(&self) -> usize {
        match &self.inner {
            Inner::Unet(u) => u.classes(),
            Inner::Mlp(_) => 0,
        }
    }

    fn token_levels(&self) -> usize {
        self.cfg.levels
    }

    fn token_logits(&self, tokens: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self.logits_impl(tokens, t, labels)
    }
}
