//! The source distribution p_0 at t = 0: the standard Gaussian, or (for 2D
//! data) one of the 2D toy sets, standardised to zero mean and unit variance
//! with its own [`Standardizer`], so a flow can carry e.g. 8 gaussians to moons;
//! or, for data on a manifold, the uniform distribution on that manifold.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::data::{Standardizer, Toy2d};
use crate::flow::Manifold;
use crate::rng::{Stream, gaussian, stream_rng};
use crate::{Error, Result};

/// The distribution of x_0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Source {
    /// N(0, I) in model space.
    #[default]
    Gaussian,
    /// A 2D toy set, standardised on its own.
    Toy2d {
        /// Which set.
        toy: Toy2d,
    },
    /// The uniform distribution on a manifold (Riemannian flow matching).
    Uniform {
        /// Which manifold.
        manifold: Manifold,
    },
}

impl Source {
    /// Its name in menus and on the command line (`gaussian` or the set's name).
    pub fn name(&self) -> &'static str {
        match self {
            Source::Gaussian => "gaussian",
            Source::Toy2d { toy } => toy.name(),
            Source::Uniform { manifold } => match manifold {
                Manifold::Sphere => "uniform-sphere",
                Manifold::Torus => "uniform-torus",
            },
        }
    }

    /// The manifold of a uniform-on-a-manifold source.
    pub fn manifold(&self) -> Option<Manifold> {
        match self {
            Source::Uniform { manifold } => Some(*manifold),
            _ => None,
        }
    }

    /// Looks a source up by name: `gaussian` or a 2D set's name.
    pub fn from_name(name: &str) -> Option<Source> {
        if name == "gaussian" {
            return Some(Source::Gaussian);
        }
        if let Some(manifold) = Manifold::ALL
            .into_iter()
            .find(|m| Source::Uniform { manifold: *m }.name() == name)
        {
            return Some(Source::Uniform { manifold });
        }
        Toy2d::from_name(name).map(|toy| Source::Toy2d { toy })
    }

    /// Checks the source suits samples of `sample_shape` (a 2D set needs 2D data).
    pub fn validate_for(&self, sample_shape: &[usize]) -> Result<()> {
        match self {
            Source::Gaussian => Ok(()),
            Source::Toy2d { toy } => {
                toy.validate()?;
                if sample_shape == [2] {
                    Ok(())
                } else {
                    Err(Error::config(format!(
                        "the source {} is 2D; samples of shape {sample_shape:?} need the gaussian source",
                        toy.name()
                    )))
                }
            }
            Source::Uniform { manifold } => {
                if sample_shape == [manifold.ambient_dim()] {
                    Ok(())
                } else {
                    Err(Error::config(format!(
                        "the uniform source on the {} is for points with {} coordinates, not samples of shape {sample_shape:?}",
                        manifold.name(),
                        manifold.ambient_dim()
                    )))
                }
            }
        }
    }

    /// `n` source points of `dim` values each in model space, flattened `(n, dim)`.
    pub fn draw(&self, n: usize, dim: usize, rng: &mut StdRng) -> Vec<f32> {
        match self {
            Source::Gaussian => gaussian(n * dim, rng),
            Source::Toy2d { toy } => {
                let mut v = toy.draw_n(n, rng);
                standardizer_of(toy).to_model(&mut v);
                v
            }
            Source::Uniform { manifold } => manifold.uniform(n, rng),
        }
    }

    /// Source points of shape `(n, sample_shape...)` from draw `index` of the
    /// noise stream of `seed` (the same seed always gives the same points; for
    /// the Gaussian these are exactly [`crate::rng::noise`]).
    pub fn noise(
        &self,
        n: usize,
        sample_shape: &[usize],
        seed: u64,
        index: u64,
        device: &Device,
    ) -> Result<Tensor> {
        let mut shape = vec![n];
        shape.extend_from_slice(sample_shape);
        let dim: usize = sample_shape.iter().product();
        let mut rng = stream_rng(seed, Stream::Noise, index);
        Ok(Tensor::from_vec(
            self.draw(n, dim, &mut rng),
            shape,
            device,
        )?)
    }
}

/// The fitted [`Standardizer`] of `toy`, computed once per set and parameters
/// (fitting draws many reference points; training draws a source batch every step).
fn standardizer_of(toy: &Toy2d) -> Standardizer {
    static CACHE: std::sync::Mutex<Vec<(Toy2d, Standardizer)>> = std::sync::Mutex::new(Vec::new());
    let mut cache = match CACHE.lock() {
        Ok(c) => c,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((_, s)) = cache.iter().find(|(t, _)| t == toy) {
        return *s;
    }
    let s = Standardizer::fit(toy);
    if cache.len() >= 64 {
        cache.clear();
    }
    cache.push((*toy, s));
    s
}
