//! UNet velocity field for images: residual blocks with GroupNorm and SiLU, the
//! time embedding entering every block as a per-channel scale and shift,
//! stride-2 convolutions down, nearest upsampling up, skip connections between
//! levels of equal size, and optional self-attention at the lowest resolution.
//!
//! Layout for `channels = [32, 64, 128]` on 28x28 images:
//!
//! ```text
//! conv_in 1→32 · level 0 (28²): blocks 32 → skip₀ → conv s2
//!              · level 1 (14²): blocks 32→64 → skip₁ → conv s2
//!              · level 2 (7²):  blocks 64→128 → skip₂
//! middle (7²): block 128 · attention
//! up 2 (7²):  [h, skip₂] 256→128 · upsample
//! up 1 (14²): [h, skip₁] 192→64 · upsample
//! up 0 (28²): [h, skip₀] 96→32 · GroupNorm · SiLU · conv_out 32→1
//! ```
//!
//! All convolutions, norms and upsampling go through [`super::ops`], FlowLab's
//! CPU kernels (candle's ops on other devices).

use candle_core::Tensor;
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use super::ops::{self, Conv2dParams, GroupNormParams};
use super::{FlowModel, ModelConfig, TimeEmbedding, TimeEmbeddingConfig, VelocityField};
use crate::{Error, Result};

/// Hyperparameters of the UNet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnetConfig {
    /// Channels at each level, from full resolution down; each further level
    /// halves the height and width (which must be divisible accordingly).
    pub channels: Vec<usize>,
    /// Residual blocks per level on each side.
    pub blocks: usize,
    /// Self-attention (one head) in the middle, at the lowest resolution.
    pub attention: bool,
    /// GroupNorm groups (must divide every channel count, including the
    /// concatenations on the way up).
    pub groups: usize,
    /// Width of the time embedding MLP.
    pub embed_dim: usize,
    /// Sinusoidal features of t fed to that MLP.
    pub time_embedding: TimeEmbeddingConfig,
    /// Number of classes for class conditioning (0: unconditional). A
    /// conditional UNet learns one more, "null" embedding (index `classes`),
    /// which gives the unconditional velocity for classifier-free guidance.
    pub classes: usize,
}

impl Default for UnetConfig {
    fn default() -> Self {
        UnetConfig {
            channels: vec![32, 64, 128],
            blocks: 1,
            attention: true,
            groups: 8,
            embed_dim: 128,
            time_embedding: TimeEmbeddingConfig::default(),
            classes: 0,
        }
    }
}

impl UnetConfig {
    /// Checks the hyperparameters are in range (the image size is checked when
    /// the model is built).
    pub fn validate(&self) -> Result<()> {
        if self.channels.is_empty() || self.channels.len() > 5 {
            return Err(Error::config("UNet: 1 to 5 levels of channels"));
        }
        if self.blocks == 0 || self.blocks > 4 {
            return Err(Error::config("UNet: 1 to 4 blocks per level"));
        }
        if self.groups == 0 {
            return Err(Error::config("UNet: at least one GroupNorm group"));
        }
        if self.embed_dim == 0 || self.embed_dim > 4096 {
            return Err(Error::config("UNet: embedding width must be 1..=4096"));
        }
        let mut prev = 0;
        for &c in self.channels.iter().rev() {
            if c == 0 || c > 2048 {
                return Err(Error::config("UNet: channels must be 1..=2048"));
            }
            for n in [c, c + prev] {
                if n % self.groups != 0 {
                    return Err(Error::config(format!(
                        "UNet: {} GroupNorm groups do not divide {n} channels",
                        self.groups
                    )));
                }
            }
            prev = c;
        }
        if self.time_embedding.frequencies > 1024 {
            return Err(Error::config("time embedding: at most 1024 frequencies"));
        }
        if self.classes > 100_000 {
            return Err(Error::config("UNet: at most 100000 classes"));
        }
        Ok(())
    }
}

/// Weight of a convolution and its bias.
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    p: Conv2dParams,
}

impl Conv {
    /// A `k x k` convolution `c_in → c_out`; parameters `weight` `(c_out, c_in, k, k)`, `bias` `(c_out,)`.
    fn new(c_in: usize, c_out: usize, k: usize, p: Conv2dParams, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / ((c_in * k * k) as f64).sqrt();
        let init = Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Conv {
            weight: vb.get_with_hints((c_out, c_in, k, k), "weight", init)?,
            bias: vb.get_with_hints(c_out, "bias", init)?,
            p,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::conv2d(x, &self.weight, Some(&self.bias), self.p)?)
    }
}

/// GroupNorm parameters `weight` (γ, ones) and `bias` (β, zeros), `(channels,)`.
#[derive(Debug, Clone)]
struct Norm {
    gamma: Tensor,
    beta: Tensor,
    p: GroupNormParams,
}

impl Norm {
    fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Norm {
            gamma: vb.get_with_hints(channels, "weight", Init::Const(1.0))?,
            beta: vb.get_with_hints(channels, "bias", Init::Const(0.0))?,
            p: GroupNormParams::new(groups),
        })
    }

    /// Norm, then `(1 + s) · + h` for `scale_shift` `(batch, 2C)`, then SiLU if `silu`.
    fn forward(&self, x: &Tensor, scale_shift: Option<&Tensor>, silu: bool) -> Result<Tensor> {
        Ok(ops::group_norm(
            x,
            &self.gamma,
            &self.beta,
            scale_shift,
            silu,
            self.p,
        )?)
    }
}

/// `x + conv2(act(norm2(conv1(act(norm1(x)))) modulated by the embedding))`,
/// with a 1x1 convolution on the skip when the channel count changes.
#[derive(Debug, Clone)]
struct ResBlock {
    norm1: Norm,
    conv1: Conv,
    embed: Linear,
    norm2: Norm,
    conv2: Conv,
    skip: Option<Conv>,
}

impl ResBlock {
    fn new(c_in: usize, c_out: usize, cfg: &UnetConfig, vb: VarBuilder) -> Result<Self> {
        let same = Conv2dParams::same(1);
        Ok(ResBlock {
            norm1: Norm::new(c_in, cfg.groups, vb.pp("norm1"))?,
            conv1: Conv::new(c_in, c_out, 3, same, vb.pp("conv1"))?,
            embed: candle_nn::linear(cfg.embed_dim, 2 * c_out, vb.pp("embed"))?,
            norm2: Norm::new(c_out, cfg.groups, vb.pp("norm2"))?,
            conv2: Conv::new(c_out, c_out, 3, same, vb.pp("conv2"))?,
            skip: (c_in != c_out)
                .then(|| Conv::new(c_in, c_out, 1, Conv2dParams::default(), vb.pp("skip")))
                .transpose()?,
        })
    }

    /// `x`: `(B, c_in, H, W)`, `emb`: the activated embedding `(B, E)` → `(B, c_out, H, W)`.
    fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x, None, true)?)?;
        let scale_shift = ops::linear(emb, &self.embed)?;
        let h = self
            .conv2
            .forward(&self.norm2.forward(&h, Some(&scale_shift), true)?)?;
        let skip = match &self.skip {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok((h + skip)?)
    }
}

/// Single-head self-attention over the pixels, with a residual connection.
#[derive(Debug, Clone)]
struct Attention {
    norm: Norm,
    qkv: Conv,
    proj: Conv,
}

impl Attention {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let p = Conv2dParams::default();
        Ok(Attention {
            norm: Norm::new(c, groups, vb.pp("norm"))?,
            qkv: Conv::new(c, 3 * c, 1, p, vb.pp("qkv"))?,
            proj: Conv::new(c, c, 1, p, vb.pp("proj"))?,
        })
    }

    /// `x`: `(B, C, H, W)` → same shape.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x, None, false)?)?
            .reshape((b, 3 * c, h * w))?;
        let q = qkv.narrow(1, 0, c)?.transpose(1, 2)?.contiguous()?;
        let k = qkv.narrow(1, c, c)?.contiguous()?;
        let v = qkv.narrow(1, 2 * c, c)?.contiguous()?;
        // (B, N, N): weights of pixel j for pixel i.
        let logits = (q.matmul(&k)? * (1.0 / (c as f64).sqrt()))?;
        let attn = candle_nn::ops::softmax(&logits, candle_core::D::Minus1)?;
        let out = v.matmul(&attn.transpose(1, 2)?.contiguous()?)?;
        Ok((x + self.proj.forward(&out.reshape((b, c, h, w))?)?)?)
    }
}

/// One resolution of the way down: blocks, then (except the last) a stride-2 convolution.
#[derive(Debug, Clone)]
struct Down {
    blocks: Vec<ResBlock>,
    downsample: Option<Conv>,
}

/// One resolution of the way up: blocks (the first takes the skip), then
/// (except at full resolution) nearest upsampling.
#[derive(Debug, Clone)]
struct Up {
    blocks: Vec<ResBlock>,
    upsample: bool,
}

/// The UNet. Parameter names follow the structure: `time.{0,1}`, `labels`, `conv_in`,
/// `down.{l}.{block,downsample}`, `mid.{block,attention}`, `up.{l}.block.{i}`,
/// `norm_out`, `conv_out`.
#[derive(Debug, Clone)]
pub struct Unet {
    cfg: UnetConfig,
    embed: TimeEmbedding,
    time: [Linear; 2],
    /// Class embeddings `(classes + 1, embed_dim)`, the last row the null class.
    labels: Option<candle_nn::Embedding>,
    conv_in: Conv,
    down: Vec<Down>,
    mid: ResBlock,
    attention: Option<Attention>,
    up: Vec<Up>,
    norm_out: Norm,
    conv_out: Conv,
}

impl Unet {
    /// Builds a UNet for images of shape `sample_shape` = `[channels, height, width]`.
    pub fn new(cfg: UnetConfig, sample_shape: &[usize], vb: VarBuilder) -> Result<Self> {
        let c_out = sample_shape.first().copied().unwrap_or(1);
        Self::with_io(cfg, sample_shape, c_out, vb)
    }

    /// A UNet from images of shape `sample_shape` = `[channels, height, width]`
    /// to `c_out` channels of the same size.
    pub fn with_io(
        cfg: UnetConfig,
        sample_shape: &[usize],
        c_out: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate()?;
        let &[c_img, h, w] = sample_shape else {
            return Err(Error::config(format!(
                "the UNet needs images (channels, height, width), got samples of shape {sample_shape:?}"
            )));
        };
        let levels = cfg.channels.len();
        let factor = 1usize << (levels - 1);
        if c_img == 0 || h == 0 || w == 0 || h % factor != 0 || w % factor != 0 {
            return Err(Error::config(format!(
                "a {levels}-level UNet needs height and width divisible by {factor}, got {h}x{w}"
            )));
        }
        let embed = TimeEmbedding::new(cfg.time_embedding, vb.device())?;
        let e = cfg.embed_dim;
        let time = [
            candle_nn::linear(cfg.time_embedding.out_dim(), e, vb.pp("time.0"))?,
            candle_nn::linear(e, e, vb.pp("time.1"))?,
        ];
        let labels = (cfg.classes > 0)
            .then(|| candle_nn::embedding(cfg.classes + 1, e, vb.pp("labels")))
            .transpose()?;
        let same = Conv2dParams::same(1);
        let first = cfg.channels.first().copied().unwrap_or(1);
        let conv_in = Conv::new(c_img, first, 3, same, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(levels);
        let mut c = first;
        for (l, &cl) in cfg.channels.iter().enumerate() {
            let vbl = vb.pp("down").pp(l);
            let mut blocks = Vec::with_capacity(cfg.blocks);
            for i in 0..cfg.blocks {
                blocks.push(ResBlock::new(c, cl, &cfg, vbl.pp("block").pp(i))?);
                c = cl;
            }
            let downsample = (l + 1 < levels)
                .then(|| Conv::new(c, c, 3, Conv2dParams::strided(2, 1), vbl.pp("downsample")))
                .transpose()?;
            down.push(Down { blocks, downsample });
        }
        let mid = ResBlock::new(c, c, &cfg, vb.pp("mid.block"))?;
        let attention = cfg
            .attention
            .then(|| Attention::new(c, cfg.groups, vb.pp("mid.attention")))
            .transpose()?;
        let mut up = Vec::with_capacity(levels);
        for (l, &cl) in cfg.channels.iter().enumerate().rev() {
            let vbl = vb.pp("up").pp(l);
            let mut blocks = Vec::with_capacity(cfg.blocks);
            for i in 0..cfg.blocks {
                let c_in = if i == 0 { c + cl } else { cl };
                blocks.push(ResBlock::new(c_in, cl, &cfg, vbl.pp("block").pp(i))?);
                c = cl;
            }
            up.push(Up {
                blocks,
                upsample: l > 0,
            });
        }
        Ok(Unet {
            norm_out: Norm::new(c, cfg.groups, vb.pp("norm_out"))?,
            conv_out: Conv::new(c, c_out.max(1), 3, same, vb.pp("conv_out"))?,
            cfg,
            embed,
            time,
            labels,
            conv_in,
            down,
            mid,
            attention,
            up,
        })
    }

    /// The hyperparameters.
    pub fn unet_config(&self) -> &UnetConfig {
        &self.cfg
    }
}

impl Unet {
    /// The velocity for class `labels`: `(batch,)` u32, each in `0..=classes`
    /// (`classes` is the null class), or unconditional with `None` (the null
    /// class for a conditional UNet).
    fn forward(&self, x: &Tensor, t: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        let dtype = x.dtype();
        // Compute in the parameters' dtype (f32 normally; f64 runs candle's
        // reference ops, which tests compare against).
        let param_dtype = self.conv_in.weight.dtype();
        let x32 = x.to_dtype(param_dtype)?;
        let [t0, t1] = &self.time;
        let emb = ops::linear(&self.embed.forward(t)?.to_dtype(param_dtype)?, t0)?;
        let mut emb = ops::linear(&ops::silu(&emb)?, t1)?;
        if let Some(table) = &self.labels {
            let batch = x.dim(0)?;
            let ids = match labels {
                Some(l) => l.to_dtype(candle_core::DType::U32)?,
                None => Tensor::full(self.cfg.classes as u32, batch, x.device())?,
            };
            let max = ids.max_all()?.to_scalar::<u32>()?;
            if ids.dims() != [batch] || max as usize > self.cfg.classes {
                return Err(Error::config(format!(
                    "class labels must be ({batch},) in 0..={}",
                    self.cfg.classes
                )));
            }
            emb = (emb + candle_nn::Module::forward(table, &ids)?)?;
        }
        // Every block reads the embedding through a SiLU: apply it once.
        let emb = ops::silu(&emb)?;
        let mut h = self.conv_in.forward(&x32)?;
        let mut skips = Vec::with_capacity(self.down.len());
        for level in &self.down {
            for b in &level.blocks {
                h = b.forward(&h, &emb)?;
            }
            skips.push(h.clone());
            if let Some(d) = &level.downsample {
                h = d.forward(&h)?;
            }
        }
        h = self.mid.forward(&h, &emb)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        for level in &self.up {
            let skip = skips
                .pop()
                .ok_or_else(|| Error::config("UNet: unbalanced skip connections"))?;
            for (i, b) in level.blocks.iter().enumerate() {
                h = if i == 0 {
                    b.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb)?
                } else {
                    b.forward(&h, &emb)?
                };
            }
            if level.upsample {
                h = ops::upsample_nearest(&h, 2)?;
            }
        }
        let out = self
            .conv_out
            .forward(&self.norm_out.forward(&h, None, true)?)?;
        Ok(out.to_dtype(dtype)?)
    }
}

/// Unconditional velocity (the null class for a class-conditional UNet).
impl VelocityField for Unet {
    fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        self.forward(x, t, None)
    }
}

impl FlowModel for Unet {
    fn config(&self) -> ModelConfig {
        ModelConfig::Unet(self.cfg.clone())
    }

    fn classes(&self) -> usize {
        self.cfg.classes
    }

    fn velocity_with_labels(&self, x: &Tensor, t: &Tensor, labels: &Tensor) -> Result<Tensor> {
        if self.cfg.classes == 0 {
            return Err(Error::config("this UNet is not class-conditional"));
        }
        self.forward(x, t, Some(labels))
    }
}
