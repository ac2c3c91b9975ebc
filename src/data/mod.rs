//! Datasets: seeded 2D toy sets, MNIST-layout image sets, distributions on the
//! sphere and the torus, and the [`Dataset`] abstraction the trainer draws
//! batches from.
//!
//! Data lives in two coordinate systems. *Data space* is what a person expects
//! (scikit-learn's moons geometry, pixel values 0-255). *Model space* is what a
//! model trains on: standardised 2D points (see [`Standardizer`]) or pixels
//! scaled to [-1, 1]. [`Dataset::to_data_space`] maps samples back.

pub mod idx;
pub mod manifold;
pub mod mnist;
pub mod toy;

use std::path::PathBuf;

use rand::RngExt as _;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

pub use manifold::ManifoldSet;
pub use mnist::{ImageSet, Mnist};
pub use toy::{Standardizer, Toy2d};

use crate::Result;
use crate::flow::Manifold;

/// Which data a run trains on. Serialised into configs and checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DatasetKind {
    /// A 2D toy distribution.
    Toy2d {
        /// Which one, with its parameters.
        toy: Toy2d,
    },
    /// An MNIST-layout image set (28x28 greyscale for MNIST itself).
    Mnist {
        /// Folder with the four IDX files; `None` means the MNIST embedded in the binary.
        dir: Option<PathBuf>,
    },
    /// A distribution on the sphere or the torus (Riemannian flow matching).
    Manifold {
        /// Which one, with its parameters.
        set: ManifoldSet,
    },
}

impl DatasetKind {
    /// Looks a dataset up by its command-line name (`moons`, ..., `mnist`).
    pub fn from_name(name: &str, mnist_dir: Option<PathBuf>) -> Option<DatasetKind> {
        if name == "mnist" {
            return Some(DatasetKind::Mnist { dir: mnist_dir });
        }
        if let Some(set) = ManifoldSet::from_name(name) {
            return Some(DatasetKind::Manifold { set });
        }
        Toy2d::from_name(name).map(|toy| DatasetKind::Toy2d { toy })
    }

    /// Every command-line dataset name.
    pub fn names() -> Vec<&'static str> {
        let mut v: Vec<_> = Toy2d::ALL.iter().map(|t| t.name()).collect();
        v.push("mnist");
        v.extend(ManifoldSet::ALL.iter().map(|s| s.name()));
        v
    }

    /// The command-line name of this dataset.
    pub fn name(&self) -> &'static str {
        match self {
            DatasetKind::Toy2d { toy } => toy.name(),
            DatasetKind::Mnist { .. } => "mnist",
            DatasetKind::Manifold { set } => set.name(),
        }
    }

    /// The manifold the data lives on (`None`: flat R^d).
    pub fn manifold(&self) -> Option<Manifold> {
        match self {
            DatasetKind::Manifold { set } => Some(set.manifold()),
            _ => None,
        }
    }

    /// Whether samples are 2D points (a toy set in the plane).
    pub fn is_2d(&self) -> bool {
        matches!(self, DatasetKind::Toy2d { .. })
    }

    /// Whether samples are images (their size is known once the set is loaded;
    /// see [`Dataset::sample_shape`]).
    pub fn is_image(&self) -> bool {
        matches!(self, DatasetKind::Mnist { .. })
    }

    /// Loads (or sets up) the dataset.
    pub fn build(&self) -> Result<Box<dyn Dataset>> {
        match self {
            DatasetKind::Toy2d { toy } => {
                toy.validate()?;
                Ok(Box::new(ToyDataset::new(*toy)))
            }
            DatasetKind::Mnist { dir } => {
                Ok(Box::new(ImageDataset::new(Mnist::load(dir.as_deref())?)))
            }
            DatasetKind::Manifold { set } => {
                set.validate()?;
                Ok(Box::new(ManifoldDataset::new(*set)))
            }
        }
    }
}

/// A source of training and held-out samples.
pub trait Dataset: Send + Sync {
    /// Shape of one sample in model space, e.g. `[2]` or `[1, 28, 28]`.
    fn sample_shape(&self) -> Vec<usize>;

    /// Number of values in one sample (the product of [`Dataset::sample_shape`]).
    fn dim(&self) -> usize {
        self.sample_shape().iter().product()
    }

    /// Draws `n` training samples in model space, flattened row-major: `(n, dim)`.
    fn sample_train(&self, n: usize, rng: &mut StdRng) -> Vec<f32>;

    /// Draws `n` held-out samples (fresh draws for 2D sets, the test split for
    /// images) in model space, flattened: `(n, dim)`.
    fn sample_held_out(&self, n: usize, rng: &mut StdRng) -> Vec<f32>;

    /// Number of classes of the labels (0: the data is unlabelled).
    fn classes(&self) -> usize {
        0
    }

    /// Like [`Dataset::sample_train`] (the same draws), with each sample's class
    /// label (empty for unlabelled data).
    fn sample_train_labeled(&self, n: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<u32>) {
        (self.sample_train(n, rng), Vec::new())
    }

    /// Like [`Dataset::sample_held_out`] (the same draws), with labels.
    fn sample_held_out_labeled(&self, n: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<u32>) {
        (self.sample_held_out(n, rng), Vec::new())
    }

    /// Maps flattened model-space samples to data space in place.
    fn to_data_space(&self, x: &mut [f32]);

    /// The affine map of a 2D set, `None` for images and manifolds.
    fn standardizer(&self) -> Option<Standardizer>;

    /// The manifold the samples lie on (`None`: flat R^d).
    fn manifold(&self) -> Option<Manifold> {
        None
    }
}

/// Points on the sphere (unit vectors, `(n, 3)`) or the torus (`(n, 4)`, see
/// [`crate::flow::manifold`]). Model space and data space are the same.
#[derive(Debug, Clone)]
pub struct ManifoldDataset {
    set: ManifoldSet,
}

impl ManifoldDataset {
    /// Wraps a manifold distribution.
    pub fn new(set: ManifoldSet) -> Self {
        ManifoldDataset { set }
    }

    /// The distribution.
    pub fn set(&self) -> ManifoldSet {
        self.set
    }
}

impl Dataset for ManifoldDataset {
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.set.manifold().ambient_dim()]
    }

    fn sample_train(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        self.set.draw_n(n, rng)
    }

    fn sample_held_out(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        self.set.draw_n(n, rng)
    }

    fn to_data_space(&self, _x: &mut [f32]) {}

    fn standardizer(&self) -> Option<Standardizer> {
        None
    }

    fn manifold(&self) -> Option<Manifold> {
        Some(self.set.manifold())
    }
}

/// A 2D toy set, standardised.
#[derive(Debug, Clone)]
pub struct ToyDataset {
    toy: Toy2d,
    std: Standardizer,
}

impl ToyDataset {
    /// Sets up `toy` with its fitted [`Standardizer`].
    pub fn new(toy: Toy2d) -> Self {
        ToyDataset {
            toy,
            std: Standardizer::fit(&toy),
        }
    }

    /// The underlying generator.
    pub fn toy(&self) -> Toy2d {
        self.toy
    }
}

impl Dataset for ToyDataset {
    fn sample_shape(&self) -> Vec<usize> {
        vec![2]
    }

    fn sample_train(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        let mut v = self.toy.draw_n(n, rng);
        self.std.to_model(&mut v);
        v
    }

    fn sample_held_out(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        self.sample_train(n, rng)
    }

    fn to_data_space(&self, x: &mut [f32]) {
        self.std.to_data(x);
    }

    fn standardizer(&self) -> Option<Standardizer> {
        Some(self.std)
    }
}

/// Greyscale images with pixels scaled to [-1, 1]: `model = pixel / 127.5 − 1`.
#[derive(Debug, Clone)]
pub struct ImageDataset {
    set: Mnist,
}

impl ImageDataset {
    /// Wraps a loaded image set.
    pub fn new(set: Mnist) -> Self {
        ImageDataset { set }
    }

    /// The loaded images.
    pub fn images(&self) -> &Mnist {
        &self.set
    }

    /// `n` random images (scaled to [-1, 1]) and their labels.
    fn draw(images: &ImageSet, n: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<u32>) {
        let len = images.rows * images.cols;
        let mut out = Vec::with_capacity(n * len);
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let i = rng.random_range(0..images.n);
            if let (Some(img), Some(&label)) = (images.image(i), images.labels.get(i)) {
                out.extend(img.iter().map(|&p| f32::from(p) / 127.5 - 1.0));
                labels.push(u32::from(label));
            }
        }
        (out, labels)
    }
}

impl Dataset for ImageDataset {
    fn sample_shape(&self) -> Vec<usize> {
        vec![1, self.set.train.rows, self.set.train.cols]
    }

    fn sample_train(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        Self::draw(&self.set.train, n, rng).0
    }

    fn sample_held_out(&self, n: usize, rng: &mut StdRng) -> Vec<f32> {
        Self::draw(&self.set.test, n, rng).0
    }

    /// One more than the largest training label (10 for MNIST).
    fn classes(&self) -> usize {
        self.set.train.classes()
    }

    fn sample_train_labeled(&self, n: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<u32>) {
        Self::draw(&self.set.train, n, rng)
    }

    fn sample_held_out_labeled(&self, n: usize, rng: &mut StdRng) -> (Vec<f32>, Vec<u32>) {
        Self::draw(&self.set.test, n, rng)
    }

    fn to_data_space(&self, x: &mut [f32]) {
        for v in x {
            *v = ((*v + 1.0) * 127.5).clamp(0.0, 255.0);
        }
    }

    fn standardizer(&self) -> Option<Standardizer> {
        None
    }
}
