//! The desktop app driven headlessly through egui_kittest (no display, no GPU).

use std::sync::Arc;
use std::time::{Duration, Instant};

use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;
use flowlab::app::FlowLabApp;

fn harness() -> Harness<'static, FlowLabApp> {
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(
            |ui, app: &mut FlowLabApp| app.ui(ui),
            FlowLabApp::new(Arc::new(|| {})),
        )
}

/// Steps frames until `done` holds (the worker runs on its own thread meanwhile).
fn step_until(
    h: &mut Harness<'static, FlowLabApp>,
    what: &str,
    done: impl Fn(&FlowLabApp) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(h.state()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status: {}",
            h.state().status
        );
        h.step();
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn starts_on_the_pretrained_flow_trains_pauses_and_scrubs_time() {
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.snapshot.is_some() && a.step == 4000
    });
    assert_eq!(h.state().param_count, 141_314);
    // The pretrained checkpoint carries its loss curve.
    assert_eq!(h.state().loss.len(), 4000);
    assert_eq!(h.state().held_out.len(), 40);
    // Frames keep completing while the worker trains (the GUI never waits on it).
    // The pretrained run is finished: Train asks before replacing it.
    h.get_by_label("Train").click();
    h.run_steps(4);
    assert!(
        h.state().confirm_new_run,
        "asks before discarding the loaded model"
    );
    h.get_by_label("Start a new run").click();
    step_until(&mut h, "loss points", |a| a.loss.len() >= 5);
    let t0 = Instant::now();
    for _ in 0..100 {
        h.step();
    }
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "100 frames took {:?}",
        t0.elapsed()
    );
    step_until(&mut h, "a fresh preview", |a| {
        a.snapshot
            .as_ref()
            .is_some_and(|s| s.step > 0 && s.step < 4000)
    });
    h.get_by_label("Pause").click();
    step_until(&mut h, "the pause", |a| {
        !a.running && a.status.contains("paused")
    });
    // The time slider moves the particles back towards the noise.
    let at_one = h.state().particles_at_t().expect("particles");
    h.get_by_role_and_label(Role::Slider, "t (noise -> data)")
        .set_value_accesskit(0.0);
    h.step();
    assert!(h.state().t.abs() < 1e-9, "t = {}", h.state().t);
    let at_zero = h.state().particles_at_t().expect("particles");
    assert_ne!(at_one, at_zero);
}

#[test]
fn layers_velocity_field_keys_and_playback() {
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.snapshot.is_some() && a.step == 4000
    });
    assert!(
        !h.state().data_points.is_empty(),
        "the target data is cached for the data layer"
    );
    // Keys move t: Home = noise, End = data, arrows in steps of 0.02.
    h.key_press(egui::Key::Home);
    h.step();
    assert_eq!(h.state().t, 0.0);
    h.key_press(egui::Key::ArrowRight);
    h.step();
    assert!((h.state().t - 0.02).abs() < 1e-12, "t = {}", h.state().t);
    h.key_press(egui::Key::End);
    h.step();
    assert_eq!(h.state().t, 1.0);
    // The velocity field layer asks the worker for v(x, t) on a 17x17 grid.
    h.get_by_label("velocity field").click();
    step_until(&mut h, "the velocity field", |a| a.field.is_some());
    let f = h.state().field.clone().expect("field");
    // The PNG export draws the layers that are on: orange arrows now appear.
    let png = image::load_from_memory(&h.state().flow_png().expect("png"))
        .expect("decode")
        .to_rgb8();
    let orange = png.pixels().filter(|p| p.0 == [240, 150, 30]).count();
    assert!(orange > 100, "{orange} arrow pixels");
    assert_eq!((f.points.len(), f.vectors.len()), (17 * 17, 17 * 17));
    assert_eq!(f.t, 1.0);
    assert!(
        f.vectors
            .iter()
            .all(|v| v[0].is_finite() && v[1].is_finite())
    );
    // Trajectories up to t = 0.5 end at the particles at t = 0.5.
    h.state_mut().t = 0.5;
    let ends: Vec<[f64; 2]> = h
        .state()
        .trajectories_to_t()
        .iter()
        .filter_map(|l| l.last().copied())
        .collect();
    let now = h.state().particles_at_t().expect("particles");
    assert_eq!(ends.as_slice(), &now[..ends.len()]);
    step_until(&mut h, "the field at t = 0.5", |a| {
        a.field.as_ref().is_some_and(|f| f.t == 0.5)
    });
    // Play advances t.
    h.get_by_label("Play").click();
    let t0 = h.state().t;
    for _ in 0..5 {
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(h.state().t != t0, "t should move while playing");
}

#[test]
fn loss_smoothing_and_density_helpers() {
    use flowlab::app::{density, smooth};
    let pts = [[0.0, 1.0], [1.0, 3.0], [2.0, 3.0]];
    assert_eq!(smooth(&pts, 0.0), pts.to_vec());
    assert_eq!(smooth(&pts, 0.5), vec![[0.0, 1.0], [1.0, 2.0], [2.0, 2.5]]);
    let (v, cols) = density(
        &[[0.1, 0.1], [0.9, 0.9], [0.95, 0.8], [5.0, 5.0]],
        [0.0, 1.0, 0.0, 1.0],
        2,
    );
    assert_eq!(cols, 2);
    assert_eq!(
        v,
        vec![1.0, 0.0, 0.0, 2.0],
        "bottom-left, then the top-right cell; outside points ignored"
    );
}

#[test]
fn save_open_corrupt_file_exports_and_solver_change() {
    let dir = crate::common::temp_dir("app-files");
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.snapshot.is_some() && a.step == 4000
    });
    // Save to a path and open it back.
    let path = dir.join("saved.safetensors");
    h.state_mut().save_to(&path);
    step_until(&mut h, "the save", |a| a.status.starts_with("saved"));
    assert!(path.is_file());
    h.state_mut().open(&path);
    step_until(&mut h, "the open", |a| {
        a.status.starts_with("opened") && a.status.contains("saved.safetensors")
    });
    assert_eq!(h.state().step, 4000);
    // A corrupt file shows a message and keeps the model.
    let bad = dir.join("corrupt.safetensors");
    std::fs::write(&bad, b"not a checkpoint").expect("write");
    h.state_mut().open(&bad);
    step_until(&mut h, "the error", |a| a.status_is_error);
    assert!(
        h.state().status.contains("corrupt.safetensors"),
        "{}",
        h.state().status
    );
    assert!(h.state().snapshot.is_some());
    // Changing the solver is live: a new preview arrives with the new NFE.
    h.state_mut().live.solver =
        flowlab::solver::SolverConfig::fixed(flowlab::solver::SolverKind::Euler, 7);
    let live = h.state().live;
    h.state_mut()
        .send(flowlab::train::worker::Command::SetLive(live));
    h.state_mut()
        .send(flowlab::train::worker::Command::SampleNow);
    step_until(&mut h, "the Euler preview", |a| {
        a.snapshot.as_ref().is_some_and(|s| s.nfe == 7)
    });
    // Exports: PNG and GIF decode, the CSV has a header.
    let png = h.state().flow_png().expect("png");
    assert!(image::load_from_memory(&png).is_ok());
    let gif = h.state().sweep_gif(6).expect("gif");
    let frames =
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(gif)).expect("gif decodes");
    assert_eq!(image::AnimationDecoder::into_frames(frames).count(), 6);
    assert!(h.state().loss_csv().starts_with("step,loss,held_out_loss"));
}

#[test]
fn settings_persist_across_restarts_and_reset_to_defaults() {
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| a.step == 4000);
    {
        let app = h.state_mut();
        app.config.batch_size = 128;
        app.layers.trajectories = true;
        app.loss_view.log_y = true;
        app.live.solver.steps = 7;
    }
    let saved = serde_json::to_string(&h.state().persisted()).expect("serialise");
    drop(h);
    // A new session restores them, even though the start-up model has other settings.
    let restored: flowlab::app::Persisted = serde_json::from_str(&saved).expect("deserialise");
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(
            |ui, app: &mut FlowLabApp| app.ui(ui),
            FlowLabApp::with_settings(Arc::new(|| {}), Some(restored)),
        );
    step_until(&mut h, "the pretrained model", |a| a.step == 4000);
    assert_eq!(h.state().config.batch_size, 128);
    assert!(h.state().layers.trajectories && h.state().loss_view.log_y);
    assert_eq!(h.state().live.solver.steps, 7);
    h.state_mut().reset_settings();
    assert_eq!(h.state().persisted(), flowlab::app::Persisted::default());
    // An unlocked seed changes with every new run; a locked one does not.
    h.state_mut().seed_locked = false;
    let before = h.state().config.seed;
    h.state_mut().train_new();
    let first = h.state().config.seed;
    h.state_mut().train_new();
    assert!(
        first != before || h.state().config.seed != first,
        "fresh seeds when unlocked"
    );
    h.state_mut().seed_locked = true;
    let locked = h.state().config.seed;
    h.state_mut().train_new();
    assert_eq!(h.state().config.seed, locked);
}

#[test]
fn pick_a_dataset_and_a_solver_through_the_widgets() {
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.step == 4000 && a.snapshot.is_some()
    });
    // The solver is live: picking Euler redraws the preview with 20 evaluations.
    h.get_by_role_and_label(Role::ComboBox, "method").click();
    h.run_steps(3);
    h.get_by_label("euler").click();
    h.run_steps(3);
    assert_eq!(
        h.state().live.solver.kind,
        flowlab::solver::SolverKind::Euler
    );
    step_until(&mut h, "the Euler preview", |a| {
        a.snapshot.as_ref().is_some_and(|s| s.nfe == 20)
    });
    // The dataset needs a new run: picking it changes the settings, not the run.
    h.get_by_role_and_label(Role::ComboBox, "dataset").click();
    h.run_steps(3);
    h.get_by_label("circles").click();
    h.run_steps(3);
    assert_eq!(h.state().config.dataset.name(), "circles");
    assert_eq!(
        h.state().run_config.as_ref().map(|c| c.dataset.name()),
        Some("moons")
    );
    h.get_by_label("Train").click();
    h.run_steps(4);
    assert!(h.state().confirm_new_run, "asks before replacing the run");
    h.get_by_label("Start a new run").click();
    step_until(&mut h, "the circles run", |a| {
        a.run_config
            .as_ref()
            .is_some_and(|c| c.dataset.name() == "circles")
            && a.loss.len() >= 3
    });
    h.get_by_label("Pause").click();
    step_until(&mut h, "the pause", |a| !a.running);
}

#[test]
fn mnist_grid_with_digit_picker_guidance_time_and_exports() {
    use flowlab::app::{PNG_SCALE, grid_at, row_labels};
    use flowlab::solver::{SolverConfig, SolverKind};
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.step == 4000 && a.snapshot.is_some()
    });
    // Quick previews for the test: 2 Euler steps.
    h.state_mut().live.solver = SolverConfig::fixed(SolverKind::Euler, 2);
    let live = h.state().live;
    h.state_mut()
        .send(flowlab::train::worker::Command::SetLive(live));
    // Picking MNIST switches the settings to a digit-conditional UNet.
    h.get_by_role_and_label(Role::ComboBox, "dataset").click();
    h.run_steps(3);
    h.get_by_label("mnist").click();
    h.run_steps(3);
    match &h.state().config.model {
        flowlab::model::ModelConfig::Unet(u) => assert_eq!(u.classes, 10),
        other => panic!("expected a UNet, got {other:?}"),
    }
    assert_eq!(h.state().config.batch_size, 128);
    h.get_by_label("Open the pretrained MNIST model").click();
    step_until(&mut h, "the MNIST grid", |a| {
        a.is_image_run()
            && a.snapshot
                .as_ref()
                .is_some_and(|s| s.sample_shape == [1, 28, 28] && s.complete)
    });
    let s = h.state().snapshot.clone().expect("snapshot");
    assert_eq!((s.labels.len(), s.columns, s.nfe), (60, 6, 2));
    assert_eq!(row_labels(&s), (0..10).collect::<Vec<u32>>());
    assert_eq!(s.guidance, Some(2.0));
    // The grid shows noise at t = 0 and the model's digits at t = 1: digits
    // have a mostly black background, noise is mid-grey on average.
    let mean = |t: f64| {
        let g = grid_at(&s, t).expect("grid");
        assert_eq!((g.width(), g.height()), (6 * 30 + 2, 10 * 30 + 2));
        g.pixels().map(|p| f64::from(p.0[0])).sum::<f64>() / f64::from(g.width() * g.height())
    };
    let (m0, m1) = (mean(0.0), mean(1.0));
    assert!(
        m0 > 80.0 && m1 < m0 - 20.0,
        "mean grey {m0} at t=0, {m1} at t=1"
    );
    // The digit picker and the guidance slider act on the loaded model.
    h.get_by_role_and_label(Role::ComboBox, "class").click();
    h.run_steps(3);
    h.get_by_label("digit 3").click();
    step_until(&mut h, "a grid of threes", |a| {
        a.snapshot
            .as_ref()
            .is_some_and(|s| s.complete && s.labels.iter().all(|&l| l == 3))
    });
    h.get_by_role_and_label(Role::Slider, "guidance w")
        .set_value_accesskit(0.0);
    step_until(&mut h, "an unguided grid", |a| {
        a.snapshot
            .as_ref()
            .is_some_and(|s| s.complete && s.guidance == Some(0.0))
    });
    assert!(!h.state().preview_pending);
    // The time slider scrubs the grid; exports are the grid and its sweep.
    h.get_by_role_and_label(Role::Slider, "t (noise -> data)")
        .set_value_accesskit(0.5);
    h.step();
    let png = image::load_from_memory(&h.state().flow_png().expect("png"))
        .expect("decode")
        .to_luma8();
    let half = grid_at(h.state().snapshot.as_ref().expect("snapshot"), 0.5).expect("grid");
    assert_eq!(
        (png.width(), png.height()),
        (half.width() * PNG_SCALE, half.height() * PNG_SCALE)
    );
    assert_eq!(
        png.get_pixel(9, 9),
        half.get_pixel(2, 2),
        "the grid at t = 0.5"
    );
    let gif = h.state().sweep_gif(6).expect("gif");
    let frames =
        image::codecs::gif::GifDecoder::new(std::io::Cursor::new(gif)).expect("gif decodes");
    assert_eq!(
        image::AnimationDecoder::into_frames(frames).count(),
        16,
        "6 frames of the sweep, then the digits held for 10"
    );
}

#[test]
fn grid_interpolates_between_solver_states() {
    use flowlab::app::{grid_at, row_labels};
    use flowlab::train::worker::SampleSnapshot;
    let n = 4 * 3 * 2;
    let s = SampleSnapshot {
        step: 1,
        sample_shape: vec![1, 3, 2],
        times: vec![0.0, 0.5, 1.0],
        states: vec![vec![0.0; n], vec![100.0; n], vec![200.0; n]],
        nfe: 2,
        labels: vec![7, 7, 1, 1],
        guidance: Some(2.0),
        columns: 2,
        complete: true,
        discrete: false,
    };
    assert_eq!(row_labels(&s), vec![7, 1]);
    let g = grid_at(&s, 0.75).expect("grid");
    // 2 columns x 2 rows of 3x2 images with 2-pixel gaps.
    assert_eq!((g.width(), g.height()), (2 * 4 + 2, 2 * 5 + 2));
    assert_eq!(g.get_pixel(2, 2).0, [150], "halfway between 100 and 200");
    assert_eq!(g.get_pixel(0, 0).0, [64], "the gap colour");
    assert_eq!(grid_at(&s, 0.0).expect("grid").get_pixel(2, 2).0, [0]);
    let flat = SampleSnapshot {
        sample_shape: vec![2],
        ..s
    };
    assert!(grid_at(&flat, 0.5).is_none(), "2D points are not a grid");
}

#[test]
fn quality_vs_nfe_view_measures_every_solver_and_keeps_runs_for_comparison() {
    use flowlab::flow::{Coupling, Source};
    use flowlab::solver::SolverKind;
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.step == 4000 && a.snapshot.is_some()
    });
    h.get_by_label("Quality vs NFE").click();
    h.run_steps(2);
    h.get_by_label("Measure").click();
    step_until(&mut h, "the measurement", |a| a.quality.len() == 1);
    let e = h.state().quality[0].clone();
    assert_eq!(e.label, "gaussian -> moons, independent");
    for kind in SolverKind::ALL {
        assert!(!e.curve(kind).is_empty(), "{kind:?} measured");
    }
    // The trained flow: many Euler steps beat one, and 16 land near the floor.
    let (one, many) = (e.euler_w2(1).expect("1"), e.euler_w2(16).expect("16"));
    assert!(many < 0.5 * one, "W2 {one} at 1 step, {many} at 16");
    assert!(
        many < 2.0 * e.report.floor,
        "{many} vs floor {}",
        e.report.floor
    );
    // Pick exact OT and a 2D source through the widgets; a new run is measured beside it.
    h.get_by_role_and_label(Role::ComboBox, "coupling").click();
    h.run_steps(3);
    h.get_by_label("exact-ot").click();
    h.run_steps(2);
    h.get_by_role_and_label(Role::ComboBox, "source").click();
    h.run_steps(3);
    h.get_by_label("8gaussians").click();
    h.run_steps(2);
    assert_eq!(h.state().config.coupling, Coupling::ExactOt);
    assert_eq!(h.state().config.source.name(), "8gaussians");
    assert!(matches!(h.state().config.source, Source::Toy2d { .. }));
    h.state_mut().config.steps = 20;
    h.state_mut().train_new();
    step_until(&mut h, "the short OT run", |a| {
        a.run_config
            .as_ref()
            .is_some_and(|c| c.coupling == Coupling::ExactOt)
            && a.status.starts_with("finished")
    });
    h.get_by_label("Measure").click();
    step_until(&mut h, "the second measurement", |a| a.quality.len() == 2);
    assert_eq!(h.state().quality[1].label, "8gaussians -> moons, exact-ot");
    assert_eq!(h.state().quality[1].step, 20);
}

#[test]
fn learned_density_layer_shows_the_models_likelihood_on_demand() {
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.step == 4000 && a.snapshot.is_some()
    });
    h.get_by_label("learned p(x)").click();
    step_until(&mut h, "the learned density", |a| a.learned.is_some());
    let d = h.state().learned.clone().expect("density");
    assert_eq!((d.n, d.log_p.len(), d.step), (48, 48 * 48, 4000));
    assert!(d.log_p.iter().all(|v| v.is_finite()));
    // Normalised: the density integrates to about 1 over the view.
    let [x0, x1, y0, y1] = d.bounds;
    let cell = (x1 - x0) * (y1 - y0) / (48.0 * 48.0);
    let mass: f64 = d.log_p.iter().map(|v| f64::from(*v).exp() * cell).sum();
    assert!((mass - 1.0).abs() < 0.1, "total mass {mass}");
    // Higher on the moons than between them: the data points score above the
    // grid's median.
    let mut sorted: Vec<f32> = d.log_p.clone();
    sorted.sort_by(f32::total_cmp);
    let median = sorted[sorted.len() / 2];
    let at = |x: f64, y: f64| {
        let i = ((x - x0) / (x1 - x0) * 48.0) as usize;
        let j = ((y - y0) / (y1 - y0) * 48.0) as usize;
        d.log_p[j * 48 + i]
    };
    assert!(at(0.0, 1.0) > median + 2.0, "top of the upper moon");
    assert!(at(1.0, -0.5) > median + 2.0, "bottom of the lower moon");
    assert!(!h.state().learned_is_stale());
}

#[test]
fn sampling_as_another_scheduler_changes_the_paths_not_the_result() {
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.step == 4000 && a.snapshot.is_some()
    });
    let before = h.state().snapshot.clone().expect("snapshot");
    h.get_by_role_and_label(Role::ComboBox, "sample as").click();
    h.run_steps(3);
    h.get_by_label("cosine").click();
    step_until(&mut h, "the cosine preview", |a| {
        a.snapshot
            .as_ref()
            .is_some_and(|s| s.states != before.states)
    });
    assert_eq!(
        h.state().live.sample_scheduler,
        Some(flowlab::flow::Scheduler::Cosine)
    );
    let after = h.state().snapshot.clone().expect("snapshot");
    let dist = |a: &[[f64; 2]], b: &[[f64; 2]]| {
        a.iter()
            .zip(b)
            .map(|(p, q)| ((p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)).sqrt())
            .sum::<f64>()
            / a.len() as f64
    };
    let mid = |s| flowlab::app::particles_at(s, 0.5).expect("2D");
    let end = |s| flowlab::app::particles_at(s, 1.0).expect("2D");
    // Same noise, other paths: far apart half-way, close together at the data.
    let (d_mid, d_end) = (
        dist(&mid(&before), &mid(&after)),
        dist(&end(&before), &end(&after)),
    );
    assert!(d_mid > 0.1, "half-way the paths differ: {d_mid}");
    assert!(
        d_end < 0.5 * d_mid,
        "the same data at t = 1: {d_end} vs {d_mid}"
    );
}

#[test]
fn manifold_runs_show_the_torus_and_a_turnable_globe() {
    use flowlab::app::manifold_view::{Globe, split_at_wraps, torus_angular};
    use flowlab::flow::{Manifold, Source};
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.step == 4000 && a.snapshot.is_some()
    });
    h.get_by_role_and_label(Role::ComboBox, "dataset").click();
    h.run_steps(3);
    h.get_by_label("torus-checkerboard").click();
    h.run_steps(3);
    assert_eq!(
        h.state().config.source,
        Source::Uniform {
            manifold: Manifold::Torus
        }
    );
    h.state_mut().config.steps = 200;
    h.get_by_label("Train").click();
    h.run_steps(4);
    h.get_by_label("Start a new run").click();
    step_until(&mut h, "the torus run's preview", |a| {
        a.run_manifold() == Some(Manifold::Torus)
            && a.snapshot.as_ref().is_some_and(|s| s.sample_shape == [4])
    });
    // The view shows the particles on the torus, the data and the tangent field.
    h.get_by_label("data").click();
    h.get_by_label("velocity field").click();
    h.get_by_label("trajectories").click();
    step_until(&mut h, "the tangent field", |a| a.tangent_field.is_some());
    let f = h.state().tangent_field.clone().expect("field");
    assert_eq!(f.points.len(), 18 * 18 * 4);
    for (p, v) in f.points.chunks_exact(4).zip(f.vectors.chunks_exact(4)) {
        assert!(
            (p[0] * v[0] + p[1] * v[1]).abs() < 1e-5,
            "tangent to the first circle"
        );
        assert!(
            (p[2] * v[2] + p[3] * v[3]).abs() < 1e-5,
            "tangent to the second circle"
        );
    }
    assert!(!h.state().manifold_data.is_empty());
    h.state_mut().t = 0.5;
    h.run_steps(2);
    let pts = h.state().manifold_particles_at_t().expect("particles");
    assert!(Manifold::Torus.max_off_manifold(&pts) < 1e-5);
    let paths = h.state().manifold_paths_to_t();
    assert!(!paths.is_empty() && paths.iter().all(|p| p.len() >= 2));
    h.get_by_label("Pause").click();
    step_until(&mut h, "the pause", |a| !a.running);

    // Angular velocity of a tangent vector, and paths cut where they wrap.
    let w = torus_angular(&[1.0, 0.0, 0.0, 1.0], &[0.0, 2.0, -3.0, 0.0]);
    assert!(
        (w[0] - 2.0).abs() < 1e-6 && (w[1] - 3.0).abs() < 1e-6,
        "{w:?}"
    );
    let pieces = split_at_wraps(&[[3.0, 0.0], [3.1, 0.0], [-3.1, 0.0], [-3.0, 0.0]]);
    assert_eq!(pieces.len(), 2);

    // The globe: the default view shows the north pole on the near side, a
    // drag turns it, and turning half way round brings the far side to the front.
    let g = Globe::default();
    assert!(g.view([0.0, 0.0, 1.0])[2] > 0.0);
    let p = [0.6, 0.0, 0.8];
    let v = g.view(p);
    assert!(
        (v.iter().map(|a| a * a).sum::<f64>() - 1.0).abs() < 1e-12,
        "a rotation"
    );
    let mut turned = g;
    turned.yaw += std::f64::consts::PI;
    let front = [1.0, 0.0, 0.0];
    assert!((g.view(front)[2] + turned.view(front)[2]).abs() < 1e-9);
    let mut dragged = g;
    dragged.drag(egui::vec2(50.0, -20.0));
    assert!(
        (dragged.yaw - g.yaw - 0.5).abs() < 1e-9 && (dragged.pitch - g.pitch + 0.2).abs() < 1e-9
    );
    // A sphere run: its preview is unit vectors.
    h.get_by_role_and_label(Role::ComboBox, "dataset").click();
    h.run_steps(3);
    h.get_by_label("sphere-vmf").click();
    h.run_steps(3);
    h.state_mut().config.steps = 100;
    h.get_by_label("Train").click();
    h.run_steps(4);
    if h.state().confirm_new_run {
        h.get_by_label("Start a new run").click();
    }
    step_until(&mut h, "the sphere run's preview", |a| {
        a.run_manifold() == Some(Manifold::Sphere)
            && a.snapshot.as_ref().is_some_and(|s| s.sample_shape == [3])
    });
    let pts = h.state().manifold_particles_at_t().expect("particles");
    assert!(Manifold::Sphere.max_off_manifold(&pts) < 1e-5);
    h.get_by_label("Reset view").click();
    h.run_steps(2);
    assert_eq!(h.state().globe, Globe::default());
}

#[test]
fn discrete_runs_show_tokens_unmasking_and_grids_hold_between_steps() {
    use flowlab::app::{MASK_GREY, grid_at};
    use flowlab::train::worker::SampleSnapshot;
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.step == 4000 && a.snapshot.is_some()
    });
    h.get_by_label("discrete").click();
    h.run_steps(3);
    let dc = h.state().config.discrete.expect("discrete settings");
    assert_eq!(dc.levels, 128);
    h.state_mut().config.steps = 150;
    h.get_by_label("Train").click();
    h.run_steps(4);
    h.get_by_label("Start a new run").click();
    step_until(&mut h, "the discrete preview", |a| {
        a.is_discrete_run() && a.snapshot.as_ref().is_some_and(|s| s.discrete)
    });
    h.get_by_label("Pause").click();
    step_until(&mut h, "the pause", |a| !a.running);
    // No velocity field or learned density for tokens.
    assert!(h.query_by_label("velocity field").is_none());
    assert!(h.query_by_label("learned p(x)").is_none());
    // t = 0: every coordinate masked, so every point waits at the corner.
    h.state_mut().t = 0.0;
    let [x0, _, y0, _] = h.state().view_bounds;
    let p0 = h.state().particles_at_t().expect("particles");
    assert!(p0.iter().all(|p| p[0] == x0 && p[1] == y0));
    // t = 1: every coordinate has a value (a bin centre).
    h.state_mut().t = 1.0;
    let p1 = h.state().particles_at_t().expect("particles");
    assert!(
        p1.iter()
            .all(|p| p[0].is_finite() && p[1].is_finite() && p[0] != x0)
    );
    h.run_steps(2);

    // A discrete image grid holds each step's tokens and shows masks in grey.
    let n = 2 * 2 * 2;
    let s = SampleSnapshot {
        step: 1,
        sample_shape: vec![1, 2, 2],
        times: vec![0.0, 0.5, 1.0],
        states: vec![vec![f32::NAN; n], vec![255.0; n], vec![0.0; n]],
        nfe: 2,
        labels: Vec::new(),
        guidance: None,
        columns: 2,
        complete: true,
        discrete: true,
    };
    let px = |t: f64| grid_at(&s, t).expect("grid").get_pixel(2, 2).0[0];
    assert_eq!(f32::from(px(0.0)), MASK_GREY);
    assert_eq!(f32::from(px(0.4)), MASK_GREY, "held, not interpolated");
    assert_eq!(px(0.5), 255);
    assert_eq!(px(0.99), 255);
    assert_eq!(px(1.0), 0);
}

#[test]
fn the_app_offers_to_restore_a_run_lost_in_a_crash() {
    use flowlab::train::autosave::{autosave_path, autosaves, marker_path};
    const DEAD_PID: u32 = 4_000_000_001;
    let dir = crate::common::temp_dir("app-restore");
    // The run a crashed session left behind: 30 steps of a small model.
    let mut tr =
        flowlab::train::Trainer::new(crate::common::tiny_config(30), &candle_core::Device::Cpu)
            .expect("trainer");
    tr.run(|_| std::ops::ControlFlow::Continue(()))
        .expect("train");
    let lost = autosave_path(&dir, DEAD_PID, 30);
    flowlab::checkpoint::Checkpoint::from_trainer(&tr)
        .and_then(|c| c.save(&lost))
        .expect("save");
    std::fs::write(marker_path(&dir, DEAD_PID), b"").expect("marker");
    let mut app = FlowLabApp::new(Arc::new(|| {}));
    app.use_autosave_dir(dir.clone());
    assert_eq!(app.restore_offer.as_ref().map(|o| o.step), Some(30));
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(|ui, app: &mut FlowLabApp| app.ui(ui), app);
    step_until(&mut h, "the pretrained model", |a| a.step == 4000);
    h.get_by_label("Restore the autosaved run").click();
    step_until(&mut h, "the restored run", |a| {
        a.step == 30 && a.loss.len() == 30
    });
    assert!(h.state().restore_offer.is_none());
    assert!(
        !marker_path(&dir, DEAD_PID).exists(),
        "the lost session is cleared"
    );
    let mine: Vec<u64> = autosaves(&dir)
        .into_iter()
        .filter(|(p, _, _)| *p == std::process::id())
        .map(|(_, s, _)| s)
        .collect();
    assert_eq!(
        mine,
        vec![30],
        "the restored autosave is now this session's"
    );
    assert!(marker_path(&dir, std::process::id()).exists());
    // A clean exit removes this session's marker and autosaves.
    drop(h);
    assert!(!marker_path(&dir, std::process::id()).exists());
    assert!(autosaves(&dir).is_empty());

    // Discarding deletes the lost run.
    std::fs::copy(
        "weights/moons.safetensors",
        autosave_path(&dir, DEAD_PID, 4000),
    )
    .expect("copy");
    std::fs::write(marker_path(&dir, DEAD_PID), b"").expect("marker");
    let mut app = FlowLabApp::new(Arc::new(|| {}));
    app.use_autosave_dir(dir.clone());
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(|ui, app: &mut FlowLabApp| app.ui(ui), app);
    h.run_steps(2);
    h.get_by_label("Discard it").click();
    h.run_steps(2);
    assert!(h.state().restore_offer.is_none());
    assert!(autosaves(&dir).iter().all(|(p, _, _)| *p != DEAD_PID));
    assert!(!marker_path(&dir, DEAD_PID).exists());
}

#[test]
fn divergence_pauses_training_with_the_reason_and_offers_a_roll_back() {
    let dir = crate::common::temp_dir("app-diverge");
    let mut app = FlowLabApp::new(Arc::new(|| {}));
    app.use_autosave_dir(dir.clone());
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_ui_state(|ui, app: &mut FlowLabApp| app.ui(ui), app);
    step_until(&mut h, "the pretrained model", |a| a.step == 4000);
    // A far too large learning rate without clipping: this run blows up at step 3.
    {
        let app = h.state_mut();
        app.config.optimizer.lr = 10.0;
        app.config.optimizer.grad_clip = None;
        app.config.optimizer.warmup_steps = 0;
        app.config.batch_size = 64;
        app.config.steps = 300;
        app.config.seed = 0;
        app.live.lr = 10.0;
    }
    h.run_steps(2);
    h.get_by_label("Train").click();
    h.run_steps(4);
    h.get_by_label("Start a new run").click();
    step_until(&mut h, "the divergence", |a| a.diverged);
    let status = h.state().status.clone();
    assert!(
        h.state().status_is_error && status.contains("diverged"),
        "{status}"
    );
    assert!(status.contains("were kept"), "{status}");
    assert!(!h.state().running, "training paused");
    let last_good = h.state().step;
    assert!(h.state().rollback_step().is_none(), "no autosave yet");
    // Again from fresh weights, one step at a time: the pause autosaves step 1.
    h.get_by_label("Reset").click();
    step_until(&mut h, "the reset", |a| a.step == 0 && !a.diverged);
    h.state_mut().step_n = 1;
    h.run_steps(2);
    h.get_by_label("Step").click();
    step_until(&mut h, "the autosave of step 1", |a| {
        !a.running && a.last_autosave == Some(1)
    });
    h.get_by_label("Train").click();
    step_until(&mut h, "the same divergence", |a| a.diverged);
    assert_eq!(
        h.state().step,
        last_good,
        "the same batches diverge at the same step"
    );
    // Roll back to the autosave from before the divergence.
    assert_eq!(h.state().rollback_step(), Some(1));
    h.get_by_label("Roll back to the autosave of step 1")
        .click();
    step_until(&mut h, "the roll-back", |a| a.step == 1 && !a.diverged);
    assert!(h.state().loss.iter().all(|p| p[1].is_finite()));
}

#[test]
fn the_device_picker_moves_the_run_with_its_state_or_says_why_not() {
    use flowlab::app::DeviceChoice;
    let mut h = harness();
    step_until(&mut h, "the pretrained model", |a| {
        a.snapshot.is_some() && a.step == 4000
    });
    assert_eq!(h.state().device(), DeviceChoice::Cpu);
    // The status bar names the device the run is on.
    h.get_by_label("141314 parameters · CPU");
    let loss_len = h.state().loss.len();
    let moved =
        std::env::temp_dir().join(format!("device-move-{}.safetensors", std::process::id()));
    if let Err(why) = DeviceChoice::Cuda.available() {
        // The picker lists the GPU, disabled, and asking anyway keeps the run.
        h.get_by_label("CUDA (unavailable)");
        assert!(why.contains("CUDA"), "{why}");
        h.state_mut().switch_device(DeviceChoice::Cuda);
        h.step();
        assert!(h.state().status_is_error);
        assert!(h.state().status.contains("CUDA"), "{}", h.state().status);
        assert_eq!(h.state().device(), DeviceChoice::Cpu);
        assert!(!h.state().device_move_pending());
        assert_eq!(h.state().step, 4000);
    }
    // A move goes through a checkpoint to a fresh worker: the run arrives whole.
    h.state_mut().restart_worker_on(DeviceChoice::Cpu);
    assert!(h.state().device_move_pending());
    step_until(&mut h, "the move", |a| !a.device_move_pending());
    assert!(
        h.state().status.contains("now on CPU"),
        "{}",
        h.state().status
    );
    assert_eq!(h.state().step, 4000);
    assert_eq!(h.state().param_count, 141_314);
    assert_eq!(h.state().loss.len(), loss_len);
    assert!(!moved.exists(), "the move's checkpoint is removed");
    // A run that is training keeps training on the new worker.
    h.get_by_label("Train").click();
    h.run_steps(4);
    h.get_by_label("Start a new run").click();
    step_until(&mut h, "training", |a| a.running && a.step >= 5);
    h.state_mut().restart_worker_on(DeviceChoice::Cpu);
    step_until(&mut h, "the second move", |a| !a.device_move_pending());
    let at_move = h.state().step;
    assert!(h.state().running);
    step_until(&mut h, "steps after the move", |a| a.step >= at_move + 5);
    assert!(h.state().loss.len() as u64 >= at_move);
}
