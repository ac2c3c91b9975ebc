//! The MNIST classifier that judges generated digits: the shipped weights reach
//! the 98 % bar on the whole test set, training learns, files round-trip, and
//! other files are refused with a message.

use std::path::Path;

use candle_core::Device;
use flowlab::classifier::Classifier;
use flowlab::data::mnist::Mnist;

use crate::common::temp_dir;

fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/mnist-classifier.safetensors")
}

#[test]
fn shipped_classifier_recognises_98_percent_of_the_test_set() {
    let set = Mnist::embedded().expect("mnist");
    let (model, meta) = Classifier::load(&shipped(), &Device::Cpu).expect("load");
    assert_eq!(meta.classes, 10);
    let acc = model
        .accuracy(&set.test, None, &Device::Cpu)
        .expect("accuracy");
    assert!(acc >= 0.98, "test accuracy {acc}");
    assert!(
        (acc - meta.test_accuracy).abs() < 1e-9,
        "stored {} vs {acc}",
        meta.test_accuracy
    );
}

#[test]
fn classifier_training_learns_and_files_round_trip() {
    let dev = Device::Cpu;
    let set = Mnist::embedded().expect("mnist");
    let mut model = Classifier::new(10, 3, &dev).expect("new");
    let before = model
        .accuracy(&set.test, Some(1000), &dev)
        .expect("accuracy");
    let mut losses = Vec::new();
    model
        .train(&set.train, 80, 64, 3, &dev, |_, l| losses.push(l))
        .expect("train");
    let after = model
        .accuracy(&set.test, Some(1000), &dev)
        .expect("accuracy");
    assert!(before < 0.3 && after > 0.85, "accuracy {before} -> {after}");
    let meta = flowlab::classifier::ClassifierMeta {
        classes: 10,
        steps: 80,
        batch_size: 64,
        seed: 3,
        test_accuracy: after,
    };
    let dir = temp_dir("classifier");
    let path = dir.join("c.safetensors");
    model.save(&path, &meta).expect("save");
    let (back, meta_back) = Classifier::load(&path, &dev).expect("load");
    assert_eq!(meta_back, meta);
    let again = back
        .accuracy(&set.test, Some(1000), &dev)
        .expect("accuracy");
    assert_eq!(again, after);
    // A flow checkpoint, a truncated file and a missing file are refused.
    let moons = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/moons.safetensors");
    let err = Classifier::load(&moons, &dev)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("not a FlowLab classifier"), "{err}");
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    assert!(Classifier::load(&cut, &dev).is_err());
    assert!(Classifier::load(&dir.join("missing.safetensors"), &dev).is_err());
}

#[test]
fn judging_real_digits_gives_the_classifier_accuracy_and_a_zero_distance() {
    use flowlab::classifier::judge;
    let dev = Device::Cpu;
    let set = Mnist::embedded().expect("mnist");
    let (model, _) = Classifier::embedded(&dev).expect("embedded");
    let n = 600;
    let px = |s: &flowlab::data::mnist::ImageSet| -> Vec<f32> {
        s.pixels[..n * 784]
            .iter()
            .map(|&p| f32::from(p) / 127.5 - 1.0)
            .collect()
    };
    let labels: Vec<u32> = set.test.labels[..n].iter().map(|&l| u32::from(l)).collect();
    // The reference images themselves: distance 0, the classifier's accuracy.
    let q = judge(
        &model,
        &px(&set.test),
        Some(&labels),
        &set.test,
        &set.train,
        &dev,
    )
    .expect("judge");
    assert!(q.frechet < 1e-3, "{q:?}");
    assert!(q.accuracy.is_some_and(|a| a >= 0.97), "{q:?}");
    // Other real images score the floor; wrong labels score low accuracy.
    let q2 = judge(&model, &px(&set.train), None, &set.test, &set.train, &dev).expect("judge");
    assert!(
        (q2.frechet - q2.frechet_floor).abs() < 1e-6 * q2.frechet_floor.max(1.0),
        "{q2:?}"
    );
    let wrong: Vec<u32> = labels.iter().map(|l| (l + 1) % 10).collect();
    let q3 = judge(
        &model,
        &px(&set.test),
        Some(&wrong),
        &set.test,
        &set.train,
        &dev,
    )
    .expect("judge");
    assert!(q3.accuracy.is_some_and(|a| a < 0.05), "{q3:?}");
    // Noise is far from digits.
    let noise: Vec<f32> = (0..n * 784)
        .map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let q4 = judge(&model, &noise, None, &set.test, &set.train, &dev).expect("judge");
    assert!(q4.frechet > 5.0 * q4.frechet_floor, "{q4:?}");
}

#[test]
fn shipped_mnist_unet_draws_the_requested_digits() {
    let dev = Device::Cpu;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/mnist.safetensors");
    let loaded = flowlab::checkpoint::LoadedModel::load(&path, &dev).expect("shipped weights load");
    assert_eq!(loaded.model.classes(), 10);
    // 100 digits, 10 of each, guidance 2, 10 midpoint steps (a small budget:
    // the README's figure uses 1000 digits and 20 steps).
    let labels: Vec<u32> = (0..100).map(|i| i % 10).collect();
    let solver = flowlab::solver::SolverConfig::fixed(flowlab::solver::SolverKind::Midpoint, 10);
    let s = flowlab::sample::sample_guided(
        loaded.model.as_ref(),
        &loaded.meta.sample_shape,
        &labels,
        2.0,
        11,
        &solver,
        &dev,
    )
    .expect("sample");
    let (classifier, _) = Classifier::embedded(&dev).expect("classifier");
    let x = candle_core::Tensor::from_vec(s.data, (100, 1, 28, 28), &dev).expect("x");
    let predicted = classifier.predict(&x).expect("predict");
    let right = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    assert!(
        right >= 85,
        "{right} of 100 recognised as the requested digit"
    );
}
