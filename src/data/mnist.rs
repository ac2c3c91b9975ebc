//! MNIST-layout image sets: the real MNIST embedded in the binary, or any
//! folder holding the four IDX files of the same layout (e.g. Fashion-MNIST).

use std::path::{Path, PathBuf};

use super::idx::{IdxU8, parse_idx, read_idx};
use crate::{Error, Result};

/// The four file stems of an MNIST-layout folder; each may end in `.gz` or not.
pub const FILE_STEMS: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

const EMBEDDED: [&[u8]; 4] = [
    include_bytes!("../../assets/mnist/train-images-idx3-ubyte.gz"),
    include_bytes!("../../assets/mnist/train-labels-idx1-ubyte.gz"),
    include_bytes!("../../assets/mnist/t10k-images-idx3-ubyte.gz"),
    include_bytes!("../../assets/mnist/t10k-labels-idx1-ubyte.gz"),
];

/// Labelled greyscale images, `n` of `rows x cols` pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Number of images.
    pub n: usize,
    /// Image height in pixels.
    pub rows: usize,
    /// Image width in pixels.
    pub cols: usize,
    /// Pixels, `(n, rows, cols)` row-major, 0 = background, 255 = ink.
    pub pixels: Vec<u8>,
    /// Class label of each image, `(n,)`.
    pub labels: Vec<u8>,
}

impl ImageSet {
    /// Number of classes: one more than the largest label (10 for MNIST).
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| usize::from(m) + 1)
    }

    /// Pixels of image `i`, `rows * cols` bytes, or `None` if out of range.
    pub fn image(&self, i: usize) -> Option<&[u8]> {
        let len = self.rows * self.cols;
        self.pixels.get(i * len..(i + 1) * len)
    }

    /// Builds a set from an images IDX array `(n, rows, cols)` and a labels IDX array `(n,)`.
    pub fn from_idx(
        images: IdxU8,
        labels: IdxU8,
        images_name: &Path,
        labels_name: &Path,
    ) -> Result<Self> {
        let [n, rows, cols] = images.dims[..] else {
            return Err(Error::data(
                images_name,
                format!(
                    "expected 3 dimensions (images, rows, columns), found {:?}",
                    images.dims
                ),
            ));
        };
        if n == 0 || rows == 0 || cols == 0 {
            return Err(Error::data(
                images_name,
                format!("empty image set {:?}", images.dims),
            ));
        }
        let [nl] = labels.dims[..] else {
            return Err(Error::data(
                labels_name,
                format!("expected 1 dimension (labels), found {:?}", labels.dims),
            ));
        };
        if nl != n {
            return Err(Error::data(
                labels_name,
                format!(
                    "holds {nl} labels but {} holds {n} images",
                    images_name.display()
                ),
            ));
        }
        Ok(ImageSet {
            n,
            rows,
            cols,
            pixels: images.data,
            labels: labels.data,
        })
    }
}

/// Training and test split of an MNIST-layout set.
#[derive(Debug, Clone, PartialEq)]
pub struct Mnist {
    /// The training images (60,000 for MNIST).
    pub train: ImageSet,
    /// The test images (10,000 for MNIST).
    pub test: ImageSet,
}

impl Mnist {
    /// The real MNIST, embedded in the binary (no download, works from any folder).
    pub fn embedded() -> Result<Mnist> {
        let [n0, n1, n2, n3] = FILE_STEMS.map(|s| PathBuf::from(format!("<embedded>/{s}.gz")));
        let [a, b, c, d] = EMBEDDED;
        Ok(Mnist {
            train: ImageSet::from_idx(parse_idx(a, &n0)?, parse_idx(b, &n1)?, &n0, &n1)?,
            test: ImageSet::from_idx(parse_idx(c, &n2)?, parse_idx(d, &n3)?, &n2, &n3)?,
        })
    }

    /// Reads the four IDX files (`train-images-idx3-ubyte[.gz]`, ...) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Mnist> {
        let mut found = Vec::with_capacity(4);
        for stem in FILE_STEMS {
            let plain = dir.join(stem);
            let gz = dir.join(format!("{stem}.gz"));
            if gz.is_file() {
                found.push(gz);
            } else if plain.is_file() {
                found.push(plain);
            } else {
                return Err(Error::data(
                    dir,
                    format!("missing {stem} (or {stem}.gz) in this folder"),
                ));
            }
        }
        let Ok([train_img, train_lab, test_img, test_lab]) = <[PathBuf; 4]>::try_from(found) else {
            return Err(Error::data(dir, "expected four IDX files"));
        };
        let set = |img: &Path, lab: &Path| -> Result<ImageSet> {
            ImageSet::from_idx(read_idx(img)?, read_idx(lab)?, img, lab)
        };
        let train = set(&train_img, &train_lab)?;
        let test = set(&test_img, &test_lab)?;
        if (train.rows, train.cols) != (test.rows, test.cols) {
            return Err(Error::data(
                &test_img,
                format!(
                    "test images are {}x{} but training images are {}x{}",
                    test.rows, test.cols, train.rows, train.cols
                ),
            ));
        }
        Ok(Mnist { train, test })
    }

    /// The embedded MNIST when `dir` is `None`, otherwise the set in `dir`.
    pub fn load(dir: Option<&Path>) -> Result<Mnist> {
        match dir {
            Some(d) => Self::from_dir(d),
            None => Self::embedded(),
        }
    }
}
