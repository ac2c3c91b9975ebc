//! The UNet: shapes, configuration errors, and the whole network on FlowLab's
//! CPU kernels (f32) against the same network on candle's reference ops (f64),
//! in value and in every parameter's gradient.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use flowlab::model::{ModelConfig, UnetConfig};

use crate::common::vals;

fn build(
    cfg: &UnetConfig,
    shape: &[usize],
    dtype: DType,
) -> (VarMap, Box<dyn flowlab::model::FlowModel>) {
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, dtype, &Device::Cpu);
    let model = ModelConfig::Unet(cfg.clone())
        .build(shape, vb)
        .expect("build");
    (map, model)
}

#[test]
fn unet_keeps_the_image_shape_and_rejects_bad_configs() {
    let cfg = UnetConfig {
        channels: vec![8, 16, 16],
        groups: 4,
        embed_dim: 16,
        ..Default::default()
    };
    for shape in [[1usize, 28, 28], [3, 16, 12]] {
        let (_, m) = build(&cfg, &shape, DType::F32);
        let mut dims = vec![2];
        dims.extend(shape);
        let x = Tensor::randn(0f32, 1.0, dims.clone(), &Device::Cpu).expect("x");
        let t = Tensor::new(&[0.1f32, 0.9], &Device::Cpu).expect("t");
        let v = m.velocity(&x, &t).expect("velocity");
        assert_eq!(v.dims(), dims.as_slice());
        // Time conditioning changes the output.
        let t2 = Tensor::new(&[0.5f32, 0.5], &Device::Cpu).expect("t");
        let v2 = m.velocity(&x, &t2).expect("velocity");
        assert!(crate::common::max_diff(&v, &v2) > 1e-4);
    }
    let map = VarMap::new();
    let vb = || VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    // 28 is not divisible by 2^3, a flat sample is not an image, 12 channels do not split into 8 groups.
    let four_levels = UnetConfig {
        channels: vec![8, 8, 8, 8],
        ..cfg.clone()
    };
    assert!(
        ModelConfig::Unet(four_levels)
            .build(&[1, 28, 28], vb())
            .is_err()
    );
    assert!(ModelConfig::Unet(cfg.clone()).build(&[2], vb()).is_err());
    let bad_groups = UnetConfig {
        channels: vec![12, 16],
        groups: 8,
        ..Default::default()
    };
    assert!(bad_groups.validate().is_err());
    assert!(UnetConfig::default().validate().is_ok());
}

#[test]
fn unet_on_flowlab_kernels_matches_candle_reference_ops() {
    // Two levels with attention, two blocks per level: every op of the network.
    let cfg = UnetConfig {
        channels: vec![8, 16],
        blocks: 2,
        attention: true,
        groups: 4,
        embed_dim: 16,
        ..Default::default()
    };
    let shape = [2usize, 8, 8];
    let (map32, m32) = build(&cfg, &shape, DType::F32);
    let (map64, m64) = build(&cfg, &shape, DType::F64);
    // Same random weights in both (GroupNorm γ away from 1, β away from 0).
    {
        let d32 = map32.data().lock().expect("lock");
        let d64 = map64.data().lock().expect("lock");
        assert_eq!(d32.len(), d64.len());
        for (name, v32) in d32.iter() {
            let v64 = d64.get(name).expect("same names");
            let r = Tensor::randn(0f64, 0.3, v32.shape(), &Device::Cpu).expect("randn");
            let r = if name.ends_with("weight") && v32.rank() == 1 {
                (r + 1.0).expect("γ")
            } else {
                r
            };
            v64.set(&r).expect("set f64");
            v32.set(&r.to_dtype(DType::F32).expect("f32"))
                .expect("set f32");
        }
    }
    let x = Tensor::randn(0f32, 1.0, (3, 2, 8, 8), &Device::Cpu).expect("x");
    let t = Tensor::new(&[0.2f32, 0.5, 0.8], &Device::Cpu).expect("t");
    let w = Tensor::randn(0f32, 1.0, (3, 2, 8, 8), &Device::Cpu).expect("w");
    let y32 = m32.velocity(&x, &t).expect("f32");
    let y64 = m64
        .velocity(
            &x.to_dtype(DType::F64).expect("x64"),
            &t.to_dtype(DType::F64).expect("t64"),
        )
        .expect("f64");
    let (a, b) = (vals(&y32), vals(&y64));
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    let err = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f64::max)
        / scale;
    assert!(err < 1e-4, "output error {err:e}");
    let g32 = (y32 * &w)
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .expect("grad32");
    let w64 = w.to_dtype(DType::F64).expect("w64");
    let g64 = (y64 * &w64)
        .and_then(|l| l.sum_all())
        .and_then(|l| l.backward())
        .expect("grad64");
    let d32 = map32.data().lock().expect("lock");
    let d64 = map64.data().lock().expect("lock");
    for (name, v32) in d32.iter() {
        let v64 = d64.get(name).expect("same names");
        let (a, b) = (
            vals(g32.get(v32.as_tensor()).expect("f32 gradient")),
            vals(g64.get(v64.as_tensor()).expect("f64 gradient")),
        );
        let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
            / scale;
        assert!(err < 1e-3, "{name}: gradient error {err:e}");
    }
}

#[test]
fn a_tiny_unet_learns_mnist_with_and_without_labels() {
    use flowlab::data::DatasetKind;
    use flowlab::train::{TrainConfig, Trainer};
    for classes in [0, 10] {
        let cfg = TrainConfig {
            dataset: DatasetKind::Mnist { dir: None },
            model: ModelConfig::Unet(UnetConfig {
                channels: vec![8, 16],
                attention: false,
                groups: 4,
                embed_dim: 32,
                classes,
                ..Default::default()
            }),
            batch_size: 32,
            steps: 60,
            held_out_size: 300,
            held_out_every: 60,
            ..Default::default()
        };
        let mut tr = Trainer::new(cfg.clone(), &Device::Cpu).expect("trainer");
        let reports: Vec<_> = (0..60).map(|_| tr.step().expect("step")).collect();
        let losses: Vec<f32> = reports.iter().map(|r| r.loss).collect();
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
        let (first, last) = (mean(&losses[..10]), mean(&losses[50..]));
        // Predicting zero velocity costs E|x1 − x0|² per pixel ≈ 1 + E x1² ≈ 1.6;
        // a model that learnt nothing stays there.
        assert!(
            last < 0.75 * first,
            "classes {classes}: loss {first} -> {last}"
        );
        // The held-out loss (300 samples: two slices) is computed and sane.
        let held = reports
            .last()
            .and_then(|r| r.held_out_loss)
            .expect("held-out loss");
        assert!(
            held.is_finite() && held < first,
            "classes {classes}: held-out {held}"
        );
        // A label count that does not match the data is refused.
        if classes > 0 {
            let mut bad = cfg.clone();
            if let ModelConfig::Unet(u) = &mut bad.model {
                u.classes = 5;
            }
            assert!(Trainer::new(bad, &Device::Cpu).is_err());
        }
    }
}

#[test]
fn class_conditioning_null_class_and_guidance() {
    use flowlab::model::Guided;
    let cfg = UnetConfig {
        channels: vec![8, 16],
        groups: 4,
        embed_dim: 16,
        classes: 10,
        ..Default::default()
    };
    let (map, m) = build(&cfg, &[1, 8, 8], DType::F32);
    // The label table is a parameter: (classes + 1, embed_dim), last row the null class.
    let table = map
        .data()
        .lock()
        .expect("lock")
        .get("labels.weight")
        .map(|v| v.dims().to_vec());
    assert_eq!(table, Some(vec![11, 16]));
    assert_eq!(m.classes(), 10);
    let dev = &Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (3, 1, 8, 8), dev).expect("x");
    let t = Tensor::new(&[0.3f32, 0.6, 0.9], dev).expect("t");
    let labels = Tensor::new(&[1u32, 7, 3], dev).expect("labels");
    let other = Tensor::new(&[2u32, 0, 9], dev).expect("labels");
    let null = Tensor::new(&[10u32, 10, 10], dev).expect("null");
    let v = |l: &Tensor| m.velocity_with_labels(&x, &t, l).expect("velocity");
    let (vc, vo, vn) = (v(&labels), v(&other), v(&null));
    // Conditioning changes the output; the null class is the plain velocity.
    assert!(
        crate::common::max_diff(&vc, &vo) > 1e-4,
        "labels have no effect"
    );
    assert_eq!(
        crate::common::max_diff(&vn, &m.velocity(&x, &t).expect("v")),
        0.0
    );
    // Guidance: w = 0 is unconditional, w = 1 conditional, w = 2 is 2 v_c − v_u
    // (the batched evaluation matches separate ones).
    let guided = |w: f64| {
        Guided::new(m.as_ref(), &labels, w)
            .expect("guided")
            .velocity(&x, &t)
            .expect("velocity")
    };
    use flowlab::model::VelocityField as _;
    assert!(crate::common::max_diff(&guided(0.0), &vn) < 1e-6);
    assert!(crate::common::max_diff(&guided(1.0), &vc) < 1e-6);
    let expected = ((&vc * 2.0).expect("2vc") - &vn).expect("2vc - vu");
    assert!(crate::common::max_diff(&guided(2.0), &expected) < 1e-4);
    // Bad labels and unconditional models are refused.
    assert!(
        m.velocity_with_labels(&x, &t, &Tensor::new(&[11u32, 0, 0], dev).expect("l"))
            .is_err()
    );
    assert!(Guided::new(m.as_ref(), &Tensor::new(&[10u32], dev).expect("l"), 2.0).is_err());
    let (_, plain) = build(&UnetConfig { classes: 0, ..cfg }, &[1, 8, 8], DType::F32);
    assert!(plain.velocity_with_labels(&x, &t, &labels).is_err());
    assert!(Guided::new(plain.as_ref(), &labels, 2.0).is_err());
}
