//! Drawing samples: fixed source noise from a seed, pushed through the learned
//! flow from t = 0 (noise) to t = 1 (data).

use candle_core::{Device, Tensor};

use crate::Result;
use crate::flow::Source;
use crate::model::{FlowModel, Guided, VelocityField};
use crate::rng::noise;
use crate::solver::{Integration, SolverConfig, integrate};

/// Largest batch pushed through the model at once.
pub const MAX_CHUNK: usize = 4096;

/// Values per chunk (samples x values per sample) above which a chunk is split:
/// 2D points go 4096 at a time, 28x28 images 334 (a UNet's activations are
/// about a hundred times the image).
const CHUNK_VALUES: usize = 1 << 18;

/// Samples per chunk for samples of `dim` values.
fn chunk_len(dim: usize) -> usize {
    (CHUNK_VALUES / dim.max(1)).clamp(1, MAX_CHUNK)
}

/// Samples in model space.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    /// Shape of one sample, e.g. `[2]`.
    pub sample_shape: Vec<usize>,
    /// The samples at t = 1, flattened `(n, dim)`.
    pub data: Vec<f32>,
    /// Total function evaluations per sample batch (the NFE of the solver).
    pub nfe: usize,
    /// Times of the kept intermediate states (empty unless requested).
    pub times: Vec<f64>,
    /// Intermediate states at `times`, each flattened `(n, dim)`.
    pub states: Vec<Vec<f32>>,
}

/// Draws `n` samples: source points (`source`, e.g. the Gaussian) from draw 0
/// of `seed`'s noise stream, integrated with `solver` from t = 0 to t = 1;
/// `keep_intermediates` keeps every step's state. A source on a manifold
/// integrates on that manifold (see [`crate::solver::Integration::manifold`]).
#[allow(clippy::too_many_arguments)]
pub fn sample(
    model: &dyn VelocityField,
    source: &Source,
    sample_shape: &[usize],
    n: usize,
    seed: u64,
    solver: &SolverConfig,
    keep_intermediates: bool,
    device: &Device,
) -> Result<Samples> {
    let x0 = source.noise(n, sample_shape, seed, 0, device)?;
    sample_from(model, &x0, solver, keep_intermediates, source.manifold())
}

/// Integrates given source points `x0`: `(n, ...)` from t = 0 to t = 1, in chunks
/// of at most [`MAX_CHUNK`] (fewer for large samples such as images), on
/// `manifold` when given.
pub fn sample_from(
    model: &dyn VelocityField,
    x0: &Tensor,
    solver: &SolverConfig,
    keep_intermediates: bool,
    manifold: Option<crate::flow::Manifold>,
) -> Result<Samples> {
    let n = x0.dim(0)?;
    let sample_shape = x0.dims().get(1..).unwrap_or_default().to_vec();
    let mut how = Integration::forward().on(manifold);
    how.keep_intermediates = keep_intermediates;
    let mut out = Samples {
        sample_shape,
        data: Vec::new(),
        nfe: 0,
        times: Vec::new(),
        states: Vec::new(),
    };
    let chunk_n = chunk_len(out.sample_shape.iter().product());
    let mut start = 0;
    while start < n {
        let len = chunk_n.min(n - start);
        let chunk = x0.narrow(0, start, len)?;
        let sol = integrate(model, &chunk, solver, &how)?;
        out.data.extend(sol.x.flatten_all()?.to_vec1::<f32>()?);
        out.nfe = out.nfe.max(sol.nfe);
        if keep_intermediates {
            if out.times.is_empty() {
                out.times = sol.times.clone();
                out.states = vec![Vec::new(); sol.states.len()];
            }
            for (dst, s) in out.states.iter_mut().zip(&sol.states) {
                dst.extend(s.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        start += len;
    }
    Ok(out)
}

/// Draws one class-conditional sample per entry of `labels` (each in
/// `0..model.classes()`) with classifier-free guidance scale `guidance`: noise
/// from draw 0 of `seed`'s noise stream (the same noise as [`sample`]),
/// integrated from t = 0 to t = 1.
pub fn sample_guided(
    model: &dyn FlowModel,
    sample_shape: &[usize],
    labels: &[u32],
    guidance: f64,
    seed: u64,
    solver: &SolverConfig,
    device: &Device,
) -> Result<Samples> {
    let n = labels.len();
    let x0 = noise(n, sample_shape, seed, 0, device)?;
    let how = Integration::forward();
    let mut out = Samples {
        sample_shape: sample_shape.to_vec(),
        data: Vec::new(),
        nfe: 0,
        times: Vec::new(),
        states: Vec::new(),
    };
    // Guidance evaluates two velocities per sample: half the usual chunk.
    let chunk_n = (chunk_len(sample_shape.iter().product()) / 2).max(1);
    for (i, chunk_labels) in labels.chunks(chunk_n).enumerate() {
        let len = chunk_labels.len();
        let chunk = x0.narrow(0, i * chunk_n, len)?;
        let l = Tensor::from_vec(chunk_labels.to_vec(), len, device)?;
        let field = Guided::new(model, &l, guidance)?;
        let sol = integrate(&field, &chunk, solver, &how)?;
        out.data.extend(sol.x.flatten_all()?.to_vec1::<f32>()?);
        out.nfe = out.nfe.max(sol.nfe);
    }
    Ok(out)
}
