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
