//! Seeded randomness. candle's own CPU random number generator cannot be seeded,
//! so every random draw in FlowLab comes from `rand` generators derived here.
//!
//! A run's seed is split into independent *streams* (initial weights, batches,
//! held-out data, sampling noise), and within a stream into numbered draws (the
//! batch of step k uses draw k). Resuming at step k therefore reproduces exactly
//! the batches an unbroken run would have drawn, with no generator state to save.

use candle_core::{Device, Tensor};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use rand_distr::{Distribution as _, StandardNormal};

use crate::Result;

/// Independent random streams of one seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Initial weights.
    Init = 1,
    /// Training batches (draw = step index).
    Batch = 2,
    /// The fixed held-out batch.
    HeldOut = 3,
    /// Source noise for sampling (draw = request number).
    Noise = 4,
    /// Evaluation data (fresh reference points).
    Eval = 5,
}

/// The generator for draw `index` of `stream` under `seed`.
pub fn stream_rng(seed: u64, stream: Stream, index: u64) -> StdRng {
    // SplitMix64-style mixing of the three numbers into one 64-bit seed.
    let mut z = seed
        .wrapping_add((stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    StdRng::seed_from_u64(z ^ (z >> 31))
}

/// `n` independent standard normal values.
pub fn gaussian(n: usize, rng: &mut StdRng) -> Vec<f32> {
    StandardNormal.sample_iter(rng).take(n).collect()
}

/// Standard normal noise of shape `(n, sample_shape...)` from draw `index` of the
/// [`Stream::Noise`] stream of `seed`: the same seed always gives the same noise.
pub fn noise(
    n: usize,
    sample_shape: &[usize],
    seed: u64,
    index: u64,
    device: &Device,
) -> Result<Tensor> {
    let mut shape = vec![n];
    shape.extend_from_slice(sample_shape);
    let count: usize = shape.iter().product();
    let mut rng = stream_rng(seed, Stream::Noise, index);
    Ok(Tensor::from_vec(gaussian(count, &mut rng), shape, device)?)
}
