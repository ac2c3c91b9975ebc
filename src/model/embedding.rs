//! Sinusoidal time embedding: t ↦ [t, sin(ω_k t), cos(ω_k t)] for k = 1..K.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::Result;

/// Hyperparameters of the sinusoidal time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TimeEmbeddingConfig {
    /// Number of frequencies K (the embedding has 2K + 1 features). 0 feeds raw t only.
    pub frequencies: usize,
    /// Largest angular frequency ω_K in radians per unit time; the ω_k are
    /// geometrically spaced from 1 to this value.
    pub max_frequency: f64,
}

impl Default for TimeEmbeddingConfig {
    fn default() -> Self {
        TimeEmbeddingConfig {
            frequencies: 16,
            max_frequency: 50.0,
        }
    }
}

impl TimeEmbeddingConfig {
    /// Number of output features, 2K + 1.
    pub fn out_dim(&self) -> usize {
        2 * self.frequencies + 1
    }
}

/// The embedding, with its frequencies ready on the device.
#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    cfg: TimeEmbeddingConfig,
    /// Angular frequencies, `(1, K)`.
    freqs: Option<Tensor>,
}

impl TimeEmbedding {
    /// Builds the embedding on `device` (f32).
    pub fn new(cfg: TimeEmbeddingConfig, device: &Device) -> Result<Self> {
        let k = cfg.frequencies;
        let freqs = if k == 0 {
            None
        } else {
            let top = cfg.max_frequency.max(1.0).ln();
            let w: Vec<f32> = (0..k)
                .map(|i| {
                    let frac = if k == 1 {
                        0.0
                    } else {
                        i as f64 / (k - 1) as f64
                    };
                    (frac * top).exp() as f32
                })
                .collect();
            Some(Tensor::from_vec(w, (1, k), device)?)
        };
        Ok(TimeEmbedding { cfg, freqs })
    }

    /// The configuration.
    pub fn config(&self) -> TimeEmbeddingConfig {
        self.cfg
    }

    /// Embeds `t`: `(batch,)` → `(batch, 2K + 1)` in f32.
    pub fn forward(&self, t: &Tensor) -> Result<Tensor> {
        let t = t.to_dtype(DType::F32)?.unsqueeze(1)?;
        let Some(freqs) = &self.freqs else {
            return Ok(t);
        };
        let arg = t.broadcast_mul(freqs)?;
        Ok(Tensor::cat(&[&t, &arg.sin()?, &arg.cos()?], 1)?)
    }
}
