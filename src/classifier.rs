//! A small convolutional MNIST classifier, used to judge generated digits:
//! the accuracy with which samples are recognised as their requested class,
//! and a Fréchet distance between its features of samples and of real test
//! images (classifier-based, not Inception FID).
//!
//! Network, for `(batch, 1, 28, 28)` images in [-1, 1]: conv 3x3 1→32 · SiLU ·
//! conv 3x3 stride 2 32→64 · SiLU · conv 3x3 stride 2 64→64 · SiLU · flatten ·
//! linear 3136→128 · SiLU (the features) · linear 128→10.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::data::mnist::ImageSet;
use crate::model::ops::{self, Conv2dParams};
use crate::rng::{Stream, stream_rng};
use crate::train::{AdamW, OptimizerConfig, Params, init_params};
use crate::{Error, Result};

const FORMAT_KEY: &str = "flowlab.format";
const FORMAT_NAME: &str = "flowlab-classifier";
const META_KEY: &str = "flowlab.classifier";

/// Width of the feature vector (the penultimate layer).
pub const FEATURES: usize = 128;

/// How a classifier was trained, stored with its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMeta {
    /// Number of classes.
    pub classes: usize,
    /// Training steps.
    pub steps: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Seed of the initial weights and batches.
    pub seed: u64,
    /// Accuracy on the test set after training.
    pub test_accuracy: f64,
}

/// The classifier.
pub struct Classifier {
    convs: Vec<(Tensor, Tensor, Conv2dParams)>,
    hidden: Linear,
    out: Linear,
    map: VarMap,
    classes: usize,
}

impl Classifier {
    /// A freshly initialised classifier (seeded) for 28x28 greyscale images.
    pub fn new(classes: usize, seed: u64, device: &Device) -> Result<Self> {
        if classes == 0 {
            return Err(Error::config("a classifier needs at least one class"));
        }
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, device);
        let mut convs = Vec::new();
        for (i, (c_in, c_out, stride)) in [(1, 32, 1), (32, 64, 2), (64, 64, 2)]
            .into_iter()
            .enumerate()
        {
            let vb = vb.pp(format!("conv{i}"));
            let w = vb.get((c_out, c_in, 3, 3), "weight")?;
            let b = vb.get(c_out, "bias")?;
            convs.push((w, b, Conv2dParams::strided(stride, 1)));
        }
        let hidden = candle_nn::linear(64 * 7 * 7, FEATURES, vb.pp("hidden"))?;
        let out = candle_nn::linear(FEATURES, classes, vb.pp("out"))?;
        init_params(&Params::from_varmap(&map)?, seed)?;
        Ok(Classifier {
            convs,
            hidden,
            out,
            map,
            classes,
        })
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Features `(batch, FEATURES)` of images `(batch, 1, 28, 28)` in [-1, 1].
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.to_dtype(DType::F32)?;
        for (w, b, p) in &self.convs {
            h = ops::silu(&ops::conv2d(&h, w, Some(b), *p)?)?;
        }
        let h = h.flatten_from(1)?;
        Ok(ops::silu(&ops::linear(&h, &self.hidden)?)?)
    }

    /// Class logits `(batch, classes)`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        Ok(ops::linear(&self.features(x)?, &self.out)?)
    }

    /// Predicted classes of images `(n, 1, 28, 28)`, in batches of [`EVAL_BATCH`].
    pub fn predict(&self, x: &Tensor) -> Result<Vec<u32>> {
        in_batches(x, |b| Ok(self.logits(b)?.argmax(1)?.to_vec1::<u32>()?))
    }

    /// Features of images `(n, 1, 28, 28)`, flattened `(n, FEATURES)`, in batches.
    pub fn features_of(&self, x: &Tensor) -> Result<Vec<f32>> {
        in_batches(x, |b| {
            Ok(self.features(b)?.flatten_all()?.to_vec1::<f32>()?)
        })
    }

    /// Fraction of `set`'s images (the first `limit`, or all) classified correctly.
    pub fn accuracy(&self, set: &ImageSet, limit: Option<usize>, device: &Device) -> Result<f64> {
        let n = limit.map_or(set.n, |l| l.min(set.n));
        let (x, labels) = images(set, &(0..n).collect::<Vec<_>>(), device)?;
        let pred = self.predict(&x)?;
        let right = pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
        Ok(right as f64 / n.max(1) as f64)
    }

    /// Trains for `steps` steps of `batch` random training images (AdamW, lr
    /// 1e-3 with warm-up and cosine decay), calling `progress(step, loss)`.
    pub fn train(
        &mut self,
        set: &ImageSet,
        steps: u64,
        batch: usize,
        seed: u64,
        device: &Device,
        mut progress: impl FnMut(u64, f32),
    ) -> Result<()> {
        let vars = Params::from_varmap(&self.map)?.vars;
        let cfg = OptimizerConfig {
            lr: 1e-3,
            warmup_steps: steps.min(50),
            ..Default::default()
        };
        let mut opt = AdamW::new(vars, cfg)?;
        for s in 0..steps {
            let mut rng = stream_rng(seed, Stream::Batch, s);
            let idx: Vec<usize> = (0..batch)
                .map(|_| rand::RngExt::random_range(&mut rng, 0..set.n))
                .collect();
            let (x, labels) = images(set, &idx, device)?;
            let labels = Tensor::from_vec(labels, batch, device)?;
            let loss = candle_nn::loss::cross_entropy(&self.logits(&x)?, &labels)?;
            let l = loss.to_scalar::<f32>()?;
            if !l.is_finite() {
                return Err(Error::config(format!(
                    "classifier loss became {l} at step {s}"
                )));
            }
            opt.step(&loss.backward()?, cfg.lr_at(s, steps), s + 1)?;
            progress(s + 1, l);
        }
        Ok(())
    }

    /// Writes the weights and `meta` to `path` (safetensors, atomically).
    pub fn save(&self, path: &Path, meta: &ClassifierMeta) -> Result<()> {
        let params = Params::from_varmap(&self.map)?;
        let mut tensors: Vec<(&String, Tensor)> = params
            .names
            .iter()
            .zip(&params.vars)
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        tensors.sort_by(|a, b| a.0.cmp(b.0));
        let json = serde_json::to_string(meta).map_err(|e| Error::config(e.to_string()))?;
        let info = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT_NAME.to_string()),
            (META_KEY.to_string(), json),
        ]);
        let bytes = safetensors::serialize(tensors, Some(info))
            .map_err(|e| Error::config(format!("cannot serialise the classifier: {e}")))?;
        crate::fsutil::ensure_parent(path)?;
        crate::fsutil::write_atomic(path, &bytes)
    }

    /// Reads a classifier written by [`Classifier::save`] from safetensors bytes;
    /// `path` names the source in error messages.
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        device: &Device,
    ) -> Result<(Self, ClassifierMeta)> {
        let err = |reason: String| Error::checkpoint(path, reason);
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("not a readable safetensors file ({e})")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| err(format!("not a readable safetensors file ({e})")))?;
        let info = header.metadata().clone().unwrap_or_default();
        if info.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT_NAME) {
            return Err(err("this file is not a FlowLab classifier".into()));
        }
        let meta: ClassifierMeta = info
            .get(META_KEY)
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| err("the classifier metadata is missing or invalid".into()))?;
        let model = Classifier::new(meta.classes, 0, device)?;
        let params = Params::from_varmap(&model.map)?;
        for (name, var) in params.names.iter().zip(&params.vars) {
            let view = st
                .tensor(name)
                .map_err(|_| err(format!("tensor {name} is missing")))?;
            let t = candle_core::safetensors::Load::load(&view, device)
                .map_err(|e| err(format!("tensor {name} cannot be read: {e}")))?;
            if t.dims() != var.dims() {
                return Err(err(format!(
                    "tensor {name} has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok((model, meta))
    }

    /// The classifier shipped in `weights/mnist-classifier.safetensors`, built
    /// into the binary (`flowlab train-classifier` made it).
    pub fn embedded(device: &Device) -> Result<(Self, ClassifierMeta)> {
        Self::from_bytes(
            include_bytes!("../weights/mnist-classifier.safetensors"),
            Path::new("<embedded>/mnist-classifier.safetensors"),
            device,
        )
    }

    /// Reads a classifier file.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, ClassifierMeta)> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        Self::from_bytes(&bytes, path, device)
    }
}

/// Images per forward pass when classifying or extracting features.
pub const EVAL_BATCH: usize = 500;

/// `f` on consecutive batches of at most [`EVAL_BATCH`] rows of `x`, results concatenated.
fn in_batches<T>(x: &Tensor, f: impl Fn(&Tensor) -> Result<Vec<T>>) -> Result<Vec<T>> {
    let n = x.dim(0)?;
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let len = EVAL_BATCH.min(n - start);
        out.extend(f(&x.narrow(0, start, len)?)?);
        start += len;
    }
    Ok(out)
}

/// Images `idx` of `set` as `(n, 1, rows, cols)` in [-1, 1], and their labels.
fn images(set: &ImageSet, idx: &[usize], device: &Device) -> Result<(Tensor, Vec<u32>)> {
    let len = set.rows * set.cols;
    let mut px = Vec::with_capacity(idx.len() * len);
    let mut labels = Vec::with_capacity(idx.len());
    for &i in idx {
        let (Some(img), Some(&l)) = (set.image(i), set.labels.get(i)) else {
            return Err(Error::config(format!("image {i} is out of range")));
        };
        px.extend(img.iter().map(|&p| f32::from(p) / 127.5 - 1.0));
        labels.push(u32::from(l));
    }
    let x = Tensor::from_vec(px, (idx.len(), 1, set.rows, set.cols), device)?;
    Ok((x, labels))
}

/// Classifier-based quality of generated images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageQuality {
    /// Fraction of samples recognised as their requested class (class-conditional
    /// samples only).
    pub accuracy: Option<f64>,
    /// Fréchet distance between classifier features of the samples and of real
    /// test images (not Inception FID).
    pub frechet: f64,
    /// The same distance between two disjoint sets of real images of that size
    /// (test vs training): what a perfect model would score.
    pub frechet_floor: f64,
}

/// Judges `samples` (`(n, 1, 28, 28)` flattened, model space [-1, 1]) with the
/// classifier: accuracy against `labels` when given, and the Fréchet distance
/// to the first `n` images of `reference` (its floor: `reference` vs `other`).
pub fn judge(
    classifier: &Classifier,
    samples: &[f32],
    labels: Option<&[u32]>,
    reference: &ImageSet,
    other: &ImageSet,
    device: &Device,
) -> Result<ImageQuality> {
    let pixels = reference.rows * reference.cols;
    let n = samples.len() / pixels.max(1);
    if n < 2 || n > reference.n || n > other.n {
        return Err(Error::config(format!(
            "judging needs 2..={} samples, got {n}",
            reference.n.min(other.n)
        )));
    }
    let x = Tensor::from_vec(
        samples.to_vec(),
        (n, 1, reference.rows, reference.cols),
        device,
    )?;
    let accuracy = match labels {
        Some(l) => {
            let pred = classifier.predict(&x)?;
            Some(pred.iter().zip(l).filter(|(p, l)| p == l).count() as f64 / n as f64)
        }
        None => None,
    };
    let idx: Vec<usize> = (0..n).collect();
    let (real, _) = images(reference, &idx, device)?;
    let (real2, _) = images(other, &idx, device)?;
    let f_real = classifier.features_of(&real)?;
    Ok(ImageQuality {
        accuracy,
        frechet: crate::metrics::frechet_distance(&classifier.features_of(&x)?, &f_real, FEATURES)?,
        frechet_floor: crate::metrics::frechet_distance(
            &classifier.features_of(&real2)?,
            &f_real,
            FEATURES,
        )?,
    })
}
