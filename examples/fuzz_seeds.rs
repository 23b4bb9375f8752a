//! Writes small valid archives to seed the fuzzer: `fuzz_seeds DIR`, each set of segments
//! coded by every predictor (`Model::all`) of the fuzz targets' seeded model.

use cvq::data::Segment;
use cvq::pipeline::compress_segments;
use cvq::predict::Model;

#[path = "../fuzz/fuzz_targets/seeded_model.rs"]
mod seeded_model;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).expect("usage: fuzz_seeds DIR");
    std::fs::create_dir_all(&dir)?;
    let frames =
        |n: usize, step: usize| -> Vec<u16> { (0..n * 128).map(|i| ((i * step + i / 128) % 1024) as u16).collect() };
    let sets = [
        vec![Segment::int16("a", frames(2, 3))],
        vec![Segment::int16("b_1", frames(3, 7)), Segment::int16("b_2", frames(1, 11))],
        vec![Segment::int16("empty", vec![])],
    ];
    let t = seeded_model::seeded_model();
    let models = Model::all(Some(&t));
    for (i, segments) in sets.iter().enumerate() {
        for m in &models {
            std::fs::write(format!("{dir}/seed{i}-{}.cvq", m.name()), compress_segments(m, segments)?)?;
        }
    }
    Ok(())
}
