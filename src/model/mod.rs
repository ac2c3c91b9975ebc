//! Velocity fields v(x, t): the [`VelocityField`] trait, model configs, the MLP
//! for low-dimensional data and the UNet for images.

pub mod embedding;
pub mod guidance;
pub mod mlp;
pub mod ops;
pub mod unet;

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

pub use embedding::{TimeEmbedding, TimeEmbeddingConfig};
pub use guidance::Guided;
pub use mlp::{Mlp, MlpConfig};
pub use unet::{Unet, UnetConfig};

use crate::Result;

/// A time-dependent vector field v(x, t). t = 0 is noise, t = 1 is data.
pub trait VelocityField {
    /// Evaluates the field. `x`: `(batch, ...)`, `t`: `(batch,)` of the same
    /// dtype and device. Returns a tensor shaped like `x`.
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor>;
}

/// Any `Fn(&Tensor, &Tensor) -> Result<Tensor>` is a velocity field (handy for
/// analytic fields in tests and for wrapping models).
impl<F> VelocityField for F
where
    F: Fn(&Tensor, &Tensor) -> Result<Tensor>,
{
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self(x, t)
    }
}

/// A trainable velocity network (MLP or UNet).
pub trait FlowModel: VelocityField + Send + Sync {
    /// The configuration that rebuilds this model.
    fn config(&self) -> ModelConfig;

    /// Number of classes it is conditioned on (0: unconditional). Label
    /// `classes()` is the null class (the unconditional velocity).
    fn classes(&self) -> usize {
        0
    }

    /// The velocity given class `labels`: `(batch,)` u32 in `0..=classes()`.
    /// Unconditional models return an error.
    fn velocity_with_labels(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Result<Tensor> {
        let _ = (x, t, labels);
        Err(crate::Error::config("this model is not class-conditional"))
    }

    /// Levels per token of a discrete model (0: a continuous velocity field).
    fn token_levels(&self) -> usize {
        0
    }

    /// For a discrete model: logits of p(x_1 | x_t) for every coordinate,
    /// `(batch, d, levels)`, given tokens `(batch, d)` u32 in `0..=levels`
    /// (`levels` is the mask), times `(batch,)`, and optionally class labels.
    fn token_logits(&self, tokens: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let _ = (tokens, t, labels);
        Err(crate::Error::config(
            "this model is a continuous velocity field, not a token model",
        ))
    }
}

/// Activation function between hidden layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    /// x · sigmoid(x) (also called Swish).
    #[default]
    Silu,
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit (tanh approximation).
    Gelu,
    /// Exponential linear unit with alpha = 1.
    Elu,
    /// Hyperbolic tangent.
    Tanh,
}

impl Activation {
    /// Every activation, in display order.
    pub const ALL: [Activation; 5] = [
        Activation::Silu,
        Activation::Relu,
        Activation::Gelu,
        Activation::Elu,
        Activation::Tanh,
    ];

    /// The command-line name.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Silu => "silu",
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::Elu => "elu",
            Activation::Tanh => "tanh",
        }
    }

    /// Looks an activation up by name.
    pub fn from_name(name: &str) -> Option<Activation> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Applies the activation elementwise.
    pub fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Silu => ops::silu(x),
            Activation::Relu => x.relu(),
            Activation::Gelu => x.gelu(),
            Activation::Elu => x.elu(1.0),
            Activation::Tanh => x.tanh(),
        }
    }
}

/// Which network and its hyperparameters. Serialised into configs and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ModelConfig {
    /// A multi-layer perceptron on flattened samples.
    Mlp(MlpConfig),
    /// A convolutional UNet on images `(channels, height, width)`.
    Unet(UnetConfig),
    /// A network over tokens, for discrete flow matching.
    Tokens(crate::discrete::TokenConfig),
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::Mlp(MlpConfig::default())
    }
}

impl ModelConfig {
    /// Checks the hyperparameters are in range.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Mlp(c) => c.validate(),
            ModelConfig::Unet(c) => c.validate(),
            ModelConfig::Tokens(c) => match c.inner.as_ref() {
                ModelConfig::Tokens(_) => {
                    Err(crate::Error::config("a token network cannot wrap another"))
                }
                inner => inner.validate(),
            },
        }
    }

    /// Builds the model for samples of shape `sample_shape` (e.g. `[2]`), creating its
    /// parameters through `vb`. Initial values come from `vb`'s initialisers; use
    /// [`crate::train::init_params`] for seeded initial values.
    pub fn build(&self, sample_shape: &[usize], vb: VarBuilder) -> Result<Box<dyn FlowModel>> {
        match self {
            ModelConfig::Mlp(c) => Ok(Box::new(Mlp::new(*c, sample_shape, vb)?)),
            ModelConfig::Unet(c) => Ok(Box::new(Unet::new(c.clone(), sample_shape, vb)?)),
            ModelConfig::Tokens(c) => Ok(Box::new(crate::discrete::TokenModel::new(
                c.clone(),
                sample_shape,
                vb,
            )?)),
        }
    }

    /// The network itself: the inner network of a token model, else this one.
    pub fn network(&self) -> &ModelConfig {
        match self {
            ModelConfig::Tokens(c) => c.inner.as_ref(),
            other => other,
        }
    }

    /// The network itself, mutable (see [`ModelConfig::network`]).
    pub fn network_mut(&mut self) -> &mut ModelConfig {
        match self {
            ModelConfig::Tokens(c) => c.inner.as_mut(),
            other => other,
        }
    }

    /// Number of trainable parameters for samples of shape `sample_shape`.
    pub fn param_count(&self, sample_shape: &[usize]) -> Result<usize> {
        let map = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &candle_core::Device::Cpu);
        self.build(sample_shape, vb)?;
        Ok(map.all_vars().iter().map(|v| v.elem_count()).sum())
    }
}
