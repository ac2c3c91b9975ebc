//! Checkpoint round trips, exact resume, and every kind of bad file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use flowlab::checkpoint::{Checkpoint, LoadedModel};
use flowlab::train::Trainer;

use crate::common::{max_diff, temp_dir, tiny_config};

fn trained(steps: u64) -> Trainer {
    let mut tr = Trainer::new(tiny_config(40), &Device::Cpu).expect("trainer");
    for _ in 0..steps {
        tr.step().expect("step");
    }
    tr
}

fn saved(name: &str) -> (std::path::PathBuf, Trainer) {
    let dir = temp_dir(name);
    let path = dir.join("ck.safetensors");
    let tr = trained(5);
    Checkpoint::from_trainer(&tr)
        .expect("capture")
        .save(&path)
        .expect("save");
    (path, tr)
}

fn load_err(path: &Path) -> String {
    match Checkpoint::load(path, &Device::Cpu).and_then(|c| c.into_trainer(&Device::Cpu, path)) {
        Ok(_) => panic!("{} should not load", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn save_load_round_trips_bit_exactly() {
    let (path, tr) = saved("roundtrip");
    let ck = Checkpoint::load(&path, &Device::Cpu).expect("load");
    assert_eq!(ck.meta.step, 5);
    assert_eq!(ck.meta.config, *tr.config());
    assert_eq!(ck.meta.sample_shape, vec![2]);
    let back = ck.into_trainer(&Device::Cpu, &path).expect("rebuild");
    assert_eq!(back.step_count(), 5);
    assert_eq!(back.history().len(), 5);
    let same =
        |a: &[f32; 3], b: &[f32; 3]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(
        tr.history()
            .iter()
            .zip(back.history())
            .all(|(a, b)| same(a, b)),
        "loss history round-trips"
    );
    for (a, b) in tr.params().tensors().iter().zip(back.params().tensors()) {
        assert_eq!(max_diff(a, &b), 0.0);
    }
    for (a, b) in tr
        .ema_params()
        .expect("ema")
        .tensors()
        .iter()
        .zip(back.ema_params().expect("ema").tensors())
    {
        assert_eq!(max_diff(a, &b), 0.0);
    }
    let (m1, v1) = tr.optimizer().moments().expect("moments");
    let (m2, v2) = back.optimizer().moments().expect("moments");
    for (a, b) in m1.iter().chain(&v1).zip(m2.iter().chain(&v2)) {
        assert_eq!(max_diff(a, b), 0.0);
    }
    // The sampling model gives identical velocities.
    let loaded = LoadedModel::load(&path, &Device::Cpu).expect("loaded");
    let x = Tensor::from_vec(vec![0.1f32, -0.2, 1.5, 0.3], (2, 2), &Device::Cpu).expect("x");
    let t = Tensor::from_vec(vec![0.25f32, 0.75], 2, &Device::Cpu).expect("t");
    let a = tr.sampling_model().velocity(&x, &t).expect("v");
    let b = loaded.model.velocity(&x, &t).expect("v");
    assert_eq!(max_diff(&a, &b), 0.0);
}

#[test]
fn resume_continues_the_same_loss_curve() {
    let mut unbroken = trained(0);
    let full: Vec<f32> = (0..20)
        .map(|_| unbroken.step().expect("step").loss)
        .collect();
    let mut first = trained(0);
    for _ in 0..10 {
        first.step().expect("step");
    }
    let dir = temp_dir("resume");
    let path = dir.join("half.safetensors");
    Checkpoint::from_trainer(&first)
        .expect("capture")
        .save(&path)
        .expect("save");
    drop(first);
    let mut resumed = Checkpoint::load(&path, &Device::Cpu)
        .expect("load")
        .into_trainer(&Device::Cpu, &path)
        .expect("resume");
    let rest: Vec<f32> = (0..10)
        .map(|_| resumed.step().expect("step").loss)
        .collect();
    assert_eq!(
        &full[10..],
        rest.as_slice(),
        "resumed losses equal the unbroken run's"
    );
}

#[test]
fn truncated_files_are_rejected() {
    let (path, _) = saved("truncated");
    let bytes = std::fs::read(&path).expect("read");
    for cut in [bytes.len() - 7, bytes.len() / 2, 100, 5, 0] {
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let err = load_err(&path);
        assert!(
            err.contains(&path.display().to_string()),
            "names the file: {err}"
        );
        assert!(
            err.contains("truncated") || err.contains("corrupt"),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn flipped_bytes_in_the_weights_are_detected() {
    let (path, _) = saved("corrupt");
    let mut bytes = std::fs::read(&path).expect("read");
    let n = bytes.len();
    bytes[n - 10] ^= 0x5a;
    std::fs::write(&path, &bytes).expect("write");
    let err = load_err(&path);
    assert!(err.contains("corrupt (checksum mismatch)"), "{err}");
}

#[test]
fn foreign_and_non_safetensors_files_are_rejected() {
    let dir = temp_dir("foreign");
    let foreign = dir.join("other.safetensors");
    let t = Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).expect("t");
    candle_core::safetensors::save(&HashMap::from([("w", t)]), &foreign).expect("save");
    assert!(
        load_err(&foreign).contains("not written by FlowLab"),
        "{}",
        load_err(&foreign)
    );
    let text = dir.join("notes.safetensors");
    std::fs::write(&text, "just some text, not a model").expect("write");
    assert!(
        load_err(&text).contains("not a readable safetensors file"),
        "{}",
        load_err(&text)
    );
    let missing = dir.join("missing.safetensors");
    assert!(
        load_err(&missing).contains("cannot read"),
        "{}",
        load_err(&missing)
    );
}

/// Rewrites the checkpoint's JSON metadata with `edit`, keeping the tensors.
fn rewrite_meta(path: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let bytes = std::fs::read(path).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let mut info = header.metadata().clone().expect("metadata");
    let mut meta: serde_json::Value = serde_json::from_str(&info["flowlab.meta"]).expect("json");
    edit(&mut meta);
    info.insert("flowlab.meta".into(), meta.to_string());
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let out = safetensors::serialize(tensors, Some(info)).expect("serialize");
    std::fs::write(path, out).expect("write");
}

#[test]
fn a_file_whose_weights_do_not_match_its_model_is_rejected() {
    let (path, _) = saved("mismatch");
    rewrite_meta(&path, |m| {
        m["config"]["model"]["width"] = serde_json::json!(48)
    });
    let err = load_err(&path);
    assert!(err.contains("do not match the model"), "{err}");
    assert!(
        err.contains("layers.0.weight") && err.contains("[48, 35]"),
        "{err}"
    );
    assert!(
        !err.contains("backtrace") && err.lines().count() == 1,
        "{err}"
    );
    let err = LoadedModel::load(&path, &Device::Cpu)
        .err()
        .expect("sampling load fails too")
        .to_string();
    assert!(err.contains("do not match"), "{err}");
}

#[test]
fn a_file_claiming_a_huge_model_is_refused_without_building_it() {
    // 64 layers of 16384 units would be 17 G parameters (68 GB): the file's own
    // tensors are checked against the claimed shapes before anything is allocated.
    let (path, _) = saved("huge");
    rewrite_meta(&path, |m| {
        m["config"]["model"]["width"] = serde_json::json!(16384);
        m["config"]["model"]["depth"] = serde_json::json!(64);
    });
    let err = load_err(&path);
    assert!(err.contains("do not match the model"), "{err}");
    let err = LoadedModel::load(&path, &Device::Cpu)
        .err()
        .expect("sampling load fails too")
        .to_string();
    assert!(err.contains("do not match"), "{err}");
}

#[test]
fn absurd_sample_shapes_and_fourier_matrices_are_refused_before_allocation() {
    // Out of range outright.
    let (path, _) = saved("shape");
    rewrite_meta(&path, |m| {
        m["sample_shape"] = serde_json::json!([100000, 100000, 100000]);
    });
    assert!(
        load_err(&path).contains("sample shape"),
        "{}",
        load_err(&path)
    );
    // In range, but with 4096 Fourier features it would ask for a
    // (16.7 M x 4096) frequency matrix: the stored weights are checked first.
    let (path, _) = saved("fourier");
    rewrite_meta(&path, |m| {
        m["sample_shape"] = serde_json::json!([1, 4096, 4096]);
        m["config"]["model"]["fourier_features"] = serde_json::json!(4096);
    });
    let err = LoadedModel::load(&path, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("do not match"), "{err}");
}

#[test]
fn unsupported_versions_and_invalid_configs_are_rejected() {
    let (path, _) = saved("version");
    rewrite_meta(&path, |m| m["format_version"] = serde_json::json!(99));
    assert!(
        load_err(&path).contains("format version 99 is not supported"),
        "{}",
        load_err(&path)
    );
    let (path, _) = saved("badcfg");
    rewrite_meta(&path, |m| m["config"]["batch_size"] = serde_json::json!(0));
    assert!(
        load_err(&path).contains("stored configuration is invalid"),
        "{}",
        load_err(&path)
    );
}

#[test]
fn nan_weights_are_rejected() {
    let (path, tr) = saved("nan");
    let mut ck = Checkpoint::from_trainer(&tr).expect("capture");
    let key = ck
        .tensors
        .keys()
        .find(|k| k.starts_with("model."))
        .cloned()
        .expect("a weight");
    let shape = ck.tensors[&key].dims().to_vec();
    let n: usize = shape.iter().product();
    ck.tensors.insert(
        key.clone(),
        Tensor::from_vec(vec![f32::NAN; n], shape, &Device::Cpu).expect("nan"),
    );
    ck.save(&path).expect("save");
    let err = load_err(&path);
    assert!(err.contains("NaN"), "{err}");
}

#[test]
fn saving_to_an_unwritable_path_fails_cleanly_and_keeps_the_old_file() {
    let (path, tr) = saved("unwritable");
    let before = std::fs::read(&path).expect("read");
    // A directory cannot be replaced by a file.
    let dir_target = path.parent().expect("dir").to_path_buf();
    let err = Checkpoint::from_trainer(&tr)
        .expect("capture")
        .save(&dir_target)
        .expect_err("must fail")
        .to_string();
    assert!(err.contains("cannot write"), "{err}");
    // A folder that cannot be created.
    let bad = Path::new("/proc/flowlab-no/x.safetensors");
    assert!(
        Checkpoint::from_trainer(&tr)
            .expect("capture")
            .save(bad)
            .is_err()
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "the old checkpoint is intact"
    );
    // No temporary files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn weights_only_checkpoints_sample_like_the_full_one_and_still_train() {
    let (path, tr) = saved("weights-only");
    let full = Checkpoint::load(&path, &Device::Cpu).expect("load");
    assert!(full.has_optimizer_state());
    let slim = full.weights_only();
    assert!(!slim.has_optimizer_state());
    assert!(slim.tensors.keys().all(|k| !k.starts_with("ema.")));
    let slim_path = path.with_file_name("slim.safetensors");
    slim.save(&slim_path).expect("save");
    let (big, small) = (
        std::fs::metadata(&path).expect("size").len(),
        std::fs::metadata(&slim_path).expect("size").len(),
    );
    assert!(small * 3 < big, "{small} bytes vs {big}");
    // Sampling uses the full file's EMA weights, which the slim file keeps.
    let loaded = LoadedModel::load(&slim_path, &Device::Cpu).expect("loaded");
    let x = Tensor::from_vec(vec![0.1f32, -0.2, 1.5, 0.3], (2, 2), &Device::Cpu).expect("x");
    let t = Tensor::from_vec(vec![0.25f32, 0.75], 2, &Device::Cpu).expect("t");
    let a = tr.sampling_model().velocity(&x, &t).expect("v");
    let b = loaded.model.velocity(&x, &t).expect("v");
    assert_eq!(max_diff(&a, &b), 0.0);
    // It opens for training: step count and history kept, fresh moments.
    let mut back = Checkpoint::load(&slim_path, &Device::Cpu)
        .expect("load")
        .into_trainer(&Device::Cpu, &slim_path)
        .expect("trainer");
    assert_eq!((back.step_count(), back.history().len()), (5, 5));
    assert_eq!(back.optimizer().updates(), 0);
    let (m, _) = back.optimizer().moments().expect("moments");
    assert!(
        m.iter()
            .all(|m| max_diff(m, &m.zeros_like().expect("z")) == 0.0)
    );
    let r = back.step().expect("a step after loading");
    assert!(r.loss.is_finite());
    assert_eq!(back.optimizer().updates(), 1);
}
