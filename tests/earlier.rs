//! Predictors of earlier releases, which this one still reads (ids are never retired): each
//! codes the clip into exactly the archive its release's own golden test pinned, and that
//! archive decodes. The archives of tests/data cover only three frames, too few for the
//! table sizes to differ; these cover segments large enough that they do.

mod common;

use common::{clip, clip_frames};
use cvq::network::{ModelSpec, Weights};
use cvq::pipeline::{compress_segments, decompress_segments};
use cvq::predict::transformer::Transformer;
use cvq::predict::{hex, Model, EARLIER};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const SMALL: ModelSpec = ModelSpec::new(1, 32, 2, 1, 64);

/// The earlier predictor of id string `id`, with weights `t` where it has a network.
fn earlier(id: &str, t: &Arc<Transformer>) -> Model {
    let e = EARLIER.iter().find(|e| e.id == id).unwrap();
    Model::Earlier(e, e.network.map(|_| Arc::clone(t)))
}

#[test]
fn earlier_predictors_code_what_their_release_coded() {
    let t = Arc::new(Transformer::new(&Weights::random(SMALL, 5).unwrap()));
    // (id, segment, the archive's SHA-256 in that release's test, the test and commit)
    let cases = [
        ("cvq context-mix 1", clip(), "e5a5bdae92b50e1af2cfd0151d575f32ebea3ff3c6da95a759ea14003f1d868b"), // roundtrip.rs, b6d9d92
        ("cvq mixed 2", clip(), "d946d60bdea2443abe783f9c3f0a980a2e822654182ccf5cda3643c11e89ca78"), // mixed.rs, b6d9d92
        ("cvq mixed 3", clip(), "f38800a61c29a454e44c772de5075980a90ba31333802421ad543a3e70156b15"), // mixed.rs, da587ac
        ("cvq mixed-adaptive 1", clip_frames(200), "332ade7ed4de498c01b8254474d2f24bf28f67e66a91fb928bf85e05305da27c"), // adapt.rs, da587ac
    ];
    assert_eq!(cases.len(), EARLIER.len(), "every earlier predictor is pinned");
    for (id, seg, golden) in cases {
        let m = earlier(id, &t);
        let bytes = compress_segments(&m, std::slice::from_ref(&seg)).unwrap();
        assert_eq!(hex(&Sha256::digest(&bytes)), golden, "{id}");
        assert_eq!(decompress_segments(&bytes, m.transformer()).unwrap(), vec![seg], "{id}");
    }
}
