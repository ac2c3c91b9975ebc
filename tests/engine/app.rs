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
    // Frames keep completing while the worker trains (the GUI never waits on it).
    h.get_by_label("Train").click();
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
