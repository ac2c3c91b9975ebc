//! Wasserstein distances against known values.

use flowlab::metrics::{sliced_w2, w2_exact};
use flowlab::rng::{Stream, gaussian, stream_rng};

fn cloud(n: usize, seed: u64) -> Vec<f32> {
    gaussian(2 * n, &mut stream_rng(seed, Stream::Eval, 0))
}

#[test]
fn w2_of_a_translation_is_its_length_and_of_a_permutation_zero() {
    let a = cloud(300, 1);
    let b: Vec<f32> = a
        .chunks_exact(2)
        .flat_map(|p| [p[0] + 3.0, p[1] - 4.0])
        .collect();
    let w = w2_exact(&a, &b, 2).expect("w2");
    assert!((w - 5.0).abs() < 1e-5, "W2 {w}");
    let mut rev: Vec<f32> = a.chunks_exact(2).rev().flatten().copied().collect();
    assert!(w2_exact(&a, &rev, 2).expect("w2") < 1e-6);
    rev.truncate(10);
    assert!(w2_exact(&a, &rev, 2).is_err(), "sizes must match");
}

#[test]
fn w2_between_samples_of_one_distribution_shrinks_and_is_below_a_shifted_one() {
    let small = w2_exact(&cloud(100, 1), &cloud(100, 2), 2).expect("w2");
    let large = w2_exact(&cloud(1000, 1), &cloud(1000, 2), 2).expect("w2");
    assert!(large < small, "{large} < {small}");
    let shifted: Vec<f32> = cloud(1000, 2).iter().map(|v| v + 0.5).collect();
    let w_shift = w2_exact(&cloud(1000, 1), &shifted, 2).expect("w2");
    assert!(w_shift > large + 0.3, "shift {w_shift} vs same {large}");
}

#[test]
fn sliced_w2_of_a_translation_matches_its_expectation() {
    // For a translation c, each projection moves by <c, θ>: E[<c, θ>²] = |c|²/2 in 2D.
    let a = cloud(500, 3);
    let b: Vec<f32> = a
        .chunks_exact(2)
        .flat_map(|p| [p[0] + 3.0, p[1] + 4.0])
        .collect();
    let sw = sliced_w2(&a, &b, 2, 2000, 0).expect("sw");
    let expected = 5.0 / 2f64.sqrt();
    assert!(
        (sw - expected).abs() / expected < 0.05,
        "SW {sw} vs {expected}"
    );
    assert!(sliced_w2(&a, &a, 2, 50, 0).expect("sw") < 1e-9);
    let nan = vec![f32::NAN; a.len()];
    assert!(sliced_w2(&a, &nan, 2, 5, 0).is_err());
}

#[test]
fn frechet_distance_matches_the_gaussian_formula() {
    use flowlab::metrics::frechet_distance;
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let n = 40_000;
    // A ~ N(0, diag(1, 4, 9)), B ~ N((1, 0, 0), diag(4, 4, 1)):
    // FD = 1 + (1 + 4 − 2·2) + (4 + 4 − 2·4) + (9 + 1 − 2·3) = 6.
    let mut draw = |mean: [f32; 3], sd: [f32; 3]| -> Vec<f32> {
        (0..n)
            .flat_map(|_| {
                (0..3)
                    .map(|k| {
                        let z: f32 = StandardNormal.sample(&mut rng);
                        mean[k] + sd[k] * z
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let a = draw([0.0; 3], [1.0, 2.0, 3.0]);
    let b = draw([1.0, 0.0, 0.0], [2.0, 2.0, 1.0]);
    let fd = frechet_distance(&a, &b, 3).expect("fd");
    assert!((fd - 6.0).abs() < 0.15, "FD {fd}, expected 6");
    // Zero for a set against itself, and the same after rotating both sets.
    assert!(frechet_distance(&a, &a, 3).expect("fd") < 1e-6);
    let (c, s) = (0.6f32, 0.8f32);
    let rot = |x: &[f32]| -> Vec<f32> {
        x.chunks_exact(3)
            .flat_map(|p| [c * p[0] - s * p[1], s * p[0] + c * p[1], p[2]])
            .collect()
    };
    let fd_rot = frechet_distance(&rot(&a), &rot(&b), 3).expect("fd");
    assert!((fd_rot - fd).abs() < 1e-6 * fd.max(1.0), "{fd_rot} vs {fd}");
    assert!(frechet_distance(&a[..3], &b, 3).is_err());
}

#[test]
fn straightness_is_zero_for_lines_and_matches_a_bent_path() {
    use flowlab::metrics::straightness;
    // Two 1D points moving at constant speed: S = 0; displacement 4 and 1 -> mean 2.5.
    let times = vec![0.0, 0.25, 0.5, 1.0];
    let line: Vec<Vec<f32>> = times
        .iter()
        .map(|&t| vec![2.0 * t as f32, -(t as f32)])
        .collect();
    let (s, d) = straightness(&times, &line, 1).expect("s");
    assert!(s.abs() < 1e-12 && (d - 2.5).abs() < 1e-12, "{s} {d}");
    // One 2D point going (0,0) -> (1,1) -> (2,0) over two halves: velocities
    // (2,2) then (2,-2) against the chord (2,0): S = 0.5*4 + 0.5*4 = 4.
    let bent = vec![vec![0.0f32, 0.0], vec![1.0, 1.0], vec![2.0, 0.0]];
    let (s, d) = straightness(&[0.0, 0.5, 1.0], &bent, 2).expect("s");
    assert!((s - 4.0).abs() < 1e-9 && (d - 4.0).abs() < 1e-9, "{s} {d}");
    assert!(straightness(&[0.0], &bent[..1], 2).is_err());
}
