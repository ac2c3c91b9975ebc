//! Couplings of source and data points against ground truth: brute-force
//! optimal assignments, the sorted matching in 1D, Sinkhorn's marginals and
//! limits, pairs within classes; and a flow trained with each.

use flowlab::flow::Coupling;
use flowlab::flow::coupling::{pair_cost, sinkhorn_plan};
use flowlab::rng::{Stream, gaussian, stream_rng};

fn rows(x: &[f32], dim: usize) -> Vec<Vec<u32>> {
    let mut r: Vec<Vec<u32>> = x
        .chunks(dim)
        .map(|c| c.iter().map(|v| v.to_bits()).collect())
        .collect();
    r.sort();
    r
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![Vec::new()];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn exact_ot_is_a_permutation_with_the_brute_force_optimal_cost() {
    let dim = 2;
    for seed in 0..5 {
        let mut rng = stream_rng(seed, Stream::Eval, 0);
        let x1 = gaussian(7 * dim, &mut rng);
        let x0 = gaussian(7 * dim, &mut rng);
        let mut paired = x0.clone();
        Coupling::ExactOt
            .pair(&mut paired, &x1, dim, None, &mut rng)
            .expect("pair");
        assert_eq!(
            rows(&paired, dim),
            rows(&x0, dim),
            "every source point exactly once"
        );
        let best = permutations(7)
            .iter()
            .map(|p| {
                let perm: Vec<f32> = p
                    .iter()
                    .flat_map(|&i| x0[i * dim..(i + 1) * dim].to_vec())
                    .collect();
                pair_cost(&perm, &x1, dim)
            })
            .fold(f64::INFINITY, f64::min);
        let got = pair_cost(&paired, &x1, dim);
        assert!(
            (got - best).abs() < 1e-9,
            "OT cost {got} vs brute force {best}"
        );
        assert!(got <= pair_cost(&x0, &x1, dim) + 1e-12);
    }
}

#[test]
fn exact_ot_in_one_dimension_matches_sorted_points() {
    let mut rng = stream_rng(3, Stream::Eval, 0);
    let x1: Vec<f32> = gaussian(200, &mut rng)
        .iter()
        .map(|v| v * 0.5 + 3.0)
        .collect();
    let mut x0 = gaussian(200, &mut rng);
    Coupling::ExactOt
        .pair(&mut x0, &x1, 1, None, &mut rng)
        .expect("pair");
    // The monotone (sorted) matching is the unique optimum in 1D.
    let mut order: Vec<usize> = (0..200).collect();
    order.sort_by(|&a, &b| x1[a].total_cmp(&x1[b]));
    let along: Vec<f32> = order.iter().map(|&i| x0[i]).collect();
    assert!(
        along.windows(2).all(|w| w[0] <= w[1]),
        "source order follows data order"
    );
}

#[test]
fn sinkhorn_plan_has_uniform_marginals_and_the_right_limits() {
    let dim = 2;
    let n = 12;
    let mut rng = stream_rng(5, Stream::Eval, 0);
    let x1 = gaussian(n * dim, &mut rng);
    let x0 = gaussian(n * dim, &mut rng);
    let cost: Vec<f64> = (0..n)
        .flat_map(|i| {
            let (x0, x1) = (&x0, &x1);
            (0..n).map(move |j| {
                (0..dim)
                    .map(|d| f64::from(x1[i * dim + d] - x0[j * dim + d]).powi(2))
                    .sum()
            })
        })
        .collect();
    for reg in [0.1, 0.5, 2.0] {
        let plan = sinkhorn_plan(&cost, n, reg, 1e-9);
        for i in 0..n {
            let row: f64 = plan[i * n..(i + 1) * n].iter().sum();
            let col: f64 = (0..n).map(|k| plan[k * n + i]).sum();
            assert!((row - 1.0 / n as f64).abs() < 1e-5, "row {i}: {row}");
            assert!((col - 1.0 / n as f64).abs() < 1e-5, "column {i}: {col}");
        }
    }
    // Large entropy: the independent plan 1/n^2.
    let wide = sinkhorn_plan(&cost, n, 1e4, 1e-9);
    assert!(wide.iter().all(|p| (p * (n * n) as f64 - 1.0).abs() < 1e-2));
    // Small entropy: the exact OT permutation, so drawn pairs equal exact OT's.
    let mut ot = x0.clone();
    Coupling::ExactOt
        .pair(&mut ot, &x1, dim, None, &mut rng)
        .expect("ot");
    let mut sk = x0.clone();
    Coupling::Sinkhorn { reg: 1e-3 }
        .pair(&mut sk, &x1, dim, None, &mut rng)
        .expect("sinkhorn");
    assert_eq!(sk, ot);
}

#[test]
fn pairs_within_classes_stay_within_classes() {
    let dim = 3;
    let n = 40;
    let mut rng = stream_rng(9, Stream::Eval, 0);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
    // Source point i is tagged with its class in its first coordinate.
    let x0: Vec<f32> = (0..n)
        .flat_map(|i| [labels[i] as f32 * 100.0, i as f32, 0.0])
        .collect();
    let x1 = gaussian(n * dim, &mut rng);
    for c in [Coupling::ExactOt, Coupling::Sinkhorn { reg: 0.05 }] {
        let mut paired = x0.clone();
        c.pair(&mut paired, &x1, dim, Some(&labels), &mut rng)
            .expect("pair");
        for i in 0..n {
            assert_eq!(paired[i * dim], labels[i] as f32 * 100.0, "{c:?} row {i}");
        }
    }
    let mut bad = x0.clone();
    assert!(
        Coupling::ExactOt
            .pair(&mut bad, &x1, dim, Some(&labels[..5]), &mut rng)
            .is_err()
    );
    assert!(Coupling::Sinkhorn { reg: 0.0 }.validate().is_err());
}

/// Moons from Gaussian noise with each coupling: exact OT learns straighter
/// paths, so 2 Euler steps land much closer to the data.
#[test]
fn exact_ot_straightens_the_flow_on_moons() {
    use candle_core::Device;
    use flowlab::data::Toy2d;
    use flowlab::metrics::{straightness, w2_exact};
    use flowlab::solver::{SolverConfig, SolverKind};
    use flowlab::train::{TrainConfig, Trainer};
    let run = |coupling: Coupling| {
        let cfg = TrainConfig {
            coupling,
            batch_size: 256,
            steps: 1000,
            held_out_every: 0,
            seed: 1,
            ..Default::default()
        };
        let mut tr = Trainer::new(cfg, &Device::Cpu).expect("trainer");
        for _ in 0..1000 {
            tr.step().expect("step");
        }
        let source = tr.config().source;
        let euler = |steps| {
            flowlab::sample::sample(
                tr.sampling_model(),
                &source,
                &[2],
                1000,
                3,
                &SolverConfig::fixed(SolverKind::Euler, steps),
                true,
                &Device::Cpu,
            )
            .expect("sample")
        };
        let data = {
            let mut rng = stream_rng(77, Stream::Eval, 0);
            let mut d = Toy2d::Moons { noise: 0.05 }.draw_n(1000, &mut rng);
            tr.dataset().standardizer().expect("2D").to_model(&mut d);
            d
        };
        let two = euler(2);
        let fine = euler(50);
        let (s, _) = straightness(&fine.times, &fine.states, 2).expect("straightness");
        (w2_exact(&two.data, &data, 2).expect("w2"), s)
    };
    let (w2_ind, s_ind) = run(Coupling::Independent);
    let (w2_ot, s_ot) = run(Coupling::ExactOt);
    assert!(
        w2_ot < 0.6 * w2_ind,
        "W2 at 2 Euler steps: exact OT {w2_ot:.3} vs independent {w2_ind:.3}"
    );
    assert!(s_ot < 0.2 * s_ind, "straightness {s_ot:.4} vs {s_ind:.4}");
}

#[test]
fn a_2d_set_as_source_is_standardised_seeded_and_2d_only() {
    use candle_core::Device;
    use flowlab::flow::Source;
    let src = Source::from_name("8gaussians").expect("source");
    let a = src.noise(4000, &[2], 7, 0, &Device::Cpu).expect("noise");
    let b = src.noise(4000, &[2], 7, 0, &Device::Cpu).expect("noise");
    let (va, vb) = (
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    assert_eq!(va, vb, "the same seed gives the same points");
    let mean = va.iter().map(|&v| f64::from(v)).sum::<f64>() / va.len() as f64;
    let var = va.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / va.len() as f64;
    assert!(
        mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
        "mean {mean}, var {var}"
    );
    // Eight clusters: every point is near one of 8 directions at the same radius.
    let radii: Vec<f64> = va
        .chunks(2)
        .map(|p| f64::from(p[0]).hypot(f64::from(p[1])))
        .collect();
    let r_mean = radii.iter().sum::<f64>() / radii.len() as f64;
    assert!(
        radii.iter().all(|r| (r - r_mean).abs() < 0.5),
        "a ring of clusters"
    );
    // The Gaussian source draws exactly the old noise.
    let g = Source::Gaussian
        .noise(5, &[2], 3, 1, &Device::Cpu)
        .expect("noise");
    let n = flowlab::rng::noise(5, &[2], 3, 1, &Device::Cpu).expect("noise");
    assert_eq!(
        g.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        n.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert!(
        src.validate_for(&[1, 28, 28]).is_err(),
        "2D sources are for 2D data"
    );
    let cfg = flowlab::train::TrainConfig {
        source: src,
        dataset: flowlab::data::DatasetKind::Mnist { dir: None },
        ..Default::default()
    };
    assert!(flowlab::train::Trainer::new(cfg, &Device::Cpu).is_err());
}
