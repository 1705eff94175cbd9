//! The model registry on a local directory: versions in order, metadata with the artefact,
//! champion pointer, rollback, and refusal of a damaged artefact.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use cartstream_model_service::model::{self, TrainConfig};
use cartstream_model_service::registry::ModelRegistry;
use cartstream_model_service::synth::Synth;

#[tokio::test]
async fn versions_champion_and_rollback() {
    let dir = std::env::temp_dir().join(format!("cartstream-registry-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let reg = ModelRegistry::open(dir.to_str().unwrap()).unwrap();
    assert!(reg.pointer().await.unwrap().is_none());
    assert!(reg.load_champion().await.unwrap().is_none());
    assert!(reg.rollback(0).await.is_err(), "nothing to roll back");

    let h = Synth::new(3, 1).history(3_600_000, 24 * 100, 24 * 100 + 24 * 14);
    let cfg = TrainConfig {
        holdout_periods: 24,
        train_window_periods: 96,
        ..TrainConfig::default()
    };
    let t = model::train(&h, &cfg, "test", 1).unwrap();
    let mut m1 = t.meta.clone();
    let v1 = reg.save(&t.model, &mut m1).await.unwrap();
    let mut m2 = t.meta.clone();
    let v2 = reg.save(&t.model, &mut m2).await.unwrap();
    assert_eq!((v1.as_str(), v2.as_str()), ("v000001", "v000002"));
    assert_eq!(m2.version, "v000002");
    assert_eq!(reg.versions().await.unwrap(), vec!["v000001", "v000002"]);

    reg.promote(&v1, "initial", 10).await.unwrap();
    let p = reg.promote(&v2, "error", 20).await.unwrap();
    assert_eq!(p.previous, vec!["v000001"]);
    let (model, meta) = reg.load_champion().await.unwrap().unwrap();
    assert_eq!(meta.version, "v000002");
    assert_eq!(meta.data_fingerprint, t.meta.data_fingerprint);
    assert_eq!(model.horizon, cfg.horizon);

    let back = reg.rollback(30).await.unwrap();
    assert_eq!(back.version, "v000001");
    assert!(back.previous.is_empty());
    assert_eq!(
        reg.load_champion().await.unwrap().unwrap().1.version,
        "v000001"
    );
    assert!(
        reg.rollback(40).await.is_err(),
        "only one step back was recorded"
    );
    assert!(
        reg.promote("v000009", "x", 0).await.is_err(),
        "unknown version"
    );

    // A damaged artefact is refused, with the version in the message.
    std::fs::write(dir.join("models/v000002/model.json"), b"{\"horizon\": 3}").unwrap();
    let err = format!("{:#}", reg.load("v000002").await.unwrap_err());
    assert!(err.contains("v000002"), "{err}");
    let list = reg.list().await.unwrap();
    assert_eq!(list.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
