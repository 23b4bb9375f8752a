//! `cvq-train`: reserved for the candle trainer (see train/README.md). Until it lands, this
//! binary says so and fails, rather than pretending to train.

fn main() {
    eprintln!(
        "cvq-train: the trainer is not built yet (see train/README.md); cvq's default predictor needs no training"
    );
    std::process::exit(2);
}
