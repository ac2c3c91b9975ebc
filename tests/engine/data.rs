//! Toy generators, standardisation, IDX parsing and MNIST loading.

use std::io::Write as _;
use std::path::Path;

use flowlab::data::idx::{encode_idx, parse_idx};
use flowlab::data::{Dataset, DatasetKind, Mnist, Standardizer, Toy2d, ToyDataset};
use flowlab::rng::{Stream, stream_rng};

use crate::common::temp_dir;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn generators_are_seeded_and_standardised() {
    for toy in Toy2d::ALL {
        let ds = ToyDataset::new(toy);
        let a = ds.sample_train(5000, &mut stream_rng(3, Stream::Batch, 0));
        let b = ds.sample_train(5000, &mut stream_rng(3, Stream::Batch, 0));
        let c = ds.sample_train(5000, &mut stream_rng(4, Stream::Batch, 0));
        assert_eq!(a, b, "{toy:?}: same seed, same points");
        assert_ne!(a, c, "{toy:?}: other seed, other points");
        let n = 5000.0;
        let mean = [0, 1].map(|k| {
            a.iter()
                .skip(k)
                .step_by(2)
                .map(|v| f64::from(*v))
                .sum::<f64>()
                / n
        });
        let var = a
            .chunks_exact(2)
            .map(|p| (f64::from(p[0]) - mean[0]).powi(2) + (f64::from(p[1]) - mean[1]).powi(2))
            .sum::<f64>()
            / (2.0 * n);
        assert!(
            mean[0].abs() < 0.05 && mean[1].abs() < 0.05,
            "{toy:?}: mean {mean:?}"
        );
        assert!((var - 1.0).abs() < 0.06, "{toy:?}: average variance {var}");
        // Data space round trip.
        let mut back = a.clone();
        ds.to_data_space(&mut back);
        let mut again = back.clone();
        ds.standardizer().expect("2D").to_model(&mut again);
        assert!(a.iter().zip(&again).all(|(x, y)| (x - y).abs() < 1e-5));
    }
}

#[test]
fn moons_match_scikit_learn_geometry() {
    let toy = Toy2d::Moons { noise: 0.0 };
    let pts = toy.draw_n(2000, &mut stream_rng(0, Stream::Eval, 0));
    let (mut outer, mut inner) = (0i32, 0i32);
    for p in pts.chunks_exact(2) {
        let (x, y) = (f64::from(p[0]), f64::from(p[1]));
        let on_outer = ((x * x + y * y).sqrt() - 1.0).abs() < 1e-5 && y >= -1e-6;
        let on_inner =
            (((x - 1.0).powi(2) + (y - 0.5).powi(2)).sqrt() - 1.0).abs() < 1e-5 && y <= 0.5 + 1e-6;
        assert!(on_outer || on_inner, "point ({x}, {y}) is on neither moon");
        if on_outer { outer += 1 } else { inner += 1 }
    }
    assert!((outer - inner).abs() < 150, "halves {outer} / {inner}");
    // With noise the standardisation is fitted on the noisy set: x-mean 0.5, y-mean 0.25.
    let s = Standardizer::fit(&Toy2d::Moons { noise: 0.05 });
    assert!(
        (s.mean[0] - 0.5).abs() < 0.02 && (s.mean[1] - 0.25).abs() < 0.02,
        "{s:?}"
    );
}

#[test]
fn checkerboard_points_lie_on_dark_squares() {
    let pts = Toy2d::Checkerboard.draw_n(4000, &mut stream_rng(0, Stream::Eval, 0));
    for p in pts.chunks_exact(2) {
        let (i, j) = (p[0].floor() as i32, p[1].floor() as i32);
        assert!(
            (-2..2).contains(&i) && (-2..2).contains(&j),
            "{p:?} outside [-2, 2)^2"
        );
        assert_eq!((i + j).rem_euclid(2), 0, "{p:?} on a light square");
    }
}

#[test]
fn dataset_names_round_trip_and_bad_parameters_are_rejected() {
    for name in DatasetKind::names() {
        assert_eq!(
            DatasetKind::from_name(name, None).expect("known").name(),
            name
        );
    }
    assert!(DatasetKind::from_name("nope", None).is_none());
    assert!(
        DatasetKind::Toy2d {
            toy: Toy2d::Moons { noise: -1.0 }
        }
        .build()
        .is_err()
    );
    assert!(
        DatasetKind::Toy2d {
            toy: Toy2d::Circles {
                noise: 0.1,
                factor: 1.5
            }
        }
        .build()
        .is_err()
    );
}

#[test]
fn idx_parses_plain_and_gzip_and_round_trips() {
    let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    let bytes = encode_idx(&[2, 3, 4], &data).expect("encode");
    for b in [bytes.clone(), gz(&bytes)] {
        let idx = parse_idx(&b, Path::new("x.idx")).expect("parse");
        assert_eq!(idx.dims, vec![2, 3, 4]);
        assert_eq!(idx.data, data);
    }
}

#[test]
fn bad_idx_files_give_clear_errors_naming_the_file() {
    let good = encode_idx(&[2, 3, 4], &[7u8; 24]).expect("encode");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (good[..good.len() - 5].to_vec(), "truncated"),
        (good[..6].to_vec(), "truncated header"),
        (vec![0, 0], "too short"),
        ([good.clone(), vec![1, 2]].concat(), "unexpected bytes"),
        (
            {
                let mut b = good.clone();
                b[0] = 9;
                b
            },
            "not an IDX file",
        ),
        (
            {
                let mut b = good.clone();
                b[2] = 0x0d;
                b
            },
            "not supported",
        ),
        (gz(&good)[..20].to_vec(), "corrupt gzip"),
    ];
    for (bytes, expected) in cases {
        let err = parse_idx(&bytes, Path::new("some/file-idx3-ubyte"))
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("some/file-idx3-ubyte"),
            "error names the file: {err}"
        );
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
}

#[test]
fn embedded_mnist_loads_with_labels() {
    let m = Mnist::embedded().expect("embedded MNIST");
    assert_eq!((m.train.n, m.train.rows, m.train.cols), (60_000, 28, 28));
    assert_eq!(m.test.n, 10_000);
    assert!(m.train.labels.iter().chain(&m.test.labels).all(|&l| l < 10));
    // Every digit appears, roughly 6000 times each in training.
    for d in 0..10u8 {
        let c = m.train.labels.iter().filter(|&&l| l == d).count();
        assert!((5000..7000).contains(&c), "digit {d}: {c}");
    }
    let ds = DatasetKind::Mnist { dir: None }.build().expect("dataset");
    assert_eq!(ds.sample_shape(), vec![1, 28, 28]);
    let x = ds.sample_train(4, &mut stream_rng(0, Stream::Batch, 0));
    assert_eq!(x.len(), 4 * 784);
    assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
}

fn write_set(dir: &Path, n_train: usize, n_labels: usize, gzip: bool) {
    let img = encode_idx(&[n_train, 4, 5], &vec![100u8; n_train * 20]).expect("img");
    let lab = encode_idx(&[n_labels], &vec![3u8; n_labels]).expect("lab");
    let test_img = encode_idx(&[2, 4, 5], &[9u8; 40]).expect("img");
    let test_lab = encode_idx(&[2], &[1u8; 2]).expect("lab");
    for (stem, bytes) in [
        ("train-images-idx3-ubyte", img),
        ("train-labels-idx1-ubyte", lab),
        ("t10k-images-idx3-ubyte", test_img),
        ("t10k-labels-idx1-ubyte", test_lab),
    ] {
        if gzip {
            std::fs::write(dir.join(format!("{stem}.gz")), gz(&bytes)).expect("write");
        } else {
            std::fs::write(dir.join(stem), bytes).expect("write");
        }
    }
}

#[test]
fn an_mnist_layout_folder_loads_gzipped_or_not() {
    for gzip in [false, true] {
        let dir = temp_dir(&format!("idxdir-{gzip}"));
        write_set(&dir, 3, 3, gzip);
        let m = Mnist::from_dir(&dir).expect("load");
        assert_eq!(
            (m.train.n, m.train.rows, m.train.cols, m.test.n),
            (3, 4, 5, 2)
        );
        let ds = DatasetKind::Mnist {
            dir: Some(dir.clone()),
        }
        .build()
        .expect("dataset");
        assert_eq!(ds.sample_shape(), vec![1, 4, 5]);
    }
}

#[test]
fn mismatched_or_missing_mnist_files_are_reported() {
    let dir = temp_dir("idx-mismatch");
    write_set(&dir, 3, 4, false);
    let err = Mnist::from_dir(&dir).expect_err("mismatch").to_string();
    assert!(
        err.contains("train-labels-idx1-ubyte")
            && err.contains("4 labels")
            && err.contains("3 images"),
        "{err}"
    );
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).expect("rm");
    write_set(&dir, 3, 3, false);
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).expect("rm");
    let err = Mnist::from_dir(&dir).expect_err("missing").to_string();
    assert!(err.contains("missing t10k-labels-idx1-ubyte"), "{err}");
}
