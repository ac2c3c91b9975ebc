//! Checkpoints: one `.safetensors` file holding the weights (`model.*`), the EMA
//! weights (`ema.*`) and the AdamW moments (`opt.m.*`, `opt.v.*`), with the full
//! [`TrainConfig`], step, seed, sample shape and format version as JSON in the
//! safetensors metadata, so a file alone rebuilds its model and resumes training.
//!
//! A *weights-only* checkpoint ([`Checkpoint::weights_only`]) keeps just the
//! sampling weights (the EMA weights when present) as `model.*`, plus the
//! config and loss history: a quarter of the size, for shipping pretrained
//! models. It still opens for training, with fresh optimiser moments.
//!
//! Writes are atomic (temporary file + rename). Loading checks, with a message
//! naming the file: that it is safetensors at all, that FlowLab wrote it, its
//! format version, a CRC-32 of every tensor's bytes (catches corruption), that
//! the tensors match the architecture in the config, and that weights are finite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load as _;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::Standardizer;
use crate::model::FlowModel;
use crate::train::{Params, TrainConfig, Trainer};
use crate::{Error, Result};

/// Metadata key marking a FlowLab checkpoint.
pub const FORMAT_KEY: &str = "flowlab.format";
/// Value of [`FORMAT_KEY`].
pub const FORMAT_NAME: &str = "flowlab-checkpoint";
/// Metadata key of the JSON [`CheckpointMeta`].
pub const META_KEY: &str = "flowlab.meta";
/// Most values in one sample that a checkpoint may declare (a 4096x4096 image).
pub const MAX_SAMPLE_VALUES: usize = 1 << 24;

/// Tensor holding the loss history `(n, 3)`: step, loss, held-out loss (NaN when not measured).
pub const HISTORY_KEY: &str = "history.loss";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Everything about a checkpoint except its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Format version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// The FlowLab version that wrote the file.
    pub flowlab_version: String,
    /// The run's full configuration (includes the seed).
    pub config: TrainConfig,
    /// Training steps completed.
    pub step: u64,
    /// Shape of one sample, e.g. `[2]` or `[1, 28, 28]`.
    pub sample_shape: Vec<usize>,
    /// Map from model space to data space for 2D sets (`None` for images).
    pub standardizer: Option<Standardizer>,
    /// Number of model parameters.
    pub param_count: usize,
    /// CRC-32 of the tensors' bytes, in name order.
    pub crc32: u32,
    /// When the file was written (seconds since the Unix epoch).
    pub created_unix_secs: u64,
}

impl CheckpointMeta {
    /// Maps flattened model-space samples to the dataset's own coordinates in place.
    pub fn to_data_space(&self, x: &mut [f32]) {
        match (&self.standardizer, self.config.dataset.is_image()) {
            (Some(s), _) => s.to_data(x),
            (None, true) => x
                .iter_mut()
                .for_each(|v| *v = ((*v + 1.0) * 127.5).clamp(0.0, 255.0)),
            (None, false) => {}
        }
    }
}

/// A checkpoint in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The metadata.
    pub meta: CheckpointMeta,
    /// Tensors by name (`model.*`, `ema.*`, `opt.m.*`, `opt.v.*`).
    pub tensors: HashMap<String, Tensor>,
}

fn crc_of<'a>(mut named: Vec<(&'a str, &'a [u8])>) -> u32 {
    named.sort_by(|a, b| a.0.cmp(b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, bytes) in named {
        h.update(name.as_bytes());
        h.update(bytes);
    }
    h.finalize()
}

fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

impl Checkpoint {
    /// Captures the full state of a trainer.
    pub fn from_trainer(tr: &Trainer) -> Result<Checkpoint> {
        let params = tr.params();
        let mut tensors = HashMap::new();
        let (m, v) = tr.optimizer().moments()?;
        for (i, name) in params.names.iter().enumerate() {
            let (Some(p), Some(mi), Some(vi)) = (params.vars.get(i), m.get(i), v.get(i)) else {
                return Err(Error::config(
                    "optimizer state does not match the parameters",
                ));
            };
            tensors.insert(format!("model.{name}"), p.as_tensor().copy()?);
            tensors.insert(format!("opt.m.{name}"), mi.copy()?);
            tensors.insert(format!("opt.v.{name}"), vi.copy()?);
        }
        let history = tr.history();
        if !history.is_empty() {
            let flat: Vec<f32> = history.iter().flatten().copied().collect();
            tensors.insert(
                HISTORY_KEY.to_string(),
                Tensor::from_vec(flat, (history.len(), 3), &Device::Cpu)?,
            );
        }
        if let Some(ema) = tr.ema_params() {
            for (name, var) in ema.names.iter().zip(&ema.vars) {
                tensors.insert(format!("ema.{name}"), var.as_tensor().copy()?);
            }
        }
        let created_unix_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let meta = CheckpointMeta {
            format_version: FORMAT_VERSION,
            flowlab_version: env!("CARGO_PKG_VERSION").to_string(),
            config: tr.config().clone(),
            step: tr.step_count(),
            sample_shape: tr.sample_shape().to_vec(),
            standardizer: tr.dataset().standardizer(),
            param_count: params.count(),
            crc32: 0,
            created_unix_secs,
        };
        Ok(Checkpoint { meta, tensors })
    }

    /// Whether the file holds the optimiser state (false for a weights-only checkpoint).
    pub fn has_optimizer_state(&self) -> bool {
        self.tensors.keys().any(|k| k.starts_with("opt."))
    }

    /// A weights-only copy: the sampling weights (EMA when stored, else the
    /// training weights) as `model.*`, the loss history and the metadata; no
    /// EMA copy and no optimiser moments.
    pub fn weights_only(&self) -> Checkpoint {
        let has_ema = self.tensors.keys().any(|k| k.starts_with("ema."));
        let keep = if has_ema { "ema." } else { "model." };
        let mut tensors = HashMap::new();
        for (k, t) in &self.tensors {
            if let Some(name) = k.strip_prefix(keep) {
                tensors.insert(format!("model.{name}"), t.clone());
            } else if k == HISTORY_KEY {
                tensors.insert(k.clone(), t.clone());
            }
        }
        Checkpoint {
            meta: self.meta.clone(),
            tensors,
        }
    }

    /// Serialises to safetensors bytes (CRC filled in).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut owned = Vec::with_capacity(self.tensors.len());
        for (k, t) in &self.tensors {
            owned.push((k.as_str(), tensor_bytes(t)?));
        }
        let mut meta = self.meta.clone();
        meta.crc32 = crc_of(owned.iter().map(|(k, b)| (*k, b.as_slice())).collect());
        let json = serde_json::to_string(&meta).map_err(|e| Error::config(e.to_string()))?;
        let info = HashMap::from([
            (FORMAT_KEY.to_string(), FORMAT_NAME.to_string()),
            (META_KEY.to_string(), json),
        ]);
        let mut sorted: Vec<(&String, Tensor)> = Vec::with_capacity(self.tensors.len());
        for (k, t) in &self.tensors {
            sorted.push((k, t.to_dtype(DType::F32)?.contiguous()?));
        }
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        safetensors::serialize(sorted, Some(info))
            .map_err(|e| Error::config(format!("cannot serialise checkpoint: {e}")))
    }

    /// Writes the checkpoint to `path` atomically (creating its folder).
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::fsutil::ensure_parent(path)?;
        crate::fsutil::write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a checkpoint from `path`.
    pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        Self::from_bytes(&bytes, path, device)
    }

    /// Parses checkpoint bytes; `path` names the source in error messages.
    pub fn from_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<Checkpoint> {
        let err = |reason: String| Error::checkpoint(path, reason);
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
            err(format!(
                "not a readable safetensors file ({e}); the file may be truncated, corrupt or of another format"
            ))
        })?;
        let info = header.metadata().clone().unwrap_or_default();
        if info.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT_NAME) {
            return Err(err(
                "this safetensors file was not written by FlowLab (no FlowLab metadata); it holds someone else's model"
                    .into(),
            ));
        }
        let json = info
            .get(META_KEY)
            .ok_or_else(|| err("FlowLab metadata is missing".into()))?;
        let version: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| err(format!("FlowLab metadata is not valid JSON: {e}")))?;
        let found = version.get("format_version").and_then(|v| v.as_u64());
        if found != Some(u64::from(FORMAT_VERSION)) {
            return Err(err(format!(
                "format version {} is not supported by this FlowLab (reads version {FORMAT_VERSION})",
                found.map_or_else(|| "unknown".to_string(), |v| v.to_string())
            )));
        }
        let meta: CheckpointMeta = serde_json::from_value(version)
            .map_err(|e| err(format!("FlowLab metadata is invalid: {e}")))?;
        meta.config
            .validate()
            .map_err(|e| err(format!("the stored configuration is invalid: {e}")))?;
        let values = meta
            .sample_shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d).filter(|_| d > 0));
        if meta.sample_shape.is_empty()
            || meta.sample_shape.len() > 4
            || values.is_none_or(|v| v > MAX_SAMPLE_VALUES)
        {
            return Err(err(format!(
                "its sample shape {:?} is out of range (1 to 4 sizes, at most {MAX_SAMPLE_VALUES} values)",
                meta.sample_shape
            )));
        }
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| err(format!("the file is truncated or corrupt ({e})")))?;
        let named: Vec<(&str, &[u8])> = st.iter().map(|(n, v)| (n, v.data())).collect();
        if crc_of(named) != meta.crc32 {
            return Err(err("the tensor data is corrupt (checksum mismatch)".into()));
        }
        let mut tensors = HashMap::new();
        for (name, view) in st.iter() {
            let t = view
                .load(device)
                .map_err(|e| err(format!("tensor {name} cannot be read: {e}")))?;
            tensors.insert(name.to_string(), t);
        }
        Ok(Checkpoint { meta, tensors })
    }

    /// The tensors `prefix.{name}` for every parameter, checked against the model's shapes.
    fn take(&self, prefix: &str, params: &Params, path: &Path) -> Result<Vec<Tensor>> {
        let mismatch = |reason: String| {
            Error::checkpoint(
                path,
                format!(
                    "its weights do not match the model described in its configuration: {reason}"
                ),
            )
        };
        let stored = self
            .tensors
            .keys()
            .filter(|k| k.strip_prefix(prefix).is_some_and(|r| r.starts_with('.')))
            .count();
        if stored != params.names.len() {
            return Err(mismatch(format!(
                "{stored} `{prefix}` tensors stored, the model has {}",
                params.names.len()
            )));
        }
        let mut out = Vec::with_capacity(params.names.len());
        for (name, var) in params.names.iter().zip(&params.vars) {
            let key = format!("{prefix}.{name}");
            let t = self
                .tensors
                .get(&key)
                .ok_or_else(|| mismatch(format!("tensor {key} is missing")))?;
            if t.dims() != var.dims() {
                return Err(mismatch(format!(
                    "tensor {key} has shape {:?}, the model needs {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            let finite = t
                .abs()?
                .max_all()?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?
                .is_finite();
            if !finite {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor {key} contains NaN or infinite values"),
                ));
            }
            out.push(t.to_dtype(DType::F32)?);
        }
        Ok(out)
    }

    /// Checks, before any parameter is allocated, that the stored `model.*`
    /// tensors have exactly the names and shapes that the stored configuration
    /// asks for: the model is built on the file's own tensors, so a file whose
    /// configuration claims a far larger network than it holds is refused
    /// instead of allocating it.
    fn check_architecture(&self, path: &Path) -> Result<()> {
        let stored: HashMap<String, Tensor> = self
            .tensors
            .iter()
            .filter_map(|(k, t)| Some((k.strip_prefix("model.")?.to_string(), t.clone())))
            .collect();
        let count = stored.len();
        let vb = candle_nn::VarBuilder::from_tensors(stored, DType::F32, &Device::Cpu);
        self.meta
            .config
            .model
            .build(&self.meta.sample_shape, vb)
            .map_err(|e| {
                // The first line: candle appends a backtrace when one was captured.
                let reason = e.to_string();
                let reason = reason.lines().next().unwrap_or_default().to_string();
                let reason = reason.trim_start_matches("tensor error: ").to_string();
                Error::checkpoint(
                    path,
                    format!(
                        "its weights do not match the model described in its configuration ({count} `model` tensors stored): {reason}"
                    ),
                )
            })?;
        Ok(())
    }

    /// Rebuilds the model for sampling, with the EMA weights when stored
    /// (`prefer_ema`), else the training weights. `path` names the file in errors.
    pub fn model(
        &self,
        device: &Device,
        prefer_ema: bool,
        path: &Path,
    ) -> Result<Box<dyn FlowModel>> {
        self.check_architecture(path)?;
        let (model, params) =
            Params::build(&self.meta.config.model, &self.meta.sample_shape, device)
                .map_err(|e| Error::checkpoint(path, format!("cannot build its model: {e}")))?;
        let has_ema = self.tensors.keys().any(|k| k.starts_with("ema."));
        let prefix = if prefer_ema && has_ema {
            "ema"
        } else {
            "model"
        };
        params.set_all(&self.take(prefix, &params, path)?)?;
        Ok(model)
    }

    /// Rebuilds a trainer in exactly the saved state, so training resumes where
    /// it stopped. A weights-only file resumes with zero optimiser moments (and
    /// the bias correction restarted) and its weights as the EMA.
    pub fn into_trainer(self, device: &Device, path: &Path) -> Result<Trainer> {
        self.check_architecture(path)?;
        let mut tr = Trainer::new(self.meta.config.clone(), device)?;
        if tr.sample_shape() != self.meta.sample_shape.as_slice() {
            return Err(Error::checkpoint(
                path,
                format!(
                    "it was trained on samples of shape {:?} but the dataset now gives {:?}",
                    self.meta.sample_shape,
                    tr.sample_shape()
                ),
            ));
        }
        let params = tr.params().clone();
        let weights = self.take("model", &params, path)?;
        let ema = match tr.ema_params() {
            Some(_) if self.tensors.keys().any(|k| k.starts_with("ema.")) => {
                Some(self.take("ema", &params, path)?)
            }
            _ => None,
        };
        let moments = if self.has_optimizer_state() {
            let m = self.take("opt.m", &params, path)?;
            let v = self.take("opt.v", &params, path)?;
            Some((m, v))
        } else {
            None
        };
        tr.restore(&weights, ema.as_deref(), moments, self.meta.step)?;
        tr.set_history(self.history(path)?);
        Ok(tr)
    }

    /// The stored loss history (empty when the file has none).
    pub fn history(&self, path: &Path) -> Result<Vec<[f32; 3]>> {
        let Some(t) = self.tensors.get(HISTORY_KEY) else {
            return Ok(Vec::new());
        };
        if t.rank() != 2 || t.dims().get(1) != Some(&3) {
            return Err(Error::checkpoint(
                path,
                format!("its loss history has shape {:?}, expected (n, 3)", t.dims()),
            ));
        }
        let flat = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(flat.as_chunks::<3>().0.to_vec())
    }
}

/// A checkpoint loaded for sampling: its metadata and its model (EMA weights when present).
pub struct LoadedModel {
    /// The checkpoint's metadata.
    pub meta: CheckpointMeta,
    /// The velocity field.
    pub model: Box<dyn FlowModel>,
    /// The file it came from.
    pub path: PathBuf,
}

impl LoadedModel {
    /// Loads `path` and rebuilds its model on `device`.
    pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
        let ckpt = Checkpoint::load(path, device)?;
        let model = ckpt.model(device, true, path)?;
        Ok(LoadedModel {
            meta: ckpt.meta,
            model,
            path: path.to_path_buf(),
        })
    }
}
